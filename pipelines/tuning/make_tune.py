"""`make tune`: add trials to one model run's study, in this process and, with WORKERS=n or SCHEDULER=,
on Dask workers (n-1 here, or a running cluster's) as `make train` runs its units: each worker gets
one long task that loads the data once and runs trials until the study holds its total, and this
process runs trials beside them."""
from __future__ import annotations

import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import optuna

from competition.paths import competition_root, data_root
from competition.recipe import ModelRun
from competition.spec import CompetitionSpec
from pipelines.execution.cluster import UNIT_RESOURCE, Cluster, open_cluster, task_result
from pipelines.machine.cores import CoreShare
from pipelines.stages.inputs import load_inputs
from pipelines.tuning.studies import default_study_name, open_storage, storage_url
from pipelines.tuning.tune import direction, finished_trials, report_study, tune


@dataclass(frozen=True)
class StudyRequest:
    """What `make tune` asked for: the study (its name and storage URL), the total of finished trials it
    should hold, and where the trials run (this process, beside WORKERS-1 Dask workers or a running
    cluster's)."""

    run: ModelRun  # the model run whose hyperparameters are searched
    study_name: str
    url: str
    total: int
    workers: int = 1
    scheduler: str | None = None
    comp_argument: str = ""  # COMP= as given (a name or a spec path), for the workers to load


def study_request(spec: CompetitionSpec, profile_name: str, model: str | None, study_name: str | None,
                  storage: str | None, trials: int | None, total: int | None) -> StudyRequest:
    """The study `make tune` works on and the total it should hold: `trials` more than it holds now, or
    `total` (fixed once here, so that every worker aims at the same total)."""
    run = spec.model_run(profile_name, model) if model else spec.profile(profile_name).models[0]
    run = run.model_copy(update={"params": None})
    study_name = study_name or default_study_name(spec, run)
    url = storage_url(spec, storage)
    if total is None:
        study = optuna.create_study(study_name=study_name, storage=open_storage(url), direction=direction(spec),
                                    load_if_exists=True)
        total = finished_trials(study) + trials
    return StudyRequest(run, study_name, url, total)


def run_study(spec: CompetitionSpec, request: StudyRequest, share: CoreShare | None = None) -> optuna.Study:
    """`make tune`: trials in this process (its cores: `share`) until the study holds `request.total`,
    beside `request.workers` - 1 Dask workers here or a running cluster's (`request.scheduler`)."""
    if request.workers > 1 or request.scheduler is not None:
        study = tune_beside_workers(spec, request, share)
    else:
        study = tune(load_inputs(spec, share), request.run, request.total, request.study_name, request.url)
    report_study(study, competition_root(spec.name) / "tuning" / request.study_name, request.url)
    return study


def tune_task(comp: str, root: str, request: StudyRequest) -> dict:
    """A Dask task: this worker's share of a study's trials (tune.tune), with its data loaded once."""
    from pipelines.execution.worker import worker_inputs

    tune(worker_inputs(comp, root), request.run, request.total, request.study_name, request.url)
    return {"worker": f"{socket.gethostname()}:{os.getpid()}"}


def start_tuning(request: StudyRequest) -> tuple[Cluster, list]:
    """The cluster, and one tuning task for each of its worker slots. The storage URL travels as an
    argument (it may hold a password): Dask shows task names, never arguments."""
    cluster = open_cluster(request.workers - 1, request.scheduler)
    root = str(data_root().absolute())
    return cluster, [cluster.client.submit(tune_task, request.comp_argument, root, request,
                                           resources={UNIT_RESOURCE: 1}, pure=False,
                                           key=f"tune-{request.study_name}-{slot}-{time.time_ns()}")
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


def tune_beside_workers(spec: CompetitionSpec, request: StudyRequest, share: CoreShare | None) -> optuna.Study:
    """Trials on Dask workers (WORKERS-1 of them here, or a running cluster's) and in this process, which
    loads its data and starts its own trials while the cluster starts (2 s, then each worker's imports
    and data: on a short study the second worker's late start is what it costs)."""
    share = share if share is not None else CoreShare()
    if request.scheduler is None:
        # This process's share of the cores is fixed now, so that the workers' start (imports, data)
        # does not meet a process that holds every core.
        share.cap(share.threads // request.workers)
    with ThreadPoolExecutor(1, thread_name_prefix="dask-start") as starter:
        starting = starter.submit(start_tuning, request)
        finished = False
        try:
            study = tune(load_inputs(spec, share), request.run, request.total, request.study_name, request.url)
            finished = True
        finally:
            stop_tuning(*starting.result(), wait=finished)  # the cluster's own error, if it could not start
    return study
