"""Cross-fitted CV and temperature scaling (pipelines/stages/calibrate.py), and the ensemble stage that uses
them: a case where the in-sample CV is visibly optimistic, and over-confident models calibrated."""
from __future__ import annotations

import json

import numpy as np
import pytest

from competition.metrics import kaggle_log_loss, metric
from pipelines.stages.calibrate import expected_calibration_error, fit_temperature, groups_of, with_temperature
from pipelines.stages.ensemble import EnsembleOutput, _write_ensemble
from pipelines.stages.predict import FoldOutput


def _softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(1, keepdims=True))
    return exp / exp.sum(1, keepdims=True)


def _calibrated(rng, rows: int, classes: int = 5):
    """Probabilities that are calibrated by construction (labels drawn from them), and their logits."""
    logits = rng.normal(0, 1.5, (rows, classes))
    probs = _softmax(logits)
    labels = np.array([rng.choice(classes, p=p) for p in probs])
    return logits, labels


def test_temperature_undoes_over_confidence():
    rng = np.random.default_rng(0)
    logits, labels = _calibrated(rng, 4000)
    over_confident = _softmax(3 * logits)
    temperature = fit_temperature(over_confident, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    fixed = with_temperature(over_confident, temperature)
    assert kaggle_log_loss(fixed, labels) < kaggle_log_loss(over_confident, labels) - 0.1
    assert expected_calibration_error(fixed, labels) < expected_calibration_error(over_confident, labels) / 3
    assert (fixed.argmax(1) == over_confident.argmax(1)).all()  # the ranking of classes is kept


def test_groups_are_the_folds_or_seeded_sub_splits():
    assert groups_of(np.array([0, 1, 0, 1]), 7).tolist() == [0, 1, 0, 1]
    one_fold = groups_of(np.zeros(10, dtype=int), 7)
    assert sorted(np.bincount(one_fold).tolist()) == [2, 2, 2, 2, 2]
    assert groups_of(np.zeros(10, dtype=int), 7).tolist() == one_fold.tolist()  # seeded


def _fold_outputs(tmp_path, name: str, index: np.ndarray, oof: np.ndarray, test: np.ndarray) -> list[FoldOutput]:
    folder = tmp_path / name / "fold0"
    folder.mkdir(parents=True)
    np.save(folder / "oof_index.npy", index)
    np.save(folder / "oof_probs.npy", oof.astype(np.float32))
    np.save(folder / "test_probs.npy", test.astype(np.float32))
    (folder / "manifest.json").write_text(json.dumps({"digest": name}))
    return [FoldOutput(folder)]


def _ensemble(tmp_path, models: dict, labels: np.ndarray, row_folds: np.ndarray, chosen):
    index = np.arange(len(labels))
    per_model = {name: _fold_outputs(tmp_path, name, index, oof, oof[:5]) for name, oof in models.items()}
    config = {"method": "hill_climb", "metric": {"name": chosen.name, "k": chosen.k}, "cross_fit": 1, "seed": 42}
    return _write_ensemble(EnsembleOutput(tmp_path / "ensemble", config, {}), chosen, per_model, labels, row_folds)[1]


def test_cross_fitting_shows_what_the_in_sample_cv_hides(tmp_path):
    # Thirty models of pure noise: hill climbing finds a blend that looks better than chance on the rows it
    # was fitted on; fitted on the other fold and scored on this one, it is chance again.
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 10, 400)
    noise = {f"noise{i}": rng.dirichlet(np.ones(10), 400) for i in range(30)}
    report = _ensemble(tmp_path, noise, labels, np.arange(400) % 2, metric("accuracy"))
    in_sample, crossed = report["ensemble"]["oof_score"], report["cross_fitted"]["oof_score"]
    assert in_sample > 0.13 and crossed < in_sample - 0.03, (in_sample, crossed)
    assert report["cross_fitted"]["groups"] == 2 and "calibration" not in report  # accuracy: no temperatures


def test_a_log_loss_ensemble_is_calibrated_and_says_by_how_much(tmp_path):
    rng = np.random.default_rng(1)
    logits, labels = _calibrated(rng, 3000)
    # Both over-confident: no blend of the two can undo it, a temperature can.
    models = {"sharp": _softmax(2.5 * logits), "noisy": _softmax(2.0 * logits + rng.normal(0, 0.5, logits.shape))}
    report = _ensemble(tmp_path, models, labels, np.arange(3000) % 3, metric("log_loss"))
    calibration = report["calibration"]
    assert calibration["temperatures"]["sharp"] == pytest.approx(2.5, rel=0.15)
    assert calibration["log_loss_after"] < calibration["log_loss_before"] - 0.05
    assert calibration["ece_after"] < calibration["ece_before"]
    assert report["cross_fitted"]["oof_score"] == pytest.approx(calibration["log_loss_after"])
    test = np.load(tmp_path / "ensemble" / "test_probs.npy")
    assert np.allclose(test.sum(1), 1, atol=1e-5) and len(calibration["reliability_after"]) >= 5


def test_a_macro_f1_ensemble_learns_a_decision_rule_that_holds_cross_fitted(tmp_path):
    # A model biased towards the common class: rare classes are under-predicted, which costs macro-F1
    # far more than accuracy. Per-class weights fitted on other folds' rows recover the rare classes.
    rng = np.random.default_rng(5)
    labels = rng.choice(4, size=3000, p=[0.7, 0.1, 0.1, 0.1])
    logits = rng.normal(0, 1.0, (3000, 4)) + 1.6 * np.eye(4)[labels]
    logits[:, 0] += 2.5  # the bias
    report = _ensemble(tmp_path, {"biased": _softmax(logits)}, labels, np.arange(3000) % 3, metric("f1_macro"))
    rule = report["decision_rule"]
    assert rule["class_weights"][0] < min(rule["class_weights"][1:])  # the common class is weighed down
    assert rule["cross_fitted_gain"] > 0.03 and rule["applied"], rule
    assert report["cross_fitted"]["oof_score"] == pytest.approx(rule["cross_fitted_without"] + rule["cross_fitted_gain"])


@pytest.mark.slow
def test_a_decision_rule_that_loses_on_held_out_rows_is_not_applied(tmp_path):
    # An unbiased model on few rows: whatever weights fit the rows in-sample are noise elsewhere.
    rng = np.random.default_rng(2)
    labels = rng.choice(6, size=240, p=[0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    probs = _softmax(rng.normal(0, 1.0, (240, 6)) + 1.0 * np.eye(6)[labels])
    report = _ensemble(tmp_path, {"model": probs}, labels, np.arange(240) % 4, metric("f1_macro"))
    rule = report["decision_rule"]
    # Seeded: here the rule gains in-sample but loses 2.7 points cross-fitted, so the submission and the
    # CV are the plain argmax's.
    assert not rule["applied"] and rule["cross_fitted_gain"] < -0.02, rule
    assert report["cross_fitted"]["oof_score"] == rule["cross_fitted_without"]
    assert np.allclose(np.load(tmp_path / "ensemble" / "oof_probs.npy"), probs, atol=1e-6)
    test = np.load(tmp_path / "ensemble" / "test_probs.npy")
    assert np.allclose(test.sum(1), 1, atol=1e-5)
