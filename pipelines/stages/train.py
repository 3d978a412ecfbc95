"""train: one model run, fold by fold, from in-memory uint8 tensors.

For fold k the model trains on the other folds, keeps the weights with the best validation score (the
competition's metric, in its direction; ties: the lower loss),
and writes <data>/<comp>/train/<run>-<key>/fold<k>/:
    best.pt          the best weights, with what is needed to rebuild the model (predict.py loads it)
    oof_probs.npy    class probabilities for the held-out rows (identity view), oof_index.npy their row numbers
    test_probs.npy   class probabilities for the test images (identity view)
    history.csv      per epoch: train loss, val loss, val accuracy, val score, learning rate, seconds, images/s
    iterations.csv   per training step: its epoch and training loss
    manifest.json    config, hashes, versions, git commit, and a digest of the predictions

While a fold trains, `.fold<k>.partial/last.pt` is rewritten after every epoch; a killed run resumes
from it. Every epoch draws its batch order, augmentation and dropout from a seed derived from
(seed, fold, epoch), so a resumed fold ends exactly where an uninterrupted one would.

`train_fold` is the one entry (submit, `make train`, tuning and benchmarks call it); `_train_fold` is the
loop, one screen, and the helpers above it each do one of its steps.
"""
from __future__ import annotations

import csv
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

import models
from competition import atomic
from competition.errors import UserError
from competition.metrics import Metric, accuracy, kaggle_log_loss
from competition.paths import competition_root
from competition.recipe import LossConfig, ModelRun
from competition.spec import CompetitionSpec
from pipelines.machine import ddp
from pipelines.machine.device import Runtime
from pipelines.recipe.augment import BatchAugmenter
from pipelines.recipe.classifier import ImageClassifier, build_model
from pipelines.recipe.losses import LOSSES, MULTI_LABEL_LOSSES, balanced_weights
from pipelines.recipe.optim import Lookahead, make_optimizer, make_scheduler
from pipelines.stages.artifacts import build_once, is_complete, output_key, publish
from pipelines.stages.calibrate import selection_score
from pipelines.stages.device_data import TrainingData
from pipelines.stages.inputs import TrainingInputs
from pipelines.stages.predict import (FoldOutput, best_weights, file_digest, load_checkpoint, load_fold_model,
                                      predict_probs, save_checkpoint)
from pipelines.stages.prepare import Folds, Prepared
from pipelines.stages.pseudo import (PseudoRows, choose_rows, describe, require_in_memory, teacher_output,
                                    with_pseudo_rows, without_held_out_copies)

# --- where a fold's outputs live ----------------------------------------------------------------------


def run_config(spec: CompetitionSpec, run: ModelRun) -> dict:
    return {"run": run.key_dump(), "classes": len(spec.classes), "image": spec.image.key_dump(),
            "flips": spec.flips.model_dump(), "seed": spec.folds.seed, **models.revision_key(run.model)}


def run_folder(spec: CompetitionSpec, run: ModelRun, prepared: Prepared, folds: Folds, root: Path | None = None) -> Path:
    key = output_key(run_config(spec, run), {"prepared": prepared.key, "folds": folds.key})
    return (root or competition_root(spec.name) / "train") / f"{run.name}-{key}"


def fold_folder(spec, run, prepared, folds, fold: int, root: Path | None = None) -> Path:
    return run_folder(spec, run, prepared, folds, root) / f"fold{fold}"


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    return (seed * 1_000_003 + fold * 10_007 + epoch) % (2**31)


# --- the pieces of a fold's training -----------------------------------------------------------------


def fold_rows(data: TrainingData, fold: int, seed: int, subsample: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(training rows, validation rows) of a fold; tuning may train on a seeded fraction of the former."""
    train_index = np.flatnonzero(data.fold_of_row != fold)
    if subsample < 1.0:
        keep = np.random.default_rng(epoch_seed(seed, fold, -2)).permutation(len(train_index))[: int(len(train_index) * subsample)]
        train_index = np.sort(train_index[keep])
    return torch.from_numpy(train_index), torch.from_numpy(np.flatnonzero(data.fold_of_row == fold))


@dataclass
class Learner:
    """Everything that changes while a fold trains, and is saved in last.pt to resume it."""

    model: ImageClassifier
    optimizer: torch.optim.Optimizer
    scheduler: object | None
    scheduler_unit: str  # when the scheduler steps: 'step' | 'epoch' | 'plateau'
    scaler: torch.amp.GradScaler
    ema: nn.Module | None  # timm ModelEmaV3: evaluated instead of the raw weights
    lookahead: Lookahead | None
    mixup: Callable | None  # timm Mixup (with CutMix)
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    forward: Callable[[torch.Tensor], torch.Tensor]  # the training step's forward: the model, or torch.compile of it
    run: ModelRun
    steps_per_epoch: int

    @property
    def evaluated(self) -> nn.Module:
        return self.ema.module if self.ema is not None else self.model

    def state(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "ema": self.ema.state_dict() if self.ema is not None else None, "scaler": self.scaler.state_dict(),
                "lookahead": self.lookahead.state_dict() if self.lookahead is not None else None}

    def load_state(self, saved: dict) -> None:
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        state = saved["state"]
        if state.get("anneal_steps"):  # the run was shortened: its schedule is rebuilt as it was then
            if state.get("rescheduled"):
                reschedule(self, state["end_epoch"], state["anneal_from"] * self.steps_per_epoch)
            else:
                anneal(self, state["anneal_steps"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(saved["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(saved["ema"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(saved["lookahead"])
        self.scaler.load_state_dict(saved["scaler"])


def reschedule(learner: Learner, end_epoch: int, steps_done: int) -> None:
    """Replace the schedule by the run's own for `end_epoch` epochs, continued from `steps_done`: how a run
    shortened while its one-cycle rate is still rising keeps a peak and a whole fall."""
    learner.scheduler, learner.scheduler_unit = make_scheduler(learner.run.model_copy(update={"epochs": end_epoch}),
                                                               learner.optimizer, learner.steps_per_epoch)
    for _ in range(steps_done):
        learner.scheduler.step()
    if learner.lookahead is not None:
        learner.lookahead.total_steps = end_epoch * learner.steps_per_epoch


def before_peak(run: ModelRun, epochs_done: int) -> bool:
    """Whether the run's one-cycle rate is still rising after `epochs_done` epochs."""
    return run.schedule.name == "onecycle" and epochs_done < run.schedule.pct_start * run.epochs


def anneal(learner: Learner, steps: int) -> None:
    """Replace the schedule by a linear fall from the current learning rate to zero over `steps` steps:
    how a run shortened by the deadline guard still ends its schedule at a low rate."""
    for group in learner.optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    learner.scheduler = torch.optim.lr_scheduler.LambdaLR(learner.optimizer, lambda step: max(0.0, 1 - step / steps))
    learner.scheduler_unit = "step"
    if learner.lookahead is not None:  # its averaging strengthens toward the new end
        learner.lookahead.total_steps = learner.lookahead.steps + steps


FIT_ROWS = 4096  # training images a data-fitted layer (a whitening stem) is set from


def make_learner(run: ModelRun, spec: CompetitionSpec, data: TrainingData, runtime: Runtime, steps_per_epoch: int,
                 init_seed: int, train_rows: torch.Tensor | None = None) -> Learner:
    """`train_rows`: the rows the model may learn from (a fold's training rows); a layer set from the data
    sees a seeded sample of them, never a held-out row. None (probes): any rows."""
    torch.manual_seed(init_seed)  # the same initial weights for the same seed and fold
    classifier = build_model(run, spec, data.mean, data.std, runtime)
    if classifier.fits_to_images:
        rows = train_rows if train_rows is not None else torch.arange(len(data.labels))
        sample = rows[torch.randperm(len(rows), generator=torch.Generator().manual_seed(init_seed))[:FIT_ROWS]]
        classifier.fit_to_images(data.images[sample.sort().values.to(runtime.device)])
    # Under DDP, BatchNorm synchronised over the global batch.
    model = ddp.synchronised(classifier, runtime.device)
    optimizer = make_optimizer(run, model)
    scheduler, scheduler_unit = make_scheduler(run, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(enabled=model.precision.amp_dtype == torch.float16)
    ema = None
    if run.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=run.ema_decay, use_warmup=True)
    lookahead = Lookahead(model, run.lookahead, run.epochs * steps_per_epoch) if run.lookahead else None
    multi_label = spec.task == "multi_label"
    mixup = None
    if run.mixup_alpha or run.cutmix_alpha:
        from timm.data import Mixup

        # Label sets mix as the images do: each label's target is the share of the mixed image that holds it.
        mixup = Mixup(mixup_alpha=run.mixup_alpha, cutmix_alpha=run.cutmix_alpha, label_smoothing=run.label_smoothing,
                      num_classes=len(spec.classes), **({"multi_label": True} if multi_label else {}))

    loss_config = run.loss or LossConfig()
    chosen_loss = (MULTI_LABEL_LOSSES if multi_label else LOSSES)[loss_config.name]
    weights = None
    if loss_config.balanced:  # from the rows this model learns from, never the held-out ones
        rows = train_rows if train_rows is not None else torch.arange(len(data.labels))
        weights = balanced_weights(data.labels[rows.to(data.labels.device)], len(spec.classes)).to(runtime.device)

    def base_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # With Mixup the targets are soft and already smoothed; else smoothed here.
        return chosen_loss(logits.float(), targets, 0.0 if mixup is not None else run.label_smoothing, loss_config,
                           weights)

    # Models with several heads (multi_output_resnet) say how their heads' losses combine.
    heads_loss = getattr(model.net, "training_loss", None)
    loss = (lambda output, targets: heads_loss(output, targets, base_loss)) if heads_loss else base_loss
    # The DDP wrapper and the compiled module share the model's parameters: checkpoints, EMA and
    # evaluation use the model itself.
    forward = ddp.wrapped(model, runtime.device)
    forward = torch.compile(forward) if run.compile else forward
    return Learner(model, optimizer, scheduler, scheduler_unit, scaler, ema, lookahead, mixup, loss, forward, run,
                   steps_per_epoch)


@dataclass(frozen=True)
class EpochResult:
    """What one epoch measured: its training loss and learning rate, the validation numbers, its time."""

    epoch: int
    train_loss: float
    val_loss: float
    val_accuracy: float
    val_score: float  # the competition's metric (label sets: at thresholds fitted on these rows, calibrate.selection_score)
    lr: float
    seconds: float  # training steps only
    images: int  # training images seen


@dataclass
class Progress:
    """How far a fold has come; saved in last.pt beside the learner's state."""

    epoch: int = 0
    best_accuracy: float = -1.0  # at the best epoch (for people; the metric chooses it)
    best_score: float | None = None  # the competition's metric at the best epoch
    best_loss: float = math.inf
    best_epoch: int = 0
    best_val_probs: torch.Tensor | None = None  # a tensor, not a numpy array: last.pt loads with weights_only
    history: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)  # the training loss of every step so far
    stale_epochs: int = 0
    end_epoch: int = 0  # the last epoch, when shortened (0: the run's own `epochs`)
    anneal_from: int = 0  # shortened after this epoch ...
    anneal_steps: int = 0  # ... with a linear fall of the learning rate over this many steps
    rescheduled: bool = False  # ... or with the run's own schedule for end_epoch epochs (shortened before its peak)

    def record(self, result: EpochResult, val_probs: np.ndarray, metric: Metric) -> bool:
        """Note the epoch's validation result; True when it is the best so far by the metric (ties: lower loss)."""
        self.epoch = result.epoch
        improved = (self.best_score is None or metric.better(result.val_score, self.best_score)
                    or (result.val_score == self.best_score and result.val_loss < self.best_loss))
        if improved:
            self.best_score, self.best_accuracy = result.val_score, result.val_accuracy
            self.best_loss, self.best_epoch = result.val_loss, result.epoch
            self.best_val_probs, self.stale_epochs = torch.from_numpy(val_probs), 0
        else:
            self.stale_epochs += 1
        return improved


def resume(last_path: Path, learner: Learner, runtime: Runtime) -> Progress:
    """The progress saved in last.pt, with the learner restored to it; a fresh Progress if there is none."""
    if not last_path.is_file():
        return Progress()
    saved = load_checkpoint(last_path, runtime.device)
    learner.load_state(saved)
    return Progress(**saved["state"])


def epoch_batches(train_rows: torch.Tensor, batch_size: int, steps: int, seed: int) -> list[torch.Tensor]:
    """This epoch's batches of row numbers; the last partial batch is dropped (mixup needs pairs)."""
    order = train_rows[torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(seed))]
    return list(order[: steps * batch_size].split(batch_size))


def train_one_epoch(learner: Learner, augmenter: BatchAugmenter, labels: torch.Tensor, batches: list[torch.Tensor],
                    seed: int, runtime: Runtime, desc: str, step_losses: list[float] | None = None,
                    epoch: int = 1) -> float:
    """One pass over `batches`; returns the mean training loss, and appends each step's to `step_losses`
    (read once at the end of the epoch: no device sync per step). Under DDP every rank draws, augments
    and mixes the same global batch and computes on its slice of it (pipelines/machine/ddp.py). The probe
    and the concurrency benchmark call it too, on their own batches: so it takes the pieces, not a FoldJob."""
    learner.model.train()
    losses = []
    progress = tqdm(augmenter.batches(batches, seed, epoch), total=len(batches), leave=False, mininterval=2, desc=desc, unit="batch",
                    disable=len(batches) < 50 or not ddp.is_main())  # a probe's few steps need no bar
    for idx, images in zip(batches, progress):
        runtime.cores.follow()  # another kpipe process started or ended: take up the new share of the cores
        targets = labels[idx.to(runtime.device)]
        inputs = images.float()
        if learner.mixup is not None:
            inputs, targets = learner.mixup(inputs, targets)
        inputs, targets = ddp.share(inputs), ddp.share(targets)
        loss = learner.loss(learner.forward(inputs), targets)  # the model runs in its precision (classifier.py)
        learner.optimizer.zero_grad(set_to_none=True)
        learner.scaler.scale(loss).backward()
        learner.scaler.step(learner.optimizer)
        learner.scaler.update()
        if learner.ema is not None:
            learner.ema.update(learner.model)
        if learner.lookahead is not None:
            learner.lookahead.step(learner.model)
        if learner.scheduler is not None and learner.scheduler_unit == "step":
            learner.scheduler.step()
        losses.append(loss.detach().float())
    stacked = ddp.mean(torch.stack(losses))  # the global batch's losses
    if step_losses is not None:
        step_losses.extend(round(v, 5) for v in stacked.cpu().tolist())
    return float(stacked.mean())


def step_after_epoch(learner: Learner, signed_score: float) -> None:
    """`signed_score`: the validation score, larger is better (the plateau schedule watches for a maximum)."""
    if learner.scheduler is not None and learner.scheduler_unit == "epoch":
        learner.scheduler.step()
    elif learner.scheduler is not None and learner.scheduler_unit == "plateau":
        learner.scheduler.step(signed_score)


class EpochLog:
    """Each epoch's numbers: a row of history.csv, a line on the terminal, TensorBoard scalars (if installed)."""

    def __init__(self, what: str, epochs: int, tensorboard_dir: Path | None, metric: Metric):
        self.what, self.epochs, self.metric = what, epochs, metric
        self.tensorboard = tensorboard_writer(tensorboard_dir) if tensorboard_dir is not None else None

    def epoch(self, progress: Progress, result: EpochResult, improved: bool) -> None:
        row = {"epoch": result.epoch, "train_loss": round(result.train_loss, 5), "val_loss": round(result.val_loss, 5),
               "val_accuracy": round(result.val_accuracy, 5), "val_score": round(result.val_score, 5),
               "lr": f"{result.lr:.3g}", "seconds": round(result.seconds, 2),
               "images_per_second": round(result.images / result.seconds, 1)}
        progress.history.append(row)
        score = "" if self.metric.name == "accuracy" else f" val_{self.metric.label} {result.val_score:.4f}"
        print(f"train: {self.what} epoch {result.epoch}/{self.epochs}: loss {row['train_loss']:.4f} "
              f"val_loss {result.val_loss:.4f} val_acc {result.val_accuracy:.4f}{score}{' *' if improved else ''} "
              f"({result.seconds:.0f}s, {row['images_per_second']:.0f} img/s)", flush=True)
        if self.tensorboard is not None:
            for key in ("train_loss", "val_loss", "val_accuracy", "val_score", "images_per_second"):
                self.tensorboard.add_scalar(key, float(row[key]), result.epoch)
            self.tensorboard.add_scalar("lr", result.lr, result.epoch)
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()


def tensorboard_writer(log_dir: Path):
    """A SummaryWriter when the optional `tensorboard` extra is installed, else None (history.csv has it all)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


def write_history(path: Path, history: list[dict]) -> None:
    with atomic.atomic_file(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)


# --- the entry and the loop ---------------------------------------------------------------------------


EpochsAllowed = Callable[[int, float], int]  # (epochs done, seconds per epoch) -> total epochs the run may have


@dataclass(frozen=True)
class FoldJob:
    """One fold of one model run, and what it trains from."""

    inputs: TrainingInputs
    run: ModelRun
    fold: int

    @property
    def what(self) -> str:
        return f"{self.run.name} fold {self.fold}"

    def folder(self, root: Path | None = None) -> Path:
        """Where its outputs live (under `root` instead of the competition's train/ folder, for tuning)."""
        inputs = self.inputs
        return fold_folder(inputs.spec, self.run, inputs.prepared, inputs.folds, self.fold, root)


@dataclass(frozen=True)
class FoldOptions:
    """How one fold trains, beyond its recipe.

    `force` trains it again even when its output exists. `out_root`, `subsample` and `on_epoch` serve
    tuning: trials write elsewhere, may see a seeded fraction of the training rows, and report each
    epoch's val score (`on_epoch` may raise to stop the fold, e.g. optuna.TrialPruned).
    `epochs_allowed` serves the deadline guard: asked after every epoch, it may shorten the run;
    `shortening` = (after epoch, to epochs) replays such a shortening from a plan."""

    force: bool = False
    out_root: Path | None = None
    subsample: float = 1.0
    on_epoch: Callable[[int, float], None] | None = None
    epochs_allowed: EpochsAllowed | None = None
    shortening: tuple[int, int, bool] | None = None


def train_fold(job: FoldJob, options: FoldOptions = FoldOptions()) -> FoldOutput:
    """Train one fold (or reuse it)."""
    final = job.folder(options.out_root)
    # One process per fold at a time: a second `make submit`, or a `make train FOLD=k` beside it, waits
    # and then reuses (or, when forced, replaces) what the first one published. Under DDP rank 0 holds
    # the lock and the other ranks train beside it.
    def build() -> FoldOutput | None:
        return _train_fold(job, final, options)

    def reuse() -> FoldOutput:
        return FoldOutput(final)

    return ddp.build_once(build, reuse, lambda build: build_once(final, job.what, build, reuse, options.force))


def train_or_reuse(job: FoldJob, options: FoldOptions = FoldOptions()) -> tuple[FoldOutput, float | None]:
    """`train_fold`, timed: (its output, seconds it trained; None when its output existed and was reused)."""
    reused = not options.force and is_complete(job.folder(options.out_root))
    started = time.monotonic()
    output = train_fold(job, options)
    return output, None if reused else time.monotonic() - started


def shorten(learner: Learner, progress: Progress, end_epoch: int, steps_per_epoch: int, what: str,
            rescheduled: bool | None = None) -> None:
    """End the run at `end_epoch` instead. Before a one-cycle peak the run's own schedule is rebuilt for
    the new length (a linear fall from a rate still warming up would never reach the peak: measured on
    Fashion-MNIST, a guard's cut after epoch 1 of 20 otherwise trained the rest at a third of the peak);
    after it, the rate falls linearly to zero from where it is. `rescheduled` given: as a replayed plan says."""
    progress.end_epoch, progress.anneal_from = end_epoch, progress.epoch
    progress.anneal_steps = (end_epoch - progress.epoch) * steps_per_epoch
    progress.rescheduled = before_peak(learner.run, progress.epoch) if rescheduled is None else rescheduled
    if progress.rescheduled:
        reschedule(learner, end_epoch, progress.epoch * steps_per_epoch)
        how = f"its {learner.run.schedule.name} schedule rebuilt for {end_epoch} epochs"
    else:
        anneal(learner, progress.anneal_steps)
        how = "learning rate falls linearly to zero from here"
    print(f"train: {what}: shortened to {end_epoch} epochs by the deadline guard; {how}", flush=True)


def _train_fold(job: FoldJob, final: Path, options: FoldOptions) -> FoldOutput | None:
    # An interrupted attempt is resumed even when forced: epochs are seeded by (seed, fold, epoch), so
    # resuming ends exactly where starting over would. `options.force` only swaps out the finished output.
    spec, run, fold, data, runtime = job.inputs.spec, job.run, job.fold, job.inputs.data, job.inputs.runtime
    on_epoch, epochs_allowed, shortening = options.on_epoch, options.epochs_allowed, options.shortening
    work = final.with_name(f".{final.name}.partial")
    work.mkdir(parents=True, exist_ok=True)
    seed, what, metric = spec.folds.seed if run.seed is None else run.seed, job.what, spec.metric.bind()
    train_rows, val_rows = fold_rows(data, fold, seed, options.subsample)
    pseudo = None
    if run.pseudo_labels is not None:  # test images the teacher's fold-k model is sure of join the training rows
        pseudo = pseudo_rows(job, len(train_rows), val_rows)
        data, added = with_pseudo_rows(data, pseudo)
        train_rows = torch.cat([train_rows, added])
        print(f"train: {what}: {describe(pseudo)}", flush=True)
    steps = len(train_rows) // run.batch_size
    if steps == 0:
        raise UserError(f"{run.name}: batch_size {run.batch_size} is larger than fold {fold}'s {len(train_rows)} "
                        "training rows; lower it in the profile")
    if run.batch_size % ddp.world_size():
        raise UserError(f"{run.name}: batch_size {run.batch_size} does not split evenly over {ddp.world_size()} "
                        "devices (GPUS=); make it a multiple of the device count")
    learner = make_learner(run, spec, data, runtime, steps, init_seed=epoch_seed(seed, fold, -1), train_rows=train_rows)
    augmenter = BatchAugmenter(run.augment, spec, data.images, data.images_nhwc)
    progress = resume(work / "last.pt", learner, runtime)
    if progress.epoch:
        print(f"train: {what}: resuming after epoch {progress.epoch} of {progress.end_epoch or run.epochs}")
    val_images, val_labels = data.images[val_rows.to(runtime.device)], data.labels_host()[val_rows.numpy()]
    # TensorBoard events for real runs only (tuning trials are deleted when they end).
    log = EpochLog(what, run.epochs, competition_root(spec.name) / "tensorboard" / final.parent.name / final.name
                   if options.out_root is None and ddp.is_main() else None, metric)
    if shortening is not None and not progress.end_epoch and progress.epoch == shortening[0]:
        shorten(learner, progress, shortening[1], steps, what, shortening[2])
    log.epochs = progress.end_epoch or run.epochs
    recent_seconds: list[float] = []  # per epoch, with validation: the guard judges by the last three
    while progress.epoch < (progress.end_epoch or run.epochs):
        epoch = progress.epoch + 1
        if run.early_stopping and progress.stale_epochs >= run.early_stopping:
            print(f"train: {what}: early stop, no better val {metric.label} for {run.early_stopping} epochs")
            break
        this_seed = epoch_seed(seed, fold, epoch)
        torch.manual_seed(this_seed + ddp.rank())  # dropout, drop-path (under DDP each rank its own masks)
        np.random.seed(this_seed)  # timm's Mixup draws from numpy's global generator
        batches = epoch_batches(train_rows, run.batch_size, steps, this_seed)
        started = time.perf_counter()
        train_loss = train_one_epoch(learner, augmenter, data.labels, batches, this_seed, runtime,
                                     f"{what} epoch {epoch}/{progress.end_epoch or run.epochs}", progress.step_losses,
                                     epoch)
        seconds = time.perf_counter() - started
        val_probs = ddp.gathered(lambda images: predict_probs(learner.evaluated, images, share=runtime.cores), val_images)
        epoch_seconds = time.perf_counter() - started  # with the validation pass: what the guard plans with
        result = EpochResult(epoch, train_loss, val_loss=kaggle_log_loss(val_probs, val_labels),
                             val_accuracy=accuracy(val_probs, val_labels), val_score=selection_score(metric, val_probs, val_labels),
                             lr=learner.optimizer.param_groups[0]["lr"], seconds=seconds, images=steps * run.batch_size)
        step_after_epoch(learner, metric.signed(result.val_score))
        improved = progress.record(result, val_probs, metric)
        if improved and ddp.is_main():
            save_checkpoint(best_weights(learner.evaluated, run, epoch, result.val_accuracy), work / "best.pt")
        log.epoch(progress, result, improved)
        if not progress.end_epoch and epoch < run.epochs:
            if shortening is not None and epoch == shortening[0]:
                shorten(learner, progress, shortening[1], steps, what, shortening[2])
            elif shortening is None and epochs_allowed is not None:
                recent_seconds = (recent_seconds + [epoch_seconds])[-3:]
                if (end := epochs_allowed(epoch, sum(recent_seconds) / len(recent_seconds))) < run.epochs:
                    shorten(learner, progress, max(end, epoch + 1), steps, what)
            log.epochs = progress.end_epoch or run.epochs
        if ddp.is_main():
            save_checkpoint({**learner.state(), "state": asdict(progress)}, work / "last.pt")
        if on_epoch is not None:
            on_epoch(epoch, result.val_score)
    log.close()
    if not ddp.is_main():
        return None  # rank 0 publishes
    return publish_fold(job, work, final, progress, val_rows, replace=options.force,
                        pseudo=pseudo.summary if pseudo is not None else None)


def pseudo_rows(job: FoldJob, train_rows: int, val_rows: torch.Tensor) -> PseudoRows:
    """The pseudo-labelled test images of a student's fold, from its teacher's same fold; `val_rows`: the
    fold's held-out rows, whose near-copies are left out."""
    run, inputs = job.run, job.inputs
    teacher = run.pseudo_labels.teacher_run
    if teacher is None:
        raise UserError(f"{run.name}: pseudo_labels.teacher '{run.pseudo_labels.teacher}' was not resolved to a run; "
                        "list the teacher before it in the same profile or pool")
    folder = fold_folder(inputs.spec, teacher, inputs.prepared, inputs.folds, job.fold)
    output = teacher_output(folder, teacher.name, run.name, job.fold)
    data = inputs.data
    require_in_memory(data, job.what)
    rows = choose_rows(run.pseudo_labels, output, data.labels_host(), train_rows)
    chosen = data.test_images[torch.from_numpy(rows.test_rows).to(data.test_images.device)].permute(0, 2, 3, 1).cpu().numpy()
    return without_held_out_copies(rows, np.asarray(data.images_nhwc[val_rows.numpy()]), chosen)


def publish_fold(job: FoldJob, work: Path, final: Path, progress: Progress, val_rows: torch.Tensor,
                 replace: bool, pseudo: dict | None = None) -> FoldOutput:
    """The fold is done: predict the test set with the best weights and publish the outputs."""
    spec, run, fold, inputs = job.inputs.spec, job.run, job.fold, job.inputs
    data, runtime = inputs.data, inputs.runtime
    best_model = load_fold_model(work, spec, runtime)
    np.save(work / "test_probs.npy", predict_probs(best_model, data.test_images, share=runtime.cores))
    np.save(work / "oof_probs.npy", progress.best_val_probs.numpy())
    np.save(work / "oof_index.npy", val_rows.numpy())
    write_history(work / "history.csv", progress.history)
    steps = len(progress.step_losses) // max(progress.epoch, 1)
    write_history(work / "iterations.csv", [{"step": i + 1, "epoch": i // max(steps, 1) + 1, "train_loss": loss}
                                            for i, loss in enumerate(progress.step_losses)] or [{"step": 0}])
    (work / "last.pt").unlink()
    publish(work, final, "train", run_config(spec, run), {"prepared": inputs.prepared.key, "folds": inputs.folds.key},
            replace=replace,
            extra={"fold": fold, "best_epoch": progress.best_epoch, "epochs_run": progress.epoch,
                   "ranks": ddp.world_size(), "deterministic": torch.are_deterministic_algorithms_enabled(),
                   "shortened": {"from_epoch": progress.anneal_from, "epochs": progress.end_epoch,
                                 "rescheduled": progress.rescheduled} if progress.end_epoch else None,
                   "pseudo_labels": pseudo,
                   "val_accuracy": progress.best_accuracy, "val_loss": progress.best_loss,
                   "metric": str(spec.metric), "val_score": progress.best_score,
                   "parameters": sum(p.numel() for p in best_model.net.parameters()),
                   "train_seconds": round(sum(h["seconds"] for h in progress.history), 1),
                   "digest": file_digest(work / "oof_probs.npy", work / "test_probs.npy")})
    return FoldOutput(final)
