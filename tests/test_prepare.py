"""prepare + folds: the three layouts, seeded stratified folds, and one-line errors for bad data."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from competition.errors import DataError
from competition.spec import CompetitionSpec, load_spec
from pipelines.__main__ import main as pipelines_main
from pipelines.stages.prepare import assign_folds, fold_class_counts, make_folds, prepare
from pipelines.stages.readers import read_competition


def _spec(kind: str, channels: int = 1, **layout) -> CompetitionSpec:
    return CompetitionSpec.model_validate({
        "name": "toy", "title": "toy", "kaggle_slug": "toy", "host": "local",
        "layout": {"kind": kind, **layout}, "classes": ["cat", "dog"],
        "image": {"height": 8, "width": 8, "channels": channels}, "metric": "accuracy",
    })


def _png(path, value: int, size=(8, 8), mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, value if mode == "L" else (value, 0, 0)).save(path)


def _csv_images_competition(raw, n_train=6, n_test=3):
    (raw / "train.csv").parent.mkdir(parents=True, exist_ok=True)
    (raw / "train.csv").write_text("id,label\n" + "".join(f"a{i},{'cat' if i % 2 else 'dog'}\n" for i in range(n_train)))
    (raw / "sample_submission.csv").write_text("id,label\n" + "".join(f"b{i},cat\n" for i in range(n_test)))
    for i in range(n_train):
        _png(raw / "train" / f"a{i}.png", 10 * i)
    for i in range(n_test):
        _png(raw / "test" / f"b{i}.png", 200 + i)


def test_csv_images_layout(tmp_path):
    _csv_images_competition(tmp_path)
    data = read_competition(_spec("csv_images"), tmp_path)
    assert data.train_images.shape == (6, 8, 8, 1) and data.train_images.dtype == np.uint8
    assert data.train_images[3, 0, 0, 0] == 30
    assert data.train_labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert data.test_ids == ["b0", "b1", "b2"] and data.test_images[2, 0, 0, 0] == 202


def test_npy_layout(tmp_path):
    np.save(tmp_path / "train_images.npy", np.arange(4 * 64, dtype=np.uint8).reshape(4, 8, 8))
    np.save(tmp_path / "test_images.npy", np.zeros((2, 8, 8), dtype=np.uint8))
    (tmp_path / "train.csv").write_text("id,label\n1,cat\n2,dog\n3,cat\n4,dog\n")
    (tmp_path / "sample_submission.csv").write_text("id,label\n5,cat\n6,cat\n")
    data = read_competition(_spec("npy"), tmp_path)
    assert data.train_images.shape == (4, 8, 8, 1) and data.train_ids == ["1", "2", "3", "4"]
    assert data.train_labels.tolist() == [0, 1, 0, 1]


def test_class_folders_layout(tmp_path):
    for i in range(3):
        _png(tmp_path / "train" / "cat" / f"c{i}.png", i, mode="RGB")
        _png(tmp_path / "train" / "dog" / f"d{i}.png", 100 + i, mode="RGB")
    _png(tmp_path / "test" / "x1.png", 5, mode="RGB")
    (tmp_path / "sample_submission.csv").write_text("id,label\nx1,cat\n")
    data = read_competition(_spec("class_folders", channels=3), tmp_path)
    assert data.train_images.shape == (6, 8, 8, 3)
    assert sorted(zip(data.train_ids, data.train_labels.tolist()))[0] == ("c0", 0)
    assert data.train_images[data.train_ids.index("d2"), 0, 0].tolist() == [102, 0, 0]


def _break(raw, how: str):
    if how == "missing column":
        (raw / "train.csv").write_text((raw / "train.csv").read_text().replace("label", "target"))
    elif how == "unreadable image":
        (raw / "train" / "a2.png").write_bytes(b"not a png at all")
    elif how == "wrong size":
        _png(raw / "train" / "a4.png", 1, size=(9, 8))
    elif how == "unknown label":
        (raw / "train.csv").write_text((raw / "train.csv").read_text().replace("a3,cat", "a3,horse"))
    elif how == "duplicate id":
        (raw / "train.csv").write_text((raw / "train.csv").read_text().replace("a3,cat", "a1,cat"))
    elif how == "missing image":
        (raw / "train" / "a5.png").unlink()
    elif how == "test id without image":
        (raw / "sample_submission.csv").write_text("id,label\nb0,cat\nb1,cat\nb2,cat\nb9,cat\n")
    elif how == "test image not in sample":
        _png(raw / "test" / "b7.png", 1)
    elif how == "malformed csv":
        (raw / "train.csv").write_text('id,label\n"a0,dog\na1,cat\n')


def _pixel_spec(**changes) -> CompetitionSpec:
    """digit-recognizer's layout at 8x8: no id in train.csv, `ImageId`/`Label` in the submission."""
    return CompetitionSpec.model_validate({
        "name": "toy", "title": "toy", "kaggle_slug": "toy", "host": "local", "layout": {"kind": "pixel_csv"},
        "id_column": "ImageId", "submission_label_column": "Label", "classes": ["cat", "dog"],
        "image": {"height": 8, "width": 8, "channels": 1}, "metric": "accuracy", **changes})


def _pixel_csv_competition(raw, n_train=6, n_test=3, test_rows=None):
    raw.mkdir(parents=True, exist_ok=True)
    header = ",".join(f"pixel{j}" for j in range(64))
    (raw / "train.csv").write_text(f"label,{header}\n" + "".join(
        f"{'cat' if i % 2 else 'dog'}," + ",".join(str((10 * i + j) % 256) for j in range(64)) + "\n"
        for i in range(n_train)))
    (raw / "test.csv").write_text(f"{header}\n" + "".join(
        ",".join(str(200 + i) for _ in range(64)) + "\n" for i in range(n_test if test_rows is None else test_rows)))
    (raw / "sample_submission.csv").write_text("ImageId,Label\n" + "".join(f"{i + 1},cat\n" for i in range(n_test)))


def test_pixel_csv_layout(tmp_path):
    _pixel_csv_competition(tmp_path)
    data = read_competition(_pixel_spec(), tmp_path)
    assert data.train_images.shape == (6, 8, 8, 1) and data.train_images.dtype == np.uint8
    assert data.train_images[3].reshape(-1).tolist() == [(30 + j) % 256 for j in range(64)]  # row-major
    assert data.train_labels.tolist() == [1, 0, 1, 0, 1, 0]
    assert data.train_ids == [f"train-{i}" for i in range(6)]  # train.csv has no ids: its rows are numbered
    assert data.test_ids == ["1", "2", "3"] and data.test_images[2].max() == 202


@pytest.mark.parametrize("edit, message", [
    (lambda raw: raw.joinpath("train.csv").write_text(raw.joinpath("train.csv").read_text().replace("\ncat,10,", "\ncat,300,", 1)),
     "train.csv row 3: column 'pixel0' holds 300; pixels must be whole numbers from 0 to 255"),
    (lambda raw: raw.joinpath("train.csv").write_text(raw.joinpath("train.csv").read_text().replace("\ncat,10,", "\ncat,ten,", 1)),
     "train.csv: a pixel cell is not a number"),
    (lambda raw: raw.joinpath("test.csv").write_text(raw.joinpath("test.csv").read_text().replace(",pixel63", "", 1)),
     "test.csv: no column 'pixel63': 8x8x1 images need 64 pixel columns, the file has 63"),
    (lambda raw: _pixel_csv_competition(raw, test_rows=2),
     "test.csv: 2 rows but sample_submission.csv lists 3 test ids; its rows must line up"),
    (lambda raw: raw.joinpath("train.csv").write_text(raw.joinpath("train.csv").read_text().replace("\ncat,", "\nbird,", 1)),
     "train.csv row 3: label 'bird' is not in the class list"),
])
def test_bad_pixel_csv_is_one_line(tmp_path, edit, message):
    _pixel_csv_competition(tmp_path)
    edit(tmp_path)
    with pytest.raises(DataError) as caught:
        read_competition(_pixel_spec(), tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_the_kernel_script_reads_pixel_csv_test_rows_as_prepare_does(tmp_path):
    from pipelines.recipe import kernel_inference

    _pixel_csv_competition(tmp_path)
    spec = _pixel_spec()
    config = {"layout": spec.layout.model_dump(), "image": spec.image.model_dump(), "id_column": spec.submission_id}
    ids, images, header = kernel_inference.read_test(tmp_path, config)
    data = read_competition(spec, tmp_path)
    assert ids == data.test_ids and header == ["ImageId", "Label"]
    assert np.array_equal(images, data.test_images.transpose(0, 3, 1, 2))


def test_a_submission_takes_the_sample_submissions_column_names(pipeline_env, tmp_path):
    from pipelines.stages.download import raw_dir
    from pipelines.stages.submit import submission_format, validate_submission, write_submission

    spec = _pixel_spec()
    _pixel_csv_competition(raw_dir(spec))
    path = tmp_path / "submission.csv"
    write_submission(spec, ["1", "2", "3"], np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], dtype=np.float32), path)
    assert path.read_text() == "ImageId,Label\n1,cat\n2,dog\n3,cat\n"
    assert validate_submission(path, raw_dir(spec) / "sample_submission.csv", submission_format(spec)) == 3


@pytest.mark.parametrize("how, message", [
    ("missing column", r"train.csv: missing column 'label' \(found: id, target\)"),
    ("unreadable image", r"a2.png: unreadable image \(train.csv row 4, id 'a2'\)"),
    ("wrong size", r"a4.png: image is 8x9, expected 8x8 \(train.csv row 6, id 'a4'\)"),
    ("unknown label", r"train.csv row 5: label 'horse' is not in the class list"),
    ("duplicate id", r"train.csv row 5: duplicate id 'a1' \(first at row 3\)"),
    ("missing image", r"a5.png: missing image \(train.csv row 7, id 'a5'\)"),
    ("test id without image", r"b9.png: missing image \(sample_submission.csv row 5, id 'b9'\)"),
    ("test image not in sample", r"test: 1 images are not listed in sample_submission.csv, e.g. 'b7.png'"),
    ("malformed csv", r"train.csv: not a readable CSV"),
])
def test_bad_data_is_one_line_naming_file_and_row(tmp_path, how, message):
    _csv_images_competition(tmp_path)
    _break(tmp_path, how)
    with pytest.raises(DataError, match=message) as info:
        read_competition(_spec("csv_images"), tmp_path)
    assert "\n" not in str(info.value)


def test_npy_rows_must_line_up_with_csv(tmp_path):
    np.save(tmp_path / "train_images.npy", np.zeros((3, 8, 8), dtype=np.uint8))
    np.save(tmp_path / "test_images.npy", np.zeros((1, 8, 8), dtype=np.uint8))
    (tmp_path / "train.csv").write_text("id,label\n1,cat\n2,dog\n")
    (tmp_path / "sample_submission.csv").write_text("id,label\n5,cat\n")
    with pytest.raises(DataError, match=r"train_images.npy: 3 images but train.csv has 2 rows"):
        read_competition(_spec("npy"), tmp_path)


def test_folds_are_stratified_and_seeded():
    labels = np.repeat(np.arange(7), [50, 51, 52, 53, 9, 30, 31])
    fold = assign_folds(labels, n_splits=5, seed=3)
    counts = fold_class_counts(labels, fold, 7)
    ideal = np.bincount(labels) / 5
    assert np.abs(counts - ideal).max() <= 1
    assert np.array_equal(fold, assign_folds(labels, 5, 3))
    assert not np.array_equal(fold, assign_folds(labels, 5, 4))
    with pytest.raises(DataError, match="too few images to hold out: 0 rows .* fewer than folds.n_splits=60"):
        assign_folds(labels, 60, 0)


def test_a_class_with_fewer_images_than_folds_always_trains_and_is_never_held_out():
    from pipelines.stages.prepare import NEVER_HELD_OUT

    labels = np.repeat(np.arange(4), [40, 40, 3, 1])  # humpback-like: classes of 3 and of 1 image
    fold = assign_folds(labels, n_splits=5, seed=0)
    assert (fold[labels >= 2] == NEVER_HELD_OUT).all() and (fold[labels < 2] >= 0).all()
    assert np.bincount(fold[labels < 2], minlength=5).tolist() == [16] * 5
    counts = fold_class_counts(labels, fold, 4)
    assert counts[:, 2:].sum() == 0 and counts.sum() == 80
    groups = np.arange(len(labels))
    groups[0] = groups[80]  # a near-copy of a rare row: it always trains too, never validating on a copy
    fold = assign_folds(labels, 5, 0, groups)
    assert fold[0] == NEVER_HELD_OUT and (fold[1:80] >= 0).all()
    from types import SimpleNamespace

    from pipelines.stages.train import fold_rows

    for k in range(5):  # every fold model trains on the rare rows; none validates on them
        train_rows, val_rows = fold_rows(SimpleNamespace(fold_of_row=fold), k, 0, 1.0)
        assert set(np.flatnonzero(labels >= 2)) <= set(train_rows.tolist())
        assert not set(np.flatnonzero(fold == NEVER_HELD_OUT)) & set(val_rows.tolist())


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow
def test_prepare_digits_end_to_end_through_the_local_host(pipeline_env, capsys):
    """`python -m pipelines prepare --comp digits`: cached arrays and folds, same seed -> same bytes."""
    assert pipelines_main(["prepare", "--comp", "digits"]) == 0
    spec = load_spec("digits")
    prepared = prepare(spec)
    data = prepared.load()
    assert data.train_images.shape == (1347, 8, 8, 1) and data.test_images.shape == (450, 8, 8, 1)
    assert data.train_images.max() > 200  # real digit strokes, scaled to uint8
    folds = make_folds(spec, prepared)
    fold = folds.fold_of_each_row(len(data.train_labels))
    counts = fold_class_counts(data.train_labels, fold, 10)
    assert np.abs(counts - np.bincount(data.train_labels) / 5).max() <= 1
    first = _sha(folds.csv_path)
    again = make_folds(spec, prepared, force=True)
    assert again.folder == folds.folder and _sha(again.csv_path) == first
    reseeded = spec.model_copy(update={"folds": spec.folds.model_copy(update={"seed": 7})})
    other = make_folds(reseeded, prepared)
    assert other.folder != folds.folder and _sha(other.csv_path) != first
    manifest = (prepared.folder / "manifest.json").read_text()
    assert '"git_commit"' in manifest and '"config_hash"' in manifest and '"torch"' in manifest


def test_cli_prints_one_line_error_and_leaves_no_partial_output(pipeline_env, tmp_path, capsys):
    spec_path = tmp_path / "broken-digits.yaml"
    text = (load_spec.__globals__["SPEC_DIR"] / "digits.yaml").read_text()
    spec_path.write_text(text.replace("image: {height: 8, width: 8", "image: {height: 16, width: 16"))
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "image is 8x8, expected 16x16" in errors[0]
    assert err.strip().endswith(errors[0]) and "Traceback" not in err
    prepared_root = pipeline_env / "digits" / "prepared"
    assert not prepared_root.exists() or not any(prepared_root.iterdir())


def test_the_raw_digest_is_read_once_then_checked_by_size_and_time(tmp_path, monkeypatch):
    import builtins
    import os

    from pipelines.stages import prepare as prepare_stage

    _csv_images_competition(tmp_path)
    names = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    first = prepare_stage.content_digest(tmp_path, names)
    real_open = builtins.open

    def no_reading(path, mode="r", *args, **kwargs):
        if "r" in mode and "b" in mode and str(path).startswith(str(tmp_path)):
            raise AssertionError(f"{path} was read again")
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", no_reading)
    assert prepare_stage.content_digest(tmp_path, names) == first  # nothing changed: no byte read
    monkeypatch.setattr(builtins, "open", real_open)
    edited = tmp_path / "train.csv"
    edited.write_text(edited.read_text().replace("a1,cat", "a1,dog"))  # the same size, a new time
    os.utime(edited, ns=(edited.stat().st_atime_ns, edited.stat().st_mtime_ns + 1_000_000))
    assert prepare_stage.content_digest(tmp_path, names) != first
