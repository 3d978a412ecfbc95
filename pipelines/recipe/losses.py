"""Training losses by the name a recipe gives (`loss: {name: focal, gamma: 2}`); unset is cross-entropy.

Each takes float logits (N×C), targets (class numbers, or N×C soft targets from Mixup/CutMix, already
smoothed), the label smoothing to apply to class-number targets, the run's LossConfig and its class
weights (`balanced: true`; else None).
    cross_entropy   the usual
    focal           Lin et al. (2017): cross-entropy scaled by (1 - p_target)^gamma, so the many easy
                    examples weigh less than the few hard ones (rare classes, confusable pairs)

Multi-label competitions (a sigmoid per label) have the same names in MULTI_LABEL_LOSSES, each applied
to every label on its own: targets are N×labels in [0, 1] (a label set, or soft ones from Mixup/CutMix);
smoothing pulls each towards 1/2, and the weights multiply each label's positive term.
    cross_entropy   binary cross-entropy per label
    focal           binary focal loss per label: (1 - p_true)^gamma times it
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from competition.recipe import LossConfig
from pipelines.recipe.registry import Registry

Loss = Callable[[torch.Tensor, torch.Tensor, float, LossConfig, "torch.Tensor | None"], torch.Tensor]
LOSSES: Registry[Loss] = Registry("loss")
MULTI_LABEL_LOSSES: Registry[Loss] = Registry("multi-label loss")


def soft_targets(targets: torch.Tensor, classes: int, label_smoothing: float) -> torch.Tensor:
    """N×C target probabilities: class numbers one-hot and smoothed; soft targets as they are."""
    if targets.dim() == 2:
        return targets
    return F.one_hot(targets, classes).float() * (1 - label_smoothing) + label_smoothing / classes


def _weighted(per_class: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    return per_class if weights is None else per_class * weights


@LOSSES.register("cross_entropy")
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, config: LossConfig,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    if targets.dim() == 2 or weights is not None:
        soft = soft_targets(targets, logits.shape[-1], label_smoothing)
        return torch.sum(-_weighted(soft, weights) * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


@LOSSES.register("focal")
def focal(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, config: LossConfig,
          weights: torch.Tensor | None = None) -> torch.Tensor:
    log_probs = F.log_softmax(logits, dim=-1)
    scale = (1 - log_probs.exp()).pow(config.gamma)
    soft = soft_targets(targets, logits.shape[-1], label_smoothing)
    return torch.sum(-_weighted(soft, weights) * scale * log_probs, dim=-1).mean()


def smoothed_sets(targets: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """N×labels targets in [0, 1], each pulled `label_smoothing` of the way towards 1/2."""
    return targets.float() * (1 - label_smoothing) + label_smoothing / 2


@MULTI_LABEL_LOSSES.register("cross_entropy")
def binary_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, config: LossConfig,
                         weights: torch.Tensor | None = None) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, smoothed_sets(targets, label_smoothing), pos_weight=weights)


@MULTI_LABEL_LOSSES.register("focal")
def binary_focal(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, config: LossConfig,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    soft = smoothed_sets(targets, label_smoothing)
    per_label = F.binary_cross_entropy_with_logits(logits, soft, pos_weight=weights, reduction="none")
    p = logits.sigmoid()
    p_true = soft * p + (1 - soft) * (1 - p)
    return ((1 - p_true).pow(config.gamma) * per_label).mean()


def balanced_weights(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """`balanced: true`'s weights from the training rows' labels: per class N / (classes x its rows), or
    (a 0/1 label matrix) per label its negatives over its positives; a class or label absent weighs 1."""
    if labels.dim() == 2:
        positives = labels.float().sum(0)
        negatives = len(labels) - positives
        return torch.where(positives > 0, negatives / positives.clamp_min(1), torch.ones_like(positives))
    counts = torch.bincount(labels, minlength=classes).float()
    return torch.where(counts > 0, len(labels) / (classes * counts.clamp_min(1)), torch.ones_like(counts))
