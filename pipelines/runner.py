"""runner: trains a plan's (run, fold) units one after another, with a deadline guard on the clock.

Units go fold-major (fold 0 of every run, then fold 1 of every run, ...): when time runs short, what is
left undone is the later folds, never a whole model family. Execution sits behind one small interface,
`Executor.train(unit, limit)`, so that a later stage can hand units to several workers.

The deadline guard compares actual with planned time:
- before a unit starts, it re-estimates the work left with the speed measured so far; when behind, it
  shortens the runs that have not started (each still gets its whole learning-rate schedule, just
  shorter, never below its `min_epochs`), then drops units from the end (the latest folds first); the
  first unit always runs, so there is always a submission;
- after every epoch it checks the unit in progress: if finishing it would overrun the training
  deadline by more than the slack, the run is shortened in place — its learning rate falls linearly
  to zero over the epochs that still fit (train.py: `shorten`), so no run stops at a high rate.
Every change is recorded in the plan of record, so a replay reproduces it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Protocol

from pipelines.plan import Clock, PlannedRun, PlanRecord
from pipelines.predict import FoldOutput


@dataclass
class Unit:
    planned: PlannedRun
    fold: int

    @property
    def what(self) -> str:
        return f"{self.planned.run.name} fold {self.fold}"


def units_of(plan: PlanRecord) -> list[Unit]:
    """Fold-major order: every run's first fold before any run's second."""
    depth = max(len(p.folds) for p in plan.runs)
    return [Unit(p, p.folds[i]) for i in range(depth) for p in plan.runs if i < len(p.folds)]


class Executor(Protocol):
    def train(self, unit: Unit, epochs_allowed: Callable[[int, float], int] | None) -> tuple[FoldOutput, float | None]:
        """Train (or reuse) one unit: (its output, seconds it trained; None when reused).
        `epochs_allowed(epochs done, seconds per epoch)` may lower the run's total epochs while it
        trains; the executor then shortens its schedule."""


@dataclass
class DeadlineGuard:
    """Decides, from the clock, whether the remaining work still fits the training deadline."""

    clock: Clock
    train_deadline: float  # clock time by which training (and TTA) must be done to keep the budget
    slack: float  # overrun allowed before a running unit is shortened (the budget's 2.5%)
    planned_done: float = 0.0  # planned seconds of the units trained so far in this process ...
    actual_done: float = 0.0  # ... and what they took
    notes: list[str] = field(default_factory=list)

    @property
    def speed_ratio(self) -> float:
        """Actual / planned time of the units trained so far (1 before the first)."""
        return self.actual_done / self.planned_done if self.planned_done > 0 else 1.0

    def observe_unit(self, planned: PlannedRun, actual_seconds: float) -> None:
        self.planned_done += planned.seconds_per_fold
        self.actual_done += actual_seconds

    def unit_seconds(self, planned: PlannedRun, epochs: int | None = None) -> float:
        epochs = planned.run.epochs if epochs is None else epochs
        fixed = planned.seconds_per_fold - planned.run.epochs * planned.seconds_per_epoch
        return (epochs * planned.seconds_per_epoch + fixed) * self.speed_ratio + planned.tta_seconds_per_fold

    def fit_remaining(self, plan: PlanRecord, remaining: list[Unit], started_runs: set[str]) -> list[Unit]:
        """Shorten not-yet-started runs, then drop units from the end, until the rest fits; returns the
        units to run. Changes are written into `plan`."""
        left = self.train_deadline - self.clock.now()
        need = sum(self.unit_seconds(u.planned) for u in remaining)
        if need <= left:
            return remaining
        fresh = [p for p in plan.runs if p.run.name not in started_runs]
        if fresh:
            fixed_need = sum(self.unit_seconds(u.planned, 0) for u in remaining)
            variable = sum(self.unit_seconds(u.planned) - self.unit_seconds(u.planned, 0) for u in remaining
                           if u.planned.run.name not in started_runs)
            locked = sum(self.unit_seconds(u.planned) - self.unit_seconds(u.planned, 0) for u in remaining
                         if u.planned.run.name in started_runs)
            share = (left - fixed_need - locked) / variable if variable > 0 else 1.0
            for planned in fresh:
                epochs = max(planned.min_epochs, min(planned.run.epochs, math.floor(planned.run.epochs * share)))
                if epochs < planned.run.epochs:
                    self.notes.append(f"{planned.run.name}: {planned.run.epochs} -> {epochs} epochs "
                                      f"(behind plan: units took {self.speed_ratio:.2f}x their planned time)")
                    saved = (planned.run.epochs - epochs) * planned.seconds_per_epoch
                    planned.seconds_per_fold = round(planned.seconds_per_fold - saved, 1)
                    planned.run = planned.run.model_copy(update={"epochs": epochs})
        kept = list(remaining)
        while len(kept) > 1 and sum(self.unit_seconds(u.planned) for u in kept) > left + self.slack:
            dropped = kept.pop()
            dropped.planned.folds.remove(dropped.fold)
            dropped.planned.dropped_folds.append(dropped.fold)
            self.notes.append(f"dropped {dropped.what}: no time left for it")
        for planned in list(plan.runs):
            if not planned.folds:
                plan.runs.remove(planned)
                plan.dropped_runs.append(planned.run.name)
        return kept

    def epochs_allowed(self, unit: Unit, epochs_done: int, seconds_per_epoch: float) -> int:
        """The total epochs the running unit may have, given the epochs done and their measured time
        (at least one more: the shortened schedule needs an epoch to bring the learning rate down).
        Later units yield first: `fit_remaining` drops them when their time is gone."""
        left = self.train_deadline + self.slack - self.clock.now() - unit.planned.tta_seconds_per_fold
        fits = epochs_done + max(1, math.floor(left / max(seconds_per_epoch, 1e-6)))
        return min(unit.planned.run.epochs, fits)


def run_plan(plan: PlanRecord, executor: Executor, guard: DeadlineGuard | None,
             on_change: Callable[[PlanRecord], None] = lambda plan: None) -> dict[str, list[FoldOutput]]:
    """Train every unit of the plan (trained ones are reused); returns {run name: its fold outputs}."""
    units = units_of(plan)
    trained: dict[str, list[FoldOutput]] = {}
    started: set[str] = set()
    index = 0
    while index < len(units):
        if guard is not None:
            units = units[:index] + guard.fit_remaining(plan, units[index:], started)
            on_change(plan)
            if index >= len(units):
                break
        unit = units[index]
        started.add(unit.planned.run.name)
        limit = None
        if guard is not None:
            limit = lambda done, seconds, unit=unit: guard.epochs_allowed(unit, done, seconds)
        output, seconds = executor.train(unit, limit)
        if guard is not None and seconds is not None:
            guard.observe_unit(unit.planned, seconds)
        trained.setdefault(unit.planned.run.name, []).append(output)
        index += 1
    return trained

