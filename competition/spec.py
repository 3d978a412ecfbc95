"""Competition specs: one YAML per competition, validated once at load.

A spec says where the competition lives (the real Kaggle or the local host),
how its files are laid out, what the images look like and how it is scored.
Everything downstream receives a `CompetitionSpec`, never raw YAML.
"""
from __future__ import annotations

import hashlib
import json
import re
import string
import typing
from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator, model_serializer,
                      model_validator)

from competition import metrics
from competition.errors import SpecError
from competition.recipe import Budget, ModelRun, Pool, Profile, TuningConfig

SPEC_DIR = Path(__file__).resolve().parent


class _Strict(BaseModel):
    # extra="forbid" turns a typo in a YAML key into an error instead of a silently ignored setting.
    model_config = ConfigDict(extra="forbid", frozen=True)


class NpyLayout(_Strict):
    """Images as .npy arrays (N×H×W or N×H×W×C, uint8); rows line up with train_csv / sample_submission."""

    kind: Literal["npy"]
    train_images: str = "train_images.npy"
    train_csv: str = "train.csv"
    test_images: str = "test_images.npy"
    sample_submission: str = "sample_submission.csv"


class PixelCsvLayout(_Strict):
    """Images as rows of pixel values, as digit-recognizer ships them: train_csv holds the label column
    and one column per pixel (`<pixel_prefix>0` .. `<pixel_prefix>{H*W*C-1}`, row-major, channels last);
    test_csv the same pixel columns, its rows in the sample submission's order. Ids come from the sample
    submission; training rows without an id column are numbered `train-<row>`."""

    kind: Literal["pixel_csv"]
    train_csv: str = "train.csv"
    test_csv: str = "test.csv"
    sample_submission: str = "sample_submission.csv"
    pixel_prefix: str = Field(default="pixel", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")


def pattern_fields(value: str, allowed: tuple[str, ...], example: str) -> list[str]:
    """The placeholders of a file name pattern, in order; ValueError for a malformed pattern or a placeholder
    other than `allowed`."""
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(value) if field is not None]
    except ValueError as exc:  # an unbalanced brace
        raise ValueError(f"is not a file name pattern ({exc}); write it like '{example}'") from None
    unknown = [f for f in fields if f not in allowed]
    if unknown:
        names = " and ".join(f"'{{{name}}}'" for name in allowed)
        raise ValueError(f"unknown placeholder '{{{unknown[0]}}}': use {names}, e.g. '{example}'")
    return fields


class _ImageFilesLayout(_Strict):
    """Layouts with one image file per sample; `filename` names a test image (and a train image) by its id."""

    train_dir: str = "train"
    test_dir: str | list[str] = "test"  # or several folders the test images are spread over (test1, test2)
    sample_submission: str = "sample_submission.csv"
    filename: str = "{id}.png"

    @property
    def test_dirs(self) -> list[str]:
        return [self.test_dir] if isinstance(self.test_dir, str) else list(self.test_dir)

    @field_validator("filename")
    @classmethod
    def _has_id(cls, value: str) -> str:
        fields = pattern_fields(value, ("id",), "{id}.png")
        if "id" not in fields:
            raise ValueError("must contain '{id}', e.g. '{id}.png'")
        if "/" in value.replace("{id}", "") or "\\" in value or ".." in value:
            raise ValueError("must be a plain file name inside the image folder, e.g. '{id}.png'")
        return value


class CsvImagesLayout(_ImageFilesLayout):
    """One image file per row of train_csv (in train_dir) and of sample_submission (in test_dir)."""

    kind: Literal["csv_images"]
    train_csv: str = "train.csv"


class ClassFoldersLayout(_ImageFilesLayout):
    """Training images in one folder per class (folder name = class label); test images flat, ids from sample_submission."""

    kind: Literal["class_folders"]


class FileLabelsLayout(_ImageFilesLayout):
    """Training images flat in train_dir, each one's label in its file name (dogs-vs-cats: `cat.123.jpg`),
    read by the `train_filename` pattern: `{label}` is the label, `{n}` any text (a number), the rest as
    written. A training image's id is its file name without the extension. Test images as the other layouts."""

    kind: Literal["file_labels"]
    train_filename: str = "{label}.{n}.jpg"

    @field_validator("train_filename")
    @classmethod
    def _has_label(cls, value: str) -> str:
        fields = pattern_fields(value, ("label", "n"), "{label}.{n}.jpg")
        if fields.count("label") != 1 or fields.count("n") > 1:
            raise ValueError("must hold '{label}' once (and '{n}' at most once), e.g. '{label}.{n}.jpg'")
        if "/" in value or "\\" in value or value.replace("{label}", "x").replace("{n}", "0") in (".", ".."):
            raise ValueError("must be a plain file name inside the image folder, e.g. '{label}.{n}.jpg'")
        return value


LAYOUTS = (NpyLayout, CsvImagesLayout, ClassFoldersLayout, PixelCsvLayout, FileLabelsLayout)
Layout = Annotated[Union[LAYOUTS], Field(discriminator="kind")]
LAYOUT_KINDS = tuple(typing.get_args(layout.model_fields["kind"].annotation)[0] for layout in LAYOUTS)


class ImageShape(_Strict):
    """The working size every image is brought to at prepare time (and in `make predict` and the exported
    kernel), by `resize`: `keep` refuses an image of another size; `stretch` resizes to height x width;
    `centre_crop` resizes the shorter side, then crops the middle; `pad` resizes the longer side, then
    pads with black (pipelines/recipe/image_fit.py)."""

    height: int = Field(ge=8, le=1024)
    width: int = Field(ge=8, le=1024)
    channels: Literal[1, 3]
    resize: Literal["keep", "stretch", "centre_crop", "pad"] = "keep"

    def key_dump(self) -> dict:
        """The fields as hashed into artifact keys: `resize` only when set, so that what was prepared and
        trained before it existed keeps its key."""
        return self.model_dump(exclude={"resize"} if self.resize == "keep" else set())


class FlipsConfig(_Strict):
    """Which flips keep an image's class: yes for clothes and photos, no for digits and text."""

    hflip: bool = True
    vflip: bool = False


class FoldsConfig(_Strict):
    n_splits: int = Field(default=5, ge=2, le=20)
    seed: int = 42
    # Rows sharing a value of this train.csv column (patient, session, source) stay in one fold.
    group_column: str | None = None
    # Near-duplicate images (pipelines/stages/duplicates.py) stay in one fold (`group`), or are only reported.
    duplicates: Literal["group", "ignore"] = "group"

    def missing_fold(self, folds) -> int | None:
        """The first of `folds` that does not exist (folds count from 0), or None when all do."""
        return next((fold for fold in folds if not 0 <= fold < self.n_splits), None)

    def numbering(self) -> str:
        return f"folds are numbered 0..{self.n_splits - 1} (folds.n_splits is {self.n_splits})"


class HoldoutConfig(_Strict):
    """`source: dataset`: the labelled rows scored locally where a leaderboard would score. The dataset's
    own labelled test split where it has one (a test_csv with the label column), else this seeded,
    stratified fraction of the training rows, which then never train."""

    fraction: float = Field(default=0.2, gt=0, lt=1)
    seed: int = 42


class MetricChoice(_Strict):
    """The competition's metric (competition/metrics.py), written `accuracy`, `{name: map_at_k, k: 3}` or
    `{name: f_beta_samples, beta: 2}`."""

    name: str
    k: int | None = None
    beta: float | None = None
    allow_empty: bool | None = None

    @model_validator(mode="before")
    @classmethod
    def _parse(cls, value):
        if isinstance(value, MetricChoice):
            return value
        name, args = metrics.parse(value)
        return {"name": name, "k": None, **args}

    @model_serializer(mode="wrap")
    def _dump(self, handler):
        # beta and allow_empty only where given: the keys of single-label competitions' outputs stay as they were
        return {key: value for key, value in handler(self).items() if key in ("name", "k") or value is not None}

    def __str__(self) -> str:
        return self.bind().label

    def bind(self) -> metrics.Metric:
        return metrics.metric(self.name, self.k, self.beta, self.allow_empty)


class CompetitionSpec(_Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    title: str
    # A competition's slug, or `owner/name` of a dataset (`source: dataset`).
    kaggle_slug: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
    host: Literal["kaggle", "local"]
    # `dataset`: a labelled Kaggle dataset, downloaded through the datasets API, scored locally on a held-out
    # split (`holdout`) and logged as a local score: there is no leaderboard and nothing is uploaded.
    source: Literal["competition", "dataset"] = "competition"
    holdout: HoldoutConfig = HoldoutConfig()
    # The code-competition variant these models can enter through a kernel (`make export` attaches it).
    code_competition: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9-]*$")
    # This competition is itself a code competition (Kaggle's `isKernelsSubmissionsOnly`): its download
    # holds a few test rows only, and `make submit` enters it through an inference kernel it publishes.
    kernels_only: bool = False
    synthetic: bool = False
    layout: Layout
    id_column: str = "id"
    label_column: str = "label"
    # `multi_label`: each image has a set of labels (planet, protein atlas); the metric must be one of the
    # multi-label ones (competition/metrics.py). `label_format` says how train.csv holds the sets: `tags`,
    # the labels separated by spaces in `label_column`; `columns`, one 0/1 column per label, named as it.
    task: Literal["single_label", "multi_label"] = "single_label"
    label_format: Literal["tags", "columns"] = "tags"
    # The sample submission's columns where they are named otherwise than train.csv's (digit-recognizer:
    # `ImageId`, `Label` against train.csv's `label`); unset, the same names.
    submission_id_column: str | None = None
    submission_label_column: str | None = None
    # Labels exactly as they are written in train.csv / folder names / file names / submissions; `auto`
    # reads them from the training data at prepare time (numbers in numeric order, else sorted), recorded
    # in the prepared manifest: every command after prepare sees the list.
    classes: list[str] | Literal["auto"] = Field(min_length=2)
    # Human-readable names for reports; defaults to the labels themselves.
    class_names: list[str] | None = None
    image: ImageShape
    metric: MetricChoice  # how the leaderboard scores: it drives every choice the pipeline makes
    folds: FoldsConfig = FoldsConfig()
    flips: FlipsConfig = FlipsConfig()
    # The class depends on colour (e.g. hue bands): augmentation that changes colour is refused.
    colour_defines_class: bool = False
    budget: Budget = Budget()  # make submit's default time budget (BUDGET= overrides)
    pool: Pool | None = None  # candidate runs the time-budget planner chooses from
    profiles: dict[str, Profile] = Field(default_factory=dict)  # fixed recipes: PROFILE=quick|full
    tuning: TuningConfig | None = None

    @field_validator("classes", "class_names", mode="before")
    @classmethod
    def _labels_as_text(cls, value):
        # The loader keeps these lists' scalars as written (see load_spec); from Python, ints become text.
        if isinstance(value, str) and value != "auto":
            raise ValueError(f"'{value}' is neither a list of labels nor `auto` (which reads them from the training data)")
        if isinstance(value, list):
            return [str(v) if isinstance(v, (int, float, str)) and not isinstance(v, bool) else v for v in value]
        return value

    @model_validator(mode="after")
    def _check_classes(self):
        if self.source == "dataset" and "/" not in self.kaggle_slug:
            raise ValueError(f"kaggle_slug: a dataset is named owner/name (got '{self.kaggle_slug}')")
        if self.source == "competition" and "/" in self.kaggle_slug:
            raise ValueError(f"kaggle_slug: '{self.kaggle_slug}' names a dataset; set `source: dataset`, or give the "
                             "competition's slug")
        if self.source == "dataset" and (self.code_competition or self.kernels_only):
            raise ValueError(f"{'kernels_only' if self.kernels_only else 'code_competition'}: a dataset has no "
                             "competition to enter; remove it")
        if self.kernels_only and self.code_competition:
            raise ValueError("code_competition: this competition is a code competition itself (kernels_only: true); "
                             "remove code_competition")
        self._check_task()
        listed = self.classes != "auto"
        if listed and len(set(self.classes)) != len(self.classes):
            raise ValueError("classes: duplicate labels")
        if self.class_names is not None and not listed:
            raise ValueError("class_names: name the classes only where `classes:` lists them (not with `auto`)")
        if self.class_names is not None and len(self.class_names) != len(self.classes):
            raise ValueError(f"class_names: has {len(self.class_names)} names for {len(self.classes)} classes")
        if self.folds.group_column is not None and not hasattr(self.layout, "train_csv"):
            raise ValueError("folds.group_column: this layout has no train.csv to hold a group column; remove it")
        if listed and self.metric.k is not None and self.metric.k > len(self.classes):
            raise ValueError(f"metric: k is {self.metric.k}, but there are only {len(self.classes)} classes")
        if self.tuning is not None:
            self._check_folds("tuning.folds", self.tuning.folds)
        for profile_name, profile in self.profiles.items():
            if profile.folds != "all":
                self._check_folds(f"profiles.{profile_name}.folds", profile.folds)
            self._check_views(f"profiles.{profile_name}.tta", profile.tta)
        if self.pool is not None:
            self._check_views("pool.tta", self.pool.tta)
        return self

    def _check_task(self) -> None:
        bound = self.metric.bind()
        if bound.task != self.task:
            several = bound.multi_label
            raise ValueError(f"metric: {bound.label} scores {'a set of labels' if several else 'one class'} per image, "
                             f"but task is {self.task}; set `task: {bound.task}` or choose a "
                             f"{'single' if not several else 'multi'}-label metric")
        if self.task == "single_label":
            if self.label_format != "tags":
                raise ValueError("label_format: only multi-label competitions (task: multi_label) have one; remove it")
            return
        if self.layout.kind not in ("csv_images", "npy"):
            raise ValueError(f"task: multi_label needs a train.csv that holds each image's labels (layout kind csv_images "
                             f"or npy), not layout kind {self.layout.kind}")
        if self.source == "dataset":
            raise ValueError("task: multi_label is not supported for `source: dataset` yet; enter it as a competition")
        runs = [(f"profiles.{name}", run) for name, profile in self.profiles.items() for run in profile.models]
        runs += [("pool.candidates", run) for run in (self.pool.candidates if self.pool is not None else [])]
        for key, run in runs:
            if run.pseudo_labels is not None:
                raise ValueError(f"{key}: {run.name}: pseudo_labels take one class per image; a multi-label "
                                 "competition cannot use them yet, remove it")

    def _check_folds(self, key: str, folds: list[int]) -> None:
        missing = self.folds.missing_fold(folds)
        if missing is not None:
            raise ValueError(f"{key}: fold {missing} does not exist; {self.folds.numbering()}")

    def _check_views(self, key: str, views: list[str]) -> None:
        for view, allowed in (("hflip", self.flips.hflip), ("hflip_shift", self.flips.hflip), ("vflip", self.flips.vflip)):
            if view in views and not allowed:
                raise ValueError(f"{key}: '{view}' changes this competition's classes "
                                 f"(flips.{view.split('_')[0]} is false)")

    def profile(self, name: str) -> Profile:
        if name not in self.profiles:
            raise SpecError(f"competition/{self.name}.yaml: no profile '{name}' under `profiles:` "
                            f"(has: {', '.join(self.profiles) or 'none'})")
        return self.profiles[name]

    def model_run(self, profile_name: str, name: str) -> ModelRun:
        """The profile's model run called `name` (its alias or model name): what MODEL= names."""
        profile = self.profile(profile_name)
        for run in profile.models:
            if name in (run.name, run.model):
                return run
        names = ", ".join(r.name for r in profile.models)
        raise SpecError(f"competition/{self.name}.yaml: profile '{profile_name}' has no model '{name}' (has: {names}); "
                        "set MODEL= to one of them")

    def fold_indices(self, profile: Profile) -> list[int]:
        return list(range(self.folds.n_splits)) if profile.folds == "all" else sorted(profile.folds)

    @property
    def submission_id(self) -> str:
        """The sample submission's id column: the test ids, in the order a submission lists them."""
        return self.submission_id_column or self.id_column

    @property
    def submission_label(self) -> str:
        return self.submission_label_column or self.label_column

    @property
    def display_names(self) -> list[str]:
        return list(self.class_names or self.classes)

    def with_classes(self, classes: list[str]) -> "CompetitionSpec":
        """This spec with `classes: auto` replaced by the labels prepare found (a listed spec unchanged)."""
        if self.classes != "auto":
            return self
        return self.model_copy(update={"classes": list(classes)})

    def data_hash(self) -> str:
        """Hash of the fields that decide what `prepare` produces (not the folds, not the title)."""
        fields = self.model_dump(include={"layout", "id_column", "label_column", "classes"})
        if self.task == "multi_label":  # keyed only when set: what was prepared before keeps its key
            fields.update(task=self.task, label_format=self.label_format)
        fields["image"] = self.image.key_dump()
        if self.submission_id_column is not None:  # keyed only when set: what was prepared before keeps its key
            fields["submission_id_column"] = self.submission_id_column
        if self.source == "dataset":  # which rows are held out decides what prepare writes
            fields["holdout"] = self.holdout.model_dump()
        return stable_hash(fields)


def stable_hash(obj) -> str:
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def available() -> list[str]:
    return sorted(p.stem for p in SPEC_DIR.glob("*.yaml"))


def spec_path(name: str) -> Path:
    path = Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    return SPEC_DIR / f"{name}.yaml"


class _SpecLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # `<<: *base` may be overridden by the keys beside it
                continue
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key '{key}' (first on line {seen[key] + 1})", key_node.start_mark)
            seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep)


# Labels as their text: YAML would read `01` as 1, `1.0` as 1.0 and `yes` as True, but a label is compared
# with what the CSVs and folder names hold, character for character.
_VERBATIM_LISTS = ("classes", "class_names")


MAX_SPEC_BYTES = 1 << 20


def _read_yaml(path: Path) -> dict:
    if path.stat().st_size > MAX_SPEC_BYTES:
        raise SpecError(f"{path}: {path.stat().st_size:,} bytes; a competition spec is a few kB (limit {MAX_SPEC_BYTES:,})")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    try:
        loader = _SpecLoader(text)
        try:
            node = loader.get_single_node()
            raw = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise SpecError(f"{path}{where}: not valid YAML ({getattr(exc, 'problem', None) or exc})") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping of keys at the top level")
    for key_node, value_node in node.value:
        if key_node.value in _VERBATIM_LISTS and isinstance(value_node, yaml.SequenceNode):
            raw[key_node.value] = [item.value if isinstance(item, yaml.ScalarNode) else raw[key_node.value][i]
                                   for i, item in enumerate(value_node.value)]
    return raw


MAX_EXTENDS_DEPTH = 3


def read_spec_keys(path: Path, within: tuple[Path, ...] = ()) -> dict:
    """The spec's keys, over those of the spec it `extends:` (a spec in the same folder, by name): a key
    written here replaces the base's whole value, so a variant states exactly what differs."""
    raw = _read_yaml(path)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str) or not re.fullmatch(r"[a-z0-9][a-z0-9-]*", base):
        raise SpecError(f"{path}: extends: name one spec beside it, e.g. `extends: digits` (got {base!r})")
    base_path = path.parent / f"{base}.yaml"
    if not base_path.is_file():
        known = ", ".join(sorted(p.stem for p in path.parent.glob("*.yaml")))
        raise SpecError(f"{path}: extends: no spec '{base}' beside it (there are: {known})")
    chain = (*within, path.resolve())
    if base_path.resolve() in chain or len(chain) > MAX_EXTENDS_DEPTH:
        raise SpecError(f"{path}: extends: '{base}' leads back to itself or goes more than {MAX_EXTENDS_DEPTH} "
                        "specs deep; extend a spec that extends nothing")
    return {**read_spec_keys(base_path, chain), **raw}


def load_spec(name: str) -> CompetitionSpec:
    """Load `competition/<name>.yaml` (or a path to a YAML file); any problem is a one-line SpecError."""
    path = spec_path(name)
    if not path.is_file():
        raise SpecError(f"{path}: no such competition spec; known competitions: {', '.join(available())}")
    raw = read_spec_keys(path)
    try:
        return CompetitionSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{path}: {describe_validation_error(exc)}") from None


def describe_validation_error(exc: ValidationError) -> str:
    """The most telling problem pydantic found, as 'key.path: what is wrong (got X)'."""

    def key_of(error) -> str:
        # Discriminated unions put the tag ('npy') into the location; it is not a key the user wrote.
        loc = [str(p) for p in error["loc"] if p not in LAYOUT_KINDS]
        return ".".join(loc) or "(top level)"

    errors = exc.errors()
    # A misspelt key is both unknown and (under its right name) missing: the unknown one says more.
    unknown = [e for e in errors if e["type"] == "extra_forbidden"]
    missing = [e for e in errors if e["type"] == "missing"]
    if unknown:
        hint = f"; '{key_of(missing[0])}' is missing" if missing else ""
        return f"unknown key '{key_of(unknown[0])}' (remove it or check its spelling{hint})"
    first = errors[0]
    if first["type"] == "missing":
        return f"missing required key '{key_of(first)}'"
    if first["type"] == "value_error" and not first["loc"]:  # a check of the whole spec names its own key
        return str(first["ctx"]["error"])
    got = first.get("input")
    got_text = "" if isinstance(got, (dict, list)) else f" (got {got!r})"
    more = f" [+{len(errors) - 1} more]" if len(errors) > 1 else ""
    message = first["msg"].removeprefix("Value error, ")
    return f"key '{key_of(first)}': {message}{got_text}{more}"
