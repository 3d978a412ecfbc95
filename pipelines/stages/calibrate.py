"""calibrate: cross-fitted scores of what is fitted on out-of-fold rows, and temperature scaling.

Whatever is fitted on the OOF rows (ensemble weights, temperatures) makes a CV computed on those same
rows optimistic. Cross-fitting keeps it honest: the rows are split into groups (their folds, or, when
they all come from one fold, seeded sub-splits of it); each group is scored with what was fitted on the
other groups. The figure a Kaggle competitor chooses final submissions by is the cross-fitted one.

Temperature scaling (for metrics scored on probabilities: log loss, ROC AUC) divides the log of each
class probability by one number T fitted to minimise the log loss, then renormalises: T > 1 softens
over-confident predictions, T < 1 sharpens timid ones. The ranking of classes in a row never changes,
so a label submission would be the same.

Decision rules (for metrics scored on one label that reward rare classes: macro-F1, balanced accuracy,
kappa): the predicted class is the argmax of the probabilities times one weight per class, the
weights fitted on OOF rows by coordinate ascent on the metric. Accuracy's best rule is the plain
argmax, so it gets none.

Thresholds (multi-label metrics scored on label sets: F-beta): a label is in an image's set when its
probability is above that label's threshold, fitted on OOF rows by coordinate ascent on the metric (F2
rewards recall, so its best thresholds sit well below 0.5, and rare labels want their own). Applied as
`at_thresholds`: each label's probabilities moved in logit space so that its threshold falls at 0.5.
With a multi-label metric, temperature scaling divides each label's logit by T.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from competition.metrics import Metric, f_beta_of_sets, kaggle_log_loss

# Temperature scaling as the exported script applies it (the script runs without kpipe, so it holds it).
from pipelines.recipe.kernel_inference import at_thresholds, logit, with_temperature  # noqa: F401  (re-exported)

CROSS_FIT_GROUPS = 5  # sub-splits when every OOF row comes from one fold
LOG_T_BOUNDS = (np.log(0.05), np.log(20.0))
ECE_BINS = 15


def groups_of(row_folds: np.ndarray, seed: int) -> np.ndarray:
    """A group per row: its fold when the rows span two folds or more, else a seeded sub-split."""
    if len(np.unique(row_folds)) >= 2:
        return row_folds
    rng = np.random.default_rng(seed)
    return rng.permutation(np.arange(len(row_folds)) % CROSS_FIT_GROUPS)


def cross_fit(groups: np.ndarray, fit: Callable[[np.ndarray], object], apply: Callable[[object, np.ndarray], np.ndarray],
              rows: int, columns: int) -> np.ndarray:
    """Predictions for every row, each group's made by what `fit(training rows)` learned on the other
    groups: `apply(fitted, rows)` returns the predictions of those rows."""
    out = np.zeros((rows, columns), dtype=np.float64)
    for group in np.unique(groups):
        held_out = np.flatnonzero(groups == group)
        out[held_out] = apply(fit(np.flatnonzero(groups != group)), held_out)
    return out


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] that minimises the log loss of `probs` with temperature T (a label matrix:
    the multi-label log loss, each label's logit divided by T)."""
    from scipy.optimize import minimize_scalar

    multi_label = labels.ndim == 2
    result = minimize_scalar(lambda log_t: kaggle_log_loss(with_temperature(probs, float(np.exp(log_t)), multi_label),
                                                           labels),
                             bounds=LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-4})
    return float(np.exp(result.x))


def _confidence_and_correct(probs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row its top probability and whether that class is right; with a label matrix, per (row, label)
    cell its probability and whether the label is there (the reliability of every label at once)."""
    if labels.ndim == 2:
        return probs.ravel(), labels.ravel().astype(bool)
    return probs.max(axis=1), probs.argmax(axis=1) == labels


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by the rows in each."""
    confidence, correct = _confidence_and_correct(probs, labels)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        rows = which == b
        if rows.any():
            total += rows.mean() * abs(correct[rows].mean() - confidence[rows].mean())
    return float(total)


def reliability(probs: np.ndarray, labels: np.ndarray, bins: int = 10) -> list[dict]:
    """Per confidence bin: mean confidence, accuracy and rows (the reliability diagram's points)."""
    confidence, correct = _confidence_and_correct(probs, labels)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1]), 0, bins - 1)
    return [{"confidence": float(confidence[which == b].mean()), "accuracy": float(correct[which == b].mean()),
             "rows": int((which == b).sum())} for b in range(bins) if (which == b).any()]


CLASS_WEIGHT_GRID = np.exp(np.linspace(-1.5, 1.5, 13))  # multiplicative steps tried per class and round
CLASS_WEIGHT_ROUNDS = 2


def reweighted(probs: np.ndarray, class_weights: np.ndarray) -> np.ndarray:
    """Probabilities times per-class weights, renormalised (their argmax is the decision)."""
    scaled = probs * class_weights
    return scaled / scaled.sum(axis=1, keepdims=True)


def fit_class_weights(probs: np.ndarray, labels: np.ndarray, metric: Metric) -> np.ndarray:
    """Per-class weights that maximise the metric (in its direction) of argmax(probs x weights): each
    class in turn tries each step of CLASS_WEIGHT_GRID and keeps the best, for CLASS_WEIGHT_ROUNDS rounds."""
    weights = np.ones(probs.shape[1])
    best = metric.signed(metric.score(probs, labels))
    for _ in range(CLASS_WEIGHT_ROUNDS):
        for c in range(probs.shape[1]):
            base = weights[c]
            for step in CLASS_WEIGHT_GRID:
                weights[c] = base * step
                score = metric.signed(metric.score(probs * weights, labels))
                if score > best + 1e-12:
                    best, base = score, weights[c]
            weights[c] = base
    return weights / weights.mean()


# The thresholds tried per label and round: even steps of a quarter in logit space (0.011 to 0.989), since the
# probabilities a threshold cuts are spread in logits: a grid even in probability is too coarse near 0 and 1.
THRESHOLD_GRID = 1 / (1 + np.exp(-np.linspace(-4.5, 4.5, 37)))


def selection_score(metric: Metric, probs: np.ndarray, labels: np.ndarray) -> float:
    """The metric as a choice between epochs or trials should see it. Label sets (F-beta): at per-label
    thresholds fitted on these rows, one round, since the submission will be cut at fitted thresholds:
    at a flat 0.5, F2 ranks an early, timid epoch or a trial with strong smoothing far below what it
    scores once its thresholds are set (Optuna trials of one epoch on the mosaics: about 0.2 at 0.5).
    Fitted on the rows it scores, so optimistic: it ranks, the ensemble's cross-fitted CV judges."""
    if metric.submission != "tags":
        return metric.score(probs, labels)
    return metric.score(at_thresholds(probs, fit_thresholds(probs, labels, metric, rounds=1)), labels)


def fit_thresholds(probs: np.ndarray, labels: np.ndarray, metric: Metric, rounds: int = 2) -> np.ndarray:
    """Per-label thresholds that maximise the F-beta metric of the label sets they cut: the best single
    threshold for all labels first, then each label in turn tries each of THRESHOLD_GRID with the others
    held, for `rounds` rounds. Ties keep the threshold nearest 0.5 (the flat default): a plateau of equal
    scores says nothing."""
    average = metric.name.removeprefix("f_beta_")

    logits = logit(probs)

    def score_at(thresholds: np.ndarray) -> float:
        # label_sets(at_thresholds(probs, thresholds)) without the sigmoid: a label is in when its logit is
        # above its threshold's; scikit-learn's figure, computed in numpy (metrics.py)
        shifted = logits - logit(thresholds)
        chosen = shifted > 0
        if not metric.allow_empty:
            empty = ~chosen.any(axis=1)
            chosen[empty, shifted[empty].argmax(axis=1)] = True
        return f_beta_of_sets(chosen, labels, metric.beta, average)

    grid = sorted(THRESHOLD_GRID, key=lambda t: abs(t - 0.5))
    # First one threshold for every label (a start that does not depend on how timid the model is), then each
    # label's own from there.
    best, _, start = max((score_at(np.full(probs.shape[1], t)), -abs(t - 0.5), t) for t in grid)  # 0.5 is in it
    thresholds = np.full(probs.shape[1], start)
    for _ in range(rounds):
        for c in range(probs.shape[1]):
            kept = thresholds[c]
            for value in grid:
                thresholds[c] = value
                score = score_at(thresholds)
                if score > best + 1e-12:
                    best, kept = score, value
            thresholds[c] = kept
    return thresholds
