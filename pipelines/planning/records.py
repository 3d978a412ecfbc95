"""The plan of record: what a time-budget run decided (plan.json), as the planner (plan.py) writes it
and as a replay (PLAN=), the deadline guard (execution/runner.py) and the report read it; and the clocks
the guard reads.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

import models
from competition import atomic
from competition.errors import UserError
from competition.recipe import ModelRun, Profile, with_teachers
from competition.spec import CompetitionSpec

PLAN_VERSION = 1


# --- what plan.json holds -----------------------------------------------------------------------------


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Shortening(_Strict):
    """The deadline guard ended a fold's run early: from `from_epoch` on, the learning rate fell
    linearly to zero over the epochs up to `epochs` (so the schedule still completed)."""

    fold: int
    from_epoch: int = Field(ge=0)
    epochs: int = Field(ge=1)
    # Shortened before a one-cycle peak: the run's own schedule rebuilt for `epochs` instead of the fall.
    rescheduled: bool = False


class PlannedRun(_Strict):
    run: ModelRun  # epochs and precision as planned (or as the guard set them before the run started)
    family: str
    folds: list[int] = Field(min_length=1)
    seconds_per_epoch: float = Field(ge=0)
    seconds_per_fold: float = Field(ge=0)  # all epochs, the test prediction, overhead
    tta_seconds_per_fold: float = Field(ge=0)
    min_epochs: int = Field(default=1, ge=1)
    precision_reason: str = ""
    shortened: list[Shortening] = Field(default_factory=list)
    dropped_folds: list[int] = Field(default_factory=list)  # planned, then dropped by the guard

    def replayed_shortening(self, fold: int) -> tuple[int, int, bool] | None:
        """(after epoch, to epochs, rescheduled) where the plan records that the guard shortened this fold:
        a replay shortens it the same way (and the guard does not watch it again)."""
        cut = next((s for s in self.shortened if s.fold == fold), None)
        return (cut.from_epoch, cut.epochs, cut.rescheduled) if cut else None

    @property
    def estimated_seconds(self) -> float:
        return len(self.folds) * (self.seconds_per_fold + self.tta_seconds_per_fold)


def resolve_teachers(runs: list[PlannedRun]) -> None:
    """Point each student run at its teacher as now planned: after planning, and after the deadline guard
    changed a teacher's epochs (the student's outputs are keyed by the teacher it learns from)."""
    for planned, run in zip(runs, with_teachers("runs", [p.run for p in runs])):
        planned.run = run


class PlannedStudy(_Strict):
    """The Optuna study a plan schedules before training, and (once run) what it found."""

    run: str  # the candidate it tunes
    study: str  # the study's name in the storage (persistent: a later run extends it)
    seconds: float = Field(ge=0)  # time given to it
    trial_seconds: float = Field(ge=0)  # estimated, one unpruned trial
    search_space: list[str]  # the spec's `tuning:` dimensions that fit the candidate
    seconds_spent: float = Field(default=0, ge=0)
    trials_run: int = Field(default=0, ge=0)  # by this plan
    trials_in_study: int = Field(default=0, ge=0)  # finished (complete or pruned), all runs together
    best_params: dict | None = None
    best_value: float | None = None
    own_recipe_value: float | None = None  # the candidate's own parameters, enqueued as the first trial
    done: bool = False

    @property
    def estimated_seconds(self) -> float:
        return self.seconds_spent if self.done else max(self.seconds, self.seconds_spent)


class PlanRecord(_Strict):
    version: Literal[1] = PLAN_VERSION
    competition: str
    request: str  # hash of what was asked: pool, budget, data, folds, machine
    budget_seconds: float
    device: str
    machine: str
    machine_key: str
    created: str
    runs: list[PlannedRun] = Field(min_length=1)
    tta: list[str] = Field(min_length=1)
    ensemble: str
    refit: bool = False
    study: PlannedStudy | None = None
    reserve_seconds: float
    setup_seconds: float  # download, prepare, loading and probing, before the plan was made
    speeds: dict[str, dict[str, dict[str, float]]] = Field(default_factory=dict)  # run -> precision -> speeds
    precisions_left_out: dict[str, str] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)
    dropped_runs: list[str] = Field(default_factory=list)
    status: Literal["planned", "ran"] = "planned"
    actual: dict = Field(default_factory=dict)  # filled at the end: seconds per stage and per run

    def profile(self) -> Profile:
        """The plan as a recipe for the stages after training (TTA views, ensemble)."""
        return Profile(models=[p.run for p in self.runs], folds=sorted({f for p in self.runs for f in p.folds}),
                       tta=self.tta, ensemble=self.ensemble)

    def work(self) -> list[tuple[ModelRun, list[int]]]:
        return [(p.run, p.folds) for p in self.runs]

    def estimated_train_seconds(self) -> float:
        return sum(p.estimated_seconds for p in self.runs)

    def estimated_total_seconds(self) -> float:
        """The whole command as planned: setup, the study, training with TTA, and the reserve."""
        study = self.study.estimated_seconds if self.study is not None else 0.0
        return self.setup_seconds + study + self.estimated_train_seconds() + self.reserve_seconds

    def hash_input(self) -> dict:
        """What the predictions depend on (not the timings): part of the submission's config hash."""
        return {"runs": [{"run": p.run.key_dump(), **models.revision_key(p.run.model), "folds": p.folds,
                          "shortened": [s.model_dump() for s in p.shortened]} for p in self.runs],
                "tta": self.tta, "ensemble": self.ensemble}


def read_plan(path: Path, spec: CompetitionSpec) -> PlanRecord:
    """A plan.json, validated: one line naming the file and the field when it is not one."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"PLAN={path}: cannot read it ({exc.strerror or exc}); give the path of a plan.json") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"PLAN={path}: not JSON ({str(exc).splitlines()[0][:120]}); give a plan.json kpipe wrote") from None
    try:
        plan = PlanRecord.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(p) for p in error["loc"]) or "(top level)"
        raise UserError(f"PLAN={path}: field '{where}': {error['msg']}; give a plan.json kpipe wrote") from None
    if plan.competition != spec.name:
        raise UserError(f"PLAN={path}: plans competition '{plan.competition}', not '{spec.name}'; "
                        f"use COMP={plan.competition} or a plan of {spec.name}")
    for number, planned in enumerate(plan.runs):
        missing = spec.folds.missing_fold(planned.folds)
        if missing is not None:
            raise UserError(f"PLAN={path}: field 'runs.{number}.folds': fold {missing} does not exist; "
                            f"{spec.folds.numbering()} in competition/{spec.name}.yaml")
    return plan


def save_plan(plan: PlanRecord, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, plan.model_dump_json(indent=2) + "\n")


@dataclass
class PlanOfRecord:
    """A time-budget command's plan while it runs: the record, where it is kept, whether it is a replay
    (PLAN=: decisions fixed), and when the command's budget started (time.monotonic())."""

    plan: PlanRecord
    path: Path
    replay: bool
    started: float

    def save(self) -> None:
        save_plan(self.plan, self.path)


def execution(run: ModelRun) -> str:
    """How a run trains, for tables: its precision, and whether through torch.compile."""
    return run.precision + ("+compile" if run.compile else "")


def plan_table(plan: PlanRecord) -> str:
    rows = [("run", "family", "folds", "epochs", "precision", "est. min")]
    for p in plan.runs:
        rows.append((p.run.name, p.family, ",".join(map(str, p.folds)), str(p.run.epochs), execution(p.run),
                     f"{p.estimated_seconds / 60:.1f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    if plan.study is not None:
        study = plan.study
        found = (f": best {study.best_value:.4f} after {study.trials_in_study} trials, {study.best_params}"
                 if study.done and study.best_params else ": done" if study.done else "")
        lines.append(f"Optuna study '{study.study}' on {study.run} before training, {study.seconds / 60:.1f} min "
                     f"({len(study.search_space)} dimensions){found}")
    total = plan.estimated_total_seconds()
    lines.append(f"TTA {'+'.join(plan.tta)}, ensemble {plan.ensemble}; estimated {total / 60:.1f} of "
                 f"{plan.budget_seconds / 60:.1f} min (setup {plan.setup_seconds:.0f} s, reserve "
                 f"{plan.reserve_seconds:.0f} s for ensemble, upload and report)")
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


class Clock:
    """Wall time; tests give the guard a fake one."""

    def now(self) -> float:
        return time.monotonic()


class WallClock(Clock):
    """The time of day, which worker processes, and other machines set by NTP, agree on."""

    def now(self) -> float:
        return time.time()
