"""ensemble: weight the models by their out-of-fold predictions, then apply the weights to the test set.

Where the metric scores probabilities (log loss, AUC), each model and then the blend get a temperature
(pipelines/stages/calibrate.py), fitted on OOF rows and applied to the test set; where it scores one label but
rewards rare classes (macro-F1, balanced accuracy, kappa), the blend gets per-class decision weights; where it
scores label sets (multi-label F-beta), per-label thresholds. Besides the in-sample CV, the
report holds the cross-fitted one: weights and temperatures fitted on the other folds' rows (or
sub-splits), scored on the held-out ones; that is the CV logged and shown first.

Weights are found on OOF rows only (the held-out rows of the trained folds), so the ensemble's CV score
is as honest as each model's. Methods, by the name a profile gives (`ensemble:`), each one registered
function here:
    hill_climb  Caruana et al. (2004): start from the best model, repeatedly add (with replacement) the
                model that most improves the OOF score — the competition's metric, in its direction (ties:
                lower log loss); weights = how often chosen.
    mean        equal weights.
    best        the single best model.
Each model's test probabilities are the mean over its fold models. Models trained on different folds
are weighted on the out-of-fold rows they share (`shared_rows`), and the report says so.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from competition.errors import UserError
from competition.metrics import Metric, accuracy, kaggle_log_loss
from competition.paths import competition_root
from competition.spec import CompetitionSpec
from pipelines.recipe.registry import Registry
from pipelines.stages.artifacts import atomic_output, build_once, output_key, read_manifest
from pipelines.stages.calibrate import (at_thresholds, cross_fit, expected_calibration_error, fit_class_weights,
                                        fit_temperature, fit_thresholds, groups_of, reliability, reweighted,
                                        with_temperature)
from pipelines.stages.lineage import LINEAGE_VERSION, combine
from pipelines.stages.predict import FoldOutput, file_digest

HILL_CLIMB_ROUNDS = 25


@dataclass
class ModelPredictions:
    name: str
    oof_index: np.ndarray  # row numbers into the training set, sorted
    oof_probs: np.ndarray  # aligned with oof_index
    test_probs: np.ndarray  # mean over fold models


def gather(name: str, fold_outputs: list[FoldOutput]) -> ModelPredictions:
    indices, probs = zip(*(f.oof() for f in fold_outputs))
    index = np.concatenate(indices)
    order = np.argsort(index)
    return ModelPredictions(name, index[order], np.concatenate(probs)[order],
                            np.mean([f.test_probs() for f in fold_outputs], axis=0))


# name -> f(oof probabilities of each model, labels, metric) -> weights summing to 1
METHODS: Registry[Callable[[list[np.ndarray], np.ndarray, Metric], np.ndarray]] = Registry("ensemble method")


def _score(probs: np.ndarray, labels: np.ndarray, metric: Metric) -> tuple[float, float]:
    """Larger is better: the metric (signed by its direction), then the negated log loss."""
    return metric.signed(metric.score(probs, labels)), -kaggle_log_loss(probs, labels)


@METHODS.register("hill_climb")
def hill_climb(oof: list[np.ndarray], labels: np.ndarray, metric: Metric, rounds: int = HILL_CLIMB_ROUNDS) -> np.ndarray:
    counts = np.zeros(len(oof))
    best_single = max(range(len(oof)), key=lambda i: _score(oof[i], labels, metric))
    counts[best_single] = 1
    blend = oof[best_single].copy()
    current = _score(blend, labels, metric)
    for _ in range(rounds):
        total = counts.sum()
        candidates = [(_score((blend * total + p) / (total + 1), labels, metric), i) for i, p in enumerate(oof)]
        best_score, best_i = max(candidates)
        if best_score <= current:
            break
        counts[best_i] += 1
        blend = (blend * total + oof[best_i]) / (total + 1)
        current = best_score
    return counts / counts.sum()


@METHODS.register("mean")
def equal_weights(oof: list[np.ndarray], labels: np.ndarray, metric: Metric) -> np.ndarray:
    return np.full(len(oof), 1 / len(oof))


@METHODS.register("best")
def best_single(oof: list[np.ndarray], labels: np.ndarray, metric: Metric) -> np.ndarray:
    weights = np.zeros(len(oof))
    weights[max(range(len(oof)), key=lambda i: _score(oof[i], labels, metric))] = 1
    return weights


def shared_rows(models: list[ModelPredictions]) -> tuple[np.ndarray, list[np.ndarray], str]:
    """The out-of-fold rows every model holds (models may have trained on different folds), each
    model's probabilities on them, and a note saying what was left out ('' when nothing was)."""
    index = models[0].oof_index
    for m in models[1:]:
        index = np.intersect1d(index, m.oof_index)
    if len(index) == 0:
        raise UserError("ensemble: the models share no out-of-fold rows (they were trained on disjoint folds); "
                        "train them on at least one common fold")
    oof = [m.oof_probs[np.searchsorted(m.oof_index, index)] for m in models]
    fewer = [f"{m.name} {len(m.oof_index):,}" for m in models if len(m.oof_index) > len(index)]
    note = f"weights fitted on the {len(index):,} rows all models hold out ({', '.join(fewer)} had more)" if fewer else ""
    if note:
        print(f"ensemble: {note}")
    return index, oof, note


def find_weights(method: str, oof: list[np.ndarray], labels: np.ndarray, metric: Metric) -> np.ndarray:
    return equal_weights(oof, labels, metric) if len(oof) == 1 else METHODS[method](oof, labels, metric)


@dataclass(frozen=True)
class EnsembleOutput:
    """Where an ensemble is written, and what its manifest records: the config and inputs it is keyed by,
    and `head`, what the competition is (the start of the lineage that `make predict` replays)."""

    final: Path
    config: dict
    inputs: dict[str, str]
    head: dict | None = None


def ensemble(spec: CompetitionSpec, method: str, per_model: dict[str, list[FoldOutput]], train_labels: np.ndarray,
             row_folds: np.ndarray, sources: Callable[[], dict[str, dict]] | None = None) -> tuple[Path, dict]:
    """Combine; returns (output folder, report). Cached by the digests of every fold's predictions.
    `row_folds`: each training row's fold (the groups of the cross-fitted CV); `sources`: gives each model's
    lineage.member_sources for the manifest's lineage, called only when the ensemble is built (it reads
    every fold's checkpoint)."""
    inputs = {f"{name}/{f.folder.name}": f.digest for name, folds in per_model.items() for f in folds}
    config = {"method": method, "metric": spec.metric.model_dump(), "cross_fit": 3, "seed": spec.folds.seed,
              "lineage": LINEAGE_VERSION}
    final = competition_root(spec.name) / "ensemble" / output_key(config, inputs)
    head = {"competition": spec.name, "classes": list(spec.classes), "image": spec.image.key_dump(),
            "submission": spec.metric.bind().submission}
    if spec.task == "multi_label":  # a sigmoid per label (single-label lineages stay as they were)
        head["multi_label"] = True
    output = EnsembleOutput(final, config, inputs, head)
    return build_once(final, f"the ensemble of {spec.name}",
                      lambda: _write_ensemble(output, spec.metric.bind(), per_model, train_labels, row_folds,
                                              sources() if sources else None),
                      lambda: (final, read_manifest(final)["report"]))


def _calibrated(probs: np.ndarray, labels: np.ndarray, groups: np.ndarray) -> tuple[float, np.ndarray]:
    """(temperature fitted on every row, the rows calibrated cross-fitted: each group by the other groups' T)."""
    def fit(rows):
        return fit_temperature(probs[rows], labels[rows])

    multi_label = labels.ndim == 2
    return fit_temperature(probs, labels), cross_fit(groups, fit,
                                                     lambda t, rows: with_temperature(probs[rows], t, multi_label),
                                                     *probs.shape)


def _write_ensemble(output: EnsembleOutput, metric: Metric, per_model: dict[str, list[FoldOutput]],
                    train_labels: np.ndarray, row_folds: np.ndarray, sources: dict[str, dict] | None = None) -> tuple[Path, dict]:
    """The ensemble's folder; its manifest's lineage is the output's `head` plus each member's fitted
    weight and temperature and its `sources` entry."""
    config = output.config
    models = [gather(name, folds) for name, folds in per_model.items()]
    index, oof, note = shared_rows(models)
    labels = train_labels[index]
    groups = groups_of(row_folds[index], config["seed"])
    method = config["method"]
    raw_weights = find_weights(method, oof, labels, metric)
    raw_blend = sum(w * p for w, p in zip(raw_weights, oof))
    calibrating = metric.submission == "probabilities"  # log loss, AUC: the probabilities themselves are scored
    temperatures = {}
    if calibrating:  # each model's temperature; the weights are then fitted on its cross-fitted calibrated rows
        for i, m in enumerate(models):
            temperatures[m.name], oof[i] = _calibrated(oof[i], labels, groups)
    weights = find_weights(method, oof, labels, metric)
    oof_blend = sum(w * p for w, p in zip(weights, oof))
    multi_label = metric.multi_label
    if calibrating:
        temperatures["ensemble"] = fit_temperature(oof_blend, labels)
        oof_blend = with_temperature(oof_blend, temperatures["ensemble"], multi_label)
    # Macro-F1, balanced accuracy, kappa: a decision rule (per-class weights on the probabilities).
    # Multi-label F-beta: per-label thresholds, the decision rule of label sets.
    thresholding = metric.submission == "tags"
    deciding = (metric.submission == "label" and metric.name != "accuracy") or thresholding
    fit_rule, apply_rule = (fit_thresholds, at_thresholds) if thresholding else (fit_class_weights, reweighted)
    fitted_rule = fit_rule(oof_blend, labels, metric) if deciding else None  # class weights or thresholds

    def fit_on(rows: np.ndarray, with_rule: bool = deciding):  # everything fitted on OOF rows, on `rows` only
        fitted = find_weights(method, [p[rows] for p in oof], labels[rows], metric)
        blend = sum(w * p[rows] for w, p in zip(fitted, oof))
        temperature = fit_temperature(blend, labels[rows]) if calibrating else 1.0
        if calibrating:
            blend = with_temperature(blend, temperature, multi_label)
        rule = fit_rule(blend, labels[rows], metric) if with_rule else None
        return fitted, temperature, rule

    def apply(fitted, rows: np.ndarray) -> np.ndarray:
        blend = sum(w * p[rows] for w, p in zip(fitted[0], oof))
        blend = with_temperature(blend, fitted[1], multi_label) if calibrating else blend
        return apply_rule(blend, fitted[2]) if fitted[2] is not None else blend

    cross_fitted = cross_fit(groups, fit_on, apply, *oof_blend.shape)
    rule = None
    if deciding:  # kept only when it holds up cross-fitted: on few rows of the rare classes it overfits
        without_rule = cross_fit(groups, lambda rows: fit_on(rows, with_rule=False), apply, *oof_blend.shape)
        gain = metric.signed(metric.score(cross_fitted, labels)) - metric.signed(metric.score(without_rule, labels))
        rule = {"thresholds" if thresholding else "class_weights": [round(float(w), 4) for w in fitted_rule],
                "applied": gain > 0, "cross_fitted_with": metric.score(cross_fitted, labels),
                "cross_fitted_without": metric.score(without_rule, labels), "cross_fitted_gain": gain}
        if gain > 0:
            oof_blend = apply_rule(oof_blend, fitted_rule)
        else:
            cross_fitted = without_rule
    # Everything the test set's blend needs, in the form `make predict` and `make export` replay.
    lineage = {**(output.head or {}), "method": method, "members": [
        {"name": m.name, "weight": float(w), "temperature": temperatures.get(m.name), **(sources or {}).get(m.name, {})}
        for m, w in zip(models, weights)],
        "ensemble_temperature": temperatures.get("ensemble"),
        "class_weights": [float(w) for w in fitted_rule] if rule is not None and rule["applied"] and not thresholding
        else None}
    if thresholding:  # the labels' thresholds, where they held up cross-fitted (else the flat 0.5)
        lineage["thresholds"] = [float(t) for t in fitted_rule] if rule["applied"] else None
    test_blend = combine(lineage, [m.test_probs for m in models])

    def scores(probs: np.ndarray) -> dict:
        return {"oof_score": metric.score(probs, labels), "oof_accuracy": accuracy(probs, labels),
                "oof_log_loss": kaggle_log_loss(probs, labels)}

    report = {
        "method": method,
        "metric": metric.label,
        "greater_is_better": metric.greater_is_better,
        "oof_rows": int(len(index)),
        "shared_note": note,
        "models": [{"name": m.name, "weight": round(float(w), 4), **scores(p)} for m, p, w in zip(models, oof, weights)],
        "ensemble": scores(oof_blend),
        # Weights (and temperatures) fitted on the other groups' rows: the CV to choose submissions by.
        "cross_fitted": {**scores(cross_fitted), "groups": int(len(np.unique(groups)))},
    }
    if rule is not None:
        report["decision_rule"] = rule
    if calibrating:
        report["calibration"] = {
            "temperatures": {k: round(v, 4) for k, v in temperatures.items()},
            "log_loss_before": kaggle_log_loss(raw_blend, labels), "log_loss_after": kaggle_log_loss(cross_fitted, labels),
            "ece_before": expected_calibration_error(raw_blend, labels),
            "ece_after": expected_calibration_error(cross_fitted, labels),
            "reliability_before": reliability(raw_blend, labels), "reliability_after": reliability(cross_fitted, labels)}
    summary: dict = {"report": report, "lineage": lineage}
    with atomic_output(output.final, "ensemble", config, output.inputs, extra=summary) as staging:
        np.save(staging / "oof_probs.npy", oof_blend.astype(np.float32))
        np.save(staging / "oof_index.npy", index)
        np.save(staging / "test_probs.npy", test_blend.astype(np.float32))
        summary["digest"] = file_digest(staging / "test_probs.npy")
    return output.final, report
