"""predict: what a trained fold model says about images.

The one module that loads fold models and runs them: training's validation pass, the TTA and ensemble
stages, tuning, and (to come) `make predict` all use it; none of them needs the training code.
    FoldOutput      a fold's predictions on disk (oof_probs.npy, oof_index.npy, test_probs.npy, best.pt)
    checkpoints     `save_checkpoint` / `load_checkpoint` (weights_only: a checkpoint cannot run code)
    VIEWS           the test-time-augmentation views by name; `register_view` adds one
    predict_probs   batched probabilities (softmax; multi-label: sigmoid per label), optionally through a view
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn as nn
from tqdm import tqdm

from competition import atomic
from competition.errors import UserError
from competition.recipe import ModelRun
from competition.spec import CompetitionSpec
from pipelines.machine.cores import CoreShare
from pipelines.machine.device import Runtime
from pipelines.recipe import kernel_inference
from pipelines.recipe.classifier import ImageClassifier, build_model
from pipelines.recipe.registry import Registry
from pipelines.stages.artifacts import read_manifest

PREDICT_BATCH = 512
Transform = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class FoldOutput:
    """One fold's published predictions (train or TTA stage)."""

    folder: Path

    @property
    def digest(self) -> str:
        return read_manifest(self.folder)["digest"]

    def oof(self) -> tuple[np.ndarray, np.ndarray]:
        return np.load(self.folder / "oof_index.npy"), np.load(self.folder / "oof_probs.npy")

    def test_probs(self) -> np.ndarray:
        return np.load(self.folder / "test_probs.npy")


def file_digest(*paths: Path) -> str:
    sha = hashlib.sha256()
    for path in paths:
        sha.update(path.read_bytes())
    return sha.hexdigest()[:16]


# --- checkpoints --------------------------------------------------------------------------------------


def save_checkpoint(obj: dict, path: Path) -> None:
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


def best_weights(model: ImageClassifier, run: ModelRun, epoch: int, val_accuracy: float) -> dict:
    """What best.pt holds: the weights and all that is needed to rebuild the model around them."""
    return {"state_dict": model.state_dict(), "run": run.model_dump(mode="json"), "mean": model.mean.flatten().tolist(),
            "std": model.std.flatten().tolist(), "epoch": epoch, "val_accuracy": val_accuracy}


def rebuild_from_checkpoint(checkpoint: dict, spec: CompetitionSpec, runtime: Runtime,
                            precision: str | None = None) -> ImageClassifier:
    """The model a checkpoint holds, in the precision it trained in (or `precision`)."""
    run = ModelRun.model_validate(checkpoint["run"])
    changes = {"pretrained": False, "pretrained_file": None, **({"precision": precision} if precision else {})}
    model = build_model(run.model_copy(update=changes), spec,
                        checkpoint["mean"], checkpoint["std"], runtime)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval()


def load_fold_model(folder: Path, spec: CompetitionSpec, runtime: Runtime, precision: str | None = None) -> ImageClassifier:
    return rebuild_from_checkpoint(load_checkpoint(folder / "best.pt", runtime.device), spec, runtime, precision)


# --- inference ----------------------------------------------------------------------------------------


@torch.no_grad()
def predict_probs(model: nn.Module, images: torch.Tensor, view: Transform | None = None,
                  share: CoreShare | None = None) -> np.ndarray:
    """Probabilities (float32, N×classes: the model's `probabilities`, a softmax or a sigmoid per label)
    for uint8 images, optionally through a TTA view;
    between batches it takes up a changed `share` of the cores (the runtime's)."""
    model.eval()
    chunks = []
    for start in range(0, len(images), PREDICT_BATCH):
        if share is not None:
            share.follow()
        batch = images[start:start + PREDICT_BATCH]
        if view is not None:
            batch = view(batch)
        logits = model(batch)  # in the model's own precision (classifier.py)
        chunks.append(model.probabilities(logits).cpu())
    return torch.cat(chunks).numpy()


# --- test-time augmentation views ----------------------------------------------------------------------

# Each view is a list of transforms whose predictions are averaged (shift = four one-pixel moves).
VIEWS: Registry[list[Transform]] = Registry("TTA view")


def register_view(name: str, *transforms: Transform) -> None:
    VIEWS[name] = list(transforms)


# The views are the exported script's own (pipelines/recipe/kernel_inference.py runs without kpipe), so a
# package replays exactly the views the pipeline predicted with.
for _name, _transforms in kernel_inference.VIEWS.items():
    register_view(_name, *_transforms)


def predict_with_views(model: nn.Module, images: torch.Tensor, views: list[str], desc: str = "tta",
                       share: CoreShare | None = None) -> np.ndarray:
    """Mean over views of each view's (mean) probabilities."""
    passes = [(name, transform) for name in views for transform in VIEWS[name]]
    probs: dict[str, list[np.ndarray]] = {name: [] for name in views}
    quiet = len(images) * len(passes) < 20_000 or not desc
    for name, transform in tqdm(passes, desc=desc, unit="view", leave=False, disable=quiet):
        probs[name].append(predict_probs(model, images, view=transform, share=share))
    return np.mean([np.mean(probs[name], axis=0) for name in views], axis=0).astype(np.float32)
