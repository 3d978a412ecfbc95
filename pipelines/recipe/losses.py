"""Training losses by the name a recipe gives (`loss: {name: focal, gamma: 2}`); unset is cross-entropy.

Each takes float logits (N×C), targets (class numbers, or N×C soft targets from Mixup/CutMix, already
smoothed), the label smoothing to apply to class-number targets, and the run's LossConfig.
    cross_entropy   the usual
    focal           Lin et al. (2017): cross-entropy scaled by (1 - p_target)^gamma, so the many easy
                    examples weigh less than the few hard ones (rare classes, confusable pairs)
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from competition.recipe import LossConfig
from pipelines.recipe.registry import Registry

LOSSES: Registry[Callable[[torch.Tensor, torch.Tensor, float, LossConfig], torch.Tensor]] = Registry("loss")


def soft_targets(targets: torch.Tensor, classes: int, label_smoothing: float) -> torch.Tensor:
    """N×C target probabilities: class numbers one-hot and smoothed; soft targets as they are."""
    if targets.dim() == 2:
        return targets
    return F.one_hot(targets, classes).float() * (1 - label_smoothing) + label_smoothing / classes


@LOSSES.register("cross_entropy")
def cross_entropy(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, config: LossConfig) -> torch.Tensor:
    if targets.dim() == 2:
        return torch.sum(-targets * F.log_softmax(logits, dim=-1), dim=-1).mean()
    return F.cross_entropy(logits, targets, label_smoothing=label_smoothing)


@LOSSES.register("focal")
def focal(logits: torch.Tensor, targets: torch.Tensor, label_smoothing: float, config: LossConfig) -> torch.Tensor:
    log_probs = F.log_softmax(logits, dim=-1)
    weights = (1 - log_probs.exp()).pow(config.gamma)
    return torch.sum(-soft_targets(targets, logits.shape[-1], label_smoothing) * weights * log_probs, dim=-1).mean()
