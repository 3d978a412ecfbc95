"""runner: trains a command's (run, fold) units through an executor (executors.py: one after another
in this process, or several at once on Dask workers), with a deadline guard on the clock for a plan.

Units go fold-major (fold 0 of every run, then fold 1 of every run, ...): when time runs short, what is
left undone is the later folds, never a whole model family. `run_units` is the one loop: it keeps
`executor.slots` units in flight, lets the guard decide before each start, and hands each finished unit
to the command (`on_done`).

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

from competition.recipe import ModelRun
from pipelines.planning.records import Clock, PlannedRun, PlanRecord, resolve_teachers
from pipelines.stages.predict import FoldOutput
from pipelines.stages.train import FoldOptions


@dataclass
class Unit:
    """One fold of one run to train (or reuse): a plan's run, which the guard may shorten before it
    starts, or a fixed recipe's (`fixed_run`); `force` trains it again even when its output exists."""

    fold: int
    planned: PlannedRun | None = None
    fixed_run: ModelRun | None = None
    force: bool = False

    @property
    def run(self) -> ModelRun:
        return self.planned.run if self.planned is not None else self.fixed_run

    @property
    def what(self) -> str:
        return f"{self.run.name} fold {self.fold}"

    @property
    def shortening(self) -> tuple[int, int, bool] | None:
        """(after epoch, to epochs) where the plan records that the guard shortened this fold before."""
        return self.planned.replayed_shortening(self.fold) if self.planned is not None else None

    def options(self, limit: EpochLimit | None) -> FoldOptions:
        """How it trains: a shortening the plan records is replayed as it was; else the guard's `limit`
        may shorten it while it trains."""
        shortening = self.shortening
        return FoldOptions(force=self.force, epochs_allowed=None if shortening else limit, shortening=shortening)


def units_of(plan: PlanRecord) -> list[Unit]:
    """Fold-major order: every run's first fold before any run's second."""
    depth = max(len(p.folds) for p in plan.runs)
    return [Unit(p.folds[i], planned=p) for i in range(depth) for p in plan.runs if i < len(p.folds)]


def fixed_units(work: list[tuple[ModelRun, list[int]]], force: bool = False) -> list[Unit]:
    """A fixed recipe's (run, folds) as units, fold-major like a plan's."""
    units = [(position, Unit(fold, fixed_run=run, force=force)) for run, folds in work
             for position, fold in enumerate(folds)]
    return [unit for _, unit in sorted(units, key=lambda pair: pair[0])]


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
    """What trains units (executors.py): in this process, or on Dask workers."""

    slots: int  # units it trains at once
    clock: Clock | None  # the clock a unit's epoch limit reads where it trains (None: the guard's own)

    def submit(self, unit: Unit, limit: EpochLimit | None) -> object:
        """Start training (or reusing) `unit`; returns a handle for `next_done`. `limit(epochs done,
        seconds per epoch)` may lower the run's total epochs while it trains (its schedule shortened)."""

    def next_done(self, handles: list[object]) -> tuple[object, FoldOutput, float | None]:
        """Wait for one of `handles` to finish: (its handle, its output, seconds it trained or None
        when it was reused)."""


@dataclass
class DeadlineGuard:
    """Decides, from the clock, whether the remaining work of `plan` still fits the training deadline;
    every change it makes is written into the plan and handed to `on_change` (which keeps it on disk)."""

    clock: Clock
    plan: PlanRecord
    train_deadline: float  # clock time by which training (and TTA) must be done to keep the budget
    slack: float  # overrun allowed before a running unit is shortened (the budget's 2.5%)
    on_change: Callable[[PlanRecord], None] = lambda plan: None
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

    def fit_remaining(self, remaining: list[Unit], started_runs: set[str], slots: int = 1) -> list[Unit]:
        """Shorten not-yet-started runs, then drop units from the end, until the rest fits in the time left
        on `slots` workers; returns the units to run. (The units' measured speed already holds what
        sharing the cores costs each worker.)"""
        plan = self.plan
        left = (self.train_deadline - self.clock.now()) * slots
        need = sum(self.unit_seconds(u.planned) for u in remaining)
        if need <= left:
            self.on_change(plan)
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
            resolve_teachers(plan.runs)
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
        self.on_change(plan)
        return kept

    def epoch_limit(self, unit: Unit, clock: Clock | None = None) -> EpochLimit:
        """The running unit's epoch limit (later units yield first: `fit_remaining` drops them when their
        time is gone); `clock` = the one a worker process reads, the deadline moved onto it."""
        deadline = self.train_deadline
        if clock is not None:
            deadline += clock.now() - self.clock.now()
        return EpochLimit(deadline, self.slack, unit.planned.tta_seconds_per_fold, unit.planned.run.epochs,
                          clock or self.clock)


OnDone = Callable[[Unit, FoldOutput, "float | None"], None]


def waits_for_teacher(unit: Unit, in_flight) -> bool:
    """Whether `unit` learns from pseudo-labels of a fold still training (units go fold-major, teachers
    before students, so with one slot this never waits)."""
    pseudo = unit.run.pseudo_labels
    return pseudo is not None and any(u.run.name == pseudo.teacher and u.fold == unit.fold for u in in_flight)


def run_units(units: list[Unit], executor: Executor, guard: DeadlineGuard | None = None,
              on_done: OnDone = lambda unit, output, seconds: None) -> dict[str, list[FoldOutput]]:
    """Train (or reuse) every unit, `executor.slots` at a time, in the order given; the guard, if any,
    decides before each start whether the rest still fits. Returns {run name: its outputs in the order
    of its units}, whatever order they finish in, so that the ensemble is the same on any executor."""
    done: dict[tuple[str, int], FoldOutput] = {}
    started: set[str] = set()
    in_flight: dict[object, Unit] = {}
    index = 0
    while index < len(units) or in_flight:
        while index < len(units) and len(in_flight) < executor.slots:
            if guard is not None:
                units = units[:index] + guard.fit_remaining(units[index:], started, executor.slots)
                if index >= len(units):
                    break
            unit = units[index]
            if waits_for_teacher(unit, in_flight.values()):
                break  # its teacher's fold is still training: the student starts once it is done
            started.add(unit.run.name)
            limit = guard.epoch_limit(unit, executor.clock) if guard is not None else None
            in_flight[executor.submit(unit, limit)] = unit
            index += 1
        if not in_flight:
            break
        handle, output, seconds = executor.next_done(list(in_flight))
        unit = in_flight.pop(handle)
        if guard is not None and seconds is not None:
            guard.observe_unit(unit.planned, seconds)
        on_done(unit, output, seconds)
        done[unit.run.name, unit.fold] = output
    trained: dict[str, list[FoldOutput]] = {}
    for unit in units:
        if (unit.run.name, unit.fold) in done:
            trained.setdefault(unit.run.name, []).append(done[unit.run.name, unit.fold])
    return trained
