"""(run, fold) units trained, and Optuna trials run, on Dask workers: `WORKERS=n` starts a
`distributed.LocalCluster` of n worker processes on this machine; `SCHEDULER=tcp://host:8786` uses a cluster that is already running,
whose workers see the same data folder (a shared disk) and the same project checkout.

Each worker process runs one unit at a time (one thread, and a `unit` resource of 1 that every task
asks for), so a worker is one device's worth of training. It loads the competition's prepared arrays
once, then trains the units it is given with `train_fold`, exactly as the sequential path does: the
output folders, locks and resume from the last epoch are the same, so a unit whose worker dies is
retried by Dask on another worker and resumes where the checkpoint left it. Threads per worker come
from the core registry (pipelines/cores.py): the workers of one machine share its cores.
"""
from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from competition import disk
from competition.errors import UserError
from competition.paths import data_root
from competition.recipe import ModelRun
from pipelines import cores
from pipelines.artifacts import is_complete
from pipelines.predict import FoldOutput
from pipelines.runner import EpochLimit, Unit

UNIT_RESOURCE = "unit"

# In a worker process: (competition, data folder) -> (spec, prepared, folds, runtime, data), loaded once.
_loaded: dict[tuple[str, str], tuple] = {}


def _worker_data(comp: str, root: str):
    key = (comp, root)
    if key not in _loaded:
        from competition.spec import load_spec
        from pipelines.context import load_data

        if Path(root).is_dir():  # the client's data folder, where this machine sees it at the same path
            os.environ["KPIPE_DATA"] = root
        pin_device()
        spec = load_spec(comp)
        _loaded[key] = (spec, *load_data(spec))
    return _loaded[key]


def pin_device() -> None:
    """One GPU a worker: a LocalCluster's workers are named 0..n-1, and worker k trains on GPU k (modulo
    the count). A worker started by hand keeps what CUDA_VISIBLE_DEVICES or KPIPE_CUDA_DEVICE gives it."""
    from distributed import get_worker

    name = get_worker().name
    if isinstance(name, int) and "KPIPE_CUDA_DEVICE" not in os.environ:
        os.environ["KPIPE_CUDA_DEVICE"] = str(name)


def train_unit(comp: str, root: str, run: ModelRun, fold: int, limit: EpochLimit | None,
               shortening: tuple[int, int] | None, force: bool) -> dict:
    """A Dask task: train (or reuse) one fold of one run; returns where its output is and what it took."""
    from pipelines.train import fold_folder, train_fold

    spec, prepared, folds, runtime, data = _worker_data(comp, root)
    reused = not force and is_complete(fold_folder(spec, run, prepared, folds, fold))
    started = time.monotonic()
    output = train_fold(spec, run, data, prepared, folds, fold, runtime, force=force, epochs_allowed=limit,
                        shortening=shortening)
    return {"folder": str(output.folder), "seconds": None if reused else time.monotonic() - started,
            "worker": f"{socket.gethostname()}:{os.getpid()}", "threads": cores.threads()}


@dataclass
class Cluster:
    """A Dask client and, for WORKERS=, the LocalCluster it owns."""

    client: object
    local: object | None
    slots: int

    def close(self) -> None:
        self.client.close()
        if self.local is not None:
            self.local.close()


def open_cluster(workers: int, scheduler: str | None) -> Cluster:
    import dask
    from distributed import Client, LocalCluster

    if scheduler:
        try:
            if scheduler.startswith("tcp://"):  # a refused connection says so at once; Dask would retry for 15 s
                host, _, port = scheduler.removeprefix("tcp://").rpartition(":")
                socket.create_connection((host.strip("[]"), int(port)), timeout=15).close()
            client = Client(scheduler, timeout="15s")
        except (OSError, TimeoutError, ValueError) as exc:
            raise UserError(f"SCHEDULER={scheduler}: no Dask scheduler answers there ({type(exc).__name__}); start one "
                            "with `dask scheduler` and workers with `dask worker <address> --nthreads 1 "
                            f"--resources {UNIT_RESOURCE}=1`") from None
        slots = sum(int(w.get("resources", {}).get(UNIT_RESOURCE, 0)) for w in client.scheduler_info()["workers"].values())
        if slots == 0:
            client.close()
            raise UserError(f"SCHEDULER={scheduler}: no worker offers the `{UNIT_RESOURCE}` resource; start workers with "
                            f"`dask worker {scheduler} --nthreads 1 --resources {UNIT_RESOURCE}=1`")
        return Cluster(client, None, slots)
    # Worker processes, not threads: each has its own torch thread pool and GIL. Logs at warning level:
    # the cluster's start-up chatter is not the user's business. Dask's sampling profiler (every 10 ms
    # it walks the worker's stacks, holding the GIL) slowed training steps by a third on these CPUs.
    dask.config.set({"distributed.worker.profile.enabled": False})
    local = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, resources={UNIT_RESOURCE: 1},
                         dashboard_address=":0", silence_logs=logging.WARNING)
    client = Client(local)
    print(f"cluster: {workers} Dask worker processes on this machine; dashboard {client.dashboard_link}", flush=True)
    return Cluster(client, local, workers)


class DaskExecutor:
    """runner.ParallelExecutor on a Dask cluster."""

    def __init__(self, cluster: Cluster, comp_argument: str, forced: tuple[tuple[str, int], ...] = ()):
        self.cluster, self.comp, self.forced = cluster, comp_argument, forced
        self.slots = cluster.slots
        self.root = str(data_root().absolute())

    def submit(self, unit: Unit, limit: EpochLimit | None):
        replayed = unit.planned.replayed_shortening(unit.fold)
        return self.submit_fold(unit.planned.run, unit.fold, None if replayed else limit, replayed)

    def submit_fold(self, run: ModelRun, fold: int, limit: EpochLimit | None = None,
                    shortening: tuple[int, int] | None = None, priority: int = 0):
        """`priority`: higher runs first, for units submitted together (Dask's own order is not ours)."""
        force = (run.name, fold) in self.forced
        return self.cluster.client.submit(
            train_unit, self.comp, self.root, run, fold, limit, shortening, force, resources={UNIT_RESOURCE: 1},
            pure=False, priority=priority, key=f"train-{run.name}-fold{fold}-{time.time_ns()}")

    def next_done(self, handles: list) -> tuple[object, FoldOutput, float | None]:
        from distributed import wait

        finished = next(iter(wait(handles, return_when="FIRST_COMPLETED").done))
        result = task_result(finished, f"cluster: training {finished.key} failed on a worker")
        print(f"train: {finished.key.rsplit('-', 1)[0].removeprefix('train-')} on {result['worker']} "
              f"({result['threads']} thread{'s' if result['threads'] > 1 else ''}) -> {result['folder']}", flush=True)
        return finished, FoldOutput(Path(result["folder"])), result["seconds"]


# --- tuning: one long task a worker, running trials until the study holds its total ----------------------


def tune_task(comp: str, root: str, profile_name: str, run: ModelRun, study_name: str, total: int, url: str) -> dict:
    """A Dask task: this worker's share of a study's trials (pipelines.tune.tune), with its data loaded once."""
    from pipelines.context import Context
    from pipelines.tune import tune

    spec, prepared, folds, runtime, data = _worker_data(comp, root)
    ctx = Context(spec, profile_name, spec.profile(profile_name), prepared, folds, runtime, data)
    tune(spec, ctx, run, total, study_name, url)
    return {"worker": f"{socket.gethostname()}:{os.getpid()}"}


def start_tuning(workers: int, scheduler: str | None, comp: str, profile_name: str, run: ModelRun, study_name: str,
                 total: int, url: str) -> tuple[Cluster, list]:
    """The cluster, and one tuning task for each of its worker slots. The storage URL travels as an
    argument (it may hold a password): Dask shows task names, never arguments."""
    cluster = open_cluster(workers, scheduler)
    root = str(data_root().absolute())
    return cluster, [cluster.client.submit(tune_task, comp, root, profile_name, run, study_name, total, url,
                                           resources={UNIT_RESOURCE: 1}, pure=False,
                                           key=f"tune-{study_name}-{slot}-{time.time_ns()}")
                     for slot in range(cluster.slots)]


def stop_tuning(cluster: Cluster, tasks: list, wait: bool) -> None:
    """Wait for the tuning tasks to end (`wait`) or cancel them, then close the cluster."""
    try:
        if not wait:
            cluster.client.cancel(tasks)
            return
        for task in tasks:
            task_result(task, "tune: a Dask worker's trials failed")
    finally:
        cluster.close()


def task_result(task, what: str):
    """A finished task's result; its error, raised again here, as one line after `what`."""
    try:
        return task.result()
    except UserError:
        raise
    except Exception as exc:
        if isinstance(exc, OSError) and exc.errno in disk.REFUSALS:  # named by the worker's writer; said in one line
            raise
        raise UserError(f"{what}: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}") from exc
