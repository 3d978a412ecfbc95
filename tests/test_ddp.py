"""Data-parallel training (GPUS=n, pipelines/machine/ddp.py) on the CPU with gloo, and DETERMINISTIC=1.

Two ranks on the same global batch give one process's result up to float noise (BatchNorm synchronised
over the global batch); a DDP run killed mid-fold resumes from its last epoch; GPUS= refuses what it
cannot do in one line; deterministic mode names an operation without a deterministic kernel."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import yaml

from competition.paths import REPO_ROOT
from competition.spec import SPEC_DIR
from pipelines.__main__ import main as pipelines_main


def write_spec(folder: Path, epochs: int, batch_size: int = 64) -> Path:
    spec = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    spec["profiles"] = {"quick": {"folds": [0], "tta": ["identity"], "ensemble": "mean", "models": [
        {"model": "cnn3", "model_args": {"width": 16}, "epochs": epochs, "batch_size": batch_size,
         "optimizer": {"name": "sgd", "lr": 0.05}}]}}  # cnn3 has BatchNorm: the synchronised path is used
    spec.pop("pool")
    path = folder / "digits-ddp.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def train(spec: Path, data: Path, *extra: str, log: Path | None = None, wait: bool = True):
    command = [sys.executable, "-m", "pipelines", "train", "--comp", str(spec), "--profile", "quick", *extra]
    env = {**os.environ, "KPIPE_DATA": str(data), "PYTHONPATH": str(REPO_ROOT), "KPIPE_DEVICE": "cpu"}
    out = open(log, "w") if log else subprocess.PIPE
    process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
    if not wait:
        return process
    text = process.communicate(timeout=300)[0]
    assert process.returncode == 0, (log.read_text() if log else text)[-3000:]
    return log.read_text() if log else text


def fold_outputs(data: Path) -> tuple[dict, dict, dict]:
    [folder] = data.glob("digits/train/*/fold0")
    probs = {name: np.load(folder / name) for name in ("oof_probs.npy", "test_probs.npy")}
    weights = torch.load(folder / "best.pt", weights_only=True)["state_dict"]
    return probs, weights, json.loads((folder / "manifest.json").read_text())


def copy_prepared(source: Path, target: Path) -> None:
    import shutil

    for part in ("raw", "prepared", "folds"):
        shutil.copytree(source / "digits" / part, target / "digits" / part)


@pytest.fixture
def prepared_twice(pipeline_env, tmp_path):
    """A spec and two data folders holding the same prepared digits (the ranks then only train)."""
    spec = write_spec(tmp_path, epochs=3)
    assert pipelines_main(["prepare", "--comp", str(spec)]) == 0
    copy_prepared(pipeline_env, tmp_path / "ddp-data")
    return spec, pipeline_env, tmp_path / "ddp-data"


@pytest.mark.slow
def test_two_gloo_ranks_match_one_process_on_the_same_global_batch(prepared_twice, monkeypatch):
    spec, one_data, ddp_data = prepared_twice
    monkeypatch.setenv("KPIPE_THREADS", "1")  # each rank's share of two cores: like for like
    train(spec, one_data)
    out = train(spec, ddp_data, "--gpus", "2")
    assert "ddp: no GPU here: 2 ranks on the CPU with gloo" in out
    assert out.count("train: cnn3 fold 0 epoch 3/3") == 1  # rank 0 speaks for the run
    one_probs, one_weights, one_manifest = fold_outputs(one_data)
    ddp_probs, ddp_weights, ddp_manifest = fold_outputs(ddp_data)
    assert (one_manifest["ranks"], ddp_manifest["ranks"]) == (1, 2)
    for name in one_probs:
        assert np.abs(one_probs[name] - ddp_probs[name]).max() < 1e-4, name
    assert set(one_weights) == set(ddp_weights)  # plain BatchNorm names: a DDP checkpoint loads anywhere
    for key, value in one_weights.items():
        torch.testing.assert_close(ddp_weights[key], value, rtol=1e-3, atol=1e-4)
    # The synchronised running statistics are the global batch's, not one rank's half.
    stats = [k for k in one_weights if k.endswith("running_var")]
    assert stats and all(torch.allclose(ddp_weights[k], one_weights[k], rtol=1e-3, atol=1e-5) for k in stats)


@pytest.mark.slow
def test_a_killed_ddp_run_resumes_from_its_last_epoch(pipeline_env, tmp_path):
    spec = write_spec(tmp_path, epochs=12, batch_size=32)
    assert pipelines_main(["prepare", "--comp", str(spec)]) == 0
    log = tmp_path / "first.log"
    first = train(spec, pipeline_env, "--gpus", "2", log=log, wait=False)
    deadline = time.monotonic() + 120
    while not list(pipeline_env.glob("digits/train/*/.fold0.partial/last.pt")):
        assert time.monotonic() < deadline and first.poll() is None, log.read_text()[-3000:]
        time.sleep(0.05)
    # The launcher and both ranks at once, as a crash would (torchrun starts each rank in its own session).
    tree = [first.pid] + [child.pid for child in psutil.Process(first.pid).children(recursive=True)]
    assert len(tree) >= 3, tree
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    first.wait(timeout=30)
    assert not list(pipeline_env.glob("digits/train/*/fold0/manifest.json")), "finished before it was killed"
    text = train(spec, pipeline_env, "--gpus", "2", log=tmp_path / "second.log")
    resumed = [line for line in text.splitlines() if "cnn3 fold 0: resuming after epoch" in line]
    assert len(resumed) == 1 and int(resumed[0].split("after epoch ")[1].split()[0]) >= 1, text[-3000:]
    _, _, manifest = fold_outputs(pipeline_env)
    assert manifest["epochs_run"] == 12 and manifest["ranks"] == 2


@pytest.mark.parametrize("extra, says", [
    (["--gpus", "2", "--budget", "2m"], "GPUS=2 trains a fixed recipe: add PROFILE=quick|full"),
    (["--gpus", "2", "--profile", "quick", "--workers", "2"], "use one or the other"),
    (["--gpus", "0", "--profile", "quick"], "GPUS=0: must be a whole number, at least 1 (e.g. GPUS=2)"),
])
def test_gpus_refusals_are_one_line(pipeline_env, tmp_path, capsys, extra, says):
    spec = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    path = tmp_path / "digits.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert pipelines_main(["train", "--comp", str(path), *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and says in err[0], err
    assert not (pipeline_env / "digits").exists()  # refused before any download


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_ranks_is_one_line(pipeline_env, tmp_path):
    spec = write_spec(tmp_path, epochs=1, batch_size=33)
    assert pipelines_main(["prepare", "--comp", str(spec)]) == 0
    process = train(spec, pipeline_env, "--gpus", "2", wait=False)
    out = process.communicate(timeout=300)[0]
    assert process.returncode == 2, out[-3000:]
    assert "batch_size 33 does not split evenly over 2 devices (GPUS=)" in out
    assert "Traceback" not in out and not list(pipeline_env.glob("digits/train/*/fold0"))


@pytest.mark.slow
def test_deterministic_mode_repeats_a_run_and_names_an_operation_without_a_deterministic_kernel(prepared_twice,
                                                                                                monkeypatch):
    spec, first_data, second_data = prepared_twice
    monkeypatch.setenv("KPIPE_DETERMINISTIC", "1")
    out = train(spec, first_data)
    assert "deterministic: deterministic implementations of the operations that have one" in out
    train(spec, second_data)
    [first] = first_data.glob("digits/train/*/fold0")
    [second] = second_data.glob("digits/train/*/fold0")
    assert json.loads((first / "manifest.json").read_text())["deterministic"] is True
    assert torch.load(first / "best.pt", weights_only=True)["state_dict"].keys()
    for name in ("best.pt", "oof_probs.npy", "test_probs.npy"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    # The CPU kernels we train with all have deterministic implementations; torch names the ones that do
    # not (CUDA's scatter_add, histc, ...) through this alert, which the mode turns into one line each.
    probe = ("import torch._prims_common as u; from pipelines.machine.device import pick_runtime; pick_runtime(); "
             "u.alert_not_deterministic('scatter_add_cuda_kernel'); u.alert_not_deterministic('scatter_add_cuda_kernel')")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO_ROOT), "KPIPE_DEVICE": "cpu"})
    named = [line for line in result.stderr.splitlines() if "scatter_add_cuda_kernel" in line]
    assert result.returncode == 0 and len(named) == 1 and "no deterministic implementation" in named[0], result.stderr
