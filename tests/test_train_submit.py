"""Train, resume, fold-level reruns and submit: real training on digits, real uploads to the local host."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from competition.paths import REPO_ROOT
from competition.spec import SPEC_DIR, load_spec
from pipelines.__main__ import main as pipelines_main
from pipelines.stages.artifacts import read_manifest

# Small enough to train in seconds, big enough to beat chance clearly.
TINY_RUN = {"model": "cnn3", "model_args": {"width": 16}, "epochs": 4, "batch_size": 64,
            "optimizer": {"name": "sgd", "lr": 0.05}, "augment": {"policy": "light", "shift": 1}}


def write_digits_variant(folder: Path, runs: list[dict], folds=(0, 1), tta=("identity", "shift")) -> Path:
    spec = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    spec["profiles"] = {"quick": {"folds": list(folds), "tta": list(tta), "models": runs}}
    spec.pop("pool")  # the fixed profile above is what these tests run
    path = folder / "digits-test.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def fold_dirs(data_root: Path) -> dict[str, Path]:
    return {p.parent.name.split("-")[0] + "/" + p.name: p for p in (data_root / "digits" / "train").glob("*/fold*")}


@pytest.mark.slow
def test_submit_digits_end_to_end_then_cached(pipeline_env, host, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec_path = write_digits_variant(tmp_path, [TINY_RUN, {**TINY_RUN, "model": "fastcnn", "alias": "fast"}])
    before = len(host.store.submissions("digits"))
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert "ensemble (hill_climb): CV accuracy" in out and "leaderboard: public" in out
    subs = host.store.submissions("digits")
    assert len(subs) == before + 1 and subs[0]["status"] == "COMPLETE"
    assert subs[0]["public_score"] > 0.8, subs[0]
    assert subs[0]["description"].startswith("CV accuracy 0.")
    log = (tmp_path / "submissions" / "digits" / "log.csv").read_text().splitlines()
    assert log[0].startswith("time,competition,profile,config_hash,git_commit")
    assert len(log) == 2 and ",COMPLETE," in log[1]
    csvs = list((tmp_path / "submissions" / "digits").glob("*.csv"))
    assert len([c for c in csvs if c.name != "log.csv"]) == 1

    # Nothing changed: no training, no second upload, and quick.
    started = time.perf_counter()
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    out = capsys.readouterr().out
    assert time.perf_counter() - started < 60
    assert " epoch 1/" not in out and "scored already" in out  # no epoch was trained
    assert len(host.store.submissions("digits")) == before + 1


@pytest.mark.slow
def test_log_loss_competition_end_to_end_through_the_real_client(pipeline_env, host, tmp_path, monkeypatch, capsys):
    import csv

    from competition.metrics import metric

    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec = yaml.safe_load((SPEC_DIR / "fashion-mnist-logloss.yaml").read_text())
    spec["profiles"] = {"quick": {"folds": [0], "tta": ["identity"], "models": [
        {"model": "fastcnn", "model_args": {"width": 8}, "epochs": 1, "batch_size": 256,
         "optimizer": {"name": "sgd", "lr": 0.05}, "augment": {"policy": "light", "shift": 1}}]}}
    spec.pop("pool")
    path = tmp_path / "fashion-logloss-test.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert pipelines_main(["submit", "--comp", str(path)]) == 0
    out = capsys.readouterr().out
    assert "CV log_loss " in out and "lower is better" in out, out[-2000:]
    assert "calibration: temperatures {'fastcnn'" in out and "cross-fitted CV log_loss" in out, out[-2000:]
    report = (pipeline_env / "fashion-mnist-logloss" / "report.html").read_text()
    assert 'id="calibration-table"' in report and "reliability diagram" in report
    [sub] = host.store.submissions("fashion-mnist-logloss")
    assert sub["status"] == "COMPLETE" and sub["description"].startswith("CV log_loss 0.")

    # The file holds one probability column per class, and the host scored it as log loss would.
    [submission] = [p for p in (tmp_path / "submissions" / "fashion-mnist-logloss").glob("*.csv") if p.name != "log.csv"]
    rows = list(csv.reader(submission.open()))
    assert rows[0] == ["id"] + [f"class_{i}" for i in range(10)]
    solution = {r[0]: (int(r[1]), r[2]) for r in list(csv.reader(open(
        host.store.competition_dir("fashion-mnist-logloss") / "solution.csv")))[1:]}
    public = [r for r in rows[1:] if solution[r[0]][1] == "Public"]
    probs = np.array([[float(v) for v in r[1:]] for r in public])
    labels = np.array([solution[r[0]][0] for r in public])
    assert sub["public_score"] == pytest.approx(metric("log_loss").score(probs, labels), abs=1e-5)
    assert 0 < sub["public_score"] < 1.0  # one epoch of a small CNN: well below chance's 2.30
    log = (tmp_path / "submissions" / "fashion-mnist-logloss" / "log.csv").read_text().splitlines()
    assert ",log_loss," in log[1]


@pytest.mark.slow
def test_dry_run_validates_without_uploading(pipeline_env, host, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    monkeypatch.setenv("DRY_RUN", "1")
    spec_path = write_digits_variant(tmp_path, [{**TINY_RUN, "epochs": 1}], folds=(0,), tta=("identity",))
    before = len(host.store.submissions("digits"))
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    assert "matches the sample submission" in capsys.readouterr().out
    assert len(host.store.submissions("digits")) == before
    assert ",dry-run," in (tmp_path / "submissions" / "digits" / "log.csv").read_text()


@pytest.mark.slow
def test_fold_rerun_recomputes_only_that_fold(pipeline_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DRY_RUN", "1")
    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec_path = write_digits_variant(tmp_path, [{**TINY_RUN, "epochs": 2}])
    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    before = {name: (p / "manifest.json").stat().st_mtime_ns for name, p in fold_dirs(pipeline_env).items()}
    assert set(before) == {"cnn3/fold0", "cnn3/fold1"}
    capsys.readouterr()

    assert pipelines_main(["train", "--comp", str(spec_path), "--model", "cnn3", "--fold", "1"]) == 0
    out = capsys.readouterr().out
    assert "cnn3 fold 1 epoch 1/2" in out and "fold 0 epoch" not in out
    after = {name: (p / "manifest.json").stat().st_mtime_ns for name, p in fold_dirs(pipeline_env).items()}
    assert after["cnn3/fold0"] == before["cnn3/fold0"]
    assert after["cnn3/fold1"] != before["cnn3/fold1"]

    assert pipelines_main(["submit", "--comp", str(spec_path)]) == 0
    assert " epoch 1/" not in capsys.readouterr().out  # every fold reused
    assert {n: (p / "manifest.json").stat().st_mtime_ns for n, p in fold_dirs(pipeline_env).items()} == after


def _train_command(spec_path: Path) -> list[str]:
    return [sys.executable, "-m", "pipelines", "train", "--comp", str(spec_path), "--fold", "0"]


@pytest.mark.slow
def test_resume_after_kill_mid_fold_matches_uninterrupted_run(pipeline_env, tmp_path):
    # The speedrun net with lookahead: its fitted whitening stem and the lookahead's slow weights are
    # part of what a resumed fold must restore.
    run = {**TINY_RUN, "model": "speedrun", "model_args": {"width": 16}, "epochs": 8, "lookahead": 5,
           "bn_bias_lr_scale": 16, "bn_freeze_weights": True}
    spec_path = write_digits_variant(tmp_path, [run], folds=(0,))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    # Download and prepare first, so the killed process spends its time training.
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0

    process = subprocess.Popen(_train_command(spec_path), env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    last = None
    while time.monotonic() < deadline and process.poll() is None:
        found = list((pipeline_env / "digits" / "train").glob("*/.fold0.partial/last.pt"))
        if found:
            last = found[0]
            break
        time.sleep(0.01)
    assert last is not None, "training never wrote an epoch checkpoint"
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not list((pipeline_env / "digits" / "train").glob("*/fold0/manifest.json")), "fold finished before the kill"

    resumed = subprocess.run(_train_command(spec_path), env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resuming after epoch" in resumed.stdout
    assert "epoch 1/8" not in resumed.stdout
    resumed_oof = np.load(next((pipeline_env / "digits" / "train").glob("*/fold0/oof_probs.npy")))

    # The same fold trained without interruption, in another data folder: identical predictions.
    other = {**env, "KPIPE_DATA": str(tmp_path / "other-data")}
    straight = subprocess.run(_train_command(spec_path), env=other, cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr[-2000:]
    straight_oof = np.load(next((tmp_path / "other-data" / "digits" / "train").glob("*/fold0/oof_probs.npy")))
    assert np.array_equal(resumed_oof, straight_oof)


@pytest.mark.slow
def test_same_seed_gives_identical_oof_predictions(pipeline_env, tmp_path, monkeypatch):
    spec_path = write_digits_variant(tmp_path, [{**TINY_RUN, "epochs": 2}], folds=(0,))
    assert pipelines_main(["train", "--comp", str(spec_path)]) == 0
    first_dir = next((pipeline_env / "digits" / "train").glob("*/fold0"))
    first = np.load(first_dir / "oof_probs.npy")
    monkeypatch.setenv("KPIPE_DATA", str(tmp_path / "again"))
    assert pipelines_main(["train", "--comp", str(spec_path)]) == 0
    second_dir = next((tmp_path / "again" / "digits" / "train").glob("*/fold0"))
    assert np.array_equal(first, np.load(second_dir / "oof_probs.npy"))
    assert read_manifest(first_dir)["digest"] == read_manifest(second_dir)["digest"]
    assert first.shape == (270, 10)  # fold 0 of 1,347 rows


def test_unknown_model_is_one_line_naming_the_key(pipeline_env, tmp_path, capsys):
    spec_path = write_digits_variant(tmp_path, [{**TINY_RUN, "model": "cnn33"}])
    assert pipelines_main(["train", "--comp", str(spec_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: competition/digits.yaml: key 'profiles.quick.models.0.model': unknown model 'cnn33'")
    assert "did you mean cnn3" in err and "\n" not in err


def test_spec_loads_every_shipped_profile():
    for name in ("digits", "fashion-mnist", "tiny-image-challenge"):
        spec = load_spec(name)
        assert {"quick", "full"} <= set(spec.profiles), name


@pytest.mark.slow
def test_every_optimizer_schedule_and_regulariser_trains_above_chance(pipeline_env, tmp_path):
    base = {"model": "cnn3", "model_args": {"width": 16}, "epochs": 3, "batch_size": 64, "augment": {"policy": "light", "shift": 1}}
    runs = [
        {**base, "alias": "sgd-step", "optimizer": {"name": "sgd", "lr": 0.05}, "schedule": {"name": "step", "step_size": 2}},
        {**base, "alias": "adam-plateau", "optimizer": {"name": "adam", "lr": 0.003}, "schedule": {"name": "plateau"}},
        {**base, "alias": "adamw-cosine", "optimizer": {"name": "adamw", "lr": 0.003},
         "schedule": {"name": "cosine", "warmup_epochs": 1}, "early_stopping": 1},
        {**base, "alias": "mix-ema", "optimizer": {"name": "sgd", "lr": 0.05}, "mixup_alpha": 0.2, "cutmix_alpha": 1.0,
         "ema_decay": 0.9},
        {**base, "alias": "strong-aug", "optimizer": {"name": "sgd", "lr": 0.05}, "augment": {"policy": "strong", "shift": 1},
         "schedule": {"name": "constant"}},
        {**base, "alias": "medium-aug", "optimizer": {"name": "sgd", "lr": 0.05}, "augment": {"policy": "medium", "shift": 1}},
        {**base, "alias": "focal", "optimizer": {"name": "sgd", "lr": 0.05}, "loss": {"name": "focal", "gamma": 2.0}},
        {**base, "alias": "autoaugment", "optimizer": {"name": "sgd", "lr": 0.05}, "augment": {"policy": "autoaugment"}},
        {**base, "alias": "randaugment", "optimizer": {"name": "sgd", "lr": 0.05},
         "augment": {"policy": "randaugment", "ops": 2, "magnitude": 5}},
        {**base, "alias": "trivialaugment", "optimizer": {"name": "sgd", "lr": 0.05}, "augment": {"policy": "trivialaugment"}},
        {**base, "alias": "focal-mixup", "optimizer": {"name": "sgd", "lr": 0.05}, "loss": {"name": "focal"},
         "mixup_alpha": 0.2, "model_args": {"width": 16, "activation": "elu"}},
        {**base, "alias": "speedrun-recipe", "model": "speedrun", "optimizer": {"name": "sgd", "lr": 0.05},
         "bn_bias_lr_scale": 16, "bn_freeze_weights": True, "lookahead": 5, "label_smoothing": 0.2},
    ]
    spec_path = write_digits_variant(tmp_path, runs, folds=(0,))
    assert pipelines_main(["train", "--comp", str(spec_path)]) == 0
    for run in runs:
        manifest = read_manifest(next((pipeline_env / "digits" / "train").glob(f"{run['alias']}-*/fold0")))
        assert manifest["val_accuracy"] > 0.3, (run["alias"], manifest["val_accuracy"])
        history = (next((pipeline_env / "digits" / "train").glob(f"{run['alias']}-*/fold0")) / "history.csv").read_text()
        assert history.startswith("epoch,train_loss,val_loss,val_accuracy,val_score,lr,seconds,images_per_second")
