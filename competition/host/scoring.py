"""Check a submission CSV against the hidden solution and score it by the competition's metric.

The metric (competition/metrics.py) and the submission format it asks for (competition/formats.py:
one label, k ranked labels, or probabilities) come from competition.json's `metric`. Every refusal is a
`SubmissionRejected` whose message names the problem (header, row, id, label or value), because the
Kaggle client shows that message to the participant verbatim.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from competition import metrics
from competition.formats import SubmissionFormat, score


class SubmissionRejected(Exception):
    pass


@dataclass(frozen=True)
class Solution:
    id_column: str
    label_column: str
    labels: dict[str, str]  # id -> true label (multi-label: the true labels, separated by spaces)
    usage: dict[str, str]  # id -> "Public" | "Private"
    allowed_labels: frozenset[str]
    metric: metrics.Metric
    format: SubmissionFormat

    @classmethod
    def load(cls, path: Path, id_column: str, label_column: str, allowed_labels: list[str], metric="accuracy",
             sample_header: list[str] | None = None) -> "Solution":
        """`metric` as competition.json writes it (a name or {name, k}); `sample_header`: the sample
        submission's header (default: id and label columns)."""
        try:
            chosen = metrics.bound(metric)
            fmt = SubmissionFormat.of(chosen, id_column, label_column, [str(x) for x in allowed_labels],
                                      sample_header or [id_column, label_column])
        except ValueError as exc:
            raise ValueError(f"{path.parent / 'competition.json'}: key 'metric': {exc}") from None
        labels, usage = {}, {}
        try:
            rows = list(csv.reader(io.StringIO(Path(path).read_bytes().decode("utf-8-sig"), newline="")))
        except FileNotFoundError:
            raise ValueError(f"{path}: missing; it holds the hidden labels (id,label,Usage)") from None
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not UTF-8 text; save it as UTF-8 CSV") from None
        except csv.Error as exc:
            raise ValueError(f"{path}: not a readable CSV ({exc})") from None
        expected = [id_column, label_column, "Usage"]
        if not rows or sorted(rows[0]) != sorted(expected):
            raise ValueError(f"{path}: header must be {','.join(expected)} (got {','.join(rows[0]) if rows else 'nothing'})")
        header = rows[0]
        for row_number, fields in enumerate(rows[1:], start=2):
            if not fields:
                continue
            if len(fields) != len(header):
                raise ValueError(f"{path} row {row_number}: {len(fields)} fields, expected {len(header)}")
            row = dict(zip(header, fields))
            sample_id = row[id_column]
            if sample_id in labels:
                raise ValueError(f"{path} row {row_number}: duplicate id {sample_id!r}")
            if row["Usage"] not in ("Public", "Private"):
                raise ValueError(f"{path} row {row_number}: Usage must be Public or Private (got {row['Usage']!r})")
            true = row[label_column].split() if chosen.multi_label else [row[label_column]]
            unknown = [label for label in true if label not in allowed_labels]
            if unknown:
                raise ValueError(f"{path} row {row_number}: label {unknown[0]!r} is not an allowed label")
            labels[sample_id] = row[label_column]
            usage[sample_id] = row["Usage"]
        if not labels:
            raise ValueError(f"{path}: no rows")
        for part in ("Public", "Private"):
            if part not in usage.values():
                raise ValueError(f"{path}: no {part} rows; give each half of the test set some (column Usage)")
        return cls(id_column, label_column, labels, usage, frozenset(allowed_labels), chosen, fmt)


@dataclass(frozen=True)
class Score:
    public: float
    private: float


def _examples(values, limit=3) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:limit])
    return shown + (", ..." if len(values) > limit else "")


def parse_submission(data: bytes, solution: Solution) -> dict[str, object]:
    """Return {id: prediction} (`SubmissionFormat.parse`), or raise SubmissionRejected naming the first problem."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SubmissionRejected("Submission is not UTF-8 text; upload a CSV file") from None
    if not text.strip():
        raise SubmissionRejected("Submission file is empty")
    try:
        return _parse_rows(list(csv.reader(io.StringIO(text, newline=""))), solution)
    except csv.Error as exc:  # NUL bytes, a field over csv's size limit, ...
        raise SubmissionRejected(f"Submission is not a readable CSV ({exc})") from None


def _parse_rows(all_rows: list[list[str]], solution: Solution) -> dict[str, object]:
    rows = iter(all_rows)
    header = [h.strip() for h in next(rows)]
    fmt = solution.format
    expected_header = fmt.header
    if header != expected_header:
        raise SubmissionRejected(
            f"Submission header must be exactly: {','.join(expected_header)} (got: {','.join(header)[:200]})"
        )
    predictions: dict[str, object] = {}
    first_seen: dict[str, int] = {}
    for line_number, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != len(expected_header):
            raise SubmissionRejected(f"Submission row {line_number} has {len(row)} fields; expected "
                                     f"{len(expected_header)} ({','.join(expected_header)[:200]})")
        sample_id = row[0].strip()
        if sample_id in predictions:
            raise SubmissionRejected(
                f"Submission has duplicate id {sample_id!r} (rows {first_seen[sample_id]} and {line_number})"
            )
        if fmt.kind == "label" and row[1].strip() not in solution.allowed_labels:
            allowed = sorted(solution.allowed_labels)
            raise SubmissionRejected(
                f"Submission row {line_number}: unknown label {row[1].strip()[:40]!r} for id {sample_id!r}; "
                f"labels must be one of {_examples(allowed, 10)}"
            )
        try:
            predictions[sample_id] = fmt.parse(row[1:])
        except ValueError as exc:
            raise SubmissionRejected(f"Submission row {line_number} (id {sample_id[:40]!r}): {exc}") from None
        first_seen[sample_id] = line_number
    unknown = [i for i in predictions if i not in solution.labels]
    if unknown:
        raise SubmissionRejected(f"Submission has {len(unknown)} ids that are not in the test set, e.g. {_examples(unknown)}")
    missing = [i for i in solution.labels if i not in predictions]
    if missing:
        raise SubmissionRejected(
            f"Submission is missing {len(missing)} of {len(solution.labels)} test ids, e.g. {_examples(missing)}"
        )
    return predictions


def score_submission(data: bytes, solution: Solution) -> Score:
    """The metric on the public and on the private part of the test set."""
    predictions = parse_submission(data, solution)
    index = {label: i for i, label in enumerate(solution.format.classes)}
    parts = {}
    for part in ("Public", "Private"):
        ids = [i for i, usage in solution.usage.items() if usage == part]
        if solution.metric.multi_label:
            labels = np.zeros((len(ids), len(index)), dtype=np.int64)
            for row, sample_id in enumerate(ids):
                labels[row, [index[label] for label in solution.labels[sample_id].split()]] = 1
        else:
            labels = np.array([index[solution.labels[i]] for i in ids])
        parts[part] = score(solution.metric, solution.format, [predictions[i] for i in ids], labels)
    return Score(public=parts["Public"], private=parts["Private"])
