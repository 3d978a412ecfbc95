"""Layouts of real Kaggle competitions: labels in file names (dogs-vs-cats), `classes: auto`, images of
any size brought to a working size by a policy, and the image modes real data sets hold."""
from __future__ import annotations

import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from competition.errors import DataError
from competition.spec import CompetitionSpec
from pipelines.recipe.image_fit import fit_image
from pipelines.stages.readers import natural_order, read_competition


def _spec(layout: dict, classes="auto", resize="keep", channels=3, size=16, **more) -> CompetitionSpec:
    return CompetitionSpec.model_validate({
        "name": "toy", "title": "toy", "kaggle_slug": "toy", "host": "local", "layout": layout, "classes": classes,
        "image": {"height": size, "width": size, "channels": channels, "resize": resize}, "metric": "accuracy", **more})


def _jpg(path, value: int, size=(20, 30)):  # size as (width, height)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (value, value, value)).save(path, quality=95)


def _dogs_vs_cats(raw, n=4):
    """dogs-vs-cats' layout: train/cat.0.jpg, train/dog.0.jpg ... of varied sizes; test/1.jpg ..."""
    for i in range(n):
        _jpg(raw / "train" / f"cat.{i}.jpg", 20, size=(20 + 5 * i, 30))
        _jpg(raw / "train" / f"dog.{i}.jpg", 220, size=(40, 16 + 3 * i))
    for i in range(1, 3):
        _jpg(raw / "test" / f"{i}.jpg", 120, size=(33, 17))
    (raw / "sample_submission.csv").write_text("id,label\n1,0.5\n2,0.5\n")


FILE_LABELS = {"kind": "file_labels", "train_filename": "{label}.{n}.jpg", "filename": "{id}.jpg"}


def test_labels_come_from_file_names_and_classes_from_the_data(tmp_path):
    _dogs_vs_cats(tmp_path)
    data = read_competition(_spec(FILE_LABELS, resize="stretch"), tmp_path)
    assert data.classes == ["cat", "dog"]
    assert data.train_images.shape == (8, 16, 16, 3)
    by_id = dict(zip(data.train_ids, data.train_labels.tolist()))
    assert by_id["cat.3"] == 0 and by_id["dog.0"] == 1 and len(by_id) == 8
    assert abs(int(data.train_images[data.train_ids.index("dog.2")].mean()) - 220) <= 2  # the right file's pixels
    assert data.test_ids == ["1", "2"] and data.test_images.shape == (2, 16, 16, 3)


@pytest.mark.parametrize("edit, message", [
    (lambda raw: _jpg(raw / "train" / "kitten-7.jpg", 1), "kitten-7.jpg: the name does not fit layout.train_filename"),
    (lambda raw: _jpg(raw / "train" / "cow.1.jpg", 1), "cow.1.jpg: label 'cow' (from its name) is not in the class list"),
    (lambda raw: _jpg(raw / "train" / "cat.0.JPG", 1), "duplicate id 'cat.0'"),
])
def test_bad_file_names_are_one_line(tmp_path, edit, message):
    _dogs_vs_cats(tmp_path)
    edit(tmp_path)
    with pytest.raises(DataError) as caught:
        read_competition(_spec(FILE_LABELS, classes=["cat", "dog"], resize="stretch"), tmp_path)
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)


def test_a_pattern_without_its_label_is_refused_at_load():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"must hold '\{label\}' once"):
        _spec({**FILE_LABELS, "train_filename": "{n}.jpg"})
    with pytest.raises(ValidationError, match="plain file name"):
        _spec({**FILE_LABELS, "train_filename": "../{label}.{n}.jpg"})


def test_auto_classes_from_class_folders_with_spaces_and_an_empty_one_refused(tmp_path):
    # plant-seedlings: class folders named with spaces.
    for label in ("Black-grass", "Common wheat", "Fat Hen"):
        _jpg(tmp_path / "train" / label / f"{label[:3]}1.png", 50, size=(49, 60))
    _jpg(tmp_path / "test" / "t1.png", 10)
    (tmp_path / "sample_submission.csv").write_text("file,species\nt1,Fat Hen\n")
    spec = _spec({"kind": "class_folders", "filename": "{id}.png"}, resize="pad", id_column="file", label_column="species")
    data = read_competition(spec, tmp_path)
    assert data.classes == ["Black-grass", "Common wheat", "Fat Hen"]
    (tmp_path / "train" / "Loose Silky-bent").mkdir()
    with pytest.raises(DataError, match="Loose Silky-bent: a class folder with no images"):
        read_competition(spec, tmp_path)


def test_numbers_as_labels_sort_by_value_and_a_single_label_is_refused(tmp_path):
    assert natural_order(["10", "2", "0", "2"]) == ["0", "2", "10"]
    assert natural_order(["b", "a", "10"]) == ["10", "a", "b"]
    (tmp_path / "train.csv").write_text("id,diagnosis\na,3\nb,3\n")
    (tmp_path / "sample_submission.csv").write_text("id,diagnosis\nc,0\n")
    for name in "abc":
        _jpg(tmp_path / ("test" if name == "c" else "train") / f"{name}.png", 9, size=(16, 16))
    spec = _spec({"kind": "csv_images"}, label_column="diagnosis")
    with pytest.raises(DataError, match=r"train.csv: the training data holds 1 distinct label\(s\) \(3\)"):
        read_competition(spec, tmp_path)


def test_prepare_records_auto_classes_and_every_command_after_sees_them(pipeline_env):
    from pipelines.stages.download import raw_dir
    from pipelines.stages.inputs import load_inputs
    from pipelines.stages.prepare import prepare

    spec = _spec(FILE_LABELS, resize="stretch", folds={"n_splits": 2, "duplicates": "ignore"})
    raw = raw_dir(spec)
    _dogs_vs_cats(raw, n=5)
    files = {str(p.relative_to(raw)): p.stat().st_size for p in raw.rglob("*") if p.is_file()}
    (raw / "manifest.json").write_text('{"stage": "download", "files": %s}' % str(files).replace("'", '"'))
    prepared = prepare(spec)
    assert prepared.classes() == ["cat", "dog"] and prepared.load().classes == ["cat", "dog"]
    inputs = load_inputs(spec)
    assert inputs.spec.classes == ["cat", "dog"] and spec.classes == "auto"


# --- images of any size and any mode ------------------------------------------------------------------------


def _fit(img, policy, size=(8, 8), channels=3):
    return fit_image(img, size[0], size[1], channels, policy)


def test_resize_policies_stretch_crop_and_pad():
    wide = Image.new("RGB", (40, 20), (255, 255, 255))  # width 40, height 20
    wide.paste((0, 0, 0), (0, 0, 10, 20))  # a black band on the left quarter
    stretched, cropped, padded = (_fit(wide, p) for p in ("stretch", "centre_crop", "pad"))
    assert stretched.shape == cropped.shape == padded.shape == (8, 8, 3)
    assert stretched[:, 0].max() < 30 and stretched[:, -1].min() > 225  # the band kept, squeezed
    assert cropped.min() > 200  # the middle half of the width: no band
    assert padded[0].max() < 10 and padded[-1].max() < 10 and padded[3:5, -1].min() > 225  # black bars above and below
    with pytest.raises(ValueError, match="image is 20x40, expected 8x8"):
        _fit(wide, "keep")


def test_image_modes_read_as_meant(tmp_path):
    sixteen = Image.fromarray(np.full((8, 8), 65535 // 2, dtype=np.uint16))  # half of a 16-bit range
    assert abs(int(_fit(sixteen, "keep", channels=1).mean()) - 128) <= 1, "16-bit scaled, not clipped"
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert _fit(palette, "keep")[0, 0].tolist() == [10, 200, 30]
    rgba = Image.new("RGBA", (8, 8), (250, 250, 250, 0))  # fully transparent white: nothing, on black
    assert _fit(rgba, "keep").max() == 0
    grey_in_rgb = Image.new("RGB", (8, 8), (77, 77, 77))
    assert _fit(grey_in_rgb, "keep", channels=1).reshape(-1).tolist() == [77] * 64
    # EXIF orientation 6 (turned a quarter): a 16x8 file seen as 8x16.
    tall = Image.new("RGB", (16, 8), (0, 0, 0))
    tall.paste((255, 255, 255), (0, 0, 8, 8))
    exif = tall.getexif()
    exif[0x0112] = 6
    tall.save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=95)
    with Image.open(tmp_path / "turned.jpg") as img:
        fitted = fit_image(img, 16, 8, 3, "keep")
    assert fitted.shape == (16, 8, 3) and fitted[:8].mean() > 200 and fitted[8:].mean() < 50


def test_the_exported_kernel_fits_test_images_as_prepare_does(tmp_path):
    from pipelines.after_run.export import models_zip
    from pipelines.recipe import kernel_inference

    _dogs_vs_cats(tmp_path)
    spec = _spec(FILE_LABELS, resize="centre_crop")
    package = tmp_path / "package.zip"
    package.write_bytes(models_zip())
    assert "kpipe_image_fit.py" in zipfile.ZipFile(package).namelist()
    config = {"layout": spec.layout.model_dump(), "image": spec.image.key_dump(), "id_column": spec.submission_id}
    sys.path.insert(0, str(package))
    try:
        ids, images, _ = kernel_inference.read_test(tmp_path, config)
    finally:
        sys.path.remove(str(package))
        sys.modules.pop("kpipe_image_fit", None)
    data = read_competition(spec, tmp_path)
    assert ids == data.test_ids and np.array_equal(images, data.test_images.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("bad_id", ["../secret", "sub/x", "/etc/passwd"])
def test_an_id_is_never_a_path(tmp_path, bad_id):
    (tmp_path / "outside.png").write_bytes(b"")
    _jpg(tmp_path / "raw" / "train" / "a.png", 1)
    _jpg(tmp_path / "raw" / "train" / "b.png", 1)
    (tmp_path / "raw" / "train.csv").write_text(f"id,label\na,x\nb,y\n{bad_id},x\n")
    (tmp_path / "raw" / "sample_submission.csv").write_text("id,label\nc,x\n")
    spec = _spec({"kind": "csv_images"}, resize="stretch")
    with pytest.raises(DataError, match=r"train.csv row 4: id '.*' would name a file outside .*never paths"):
        read_competition(spec, tmp_path / "raw")


def test_a_sample_submission_whose_ids_match_no_test_image_says_so(tmp_path):
    _dogs_vs_cats(tmp_path)
    (tmp_path / "sample_submission.csv").write_text("id,label\nimg_1,0.5\nimg_2,0.5\n")
    with pytest.raises(DataError, match=r"none of the 2 ids of sample_submission.csv names one of the 2 images in test "
                                        r"\(id 'img_1' would be 'img_1.jpg', a file there is '1.jpg'\)"):
        read_competition(_spec(FILE_LABELS, resize="stretch"), tmp_path)


def test_test_images_spread_over_several_folders(tmp_path):
    _dogs_vs_cats(tmp_path)
    (tmp_path / "test2").mkdir()
    _jpg(tmp_path / "test2" / "3.jpg", 200)
    (tmp_path / "sample_submission.csv").write_text("id,label\n1,0.5\n3,0.5\n2,0.5\n")
    layout = {**FILE_LABELS, "test_dir": ["test", "test2"]}
    data = read_competition(_spec(layout, resize="stretch"), tmp_path)
    assert data.test_ids == ["1", "3", "2"] and int(data.test_images[1].mean()) >= 195  # 3.jpg, from test2/
    _jpg(tmp_path / "test2" / "1.jpg", 5)
    with pytest.raises(DataError, match=r"test2/1.jpg: also in .*test; a test image must be in one folder"):
        read_competition(_spec(layout, resize="stretch"), tmp_path)


@pytest.mark.slow
def test_a_planned_run_probes_and_trains_for_the_classes_auto_found(pipeline_env, host, tmp_path):
    # Ten classes found at prepare: a probe built for the spec as written (`auto`) would have had 4 outputs.
    import yaml

    from competition.spec import SPEC_DIR, load_spec
    from pipelines.context import setup_budget

    raw = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    raw["classes"] = "auto"
    raw.pop("class_names", None)
    raw["pool"]["candidates"] = raw["pool"]["candidates"][:1]  # one probe shows it
    raw.pop("tuning", None)
    path = tmp_path / "digits-auto.yaml"
    path.write_text(yaml.safe_dump(raw))
    ctx = setup_budget(load_spec(str(path)), 60.0)
    assert ctx.spec.classes == [str(i) for i in range(10)] and ctx.plan is not None
