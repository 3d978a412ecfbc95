"""Submission formats: what a row of a submission holds for a competition's metric. The pipeline writes
and checks its files with it and the local host reads uploads with it, so the two cannot disagree.

    label          id,<label column>        one class per row (accuracy, F1, kappa, balanced accuracy)
    ranked_labels  id,<label column>        up to k classes separated by spaces, best first (MAP@k, top-k)
    probabilities  id,<one column a class>  probabilities in [0, 1], each row summing to 1 (log loss, AUC);
                   id,<one column>          with two classes: the probability of the second (positive) one
Multi-label (competition/metrics.py: a metric's task):
    tags           id,<label column>        the image's labels, separated by spaces, in the classes' order
                                            (F-beta); never empty unless the metric allows it
    probabilities  id,<one column a label>  one probability in [0, 1] per label, independent of the others
                                            (mean column-wise AUC, multi-label log loss)
The prediction columns are the sample submission's; probability columns follow the classes' order.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from competition.metrics import Metric, Submission, label_sets, map_at_k, ranked

SUM_TOLERANCE = 1e-3  # a probability row may miss 1 by this much (6 significant digits per cell)


@dataclass(frozen=True)
class SubmissionFormat:
    kind: Submission
    id_column: str
    columns: tuple[str, ...]  # the prediction columns, as the sample submission names them
    classes: tuple[str, ...]  # in the competition's order (probability columns follow it)
    k: int | None = None
    multi_label: bool = False
    allow_empty: bool = False  # tags: a row may hold no label

    @classmethod
    def of(cls, metric: Metric, id_column: str, label_column: str, classes: list[str], header: list[str]) -> "SubmissionFormat":
        """The format for `metric`, checked against the sample submission's header: ValueError naming the
        mismatch otherwise."""
        header = [h.strip() for h in header]
        if not header or header[0] != id_column:
            raise ValueError(f"its first column is '{header[0] if header else ''}', not the id column '{id_column}'")
        columns = tuple(header[1:])
        if metric.submission == "probabilities" and metric.multi_label:
            if columns != tuple(classes):
                raise ValueError(f"prediction columns {','.join(columns)[:200]}; a submission scored by {metric.label} has "
                                 f"one probability column per label, named and ordered as the labels: "
                                 f"{','.join(classes)[:200]}")
        elif metric.submission == "probabilities":
            if len(columns) != len(classes) and not (len(classes) == 2 and len(columns) == 1):
                raise ValueError(f"{len(columns)} prediction columns; a submission scored by {metric.label} has one "
                                 f"probability column per class ({len(classes)})" + (" or one" if len(classes) == 2 else ""))
        elif columns != (label_column,):
            raise ValueError(f"prediction columns {','.join(columns)}; a submission scored by {metric.label} has the one "
                             f"column '{label_column}'")
        return cls(metric.submission, id_column, columns, tuple(classes), metric.k, metric.multi_label,
                   metric.allow_empty)

    @property
    def header(self) -> list[str]:
        return [self.id_column, *self.columns]

    def cells(self, probs: np.ndarray) -> list[str]:
        """The prediction cells of one row, from its class probabilities."""
        if self.kind == "label":
            return [self.classes[int(probs.argmax())]]
        if self.kind == "ranked_labels":
            return [" ".join(self.classes[i] for i in ranked(probs[None, :], self.k)[0])]
        if self.kind == "tags":
            return [" ".join(self.classes[i] for i in np.flatnonzero(label_sets(probs[None, :], self.allow_empty)[0]))]
        values = probs[1:] if len(self.columns) == 1 and not self.multi_label else probs
        return [f"{float(p):.6g}" for p in values]

    def parse(self, cells: list[str]):
        """One row's prediction: a class number, a list of class numbers, or a probability vector.
        ValueError naming the column and the fix when the cells do not hold one."""
        index = {label: i for i, label in enumerate(self.classes)}
        if self.kind == "label":
            label = cells[0].strip()
            if label not in index:
                raise ValueError(f"'{self.columns[0]}' is '{label[:40]}', not one of the competition's classes")
            return index[label]
        if self.kind == "ranked_labels":
            labels = cells[0].split()
            if not 1 <= len(labels) <= self.k:
                raise ValueError(f"'{self.columns[0]}' holds {len(labels)} labels; give 1 to {self.k}, separated by spaces")
            unknown = [label for label in labels if label not in index]
            if unknown:
                raise ValueError(f"'{self.columns[0]}' names '{unknown[0][:40]}', not one of the competition's classes")
            return [index[label] for label in labels]
        if self.kind == "tags":
            tags = cells[0].split()
            if not tags and not self.allow_empty:
                raise ValueError(f"'{self.columns[0]}' is empty; give at least one label, separated by spaces")
            unknown = [tag for tag in tags if tag not in index]
            if unknown:
                raise ValueError(f"'{self.columns[0]}' names '{unknown[0][:40]}', not one of the competition's labels")
            chosen = np.zeros(len(self.classes))
            chosen[[index[tag] for tag in tags]] = 1.0
            return chosen
        values = []
        for column, cell in zip(self.columns, cells):
            try:
                value = float(cell)
            except ValueError:
                raise ValueError(f"'{column}' is '{cell[:40]}', not a number") from None
            if not 0.0 <= value <= 1.0:  # also refuses nan and inf
                raise ValueError(f"'{column}' is {cell[:40]}; probabilities lie between 0 and 1")
            values.append(value)
        if self.multi_label:
            return np.array(values)
        if len(values) == 1:
            return np.array([1.0 - values[0], values[0]])
        if abs(sum(values) - 1.0) > SUM_TOLERANCE:
            raise ValueError(f"the probabilities sum to {sum(values):.4f}; each row must sum to 1")
        return np.array(values)


def score(metric: Metric, fmt: SubmissionFormat, predictions: list, labels: np.ndarray) -> float:
    """The metric over parsed predictions (`SubmissionFormat.parse`) of rows whose true classes are `labels`
    (multi-label: their 0/1 label matrix)."""
    if fmt.kind == "ranked_labels":
        if metric.name == "map_at_k":
            return map_at_k(predictions, labels, metric.k)
        return float(np.mean([label in row[: metric.k] for row, label in zip(predictions, labels)]))
    if fmt.kind == "label":
        probs = np.eye(len(fmt.classes))[np.asarray(predictions, dtype=int)]
    elif fmt.kind == "tags":  # 0/1 per label: the metric takes exactly the labels given
        probs = np.stack(predictions) if predictions else np.zeros((0, len(fmt.classes)))
    else:
        probs = np.stack(predictions)
    return metric.score(probs, labels)
