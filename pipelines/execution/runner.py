"""runner: trains a plan's (run, fold) units, one after another or several at once on Dask workers
(pipelines/cluster.py), with a deadline guard on the clock.

Units go fold-major (fold 0 of every run, then fold 1 of every run, ...): when time runs short, what is
left undone is the later folds, never a whole model family. Execution sits behind one small interface,
`Executor.train(unit, limit)` in this process; `ParallelExecutor` submits units and waits for the next
one to finish, keeping every worker busy.

The deadline guard compares actual with planned time:
- before a unit starts, it re-estimates the work left with the speed measured so far (spread over the
  workers when there are several); when behind, it
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

from pipelines.plan import Clock, PlannedRun, PlanRecord, WallClock
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


@dataclass(frozen=True)
class EpochLimit:
    """The total epochs a running unit may have, asked after every epoch: as many as still fit before the
    training deadline (plus slack, less the unit's TTA), at least one more so that the shortened schedule
    can bring the learning rate down. Picklable, so that a worker process can ask it too."""

    deadline: float  # in `clock`'s time
    slack: float
    tta_seconds: float
    epochs: int  # the run's planned epochs: never more
    clock: Clock

    def __call__(self, epochs_done: int, seconds_per_epoch: float) -> int:
        left = self.deadline + self.slack - self.clock.now() - self.tta_seconds
        return min(self.epochs, epochs_done + max(1, math.floor(left / max(seconds_per_epoch, 1e-6))))


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

    def fit_remaining(self, plan: PlanRecord, remaining: list[Unit], started_runs: set[str], slots: int = 1) -> list[Unit]:
        """Shorten not-yet-started runs, then drop units from the end, until the rest fits in the time left
        on `slots` workers; returns the units to run. Changes are written into `plan`. (The units' measured
        speed already holds what sharing the cores costs each worker.)"""
        left = (self.train_deadline - self.clock.now()) * slots
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
        while len(kept) > 1 and sum(self.unit_seconds(u.planned) for u in kept) > left + self.slack * slots:
            dropped = kept.pop()
            dropped.planned.folds.remove(dropped.fold)
            dropped.planned.dropped_folds.append(dropped.fold)
            self.notes.append(f"dropped {dropped.what}: no time left for it")
        for planned in list(plan.runs):
            if not planned.folds:
                plan.runs.remove(planned)
                plan.dropped_runs.append(planned.run.name)
        return kept

    def epoch_limit(self, unit: Unit, clock: Clock | None = None) -> EpochLimit:
        """The running unit's epoch limit (later units yield first: `fit_remaining` drops them when their
        time is gone); `clock` = the one a worker process reads, the deadline moved onto it."""
        deadline = self.train_deadline
        if clock is not None:
            deadline += clock.now() - self.clock.now()
        return EpochLimit(deadline, self.slack, unit.planned.tta_seconds_per_fold, unit.planned.run.epochs,
                          clock or self.clock)


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
        output, seconds = executor.train(unit, guard.epoch_limit(unit) if guard is not None else None)
        if guard is not None and seconds is not None:
            guard.observe_unit(unit.planned, seconds)
        trained.setdefault(unit.planned.run.name, []).append(output)
        index += 1
    return trained



class ParallelExecutor(Protocol):
    slots: int  # units it runs at once

    def submit(self, unit: Unit, limit: EpochLimit | None) -> object:
        """Start training (or reusing) `unit`; returns a handle for `next_done`."""

    def next_done(self, handles: list[object]) -> tuple[object, FoldOutput, float | None]:
        """Wait for one of `handles` to finish: (its handle, its output, seconds it trained or None)."""


def run_plan_parallel(plan: PlanRecord, executor: ParallelExecutor, guard: DeadlineGuard | None,
                      on_change: Callable[[PlanRecord], None] = lambda plan: None) -> dict[str, list[FoldOutput]]:
    """`run_plan` on several workers: units are handed out in the same fold-major order as workers free
    up, the guard deciding before each; each run's outputs come back in its folds' order, whatever
    order the units finish in, so the ensemble is the sequential run's."""
    units = units_of(plan)
    done: dict[tuple[str, int], FoldOutput] = {}
    started: set[str] = set()
    in_flight: dict[object, Unit] = {}
    index = 0
    while index < len(units) or in_flight:
        while index < len(units) and len(in_flight) < executor.slots:
            if guard is not None:
                units = units[:index] + guard.fit_remaining(plan, units[index:], started, executor.slots)
                on_change(plan)
                if index >= len(units):
                    break
            unit = units[index]
            started.add(unit.planned.run.name)
            limit = guard.epoch_limit(unit, WallClock()) if guard is not None else None
            in_flight[executor.submit(unit, limit)] = unit
            index += 1
        if not in_flight:
            break
        handle, output, seconds = executor.next_done(list(in_flight))
        unit = in_flight.pop(handle)
        if guard is not None and seconds is not None:
            guard.observe_unit(unit.planned, seconds)
        done[unit.planned.run.name, unit.fold] = output
    return {p.run.name: [done[p.run.name, f] for f in p.folds if (p.run.name, f) in done] for p in plan.runs
            if any(name == p.run.name for name, _ in done)}
