"""The metric table (competition/metrics.py): every metric against scikit-learn or a worked example, its
direction, and the spec's `metric:` as a name or a mapping."""
from __future__ import annotations

import numpy as np
import pytest
import yaml
from sklearn import metrics as sk

from competition.errors import SpecError
from competition.metrics import KAGGLE_NAMES, KINDS, from_kaggle_name, map_at_k, metric, ranked
from competition.spec import SPEC_DIR, load_spec


@pytest.fixture(scope="module")
def predictions():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(400, 5)) + 2 * np.eye(5)[rng.integers(0, 5, 400)]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.where(rng.random(400) < 0.6, probs.argmax(1), rng.integers(0, 5, 400))
    return probs, labels


@pytest.mark.parametrize("name, reference", [
    ("accuracy", lambda p, y: sk.accuracy_score(y, p.argmax(1))),
    ("balanced_accuracy", lambda p, y: sk.balanced_accuracy_score(y, p.argmax(1))),
    ("f1_macro", lambda p, y: sk.f1_score(y, p.argmax(1), average="macro")),
    ("f1_micro", lambda p, y: sk.f1_score(y, p.argmax(1), average="micro")),
    ("f1_weighted", lambda p, y: sk.f1_score(y, p.argmax(1), average="weighted")),
    ("quadratic_weighted_kappa", lambda p, y: sk.cohen_kappa_score(y, p.argmax(1), weights="quadratic")),
    ("log_loss", lambda p, y: sk.log_loss(y, p, labels=range(5))),
    ("roc_auc", lambda p, y: sk.roc_auc_score(y, p, multi_class="ovr", average="macro")),
])
def test_metric_matches_scikit_learn(predictions, name, reference):
    probs, labels = predictions
    assert metric(name).score(probs, labels) == pytest.approx(reference(probs, labels), abs=1e-9)


def test_binary_roc_auc_scores_the_positive_column(predictions):
    probs, labels = predictions
    binary = np.stack([1 - probs[:, 0], probs[:, 0]], 1)
    positive = (labels == 0).astype(int)
    assert metric("roc_auc").score(binary, positive) == pytest.approx(sk.roc_auc_score(positive, probs[:, 0]))


def test_top_k_matches_scikit_learn_and_map_at_1_is_accuracy(predictions):
    probs, labels = predictions
    assert metric("top_k_accuracy", 2).score(probs, labels) == pytest.approx(sk.top_k_accuracy_score(labels, probs, k=2))
    assert metric("map_at_k", 1).score(probs, labels) == pytest.approx(sk.accuracy_score(labels, probs.argmax(1)))


def test_map_at_k_worked_examples():
    # One true label per row: 1 at the first place, 1/2 at the second, 1/3 at the third, 0 when absent.
    predictions = [["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"], ["a", "b", "c"]]
    assert map_at_k(predictions, ["a", "b", "c", "d"], 3) == pytest.approx((1 + 1 / 2 + 1 / 3 + 0) / 4)
    assert map_at_k([["a", "a", "b"]], ["b"], 3) == pytest.approx(1 / 3)  # a repeat still takes a place
    assert map_at_k([["x", "y", "z", "b"]], ["b"], 3) == 0  # only the first k count
    probs = np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]])
    assert ranked(probs, 2).tolist() == [[1, 2], [0, 2]]
    assert metric("map_at_k", 2).score(probs, np.array([2, 1])) == pytest.approx((1 / 2 + 0) / 2)


def test_log_loss_clips_like_kaggle():
    certain_and_wrong = np.array([[1.0, 0.0]])
    assert metric("log_loss").score(certain_and_wrong, np.array([1])) == pytest.approx(-np.log(1e-15), rel=1e-6)


def test_each_metric_knows_its_direction_and_submission():
    assert not metric("log_loss").greater_is_better and metric("log_loss").better(0.2, 0.3)
    assert all(KINDS[name].greater_is_better for name in KINDS if name not in ("log_loss", "multilabel_log_loss"))
    assert metric("log_loss").signed(0.3) == -0.3 and metric("accuracy").signed(0.9) == 0.9
    assert {name: kind.submission for name, kind in KINDS.items()} == {
        "accuracy": "label", "balanced_accuracy": "label", "f1_macro": "label", "f1_micro": "label",
        "f1_weighted": "label", "quadratic_weighted_kappa": "label", "log_loss": "probabilities",
        "roc_auc": "probabilities", "top_k_accuracy": "ranked_labels", "map_at_k": "ranked_labels",
        "f_beta_samples": "tags", "f_beta_micro": "tags", "f_beta_macro": "tags", "mean_column_auc": "probabilities",
        "multilabel_log_loss": "probabilities"}
    assert {name for name, kind in KINDS.items() if kind.task == "multi_label"} == {
        "f_beta_samples", "f_beta_micro", "f_beta_macro", "mean_column_auc", "multilabel_log_loss"}
    assert metric("map_at_k", 3).label == "map@3"


def _spec_with(tmp_path, value):
    spec = yaml.safe_load((SPEC_DIR / "fashion-mnist.yaml").read_text())
    spec["metric"] = value
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize("value, name, k", [
    ("f1_macro", "f1_macro", None),
    ({"name": "map_at_k", "k": 5}, "map_at_k", 5),
    ({"name": "top_k_accuracy", "k": 3}, "top_k_accuracy", 3),
])
def test_spec_metric_as_name_or_mapping(tmp_path, value, name, k):
    chosen = load_spec(_spec_with(tmp_path, value)).metric
    assert (chosen.name, chosen.k) == (name, k)


@pytest.mark.parametrize("value, message", [
    ("rmse", "unknown metric 'rmse'; known: accuracy"),
    ({"name": "accuracy", "k": 2}, "metric 'accuracy' takes no arguments, not k"),
    ({"name": "map_at_k", "k": 0}, "k must be a whole number of at least 1"),
    ("map_at_k", "metric 'map_at_k' needs k, how many labels a row may list; write it as {name: map_at_k, k: 3}"),
    ({"name": "top_k_accuracy"}, "write it as {name: top_k_accuracy, k: 3}"),
    ({"name": "map_at_k", "k": 11}, "k is 11, but there are only 10 classes"),
    ([1, 2], "give a metric name"),
])
def test_bad_metric_is_one_line(tmp_path, value, message):
    with pytest.raises(SpecError) as caught:
        load_spec(_spec_with(tmp_path, value))
    assert message in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("kaggle_name, ours", [
    ("Categorization Accuracy", ("accuracy", None)),
    ("categorization accuracy", ("accuracy", None)),
    ("Log Loss", ("log_loss", None)),
    ("Multi Class Log Loss", ("log_loss", None)),
    ("Area Under Receiver Operating Characteristic Curve", ("roc_auc", None)),
    ("Quadratic Weighted Kappa", ("quadratic_weighted_kappa", None)),
    ("Micro-averaged F1-Score", ("f1_micro", None)),
    ("MAP@{K}", ("map_at_k", None)),
    ("MAP@5", ("map_at_k", 5)),
    ("Mean F2 Score", ("f_beta_samples", 2.0)),  # planet's: the beta is in the name
    ("F2 Score", ("f_beta_samples", 2.0)),
    ("Mean Columnwise Area Under Receiver Operating Characteristic Curve", ("mean_column_auc", None)),
    ("Root Mean Squared Error", None),
    ("", None),
])
def test_kaggle_metric_names_map_to_ours(kaggle_name, ours):
    assert from_kaggle_name(kaggle_name) == ours


def test_every_metric_has_a_kaggle_name_that_maps_back_to_it():
    for name in KINDS:
        kaggle_name = KAGGLE_NAMES[name][0]
        assert from_kaggle_name(kaggle_name)[0] == name
