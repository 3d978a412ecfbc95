"""probe: how fast each candidate run trains and predicts on this machine, in each precision it offers.

For each (candidate, precision) the probe builds the run's real model, optimizer and augmentation, and
times real training steps on the competition's own images (after one warm-up step) for a few seconds,
then batched inference. Precisions this machine cannot run fast are not measured, with the reason
(pipelines/machine/device.py: offered_precisions). A reduced precision (bf16, fp16) is only *allowed* where a
short training on the competition's data stays within 0.3 accuracy points of fp32 at the same seed and
steps (`check_reduced_precision`).

Every figure is cached per machine (processor, features, core count, torch) in
<data>/machine/<machine key>/probe.json, so a rerun on the same machine does not probe again:
- a speed per run and input shape, keyed by what changes the speed only (the net, batch, augmentation,
  regularisers), so competitions of the same shape share it (fashion-mnist and its variants);
- the reduced-precision accuracy check per model family: whether bf16 keeps a family's accuracy was
  measured the same on every competition tried (2026-12-03: within 0.1 point on Fashion-MNIST and the
  tiny-image stand-in), and it costs two short trainings;
- the torch.compile verdict per family, precision and input shape: a family that did not gain from it
  here is not compiled again for a sibling (its ratio applies).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from competition import atomic, locks
from competition.metrics import accuracy
from competition.paths import data_root
from competition.recipe import ModelRun
from competition.spec import CompetitionSpec, stable_hash
from pipelines.machine.device import Runtime, machine_description, machine_key, offered_precisions
from pipelines.recipe.augment import BatchAugmenter
from pipelines.stages.device_data import TrainingData
from pipelines.stages.predict import predict_probs
from pipelines.stages.train import epoch_batches, make_learner, train_one_epoch

PROBE_SECONDS = 2.0  # of timed training steps per (run, precision); inference gets a quarter of it
CHECK_STEPS = 150  # training steps of the fp32-vs-reduced-precision accuracy check
CHECK_REFERENCE = "fp32-cl"  # what the check compares against (offered on every machine)
CHECK_VAL_ROWS = 4000  # the check's accuracy is measured on at most this many of fold 0's rows
ACCURACY_TOLERANCE = 0.003  # 0.3 points


@dataclass(frozen=True)
class Speed:
    train_images_per_second: float
    predict_images_per_second: float
    warmup_seconds: float = 0.0  # the first training step: with torch.compile, the compile time


def cache_path(runtime: Runtime):
    return data_root() / "machine" / machine_key(runtime) / "probe.json"


# Fields of a run that do not change how fast a step runs: left out of the speed key, so runs (and
# competitions) differing only in them share one probe.
NOT_SPEED = {"alias", "epochs", "precision", "compile", "early_stopping", "params", "family", "min_epochs", "seed",
             "pseudo_labels", "label_smoothing", "schedule", "pretrained", "pretrained_file"}
NOT_SPEED_OPTIMIZER = {"lr", "momentum", "nesterov", "weight_decay"}


def run_key(spec: CompetitionSpec, run: ModelRun) -> str:
    """What a run's speed depends on: the net and what each step does, and the input shape."""
    fields = run.key_dump(exclude=NOT_SPEED)
    fields["optimizer"] = {k: v for k, v in fields["optimizer"].items() if k not in NOT_SPEED_OPTIMIZER}
    return stable_hash({"run": fields, "image": spec.image.key_dump(), "classes": len(spec.classes)})


def _read_cache(runtime: Runtime) -> dict:
    path = cache_path(runtime)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _update_cache(runtime: Runtime, key: str, value: dict) -> None:
    """Merge one entry under the cache's lock: planners running at once each add theirs."""
    path = cache_path(runtime)
    path.parent.mkdir(parents=True, exist_ok=True)
    with locks.hold(path, "the machine's probe cache"):
        cache = _read_cache(runtime)
        cache.setdefault("machine", machine_description(runtime))
        cache[key] = value
        atomic.write_json(path, cache)


def forward_flops(spec: CompetitionSpec, run: ModelRun) -> float:
    """Floating-point operations of one image's forward pass through the run's net (counted, not timed:
    milliseconds). Across our nets on one machine, training images/s × these FLOPs varied within ±10%
    (2-core AVX2 EPYC, 2026-12-04: fastresnet, fastcnn, deeper_cnn, resnet18-w16 at 21.7-26 GFLOP/s), so
    they bound a net's speed before it is probed."""
    from torch.utils.flop_counter import FlopCounterMode

    import models

    size = run.input_size or spec.image.height
    net = models.create(run.model, num_classes=len(spec.classes), in_chans=spec.image.channels, img_size=size,
                        **run.model_args).eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(2, spec.image.channels, size, run.input_size or spec.image.width))
    return counter.get_total_flops() / 2


def _sample_rows(data: TrainingData, count: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randperm(len(data.labels), generator=generator)[:count]


def measure(spec: CompetitionSpec, run: ModelRun, data: TrainingData, runtime: Runtime,
            seconds: float = PROBE_SECONDS) -> Speed:
    """Images per second of training steps (augmentation included) and of inference, for `run` as given."""
    batch = min(run.batch_size, len(data.labels))
    learner = make_learner(run, spec, data, runtime, steps_per_epoch=10_000, init_seed=0)
    augmenter = BatchAugmenter(run.augment, spec, data.images, data.images_nhwc)
    rows = _sample_rows(data, len(data.labels), 0)
    started = time.perf_counter()
    train_one_epoch(learner, augmenter, data.labels, epoch_batches(rows, batch, 1, 0), 0, runtime, "probe warm-up")
    warmup = time.perf_counter() - started
    steps, started, chunk = 0, time.perf_counter(), 2
    while time.perf_counter() - started < seconds or steps < 2:
        batches = epoch_batches(rows, batch, chunk, steps + 1)
        train_one_epoch(learner, augmenter, data.labels, batches, steps + 1, runtime, "probe")
        steps += chunk
        chunk = min(chunk * 2, 32)
    train_rate = steps * batch / (time.perf_counter() - started)
    images = data.test_images[:512] if len(data.test_images) else data.images[:512]
    predict_probs(learner.model, images[:64], share=runtime.cores)  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds / 4 or done == 0:
        predict_probs(learner.model, images, share=runtime.cores)
        done += len(images)
    return Speed(round(train_rate, 1), round(done / (time.perf_counter() - started), 1), round(warmup, 2))


def probe_run(spec: CompetitionSpec, run: ModelRun, data: TrainingData, runtime: Runtime) -> dict[str, Speed]:
    """{precision: Speed} for every precision this machine offers, from the cache when it has them."""
    precisions, _ = offered_precisions(runtime)
    key = run_key(spec, run)
    cached = _read_cache(runtime).get(key, {}).get("speeds", {})
    if all(p in cached for p in precisions):
        return {p: Speed(**cached[p]) for p in precisions}
    speeds = {}
    shared = runtime.cores.sharing()
    if shared:
        print(f"probe: measuring on {runtime.cores.threads} of {runtime.cores.cores} cores while other kpipe processes compute: "
              "the speeds (and a plan made from them) are conservative, and are not kept for later runs", flush=True)
    for precision in precisions:
        speeds[precision] = measure(spec, run.model_copy(update={"precision": precision}), data, runtime)
        print(f"probe: {run.name} {precision}: train {speeds[precision].train_images_per_second:,.0f} img/s, "
              f"predict {speeds[precision].predict_images_per_second:,.0f} img/s", flush=True)
    if not shared and not runtime.cores.sharing():  # a figure measured on a share of the cores would mislead a lone run
        _update_cache(runtime, key, {"run": run.name, "speeds": {p: asdict(s) for p, s in speeds.items()}})
    return speeds


def probe_compiled(spec: CompetitionSpec, run: ModelRun, data: TrainingData, runtime: Runtime,
                   family: str | None = None) -> Speed | str:
    """The run's speed trained through torch.compile in its precision (cached), or why it cannot run.
    With `family`: where another run of the family (same precision and input shape) was compiled here,
    its measured ratio to eager speed applies to this run, without compiling again."""
    key = "compile-" + stable_hash({"run": run_key(spec, run), "precision": run.precision})
    family_key = "compile-family-" + stable_hash({"family": family, "precision": run.precision,
                                                   "image": spec.image.key_dump()}) if family else None
    cache = _read_cache(runtime)
    cached = cache.get(key)
    if cached is not None:
        return cached["failed"] if "failed" in cached else Speed(**cached["speed"])
    sibling = cache.get(family_key) if family_key else None
    eager = cache.get(run_key(spec, run), {}).get("speeds", {}).get(run.precision)
    if sibling is not None and eager is not None:
        if "failed" in sibling:
            return sibling["failed"]
        print(f"probe: {run.name} {run.precision} with torch.compile: {sibling['ratio']:.2f}x eager, as measured on "
              f"{sibling['run']} of the same family here", flush=True)
        return Speed(round(eager["train_images_per_second"] * sibling["ratio"], 1), eager["predict_images_per_second"],
                     sibling["warmup_seconds"])
    print(f"probe: {run.name} {run.precision} with torch.compile (the first step compiles)", flush=True)
    try:
        speed = measure(spec, run.model_copy(update={"compile": True}), data, runtime)
    except Exception as exc:  # inductor fails in many ways (compiler, kernels, an unsupported op): not a crash
        reason = f"torch.compile failed: {type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:160]}"
        _update_cache(runtime, key, {"run": run.name, "failed": reason})
        if family_key:
            _update_cache(runtime, family_key, {"run": run.name, "failed": reason})
        return reason
    print(f"probe: {run.name} {run.precision} compiled: train {speed.train_images_per_second:,.0f} img/s after "
          f"{speed.warmup_seconds:.0f} s compiling", flush=True)
    if not runtime.cores.sharing():
        _update_cache(runtime, key, {"run": run.name, "speed": asdict(speed)})
        if family_key and eager is not None:
            _update_cache(runtime, family_key, {"run": run.name, "warmup_seconds": speed.warmup_seconds,
                                                "ratio": round(speed.train_images_per_second / eager["train_images_per_second"], 3)})
    return speed


def _check_batches(train_rows: int, batch_size: int, steps: int) -> tuple[int, int]:
    """(batch, steps) of the accuracy check's short training: at most three passes over the rows."""
    batch = min(batch_size, train_rows)
    return batch, max(1, min(steps, train_rows // batch * 3))


def _short_training(spec: CompetitionSpec, run: ModelRun, data: TrainingData, runtime: Runtime,
                    steps: int) -> float:
    """Validation accuracy on fold 0 after `steps` seeded steps: the same rows, order and init every time."""
    train_rows = torch.from_numpy(np.flatnonzero(data.fold_of_row != 0))
    val_rows = torch.from_numpy(np.flatnonzero(data.fold_of_row == 0))[:CHECK_VAL_ROWS]
    batch, steps = _check_batches(len(train_rows), run.batch_size, steps)
    learner = make_learner(run.model_copy(update={"epochs": 1}), spec, data, runtime, steps_per_epoch=steps, init_seed=7)
    augmenter = BatchAugmenter(run.augment, spec, data.images, data.images_nhwc)
    done = 0
    while done < steps:
        count = min(steps - done, len(train_rows) // batch)
        torch.manual_seed(done)
        train_one_epoch(learner, augmenter, data.labels, epoch_batches(train_rows, batch, count, done), done, runtime,
                        f"precision check {run.precision}")
        done += count
    probs = predict_probs(learner.model, data.images[val_rows.to(runtime.device)], share=runtime.cores)
    return accuracy(probs, data.labels_host()[val_rows.numpy()])


def _check_key(spec: CompetitionSpec, run: ModelRun, precision: str, steps: int, family: str | None) -> str:
    return "check-" + stable_hash({"family": family} if family else {"run": run_key(spec, run), "data": spec.data_hash()}
                                  | {"precision": precision, "steps": steps})


def check_seconds(spec: CompetitionSpec, run: ModelRun, data: TrainingData, runtime: Runtime, precision: str,
                  speeds: dict[str, Speed], family: str | None = None) -> float:
    """What `check_reduced_precision` would take here, from the probed `speeds`: 0 when its verdict is cached."""
    if _read_cache(runtime).get(_check_key(spec, run, precision, CHECK_STEPS, family)) is not None:
        return 0.0
    train_rows = int(np.sum(data.fold_of_row != 0))
    val_rows = min(CHECK_VAL_ROWS, len(data.fold_of_row) - train_rows)
    batch, steps = _check_batches(train_rows, run.batch_size, CHECK_STEPS)
    return sum(steps * batch / speed.train_images_per_second + val_rows / speed.predict_images_per_second
               for speed in (speeds[CHECK_REFERENCE], speeds[precision]))


def check_reduced_precision(spec: CompetitionSpec, run: ModelRun, data: TrainingData, runtime: Runtime,
                            precision: str, steps: int = CHECK_STEPS, family: str | None = None) -> dict:
    """Whether `precision` keeps accuracy for this run on this competition's data: fp32 and `precision`
    train the same steps from the same seed; allowed when the latter is at most 0.3 points below.
    Cached with the probe figures, once per model `family` (else per run): the first competition that
    checks a family answers for the others."""
    key = _check_key(spec, run, precision, steps, family)
    cached = _read_cache(runtime).get(key)
    if cached is not None:
        return cached
    print(f"probe: checking {precision} against fp32 on {spec.name} ({run.name}, {steps} steps each)", flush=True)
    reference = _short_training(spec, run.model_copy(update={"precision": CHECK_REFERENCE}), data, runtime, steps)
    reduced = _short_training(spec, run.model_copy(update={"precision": precision}), data, runtime, steps)
    result = {"precision": precision, "fp32_accuracy": round(reference, 4), "reduced_accuracy": round(reduced, 4),
              "steps": steps, "allowed": reduced >= reference - ACCURACY_TOLERANCE, "checked_on": f"{spec.name} ({run.name})"}
    _update_cache(runtime, key, result)
    return result
