"""What every (run, fold) of a command trains from, in one object: the spec, the prepared arrays and
their folds, the device (with this process's share of the cores), and the data on it.

Built once per process by `load_inputs` (download and prepare, or reuse), then handed to training,
tuning, probing and TTA instead of five separate arguments.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from competition.spec import CompetitionSpec
from pipelines.machine.cores import CoreShare
from pipelines.machine.device import Runtime, pick_runtime
from pipelines.stages.device_data import TrainingData, load_training_data
from pipelines.stages.download import download
from pipelines.stages.prepare import Folds, Prepared, make_folds, prepare


@dataclass(frozen=True)
class TrainingInputs:
    spec: CompetitionSpec
    prepared: Prepared
    folds: Folds
    runtime: Runtime
    data: TrainingData
    seconds: dict = field(default_factory=dict)  # how long each step of loading took: download, prepare, load


def load_inputs(spec: CompetitionSpec, share: CoreShare | None = None) -> TrainingInputs:
    """Download and prepare (or reuse), fill in `classes: auto`, pick the device (on a CPU, joining `share` of the cores: the
    command's, or a new one), load the data onto it."""
    seconds, started = {}, time.monotonic()

    def lap(name: str) -> None:
        nonlocal started
        seconds[name] = round(time.monotonic() - started, 2)
        started = time.monotonic()

    download(spec)
    lap("download")
    prepared = prepare(spec)
    spec = spec.with_classes(prepared.classes())  # `classes: auto` becomes the list prepare found
    folds = make_folds(spec, prepared)
    lap("prepare")
    runtime = pick_runtime(share)
    data = load_training_data(prepared, folds, runtime)
    lap("load")
    return TrainingInputs(spec, prepared, folds, runtime, data, seconds)
