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
    cfg = run.optimizer
    # No weight decay on norms and biases: decaying them only hurts.
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return OPTIMIZERS[cfg.name](groups, cfg)


@SCHEDULES.register("onecycle")
def onecycle(optimizer: torch.optim.Optimizer, run: ModelRun, steps_per_epoch: int):
    return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=run.optimizer.lr, total_steps=run.epochs * steps_per_epoch,
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
