"""The Dask cluster that trains (run, fold) units (executors.py) and runs Optuna trials (tuning/cluster.py):
`WORKERS=n` starts a `distributed.LocalCluster` of n worker processes on this machine;
`SCHEDULER=tcp://host:8786` uses a cluster that is already running, whose workers see the same data
folder (a shared disk) and the same project checkout.

Each worker process runs one unit at a time (one thread, and a `unit` resource of 1 that every task
asks for), so a worker is one device's worth of training. Its `WorkerInputs` plugin loads the
competition's prepared arrays once, for as long as the worker lives, then the worker trains the units
it is given with `train_fold`, exactly as the sequential path does (executors.py): the
output folders, locks and resume from the last epoch are the same, so a unit whose worker dies is
retried by Dask on another worker and resumes where the checkpoint left it. Threads per worker come
from the core registry (pipelines/machine/cores.py): the workers of one machine share its cores.
"""
from __future__ import annotations

import logging
import socket
from dataclasses import dataclass

from competition import disk
from competition.errors import UserError

UNIT_RESOURCE = "unit"


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
    """WORKERS=n worker processes on this machine, or the running cluster at SCHEDULER=; its workers
    get the `WorkerInputs` plugin."""
    from pipelines.execution.worker import INPUTS_PLUGIN, WorkerInputs

    cluster = _connect(workers, scheduler)
    cluster.client.register_plugin(WorkerInputs(), name=INPUTS_PLUGIN)
    return cluster


def _connect(workers: int, scheduler: str | None) -> Cluster:
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
