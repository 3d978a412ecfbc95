"""Optimizers and learning-rate schedules, by the names a recipe gives them (`optimizer.name`,
`schedule.name`). Each is one registered function; adding one touches this file only."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn as nn

from competition.recipe import ModelRun, OptimizerConfig
from pipelines.recipe.registry import Registry

# name -> f(param_groups, config) -> optimizer
OPTIMIZERS: Registry[Callable[[list[dict], OptimizerConfig], torch.optim.Optimizer]] = Registry("optimizer")
# name -> f(optimizer, run, steps_per_epoch) -> (scheduler or None, when to step it: 'step' | 'epoch' | 'plateau')
SCHEDULES: Registry[Callable[[torch.optim.Optimizer, ModelRun, int], tuple[object, str]]] = Registry("schedule")


@OPTIMIZERS.register("sgd")
def sgd(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


@OPTIMIZERS.register("adam")
def adam(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.Adam(groups, lr=cfg.lr)


@OPTIMIZERS.register("adamw")
def adamw(groups: list[dict], cfg: OptimizerConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(groups, lr=cfg.lr)


def make_optimizer(run: ModelRun, model: nn.Module) -> torch.optim.Optimizer:
    """The run's optimizer over the model's trainable weights, in groups: weights with decay; norms and
    biases without (decaying them only hurts); with `bn_bias_lr_scale`, BatchNorm biases in a group of
    their own at that multiple of the rate. `bn_freeze_weights` leaves BatchNorm scales out (they stay 1).
    Both come from the speedrun line of work (models/speedrun.py): a BatchNorm-bias rate 64x the others
    cut the epochs to a fixed CIFAR-10 accuracy by a quarter there."""
    cfg = run.optimizer
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine]
    if run.bn_freeze_weights:
        for norm in norms:
            norm.weight.requires_grad_(False)
    fast = [norm.bias for norm in norms] if run.bn_bias_lr_scale else []
    trained = [p for p in model.parameters() if p.requires_grad and not any(p is f for f in fast)]
    groups = [{"params": [p for p in trained if p.ndim > 1], "weight_decay": cfg.weight_decay},
              {"params": [p for p in trained if p.ndim <= 1], "weight_decay": 0.0}]
    if fast:
        groups.append({"params": fast, "weight_decay": 0.0, "lr": cfg.lr * run.bn_bias_lr_scale,
                       "lr_scale": run.bn_bias_lr_scale})
    return OPTIMIZERS[cfg.name](groups, cfg)


@SCHEDULES.register("onecycle")
def onecycle(optimizer: torch.optim.Optimizer, run: ModelRun, steps_per_epoch: int):
    # Each group peaks at its own rate (a BatchNorm-bias group's is a multiple of the others'), from the
    # recipe: a schedule rebuilt mid-run (train.reschedule) must not take the current rate for the peak.
    max_lr = [run.optimizer.lr * group.get("lr_scale", 1.0) for group in optimizer.param_groups]
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=max_lr, total_steps=run.epochs * steps_per_epoch,
                                               pct_start=run.schedule.pct_start, div_factor=10, final_div_factor=100), "step"


@SCHEDULES.register("cosine")
def cosine(optimizer: torch.optim.Optimizer, run: ModelRun, steps_per_epoch: int):
    """Linear warm-up for `warmup_epochs`, then a cosine decay to zero, stepped every batch."""
    total = run.epochs * steps_per_epoch
    warmup = int(run.schedule.warmup_epochs * steps_per_epoch)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor), "step"


@SCHEDULES.register("step")
def step_decay(optimizer: torch.optim.Optimizer, run: ModelRun, steps_per_epoch: int):
    """Multiply the rate by `gamma` every `step_size` epochs, or once at `step_at` of the run's epochs
    (which keeps the decay inside the run when a planner changes its length)."""
    if run.schedule.step_at is not None:
        milestone = max(1, round(run.epochs * run.schedule.step_at))
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=[milestone], gamma=run.schedule.gamma), "epoch"
    return torch.optim.lr_scheduler.StepLR(optimizer, step_size=run.schedule.step_size, gamma=run.schedule.gamma), "epoch"


@SCHEDULES.register("plateau")
def plateau(optimizer: torch.optim.Optimizer, run: ModelRun, steps_per_epoch: int):
    cfg = run.schedule
    return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", patience=cfg.patience, factor=cfg.factor), "plateau"


@SCHEDULES.register("constant")
def constant(optimizer: torch.optim.Optimizer, run: ModelRun, steps_per_epoch: int):
    return None, "epoch"


def make_scheduler(run: ModelRun, optimizer: torch.optim.Optimizer, steps_per_epoch: int):
    """(scheduler or None, 'step' | 'epoch' | 'plateau'): when to call scheduler.step()."""
    return SCHEDULES[run.schedule.name](optimizer, run, steps_per_epoch)


class Lookahead:
    """The speedrun line of work's lookahead (README, "Accuracy per CPU-minute"): every `every` steps a slow
    copy of the weights (and BatchNorm statistics) moves toward them by 1 - decay, and the weights jump back
    to it. decay = 0.95^every x (step / total steps)^3: nothing early on, an average of the last few
    hundred steps at the end, so training ends on a smoothed point without a separate EMA model."""

    def __init__(self, model: nn.Module, every: int, total_steps: int):
        self.every, self.total_steps, self.steps = every, total_steps, 0
        self.slow = [t.detach().clone() for t in self._tensors(model)]

    @staticmethod
    def _tensors(model: nn.Module) -> list[torch.Tensor]:
        return [t for t in model.state_dict().values() if t.dtype.is_floating_point]

    @torch.no_grad()
    def step(self, model: nn.Module) -> None:
        self.steps += 1
        if self.steps % self.every:
            return
        decay = 0.95 ** self.every * min(1.0, self.steps / self.total_steps) ** 3
        for slow, fast in zip(self.slow, self._tensors(model)):
            slow.lerp_(fast, 1 - decay)
            fast.copy_(slow)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "total_steps": self.total_steps, "slow": self.slow}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.total_steps = state["steps"], state["total_steps"]
        for slow, saved in zip(self.slow, state["slow"]):
            slow.copy_(saved)
