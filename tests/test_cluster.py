"""(model, fold) runs on Dask workers (pipelines/execution/cluster.py): a two-worker LocalCluster gives the
sequential run's checkpoints and submission byte for byte (thread count pinned to one, as each worker
has), and a scheduler with a worker on 127.0.0.1 stands in for a cluster of machines sharing the disk."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from competition.paths import REPO_ROOT
from competition.spec import SPEC_DIR
from pipelines.__main__ import main as pipelines_main
from tests.conftest import free_port

pytestmark = pytest.mark.slow  # every test here trains, or runs a whole command on a cluster or a package

MODELS = [{"model": "cnn3", "model_args": {"width": 16}, "epochs": 3, "batch_size": 64},
          {"model": "lenet", "epochs": 2, "batch_size": 64}]


def write_variant(folder: Path) -> Path:
    spec = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    spec["profiles"] = {"quick": {"folds": [0, 1], "tta": ["identity"], "models": MODELS, "ensemble": "mean"}}
    spec.pop("pool")
    path = folder / "digits-cluster.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def checkpoints(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted((root / "digits" / "train").glob("*/fold*/best.pt"))}


def test_two_local_workers_give_the_sequential_submission(pipeline_env, tmp_path, monkeypatch, capsys):
    spec = write_variant(tmp_path)
    monkeypatch.setenv("KPIPE_THREADS", "1")  # a worker's share of two cores: float sums then match
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "sequential-submissions"))
    assert pipelines_main(["submit", "--comp", str(spec), "--profile", "quick", "--dry-run"]) == 0
    sequential = checkpoints(pipeline_env)
    assert len(sequential) == 4

    parallel_root = tmp_path / "parallel-data"
    monkeypatch.setenv("KPIPE_DATA", str(parallel_root))
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "parallel-submissions"))
    capsys.readouterr()
    assert pipelines_main(["submit", "--comp", str(spec), "--profile", "quick", "--dry-run", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert "cluster: 2 Dask worker processes on this machine; dashboard http" in out
    workers = {line.split(" on ")[1].split(" ")[0] for line in out.splitlines() if line.startswith("train: ") and " on " in line}
    assert len(workers) == 2 and f"{socket.gethostname()}:{os.getpid()}" not in workers  # trained there, not here
    assert checkpoints(parallel_root) == sequential
    [first] = (tmp_path / "sequential-submissions" / "digits").glob("2*.csv")
    [second] = (tmp_path / "parallel-submissions" / "digits").glob("2*.csv")
    assert first.read_bytes() == second.read_bytes()


def test_a_running_cluster_trains_the_units(pipeline_env, tmp_path, scheduler_with_one_worker, capsys):
    spec = write_variant(tmp_path)
    assert pipelines_main(["prepare", "--comp", str(spec)]) == 0
    assert pipelines_main(["train", "--comp", str(spec), "--profile", "quick", "--scheduler", scheduler_with_one_worker]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train: ") and " on " in line]
    assert len(lines) == 4 and all(f":{os.getpid()} " not in line for line in lines)
    assert len(checkpoints(pipeline_env)) == 4  # written by the worker into this data folder


@pytest.mark.parametrize("address, says", [("127.0.0.1:8786", "not a Dask scheduler address; write it as tcp://host:8786"),
                                           ("tcp://127.0.0.1:{port}", "no Dask scheduler answers there")])
def test_a_bad_scheduler_is_one_line(pipeline_env, tmp_path, capsys, address, says):
    spec = write_variant(tmp_path)
    assert pipelines_main(["prepare", "--comp", str(spec)]) == 0
    capsys.readouterr()
    code = pipelines_main(["train", "--comp", str(spec), "--profile", "quick", "--scheduler", address.format(port=free_port())])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and says in err[0], err


def test_a_unit_whose_worker_is_killed_resumes_on_another_from_its_last_epoch(pipeline_env, tmp_path):
    spec = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    spec["profiles"] = {"quick": {"folds": [0], "tta": ["identity"], "ensemble": "mean",
                                  "models": [{"model": "cnn3", "model_args": {"width": 16}, "epochs": 20, "batch_size": 32}]}}
    spec.pop("pool")
    path = tmp_path / "digits-long.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert pipelines_main(["prepare", "--comp", str(path)]) == 0
    log = tmp_path / "train.log"
    command = subprocess.Popen([sys.executable, "-m", "pipelines", "train", "--comp", str(path), "--profile", "quick",
                                "--workers", "2"], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                               stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not list(pipeline_env.glob("digits/train/*/.fold0.partial/last.pt")):
        assert time.monotonic() < deadline and command.poll() is None, log.read_text()[-3000:]
        time.sleep(0.1)
    time.sleep(1.0)  # a few epochs in
    [owner] = pipeline_env.glob(".locks/fold0-*.lock.owner")  # the process writing the fold: a Dask worker
    worker_pid = json.loads(owner.read_text())["pid"]
    assert worker_pid != command.pid
    os.kill(worker_pid, signal.SIGKILL)
    assert command.wait(timeout=300) == 0, log.read_text()[-3000:]
    text = log.read_text()
    resumed = [line for line in text.splitlines() if "cnn3 fold 0: resuming after epoch" in line]
    assert resumed and int(resumed[0].split("after epoch ")[1].split()[0]) >= 1, text[-3000:]
    assert list(pipeline_env.glob("digits/train/*/fold0/best.pt"))
