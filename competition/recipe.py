"""Training recipes: what `make submit` trains, for how long, and how predictions are combined.

A competition YAML holds one recipe per profile (`quick` for a CPU, `full` for a GPU) under `profiles:`.
Every field has a default that works; every key is checked (an unknown one is an error, not ignored).
Names of implementations (optimizer, schedule, augmentation policy, TTA views, ensemble method, model)
are plain text here: this layer knows no implementation. `pipelines.checks` holds each name against the
registry beside its code as soon as a command starts.
"""
from __future__ import annotations

import re
import typing
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class OptimizerConfig(_Strict):
    name: str = "sgd"  # pipelines/recipe/optim.py: OPTIMIZERS
    lr: float = Field(default=0.05, gt=0, le=10)
    momentum: float = Field(default=0.9, ge=0, lt=1)  # sgd only
    nesterov: bool = True  # sgd only
    weight_decay: float = Field(default=5e-4, ge=0)


class ScheduleConfig(_Strict):
    name: str = "onecycle"  # pipelines/recipe/optim.py: SCHEDULES
    pct_start: float = Field(default=0.25, gt=0, lt=1)  # onecycle: fraction of steps spent warming up
    warmup_epochs: float = Field(default=0.0, ge=0)  # cosine: linear warm-up before the cosine decay
    step_size: int = Field(default=3, ge=1)  # step: epochs between decays
    step_at: float | None = Field(default=None, gt=0, lt=1)  # step: decay once, at this share of the epochs, instead
    gamma: float = Field(default=0.1, gt=0, le=1)  # step: decay factor
    patience: int = Field(default=1, ge=0)  # plateau: epochs without improvement before decaying
    factor: float = Field(default=0.3, gt=0, lt=1)  # plateau: decay factor


class LossConfig(_Strict):
    name: str = "cross_entropy"  # pipelines/recipe/losses.py: LOSSES
    gamma: float = Field(default=2.0, ge=0, le=10)  # focal: how much easy examples are down-weighted
    # Weigh each class by its rarity in the fold's training rows (N / (classes x its images)); multi-label:
    # each label's positives by its negatives over its positives. Unset: every row weighs the same.
    balanced: bool | None = None


class AugmentConfig(_Strict):
    policy: str = "light"  # pipelines/recipe/augment.py: POLICIES
    shift: int = Field(default=2, ge=0, le=16)  # light and up: random translation in pixels
    ops: int | None = Field(default=None, ge=1, le=6)  # randaugment: N, ops per image (unset: 2)
    magnitude: int | None = Field(default=None, ge=0, le=30)  # randaugment: M of 30 (unset: 9)
    # alternating: each image flipped at random in the first epoch, then the other way every epoch after
    # (pipelines/recipe/augment.py); random (unset): a fresh coin every epoch.
    flip_order: Literal["random", "alternating"] | None = None


class PseudoLabels(_Strict):
    """Test images an earlier run of the same recipe (the teacher) is confident about join this run's
    training, labelled with the teacher's class (pipelines/stages/pseudo.py). Fold k takes the teacher's
    fold-k predictions, whose model never saw fold k's held-out rows, so this run's held-out score stays
    honest."""

    teacher: str = Field(pattern=r"^[A-Za-z0-9_.:-]+$")  # the name of a run listed before this one
    # The teacher's top probability an image needs, or `auto`: the lowest at which the teacher's own
    # held-out rows above it are `precision` right (label smoothing keeps every top probability low, so a
    # fixed value means little: on 100 classes with smoothing 0.1, 8% of rows reached 0.9).
    threshold: float | Literal["auto"] = "auto"
    precision: float = Field(default=0.95, gt=0.5, le=1)  # auto: how often the chosen labels should be right
    max_share: float = Field(default=0.5, gt=0, le=2)  # at most this many pseudo-labelled images per training row
    # The teacher's run as trained, filled from the profile or plan (`with_teachers`), never written by hand:
    # it keys this run's outputs, so a retrained teacher means a retrained student.
    teacher_run: "ModelRun | None" = None

    @model_validator(mode="after")
    def _threshold_in_range(self):
        if self.threshold != "auto" and not 0.5 <= self.threshold < 1:
            raise ValueError(f"pseudo_labels.threshold: {self.threshold} is not in [0.5, 1); give one there, or `auto`")
        return self


UNSET_NOT_KEYED = ("loss", "loss.balanced", "augment.ops", "augment.magnitude", "augment.flip_order", "bn_bias_lr_scale", "bn_freeze_weights",
                   "lookahead", "seed", "pseudo_labels")


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
    loss: LossConfig | None = None  # None: cross-entropy
    augment: AugmentConfig = AugmentConfig()
    mixup_alpha: float = Field(default=0.0, ge=0)  # timm Mixup; 0 = off
    cutmix_alpha: float = Field(default=0.0, ge=0)  # timm Mixup's CutMix; 0 = off
    ema_decay: float | None = Field(default=None, gt=0, lt=1)  # EMA of weights, evaluated instead of the raw model
    # BatchNorm biases learn this many times faster than the other weights (pipelines/recipe/optim.py).
    bn_bias_lr_scale: float | None = Field(default=None, ge=1, le=1000)
    bn_freeze_weights: bool | None = None  # BatchNorm scales stay at 1: the next layer's weights scale instead
    # Every this many steps, a slow copy of the weights moves toward them and they jump back to it, more
    # strongly as training ends (pipelines/recipe/optim.py: Lookahead). Not with ema_decay.
    lookahead: int | None = Field(default=None, ge=1, le=100)
    # Another member of the same recipe: a different initialisation and batch order (unset: the folds' seed).
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)
    pseudo_labels: PseudoLabels | None = None
    early_stopping: int | None = Field(default=None, ge=1)  # stop after this many epochs without a better val metric
    pretrained: bool = False
    pretrained_file: str | None = None
    input_size: int | None = Field(default=None, ge=8, le=1024)  # resize images on the fly (models needing a fixed size)
    # Take hyperparameters from an Optuna study's best trial: "best" (the study <comp>-<run name>) or a study name.
    params: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.:-]+$")
    # How the forward pass runs (pipelines/machine/device.py: PRECISIONS): fp32, fp32-cl (channels_last), bf16-cl,
    # fp16-cl; `auto` = the device's default (fp32-cl on a CPU, bf16/fp16 autocast on CUDA).
    precision: str = "auto"
    # Train through torch.compile (inductor). The planner sets it where its probe measured that the
    # faster steps repay the compile time; evaluation and prediction stay eager.
    compile: bool = False

    @model_validator(mode="after")
    def _one_weight_average(self):
        if self.lookahead and self.ema_decay:
            raise ValueError("lookahead and ema_decay both average the weights; set one of them")
        if self.pseudo_labels and self.pseudo_labels.teacher == self.name:
            raise ValueError(f"pseudo_labels.teacher: '{self.name}' cannot teach itself; name a run listed before it")
        return self

    @property
    def name(self) -> str:
        return self.alias or self.model.replace(":", "-")

    def key_dump(self, **options) -> dict:
        """The run as its outputs are keyed: options added since outputs were first cached are left out
        while unset, so what was trained before them keeps its key."""
        dumped = self.model_dump(mode="json", **options)
        for path in UNSET_NOT_KEYED:
            *parents, leaf = path.split(".")
            section = dumped
            for key in parents:
                section = section.get(key) or {}
            if leaf in section and section[leaf] is None:
                del section[leaf]
        teacher = self.pseudo_labels.teacher_run if self.pseudo_labels is not None else None
        if teacher is not None and isinstance(dumped.get("pseudo_labels"), dict):  # the teacher as its own outputs are keyed
            dumped["pseudo_labels"]["teacher_run"] = teacher.key_dump()
        return dumped


class Candidate(ModelRun):
    """A run the time-budget planner may choose (`pool.candidates`); it sets the epochs and precision.

    `epochs` is the most worth training here (past it, more barely helps on this data), `min_epochs` the
    fewest worth training at all (below it the planner leaves the run out instead)."""

    family: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")  # architecture family: the ensemble wants two or more
    min_epochs: int = Field(default=3, ge=1, le=1000)

    @model_validator(mode="after")
    def _epochs_in_order(self):
        if self.min_epochs > self.epochs:
            raise ValueError(f"min_epochs ({self.min_epochs}) is above epochs ({self.epochs})")
        return self

    def as_run(self, epochs: int, precision: str, compile: bool = False) -> ModelRun:
        fields = self.model_dump(exclude={"family", "min_epochs"})
        return ModelRun.model_validate({**fields, "epochs": epochs, "precision": precision, "compile": compile})


PseudoLabels.model_rebuild()


def with_teachers(key: str, runs: list[ModelRun]) -> list[ModelRun]:
    """`runs` with each student's `pseudo_labels.teacher_run` set to its teacher as listed; a teacher must
    come before its student (it trains first) and learn from labels alone (no chains of teachers)."""
    resolved: list[ModelRun] = []
    for run in runs:
        pseudo = run.pseudo_labels
        if pseudo is not None:
            teacher = next((r for r in resolved if r.name == pseudo.teacher), None)
            if teacher is None:
                raise ValueError(f"{key}: {run.name}'s pseudo_labels.teacher '{pseudo.teacher}' is not a run listed "
                                 f"before it; list the teacher first")
            if teacher.pseudo_labels is not None:
                raise ValueError(f"{key}: {run.name}'s teacher '{teacher.name}' learns from pseudo-labels itself; "
                                 "name a run that trains on the labels alone")
            run = run.model_copy(update={"pseudo_labels": pseudo.model_copy(update={"teacher_run": teacher})})
        resolved.append(run)
    return resolved


def parse_duration(value) -> float:
    """Seconds from `90s`, `15m`, `2h`, `1h30m` or a bare number of seconds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        seconds = float(value)
    else:
        match = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s)?\s*",
                             str(value))
        if not match or not any(match.groups()):
            raise ValueError(f"'{value}' is not a duration; write e.g. 90s, 15m, 2h or 1h30m")
        hours, minutes, secs = (float(g) if g else 0.0 for g in match.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not 10 <= seconds <= 7 * 24 * 3600:
        raise ValueError(f"'{value}' is outside 10s..168h")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]


class Budget(_Strict):
    """The default wall-clock budget of `make submit` (BUDGET= overrides), per kind of device."""

    cpu: Duration = 15 * 60.0
    cuda: Duration = 15 * 60.0


def check_unique_names(key: str, runs: list[ModelRun]) -> None:
    """Runs name their output folders and MODEL=: two with one name would overwrite each other."""
    names = [run.name for run in runs]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{key}: two runs named '{duplicates[0]}'; give one an `alias`")


class Pool(_Strict):
    """What the planner chooses from: candidate runs (in order of preference), TTA views it may use
    (it adds a view when the time fits), and how it combines the models."""

    candidates: list[Candidate] = Field(min_length=1)
    tta: list[str] = Field(default_factory=lambda: ["identity"], min_length=1)  # pipelines/stages/predict.py: VIEWS
    ensemble: str = "hill_climb"  # pipelines/stages/ensemble.py: METHODS
    max_models: int = Field(default=3, ge=1, le=20)
    # A model is added only while every chosen model keeps this share of its `epochs`: how this data set
    # trades models against epochs, measured (1.0: never give up epochs for another model).
    min_share: float = Field(default=0.85, gt=0, le=1)
    # Time that buys no further fold lengthens the schedules, up to this many times `epochs` (unset: the
    # planner's 1.5). 1.0 where longer training overfits (measured on the tiny-image stand-in).
    max_stretch: float | None = Field(default=None, ge=1, le=3)
    # An Optuna study (the spec's `tuning:`) on the first chosen candidate, planned only from time left
    # after every chosen model's full `epochs`: at most this share of the budget, and only when it buys
    # at least `min_trials` unpruned trials (fewer are a random search that rarely beats a tuned recipe).
    study_share: float = Field(default=0.25, ge=0, le=0.9)
    min_trials: int = Field(default=8, ge=1, le=10_000)

    @model_validator(mode="after")
    def _unique_names(self):
        check_unique_names("candidates", self.candidates)
        with_teachers("candidates", list(self.candidates))  # a teacher must be a candidate before its student
        if self.tta[0] != "identity":
            raise ValueError("tta: the first view must be `identity` (the others are added when time allows)")
        return self


class Profile(_Strict):
    models: list[ModelRun] = Field(min_length=1)
    # Which folds to train; "all" for honest full-data CV. Fewer folds trade OOF coverage for time.
    folds: list[int] | Literal["all"] = "all"
    tta: list[str] = Field(default_factory=lambda: ["identity"], min_length=1)  # pipelines/stages/predict.py: VIEWS
    ensemble: str = "hill_climb"  # pipelines/stages/ensemble.py: METHODS

    @model_validator(mode="after")
    def _unique_names(self):
        check_unique_names("models", self.models)
        object.__setattr__(self, "models", with_teachers("models", self.models))
        if self.folds != "all" and len(set(self.folds)) != len(self.folds):
            raise ValueError("folds: listed twice")
        return self


class ParamSpec(_Strict):
    """One dimension of a search space; `type` picks which other keys apply."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None
    choices: list[str | int | float | bool] | None = None

    @model_validator(mode="after")
    def _consistent(self):
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty `choices` list")
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.type} needs `low` and `high`")
            if self.low >= self.high:
                raise ValueError(f"low ({self.low}) must be below high ({self.high})")
            if self.log and self.low <= 0:
                raise ValueError("log scale needs low > 0")
            if self.log and self.step is not None:
                raise ValueError("use either log or step, not both")
        return self


class PrunerConfig(_Strict):
    name: Literal["median", "hyperband", "none"] = "median"
    n_startup_trials: int = Field(default=2, ge=0)  # median: trials before pruning starts
    # median: steps before a trial can be pruned; steps are epochs, counted on across the tuning folds, so
    # n_warmup_steps = epochs judges a trial only once its first fold is done
    n_warmup_steps: int = Field(default=1, ge=0)
    reduction_factor: int = Field(default=3, ge=2)  # hyperband


class TuningConfig(_Strict):
    """What `make tune` searches, and on how much data each trial trains."""

    folds: list[int] = Field(default_factory=lambda: [0], min_length=1)  # the objective: mean val accuracy on these folds
    subsample: float = Field(default=1.0, gt=0, le=1)  # fraction of each fold's training rows a trial sees
    epochs: int | None = Field(default=None, ge=1)  # trial epochs (default: the run's own)
    pruner: PrunerConfig = PrunerConfig()
    # Dotted paths into a model run, e.g. optimizer.lr, augment.policy, model_args.width.
    search_space: dict[str, ParamSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _paths_exist(self):
        for path in self.search_space:
            head, _, rest = path.partition(".")
            if head == "model_args":
                if not rest:
                    raise ValueError(f"search_space.{path}: name the model argument, e.g. model_args.width")
                continue
            if head not in ModelRun.model_fields or head in ("model", "alias", "params", "model_args", "precision",
                                                             "compile"):
                raise ValueError(f"search_space.{path}: '{head}' is not a tunable field of a model run")
            nested = ModelRun.model_fields[head].annotation
            nested = next((a for a in typing.get_args(nested) if a is not type(None)), nested)  # X | None -> X
            if rest and not (isinstance(nested, type) and issubclass(nested, BaseModel) and rest in nested.model_fields):
                raise ValueError(f"search_space.{path}: '{rest}' is not a field of '{head}'")
        return self


def apply_params(run: ModelRun, params: dict) -> ModelRun:
    """A copy of `run` (a ModelRun or a Candidate) with dotted-path values set (e.g. {"optimizer.lr":
    0.01}), validated again."""
    data = run.model_dump(mode="json")
    for path, value in params.items():
        target = data
        *parents, leaf = path.split(".")
        for key in parents:
            if target.get(key) is None:  # an unset optional section (`loss:`) starts from its defaults
                target[key] = {}
            target = target[key]
        target[leaf] = value
    return type(run).model_validate(data)
