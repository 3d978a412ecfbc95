"""Competition YAML: the shipped specs load; mistakes are one line naming the file and the key."""
from __future__ import annotations

import pytest

from competition.errors import SpecError
from competition.spec import available, load_spec


def test_shipped_specs_load():
    assert {"fashion-mnist", "digits", "tiny-image-challenge"} <= set(available())
    tiny = load_spec("tiny-image-challenge")
    assert tiny.kaggle_slug == "thu-deep-learning" and tiny.synthetic
    assert (tiny.image.height, tiny.image.width, tiny.image.channels) == (64, 64, 3)
    assert len(tiny.classes) == 100 and tiny.metric.name == "accuracy"
    fashion = load_spec("fashion-mnist")
    assert fashion.classes[:2] == ["0", "1"] and fashion.display_names[0] == "T-shirt/top"


def _write_variant(tmp_path, old: str, new: str):
    text = (load_spec.__globals__["SPEC_DIR"] / "digits.yaml").read_text()
    assert old in text
    path = tmp_path / "variant.yaml"
    path.write_text(text.replace(old, new))
    return path


@pytest.mark.parametrize("old, new, message", [
    ("metric: accuracy", "metric: accuracy\nmetrc: f1", "unknown key 'metrc'"),
    ("image: {height: 8,", "image: {heigth: 8,", "unknown key 'image.heigth'"),
    ("  filename: \"{id}.png\"", "  filename: \"{id}.png\"\n  folder: x", "unknown key 'layout.folder'"),
    ("n_splits: 5", "n_splits: five", "key 'folds.n_splits'"),
    ("channels: 1", "channels: 2", "key 'image.channels'"),
    ("host: local", "host: somewhere", "key 'host'"),
    ("kind: csv_images", "kind: parquet", "key 'layout'"),
    ("title: Digits 8x8 (tiny, local host)\n", "", "missing required key 'title'"),
])
def test_bad_spec_is_one_line_naming_file_and_key(tmp_path, old, new, message):
    path = _write_variant(tmp_path, old, new)
    with pytest.raises(SpecError) as info:
        load_spec(str(path))
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(str(path))
    assert message in text


def test_unknown_competition_lists_known_ones():
    with pytest.raises(SpecError, match="no such competition spec; known competitions: .*digits"):
        load_spec("no-such-comp")


def test_invalid_yaml_names_the_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\nclasses: [0, 1\n")
    with pytest.raises(SpecError, match=r"broken.yaml line \d+: not valid YAML"):
        load_spec(str(path))


def test_a_variant_extends_a_spec_and_replaces_whole_keys(tmp_path):
    code = load_spec("digits-code")
    digits = load_spec("digits")
    assert code.kernels_only and code.code_competition is None and code.kaggle_slug == "digits-code"
    assert code.data_hash() == digits.data_hash() and code.pool == digits.pool  # the rest is the base's
    base = (load_spec.__globals__["SPEC_DIR"] / "digits.yaml").read_text()
    (tmp_path / "base.yaml").write_text(base)
    (tmp_path / "child.yaml").write_text("extends: base\nname: child\nflips: {vflip: false}\n")
    child = load_spec(str(tmp_path / "child.yaml"))
    assert not digits.flips.hflip
    assert child.name == "child" and child.flips.hflip  # the whole key replaced (hflip back to its default), not merged

    for text, message in [("extends: nowhere\n", "extends: no spec 'nowhere' beside it (there are: base, child, loop"),
                          ("extends: loop\n", "extends: 'loop' leads back to itself"),
                          ("extends: [base]\n", "extends: name one spec beside it")]:
        (tmp_path / "loop.yaml").write_text(text)
        with pytest.raises(SpecError) as info:
            load_spec(str(tmp_path / "loop.yaml"))
        assert message in str(info.value) and "\n" not in str(info.value)
    (tmp_path / "kernels.yaml").write_text("extends: base\nkernels_only: true\n")
    with pytest.raises(SpecError, match="code_competition: this competition is a code competition itself"):
        load_spec(str(tmp_path / "kernels.yaml"))
