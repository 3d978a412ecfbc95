"""Kaggle classification metrics by name: how each scores class probabilities, which way is better, and
what a submission for it holds. One table for the pipeline (CV, early stopping, ensembling, tuning) and
the local host (leaderboards), so the two can never disagree.

A spec names its metric as `metric: f1_macro` or, for metrics that take arguments, as a mapping
`metric: {name: map_at_k, k: 3}`. scikit-learn computes each one except MAP@k, which it lacks.

Single-label metrics (one class per image) read class probabilities (rows summing to 1, one column per
class, in the spec's class order) and integer labels; those scored on hard labels take the most probable
class. Multi-label metrics (a set of labels per image: `task: multi_label`) read one independent
probability per label and a 0/1 label matrix (N×labels); those scored on label sets take the labels whose
probability is above 0.5 (the ensemble shifts each label's probabilities so that its fitted threshold
falls there), or the most probable one where that leaves a row empty and the competition wants a label.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

# What a submission row holds for a metric: one label; k labels separated by spaces, best first; a set
# of labels separated by spaces (multi-label); or one probability column per class or label (one column,
# for the positive class, when a single-label competition has two classes).
Submission = Literal["label", "ranked_labels", "tags", "probabilities"]
Task = Literal["single_label", "multi_label"]
DECISION_THRESHOLD = 0.5  # a label is in a multi-label row's set when its (shifted) probability is above it
LOG_LOSS_EPSILON = 1e-15  # Kaggle clips probabilities to [eps, 1 - eps] before taking logs


@dataclass(frozen=True)
class MetricKind:
    """One metric family: its scorer (given the arguments), direction and submission format."""

    greater_is_better: bool
    submission: Submission
    scorer: Callable[..., Callable[[np.ndarray, np.ndarray], float]]  # (**args) -> f(probs, labels)
    arguments: tuple[str, ...] = ()  # names the mapping form may give, e.g. ("k",)
    task: Task = "single_label"


def _sklearn(name: str) -> Callable:
    # Imported when a score is computed: loading a spec needs only the table, not scikit-learn.
    from sklearn import metrics

    return getattr(metrics, name)


def _on_labels(function: str, **kwargs) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda probs, labels: float(_sklearn(function)(labels, probs.argmax(1), **kwargs))


def label_sets(probs: np.ndarray, allow_empty: bool = False) -> np.ndarray:
    """The 0/1 label matrix a multi-label submission would hold: each label above DECISION_THRESHOLD;
    a row left empty takes its most probable label unless the competition allows empty rows."""
    chosen = probs > DECISION_THRESHOLD
    if not allow_empty:
        empty = ~chosen.any(axis=1)
        chosen[empty, probs[empty].argmax(axis=1)] = True
    return chosen.astype(np.int64)


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label (for people: every report shows it). With a
    label matrix (multi-label): the share of rows whose label set is exactly right (subset accuracy)."""
    if labels.ndim == 2:
        return float((label_sets(probs) == labels).all(axis=1).mean())
    return float((probs.argmax(1) == labels).mean())


def multilabel_log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean column-wise binary log loss (every cell of the N×labels matrix weighs the same), clipped as
    Kaggle clips."""
    # float64 first: in float32 1 - 1e-15 rounds to 1, and a certain label would cost infinitely much
    clipped = np.clip(np.asarray(probs, dtype=np.float64), LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON)
    return float(-(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)).mean())


def kaggle_log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class log loss as Kaggle scores it: clipped to [eps, 1 - eps], rows rescaled to sum to 1.
    The one log loss of the project: the `log_loss` metric, every validation loss in a fold's history and
    manifest, the ensemble's tie-break and report, and calibration. With a label matrix (multi-label):
    `multilabel_log_loss`."""
    if labels.ndim == 2:
        return multilabel_log_loss(probs, labels)
    clipped = np.clip(probs, LOG_LOSS_EPSILON, 1 - LOG_LOSS_EPSILON)
    clipped = clipped / clipped.sum(1, keepdims=True)  # Kaggle rescales each row to sum to 1
    return float(-np.log(clipped[np.arange(len(labels)), labels]).mean())


def _roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    roc_auc_score = _sklearn("roc_auc_score")
    if probs.shape[1] == 2:
        return float(roc_auc_score(labels, probs[:, 1]))
    return float(roc_auc_score(labels, probs, multi_class="ovr", average="macro", labels=np.arange(probs.shape[1])))


def _top_k(k: int) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda probs, labels: float(_sklearn("top_k_accuracy_score")(labels, probs, k=k,
                                                                        labels=np.arange(probs.shape[1])))


def ranked(probs: np.ndarray, k: int) -> np.ndarray:
    """The k most probable classes of each row, best first (ties: the lower class number)."""
    return np.argsort(-probs, axis=1, kind="stable")[:, :k]


def map_at_k(predictions, labels, k: int) -> float:
    """Mean average precision at k with one true label per row, as Kaggle's evaluation scores it: a row
    scores 1/i when its true label is first found at the i-th of its (at most k) predictions, else 0.
    Positions count every prediction, repeats included ([a, a, b] finds b at the third)."""
    total = 0.0
    for row, label in zip(predictions, labels):
        for position, prediction in enumerate(list(row)[:k], start=1):
            if prediction == label:
                total += 1.0 / position
                break
    return total / len(labels)


def _map_at_k(k: int) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda probs, labels: map_at_k(ranked(probs, k), labels, k)


def _f_beta(average: str) -> Callable[..., Callable[[np.ndarray, np.ndarray], float]]:
    def scorer(beta: float, allow_empty: bool = False) -> Callable[[np.ndarray, np.ndarray], float]:
        return lambda probs, labels: float(_sklearn("fbeta_score")(labels, label_sets(probs, allow_empty), beta=beta,
                                                                    average=average, zero_division=0))
    return scorer


def f_beta_of_sets(chosen: np.ndarray, labels: np.ndarray, beta: float, average: str) -> float:
    """scikit-learn's fbeta_score(labels, chosen, beta=beta, average=average, zero_division=0) for 0/1
    matrices, in numpy: a hundred times faster, for searches that score thousands of candidate label sets
    (thresholds). tests/test_metrics.py holds it to scikit-learn's figures."""
    chosen, labels = chosen.astype(bool), labels.astype(bool)
    axis = {"samples": 1, "macro": 0, "micro": None}[average]
    tp = (chosen & labels).sum(axis=axis)
    fp = (chosen & ~labels).sum(axis=axis)
    fn = (~chosen & labels).sum(axis=axis)
    weight = beta * beta
    denominator = (1 + weight) * tp + weight * fn + fp
    scores = np.divide((1 + weight) * tp, denominator, out=np.zeros(np.shape(tp), dtype=np.float64),
                       where=np.asarray(denominator) > 0)
    return float(np.mean(scores))


def mean_column_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC of each label's column, averaged; a label with only one value among the rows scored has
    no AUC and is left out, as Kaggle's scoring of such competitions leaves it out."""
    roc_auc_score = _sklearn("roc_auc_score")
    scored = [c for c in range(labels.shape[1]) if 0 < labels[:, c].sum() < len(labels)]
    if not scored:
        return 0.5
    return float(np.mean([roc_auc_score(labels[:, c], probs[:, c]) for c in scored]))


KINDS: dict[str, MetricKind] = {
    "accuracy": MetricKind(True, "label", lambda: _on_labels("accuracy_score")),
    "balanced_accuracy": MetricKind(True, "label", lambda: _on_labels("balanced_accuracy_score")),
    "f1_macro": MetricKind(True, "label", lambda: _on_labels("f1_score", average="macro", zero_division=0)),
    "f1_micro": MetricKind(True, "label", lambda: _on_labels("f1_score", average="micro", zero_division=0)),
    "f1_weighted": MetricKind(True, "label", lambda: _on_labels("f1_score", average="weighted", zero_division=0)),
    "quadratic_weighted_kappa": MetricKind(True, "label", lambda: _on_labels("cohen_kappa_score", weights="quadratic")),
    "log_loss": MetricKind(False, "probabilities", lambda: kaggle_log_loss),
    "roc_auc": MetricKind(True, "probabilities", lambda: _roc_auc),
    "top_k_accuracy": MetricKind(True, "ranked_labels", _top_k, ("k",)),
    "map_at_k": MetricKind(True, "ranked_labels", _map_at_k, ("k",)),
    # Multi-label: F-beta over each image's label set, averaged per image (planet: F2), over every
    # (image, label) cell (micro) or per label (macro); ROC AUC per label column; binary log loss per cell.
    "f_beta_samples": MetricKind(True, "tags", _f_beta("samples"), ("beta", "allow_empty"), "multi_label"),
    "f_beta_micro": MetricKind(True, "tags", _f_beta("micro"), ("beta", "allow_empty"), "multi_label"),
    "f_beta_macro": MetricKind(True, "tags", _f_beta("macro"), ("beta", "allow_empty"), "multi_label"),
    "mean_column_auc": MetricKind(True, "probabilities", lambda: mean_column_auc, (), "multi_label"),
    "multilabel_log_loss": MetricKind(False, "probabilities", lambda: multilabel_log_loss, (), "multi_label"),
}


# How kaggle.com names each metric in a competition's `evaluationMetric` (the first name: what the local
# host reports), then other names it has used for the same scoring. `make init` maps a competition's
# name to ours through this table; `MAP@{K}` is written with the braces, the k being in the rules.
KAGGLE_NAMES: dict[str, tuple[str, ...]] = {
    "accuracy": ("Categorization Accuracy", "Accuracy", "Classification Accuracy"),
    "balanced_accuracy": ("Balanced Accuracy",),
    "f1_macro": ("Macro F1 Score", "Macro-averaged F1-Score", "F1 Score Macro"),
    "f1_micro": ("Micro-averaged F1-Score", "Micro F1 Score", "F1 Score Micro"),
    "f1_weighted": ("Weighted F1 Score", "Weighted-averaged F1-Score"),
    "quadratic_weighted_kappa": ("Quadratic Weighted Kappa", "QWK", "Cohen Kappa Quadratic"),
    "log_loss": ("Log Loss", "Multi Class Log Loss", "Multiclass Loss", "Binary Log Loss", "LogLoss"),
    "roc_auc": ("Area Under Receiver Operating Characteristic Curve", "AUC", "ROC AUC", "Area Under ROC Curve"),
    "top_k_accuracy": ("Top K Categorization Accuracy", "Top-K Accuracy"),
    "map_at_k": ("MAP@{K}", "Mean Average Precision @ K", "MAP@K"),
    # `{B}`: F-beta's beta, written in the name (planet: "Mean F2 Score"). A multi-label competition scored by
    # "Micro-averaged F1-Score" or "Macro F1 Score" is told from a single-label one by its data (make init).
    "f_beta_samples": ("Mean F{B} Score", "F{B} Score", "Mean F{B}"),
    "f_beta_micro": ("Micro-averaged F{B}-Score", "Micro F{B} Score"),
    "f_beta_macro": ("Macro F{B} Score", "Macro-averaged F{B}-Score"),
    "mean_column_auc": ("Mean Columnwise Area Under Receiver Operating Characteristic Curve", "Mean Column-wise AUC",
                        "Mean Columnwise AUC"),
    "multilabel_log_loss": ("Mean Columnwise Log Loss", "Multi-label Log Loss", "Mean Column-wise Log Loss"),
}


def _normalised(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum() or c == "@")


def from_kaggle_name(name: str) -> tuple[str, float | None] | None:
    """(our metric, the number the name holds: MAP@5's k, "Mean F2 Score"'s beta) for a name kaggle.com
    gives a competition's metric; None when it names none of ours."""
    wanted = _normalised(name)
    for ours, names in KAGGLE_NAMES.items():
        for kaggle in names:
            pattern = _normalised(kaggle)
            if wanted == pattern:
                return ours, None
            if "@k" in pattern and wanted.startswith(pattern.split("@k")[0] + "@") and wanted.split("@")[-1].isdigit():
                return ours, int(wanted.split("@")[-1])
            if "{B}" in kaggle:
                before, after = (_normalised(part) for part in kaggle.split("{B}"))
                found = re.fullmatch(re.escape(before) + r"(\d+)" + re.escape(after), wanted)
                if found:
                    return ours, float(found.group(1))
    return None


@dataclass(frozen=True)
class Metric:
    """A competition's metric, arguments bound: `score(probs, labels)`, its direction, its submission."""

    name: str
    k: int | None
    greater_is_better: bool
    submission: Submission
    score: Callable[[np.ndarray, np.ndarray], float]
    beta: float | None = None  # F-beta's weight of recall against precision
    allow_empty: bool = False  # a multi-label submission may leave a row's label set empty
    task: Task = "single_label"

    @property
    def multi_label(self) -> bool:
        return self.task == "multi_label"

    @property
    def label(self) -> str:
        """The name as people read it: `map_at_k` with k=3 is `map@3`, `f_beta_samples` with beta=2 `f2_samples`."""
        if self.beta is not None:
            return self.name.replace("f_beta", f"f{self.beta:g}")
        return self.name.replace("_at_k", f"@{self.k}").replace("top_k", f"top_{self.k}") if self.k else self.name

    @property
    def kaggle_name(self) -> str:
        """The name kaggle.com gives it in a competition's `evaluationMetric`."""
        return KAGGLE_NAMES[self.name][0].replace("{B}", f"{self.beta:g}" if self.beta is not None else "")

    def better(self, a: float, b: float) -> bool:
        """Whether score `a` beats score `b`."""
        return a > b if self.greater_is_better else a < b

    def signed(self, value: float) -> float:
        """The score with its sign set so that larger is better (for max() and sorting)."""
        return value if self.greater_is_better else -value

    @property
    def worst(self) -> float:
        return -np.inf if self.greater_is_better else np.inf


def parse(value) -> tuple[str, dict]:
    """(name, arguments) from `f1_macro`, `{name: map_at_k, k: 3}` or `{name: f_beta_samples, beta: 2}`;
    ValueError with the fix when not one. The arguments hold only what was given (and is required)."""
    if isinstance(value, str):
        name, args = value, {}
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        name, args = value["name"], {key: v for key, v in value.items() if key != "name" and v is not None}
    else:
        raise ValueError("give a metric name (e.g. accuracy) or a mapping such as {name: map_at_k, k: 3}")
    if name not in KINDS:
        raise ValueError(f"unknown metric '{name}'; known: {', '.join(KINDS)}")
    kind = KINDS[name]
    unknown = sorted(set(args) - set(kind.arguments))
    if unknown:
        takes = f"takes only {', '.join(kind.arguments)}" if kind.arguments else "takes no arguments"
        raise ValueError(f"metric '{name}' {takes}, not {', '.join(unknown)}")
    if "k" in kind.arguments:
        if "k" not in args:  # MAP@3 and MAP@5 are both common: assuming one would score the wrong competition
            raise ValueError(f"metric '{name}' needs k, how many labels a row may list; write it as "
                             f"{{name: {name}, k: 3}}")
        k = args["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"metric '{name}': k must be a whole number of at least 1, not {k!r}")
    if "beta" in kind.arguments:
        if "beta" not in args:  # F1 and F2 are both common (planet: F2): assuming one would score the wrong way
            raise ValueError(f"metric '{name}' needs beta, the weight of recall against precision; write it as "
                             f"{{name: {name}, beta: 2}}")
        beta = args["beta"]
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0 < beta <= 100:
            raise ValueError(f"metric '{name}': beta must be a number above 0 (1: F1, 2: F2), not {beta!r}")
        args["beta"] = float(beta)
    if "allow_empty" in args and not isinstance(args["allow_empty"], bool):
        raise ValueError(f"metric '{name}': allow_empty is true or false, not {args['allow_empty']!r}")
    return name, args


def metric(name: str, k: int | None = None, beta: float | None = None, allow_empty: bool | None = None) -> Metric:
    kind = KINDS[name]
    given = {"k": k, "beta": beta, "allow_empty": allow_empty}
    args = {key: value for key, value in given.items() if key in kind.arguments and value is not None}
    return Metric(name, k, kind.greater_is_better, kind.submission, kind.scorer(**args), beta=beta,
                  allow_empty=bool(allow_empty), task=kind.task)


def bound(value) -> Metric:
    """The metric a spec or competition.json writes (`f1_macro`, `{name: map_at_k, k: 3}`), bound."""
    name, args = parse(value)
    return metric(name, **args)
