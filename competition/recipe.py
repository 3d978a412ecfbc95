"""Training recipes: what `make submit` trains, for how long, and how predictions are combined.

A competition YAML holds one recipe per profile (`quick` for a CPU, `full` for a GPU) under `profiles:`.
Every field has a default that works; every key is checked (an unknown one is an error, not ignored).
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(default=0.05, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = Field(default=5e-4, ge=0)


class ScheduleConfig(_Strict):
    name: Literal["onecycle", "cosine", "step", "plateau", "constant"] = "onecycle"
    pct_start: float = Field(default=0.25, gt=0, lt=1)  # onecycle: fraction of steps spent warming up
    warmup_epochs: float = Field(default=0.0, ge=0)  # cosine: linear warm-up before the cosine decay
    step_size: int = Field(default=3, ge=1)  # step: epochs between decays
    gamma: float = Field(default=0.1, gt=0, le=1)  # step: decay factor
    patience: int = Field(default=1, ge=0)  # plateau: epochs without improvement before decaying
    factor: float = Field(default=0.3, gt=0, lt=1)  # plateau: decay factor


class AugmentConfig(_Strict):
    policy: Literal["none", "light", "medium", "strong"] = "light"
    shift: int = Field(default=2, ge=0, le=16)  # light and up: random translation in pixels


class ModelRun(_Strict):
    """One model trained on every selected fold."""

    model: str  # a registry name: `python -m models list`
    alias: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]+$")  # name of its outputs; default: model
    model_args: dict = Field(default_factory=dict)  # extra keyword arguments for the model's constructor
    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=128, ge=2, le=8192)
    optimizer: OptimizerConfig = OptimizerConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    label_smoothing: float = Field(default=0.1, ge=0, lt=1)
    augment: AugmentConfig = AugmentConfig()
    mixup_alpha: float = Field(default=0.0, ge=0)  # timm Mixup; 0 = off
    cutmix_alpha: float = Field(default=0.0, ge=0)  # timm Mixup's CutMix; 0 = off
    ema_decay: float | None = Field(default=None, gt=0, lt=1)  # EMA of weights, evaluated instead of the raw model
    early_stopping: int | None = Field(default=None, ge=1)  # stop after this many epochs without a better val metric
    pretrained: bool = False
    pretrained_file: str | None = None
    input_size: int | None = Field(default=None, ge=8, le=1024)  # resize images on the fly (models needing a fixed size)

    @property
    def name(self) -> str:
        return self.alias or self.model.replace(":", "-")


TTA_VIEWS = ("identity", "hflip", "vflip", "shift")


class Profile(_Strict):
    models: list[ModelRun] = Field(min_length=1)
    # Which folds to train; "all" for honest full-data CV. Fewer folds trade OOF coverage for time.
    folds: list[int] | Literal["all"] = "all"
    tta: list[Literal["identity", "hflip", "vflip", "shift"]] = Field(default_factory=lambda: ["identity"], min_length=1)
    ensemble: Literal["hill_climb", "mean", "best"] = "hill_climb"

    @model_validator(mode="after")
    def _unique_names(self):
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models: two runs named '{duplicates[0]}'; give one an `alias`")
        if self.folds != "all" and len(set(self.folds)) != len(self.folds):
            raise ValueError("folds: listed twice")
        return self
