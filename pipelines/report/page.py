"""report: one self-contained HTML page (images embedded) that shows what a run did.

Sections: the models (parameters, time per epoch, per-fold and OOF accuracy, TTA gain, ensemble weight),
the ensemble, learning curves, the OOF confusion matrix with the most confused pairs, bar charts
comparing the models, the Optuna study plots when a study exists, and the submissions log (CV next to
the leaderboard). Every number carries its unit and meaning. Written to <data>/<comp>/report.html.
"""
from __future__ import annotations

import base64
import csv
import html
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from competition import atomic
from competition.paths import competition_root
from pipelines.context import Context
from pipelines.planning.records import execution
from pipelines.recipe.auto_augment import SEARCHED
from pipelines.report.insight_sections import (PREVIEW_IMAGES, augmentation_preview, cv_vs_leaderboard,
                                               high_loss_gallery, insight_section, overlaid_curves, per_class_table)
from pipelines.report.multilabel import multilabel_sections
from pipelines.report.parts import count_heatmap, pyplot
from pipelines.report.parts import figure_png as _figure_png
from pipelines.report.parts import img as _img
from pipelines.report.parts import table as _table
from pipelines.stages.artifacts import git_commit, read_manifest
from pipelines.stages.submit import read_log

PAGE_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
h1{margin-bottom:0}.sub{color:#666;margin-top:.2em}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f2f2f2}td:first-child,th:first-child{text-align:left}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}img{max-width:100%;border:1px solid #eee}
.note{color:#555;font-size:.9em}
.synthetic{background:#fff3cd;border:1px solid #e0c36c;padding:6px 10px}
"""


def _history(folder: Path) -> list[dict]:
    with open(folder / "history.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def learning_curves(name: str, folds: list) -> str:
    plt = pyplot()

    figure, (loss_axes, acc_axes) = plt.subplots(1, 2, figsize=(10, 3.6))
    for fold_output in folds:
        history = _history(fold_output.folder)
        epochs = [int(h["epoch"]) for h in history]
        label = fold_output.folder.name
        loss_axes.plot(epochs, [float(h["train_loss"]) for h in history], "--", label=f"{label} train")
        loss_axes.plot(epochs, [float(h["val_loss"]) for h in history], "-", label=f"{label} validation")
        acc_axes.plot(epochs, [100 * float(h["val_accuracy"]) for h in history], "-o", ms=3, label=label)
    loss_axes.set(xlabel="epoch", ylabel="loss (validation: cross-entropy)", title=f"{name}: loss per epoch")
    acc_axes.set(xlabel="epoch", ylabel="validation accuracy (%)", title=f"{name}: validation accuracy per epoch")
    from matplotlib.ticker import MaxNLocator

    for axes in (loss_axes, acc_axes):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.legend(fontsize=7)
    return _figure_png(figure)


def confusion(labels: np.ndarray, predicted: np.ndarray, class_names: list[str]) -> tuple[str, list[list]]:
    plt = pyplot()

    k = len(class_names)
    matrix = np.zeros((k, k), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    size = min(4 + 0.35 * k, 16)
    figure, axes = plt.subplots(figsize=(size, size * 0.85))
    count_heatmap(axes, matrix, class_names)
    axes.set(xlabel="predicted class", ylabel="true class", title="Out-of-fold confusion matrix (ensemble)")
    off_diagonal = [(matrix[i, j], i, j) for i in range(k) for j in range(k) if i != j and matrix[i, j]]
    pairs = [[class_names[i], class_names[j], int(n), f"{100 * n / max(matrix[i].sum(), 1):.1f}"]
             for n, i, j in sorted(off_diagonal, reverse=True)[:8]]
    return _figure_png(figure), pairs


def comparison_bars(rows: list[dict]) -> str:
    plt = pyplot()

    names = [r["name"] for r in rows]
    figure, axes = plt.subplots(1, 3, figsize=(12, 3.4))
    panels = [("oof_accuracy", 100, "OOF accuracy (%)"), ("parameters", 1e-6, "parameters (millions)"),
              ("train_seconds", 1 / 60, "training time, all folds (minutes)")]
    for ax, (key, scale, label) in zip(axes, panels):
        values = [r[key] * scale for r in rows]
        ax.bar(names, values, color="#4c78a8")
        ax.set_title(label)
        ax.tick_params(axis="x", rotation=30)
        if key == "oof_accuracy":
            ax.set_ylim(max(min(values) - 5, 0), min(max(values) + 1, 100))
        for x, v in enumerate(values):
            ax.text(x, v, f"{v:.2f}" if v < 100 else f"{v:.0f}", ha="center", va="bottom", fontsize=8)
    return _figure_png(figure)


@dataclass
class ModelSummary:
    """One model run's numbers, as the terminal summary and the report both show them."""

    name: str
    parameters: int
    fold_accuracies: list[float]
    accuracy_without_tta: float  # mean over folds
    accuracy_with_tta: float  # OOF, with the profile's views
    weight: float  # in the ensemble
    train_seconds: float  # all folds
    seconds_per_epoch: float


def model_summaries(trained: dict, report: dict) -> list[ModelSummary]:
    summaries = []
    for entry in report["models"]:
        folds = trained[entry["name"]]
        manifests = [read_manifest(f.folder) for f in folds]
        epochs = [float(h["seconds"]) for f in folds for h in _history(f.folder)]
        accuracies = [m["val_accuracy"] for m in manifests]
        summaries.append(ModelSummary(entry["name"], manifests[0]["parameters"], accuracies, float(np.mean(accuracies)),
                                      entry["oof_accuracy"], entry["weight"],
                                      sum(m["train_seconds"] for m in manifests), float(np.mean(epochs))))
    return summaries


def _models_table(summaries: list[ModelSummary]) -> str:
    rows = [[m.name, f"{m.parameters:,}", f"{m.seconds_per_epoch:.1f}", " / ".join(f"{100 * a:.2f}" for a in m.fold_accuracies),
             f"{100 * m.accuracy_without_tta:.2f}", f"{100 * m.accuracy_with_tta:.2f}",
             f"{100 * (m.accuracy_with_tta - m.accuracy_without_tta):+.2f}", f"{m.weight:.2f}"] for m in summaries]
    return _table(["model", "parameters (count)", "time per epoch (s)", "accuracy per fold (%)", "OOF accuracy, no TTA (%)",
                   "OOF accuracy, with TTA (%)", "TTA gain (points)", "ensemble weight"], rows, "models-table")


def pseudo_label_section(trained: dict) -> list[str]:
    """Per student fold: how many test images its teacher labelled, at which threshold, and how far the
    teacher's confident predictions held on its own held-out rows."""
    rows = []
    for name, folds in trained.items():
        for output in folds:
            manifest = read_manifest(output.folder)
            pseudo = manifest.get("pseudo_labels")
            if pseudo:
                accuracy = pseudo["teacher_accuracy_above_threshold"]
                auto = " (auto)" if pseudo.get("threshold_rule", "fixed") != "fixed" else ""
                rows.append([name, str(manifest["fold"]), pseudo["teacher"], f"{pseudo['threshold']:.4g}{auto}",
                             f"{pseudo['rows']:,} of {pseudo['test_images']:,}",
                             f"{100 * pseudo['share_of_training_rows']:.1f}",
                             f"{100 * pseudo['teacher_held_out_above_threshold']:.1f}",
                             "" if accuracy is None else f"{100 * accuracy:.2f}"])
    if not rows:
        return []
    return ["<h2>Pseudo-labels</h2>",
            '<p class="note">Test images the teacher\'s model of the same fold gave at least the threshold\'s top '
            "probability joined the student's training, labelled with the teacher's class. That teacher never saw the "
            "fold's held-out rows, so the student's held-out score stays honest. The last two columns are the teacher's "
            "own held-out rows: how many reached the threshold, and how many of those it got right.</p>",
            _table(["model", "fold", "teacher", "threshold (top probability)", "test images used",
                    "added to the training rows (%)", "teacher's held-out rows at the threshold (%)",
                    "teacher's accuracy there (%)"], rows, "pseudo-labels-table")]


def _study_images(spec) -> list[str]:
    images = []
    for study_dir in sorted((competition_root(spec.name) / "tuning").glob("*/")):
        for png in sorted(study_dir.glob("*.png")):
            images.append(_img(base64.b64encode(png.read_bytes()).decode(), f"{study_dir.name} {png.stem}",
                               f"Optuna study '{study_dir.name}': {png.stem.replace('_', ' ')}"))
    return images


def reliability_png(calibration: dict) -> str:
    plt = pyplot()

    figure, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.plot([0, 1], [0, 1], ":", color="#888", label="perfectly calibrated")
    for key, label, colour in (("reliability_before", "before", "#e45756"), ("reliability_after", "after (cross-fitted)", "#4c78a8")):
        points = calibration[key]
        ax.plot([p["confidence"] for p in points], [p["accuracy"] for p in points], "-o", ms=4, color=colour, label=label)
    ax.set_xlabel("confidence (top class probability)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize=8)
    return _figure_png(figure)


def calibration_section(report: dict) -> list[str]:
    """Temperatures, log loss and calibration error before and after, and the reliability diagram."""
    rule, calibration = report.get("decision_rule"), report.get("calibration")
    if rule and "thresholds" in rule:
        values = ", ".join(f"{t:.3f}" for t in rule["thresholds"])
        return ["<h2>Label thresholds</h2>",
                '<p class="note">The metric scores label sets, so each label got its own threshold, fitted on out-of-fold '
                f"rows for the metric: {html.escape(values)} (in label order; a label is in an image's set above it). They "
                "are kept only when they beat a flat 0.5 on rows they were not fitted on.</p>",
                _table(["cross-fitted CV", "score"],
                       [["flat 0.5", f"{rule['cross_fitted_without']:.4f}"],
                        ["fitted thresholds", f"{rule['cross_fitted_with']:.4f}"]], "decision-table"),
                f'<p class="note">The thresholds were {"applied" if rule["applied"] else "<b>not applied</b>: they lost on held-out rows"}.</p>']
    if rule:
        weights = ", ".join(f"{w:.2f}" for w in rule["class_weights"])
        return ["<h2>Decision rule</h2>",
                '<p class="note">The metric rewards rare classes, so a rule was fitted on out-of-fold rows: the predicted '
                f"class is the most probable one after multiplying each class's probability by a weight: "
                f"{html.escape(weights)} (in class order). It is kept only when it wins cross-fitted.</p>",
                _table(["cross-fitted CV", "score"],
                       [["without the rule", f"{rule['cross_fitted_without']:.4f}"],
                        ["with the rule", f"{rule['cross_fitted_with']:.4f}"]], "decision-table"),
                f'<p class="note">The rule was {"applied" if rule["applied"] else "<b>not applied</b>: it lost on held-out rows"}.</p>']
    if not calibration:
        return []
    temperatures = ", ".join(f"{name} {value:.3f}" for name, value in calibration["temperatures"].items())
    return ["<h2>Calibration</h2>",
            '<p class="note">The competition scores probabilities, so each model and then the blend were divided by a '
            f"temperature fitted on out-of-fold rows (above 1 softens, below 1 sharpens): {html.escape(temperatures)}.</p>",
            _table(["", "log loss (nats per image)", "expected calibration error"],
                   [["before", f"{calibration['log_loss_before']:.4f}", f"{calibration['ece_before']:.4f}"],
                    ["after (cross-fitted)", f"{calibration['log_loss_after']:.4f}", f"{calibration['ece_after']:.4f}"]],
                   "calibration-table"),
            _img(reliability_png(calibration), "reliability diagram",
                 "Reliability: out-of-fold rows binned by the top class's probability; a calibrated model lies on the "
                 "diagonal.")]


def pairs_png(prepared, pairs: list[tuple[str, int, int]]) -> str:
    """Near-duplicate pairs side by side: (kind, row, other row), kind `train` or `test` for the other."""
    plt = pyplot()

    data = prepared.load()
    figure, axes = plt.subplots(2, len(pairs), figsize=(1.6 * len(pairs), 3.4), squeeze=False)
    for column, (kind, row, other) in enumerate(pairs):
        second = data.train_images[other] if kind == "train" else data.test_images[other]
        for ax, image, title in ((axes[0][column], data.train_images[row], f"train {data.train_ids[row]}"),
                                 (axes[1][column], second, f"{kind} {(data.train_ids if kind == 'train' else data.test_ids)[other]}")):
            ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray")
            ax.set_title(title, fontsize=7)
            ax.axis("off")
    return _figure_png(figure)


def duplicates_section(ctx: Context) -> list[str]:
    """What the folds stage found: near-duplicate pairs within train and between train and test."""
    found = read_manifest(ctx.folds.folder).get("duplicates")
    if not found:
        return []
    grouped = ctx.spec.folds.duplicates == "group"
    parts = ["<h2>Near-duplicates</h2>",
             f'<p class="note">Images whose perceptual hashes differ in at most {found["max_distance_bits"]} of 64 bits. '
             f"{found['train_pairs']:,} pairs within the training set "
             f"({'each group kept in one fold, so CV never validates on a copy of a training image' if grouped else 'not grouped: folds.duplicates is ignore'}); "
             f"{found['train_test_pairs']:,} pairs between training and test images (the leaderboard rewards "
             "memorising those; CV cannot see it).</p>"]
    examples = ([("train", i, j) for i, j, _ in found["train_examples"][:4]]
                + [("test", i, j) for i, j, _ in found["train_test_examples"][:4]])
    if examples:
        parts.append(_img(pairs_png(ctx.prepared, examples), "near-duplicate pairs",
                          "A few near-duplicate pairs: top, a training image; below, its near-copy."))
    if ctx.spec.folds.group_column:
        parts.append(f'<p class="note">Rows sharing a value of <b>{html.escape(ctx.spec.folds.group_column)}</b> '
                     "are kept in one fold too.</p>")
    return parts


def rare_classes_note(ctx: Context) -> list[str]:
    """Rows of classes with fewer images than folds: they always train, and no out-of-fold score counts them."""
    never = read_manifest(ctx.folds.folder).get("never_held_out")
    if not never:
        return []
    classes = ", ".join(f"{html.escape(label)} ({n})" for label, n in never["classes"].items())
    return ["<h2>Rows never held out</h2>",
            f'<p class="note">{never["rows"]:,} training rows belong to classes with fewer images than the '
            f"{ctx.spec.folds.n_splits} folds: they train every fold model and are never held out, so CV, the "
            f"ensemble weights and calibration are computed without them. Classes: {classes}.</p>"]


def plan_section(plan) -> list[str]:
    """The time-budget plan: what was chosen, estimated and measured, and why."""
    actual = plan.actual.get("seconds", {})
    rows = []
    for p in plan.runs:
        measured = sum(v for k, v in actual.items() if k.startswith(f"train {p.run.name} fold "))
        rows.append([p.run.name, p.family, ",".join(map(str, p.folds)), p.run.epochs, execution(p.run),
                     f"{p.estimated_seconds / 60:.2f}", f"{measured / 60:.2f}" if measured else "-", p.precision_reason])
    speeds = [[name, precision, f"{v['train_images_per_second']:,.0f}", f"{v['predict_images_per_second']:,.0f}"]
              for name, table in plan.speeds.items() for precision, v in table.items()]
    notes = [f"<li>{html.escape(n)}</li>" for n in plan.notes + [f"{k} not measured: {v}" for k, v in
                                                                 plan.precisions_left_out.items()]]
    study = plan.study
    if study is not None and study.done:
        found = (f"best objective {study.best_value:.4f} (the run's own parameters: {study.own_recipe_value}) with "
                 f"{study.best_params}" if study.best_params else "no trial completed; the run kept its own parameters")
        notes.insert(0, f"<li>Optuna study <b>{html.escape(study.study)}</b> on {html.escape(study.run)}: "
                        f"{study.trials_run} trials in {study.seconds_spent / 60:.1f} min ({study.trials_in_study} in the "
                        f"study so far) over {html.escape(', '.join(study.search_space))}; {html.escape(found)}</li>")
    return ["<h2>Plan</h2>",
            f'<p class="note">Budget {plan.budget_seconds / 60:.1f} min on {html.escape(plan.machine)}; TTA views '
            f"{'+'.join(plan.tta)}, ensemble {html.escape(plan.ensemble)}; setup took {plan.setup_seconds:.0f} s and "
            f"{plan.reserve_seconds:.0f} s were kept for the ensemble, the upload and this report.</p>",
            _table(["run", "family", "folds", "epochs", "precision", "planned (min)", "actual (min)", "why this precision"],
                   rows, "plan-table"),
            "<p>Measured speeds (images per second) of every candidate:</p>",
            _table(["candidate", "precision", "training (img/s)", "inference (img/s)"], speeds, "probe-table"),
            f"<ul>{''.join(notes)}</ul>"]


def _insight(ctx: Context, trained: dict, summaries: list) -> list[str]:
    """Grad-CAM and activation maximisation of the best model that has convolutions, on its first fold."""
    from pipelines.report.insight import fold_insight, last_conv
    from pipelines.stages.predict import load_fold_model

    for summary in sorted(summaries, key=lambda m: -m.accuracy_with_tta):
        first = trained[summary.name][0]
        if last_conv(load_fold_model(first.folder, ctx.spec, ctx.runtime).net) is not None:
            folder = fold_insight(ctx.spec, summary.name, first, ctx.data, ctx.runtime)
            return insight_section(ctx.spec, summary.name, folder, ctx.data.images_nhwc, ctx.data.labels_host())
    return []


def single_label_sections(ctx: Context, trained: dict, summaries: list, labels: np.ndarray, oof_index: np.ndarray,
                          oof_probs: np.ndarray) -> list[str]:
    """Where the ensemble errs, one class per image: the confusion matrix, the most confused pairs, per-class
    scores, the highest-loss images, and what the best model looks at."""
    names = ctx.spec.display_names
    confusion_png, pairs = confusion(labels[oof_index], oof_probs.argmax(1), names)
    return [
        "<h2>Where the ensemble errs</h2>",
        _img(confusion_png, "confusion matrix", "Rows: true class; columns: predicted class; counts of out-of-fold images."),
        "<p>Most confused pairs (out of fold):</p>",
        _table(["true class", "predicted as", "images (count)", "share of the true class (%)"], pairs, "confused-table"),
        "<p>Per class (out of fold, the ensemble's decisions):</p>",
        per_class_table(labels[oof_index], oof_probs.argmax(1), names),
        high_loss_gallery(ctx.data.images_nhwc, labels, oof_probs, oof_index, names),
        *_insight(ctx, trained, summaries),
    ]


def write_report(ctx: Context, trained: dict, ensemble_folder: Path, report: dict) -> Path:
    """Render the page for a finished run; returns its path."""
    spec = ctx.spec
    summaries = model_summaries(trained, report)
    bar_rows = [{"name": m.name, "oof_accuracy": m.accuracy_with_tta, "parameters": m.parameters,
                 "train_seconds": m.train_seconds} for m in summaries]
    sections = [_img(learning_curves(name, folds), f"learning curves of {name}",
                     f"{name}: training loss (dashed) and validation loss (solid), and validation accuracy, "
                     f"per epoch, one line per fold.") for name, folds in trained.items()]
    oof_index = np.load(ensemble_folder / "oof_index.npy")
    oof_probs = np.load(ensemble_folder / "oof_probs.npy")
    labels = ctx.data.labels_host()
    if spec.task == "multi_label":  # per-label scores, co-occurrence and reliability (report/multilabel.py)
        errors = multilabel_sections(labels[oof_index], oof_probs, spec.display_names, spec.metric.bind().allow_empty,
                                     read_manifest(ensemble_folder)["lineage"].get("thresholds"), ctx.data.images_nhwc,
                                     oof_index)
    else:
        errors = single_label_sections(ctx, trained, summaries, labels, oof_index, oof_probs)
    study_images = _study_images(spec)
    synthetic = {"synthetic": " (synthetic data)"}
    log_rows = [[r["time"], r["profile"], r["config_hash"], r["git_commit"][:12], f'{r["metric"]} {r["cv_score"]}',
                 r["public_score"] + synthetic.get(r["data"], "") if r["public_score"] else "",
                 r["private_score"] + synthetic.get(r["data"], "") if r["private_score"] else "", r["status"]]
                for r in read_log(spec)]
    ensemble = report["ensemble"]
    parts = [
        f"<h1>{html.escape(spec.title)}</h1>",
        ('<p class="synthetic" id="synthetic-banner"><b>SYNTHETIC stand-in data:</b> every score on this page is on '
         "procedurally drawn images standing in for a data set that cannot be reached offline, not on the real "
         "competition's.</p>") if spec.synthetic else "",
        f'<p class="sub">competition <b>{html.escape(spec.name)}</b> (Kaggle slug {html.escape(spec.kaggle_slug)}), '
        f"profile <b>{html.escape(ctx.profile_name)}</b>, folds {spec.fold_indices(ctx.profile)} of {spec.folds.n_splits}, "
        f"TTA views {'+'.join(ctx.profile.tta)}, device {ctx.runtime.device}; git {git_commit()[:12]}; "
        f"written {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}</p>",
        "<h2>Models</h2>",
        '<p class="note">Accuracy is the share of correctly classified held-out images, in percent. "OOF" rows are the '
        "images of the trained folds that each fold model never saw (out of fold). TTA gain is the OOF accuracy with the "
        "test-time-augmentation views minus without. Weight is the model's share in the ensemble.</p>",
        _models_table(summaries),
        *pseudo_label_section(trained),
        "<h2>Ensemble</h2>",
        '<p class="note">Cross-fitted: the weights (and temperatures) fitted on the other groups of rows (folds, or '
        "sub-splits of one fold) and scored on the held-out group, so nothing is scored on the rows it was fitted on: "
        "the figure to choose final submissions by. In-sample: fitted and scored on the same rows (optimistic).</p>",
        _table(["CV", "OOF rows (images)", f"OOF {spec.metric} (the competition's metric)", "OOF accuracy (%)",
                "OOF log loss (nats per image)"],
               [[f"{label} ({report['method']})", f"{report['oof_rows']:,}", f"{scores['oof_score']:.4f}",
                 f"{100 * scores['oof_accuracy']:.2f}", f"{scores['oof_log_loss']:.4f}"]
                for label, scores in (("cross-fitted", report["cross_fitted"]), ("in-sample", ensemble))],
               "ensemble-table"),
        *calibration_section(report),
        _img(comparison_bars(bar_rows), "model comparison", "Models side by side: OOF accuracy with TTA, size, and total "
             "training time over all trained folds."),
        "<h2>Learning curves</h2>", overlaid_curves(trained, spec.metric.bind().label), *sections,
        *errors,
        "<h2>Augmentation</h2>",
        augmentation_preview(spec, list(dict.fromkeys([run.augment.policy for run, _ in ctx.work()] + list(SEARCHED))),
                             ctx.data.images_nhwc[oof_index[:PREVIEW_IMAGES]], spec.folds.seed),
    ]
    parts += duplicates_section(ctx) + rare_classes_note(ctx)
    if ctx.plan is not None:
        parts += plan_section(ctx.plan)
    if study_images:
        parts += ["<h2>Hyperparameter studies</h2>", *study_images]
    metric = spec.metric.bind()
    parts += ["<h2>Submissions</h2>",
              f'<p class="note">CV is the ensemble\'s out-of-fold score by the competition\'s metric ({spec.metric}); '
              "public and private are the leaderboard's scores on the two halves of the hidden test labels. The "
              "host shows private scores only after the competition's deadline (`make scores` fills them in then), "
              "so every private score here was seen after the deadline, never while choosing a submission.</p>",
              *cv_vs_leaderboard(read_log(spec), metric.label, metric.greater_is_better, spec.synthetic),
              _table(["time (UTC)", "profile", "config hash", "git commit", "CV (metric, score)", "public score",
                      "private score (after the deadline)", "status"], log_rows, "submissions-table") if log_rows else "<p>No submissions yet.</p>"]
    # On load, count images that failed to decode; a test reads this back from the rendered DOM.
    check = ("<script>window.addEventListener('load',function(){var imgs=[].slice.call(document.images);"
             "var ok=imgs.filter(function(i){return i.complete&&i.naturalWidth>0}).length;"
             "document.body.setAttribute('data-images-ok',ok+'/'+imgs.length);});</script>")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(spec.name)} run report</title>"
            f"<style>{PAGE_STYLE}</style></head><body>{''.join(parts)}{check}</body></html>")
    path = competition_root(spec.name) / "report.html"
    atomic.write_text(path, page)
    print(f"report: {path}")
    return path
