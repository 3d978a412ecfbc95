"""Every input is untrusted: broken competition files, hostile archives and images, bad specs and fold
tables, foreign checkpoints. Each refusal is one line naming the file, the field and the fix, and no
partial artifact is left behind."""
from __future__ import annotations

import re

import io
import json
import os
import pickle
import struct
import uuid
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from competition.atomic import STAGING_MARK
from competition.errors import DataError, UserError
from competition.host.server import serve_in_thread
from competition.host.store import HostStore
from competition.spec import load_spec
from pipelines.__main__ import main as pipelines_main
from pipelines.stages import archives as archive_stage
from pipelines.stages.archives import unpack_all
from pipelines.stages.predict import load_checkpoint
from pipelines.stages.prepare import make_folds, prepare
from tests.conftest import Host


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A host of this module's own: the broken competitions added here stay out of other tests' listings."""
    store = HostStore(tmp_path_factory.mktemp("bad-input-host"))
    server, _ = serve_in_thread(store, port=0)
    yield Host(store, server.server_address[1])
    server.shutdown()
    server.server_close()


def course(tmp_path: Path, host, mutate=None, extra_spec: dict | None = None) -> tuple[Path, str]:
    """A small csv_images competition on the test host (8x8 grey PNGs, labels a/b) and its spec.
    `mutate(data_folder)` breaks something before the host takes it; returns (spec path, spec name)."""
    slug = f"bad-{uuid.uuid4().hex[:8]}"
    folder = tmp_path / slug
    data = folder / "data"
    (data / "train").mkdir(parents=True)
    (data / "test").mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(data / "train" / f"r{i}.png")
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8)).save(data / "test" / f"t{i}.png")
    (data / "train.csv").write_text("id,label\n" + "".join(f"r{i},{'ab'[i % 2]}\n" for i in range(8)))
    (data / "sample_submission.csv").write_text("id,label\n" + "".join(f"t{i},a\n" for i in range(4)))
    (folder / "solution.csv").write_text("id,label,Usage\n" + "".join(
        f"t{i},{'ab'[i % 2]},{'Public' if i < 2 else 'Private'}\n" for i in range(4)))
    (folder / "competition.json").write_text(json.dumps({
        "slug": slug, "title": "Bad input", "labels": ["a", "b"], "id_column": "id", "label_column": "label"}))
    if mutate is not None:
        mutate(data)
    host.store.add_competition(folder)
    spec = {"name": slug, "title": "Bad input", "kaggle_slug": slug, "host": "local",
            "layout": {"kind": "csv_images", "filename": "{id}.png"}, "classes": ["a", "b"],
            "image": {"height": 8, "width": 8, "channels": 1}, "metric": "accuracy", "folds": {"n_splits": 2, "seed": 1},
            **(extra_spec or {})}
    path = tmp_path / f"{slug}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path, slug


def one_line_error(capsys) -> str:
    """The error line; before it, stderr may only hold progress bars (the kaggle client's download bar)."""
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1] if err else ""
    assert last.startswith("error: ") and "Traceback" not in err, err
    assert all("error" not in line for line in err.splitlines()[:-1]), err
    return last


def assert_nothing_partial(data_root: Path, comp: str, stage: str) -> None:
    root = data_root / comp
    leftovers = [p for p in root.rglob("*") if STAGING_MARK in p.name] if root.exists() else []
    assert not leftovers, leftovers
    stage_dir = root / stage
    assert not stage_dir.exists() or not any(stage_dir.iterdir()), list(stage_dir.iterdir())


# --- competition files ----------------------------------------------------------------------------


def _png_bomb(path: Path, side: int = 30000) -> None:
    """A valid PNG header claiming side x side pixels, with a few bytes of data: decoding it would need
    gigabytes. The header alone must be enough to refuse it."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    ihdr = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 1000))
                     + chunk(b"IEND", b""))


CSV_CASES = {
    "train-header-only": (lambda d: (d / "train.csv").write_text("id,label\n"), "train.csv: a header but no rows"),
    "train-empty": (lambda d: (d / "train.csv").write_text(""), "train.csv: empty file; it needs a header row"),
    "train-not-utf8": (lambda d: (d / "train.csv").write_bytes(b"id,label\nr0,\xff\xfe\n"), "train.csv: not UTF-8 text"),
    "train-huge-field": (lambda d: (d / "train.csv").write_text("id,label\n" + "r0," + "a" * 10_000 + "\n"),
                         "train.csv row 2: column 'label' holds 10,000 characters"),
    "train-missing-column": (lambda d: (d / "train.csv").write_text("id,target\nr0,a\n"),
                             "train.csv: missing column 'label'"),
    "train-unknown-label": (lambda d: (d / "train.csv").write_text("id,label\nr0,a\nr1,zebra\n"),
                            "train.csv row 3: label 'zebra' is not in the class list"),
    "train-duplicate-id": (lambda d: (d / "train.csv").write_text("id,label\nr0,a\nr0,b\n"),
                           "train.csv row 3: duplicate id 'r0'"),
    "sample-header-only": (lambda d: (d / "sample_submission.csv").write_text("id,label\n"),
                           "sample_submission.csv: a header but no rows"),
    "image-bomb": (lambda d: _png_bomb(d / "train" / "r3.png"), "r3.png: refused as a decompression bomb"),
    "image-too-big": (lambda d: _png_bomb(d / "train" / "r3.png", side=9000), "r3.png: image is 9000x9000, expected 8x8"),
    "image-truncated": (lambda d: (d / "train" / "r2.png").write_bytes((d / "train" / "r2.png").read_bytes()[:30]),
                        "r2.png: unreadable image"),
    "image-not-an-image": (lambda d: (d / "train" / "r1.png").write_text("hello"), "r1.png: unreadable image"),
    "image-wrong-size": (lambda d: Image.new("L", (9, 8)).save(d / "train" / "r4.png"),
                         "r4.png: image is 8x9, expected 8x8"),
    "test-image-missing": (lambda d: (d / "test" / "t2.png").unlink(), "t2.png: missing image"),
    "test-extra-image": (lambda d: Image.new("L", (8, 8)).save(d / "test" / "t9.png"),
                         "1 images are not listed in sample_submission.csv"),
}


@pytest.mark.parametrize("case", sorted(CSV_CASES))
def test_broken_competition_files_stop_prepare_in_one_line(pipeline_env, host, tmp_path, capsys, case):
    mutate, phrase = CSV_CASES[case]
    spec_path, comp = course(tmp_path, host, mutate)
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 2
    err = one_line_error(capsys)
    assert phrase in err, err
    assert_nothing_partial(pipeline_env, comp, "prepared")


def test_a_zip_bomb_from_the_host_is_refused_before_unzipping(pipeline_env, host, tmp_path, capsys):
    # 60 MB of zeros deflates to ~60 kB: a 1000-fold expansion that no image or array file has.
    spec_path, comp = course(tmp_path, host, lambda d: (d / "padding.bin").write_bytes(bytes(60 << 20)))
    assert pipelines_main(["download", "--comp", str(spec_path)]) == 2
    err = one_line_error(capsys)
    assert "entry 'padding.bin' expands" in err and "zip bomb" in err, err
    assert not (pipeline_env / comp / "raw").exists()
    assert_nothing_partial(pipeline_env, comp, "raw")


def test_an_archive_over_the_size_limit_says_which_setting_to_raise(pipeline_env, host, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KPIPE_UNZIP_LIMIT_GB", "0.000001")  # about 1 kB
    spec_path, comp = course(tmp_path, host)
    assert pipelines_main(["download", "--comp", str(spec_path)]) == 2
    err = one_line_error(capsys)
    assert "more than the limit of" in err and "raise KPIPE_UNZIP_LIMIT_GB" in err
    assert not (pipeline_env / comp / "raw").exists()


def _zip(path: Path, entries: list[tuple[str, bytes]], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries:
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, "/etc/passwd")
    return path


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _corrupt_crc(path: Path) -> Path:
    _zip(path, [("train.csv", b"id,label\n" + b"r0,a\n" * 50)])
    raw = bytearray(path.read_bytes())
    raw[raw.index(b"r0,a")] ^= 0x01  # one flipped bit in the stored (uncompressed) data
    path.write_bytes(bytes(raw))
    return path


ZIP_CASES = {
    "duplicate-names": (lambda p: _zip(p, [("train.csv", b"a"), ("train.csv", b"b")]), "appears twice"),
    "absolute-path": (lambda p: _zip(p, [("/etc/cron.d/x", b"a")]), "would escape the data folder"),
    "dot-dot": (lambda p: _zip(p, [("data/../../x", b"a")]), "would escape the data folder"),
    "backslash": (lambda p: _zip(p, [("..\\x", b"a")]), "would escape the data folder"),
    "symlink": (lambda p: _zip(p, [("ok.csv", b"a")], symlink="link"), "would escape the data folder"),
    "crc": (_corrupt_crc, "is corrupt or unsupported"),
    "not-a-zip": (lambda p: _write(p, b"PK\x03\x04 but not really"), "not a valid zip file"),
    "empty": (lambda p: _zip(p, []), "holds no files"),
}


@pytest.mark.parametrize("case", sorted(ZIP_CASES))
def test_hostile_archives_are_refused_naming_the_entry(tmp_path, case):
    make, phrase = ZIP_CASES[case]
    archive = make(tmp_path / "in.zip")
    with pytest.raises(DataError, match=phrase) as refused:
        unpack_all(archive, tmp_path / "out")
    assert str(archive) in str(refused.value) and "\n" not in str(refused.value)
    assert not (tmp_path / "x").exists() and not Path("/etc/cron.d/x").exists()


def test_too_many_entries_are_refused_before_any_is_written(tmp_path, monkeypatch):
    monkeypatch.setattr(archive_stage, "MAX_ENTRIES", 3)
    archive = _zip(tmp_path / "many.zip", [(f"f{i}.csv", b"x") for i in range(5)])
    with pytest.raises(DataError, match="5 entries, more than the limit of 3"):
        unpack_all(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _tar(path: Path, entries: list[tuple[str, bytes]], kind: str = "file", mode: str = "w:gz") -> Path:
    import io
    import tarfile

    with tarfile.open(path, mode) as tf:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "symlink":
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tf.addfile(info)
            elif kind == "device":
                info.type = tarfile.CHRTYPE
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


def _7z(path: Path, entries: list[tuple[str, bytes]]) -> Path:
    import py7zr

    with py7zr.SevenZipFile(path, "w") as archive:
        for name, data in entries:
            archive.writestr(data, name)
    return path


def _outer(path: Path, inner: Path, *more: tuple[str, bytes]) -> Path:
    """A competition's zip holding `inner` (an archive) and `more` files beside it."""
    return _zip(path, [(inner.name, inner.read_bytes()), *more])


def test_archives_inside_the_download_are_unpacked_in_place_zip_tar_and_7z(tmp_path):
    # dogs-vs-cats: train.zip (holding train/) inside the competition's zip; other competitions ship tars or 7z.
    train = _zip(tmp_path / "train.zip", [("train/cat.0.jpg", b"c0"), ("train/dog.0.jpg", b"d0")])
    test = _tar(tmp_path / "test.tar.gz", [("test/1.jpg", b"t1")])
    extra = _7z(tmp_path / "extra.7z", [("extra/readme.txt", b"hello")])
    outer = _zip(tmp_path / "comp.zip", [("train.zip", train.read_bytes()), ("test.tar.gz", test.read_bytes()),
                                         ("extra.7z", extra.read_bytes()), ("sample_submission.csv", b"id,label\n1,0.5\n")])
    out = tmp_path / "out"
    files = unpack_all(outer, out)
    assert files == {"train/cat.0.jpg": 2, "train/dog.0.jpg": 2, "test/1.jpg": 2, "extra/readme.txt": 5,
                     "sample_submission.csv": 15}
    assert (out / "train" / "dog.0.jpg").read_bytes() == b"d0" and (out / "extra" / "readme.txt").read_bytes() == b"hello"
    assert not any(p.name.endswith((".zip", ".gz", ".7z")) for p in out.rglob("*")), "the inner archives stay behind"


NESTED_CASES = {
    "tar-symlink": (lambda d: _outer(d / "c.zip", _tar(d / "t.tar.gz", [("link", b"")], kind="symlink")),
                    "t.tar.gz: entry 'link' would escape"),
    "tar-device": (lambda d: _outer(d / "c.zip", _tar(d / "t.tar", [("dev", b"")], kind="device", mode="w")),
                   "t.tar: entry 'dev' would escape"),
    "tar-dot-dot": (lambda d: _outer(d / "c.zip", _tar(d / "t.tgz", [("../../x", b"a")])), "t.tgz: entry '../../x' would escape"),
    "file-and-folder": (lambda d: _zip(d / "c.zip", [("train", b"a"), ("train/x.png", b"b")]),
                        "'train' is both a file and a folder"),
    "overwrites-outer-file": (lambda d: _outer(d / "c.zip", _zip(d / "train.zip", [("train.csv", b"inner")]),
                                               ("train.csv", b"outer")), "train.zip: entry 'train.csv' would overwrite"),
    "nested-too-deep": (lambda d: _outer(d / "c.zip", _zip(d / "b.zip", [("a.zip", _zip(d / "a.zip", [
        ("z.zip", _zip(d / "z.zip", [("x.csv", b"x")]).read_bytes())]).read_bytes())])), "nested more than 3 deep"),
    "not-a-tar": (lambda d: _zip(d / "c.zip", [("t.tar.gz", b"not a tar at all")]), "t.tar.gz: not a valid tar file"),
    "not-a-7z": (lambda d: _zip(d / "c.zip", [("s.7z", b"7z but not really")]), "s.7z: not a valid 7z file"),
}


@pytest.mark.parametrize("case", sorted(NESTED_CASES))
def test_hostile_archives_inside_the_download_are_refused_naming_the_archive_and_entry(tmp_path, case):
    make, phrase = NESTED_CASES[case]
    (tmp_path / "build").mkdir()
    archive = make(tmp_path / "build")
    with pytest.raises(DataError, match=re.escape(phrase)) as refused:
        unpack_all(archive, tmp_path / "out")
    assert "\n" not in str(refused.value)
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_the_size_limit_counts_every_nested_level_together(tmp_path, monkeypatch):
    monkeypatch.setenv("KPIPE_UNZIP_LIMIT_GB", str(2000 / (1 << 30)))  # 2,000 bytes in all
    inner = _zip(tmp_path / "train.zip", [("train/a.bin", b"x" * 1000)])
    outer = _outer(tmp_path / "c.zip", inner, ("b.bin", b"y" * 400))  # the outer level alone fits
    with pytest.raises(DataError, match="train.zip: unpacks to 2,5.. bytes in all, more than the limit of 2,000 bytes"):
        unpack_all(outer, tmp_path / "out")


# --- specs ----------------------------------------------------------------------------------------


def _digits_yaml(tmp_path: Path, text_edit) -> Path:
    text = (Path(__file__).resolve().parent.parent / "competition" / "digits.yaml").read_text()
    path = tmp_path / "spec.yaml"
    path.write_bytes(text_edit(text) if callable(text_edit) else text_edit)
    return path


SPEC_CASES = {
    "duplicate-key": (lambda t: (t + "\nmetric: accuracy\n").encode(), "duplicate key 'metric' (first on line"),
    "not-utf8": (lambda t: t.encode().replace(b"Digits", b"Dig\xffits"), "not UTF-8 text"),
    "unknown-placeholder": (lambda t: t.replace('"{id}.png"', '"{id}_{label}.png"').encode(),
                            "unknown placeholder '{label}'"),
    "unbalanced-brace": (lambda t: t.replace('"{id}.png"', '"{id.png"').encode(), "is not a file name pattern"),
    "path-in-filename": (lambda t: t.replace('"{id}.png"', '"../{id}.png"').encode(), "must be a plain file name"),
    "no-id": (lambda t: t.replace('"{id}.png"', '"image.png"').encode(), "must contain '{id}'"),
    "bad-yaml": (lambda t: (t + "\n  : : [\n").encode(), "not valid YAML"),
    "huge": (lambda t: (t + "#" * (2 << 20)).encode(), "a competition spec is a few kB"),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_bad_specs_are_one_line_naming_the_file_and_key(tmp_path, capsys, case):
    edit, phrase = SPEC_CASES[case]
    path = _digits_yaml(tmp_path, edit)
    assert pipelines_main(["prepare", "--comp", str(path)]) == 2
    err = one_line_error(capsys)
    assert str(path) in err and phrase in err, err


def test_labels_that_look_like_numbers_are_kept_as_written(tmp_path):
    path = _digits_yaml(tmp_path, lambda t: t.replace("classes: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]",
                                                      "classes: [00, 01, 1.0, 1.50, yes, no, 0x1F, 007, 8, 9]").encode())
    assert load_spec(str(path)).classes == ["00", "01", "1.0", "1.50", "yes", "no", "0x1F", "007", "8", "9"]


# --- folds, caches, checkpoints, the command line -------------------------------------------------


@pytest.mark.parametrize("edit, phrase", [
    (lambda rows: rows[:1] + [rows[1].rsplit(",", 1)[0] + ",-2"] + rows[2:], "row 2: fold -2 is outside 0..1"),
    (lambda rows: rows[:2] + [rows[2].rsplit(",", 1)[0] + ",7"] + rows[3:], "row 3: fold 7 is outside 0..1"),
    (lambda rows: rows[:-2], "6 rows for 8 training images"),
    (lambda rows: rows[:1] + [rows[1].rsplit(",", 1)[0] + ",one"] + rows[2:], "unreadable fold table"),
])
def test_a_hand_edited_fold_table_is_refused_at_load(pipeline_env, host, tmp_path, capsys, edit, phrase):
    spec_path, comp = course(tmp_path, host, extra_spec={"profiles": {"quick": {"folds": [0], "models": [
        {"model": "cnn3", "model_args": {"width": 8}, "epochs": 1, "batch_size": 2}]}}})
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    folds_csv = next((pipeline_env / comp / "folds").glob("*/folds.csv"))
    folds_csv.write_text("\n".join(edit(folds_csv.read_text().strip().splitlines())) + "\n")
    capsys.readouterr()
    assert pipelines_main(["train", "--comp", str(spec_path)]) == 2
    err = one_line_error(capsys)
    assert str(folds_csv) in err and phrase in err and "make prepare" in err, err
    assert not (pipeline_env / comp / "train").exists()


def test_prepared_cache_follows_file_contents_not_names_and_sizes(pipeline_env, host, tmp_path):
    spec_path, comp = course(tmp_path, host)
    spec = load_spec(str(spec_path))
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    first = prepare(spec)
    train_csv = pipeline_env / comp / "raw" / "train.csv"
    edited = train_csv.read_text().replace("r1,b", "r1,a")  # same names, same size, other content
    assert len(edited) == len(train_csv.read_text())
    train_csv.write_text(edited)
    second = prepare(spec)
    assert second.key != first.key
    assert second.load().train_labels[1] == 0 and first.load().train_labels[1] == 1


class _Payload:
    def __reduce__(self):
        return (Path.write_text, (Path("/tmp/kpipe-pwned"), "pwned"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    Path("/tmp/kpipe-pwned").unlink(missing_ok=True)
    evil = tmp_path / "best.pt"
    buffer = io.BytesIO()
    torch.save({"state_dict": {}, "trap": _Payload()}, buffer, pickle_protocol=pickle.HIGHEST_PROTOCOL)
    evil.write_bytes(buffer.getvalue())
    with pytest.raises(UserError, match=r"best.pt: unreadable checkpoint .*delete it and train that fold again"):
        load_checkpoint(evil, torch.device("cpu"))
    assert not Path("/tmp/kpipe-pwned").exists()


@pytest.mark.parametrize("fold, phrase", [("-1", "FOLD=-1: folds are numbered 0..4"), ("5", "FOLD=5: folds are numbered 0..4")])
def test_fold_out_of_range_on_the_command_line(pipeline_env, capsys, fold, phrase):
    assert pipelines_main(["train", "--comp", "digits", "--fold", fold]) == 2
    assert phrase in one_line_error(capsys)


@pytest.mark.parametrize("variable, value", [("WORKERS", "abc"), ("TRIALS", "1.5"), ("THREADS", "two"), ("GPUS", "-1"),
                                             ("FOLD", "x"), ("PORT", "80a"), ("WORKERS", "1 2")])
def test_a_make_variable_that_is_not_a_number_is_one_line_before_anything_starts(variable, value):
    import subprocess

    from competition.paths import REPO_ROOT

    # `-n`: make reads the Makefile (where the check is) and would only print the commands it runs.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}  # not a sub-make
    done = subprocess.run(["make", "-n", "train", "COMP=digits", f"{variable}={value}"], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode != 0 and not done.stdout, done.stdout
    [line] = done.stderr.strip().splitlines()
    assert f"*** {variable}={value}: must be a whole number (" in line and f"e.g. {variable}=" in line, line


@pytest.mark.parametrize("argv, line", [
    (["train", "--comp", "digits", "--workers", "abc"], "error: WORKERS=abc: must be a whole number, at least 1 (e.g. WORKERS=2)"),
    (["tune", "--comp", "digits", "--trials", "0"], "error: TRIALS=0: must be a whole number, at least 1 (e.g. TRIALS=20)"),
    (["train", "--comp", "digits", "--fold", "one"], "error: FOLD=one: must be a whole number (e.g. FOLD=0)"),
    (["submit", "--comp", "digits", "--gpus", "2.5"], "error: GPUS=2.5: must be a whole number, at least 1 (e.g. GPUS=2)"),
    (["train", "--comp", "digits", "--epochs", "3"], "error: unrecognized arguments: --epochs 3 "
                                                     "(`python -m pipelines --help` lists what it takes)"),
])
def test_a_bad_command_line_is_one_line_not_a_usage_block(pipeline_env, capsys, argv, line):
    assert pipelines_main(argv) == 2
    assert one_line_error(capsys) == line
    assert not (pipeline_env / "digits").exists()


def test_the_host_command_line_is_one_line_too(capsys):
    from competition.host.__main__ import main as host_main

    assert host_main(["serve", "--port", "http"]) == 2
    assert capsys.readouterr().err == "error: PORT=http: must be a whole number from 0 to 65535 (e.g. PORT=8080)\n"


@pytest.mark.parametrize("array, phrase", [
    (np.zeros((4, 8, 8), dtype=np.float32), "dtype float32, expected uint8"),
    (np.zeros((4, 9, 8), dtype=np.uint8), "array shape (4, 9, 8, 1)"),
    (np.array([{"a": 1}], dtype=object), "not a readable .npy array"),
])
def test_bad_npy_arrays_are_refused(tmp_path, array, phrase):
    from pipelines.stages.readers import load_npy

    spec = load_spec("digits")
    path = tmp_path / "images.npy"
    np.save(path, array, allow_pickle=True)
    with pytest.raises(DataError, match=phrase.replace("(", r"\(").replace(")", r"\)")):
        load_npy(path, spec, "training images")


def test_make_folds_on_a_spec_with_too_few_images_per_class(pipeline_env, host, tmp_path, capsys):
    spec_path, comp = course(tmp_path, host, extra_spec={"folds": {"n_splits": 5, "seed": 1}})
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 2
    err = one_line_error(capsys)
    assert "fewer than folds.n_splits=5" in err and "lower n_splits" in err
    assert_nothing_partial(pipeline_env, comp, "folds")
    spec = load_spec(str(spec_path))
    with pytest.raises(DataError):
        make_folds(spec, prepare(spec))


def test_anchors_and_merge_keys_still_share_settings(tmp_path):
    """Refusing duplicate keys must not refuse YAML's own way of sharing a block (`<<: *base`)."""
    def edit(text: str) -> bytes:
        head = text[:text.index("profiles:")]
        return (head + "profiles:\n  quick:\n    models:\n      - &base {model: cnn3, epochs: 1, batch_size: 32}\n"
                "      - <<: *base\n        alias: longer\n        epochs: 3\n").encode()
    runs = load_spec(str(_digits_yaml(tmp_path, edit))).profiles["quick"].models
    assert [(r.name, r.epochs, r.batch_size) for r in runs] == [("cnn3", 1, 32), ("longer", 3, 32)]


# --- checked when the command starts, before any download ---------------------------------------------


def _profile_spec(tmp_path: Path, run_changes: dict | None = None, profile_changes: dict | None = None,
                  tuning: dict | None = None) -> Path:
    spec = yaml.safe_load((Path(__file__).resolve().parent.parent / "competition" / "digits.yaml").read_text())
    run = {"model": "cnn3", "epochs": 1, **(run_changes or {})}
    spec["profiles"] = {"quick": {"folds": [0], "models": [run], **(profile_changes or {})}}
    spec.pop("pool")
    spec.pop("tuning", None)
    if tuning is not None:
        spec["tuning"] = tuning
    path = tmp_path / "early.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


EARLY_CASES = {
    "optimizer": (dict(run_changes={"optimizer": {"name": "sgdd"}}), ["train"],
                  "key 'profiles.quick.models.0.optimizer.name': unknown optimizer 'sgdd': did you mean 'sgd'?"),
    "schedule": (dict(run_changes={"schedule": {"name": "cosin"}}), ["train"],
                 "key 'profiles.quick.models.0.schedule.name': unknown schedule 'cosin'"),
    "policy": (dict(run_changes={"augment": {"policy": "heavy"}}), ["train"],
               "key 'profiles.quick.models.0.augment.policy': unknown augmentation policy 'heavy'"),
    "view": (dict(profile_changes={"tta": ["identity", "rotate"]}), ["submit"],
             "key 'profiles.quick.tta.1': unknown TTA view 'rotate'"),
    "method": (dict(profile_changes={"ensemble": "stacking"}), ["submit"],
               "key 'profiles.quick.ensemble': unknown ensemble method 'stacking'"),
    "model": (dict(run_changes={"model": "resnet81"}), ["train"], "unknown model 'resnet81'"),
    "pretrained": (dict(run_changes={"pretrained": True}), ["train"],
                   "key 'profiles.quick.models.0.pretrained': model 'cnn3' has no published weights"),
    "weights-file": (dict(run_changes={"pretrained_file": "/nowhere/cnn3.pth"}), ["train"],
                     "key 'profiles.quick.models.0.pretrained_file': /nowhere/cnn3.pth: no such file"),
    "tuning-choice": (dict(tuning={"search_space": {"augment.policy": {"type": "categorical", "choices": ["light", "wild"]}}}),
                      ["train"], "key 'tuning.search_space.augment.policy.choices': unknown augmentation policy 'wild'"),
    "no-tuning": (dict(), ["tune", "--trials", "2"], "no `tuning:` section"),
    "unknown-MODEL": (dict(), ["train", "--model", "vgg11"], "profile 'quick' has no model 'vgg11' (has: cnn3)"),
    "unknown-profile": (dict(), ["train", "--profile", "fast"], "no profile 'fast' under `profiles:`"),
    "fold": (dict(), ["train", "--fold", "9"], "FOLD=9: folds are numbered 0..4"),
    "profile-fold": (dict(profile_changes={"folds": [0, -1]}), ["train"],
                     "profiles.quick.folds: fold -1 does not exist; folds are numbered 0..4 (folds.n_splits is 5)"),
    "tuning-fold": (dict(tuning={"folds": [-1], "search_space": {"optimizer.lr": {"type": "float", "low": 0.01, "high": 0.1}}}),
                    ["tune", "--trials", "1"], "tuning.folds: fold -1 does not exist; folds are numbered 0..4"),
}


@pytest.mark.parametrize("case", sorted(EARLY_CASES))
def test_names_and_the_command_line_are_checked_before_any_download(pipeline_env, tmp_path, capsys, case):
    spec_changes, command, phrase = EARLY_CASES[case]
    path = _profile_spec(tmp_path, **spec_changes)
    assert pipelines_main([command[0], "--comp", str(path), *command[1:]]) == 2
    err = one_line_error(capsys)
    assert phrase in err, err
    assert not (pipeline_env / "digits").exists(), "work started before the check"
