"""Optuna studies on disk or on a server: where they live, how they are opened, what they hold.

Used by `tune` (which adds trials) and by the run context (a recipe's `params: best` reads the best
trial), so neither has to import the other. Storage: by default an SQLite file under
<data>/<comp>/tuning/ (no server); any SQLAlchemy URL (e.g. postgresql://...) for workers on several
machines. A URL's credentials never reach a message (competition/redaction.py).
"""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import optuna

from competition.errors import UserError
from competition.paths import competition_root
from competition.recipe import ModelRun, apply_params
from competition.redaction import redact
from competition.spec import CompetitionSpec

# The heartbeat retry callback is marked experimental; studies rely on it.
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)

MAX_RETRY = 2  # a trial whose worker died is tried this many more times


def heartbeat_settings() -> tuple[int, int]:
    """(seconds between a running trial's heartbeats, seconds of silence after which it counts as dead)."""
    return int(os.environ.get("KPIPE_OPTUNA_HEARTBEAT_S", "10")), int(os.environ.get("KPIPE_OPTUNA_GRACE_S", "30"))


def default_storage_url(spec: CompetitionSpec) -> str:
    return f"sqlite:///{competition_root(spec.name) / 'tuning' / 'optuna.db'}"


def storage_url(spec: CompetitionSpec, storage: str | None) -> str:
    return storage or os.environ.get("KPIPE_OPTUNA_STORAGE") or default_storage_url(spec)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    if url.startswith("sqlite:///"):
        Path(url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    heartbeat, grace = heartbeat_settings()
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat, grace_period=grace,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
    except Exception as exc:  # SQLAlchemy raises many kinds for a bad URL or an unreachable server
        reason = redact((str(exc).strip().splitlines() or [""])[0], url)
        raise UserError(f"Optuna storage {redact(url)}: cannot open it ({type(exc).__name__}: {reason})") from None


def default_study_name(spec: CompetitionSpec, run: ModelRun) -> str:
    return f"{spec.name}-{run.name}"


def load_study(spec: CompetitionSpec, study_name: str, storage: str | None = None) -> optuna.Study:
    url = storage_url(spec, storage)
    try:
        return optuna.load_study(study_name=study_name, storage=open_storage(url))
    except KeyError:
        raise UserError(f"no Optuna study '{study_name}' in {redact(url)}; run `make tune COMP={spec.name} MODEL=...` first") from None


def best_params(spec: CompetitionSpec, run: ModelRun, storage: str | None = None) -> dict:
    """The best trial's parameters for a run whose recipe says `params: best` (or names a study)."""
    study_name = default_study_name(spec, run) if run.params == "best" else run.params
    study = load_study(spec, study_name, storage)
    try:
        return dict(study.best_trial.params)
    except ValueError:
        raise UserError(f"Optuna study '{study_name}' has no completed trial yet; let `make tune` finish some") from None


def resolve_params(spec: CompetitionSpec, run: ModelRun) -> ModelRun:
    """A run with its tuned parameters applied (the config, and so every hash downstream, changes with them)."""
    if run.params is None:
        return run
    params = best_params(spec, run)
    print(f"params: {run.name}: best trial of study '{default_study_name(spec, run) if run.params == 'best' else run.params}': {params}")
    return apply_params(run, params).model_copy(update={"params": None, "alias": run.name})
