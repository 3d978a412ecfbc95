"""ensemble: weight the models by their out-of-fold predictions, then apply the weights to the test set.

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
from competition.metrics import Metric
from competition.paths import competition_root
from competition.spec import CompetitionSpec
from pipelines.artifacts import atomic_output, build_once, output_key, read_manifest
from pipelines.metrics import accuracy, log_loss
from pipelines.predict import FoldOutput, file_digest
from pipelines.registry import Registry

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
    return metric.signed(metric.score(probs, labels)), -log_loss(probs, labels)


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


def ensemble(spec: CompetitionSpec, method: str, per_model: dict[str, list[FoldOutput]],
             train_labels: np.ndarray) -> tuple[Path, dict]:
    """Combine; returns (output folder, report). Cached by the digests of every fold's predictions."""
    inputs = {f"{name}/{f.folder.name}": f.digest for name, folds in per_model.items() for f in folds}
    config = {"method": method, "metric": spec.metric.model_dump()}
    final = competition_root(spec.name) / "ensemble" / output_key(config, inputs)
    return build_once(final, f"the ensemble of {spec.name}",
                      lambda: _write_ensemble(config, spec.metric.bind(), per_model, train_labels, final, inputs),
                      lambda: (final, read_manifest(final)["report"]))


def _write_ensemble(config: dict, metric: Metric, per_model: dict[str, list[FoldOutput]], train_labels: np.ndarray,
                    final: Path, inputs: dict[str, str]) -> tuple[Path, dict]:
    models = [gather(name, folds) for name, folds in per_model.items()]
    index, oof, note = shared_rows(models)
    labels = train_labels[index]
    method = config["method"]
    weights = find_weights(method, oof, labels, metric)
    oof_blend = sum(w * p for w, p in zip(weights, oof))
    test_blend = sum(w * m.test_probs for w, m in zip(weights, models)).astype(np.float32)
    def scores(probs: np.ndarray) -> dict:
        return {"oof_score": metric.score(probs, labels), "oof_accuracy": accuracy(probs, labels),
                "oof_log_loss": log_loss(probs, labels)}

    report = {
        "method": method,
        "metric": metric.label,
        "greater_is_better": metric.greater_is_better,
        "oof_rows": int(len(index)),
        "shared_note": note,
        "models": [{"name": m.name, "weight": round(float(w), 4), **scores(p)} for m, p, w in zip(models, oof, weights)],
        "ensemble": scores(oof_blend),
    }
    summary: dict = {"report": report}
    with atomic_output(final, "ensemble", config, inputs, extra=summary) as staging:
        np.save(staging / "oof_probs.npy", oof_blend.astype(np.float32))
        np.save(staging / "oof_index.npy", index)
        np.save(staging / "test_probs.npy", test_blend)
        summary["digest"] = file_digest(staging / "test_probs.npy")
    return final, report
