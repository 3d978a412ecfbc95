"""Models leave the pipeline: `make predict` on new images and `make export` for a code competition
reproduce the pipeline's own submission (real training on digits, the real `kaggle` CLI, the exported
script in a venv holding only what it declares)."""
from __future__ import annotations

import copy
import csv
import dataclasses
import json
import re
import subprocess
import time

import numpy as np
import pytest
from PIL import Image

from competition.spec import load_spec
from pipelines.__main__ import main as pipelines_main
from pipelines.after_run.export import write_package
from pipelines.stages.lineage import find_run
from tests.test_train_submit import TINY_RUN, write_digits_variant

pytestmark = pytest.mark.slow  # every test here trains, or runs a whole command on a cluster or a package


def _rows(path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def _probs(path) -> np.ndarray:
    return np.array([[float(v) for v in row[1:]] for row in _rows(path)[1:]])


@pytest.fixture
def trained(pipeline_env, host, tmp_path, monkeypatch, capsys):
    """A submitted digits run of two models on two folds with shift TTA: (spec path, its submission CSV)."""
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec_path = write_digits_variant(tmp_path, [TINY_RUN, {**TINY_RUN, "model": "fastcnn", "alias": "fast"}])
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    capsys.readouterr()
    [submission] = [p for p in (tmp_path / "submissions" / "digits").glob("*.csv") if p.name != "log.csv"]
    return spec_path, submission


def test_predict_reproduces_the_submission_and_refuses_what_it_cannot_read(trained, pipeline_env, tmp_path, capsys):
    spec_path, submission = trained
    logged = find_run(load_spec(spec_path), None)
    members = logged.lineage["members"]
    assert [m["name"] for m in members] == ["cnn3", "fast"] and all(m["views"] == ["identity", "shift"] for m in members)
    assert all(len(m["folds"]) == 2 and len(m["folds"][0]["mean"]) == 1 for m in members)
    assert submission.stem.endswith(logged.config_hash)

    out = tmp_path / "preds.csv"
    test_folder = pipeline_env / "digits" / "raw" / "test"
    assert pipelines_main(["predict", "--comp", str(spec_path), "--input", str(test_folder), "--out", str(out),
                           "--probs"]) == 0
    assert "predict: 450 images through run" in capsys.readouterr().out
    assert _rows(out) == _rows(submission)  # the same ids, order and labels as the uploaded file
    expected = np.load(logged.ensemble / "test_probs.npy")
    assert np.abs(_probs(out.with_suffix(".probs.csv")) - expected).max() < 1e-5

    # A .npy of the same images, one of them the wrong size, and a CSV of paths.
    images = np.stack([np.asarray(Image.open(p)) for p in sorted(test_folder.glob("*.png"))[:5]])
    np.save(tmp_path / "five.npy", images)
    assert pipelines_main(["predict", "--comp", str(spec_path), "--input", str(tmp_path / "five.npy"), "--out",
                           str(tmp_path / "five.csv")]) == 0
    assert [r[1] for r in _rows(tmp_path / "five.csv")[1:]] == [r[1] for r in _rows(submission)[1:6]]
    Image.fromarray(images[0]).resize((16, 16)).save(tmp_path / "big.png")
    (tmp_path / "list.csv").write_text("path\nbig.png\n")
    assert pipelines_main(["predict", "--comp", str(spec_path), "--input", str(tmp_path / "list.csv")]) == 2
    error = capsys.readouterr().err
    assert "big.png: image is 16x16, expected 8x8" in error and "RESIZE=1" in error and "Traceback" not in error
    assert pipelines_main(["predict", "--comp", str(spec_path), "--input", str(tmp_path / "list.csv"), "--resize",
                           "--out", str(tmp_path / "big.csv")]) == 0
    assert _rows(tmp_path / "big.csv")[1][0] == "big"
    assert pipelines_main(["predict", "--comp", str(spec_path), "--input", str(tmp_path / "five.npy"),
                           "--run", "feedbeef"]) == 2
    assert f"no logged submission of digits has that config hash (logged: {logged.config_hash})" in capsys.readouterr().err


def test_export_runs_offline_and_enters_the_code_competition_with_the_same_score(trained, pipeline_env, host, tmp_path,
                                                                                 run_kaggle, kernel_python, monkeypatch,
                                                                                 capsys):
    spec_path, submission = trained
    spec = load_spec(spec_path)
    logged = find_run(spec, None)
    assert pipelines_main(["export", "--comp", str(spec_path)]) == 0
    assert "kaggle kernels push -p" in capsys.readouterr().out
    package = pipeline_env / "digits" / "export" / logged.config_hash
    dataset, kernel = package / "dataset", package / "kernel"
    shipped = sorted(m["name"] for m in logged.lineage["members"] if m["weight"] > 0)  # weight 0: left out
    assert sorted(p.name for p in dataset.glob("*.safetensors")) == [f"{m}-fold{k}.safetensors" for m in shipped
                                                                      for k in (0, 1)]
    metadata = json.loads((kernel / "kernel-metadata.json").read_text())
    owner = host.store.credentials()["username"]
    slug = "kpipe-digits-code"  # kpipe's entry to the competition the kernel enters
    assert metadata["id"] == f"{owner}/{slug}" and metadata["competition_sources"] == ["digits-code"]
    assert metadata["enable_internet"] is False and metadata["dataset_sources"] == [f"{owner}/{slug}"]
    assert (dataset / "requirements.txt").read_text().split() == ["numpy", "pandas", "pillow", "safetensors", "torch"]

    # The script alone, in a venv holding only what it declares, on the competition's own files.
    work = tmp_path / "work"
    work.mkdir()
    ran = subprocess.run([kernel_python, str(dataset / "inference.py"), "--data", str(pipeline_env / "digits" / "raw"),
                          "--probs", "probs.npy"], cwd=work, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert _rows(work / "submission.csv") == _rows(submission)
    assert np.abs(np.load(work / "probs.npy") - np.load(logged.ensemble / "test_probs.npy")).max() < 1e-5

    # Published and pushed with the stock CLI; the kernel runs on the host, offline, on the hidden test set.
    monkeypatch.setenv("KPIPE_KERNEL_PYTHON", kernel_python)
    created = run_kaggle("datasets", "create", "-p", str(dataset))
    if "already in use" in created.stdout + created.stderr:  # another test of this session entered digits-code
        created = run_kaggle("datasets", "version", "-p", str(dataset), "-m", "this run")
    assert "is being created" in created.stdout, created.stdout + created.stderr
    pushed = run_kaggle("kernels", "push", "-p", str(kernel))
    version = re.search(r"Kernel version (\d+) successfully pushed", pushed.stdout)
    assert version, pushed.stdout + pushed.stderr
    deadline = time.monotonic() + 300
    while "COMPLETE" not in (status := run_kaggle("kernels", "status", f"{owner}/{slug}").stdout):
        assert "ERROR" not in status and time.monotonic() < deadline, status
        time.sleep(1)
    entered = run_kaggle("competitions", "submit", "digits-code", "-k", f"{owner}/{slug}", "-v", version.group(1),
                         "-f", "submission.csv", "-m", f"kpipe {logged.config_hash}")
    assert "Successfully submitted" in entered.stdout, entered.stdout + entered.stderr
    [code_route] = [s for s in host.store.submissions("digits-code") if s["description"] == f"kpipe {logged.config_hash}"]
    # The CSV route: every upload of this config (this session may hold several, all the same predictions).
    csv_route = [s for s in host.store.submissions("digits") if logged.config_hash in s["description"]][0]
    assert code_route["status"] == "COMPLETE"
    assert (code_route["public_score"], code_route["private_score"]) == (csv_route["public_score"],
                                                                         csv_route["private_score"])

    # A member the ensemble gave weight 0 adds nothing to the blend: it is left out of the package.
    zeroed = copy.deepcopy(logged.lineage)
    zeroed["members"][0]["weight"], zeroed["members"][1]["weight"] = 1.0, 0.0
    package = write_package(spec, dataclasses.replace(logged, lineage=zeroed))
    assert package.members == ["cnn3"] and package.left_out == ["fast"]
    assert sorted(p.name for p in package.dataset.glob("*.safetensors")) == ["cnn3-fold0.safetensors",
                                                                            "cnn3-fold1.safetensors"]
    assert [m["name"] for m in json.loads((package.dataset / "ensemble.json").read_text())["members"]] == ["cnn3"]
