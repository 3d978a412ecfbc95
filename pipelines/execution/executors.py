"""The executors behind `runner.Executor`, in one place: how a command's (run, fold) units are trained.

- `SequentialExecutor`: one unit at a time in this process. Under DDP (GPUS=n, machine/ddp.py) every
  rank runs the same command, so every rank runs this executor in step: each unit is trained by all
  ranks together, data-parallel, and rank 0 writes its outputs.
- `DaskExecutor`: `slots` units at once on Dask workers (WORKERS=n, SCHEDULER=; cluster.py), each
  trained by `train_fold` exactly as here, so outputs, locks and resumption are the same.

`open_executor` picks one for a command and owns what it needs (the cluster) for as long as it runs.
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Iterator

from competition.paths import data_root
from pipelines.execution.cluster import UNIT_RESOURCE, Cluster, open_cluster, task_result
from pipelines.execution.runner import EpochLimit, Executor, Unit
from pipelines.planning.records import WallClock
from pipelines.stages.inputs import TrainingInputs
from pipelines.stages.predict import FoldOutput
from pipelines.stages.train import FoldJob, train_or_reuse


class SequentialExecutor:
    """Units one after another in this process: `submit` queues one, `next_done` trains it."""

    slots = 1
    clock = None  # the epoch limit reads the guard's own clock: it runs here

    def __init__(self, inputs: TrainingInputs):
        self.inputs = inputs
        self.queued: dict[object, tuple[Unit, EpochLimit | None]] = {}

    def submit(self, unit: Unit, limit: EpochLimit | None) -> object:
        handle = object()
        self.queued[handle] = (unit, limit)
        return handle

    def next_done(self, handles: list[object]) -> tuple[object, FoldOutput, float | None]:
        handle = handles[0]
        unit, limit = self.queued.pop(handle)
        output, seconds = train_or_reuse(FoldJob(self.inputs, unit.run, unit.fold), unit.options(limit))
        return handle, output, seconds


class DaskExecutor:
    """Units on a Dask cluster's workers, one a worker (its `unit` resource), as workers free up."""

    def __init__(self, cluster: Cluster, comp_argument: str):
        self.cluster, self.comp = cluster, comp_argument
        self.slots = cluster.slots
        self.clock = WallClock()  # worker processes agree on the time of day, not on this process's clock
        self.root = str(data_root().absolute())

    def submit(self, unit: Unit, limit: EpochLimit | None) -> object:
        from pipelines.execution.worker import train_unit

        return self.cluster.client.submit(
            train_unit, self.comp, self.root, unit.run, unit.fold, unit.options(limit), resources={UNIT_RESOURCE: 1},
            pure=False, key=f"train-{unit.run.name}-fold{unit.fold}-{time.time_ns()}")

    def next_done(self, handles: list[object]) -> tuple[object, FoldOutput, float | None]:
        from distributed import wait

        finished = next(iter(wait(handles, return_when="FIRST_COMPLETED").done))
        result = task_result(finished, f"cluster: training {finished.key} failed on a worker")
        print(f"train: {finished.key.rsplit('-', 1)[0].removeprefix('train-')} on {result['worker']} "
              f"({result['threads']} thread{'s' if result['threads'] > 1 else ''}) -> {result['folder']}", flush=True)
        return finished, FoldOutput(Path(result["folder"])), result["seconds"]


@contextlib.contextmanager
def open_executor(inputs: TrainingInputs, workers: int = 1, scheduler: str | None = None,
                  comp_argument: str = "") -> Iterator[Executor]:
    """This process (`workers` 1, no scheduler), or a Dask cluster: WORKERS=n worker processes here, or
    a running cluster's (SCHEDULER=), whose workers load `comp_argument` (a name or a spec path). While
    workers train, this process gives its share of the cores back to them."""
    if workers <= 1 and scheduler is None:
        yield SequentialExecutor(inputs)
        return
    cores = inputs.runtime.cores
    cores.leave()
    cluster = open_cluster(workers, scheduler)
    try:
        yield DaskExecutor(cluster, comp_argument)
    finally:
        cluster.close()
        cores.join()
