"""Multi-label competitions (`task: multi_label`): the metrics against scikit-learn, the tags and probability
formats and the host's scoring of them, the readers of tag and 0/1-column train.csv files, iterative
stratification, the per-label losses, fitted thresholds, and the two replicas end to end (real training,
the real `kaggle` client, `make predict` and the exported script reproducing the submission)."""
from __future__ import annotations

import csv
import json
import subprocess

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from sklearn import metrics as sk

from competition import metrics
from competition.errors import DataError, SpecError
from competition.formats import SubmissionFormat, score
from competition.host.scoring import Solution, SubmissionRejected, score_submission
from competition.recipe import LossConfig
from competition.spec import SPEC_DIR, load_spec
from pipelines.recipe.kernel_inference import at_thresholds, cells, combine, logit, sigmoid
from pipelines.recipe.losses import MULTI_LABEL_LOSSES, balanced_weights
from pipelines.stages.calibrate import fit_thresholds
from pipelines.stages.prepare import assign_multilabel_folds, fold_class_counts
from pipelines.stages.readers import read_labelled_ids

TAGS = ["haze", "primary", "road", "water"]


@pytest.fixture(scope="module")
def sets():
    """Label sets of 600 rows over four labels of uneven frequency, and noisy probabilities for them."""
    rng = np.random.default_rng(0)
    labels = (rng.random((600, 4)) < [0.6, 0.3, 0.15, 0.05]).astype(np.int64)
    labels[~labels.any(axis=1), 0] = 1
    probs = np.clip(0.35 * labels + rng.random((600, 4)) * 0.65, 0, 1)
    return probs, labels


# --- metrics ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("average", ["samples", "micro", "macro"])
@pytest.mark.parametrize("beta", [1, 2])
def test_f_beta_matches_scikit_learn_on_the_submitted_sets(sets, average, beta):
    probs, labels = sets
    chosen = metrics.bound({"name": f"f_beta_{average}", "beta": beta})
    decided = (probs > 0.5).astype(int)
    empty = ~decided.any(axis=1)
    assert empty.any()  # some rows would be empty: the submission gives them their most probable label
    decided[empty, probs[empty].argmax(axis=1)] = 1
    expected = sk.fbeta_score(labels, decided, beta=beta, average=average, zero_division=0)
    assert chosen.score(probs, labels) == pytest.approx(expected, abs=1e-12)
    assert metrics.f_beta_of_sets(decided, labels, beta, average) == pytest.approx(expected, abs=1e-12)
    allowed = metrics.bound({"name": f"f_beta_{average}", "beta": beta, "allow_empty": True})
    assert allowed.score(probs, labels) == pytest.approx(
        sk.fbeta_score(labels, (probs > 0.5).astype(int), beta=beta, average=average, zero_division=0), abs=1e-12)


def test_fast_f_beta_matches_scikit_learn_with_empty_rows_on_both_sides():
    rng = np.random.default_rng(3)
    labels, chosen = (rng.random((300, 6)) < 0.2).astype(int), (rng.random((300, 6)) < 0.3).astype(int)
    labels[:20], chosen[10:30] = 0, 0  # rows 10..19 are empty on both sides
    for average in ("samples", "micro", "macro"):
        assert metrics.f_beta_of_sets(chosen, labels, 2.0, average) == pytest.approx(
            sk.fbeta_score(labels, chosen, beta=2.0, average=average, zero_division=0), abs=1e-12)


def test_column_auc_and_log_loss_match_scikit_learn(sets):
    probs, labels = sets
    assert metrics.bound("mean_column_auc").score(probs, labels) == pytest.approx(
        np.mean([sk.roc_auc_score(labels[:, c], probs[:, c]) for c in range(4)]))
    assert metrics.bound("multilabel_log_loss").score(probs, labels) == pytest.approx(
        np.mean([sk.log_loss(labels[:, c], np.clip(probs[:, c], 1e-15, 1 - 1e-15)) for c in range(4)]))
    certain = np.ones((2, 4), dtype=np.float32)  # float32: 1 - 1e-15 must not round to 1
    assert np.isfinite(metrics.multilabel_log_loss(certain, np.zeros((2, 4))))
    assert metrics.accuracy(labels.astype(float), labels) == 1.0  # subset accuracy: every set exactly right


@pytest.mark.parametrize("value, message", [
    ("f_beta_samples", "metric 'f_beta_samples' needs beta, the weight of recall against precision; write it as "
                       "{name: f_beta_samples, beta: 2}"),
    ({"name": "f_beta_micro", "beta": 0}, "beta must be a number above 0"),
    ({"name": "f_beta_micro", "beta": 2, "k": 3}, "takes only beta, allow_empty, not k"),
    ({"name": "f_beta_micro", "beta": 2, "allow_empty": "yes"}, "allow_empty is true or false"),
])
def test_bad_multilabel_metric_is_one_line(value, message):
    with pytest.raises(ValueError) as caught:
        metrics.parse(value)
    assert message in str(caught.value)


# --- formats and the host ---------------------------------------------------------------------------


def test_tags_format_writes_and_reads_label_sets():
    fmt = SubmissionFormat.of(metrics.bound({"name": "f_beta_samples", "beta": 2}), "image_name", "tags", TAGS,
                              ["image_name", "tags"])
    assert fmt.cells(np.array([0.9, 0.2, 0.7, 0.1])) == ["haze road"]
    assert fmt.cells(np.array([0.1, 0.4, 0.2, 0.3])) == ["primary"]  # never empty: the most probable label
    assert fmt.parse(["road haze"]).tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="'tags' is empty; give at least one label"):
        fmt.parse([""])
    with pytest.raises(ValueError, match="'tags' names 'cloudy', not one of the competition's labels"):
        fmt.parse(["haze cloudy"])
    columns = SubmissionFormat.of(metrics.bound("mean_column_auc"), "id", "tags", TAGS, ["id", *TAGS])
    assert columns.cells(np.array([0.9, 0.2, 0.7, 0.1])) == ["0.9", "0.2", "0.7", "0.1"]  # need not sum to 1
    assert columns.parse(["0.9", "0.2", "0.7", "0.1"]).tolist() == [0.9, 0.2, 0.7, 0.1]
    with pytest.raises(ValueError, match="one probability column per label, named and ordered as the labels"):
        SubmissionFormat.of(metrics.bound("mean_column_auc"), "id", "tags", TAGS, ["id", "primary", "haze", "road", "water"])


def _solution(tmp_path, metric, header) -> Solution:
    truth = [("a", "haze road", "Public"), ("b", "primary", "Public"), ("c", "water haze", "Private"),
             ("d", "road", "Private")]
    with open(tmp_path / "solution.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["id", "tags", "Usage"], *truth])
    return Solution.load(tmp_path / "solution.csv", "id", "tags", TAGS, metric, header)


def test_host_scores_tags_and_label_columns(tmp_path):
    solution = _solution(tmp_path, {"name": "f_beta_samples", "beta": 2}, ["id", "tags"])
    scored = score_submission(b"id,tags\na,haze road\nb,primary haze\nc,water\nd,road\n", solution)
    # public: a exact (1), b: 1 of 2 right (F2 = 5*1/(5*1+1) = 5/6); private: c 1 of 2 found (F2 = 5/9), d exact
    assert scored.public == pytest.approx((1 + 5 / 6) / 2) and scored.private == pytest.approx((5 / 9 + 1) / 2)
    with pytest.raises(SubmissionRejected, match=r"row 3 \(id 'b'\): 'tags' names 'smoke'"):
        score_submission(b"id,tags\na,haze\nb,smoke\nc,water\nd,road\n", solution)
    auc = _solution(tmp_path, "mean_column_auc", ["id", *TAGS])
    body = "id," + ",".join(TAGS) + "\na,0.9,0.1,0.8,0.2\nb,0.2,0.9,0.1,0.1\nc,0.7,0.2,0.1,0.9\nd,0.1,0.1,0.9,0.3\n"
    assert score_submission(body.encode(), auc).public == 1.0  # each column ranks its positives first (or is left out)
    with pytest.raises(SubmissionRejected, match="'road' is 1.5; probabilities lie between 0 and 1"):
        score_submission(body.replace("0.8", "1.5").encode(), auc)


# --- spec and readers --------------------------------------------------------------------------------


def _spec(tmp_path, **changes) -> str:
    spec = yaml.safe_load((SPEC_DIR / "fashion-mosaic-tags.yaml").read_text())
    spec.update(changes)
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


@pytest.mark.parametrize("changes, message", [
    ({"task": "single_label"}, "metric: f2_samples scores a set of labels per image, but task is single_label; set "
                               "`task: multi_label`"),
    ({"metric": "accuracy"}, "metric: accuracy scores one class per image, but task is multi_label"),
    ({"layout": {"kind": "class_folders"}}, "task: multi_label needs a train.csv that holds each image's labels"),
    ({"label_format": "bits"}, "key 'label_format'"),
])
def test_bad_multilabel_spec_is_one_line(tmp_path, changes, message):
    with pytest.raises(SpecError) as caught:
        load_spec(_spec(tmp_path, **changes))
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_pseudo_labels_are_refused_in_a_multilabel_competition(tmp_path):
    spec = yaml.safe_load((SPEC_DIR / "fashion-mosaic-tags.yaml").read_text())
    spec["pool"]["candidates"].append({**spec["pool"]["candidates"][0], "alias": "pl", "family": "x",
                                       "pseudo_labels": {"teacher": "speedrun"}})
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="pool.candidates: pl: pseudo_labels take one class per image"):
        load_spec(str(tmp_path / "s.yaml"))


def test_readers_take_tags_or_label_columns(tmp_path):
    tags = load_spec(_spec(tmp_path))
    (tmp_path / "tags.csv").write_text("image_name,tags\nx1,haze road\nx2,primary\nx3, water  haze \n")
    ids, matrix, classes = read_labelled_ids(tmp_path / "tags.csv", tags)
    assert ids == ["x1", "x2", "x3"] and classes == ["haze", "primary", "road", "water"]
    assert matrix.tolist() == [[1, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 1]]
    (tmp_path / "empty.csv").write_text("image_name,tags\nx1,haze\nx2,\n")
    with pytest.raises(DataError, match=r"empty.csv row 3: no labels in 'tags'"):
        read_labelled_ids(tmp_path / "empty.csv", tags)

    columns = load_spec(_spec(tmp_path, label_format="columns", id_column="id"))
    (tmp_path / "columns.csv").write_text("id,haze,road\nx1,1,0\nx2,1,1\nx3,0,1\n")
    ids, matrix, classes = read_labelled_ids(tmp_path / "columns.csv", columns)
    assert classes == ["haze", "road"] and matrix.tolist() == [[1, 0], [1, 1], [0, 1]]
    (tmp_path / "bad.csv").write_text("id,haze,road\nx1,1,0\nx2,yes,1\n")
    with pytest.raises(DataError, match=r"bad.csv row 3: column 'haze' holds 'yes'; a label column holds 0 or 1"):
        read_labelled_ids(tmp_path / "bad.csv", columns)
    (tmp_path / "none.csv").write_text("id,haze,road\nx1,1,0\nx2,0,0\n")
    with pytest.raises(DataError, match=r"none.csv row 3: no label column is 1"):
        read_labelled_ids(tmp_path / "none.csv", columns)


# --- folds --------------------------------------------------------------------------------------------


def test_iterative_stratification_spreads_every_label_and_keeps_groups(sets):
    _, labels = sets
    fold = assign_multilabel_folds(labels, 5, seed=42)
    counts = fold_class_counts(labels, fold, 4)
    assert np.abs(counts - labels.sum(0) / 5).max() <= 1.0  # every label, the rare one too, within a row of even
    assert np.abs(np.bincount(fold) - 120).max() <= 5  # sizes follow the labels' balance within a few rows
    assert (assign_multilabel_folds(labels, 5, seed=42) == fold).all()
    assert not (assign_multilabel_folds(labels, 5, seed=7) == fold).all()
    groups = np.arange(len(labels))
    groups[[3, 50, 400]] = 3
    grouped = assign_multilabel_folds(labels, 5, seed=42, groups=groups)
    assert len(set(grouped[[3, 50, 400]])) == 1


# --- training -----------------------------------------------------------------------------------------


def test_per_label_losses():
    torch.manual_seed(0)
    logits, targets = torch.randn(16, 4), (torch.rand(16, 4) < 0.3).to(torch.uint8)
    config = LossConfig()
    bce = MULTI_LABEL_LOSSES["cross_entropy"]
    assert bce(logits, targets, 0.0, config) == pytest.approx(
        F.binary_cross_entropy_with_logits(logits, targets.float()).item())
    smoothed = targets.float() * 0.9 + 0.05
    assert bce(logits, targets, 0.1, config) == pytest.approx(F.binary_cross_entropy_with_logits(logits, smoothed).item())
    focal = MULTI_LABEL_LOSSES["focal"]
    assert focal(logits, targets, 0.0, LossConfig(name="focal", gamma=0.0)) == pytest.approx(bce(logits, targets, 0.0, config))
    assert focal(logits, targets, 0.0, LossConfig(name="focal", gamma=2.0)) < bce(logits, targets, 0.0, config)
    weights = balanced_weights(torch.tensor([[1, 0], [1, 0], [1, 1], [0, 0]]), 2)
    assert weights.tolist() == pytest.approx([1 / 3, 3.0])  # negatives over positives
    assert balanced_weights(torch.tensor([0, 0, 0, 1]), 2).tolist() == pytest.approx([4 / 6, 2.0])


# --- thresholds and the blend --------------------------------------------------------------------------


def test_thresholds_fitted_for_f2_raise_it_and_replay_in_the_exported_blend(sets):
    probs, labels = sets
    f2 = metrics.bound({"name": "f_beta_samples", "beta": 2})
    thresholds = fit_thresholds(probs, labels, f2)
    assert thresholds[0] < 0.5 and len(set(thresholds)) > 1  # F2 rewards recall; rare labels want their own
    assert f2.score(at_thresholds(probs, thresholds), labels) > f2.score(probs, labels) + 0.02
    order = np.argsort(probs[:, 2])
    assert (np.diff(at_thresholds(probs, thresholds)[order, 2]) >= 0).all()  # ranks within a label kept
    config = {"members": [{"weight": 1.0, "temperature": None}], "ensemble_temperature": None, "class_weights": None,
              "multi_label": True, "thresholds": thresholds.tolist(), "classes": TAGS,
              "submission": {"kind": "tags", "k": None}}
    blend = combine(config, [probs])
    fmt = SubmissionFormat.of(f2, "id", "tags", TAGS, ["id", "tags"])
    assert [cells(config, ["tags"], row) for row in blend[:50]] == [fmt.cells(row) for row in blend[:50]]
    decided = np.stack([fmt.parse(fmt.cells(row)) for row in blend])
    assert score(f2, fmt, list(decided), labels) == pytest.approx(f2.score(blend, labels))


# --- the replicas, end to end ----------------------------------------------------------------------------

TINY_SPEEDRUN = {"model": "speedrun", "epochs": 2, "batch_size": 128, "label_smoothing": 0.05,
                 "optimizer": {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.0005},
                 "schedule": {"name": "onecycle", "pct_start": 0.2}, "augment": {"policy": "light", "shift": 2}}


def _variant(tmp_path, name: str, epochs: int = 2, tta=("identity", "hflip")) -> str:
    spec = yaml.safe_load((SPEC_DIR / f"{name}.yaml").read_text())
    spec["profiles"] = {"quick": {"folds": [0], "tta": list(tta), "models": [{**TINY_SPEEDRUN, "epochs": epochs}]}}
    spec.pop("pool")
    path = tmp_path / f"{name}-test.yaml"
    path.write_text(yaml.safe_dump(spec))
    return str(path)


def _rows(path) -> dict[str, list[str]]:
    with open(path, newline="") as fh:
        return {row[0]: row[1:] for row in list(csv.reader(fh))[1:]}


def _benchmark(host, slug: str) -> float:
    folder = host.root / "competitions" / slug
    meta = json.loads((folder / "competition.json").read_text())
    header = (folder / "data" / "sample_submission.csv").read_text().splitlines()[0].split(",")
    solution = Solution.load(folder / "solution.csv", meta["id_column"], meta["label_column"], meta["labels"],
                             meta["metric"], header)
    return score_submission((folder / "baselines" / "label-templates.csv").read_bytes(), solution).public


@pytest.mark.slow
def test_tags_replica_submits_and_predict_and_the_exported_script_reproduce_it(pipeline_env, host, tmp_path, monkeypatch,
                                                                              capsys, kernel_python):
    from pipelines.__main__ import main as pipelines_main
    from pipelines.stages.lineage import find_run

    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec_path = _variant(tmp_path, "fashion-mosaic-tags", epochs=1)
    assert pipelines_main(["submit", "--comp", spec_path]) == 0
    out = capsys.readouterr().out
    assert "iteratively stratified (multi-label)" in out and "decision rule: per-label thresholds" in out
    [scored] = host.store.submissions("fashion-mosaic-tags")[:1]
    assert scored["status"] == "COMPLETE" and scored["public_score"] > _benchmark(host, "fashion-mosaic-tags") + 0.2
    spec = load_spec(spec_path)
    logged = find_run(spec, None)
    report = json.loads((logged.ensemble / "manifest.json").read_text())["report"]
    rule = report["decision_rule"]
    assert rule["applied"] and rule["cross_fitted_with"] > rule["cross_fitted_without"]
    assert logged.lineage["multi_label"] and logged.lineage["thresholds"] == pytest.approx(rule["thresholds"], abs=1e-4)
    [submission] = [p for p in (tmp_path / "submissions" / "fashion-mosaic-tags").glob("*.csv") if p.name != "log.csv"]
    expected = _rows(submission)
    assert all(row[0] for row in expected.values())  # never an empty label set

    raw = pipeline_env / "fashion-mosaic-tags" / "raw"
    assert pipelines_main(["predict", "--comp", spec_path, "--input", str(raw / "test-jpg"), "--out",
                           str(tmp_path / "preds.csv")]) == 0
    assert _rows(tmp_path / "preds.csv") == expected
    html = (pipeline_env / "fashion-mosaic-tags" / "report.html").read_text()
    assert 'id="per-label-table"' in html and "Label thresholds" in html and 'alt="confusion matrix"' not in html

    assert pipelines_main(["export", "--comp", spec_path]) == 0
    dataset = pipeline_env / "fashion-mosaic-tags" / "export" / logged.config_hash / "dataset"
    ran = subprocess.run([kernel_python, str(dataset / "inference.py"), "--data", str(raw), "--probs", "probs.npy"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert _rows(tmp_path / "submission.csv") == expected
    assert np.abs(np.load(tmp_path / "probs.npy") - np.load(logged.ensemble / "test_probs.npy")).max() < 1e-5


@pytest.mark.slow
def test_auc_replica_submits_one_probability_column_per_label(pipeline_env, host, tmp_path, monkeypatch, capsys):
    from pipelines.__main__ import main as pipelines_main

    monkeypatch.setenv("KPIPE_SUBMISSIONS", str(tmp_path / "submissions"))
    spec_path = _variant(tmp_path, "fashion-mosaic-auc", epochs=1, tta=["identity"])
    assert pipelines_main(["submit", "--comp", spec_path]) == 0
    assert "calibration: temperatures" in capsys.readouterr().out
    [scored] = host.store.submissions("fashion-mosaic-auc")[:1]
    assert scored["status"] == "COMPLETE" and scored["public_score"] > _benchmark(host, "fashion-mosaic-auc") + 0.1
    [submission] = [p for p in (tmp_path / "submissions" / "fashion-mosaic-auc").glob("*.csv") if p.name != "log.csv"]
    header = submission.read_text().splitlines()[0]
    assert header == "id,tshirt,trouser,pullover,dress,coat,sandal,shirt,sneaker,bag,boot"  # train.csv's columns
    assert pipelines_main(["predict", "--comp", spec_path, "--input", str(pipeline_env / "fashion-mosaic-auc" / "raw" / "test"),
                           "--out", str(tmp_path / "preds.csv")]) == 0
    assert _rows(tmp_path / "preds.csv") == _rows(submission)  # every probability to its last written digit


# --- make init ---------------------------------------------------------------------------------------------


def test_guess_tells_tags_and_label_columns_from_single_labels(tmp_path):
    from PIL import Image

    from pipelines.tools.layout_guess import guess

    for name in ("a", "b", "c", "t1", "t2"):
        (tmp_path / ("test" if name.startswith("t") else "train")).mkdir(exist_ok=True)
        Image.new("L", (20, 20), 90).save(tmp_path / ("test" if name.startswith("t") else "train") / f"{name}.png")
    (tmp_path / "sample_submission.csv").write_text("image_name,tags\nt1,haze\nt2,haze\n")
    (tmp_path / "train_v2.csv").write_text("image_name,tags\na,haze primary\nb,primary\nc,road water haze\n")
    draft = guess(tmp_path)
    assert (draft.task, draft.label_format, draft.label_column) == ("multi_label", "tags", "tags")
    assert draft.classes == ["haze", "primary", "road", "water"] and draft.class_counts == [2, 2, 1, 1]
    assert draft.layout["train_csv"] == "train_v2.csv" and not draft.questions

    (tmp_path / "train_v2.csv").unlink()
    (tmp_path / "sample_submission.csv").write_text("id,haze,road\nt1,0.5,0.5\nt2,0.5,0.5\n")
    (tmp_path / "train.csv").write_text("id,haze,road\na,1,1\nb,0,1\nc,1,0\n")
    draft = guess(tmp_path)
    assert (draft.task, draft.label_format, draft.classes, draft.class_counts) == ("multi_label", "columns",
                                                                                  ["haze", "road"], [2, 2])
    assert draft.submission_label_column is None and not draft.questions
    (tmp_path / "sample_submission.csv").write_text("id,label\nt1,haze\nt2,road\n")
    (tmp_path / "train.csv").write_text("id,label\na,haze\nb,road\nc,haze\n")
    assert guess(tmp_path).task == "single_label"


@pytest.mark.parametrize("slug, metric, label_format", [
    ("fashion-mosaic-tags", {"name": "f_beta_samples", "k": None, "beta": 2.0}, "tags"),
    ("fashion-mosaic-auc", {"name": "mean_column_auc", "k": None}, "columns"),
])
def test_make_init_drafts_the_multilabel_replicas(pipeline_env, host, tmp_path, capsys, slug, metric, label_format):
    from pipelines.stages.readers import read_competition
    from pipelines.tools import init as init_tool

    specs = tmp_path / "specs"
    specs.mkdir()
    assert init_tool.init(slug, None, False, specs) == 0
    out = capsys.readouterr().out
    assert "labels: multi-label" in out
    spec = load_spec(str(specs / f"{slug}.yaml"))
    assert (spec.task, spec.label_format, spec.metric.model_dump()) == ("multi_label", label_format, metric)
    assert all(run.pseudo_labels is None for run in spec.pool.candidates)
    data = read_competition(spec, pipeline_env / slug / "raw")
    assert data.train_labels.shape == (10_000, 10) and set(data.train_labels.sum(axis=1)) == {1, 2, 3, 4}


def test_epochs_and_trials_are_chosen_by_the_metric_at_fitted_thresholds(sets):
    from pipelines.stages.calibrate import selection_score

    probs, labels = sets
    timid = sigmoid(logit(probs) - 2)  # the same ranking per label, each logit 2 lower (8 steps of the grid)
    f2 = metrics.bound({"name": "f_beta_samples", "beta": 2})
    assert f2.score(timid, labels) < f2.score(probs, labels) - 0.04
    assert selection_score(f2, timid, labels) == pytest.approx(selection_score(f2, probs, labels), abs=1e-9)
    assert selection_score(f2, timid, labels) > f2.score(probs, labels) + 0.1
    auc = metrics.bound("mean_column_auc")
    assert selection_score(auc, probs, labels) == auc.score(probs, labels)  # other metrics as they are
