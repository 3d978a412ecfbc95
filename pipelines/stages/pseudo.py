"""pseudo: test images a teacher run is confident about, labelled with its class, as extra training rows
for one fold of a student run (the recipe's `pseudo_labels:`).

Fold k of the student takes the teacher's fold-k test predictions: that teacher never saw fold k's
held-out rows, so neither does the student, and its held-out score (what the ensemble weighs it by)
stays honest. Test images that are near-copies of a fold-k held-out row are left out, as the folds
stage keeps duplicate pairs in one fold. A run never learns from pseudo-labels its own predictions
chose. The threshold is the teacher's top probability, given or `auto`: the lowest at which the
teacher's own held-out rows are right often enough; the count, the threshold and how the teacher fared
on its held-out rows above it go into the fold's manifest and the report.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from competition.errors import UserError
from competition.recipe import PseudoLabels
from pipelines.stages.artifacts import is_complete
from pipelines.stages.device_data import TrainingData
from pipelines.stages.predict import FoldOutput


@dataclass(frozen=True)
class PseudoRows:
    """The chosen test images: their row numbers in the test set and the teacher's classes for them."""

    test_rows: np.ndarray
    labels: np.ndarray
    summary: dict  # for the manifest and the report: teacher, threshold, count, the teacher's record


MIN_HELD_OUT_ROWS = 20  # `auto` judges the teacher on at least this many of its held-out rows


def auto_threshold(confidence: np.ndarray, right: np.ndarray, precision: float) -> float:
    """The lowest top probability at which the held-out rows at or above it are at least `precision`
    right (and there are MIN_HELD_OUT_ROWS of them); 1.0 (nothing passes) where no such level exists."""
    order = np.argsort(-confidence, kind="stable")
    accuracy = np.cumsum(right[order]) / np.arange(1, len(order) + 1)
    good = np.flatnonzero((accuracy >= precision) & (np.arange(1, len(order) + 1) >= MIN_HELD_OUT_ROWS))
    return float(confidence[order][good[-1]]) if len(good) else 1.0


def choose_rows(config: PseudoLabels, teacher: FoldOutput, labels: np.ndarray, train_rows: int) -> PseudoRows:
    """Test images whose teacher probability reaches the threshold, the most confident first, at most
    `max_share` × `train_rows` of them; `labels`: the training labels (to judge the teacher's held-out rows)."""
    oof_index, oof_probs = teacher.oof()
    held_out_confidence = oof_probs.max(axis=1)
    right = oof_probs.argmax(axis=1) == labels[oof_index]
    threshold = (auto_threshold(held_out_confidence, right, config.precision) if config.threshold == "auto"
                 else config.threshold)
    test_probs = teacher.test_probs()
    confidence, predicted = test_probs.max(axis=1), test_probs.argmax(axis=1)
    eligible = np.flatnonzero(confidence >= threshold)
    cap = int(config.max_share * train_rows)
    # Stable: the most confident first, ties by row number, so the same teacher picks the same rows.
    chosen = np.sort(eligible[np.argsort(-confidence[eligible], kind="stable")[:cap]])
    sure = held_out_confidence >= threshold
    summary = {"teacher": config.teacher, "threshold": round(threshold, 6),
               "threshold_rule": (f"auto: the teacher's held-out rows at least {config.precision:g} right"
                                  if config.threshold == "auto" else "fixed"),
               "rows": int(len(chosen)), "eligible": int(len(eligible)), "test_images": int(len(test_probs)),
               "share_of_training_rows": round(len(chosen) / max(train_rows, 1), 4),
               "teacher_held_out_above_threshold": round(float(sure.mean()), 4) if len(sure) else 0.0,
               "teacher_accuracy_above_threshold": round(float(right[sure].mean()), 4) if sure.any() else None,
               "teacher_output": f"{teacher.folder.parent.name}/{teacher.folder.name}", "teacher_digest": teacher.digest}
    return PseudoRows(chosen, predicted[chosen].astype(np.int64), summary)


def without_held_out_copies(rows: PseudoRows, held_out: np.ndarray, chosen: np.ndarray) -> PseudoRows:
    """`rows` less the test images that are near-duplicates of one of the fold's held-out rows
    (duplicates.py: perceptual hash, then pixels): trained on such a copy, the student would be scored
    on an image it learned, as when a duplicate pair is split across folds. `held_out`, `chosen`: the
    held-out rows' and the chosen test images' pixels (N, H, W, C), the latter in `rows` order."""
    from pipelines.stages.duplicates import near_pairs, perceptual_hashes, pixels_agree

    if len(rows.test_rows) == 0:
        return replace(rows, summary={**rows.summary, "held_out_copies_dropped": 0})
    pairs = pixels_agree(near_pairs(perceptual_hashes(held_out, "hashing held-out rows"),
                                    perceptual_hashes(chosen, "hashing pseudo-labelled images")), held_out, chosen)
    copies = sorted({j for _, j, _ in pairs})
    keep = np.setdiff1d(np.arange(len(rows.test_rows)), copies)
    summary = {**rows.summary, "rows": int(len(keep)), "held_out_copies_dropped": len(copies)}
    return PseudoRows(rows.test_rows[keep], rows.labels[keep], summary)


def describe(rows: PseudoRows) -> str:
    s = rows.summary
    trust = ("" if s["teacher_accuracy_above_threshold"] is None else
             f"; on its held-out rows {s['teacher_held_out_above_threshold']:.0%} reach it and "
             f"{s['teacher_accuracy_above_threshold']:.2%} of those are right")
    picked = s["rows"] + s.get("held_out_copies_dropped", 0)
    capped = f" (the most confident {picked:,} of {s['eligible']:,} above it: max_share)" if s["eligible"] > picked else ""
    copies = (f"; {s['held_out_copies_dropped']} near-copies of held-out rows left out"
              if s.get("held_out_copies_dropped") else "")
    rule = f" ({s['threshold_rule']})" if s["threshold_rule"] != "fixed" else ""
    return (f"{s['rows']:,} of {s['test_images']:,} test images pseudo-labelled by {s['teacher']} at top probability "
            f">= {s['threshold']:.4g}{rule}{capped}{trust}{copies}")


def teacher_output(folder: Path, teacher: str, student: str, fold: int) -> FoldOutput:
    if not is_complete(folder):
        raise UserError(f"{student} fold {fold} learns from {teacher}'s fold-{fold} predictions, which are not trained "
                        f"yet; train {teacher} first (`make train MODEL={teacher} FOLD={fold}`), or drop pseudo_labels")
    return FoldOutput(folder)


def require_in_memory(data: TrainingData, what: str) -> None:
    if not isinstance(data.images, torch.Tensor):
        raise UserError(f"{what}: pseudo_labels need the images in memory, and these are memory-mapped (too large); "
                        "drop pseudo_labels from this run")


def with_pseudo_rows(data: TrainingData, rows: PseudoRows) -> tuple[TrainingData, torch.Tensor]:
    """(the data with the pseudo-labelled test images appended after the training rows, their row numbers
    there): training draws batches from both alike; validation rows keep their numbers."""
    added = data.test_images[torch.from_numpy(rows.test_rows).to(data.test_images.device)]
    first = len(data.labels)
    extended = replace(data, images=torch.cat([data.images, added]),
                       images_nhwc=np.concatenate([data.images_nhwc, added.permute(0, 2, 3, 1).cpu().numpy()]),
                       labels=torch.cat([data.labels, torch.from_numpy(rows.labels).to(data.labels.device)]))
    return extended, torch.arange(first, first + len(rows.test_rows))
