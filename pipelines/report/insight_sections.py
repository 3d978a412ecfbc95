"""Report sections that look inside a run, as a course report shows it: the out-of-fold images the
ensemble gets most wrong, per-class scores, every model's learning curves overlaid with the training
loss of every step, what each augmentation policy does to the same images, and the submissions' CV
against their leaderboard scores with the two final submissions recommended from CV.

Each function takes plain arrays and rows and returns HTML (through report_parts.py); report.py places them.
"""
from __future__ import annotations

import csv
import html
from pathlib import Path

import numpy as np

from competition.spec import CompetitionSpec
from pipelines.report.parts import figure_png, img, pyplot, table

GALLERY_IMAGES = 24
PREVIEW_IMAGES = 8
# The second final submission must differ from the first in at least this share of test rows (labels)
# or mean absolute probability: two near-copies hedge nothing.
DIFFERENT_ENOUGH = 0.01


def _show(axes, image: np.ndarray) -> None:
    """An H×W×C uint8 image on `axes`, grey or colour, without ticks."""
    if image.shape[-1] == 1:
        axes.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        axes.imshow(image)
    axes.set_xticks([])
    axes.set_yticks([])


# --- the images it gets most wrong ------------------------------------------------------------------------


def _gallery(images: np.ndarray, rows: np.ndarray, titles: list[str], alt: str, caption: str) -> str:
    """`images[rows]` in a grid of eight columns, each titled (in red: these are errors)."""
    plt = pyplot()
    columns = 8
    grid_rows = max((len(rows) + columns - 1) // columns, 1)
    figure, axes = plt.subplots(grid_rows, columns, figsize=(columns * 1.55, grid_rows * 1.9), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row, title in zip(axes.flat, rows, titles):
        ax.axis("on")
        _show(ax, images[row])
        ax.set_title(title, fontsize=7, color="#b22")
    return img(figure_png(figure), alt, caption)


def high_loss_gallery(images: np.ndarray, labels: np.ndarray, probs: np.ndarray, index: np.ndarray,
                      names: list[str], count: int = GALLERY_IMAGES) -> str:
    """The `count` out-of-fold images with the highest loss (-log of the true class's probability)."""
    truth = labels[index]
    loss = -np.log(np.clip(probs[np.arange(len(index)), truth], 1e-15, 1.0))
    worst = np.argsort(-loss, kind="stable")[:count]
    titles = [f"true {names[truth[row]][:12]}\npred {names[int(probs[row].argmax())][:12]} {probs[row].max():.2f}"
              for row in worst]
    return _gallery(images, index[worst], titles, "highest-loss out-of-fold images",
                    f"The {len(worst)} out-of-fold images the ensemble gets most wrong (highest loss, -log of the true "
                    "class's probability): the true class, the predicted class and its probability. Often a mislabelled "
                    "image, or a pair of classes the models cannot tell apart.")


def high_loss_sets_gallery(images: np.ndarray, labels: np.ndarray, chosen: np.ndarray, probs: np.ndarray,
                           index: np.ndarray, names: list[str], count: int = GALLERY_IMAGES) -> str:
    """Multi-label: the `count` out-of-fold images with the highest binary log loss over their labels, each
    titled with its true set and the set a submission would give (`labels`, `chosen`, `probs`: rows of `index`)."""
    clipped = np.clip(probs.astype(np.float64), 1e-15, 1 - 1e-15)
    loss = -(labels * np.log(clipped) + (1 - labels) * np.log(1 - clipped)).sum(axis=1)
    worst = np.argsort(-loss, kind="stable")[:count]

    def tags(row: np.ndarray) -> str:
        return " ".join(names[c][:8] for c in np.flatnonzero(row)) or "-"

    titles = [f"missed {tags(labels[row] & (1 - chosen[row]))}\nwrong {tags(chosen[row] & (1 - labels[row]))}"
              for row in worst]
    return _gallery(images, index[worst], titles, "highest-loss out-of-fold images",
                    f"The {len(worst)} out-of-fold images the ensemble gets most wrong (highest log loss summed over "
                    "the labels): the labels the submission's set would miss, and those it would give wrongly.")


# --- per-class scores --------------------------------------------------------------------------------------


def per_class_table(labels: np.ndarray, predicted: np.ndarray, names: list[str]) -> str:
    k = len(names)
    rows = []
    for c in range(k):
        support, chosen = int((labels == c).sum()), int((predicted == c).sum())
        hits = int(((labels == c) & (predicted == c)).sum())
        precision = hits / chosen if chosen else 0.0
        recall = hits / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append([names[c], f"{support:,}", f"{chosen:,}", f"{100 * precision:.1f}", f"{100 * recall:.1f}",
                     f"{100 * f1:.1f}"])
    rows.sort(key=lambda r: float(r[5]))
    return table(["class (worst F1 first)", "OOF images (count)", "predicted as it (count)", "precision (%)",
                  "recall (%)", "F1 (%)"], rows, "per-class-table")


# --- learning curves, all models, per step ---------------------------------------------------------------


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return [r for r in csv.DictReader(fh) if r.get("train_loss")]


def overlaid_curves(trained: dict, metric_label: str) -> str:
    """Every model's validation score per epoch (mean over its folds) and its training loss per step
    (fold by fold, smoothed over ~1% of the steps), on shared axes."""
    plt = pyplot()
    figure, (steps_axes, score_axes, time_axes) = plt.subplots(1, 3, figsize=(15, 3.8))
    for colour, (name, folds) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"] * 4, trained.items()):
        per_epoch: dict[int, list[float]] = {}
        minutes: dict[int, list[float]] = {}  # training minutes at the end of each epoch
        for number, output in enumerate(folds):
            elapsed = 0.0
            for row in _rows(output.folder / "history.csv"):
                per_epoch.setdefault(int(row["epoch"]), []).append(float(row["val_score"] or row["val_accuracy"]))
                elapsed += float(row["seconds"]) / 60
                minutes.setdefault(int(row["epoch"]), []).append(elapsed)
            losses = np.array([float(r["train_loss"]) for r in _rows(output.folder / "iterations.csv")])
            if len(losses):
                window = max(len(losses) // 100, 1)
                smooth = np.convolve(losses, np.ones(window) / window, mode="valid")
                steps_axes.plot(np.arange(len(smooth)) + window, smooth, color=colour, lw=0.8, alpha=0.8,
                                label=name if number == 0 else None)
        epochs = sorted(per_epoch)
        score_axes.plot(epochs, [np.mean(per_epoch[e]) for e in epochs], "-o", ms=3, color=colour, label=name)
        time_axes.plot([np.mean(minutes[e]) for e in epochs], [np.mean(per_epoch[e]) for e in epochs], "-o", ms=3,
                       color=colour, label=name)
    steps_axes.set(xlabel="training step", ylabel="training loss", title="Training loss per step (every fold)")
    score_axes.set(xlabel="epoch", ylabel=f"validation {metric_label}", title="Validation score per epoch (mean of folds)")
    time_axes.set(xlabel="training minutes (one fold)", ylabel=f"validation {metric_label}",
                  title="Validation score by training time")
    for axes in (steps_axes, score_axes, time_axes):
        if axes.get_legend_handles_labels()[0]:
            axes.legend(fontsize=8)
    return img(figure_png(figure), "learning curves of every model",
               "Left: the training loss of every optimisation step, one line per fold, smoothed over about 1% of "
               "the steps (runs trained before per-step logging have none). Middle: each model's validation score "
               "per epoch, averaged over its folds. Right: the same scores against the minutes of training steps "
               "it took to reach them on this machine: which model buys the most score per minute.")


# --- what the augmentation does ------------------------------------------------------------------------------


def augmentation_preview(spec: CompetitionSpec, policies: list[str], images: np.ndarray, seed: int) -> str:
    """The same images through each policy (one row each, after the originals), drawn with a fixed seed."""
    from competition.recipe import AugmentConfig
    from pipelines.recipe.augment import albumentations_policy
    from pipelines.recipe.auto_augment import COLOUR_OPS, SEARCHED

    plt = pyplot()
    chosen = images[:PREVIEW_IMAGES]
    figure, axes = plt.subplots(len(policies) + 1, len(chosen), figsize=(len(chosen) * 1.3, (len(policies) + 1) * 1.45),
                                squeeze=False)
    rows = [("original", chosen)]
    for policy in policies:
        transform = albumentations_policy(AugmentConfig(policy=policy), spec, seed=seed)
        drawn = np.stack([transform(image=i)["image"].reshape(i.shape) if transform else i for i in chosen])
        note = " (no colour ops)" if spec.colour_defines_class and policy in SEARCHED else ""
        rows.append((policy + note, drawn))
    for r, (label, row_images) in enumerate(rows):
        for c, image in enumerate(row_images):
            _show(axes[r, c], image)
        axes[r, 0].set_ylabel(label, fontsize=8, rotation=0, ha="right", va="center")
    colour_note = (f" This competition's classes are defined by colour, so the searched policies leave out "
                   f"{', '.join(sorted(COLOUR_OPS)).lower()}." if spec.colour_defines_class else "")
    return img(figure_png(figure), "augmentation preview",
               f"The same {len(chosen)} training images through each augmentation policy (one random draw each, "
               f"seeded), flips and shifts included as training applies them.{colour_note}")


# --- CV against the leaderboard, and the two final submissions ----------------------------------------------


def _submission_cells(path: Path) -> list[list[str]] | None:
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            return [row[1:] for row in list(csv.reader(fh))[1:]]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def difference(a: list[list[str]], b: list[list[str]]) -> float:
    """How much two submissions differ: the share of rows with other labels, or the mean absolute
    difference of probabilities."""
    if len(a) != len(b) or not a:
        return 1.0
    try:
        return float(np.abs(np.array(a, dtype=float) - np.array(b, dtype=float)).mean())
    except ValueError:
        return float(np.mean([x != y for x, y in zip(a, b)]))


def final_choice(rows: list[dict], greater_is_better: bool) -> tuple[list[dict], str]:
    """The two final submissions by CV: the best, then the best that differs from it by at least
    DIFFERENT_ENOUGH (so the second hedges); the reasons in one paragraph."""
    scored = {r["predictions_digest"]: r for r in rows if r["cv_score"] and r["status"] in ("COMPLETE", "already-scored")}
    ranked = sorted(scored.values(), key=lambda r: float(r["cv_score"]), reverse=greater_is_better)
    if not ranked:
        return [], "No scored submission yet."
    best = ranked[0]
    cells = _submission_cells(Path(best["file"]))
    second, why = None, ""
    for row in ranked[1:]:
        other = _submission_cells(Path(row["file"]))
        gap = difference(cells, other) if cells is not None and other is not None else None
        if gap is None or gap >= DIFFERENT_ENOUGH:
            second = row
            why = ("its file is gone, so it cannot be compared" if gap is None else
                   f"it differs from the first in {100 * gap:.1f}% (labels, or mean probability)")
            break
    chosen = [best] + ([second] if second else [])
    text = (f"Choose by CV, not by the public leaderboard (which scores half the test set and rewards luck): "
            f"first {best['config_hash']} (CV {float(best['cv_score']):.4f}, the best); ")
    text += (f"second {second['config_hash']} (CV {float(second['cv_score']):.4f}), the best-CV submission that is not "
             f"a near-copy of the first: {why}." if second else
             f"no second: every other submission differs from it by less than {100 * DIFFERENT_ENOUGH:.0f}% of rows.")
    return chosen, text


def cv_vs_leaderboard(rows: list[dict], metric_label: str, greater_is_better: bool, synthetic: bool) -> list[str]:
    """The scatter of CV against the public (and private) score of every scored submission, and the
    recommendation."""
    points = [r for r in rows if r["cv_score"] and r["public_score"]]
    chosen, text = final_choice(rows, greater_is_better)
    if not points:
        return [f"<p>{html.escape(text)}</p>"]
    plt = pyplot()
    figure, axes = plt.subplots(figsize=(6.5, 4.6))
    cv = np.array([float(r["cv_score"]) for r in points])
    public = np.array([float(r["public_score"]) for r in points])
    axes.scatter(cv, public, color="#4c78a8", label="public score")
    private = [(float(r["cv_score"]), float(r["private_score"])) for r in points if r["private_score"]]
    if private:
        axes.scatter(*zip(*private), marker="x", color="#e45756", label="private score (seen after the deadline)")
    for r in chosen:
        axes.scatter([float(r["cv_score"])], [float(r["public_score"] or np.nan)], s=180, facecolors="none",
                     edgecolors="black", linewidths=1.5)
    low, high = float(min(cv.min(), public.min())), float(max(cv.max(), public.max()))
    axes.plot([low, high], [low, high], ":", color="#999", label="leaderboard = CV")
    axes.set(xlabel=f"CV {metric_label} (cross-fitted, out of fold)", ylabel=f"leaderboard {metric_label}",
             title="CV against the leaderboard" + (" (SYNTHETIC data)" if synthetic else ""))
    axes.legend(fontsize=8)
    caption = (f"Each submission's CV against its leaderboard scores; circled: the two recommended finals. {text}"
               + (" The scores are on a synthetic stand-in data set." if synthetic else ""))
    return [img(figure_png(figure), "CV against leaderboard", caption), f'<p id="final-choice">{html.escape(text)}</p>']


# --- what the best CNN looks at and responds to ---------------------------------------------------------------


def insight_section(spec: CompetitionSpec, name: str, folder: Path, images: np.ndarray, labels: np.ndarray) -> list[str]:
    """Grad-CAM overlays and activation maximisation of one fold model (pipelines/report/insight.py's cache)."""
    plt = pyplot()
    names = spec.display_names
    rows, cams = np.load(folder / "cam_rows.npy"), np.load(folder / "cam.npy").astype(np.float32)
    parts = [f"<h2>What {html.escape(name)} looks at</h2>"]
    if len(rows):
        classes = list(dict.fromkeys(int(labels[r]) for r in rows))
        per_class = max(int((labels[rows] == c).sum()) for c in classes)
        figure, axes = plt.subplots(len(classes), 2 * per_class, figsize=(2 * per_class * 1.4, len(classes) * 1.45),
                                    squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for r, c in enumerate(classes):
            for k, i in enumerate(np.flatnonzero(labels[rows] == c)):
                image = images[rows[i]]
                _show(axes[r, 2 * k], image)
                _show(axes[r, 2 * k + 1], image)
                axes[r, 2 * k + 1].imshow(cams[i], cmap="jet", alpha=0.45, vmin=0, vmax=1,
                                          extent=(-0.5, image.shape[1] - 0.5, image.shape[0] - 0.5, -0.5))
                axes[r, 2 * k].axis("on")
            axes[r, 0].set_ylabel(names[c][:14], fontsize=8, rotation=0, ha="right", va="center")
        parts.append(img(figure_png(figure), "Grad-CAM overlays",
                         f"Grad-CAM (the grad-cam library) of {name}, one fold model, on held-out images: each image, "
                         "then the regions that raised the score of its true class (red: most). Computed on the last "
                         "convolution, so the map is as coarse as that layer's feature map."))
    for what, caption in (("filters", "first-layer filters: the patch each of them responds to most, at the centre"),
                          ("classes", "classes: the input that raises each class's score most")):
        pictures = np.load(folder / f"{what}.npy")
        if not len(pictures):
            continue
        columns = min(len(pictures), 8)
        figure, axes = plt.subplots((len(pictures) + columns - 1) // columns, columns,
                                    figsize=(columns * 1.3, ((len(pictures) + columns - 1) // columns) * 1.5), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for i, (ax, picture) in enumerate(zip(axes.flat, pictures)):
            _show(ax, picture)
            ax.set_title(names[i][:12] if what == "classes" else f"filter {i}", fontsize=7)
        parts.append(img(figure_png(figure), f"activation maximisation of {what}",
                         f"Activation maximisation of {name}'s {caption} (optimised from faint noise, with a little "
                         "L2 and total-variation penalty so the picture stays readable; each stretched to full contrast)."))
    return parts
