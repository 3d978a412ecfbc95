"""`make submit ON=kaggle`: kpipe's wheelhouse published through the real kaggle client, a training kernel
run by the local host (offline, kpipe installed from the wheelhouse with no index, in a Python that
lacks kpipe's dependencies), its outputs pulled into .data/, submitted from here, reused by a second
identical command, and a fold rerun here on the pulled outputs."""
from __future__ import annotations

import os
import pwd
import site
from pathlib import Path

import pytest

from competition.host.code_store import CodeHost
from competition.spec import load_spec
from pipelines.__main__ import main as pipelines_main
from pipelines.stages.submit import read_log
from pipelines.tools import on_kaggle
from tests.test_train_submit import TINY_RUN, write_digits_variant

pytestmark = pytest.mark.slow  # builds the wheelhouse, runs a training kernel


def test_submit_on_kaggle_trains_in_a_kernel_and_submits_here(pipeline_env, host, tmp_path, kaggle_image_python,
                                                              monkeypatch, capsys):
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    monkeypatch.setenv("KPIPE_KERNEL_PYTHON", kaggle_image_python)
    monkeypatch.setenv("KPIPE_KERNEL_LEND", site.getsitepackages()[0])  # what the stand-in image links to
    # The wheelhouse gathers its dependency wheels through pip's index once, into the real home's cache.
    monkeypatch.setenv("KPIPE_WHEEL_CACHE", str(Path(pwd.getpwuid(os.getuid()).pw_dir) / ".cache" / "kpipe" / "wheels"))
    monkeypatch.delenv("HTTPS_PROXY")
    spec_path = write_digits_variant(tmp_path, [TINY_RUN])
    owner = host.store.credentials()["username"]
    code = CodeHost(host.store)

    assert on_kaggle.main(["--comp", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert "pushed training kernel" in out and "GPU asked for" in out and "leaderboard: public" in out, out[-3000:]
    kernel = code.kernel(owner, "kpipe-train-digits")
    assert kernel["status"] == "COMPLETE" and kernel["accelerator"] == "gpu" and not kernel["internet"]
    log = (pipeline_env / "digits" / "kernels" / "kpipe-train-digits" / f"v{kernel['version']}" /
           "kpipe-train-digits.log").read_text()
    assert "this machine has no GPU, so it runs on CPU" in log and "train: cnn3 fold 1" in log
    # Trained there, pulled here: the folds, the ensemble and the kernel's own submission file; nothing raw.
    assert len(list((pipeline_env / "digits" / "train").glob("cnn3-*/fold[01]/best.pt"))) == 2
    assert not list((pipeline_env / "digits" / "kernels").rglob("raw"))
    [row] = read_log(load_spec(str(spec_path)))
    assert row["status"] == "COMPLETE" and float(row["public_score"]) > 0.8
    house = code.dataset(owner, "kpipe-wheelhouse")["version"]

    # The same command again: the same house and kernel, nothing pushed, pulled or trained; scored already.
    assert on_kaggle.main(["--comp", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert "holds this kpipe already, nothing uploaded" in out and "following training kernel" in out
    assert "scored already" in out and "train: cnn3 fold 0: val accuracy" in out  # found done, not retrained
    assert code.kernel(owner, "kpipe-train-digits")["version"] == kernel["version"]
    assert code.dataset(owner, "kpipe-wheelhouse")["version"] == house

    # A fold rerun here, on the pulled outputs: that fold alone is trained again.
    assert pipelines_main(["train", "--comp", str(spec_path), "--fold", "0"]) == 0
    out = capsys.readouterr().out
    assert "train: cnn3 fold 0: val accuracy" in out and "fold 1" not in out
