"""train: one model run, fold by fold, from in-memory uint8 tensors.

For fold k the model trains on the other folds, keeps the weights with the best validation accuracy,
and writes <data>/<comp>/train/<run>-<key>/fold<k>/:
    best.pt          the best weights, with what is needed to rebuild the model
    oof_probs.npy    class probabilities for the held-out rows (identity view), oof_index.npy their row numbers
    test_probs.npy   class probabilities for the test images (identity view)
    history.csv      per epoch: train loss, val loss, val accuracy, learning rate, seconds, images/s
    manifest.json    config, hashes, versions, git commit, and a digest of the predictions

While a fold trains, `.fold<k>.partial/last.pt` is rewritten after every epoch; a killed run resumes
from it. Every epoch draws its batch order, augmentation and dropout from a seed derived from
(seed, fold, epoch), so a resumed fold ends exactly where an uninterrupted one would.
"""
from __future__ import annotations

import csv
import hashlib
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import models
from competition import atomic
from competition.errors import UserError
from competition.paths import competition_root
from competition.recipe import ModelRun
from competition.spec import CompetitionSpec
from pipelines.artifacts import build_once, output_key, publish, read_manifest
from pipelines.augment import BatchAugmenter
from pipelines.device import Runtime
from pipelines.metrics import accuracy, log_loss
from models.weights import load_weights_file
from pipelines.prepare import Folds, Prepared

PREDICT_BATCH = 512


# --- data and model ------------------------------------------------------------------------------


@dataclass
class TrainingData:
    images: torch.Tensor  # uint8 N×C×H×W on the device
    images_nhwc: np.ndarray  # the same images on the host, for per-sample albumentations
    labels: torch.Tensor  # int64 on the device
    test_images: torch.Tensor  # uint8 on the device
    fold_of_row: np.ndarray
    mean: list[float]  # per channel, 0..255 scale
    std: list[float]


def load_training_data(prepared: Prepared, folds: Folds, runtime: Runtime) -> TrainingData:
    data = prepared.load(mmap=False)
    images = torch.from_numpy(data.train_images).permute(0, 3, 1, 2).contiguous()
    pixels = images.float().transpose(0, 1).reshape(images.shape[1], -1)
    return TrainingData(
        images=images.to(runtime.device),
        images_nhwc=data.train_images,
        labels=torch.from_numpy(data.train_labels).to(runtime.device),
        test_images=torch.from_numpy(data.test_images).permute(0, 3, 1, 2).contiguous().to(runtime.device),
        fold_of_row=folds.fold_of_each_row(len(data.train_labels)),
        mean=pixels.mean(dim=1).tolist(),
        std=pixels.std(dim=1).clamp_min(1.0).tolist(),
    )


class ImageClassifier(nn.Module):
    """Takes images with values 0..255 (uint8 or float), normalises them, resizes if asked, classifies."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], input_size: int | None = None):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.net(x.contiguous(memory_format=torch.channels_last))


def build_model(run: ModelRun, spec: CompetitionSpec, mean: list[float], std: list[float]) -> ImageClassifier:
    kwargs = dict(run.model_args)
    from_library = bool(run.model.partition(":")[2])
    if from_library:  # timm/torchvision load their own weights, published or local
        kwargs.update(pretrained=run.pretrained, pretrained_file=run.pretrained_file)
    elif run.pretrained:
        raise UserError(f"model '{run.model}' has no published pretrained weights; set `pretrained_file:` to a local checkpoint")
    net = models.create(run.model, num_classes=len(spec.classes), in_chans=spec.image.channels,
                        img_size=run.input_size or spec.image.height, **kwargs)
    if run.pretrained_file and not from_library:
        load_weights_file(net, run.pretrained_file)
    return ImageClassifier(net, mean, std, run.input_size).to(memory_format=torch.channels_last)


def rebuild_from_checkpoint(checkpoint: dict, spec: CompetitionSpec, runtime: Runtime) -> ImageClassifier:
    run = ModelRun.model_validate(checkpoint["run"])
    model = build_model(run.model_copy(update={"pretrained": False, "pretrained_file": None}), spec,
                        checkpoint["mean"], checkpoint["std"])
    model.load_state_dict(checkpoint["state_dict"])
    return model.to(runtime.device).eval()


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, runtime: Runtime, view=None) -> np.ndarray:
    """Softmax probabilities (float32, N×classes) for uint8 images, optionally through a TTA view."""
    model.eval()
    chunks = []
    for start in range(0, len(images), PREDICT_BATCH):
        batch = images[start:start + PREDICT_BATCH]
        if view is not None:
            batch = view(batch)
        with torch.autocast(runtime.device.type, dtype=runtime.amp_dtype, enabled=runtime.amp_dtype is not None):
            logits = model(batch)
        chunks.append(logits.float().softmax(dim=1).cpu())
    return torch.cat(chunks).numpy()


# --- optimisation ---------------------------------------------------------------------------------


def make_optimizer(run: ModelRun, model: nn.Module) -> torch.optim.Optimizer:
    cfg = run.optimizer
    # No weight decay on norms and biases: decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    factories = {
        "sgd": lambda: torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0),
        "adam": lambda: torch.optim.Adam(groups, lr=cfg.lr),
        "adamw": lambda: torch.optim.AdamW(groups, lr=cfg.lr),
    }
    return factories[cfg.name]()


def make_scheduler(run: ModelRun, optimizer, steps_per_epoch: int):
    """Returns (scheduler or None, 'step' | 'epoch' | 'plateau'): when to call scheduler.step()."""
    cfg = run.schedule
    total = run.epochs * steps_per_epoch
    if cfg.name == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=run.optimizer.lr, total_steps=total,
                                                   pct_start=cfg.pct_start, div_factor=10, final_div_factor=100), "step"
    if cfg.name == "cosine":
        warmup = int(cfg.warmup_epochs * steps_per_epoch)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

        return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "step"
    if cfg.name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=cfg.step_size, gamma=cfg.gamma), "epoch"
    if cfg.name == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=cfg.patience, factor=cfg.factor), "plateau"
    return None, "epoch"


def epoch_seed(seed: int, fold: int, epoch: int) -> int:
    return (seed * 1_000_003 + fold * 10_007 + epoch) % (2**31)


# --- outputs --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FoldOutput:
    folder: Path

    @property
    def digest(self) -> str:
        return read_manifest(self.folder)["digest"]

    def oof(self) -> tuple[np.ndarray, np.ndarray]:
        return np.load(self.folder / "oof_index.npy"), np.load(self.folder / "oof_probs.npy")

    def test_probs(self) -> np.ndarray:
        return np.load(self.folder / "test_probs.npy")


def run_config(spec: CompetitionSpec, run: ModelRun) -> dict:
    return {"run": run.model_dump(mode="json"), "classes": len(spec.classes), "image": spec.image.model_dump(),
            "flips": spec.flips.model_dump(), "seed": spec.folds.seed}


def run_folder(spec: CompetitionSpec, run: ModelRun, prepared: Prepared, folds: Folds, root: Path | None = None) -> Path:
    key = output_key(run_config(spec, run), {"prepared": prepared.key, "folds": folds.key})
    return (root or competition_root(spec.name) / "train") / f"{run.name}-{key}"


def fold_folder(spec, run, prepared, folds, fold: int, root: Path | None = None) -> Path:
    return run_folder(spec, run, prepared, folds, root) / f"fold{fold}"


def file_digest(*paths: Path) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.read_bytes())
    return sha.hexdigest()[:16]


def save_checkpoint(obj, path: Path) -> None:
    with atomic.atomic_file(path, "wb") as fh:
        torch.save(obj, fh)


def load_checkpoint(path: Path, device: torch.device) -> dict:
    """Checkpoints hold tensors, numbers, strings and lists only, so they load with weights_only=True:
    a checkpoint file cannot run code."""
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # a truncated or foreign file raises many kinds
        raise UserError(f"{path}: unreadable checkpoint ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                        "delete it and train that fold again") from None


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic.atomic_file(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(history[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(history)


def tensorboard_writer(log_dir: Path):
    """A SummaryWriter when the optional `tensorboard` extra is installed, else None (history.csv has it all)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(log_dir=str(log_dir))


# --- the loop -------------------------------------------------------------------------------------


def train_fold(spec: CompetitionSpec, run: ModelRun, data: TrainingData, prepared: Prepared, folds: Folds,
               fold: int, runtime: Runtime, force: bool = False, out_root: Path | None = None,
               subsample: float = 1.0, on_epoch: Callable[[int, float], None] | None = None) -> FoldOutput:
    """Train one fold (or reuse it). `out_root`, `subsample` and `on_epoch` serve tuning: trials write
    elsewhere, may see a seeded fraction of the training rows, and report each epoch's val accuracy
    (`on_epoch` may raise to stop the fold, e.g. optuna.TrialPruned)."""
    final = fold_folder(spec, run, prepared, folds, fold, out_root)
    # One process per fold at a time: a second `make submit`, or a `make train FOLD=k` beside it, waits
    # and then reuses (or, when forced, replaces) what the first one published.
    return build_once(final, f"{run.name} fold {fold}",
                      lambda: _train_fold(spec, run, data, prepared, folds, fold, runtime, final, force, out_root is None,
                                          subsample, on_epoch),
                      lambda: FoldOutput(final), force)


def _train_fold(spec: CompetitionSpec, run: ModelRun, data: TrainingData, prepared: Prepared, folds: Folds, fold: int,
                runtime: Runtime, final: Path, replace: bool, log_tensorboard: bool, subsample: float,
                on_epoch: Callable[[int, float], None] | None) -> FoldOutput:
    # An interrupted attempt is resumed even when forced: epochs are seeded by (seed, fold, epoch), so
    # resuming ends exactly where starting over would. `force` only replaces the finished output.
    work = final.with_name(f".{final.name}.partial")
    work.mkdir(parents=True, exist_ok=True)

    seed = spec.folds.seed
    train_index = np.flatnonzero(data.fold_of_row != fold)
    if subsample < 1.0:
        keep = np.random.default_rng(epoch_seed(seed, fold, -2)).permutation(len(train_index))[: int(len(train_index) * subsample)]
        train_index = np.sort(train_index[keep])
    train_rows = torch.from_numpy(train_index)
    val_rows = torch.from_numpy(np.flatnonzero(data.fold_of_row == fold))
    torch.manual_seed(epoch_seed(seed, fold, -1))  # the same initial weights for the same seed and fold
    model = build_model(run, spec, data.mean, data.std).to(runtime.device)
    optimizer = make_optimizer(run, model)
    steps_per_epoch = len(train_rows) // run.batch_size  # the last partial batch is dropped (mixup needs pairs)
    if steps_per_epoch == 0:
        raise UserError(f"{run.name}: batch_size {run.batch_size} is larger than fold {fold}'s {len(train_rows)} training rows; lower it in the profile")
    scheduler, scheduler_unit = make_scheduler(run, optimizer, steps_per_epoch)
    scaler = torch.amp.GradScaler(enabled=runtime.amp_dtype == torch.float16)
    ema = None
    if run.ema_decay:
        from timm.utils import ModelEmaV3

        ema = ModelEmaV3(model, decay=run.ema_decay, use_warmup=True)
    mixup = None
    if run.mixup_alpha or run.cutmix_alpha:
        from timm.data import Mixup

        mixup = Mixup(mixup_alpha=run.mixup_alpha, cutmix_alpha=run.cutmix_alpha, label_smoothing=run.label_smoothing,
                      num_classes=len(spec.classes))
    augmenter = BatchAugmenter(run.augment, spec, data.images, data.images_nhwc)

    def base_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if mixup is not None:  # soft targets, label smoothing already applied by Mixup
            return torch.sum(-targets * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
        return F.cross_entropy(logits.float(), targets, label_smoothing=run.label_smoothing)

    combine_loss = getattr(model.net, "training_loss", None)

    state = {"epoch": 0, "best_accuracy": -1.0, "best_loss": math.inf, "best_epoch": 0, "best_val_probs": None,
             "history": [], "stale_epochs": 0}
    last_path, best_path = work / "last.pt", work / "best.pt"
    if last_path.is_file():
        checkpoint = load_checkpoint(last_path, runtime.device)
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if scheduler is not None:
            scheduler.load_state_dict(checkpoint["scheduler"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        scaler.load_state_dict(checkpoint["scaler"])
        state = checkpoint["state"]
        print(f"train: {run.name} fold {fold}: resuming after epoch {state['epoch']} of {run.epochs}")

    val_images = data.images[val_rows.to(runtime.device)]
    val_labels_host = data.labels.cpu().numpy()[val_rows.numpy()]
    # TensorBoard events for real runs only (tuning trials are deleted when they end): <data>/<comp>/tensorboard/<run>/fold<k>
    tensorboard = tensorboard_writer(competition_root(spec.name) / "tensorboard" / final.parent.name / final.name) \
        if log_tensorboard else None
    for epoch in range(state["epoch"] + 1, run.epochs + 1):
        if run.early_stopping and state["stale_epochs"] >= run.early_stopping:
            print(f"train: {run.name} fold {fold}: early stop, no better val accuracy for {run.early_stopping} epochs")
            break
        this_seed = epoch_seed(seed, fold, epoch)
        torch.manual_seed(this_seed)  # dropout, drop-path
        np.random.seed(this_seed)  # timm's Mixup draws from numpy's global generator
        order = train_rows[torch.randperm(len(train_rows), generator=torch.Generator().manual_seed(this_seed))]
        index_batches = list(order[: steps_per_epoch * run.batch_size].split(run.batch_size))
        model.train()
        started, loss_sum = time.perf_counter(), torch.zeros((), device=runtime.device)
        progress = tqdm(augmenter.batches(index_batches, this_seed), total=steps_per_epoch, leave=False, mininterval=2,
                        desc=f"{run.name} fold {fold} epoch {epoch}/{run.epochs}", unit="batch")
        for idx, images in zip(index_batches, progress):
            targets = data.labels[idx.to(runtime.device)]
            inputs = images.float()
            if mixup is not None:
                inputs, targets = mixup(inputs, targets)
            with torch.autocast(runtime.device.type, dtype=runtime.amp_dtype, enabled=runtime.amp_dtype is not None):
                output = model(inputs)
                # Models with several heads (multi_output_resnet) say how their heads' losses combine.
                loss = combine_loss(output, targets, base_loss) if combine_loss else base_loss(output, targets)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            if ema is not None:
                ema.update(model)
            if scheduler is not None and scheduler_unit == "step":
                scheduler.step()
            loss_sum += loss.detach()
        train_seconds = time.perf_counter() - started

        evaluated = ema.module if ema is not None else model
        val_probs = predict_probs(evaluated, val_images, runtime)
        val_accuracy = accuracy(val_probs, val_labels_host)
        val_loss = log_loss(val_probs, val_labels_host)
        lr = optimizer.param_groups[0]["lr"]
        if scheduler is not None and scheduler_unit == "epoch":
            scheduler.step()
        elif scheduler is not None and scheduler_unit == "plateau":
            scheduler.step(val_accuracy)
        improved = (val_accuracy, -val_loss) > (state["best_accuracy"], -state["best_loss"])
        if improved:
            # A tensor, not a numpy array: checkpoints must load with weights_only=True.
            state.update(best_accuracy=val_accuracy, best_loss=val_loss, best_epoch=epoch,
                         best_val_probs=torch.from_numpy(val_probs), stale_epochs=0)
            save_checkpoint({"state_dict": evaluated.state_dict(), "run": run.model_dump(mode="json"), "mean": data.mean,
                          "std": data.std, "epoch": epoch, "val_accuracy": val_accuracy}, best_path)
        else:
            state["stale_epochs"] += 1
        state["epoch"] = epoch
        state["history"].append({
            "epoch": epoch, "train_loss": round(float(loss_sum) / steps_per_epoch, 5), "val_loss": round(val_loss, 5),
            "val_accuracy": round(val_accuracy, 5), "lr": f"{lr:.3g}", "seconds": round(train_seconds, 2),
            "images_per_second": round(steps_per_epoch * run.batch_size / train_seconds, 1),
        })
        print(f"train: {run.name} fold {fold} epoch {epoch}/{run.epochs}: loss {state['history'][-1]['train_loss']:.4f} "
              f"val_loss {val_loss:.4f} val_acc {val_accuracy:.4f}{' *' if improved else ''} "
              f"({train_seconds:.0f}s, {state['history'][-1]['images_per_second']:.0f} img/s)", flush=True)
        save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                      "scheduler": scheduler.state_dict() if scheduler is not None else None,
                      "ema": ema.state_dict() if ema is not None else None, "scaler": scaler.state_dict(),
                      "state": state}, last_path)
        if tensorboard is not None:
            for key in ("train_loss", "val_loss", "val_accuracy", "images_per_second"):
                tensorboard.add_scalar(key, float(state["history"][-1][key]), epoch)
            tensorboard.add_scalar("lr", lr, epoch)
            tensorboard.flush()
        if on_epoch is not None:
            on_epoch(epoch, val_accuracy)

    if tensorboard is not None:
        tensorboard.close()
    # The fold is done: predict the test set with the best weights and publish the outputs.
    best = load_checkpoint(best_path, runtime.device)
    best_model = rebuild_from_checkpoint(best, spec, runtime)
    np.save(work / "test_probs.npy", predict_probs(best_model, data.test_images, runtime))
    np.save(work / "oof_probs.npy", state["best_val_probs"].numpy())
    np.save(work / "oof_index.npy", val_rows.numpy())
    _write_history(work / "history.csv", state["history"])
    last_path.unlink()
    publish(work, final, "train", run_config(spec, run), {"prepared": prepared.key, "folds": folds.key}, replace=replace, extra={
        "fold": fold, "best_epoch": state["best_epoch"], "val_accuracy": state["best_accuracy"],
        "val_loss": state["best_loss"], "parameters": sum(p.numel() for p in best_model.net.parameters()),
        "train_seconds": round(sum(h["seconds"] for h in state["history"]), 1),
        "digest": file_digest(work / "oof_probs.npy", work / "test_probs.npy"),
    })
    return FoldOutput(final)


def train_run(spec: CompetitionSpec, run: ModelRun, data: TrainingData, prepared: Prepared, folds: Folds,
              fold_indices: list[int], runtime: Runtime, force_folds: tuple[int, ...] = ()) -> list[FoldOutput]:
    outputs = []
    for fold in fold_indices:
        output = train_fold(spec, run, data, prepared, folds, fold, runtime, force=fold in force_folds)
        manifest = read_manifest(output.folder)
        print(f"train: {run.name} fold {fold}: val accuracy {manifest['val_accuracy']:.4f} "
              f"(best epoch {manifest['best_epoch']}) -> {output.folder}")
        outputs.append(output)
    return outputs
