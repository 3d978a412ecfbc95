"""Optuna studies on digits: pruning, resuming, several workers on one study, a killed worker, best params
flowing into training, and PostgreSQL storage. Real studies, real (short) training."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
import yaml

from competition.errors import SpecError
from competition.paths import REPO_ROOT
from competition.spec import SPEC_DIR, load_spec
from pipelines.__main__ import main as pipelines_main
from pipelines.chain import config_hash
from pipelines.context import setup
from pipelines.stages.artifacts import read_manifest
from pipelines.tuning.studies import open_storage

RUN = {"model": "cnn3", "model_args": {"width": 16}, "epochs": 3, "batch_size": 64, "augment": {"policy": "light", "shift": 1}}


def write_tuning_variant(folder, epochs=3, params=None, pruner=None, folds=(0,)):
    spec = yaml.safe_load((SPEC_DIR / "digits.yaml").read_text())
    run = {**RUN, **({"params": params} if params else {})}
    spec["profiles"] = {"quick": {"folds": [0], "tta": ["identity"], "models": [run]}}
    spec.pop("pool")
    spec["tuning"] = {"folds": list(folds), "epochs": epochs, "subsample": 0.5,
                      "pruner": pruner or {"name": "median", "n_startup_trials": 1, "n_warmup_steps": 0},
                      "search_space": {"optimizer.lr": {"type": "float", "low": 0.00001, "high": 0.2, "log": True},
                                       "label_smoothing": {"type": "float", "low": 0.0, "high": 0.2}}}
    path = folder / "digits-tune.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def study_for(pipeline_env, name="digits-cnn3", url=None):
    url = url or f"sqlite:///{pipeline_env / 'digits' / 'tuning' / 'optuna.db'}"
    return optuna.load_study(study_name=name, storage=open_storage(url))


def finished(study):
    return [t for t in study.get_trials() if t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)]


@pytest.mark.slow
def test_study_prunes_a_bad_trial_resumes_and_draws_plots(pipeline_env, tmp_path, capsys):
    spec_path = write_tuning_variant(tmp_path)
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    # Queue a good learning rate, then hopeless ones: the median pruner must stop those after an epoch.
    study = optuna.create_study(study_name="digits-cnn3", direction="maximize",
                                storage=open_storage(f"sqlite:///{pipeline_env / 'digits' / 'tuning' / 'optuna.db'}"))
    for lr in (0.05, 0.00001, 0.00001, 0.05):
        study.enqueue_trial({"optimizer.lr": lr, "label_smoothing": 0.1})
    assert pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--trials", "4"]) == 0
    trials = finished(study_for(pipeline_env))
    assert len(trials) == 4
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in trials)
    assert max(t.value for t in trials if t.value is not None) > 0.5
    out = capsys.readouterr().out
    assert "study 'digits-cnn3'" in out and "pruned" in out and "val score" in out
    plots = pipeline_env / "digits" / "tuning" / "digits-cnn3"
    for name in ("optimization_history.png", "param_importances.png"):
        assert (plots / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(plots.glob("worker-*")), "trial outputs must not outlive their trial"

    assert pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--trials", "2"]) == 0
    assert len(finished(study_for(pipeline_env))) == 6


@pytest.mark.slow
def test_a_two_fold_study_prunes_a_bad_trial_after_its_first_fold(pipeline_env, tmp_path, capsys):
    # n_warmup_steps = the epochs of a fold: the pruner first judges a trial when its first fold is done.
    spec_path = write_tuning_variant(tmp_path, epochs=3, folds=(0, 1),
                                     pruner={"name": "median", "n_startup_trials": 1, "n_warmup_steps": 3})
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    study = optuna.create_study(study_name="digits-cnn3", direction="maximize",
                                storage=open_storage(f"sqlite:///{pipeline_env / 'digits' / 'tuning' / 'optuna.db'}"))
    for lr in (0.05, 0.00001):
        study.enqueue_trial({"optimizer.lr": lr, "label_smoothing": 0.1})
    capsys.readouterr()
    assert pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--trials", "2"]) == 0
    good, bad = sorted(study_for(pipeline_env).get_trials(), key=lambda t: t.number)
    assert good.state == optuna.trial.TrialState.COMPLETE
    assert sorted(good.intermediate_values) == [1, 2, 3, 4, 5, 6]  # fold 0's epochs, then fold 1's
    assert bad.state == optuna.trial.TrialState.PRUNED
    assert sorted(bad.intermediate_values) == [1, 2, 3]  # its first fold, and no more
    assert bad.user_attrs["pruned_at"] == {"fold": 0, "epoch": 3, "step": 3}
    assert "trial 1 pruned at fold 0 epoch 3" in capsys.readouterr().out


@pytest.mark.slow
def test_two_workers_share_one_sqlite_study(pipeline_env, tmp_path):
    # Trials long enough (about two seconds each) that the worker this command starts, a few seconds
    # after it began its own trials, still finds some to run.
    spec_path = write_tuning_variant(tmp_path, epochs=12, pruner={"name": "none"})
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    assert pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--trials", "6", "--workers", "2"]) == 0
    trials = finished(study_for(pipeline_env))
    # Each worker counts the study before it starts a trial; only two workers checking in the same
    # millisecond could add one more.
    assert 6 <= len(trials) <= 7
    assert len({t.user_attrs["worker"] for t in trials}) == 2


@pytest.mark.slow
def test_killed_worker_does_not_block_the_study(pipeline_env, tmp_path, monkeypatch):
    monkeypatch.setenv("KPIPE_OPTUNA_HEARTBEAT_S", "1")
    monkeypatch.setenv("KPIPE_OPTUNA_GRACE_S", "2")
    spec_path = write_tuning_variant(tmp_path, epochs=40, pruner={"name": "none"})
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    worker = subprocess.Popen([sys.executable, "-m", "pipelines", "tune", "--comp", str(spec_path), "--model", "cnn3",
                               "--total", "3"], cwd=REPO_ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    running = []
    while time.monotonic() < deadline and not running:
        time.sleep(0.5)
        try:
            running = [t for t in study_for(pipeline_env).get_trials() if t.state == optuna.trial.TrialState.RUNNING]
        except (KeyError, Exception):  # the study may not exist yet
            running = []
    assert running, "the worker never started a trial"
    # A trial is listed RUNNING a moment before its first heartbeat is written, and Optuna only fails
    # stale trials that have one: let a heartbeat (every 1 s here) land before the kill.
    time.sleep(1.5)
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(3)  # past the grace period: the dead trial's heartbeat is stale

    monkeypatch.setenv("KPIPE_OPTUNA_HEARTBEAT_S", "1")
    short = write_tuning_variant(tmp_path, epochs=2, pruner={"name": "none"})
    assert pipelines_main(["tune", "--comp", str(short), "--model", "cnn3", "--trials", "1"]) == 0
    trials = study_for(pipeline_env).get_trials()
    dead = next(t for t in trials if t.number == running[0].number)
    assert dead.state == optuna.trial.TrialState.FAIL
    retried = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert retried and retried[0].state == optuna.trial.TrialState.COMPLETE


@pytest.mark.slow
def test_a_killed_trial_resumes_from_its_last_epoch_and_dead_folders_go(pipeline_env, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KPIPE_OPTUNA_HEARTBEAT_S", "1")
    monkeypatch.setenv("KPIPE_OPTUNA_GRACE_S", "2")
    spec_path = write_tuning_variant(tmp_path, epochs=30, pruner={"name": "none"})
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    worker = subprocess.Popen([sys.executable, "-m", "pipelines", "tune", "--comp", str(spec_path), "--model", "cnn3",
                               "--total", "1"], cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    study_root = pipeline_env / "digits" / "tuning" / "digits-cnn3"
    deadline = time.monotonic() + 120
    while not list(study_root.glob("worker-*/trial-0/*/.fold0.partial/last.pt")):  # a few epochs in, checkpointed
        assert time.monotonic() < deadline and worker.poll() is None, "the worker never checkpointed an epoch"
        time.sleep(0.1)
    # Killed at once: Optuna's heartbeat thread records the trial's first heartbeat as it starts (it only fails
    # stale trials that have one), and on an AVX-512 CPU all 30 epochs of this trial take about a second.
    worker.send_signal(signal.SIGKILL)
    worker.wait()
    time.sleep(3)  # past the grace period
    dead_folder = next(study_root.glob("worker-*"))

    capsys.readouterr()
    assert pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--total", "1"]) == 0
    out = capsys.readouterr().out
    retried = next(t for t in study_for(pipeline_env).get_trials() if t.system_attrs.get("failed_trial") == 0)
    assert retried.state == optuna.trial.TrialState.COMPLETE and retried.user_attrs["resumed_from_trial"] == 0
    assert "tune: trial 1 resumes trial 0" in out and "cnn3 fold 0: resuming after epoch" in out, out[-2000:]
    assert not dead_folder.exists() and not list(study_root.glob("worker-*"))  # nothing of either worker is left


@pytest.mark.slow
def test_best_params_flow_into_the_trained_model(pipeline_env, tmp_path):
    spec_path = write_tuning_variant(tmp_path, epochs=2, pruner={"name": "none"})
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    study = optuna.create_study(study_name="digits-cnn3", direction="maximize",
                                storage=open_storage(f"sqlite:///{pipeline_env / 'digits' / 'tuning' / 'optuna.db'}"))
    study.enqueue_trial({"optimizer.lr": 0.0731, "label_smoothing": 0.0421})
    assert pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--trials", "1"]) == 0

    plain = load_spec(str(spec_path))
    tuned = load_spec(str(write_tuning_variant(tmp_path, epochs=2, params="best")))
    tuned_ctx = setup(tuned, "quick")
    run = tuned_ctx.profile.models[0]
    assert run.optimizer.lr == pytest.approx(0.0731) and run.label_smoothing == pytest.approx(0.0421)
    assert config_hash(tuned_ctx) != config_hash(setup(plain, "quick", resolve_tuned=False))
    assert pipelines_main(["train", "--comp", str(tmp_path / "digits-tune.yaml")]) == 0
    manifest = read_manifest(next((pipeline_env / "digits" / "train").glob("cnn3-*/fold0")))
    assert manifest["config"]["run"]["optimizer"]["lr"] == pytest.approx(0.0731)


def test_search_space_is_validated_at_load(tmp_path):
    path = write_tuning_variant(tmp_path)
    spec = yaml.safe_load(path.read_text())
    spec["tuning"]["search_space"]["optimizer.lrr"] = {"type": "float", "low": 0.1, "high": 0.2}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match=r"search_space.optimizer.lrr: 'lrr' is not a field of 'optimizer'"):
        load_spec(str(path))
    spec["tuning"]["search_space"] = {"optimizer.lr": {"type": "float", "low": 0.0, "high": 0.2, "log": True}}
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="log scale needs low > 0"):
        load_spec(str(path))


@pytest.mark.slow
def test_two_workers_on_postgresql(pipeline_env, tmp_path, postgres_url):
    spec_path = write_tuning_variant(tmp_path, epochs=12, pruner={"name": "none"})  # long enough for both workers
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    study_name = f"ci-{uuid.uuid4().hex[:8]}"
    assert pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--trials", "6", "--workers", "2",
                           "--storage", postgres_url, "--study", study_name]) == 0
    trials = finished(study_for(pipeline_env, study_name, postgres_url))
    assert 6 <= len(trials) <= 7
    assert len({t.user_attrs["worker"] for t in trials}) == 2


def test_a_study_across_machines_refuses_sqlite_in_one_line(pipeline_env, tmp_path, capsys):
    spec_path = write_tuning_variant(tmp_path)
    code = pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--trials", "2",
                           "--scheduler", "tcp://127.0.0.1:8786"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "SQLite is a file on this one" in err[0] and "STORAGE=postgresql://" in err[0]
    assert not (pipeline_env / "digits").exists()  # refused before any download


@pytest.mark.slow
def test_trials_run_on_a_running_cluster_beside_this_process(pipeline_env, tmp_path, postgres_url,
                                                             scheduler_with_one_worker, capsys):
    spec_path = write_tuning_variant(tmp_path, epochs=12, pruner={"name": "none"})  # long enough for both
    assert pipelines_main(["prepare", "--comp", str(spec_path)]) == 0
    study_name = f"ci-{uuid.uuid4().hex[:8]}"
    capsys.readouterr()
    assert pipelines_main(["tune", "--comp", str(spec_path), "--model", "cnn3", "--trials", "4", "--storage", postgres_url,
                           "--study", study_name, "--scheduler", scheduler_with_one_worker]) == 0
    trials = finished(study_for(pipeline_env, study_name, postgres_url))
    assert 4 <= len(trials) <= 5
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2 and f"{os.uname().nodename}:{os.getpid()}" in workers  # here, and the Dask worker
    assert postgres_url.split("@")[0].split(":")[-1] not in capsys.readouterr().out  # never the password
