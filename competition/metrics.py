"""Kaggle classification metrics by name: how each scores class probabilities, which way is better, and
what a submission for it holds. One table for the pipeline (CV, early stopping, ensembling, tuning) and
the local host (leaderboards), so the two can never disagree.

A spec names its metric as `metric: f1_macro` or, for metrics that take arguments, as a mapping
`metric: {name: map_at_k, k: 3}`. Every metric here reads class probabilities (rows summing to 1, one
column per class, in the spec's class order) and integer labels; those scored on hard labels take the
most probable class. scikit-learn computes each one except MAP@k, which it lacks.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import numpy as np

# What a submission row holds for a metric: one label; k labels separated by spaces, best first; or one
# probability column per class (one column, for the positive class, when there are two classes).
Submission = Literal["label", "ranked_labels", "probabilities"]
LOG_LOSS_EPSILON = 1e-15  # Kaggle clips probabilities to [eps, 1 - eps] before taking logs


@dataclass(frozen=True)
class MetricKind:
    """One metric family: its scorer (given the arguments), direction and submission format."""

    greater_is_better: bool
    submission: Submission
    scorer: Callable[..., Callable[[np.ndarray, np.ndarray], float]]  # (**args) -> f(probs, labels)
    arguments: tuple[str, ...] = ()  # names the mapping form may give, e.g. ("k",)


def _sklearn(name: str) -> Callable:
    # Imported when a score is computed: loading a spec needs only the table, not scikit-learn.
    from sklearn import metrics

    return getattr(metrics, name)


def _on_labels(function: str, **kwargs) -> Callable[[np.ndarray, np.ndarray], float]:
    return lambda probs, labels: float(_sklearn(function)(labels, probs.argmax(1), **kwargs))


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose most probable class is the label (for people: every report shows it)."""
    return float((probs.argmax(1) == labels).mean())


def kaggle_log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class log loss as Kaggle scores it: clipped to [eps, 1 - eps], rows rescaled to sum to 1.
    The one log loss of the project: the `log_loss` metric, every validation loss in a fold's history and
    manifest, the ensemble's tie-break and report, and calibration."""
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
}


def _normalised(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum() or c == "@")


def from_kaggle_name(name: str) -> tuple[str, int | None] | None:
    """(our metric, its k where the name says it: `MAP@5`) for a name kaggle.com gives a competition's
    metric; None when it names none of ours."""
    wanted = _normalised(name)
    for ours, names in KAGGLE_NAMES.items():
        for kaggle in names:
            pattern = _normalised(kaggle)
            if wanted == pattern:
                return ours, None
            if "@k" in pattern and wanted.startswith(pattern.split("@k")[0] + "@") and wanted.split("@")[-1].isdigit():
                return ours, int(wanted.split("@")[-1])
    return None


@dataclass(frozen=True)
class Metric:
    """A competition's metric, arguments bound: `score(probs, labels)`, its direction, its submission."""

    name: str
    k: int | None
    greater_is_better: bool
    submission: Submission
    score: Callable[[np.ndarray, np.ndarray], float]

    @property
    def label(self) -> str:
        """The name as people read it: `map_at_k` with k=3 is `map@3`."""
        return self.name.replace("_at_k", f"@{self.k}").replace("top_k", f"top_{self.k}") if self.k else self.name

    @property
    def kaggle_name(self) -> str:
        """The name kaggle.com gives it in a competition's `evaluationMetric`."""
        return KAGGLE_NAMES[self.name][0]

    def better(self, a: float, b: float) -> bool:
        """Whether score `a` beats score `b`."""
        return a > b if self.greater_is_better else a < b

    def signed(self, value: float) -> float:
        """The score with its sign set so that larger is better (for max() and sorting)."""
        return value if self.greater_is_better else -value

    @property
    def worst(self) -> float:
        return -np.inf if self.greater_is_better else np.inf


def parse(value) -> tuple[str, int | None]:
    """(name, k) from `f1_macro` or `{name: map_at_k, k: 3}`; ValueError with the fix when not one."""
    if isinstance(value, str):
        name, args = value, {}
    elif isinstance(value, dict) and isinstance(value.get("name"), str):
        name, args = value["name"], {key: v for key, v in value.items() if key != "name"}
    else:
        raise ValueError("give a metric name (e.g. accuracy) or a mapping such as {name: map_at_k, k: 3}")
    if name not in KINDS:
        raise ValueError(f"unknown metric '{name}'; known: {', '.join(KINDS)}")
    kind = KINDS[name]
    unknown = sorted(set(args) - set(kind.arguments))
    if unknown:
        takes = f"takes only {', '.join(kind.arguments)}" if kind.arguments else "takes no arguments"
        raise ValueError(f"metric '{name}' {takes}, not {', '.join(unknown)}")
    if "k" not in kind.arguments:
        return name, None
    if "k" not in args:  # MAP@3 and MAP@5 are both common: assuming one would score the wrong competition
        raise ValueError(f"metric '{name}' needs k, how many labels a row may list; write it as "
                         f"{{name: {name}, k: 3}}")
    k = args["k"]
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"metric '{name}': k must be a whole number of at least 1, not {k!r}")
    return name, k


def metric(name: str, k: int | None = None) -> Metric:
    kind = KINDS[name]
    score = kind.scorer(k) if "k" in kind.arguments else kind.scorer()
    return Metric(name, k, kind.greater_is_better, kind.submission, score)
