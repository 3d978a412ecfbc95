"""The run context: what every computing command works from — the spec, the recipe (a fixed profile
with tuned parameters applied, or a time-budget plan), the work list of (run, folds), the prepared
arrays and folds, the device, and the data on it.

Built once per command by `setup` (PROFILE=) or `setup_budget` (BUDGET=, PLAN=), after
`pipelines.checks` has checked the spec and the command line. What training reads travels on as
`ctx.inputs` (stages/inputs.py); the rest (the recipe, the plan, the clock) stays with the command.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from competition.recipe import ModelRun, Profile, with_teachers
from competition.spec import CompetitionSpec
from pipelines.machine.cores import CoreShare
from pipelines.machine.device import Runtime
from pipelines.planning.records import PlanRecord
from pipelines.stages.device_data import TrainingData
from pipelines.stages.inputs import TrainingInputs, load_inputs
from pipelines.stages.prepare import Folds, Prepared
from pipelines.tuning.studies import resolve_params


@dataclass
class Context:
    inputs: TrainingInputs  # the spec, prepared arrays and folds, the device and the data on it
    profile_name: str  # the profile's name, or `budget-15m` / `plan` for a planned run
    profile: Profile  # TTA views and ensemble method (for a plan: its runs and folds too)
    plan: PlanRecord | None = None
    plan_path: Path | None = None  # where the plan of record is kept
    replay: bool = False  # PLAN= given: decisions are fixed, the deadline guard stays out
    started: float = field(default_factory=time.monotonic)  # when the command started
    stage_seconds: dict[str, float] = field(default_factory=dict)  # measured, for the end-of-run table
    trained_any: bool = False  # whether this command trained a unit (rather than reusing them all)
    workers: int = 1  # WORKERS=: Dask worker processes that train the (run, fold) units (1: this process)
    scheduler: str | None = None  # SCHEDULER=: a running Dask cluster's address instead
    comp_argument: str = ""  # the command line's COMP= (a name or a spec path), for the workers to load

    @property
    def spec(self) -> CompetitionSpec:
        return self.inputs.spec

    @property
    def prepared(self) -> Prepared:
        return self.inputs.prepared

    @property
    def folds(self) -> Folds:
        return self.inputs.folds

    @property
    def runtime(self) -> Runtime:
        return self.inputs.runtime

    @property
    def data(self) -> TrainingData:
        return self.inputs.data

    @property
    def on_cluster(self) -> bool:
        return self.workers > 1 or self.scheduler is not None

    def work(self) -> list[tuple[ModelRun, list[int]]]:
        """(run, the folds it trains on) for every run."""
        if self.plan is not None:
            return self.plan.work()
        return [(run, self.spec.fold_indices(self.profile)) for run in self.profile.models]


def setup(spec: CompetitionSpec, profile_name: str, share: CoreShare | None = None, resolve_tuned: bool = True) -> Context:
    """The context of a fixed profile (computing on `share` of the cores: the command's)."""
    started = time.monotonic()
    profile = spec.profile(profile_name)
    if resolve_tuned:  # `params: best` -> the study's best parameters, before anything is hashed
        tuned = [resolve_params(spec, run) for run in profile.models]
        profile = profile.model_copy(update={"models": with_teachers("models", tuned)})  # students follow tuned teachers
    inputs = load_inputs(spec, share)
    spec, runtime = inputs.spec, inputs.runtime  # the spec with `classes: auto` filled in by prepare
    print(f"run: {spec.name}, profile '{profile_name}' on {runtime.device}"
          f"{'' if runtime.amp_dtype is None else f' with {runtime.amp_dtype} autocast'}; "
          f"folds {spec.fold_indices(profile)} of {spec.folds.n_splits}")
    ctx = Context(inputs, profile_name, profile, started=started)
    ctx.stage_seconds["setup"] = time.monotonic() - started
    return ctx


def setup_budget(spec: CompetitionSpec, budget: float, plan_path: str | None = None, share: CoreShare | None = None,
                 need_record: bool = False) -> Context:
    """The context of a time-budget run: the plan of record (reused, replayed, or made by probing;
    `need_record`: only an existing one, as `make report` wants)."""
    from pipelines.planning.plan import obtain_plan
    from pipelines.planning.records import plan_table

    started = time.monotonic()
    inputs = load_inputs(spec, share)
    spec = inputs.spec  # with `classes: auto` filled in by prepare: the probes build models for its classes
    plan, record, replay = obtain_plan(spec, budget, plan_path, inputs.runtime, inputs.data,
                                       lambda: time.monotonic() - started, need_record)
    label = "plan" if replay else f"budget-{round(budget / 60)}m" if budget % 60 == 0 else f"budget-{round(budget)}s"
    print(f"run: {spec.name}, {'replaying a plan' if replay else f'budget {budget / 60:.1f} min'} on {plan.machine}\n"
          + plan_table(plan), flush=True)
    ctx = Context(inputs, label, plan.profile(), plan=plan, plan_path=record, replay=replay, started=started)
    ctx.stage_seconds["setup"] = time.monotonic() - started
    parts = {f"setup: {name}": seconds for name, seconds in inputs.seconds.items()}
    ctx.stage_seconds.update(parts, **{"setup: plan": ctx.stage_seconds["setup"] - sum(parts.values())})
    return ctx
