"""What runs inside a Dask worker process: its training inputs, loaded once (`WorkerInputs`, a worker
plugin that open_cluster registers), and the task that trains one (run, fold) unit there."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from distributed import get_worker
from distributed.diagnostics.plugin import WorkerPlugin

from competition.recipe import ModelRun
from pipelines.stages.inputs import TrainingInputs
from pipelines.stages.train import FoldJob, FoldOptions, train_or_reuse

INPUTS_PLUGIN = "kpipe-inputs"


class WorkerInputs(WorkerPlugin):
    """A Dask worker plugin: the training inputs of each (competition, data folder) the worker is given,
    loaded on first use and kept until the worker closes, when its share of the cores is given back."""

    name = INPUTS_PLUGIN
    idempotent = True  # registered again by a second command on the same cluster: the first one stays

    def setup(self, worker) -> None:
        self.worker = worker
        self.loaded: dict[tuple[str, str], TrainingInputs] = {}

    def teardown(self, worker) -> None:
        for inputs in self.loaded.values():
            inputs.runtime.cores.leave()
        self.loaded.clear()

    def inputs(self, comp: str, root: str) -> TrainingInputs:
        key = (comp, root)
        if key not in self.loaded:
            from competition.spec import load_spec
            from pipelines.stages.inputs import load_inputs

            if Path(root).is_dir():  # the client's data folder, where this machine sees it at the same path
                os.environ["KPIPE_DATA"] = root
            self.pin_device()
            self.loaded[key] = load_inputs(load_spec(comp))
        return self.loaded[key]

    def pin_device(self) -> None:
        """One GPU a worker: a LocalCluster's workers are named 0..n-1, and worker k trains on GPU k (modulo
        the count). A worker started by hand keeps what CUDA_VISIBLE_DEVICES or KPIPE_CUDA_DEVICE gives it."""
        if isinstance(self.worker.name, int) and "KPIPE_CUDA_DEVICE" not in os.environ:
            os.environ["KPIPE_CUDA_DEVICE"] = str(self.worker.name)


def worker_inputs(comp: str, root: str) -> TrainingInputs:
    """In a task: this worker's training inputs for `comp` (a name or a spec path) under `root`."""
    return get_worker().plugins[INPUTS_PLUGIN].inputs(comp, root)


def train_unit(comp: str, root: str, run: ModelRun, fold: int, options: FoldOptions) -> dict:
    """A Dask task: train (or reuse) one fold of one run; returns where its output is and what it took."""
    inputs = worker_inputs(comp, root)
    output, seconds = train_or_reuse(FoldJob(inputs, run, fold), options)
    return {"folder": str(output.folder), "seconds": seconds,
            "worker": f"{socket.gethostname()}:{os.getpid()}", "threads": inputs.runtime.cores.threads}
