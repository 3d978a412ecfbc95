"""The run context: what every computing command works from — the spec, the chosen profile (with tuned
parameters applied), the prepared arrays and folds, the device, and the data on it.

Built once per command by `setup`, after `pipelines.checks` has checked the spec and the command line,
and passed as a typed parameter to the stages that need more than one of these.
"""
from __future__ import annotations

from dataclasses import dataclass

from competition.recipe import Profile
from competition.spec import CompetitionSpec
from pipelines.device import Runtime, pick_runtime
from pipelines.device_data import TrainingData, load_training_data
from pipelines.download import download
from pipelines.prepare import Folds, Prepared, make_folds, prepare
from pipelines.studies import resolve_params


@dataclass
class Context:
    spec: CompetitionSpec
    profile_name: str
    profile: Profile
    prepared: Prepared
    folds: Folds
    runtime: Runtime
    data: TrainingData


def setup(spec: CompetitionSpec, profile_name: str, resolve_tuned: bool = True) -> Context:
    """Download and prepare (or reuse), pick the device, load the data onto it."""
    profile = spec.profile(profile_name)
    if resolve_tuned:  # `params: best` -> the study's best parameters, before anything is hashed
        profile = profile.model_copy(update={"models": [resolve_params(spec, run) for run in profile.models]})
    download(spec)
    prepared = prepare(spec)
    folds = make_folds(spec, prepared)
    runtime = pick_runtime()
    print(f"run: {spec.name}, profile '{profile_name}' on {runtime.device}"
          f"{'' if runtime.amp_dtype is None else f' with {runtime.amp_dtype} autocast'}; "
          f"folds {spec.fold_indices(profile)} of {spec.folds.n_splits}")
    return Context(spec, profile_name, profile, prepared, folds, runtime, load_training_data(prepared, folds, runtime))
