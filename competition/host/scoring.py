"""Check a submission CSV against the hidden solution and score it.

Every refusal is a `SubmissionRejected` whose message names the problem (header, row, id or label),
because the Kaggle client shows that message to the participant verbatim.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path


class SubmissionRejected(Exception):
    pass


@dataclass(frozen=True)
class Solution:
    id_column: str
    label_column: str
    labels: dict[str, str]  # id -> true label
    usage: dict[str, str]  # id -> "Public" | "Private"
    allowed_labels: frozenset[str]

    @classmethod
    def load(cls, path: Path, id_column: str, label_column: str, allowed_labels: list[str]) -> "Solution":
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
            if row[label_column] not in allowed_labels:
                raise ValueError(f"{path} row {row_number}: label {row[label_column]!r} is not an allowed label")
            labels[sample_id] = row[label_column]
            usage[sample_id] = row["Usage"]
        if not labels:
            raise ValueError(f"{path}: no rows")
        return cls(id_column, label_column, labels, usage, frozenset(allowed_labels))


@dataclass(frozen=True)
class Score:
    public: float
    private: float


def _examples(values, limit=3) -> str:
    shown = ", ".join(repr(v) for v in list(values)[:limit])
    return shown + (", ..." if len(values) > limit else "")


def parse_submission(data: bytes, solution: Solution) -> dict[str, str]:
    """Return {id: predicted label}, or raise SubmissionRejected naming the first problem found."""
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


def _parse_rows(all_rows: list[list[str]], solution: Solution) -> dict[str, str]:
    rows = iter(all_rows)
    header = [h.strip() for h in next(rows)]
    expected_header = [solution.id_column, solution.label_column]
    if header != expected_header:
        raise SubmissionRejected(
            f"Submission header must be exactly: {','.join(expected_header)} (got: {','.join(header)})"
        )
    predictions: dict[str, str] = {}
    first_seen: dict[str, int] = {}
    for line_number, row in enumerate(rows, start=2):
        if not row:
            continue
        if len(row) != 2:
            raise SubmissionRejected(f"Submission row {line_number} has {len(row)} fields; expected 2 ({','.join(expected_header)})")
        sample_id, label = row[0].strip(), row[1].strip()
        if sample_id in predictions:
            raise SubmissionRejected(
                f"Submission has duplicate id {sample_id!r} (rows {first_seen[sample_id]} and {line_number})"
            )
        if label not in solution.allowed_labels:
            allowed = sorted(solution.allowed_labels)
            raise SubmissionRejected(
                f"Submission row {line_number}: unknown label {label!r} for id {sample_id!r}; "
                f"labels must be one of {_examples(allowed, 10)}"
            )
        predictions[sample_id] = label
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
    """Accuracy on the public and on the private part of the test set."""
    predictions = parse_submission(data, solution)
    hits = {"Public": 0, "Private": 0}
    totals = {"Public": 0, "Private": 0}
    for sample_id, true_label in solution.labels.items():
        part = solution.usage[sample_id]
        totals[part] += 1
        hits[part] += predictions[sample_id] == true_label
    return Score(
        public=hits["Public"] / max(totals["Public"], 1),
        private=hits["Private"] / max(totals["Private"], 1),
    )
