"""`make init`: a spec drafted from what the Kaggle API says and what the download holds, for the layouts
of real competitions (each a small replica here), and one line for each key it cannot fill."""
from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
from PIL import Image

from competition.spec import load_spec
from pipelines.stages.readers import read_competition
from pipelines.tools import init as init_tool
from pipelines.tools.layout_guess import guess


def _image(path, size, value=90, mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    colour = value if mode == "L" else (value, 255 - value, value // 2)
    Image.new(mode, size, colour).save(path)


def test_aerial_cactus_layout_csv_with_file_names_as_ids(tmp_path):
    # aerial-cactus-identification: train.csv (id = the file name, has_cactus 0/1), 32x32 JPEGs, AUC.
    ids = [f"{i:032x}.jpg" for i in range(12)]
    (tmp_path / "train.csv").write_text("id,has_cactus\n" + "".join(f"{i},{n % 2}\n" for n, i in enumerate(ids)))
    for i in ids:
        _image(tmp_path / "train" / i, (32, 32))
    for n in range(3):
        _image(tmp_path / "test" / f"t{n:031x}.jpg", (32, 32))
    (tmp_path / "sample_submission.csv").write_text("id,has_cactus\n" + "".join(f"t{n:031x}.jpg,0.5\n" for n in range(3)))
    draft = guess(tmp_path)
    assert draft.layout == {"kind": "csv_images", "train_csv": "train.csv", "train_dir": "train", "filename": "{id}",
                            "test_dir": "test", "sample_submission": "sample_submission.csv"}
    assert (draft.label_column, draft.classes, draft.class_counts) == ("has_cactus", ["0", "1"], [6, 6])
    assert draft.image == {"height": 32, "width": 32, "channels": 3, "resize": "keep"} and not draft.questions


def test_plant_seedlings_layout_class_folders_with_spaces_and_varied_sizes(tmp_path):
    for n, label in enumerate(("Black-grass", "Common wheat", "Fat Hen")):
        for i in range(4):
            _image(tmp_path / "train" / label / f"{label[0]}{i}.png", (49 + 30 * i, 60 + 20 * n))
    _image(tmp_path / "test" / "abc.png", (70, 70))
    (tmp_path / "sample_submission.csv").write_text("file,species\nabc.png,Fat Hen\n")
    draft = guess(tmp_path)
    assert draft.layout["kind"] == "class_folders" and draft.layout["filename"] == "{id}"
    assert draft.classes == ["Black-grass", "Common wheat", "Fat Hen"]
    assert (draft.id_column, draft.label_column) == ("file", "species")
    assert draft.image["resize"] == "stretch" and draft.image["height"] == 64


def test_digit_recognizer_layout_pixel_csv_with_its_submission_columns(tmp_path):
    header = ",".join(f"pixel{j}" for j in range(64))
    (tmp_path / "train.csv").write_text(f"label,{header}\n" + "".join(f"{n % 3}," + ",".join(["7"] * 64) + "\n"
                                                                      for n in range(9)))
    (tmp_path / "test.csv").write_text(f"{header}\n" + ",".join(["1"] * 64) + "\n")
    (tmp_path / "sample_submission.csv").write_text("ImageId,Label\n1,0\n")
    draft = guess(tmp_path)
    assert draft.layout == {"kind": "pixel_csv", "train_csv": "train.csv", "test_csv": "test.csv", "pixel_prefix": "pixel",
                            "sample_submission": "sample_submission.csv"}
    assert draft.image == {"height": 8, "width": 8, "channels": 1}
    assert (draft.submission_id_column, draft.submission_label_column, draft.classes) == ("ImageId", "Label", ["0", "1", "2"])


def test_no_labels_anywhere_is_a_question_naming_the_key(tmp_path):
    _image(tmp_path / "test" / "a.png", (8, 8))
    (tmp_path / "sample_submission.csv").write_text("id,label\na,x\n")
    draft = guess(tmp_path)
    assert [q.key for q in draft.questions] == ["layout"] and "class_folders" in draft.questions[0].why


def test_a_metric_kpipe_does_not_score_is_asked_for():
    draft = guess.__globals__["Draft"]()
    assert init_tool.metric_entry("Root Mean Squared Error", draft) is None
    assert draft.questions[0].key == "metric" and "accuracy" in draft.questions[0].why
    assert init_tool.metric_entry("MAP@{K}", draft) is None and "k" in draft.questions[1].why
    assert init_tool.metric_entry("MAP@5", draft) == {"name": "map_at_k", "k": 5}


def _dogs_vs_cats_course(folder, slug):
    """A small dogs-vs-cats: train.zip and test.zip inside the download, labels in the file names, JPEGs of
    varied sizes, log loss on P(dog)."""
    rng = np.random.default_rng(0)
    (folder / "data").mkdir(parents=True)
    for archive, names in (("train", [f"{label}.{i}" for label in ("cat", "dog") for i in range(10)]),
                           ("test", [str(i) for i in range(1, 7)])):
        with zipfile.ZipFile(folder / "data" / f"{archive}.zip", "w") as zf:
            for name in names:
                img = Image.fromarray(rng.integers(0, 255, (int(rng.integers(40, 90)), int(rng.integers(40, 90)), 3),
                                                   dtype=np.uint8))
                path = folder / f"{name}.jpg"
                img.save(path)
                zf.write(path, f"{archive}/{name}.jpg")
                path.unlink()
    (folder / "data" / "sample_submission.csv").write_text("id,label\n" + "".join(f"{i},0.5\n" for i in range(1, 7)))
    (folder / "solution.csv").write_text("id,label,Usage\n" + "".join(
        f"{i},{'cat' if i % 2 else 'dog'},{'Public' if i < 4 else 'Private'}\n" for i in range(1, 7)))
    (folder / "competition.json").write_text(json.dumps({
        "slug": slug, "title": "Small dogs vs cats", "labels": ["cat", "dog"], "id_column": "id",
        "label_column": "label", "metric": "log_loss"}))


def test_make_init_drafts_a_spec_from_the_api_and_the_download(pipeline_env, host, tmp_path, capsys):
    _dogs_vs_cats_course(tmp_path / "course", "init-dogs")
    host.store.add_competition(tmp_path / "course")
    specs = tmp_path / "specs"
    specs.mkdir()
    assert init_tool.init("init-dogs", None, False, specs) == 0
    out = capsys.readouterr().out
    assert "metric 'Log Loss'" in out and "layout: file_labels" in out and "metric: log_loss" in out
    spec = load_spec(str(specs / "init-dogs.yaml"))
    assert spec.host == "local" and spec.classes == "auto" and spec.layout.kind == "file_labels"
    assert (spec.image.height, spec.image.channels, spec.image.resize) == (64, 3, "stretch")
    data = read_competition(spec, pipeline_env / "init-dogs" / "raw")  # the archives inside were unpacked
    assert data.classes == ["cat", "dog"] and data.train_images.shape == (20, 64, 64, 3) and len(data.test_ids) == 6
    written = (specs / "init-dogs.yaml").read_text()
    with pytest.raises(Exception, match="exists; `make init COMP=init-dogs FORCE=1`"):
        init_tool.init("init-dogs", None, False, specs)
    assert (specs / "init-dogs.yaml").read_text() == written
    assert init_tool.init("init-dogs", None, True, specs) == 0

    # A code competition (the API's isKernelsSubmissionsOnly) is drafted as one: make submit enters it by kernel.
    assert init_tool.init("digits-code", None, False, specs) == 0
    assert load_spec(str(specs / "digits-code.yaml")).kernels_only


def test_an_unknown_slug_and_a_metric_it_cannot_map_are_one_line_each(pipeline_env, host, tmp_path, capsys, monkeypatch):
    specs = tmp_path / "specs"
    specs.mkdir()
    monkeypatch.setattr(init_tool, "default_host", lambda slug: "local")
    with pytest.raises(Exception, match="'no-such-comp': no such competition on the local Kaggle host"):
        init_tool.init("no-such-comp", None, False, specs)
    _dogs_vs_cats_course(tmp_path / "course", "init-rmse")
    host.store.add_competition(tmp_path / "course")
    real = init_tool.competition_metadata
    monkeypatch.setattr(init_tool, "competition_metadata",
                        lambda endpoint, api: {**real(endpoint, api), "metric": "Root Mean Squared Error"})
    assert init_tool.init("init-rmse", None, False, specs) == 2
    out = capsys.readouterr().out
    assert "init: fill `metric`: the competition's metric 'Root Mean Squared Error' is none kpipe scores" in out
    assert not (specs / "init-rmse.yaml").exists() and (specs / "init-rmse.yaml.draft").is_file()


@pytest.mark.slow
def test_the_dogs_vs_cats_replica_builds_the_same_bytes_and_scores_one_probability_column(tmp_path):
    import hashlib

    from competition import metrics
    from competition.formats import SubmissionFormat, score
    from competition.host.builders import BUILTIN_META, build_dogs_vs_cats_replica

    digests = []
    for build in ("a", "b"):
        build_dogs_vs_cats_replica(tmp_path / build)
        digests.append({p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in (tmp_path / build / "data").iterdir()})
    assert digests[0] == digests[1] and set(digests[0]) == {"train.zip", "test.zip", "sample_submission.csv"}
    with zipfile.ZipFile(tmp_path / "a" / "data" / "train.zip") as archive:
        names = archive.namelist()
    assert len(names) == 6000 and {n.split("/")[1].split(".")[0] for n in names} == {"cat", "dog"}
    meta = BUILTIN_META["dogs-vs-cats-replica"]
    header = (tmp_path / "a" / "data" / "sample_submission.csv").read_text().splitlines()[0].split(",")
    fmt = SubmissionFormat.of(metrics.metric("log_loss"), "id", "label", meta["labels"], header)
    assert fmt.columns == ("label",) and fmt.parse(["0.9"]).tolist() == pytest.approx([0.1, 0.9])  # P(dog)
    assert score(metrics.metric("log_loss"), fmt, [fmt.parse(["0.5"])] * 2, np.array([0, 1])) == pytest.approx(np.log(2))
