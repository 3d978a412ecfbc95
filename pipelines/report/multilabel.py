"""The report's error sections for a multi-label competition, in place of the confusion matrix and the
per-class table: per label its images, precision, recall and F1 at the submitted label sets; the label
co-occurrence matrix beside the matrix of which label was given where another was missed; the images it
gets most wrong; and each label's reliability (how often a label is there, against the probability it
was given).

Every figure reads the ensemble's out-of-fold probabilities, thresholds already applied (a label is in a
set above 0.5), and the 0/1 label matrix of the same rows; reliability undoes the thresholds' shift.
"""
from __future__ import annotations

import numpy as np

from competition.metrics import label_sets
from pipelines.recipe.kernel_inference import logit, sigmoid
from pipelines.report.insight_sections import high_loss_sets_gallery
from pipelines.report.parts import count_heatmap, figure_png, img, pyplot, table

RELIABILITY_BINS = 10


def per_label_rows(labels: np.ndarray, chosen: np.ndarray, names: list[str]) -> list[list]:
    """Per label: images holding it, images given it, precision, recall and F1 (in percent)."""
    rows = []
    for c, name in enumerate(names):
        true, given = labels[:, c].astype(bool), chosen[:, c].astype(bool)
        hits = int((true & given).sum())
        precision = hits / given.sum() if given.any() else 0.0
        recall = hits / true.sum() if true.any() else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append([name, int(true.sum()), int(given.sum()), f"{100 * precision:.1f}", f"{100 * recall:.1f}",
                     f"{100 * f1:.1f}"])
    return rows


def co_occurrence_png(labels: np.ndarray, chosen: np.ndarray, names: list[str]) -> tuple[str, list[list]]:
    """Two panels: how often two labels hold together (true sets), and how often label j was given to an
    image while its label i was missed (the multi-label confusion); and that matrix's largest cells."""
    plt = pyplot()

    true, given = labels.astype(np.int64), chosen.astype(np.int64)
    together = true.T @ true
    missed, wrong = true * (1 - given), (1 - true) * given
    mistaken = missed.T @ wrong  # [i, j]: images missing label i and wrongly given label j
    size = min(4 + 0.35 * len(names), 14)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size, size * 0.85))
    count_heatmap(axes[0], together, names, fontsize=6)
    axes[0].set(title="Label co-occurrence (true sets; diagonal: images per label)", xlabel="label", ylabel="label")
    count_heatmap(axes[1], mistaken, names, fontsize=6)
    axes[1].set(title="Missed label (row) where another was given (column)", xlabel="wrongly given", ylabel="missed")
    cells = [(mistaken[i, j], i, j) for i in range(len(names)) for j in range(len(names)) if mistaken[i, j]]
    pairs = [[names[i], names[j], int(n), f"{100 * n / max(true[:, i].sum(), 1):.1f}"]
             for n, i, j in sorted(cells, reverse=True)[:8]]
    return figure_png(figure), pairs


def label_reliability_png(labels: np.ndarray, probs: np.ndarray, names: list[str]) -> str:
    """Per label, out-of-fold rows binned by that label's probability: the share that hold it."""
    plt = pyplot()

    figure, axes = plt.subplots(figsize=(5.4, 4.4))
    axes.plot([0, 1], [0, 1], ":", color="#888", label="perfectly calibrated")
    edges = np.linspace(0, 1, RELIABILITY_BINS + 1)
    for c, name in enumerate(names[:20]):
        which = np.clip(np.digitize(probs[:, c], edges[1:-1]), 0, RELIABILITY_BINS - 1)
        points = [(probs[which == b, c].mean(), labels[which == b, c].mean()) for b in range(RELIABILITY_BINS)
                  if (which == b).any()]
        axes.plot(*zip(*points), "-o", ms=3, lw=1, label=name)
    axes.set(xlabel="the label's probability", ylabel="share of images holding it",
             title="Per-label reliability (out of fold)")
    axes.legend(fontsize=6, ncol=2, loc="upper left")
    return figure_png(figure)


def multilabel_sections(labels: np.ndarray, probs: np.ndarray, names: list[str], allow_empty: bool,
                        thresholds: list[float] | None, images: np.ndarray, index: np.ndarray) -> list[str]:
    """The error sections of the report for out-of-fold `probs` (`thresholds` applied, where there are
    any) and their label matrix, the rows `index` of the training `images`. Reliability is drawn on the
    probabilities before the thresholds moved them."""
    chosen = label_sets(probs, allow_empty)
    before = probs if thresholds is None else sigmoid(logit(probs) + logit(np.asarray(thresholds)))
    co_png, pairs = co_occurrence_png(labels, chosen, names)
    return [
        "<h2>Where the ensemble errs</h2>",
        "<p>Per label (out of fold, the label sets a submission would hold):</p>",
        table(["label", "images holding it (count)", "images given it (count)", "precision (%)", "recall (%)", "F1 (%)"],
              per_label_rows(labels, chosen, names), "per-label-table"),
        img(co_png, "label co-occurrence", "Left: images holding both labels (true sets). Right: images that miss the "
            "row's label while given the column's wrongly, counts of out-of-fold images."),
        "<p>Most frequent mix-ups (out of fold):</p>",
        table(["missed label", "wrongly given instead", "images (count)", "share of the missed label's images (%)"], pairs,
              "confused-table"),
        high_loss_sets_gallery(images, labels, chosen, probs, index, names),
        img(label_reliability_png(labels, before, names), "per-label reliability",
            "Each label's out-of-fold probabilities (before its threshold) in ten bins against the share of those "
            "images that hold the label; a calibrated label lies on the diagonal."),
    ]
