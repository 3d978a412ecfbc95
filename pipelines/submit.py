"""submit: write the submission CSV, validate it against the sample submission, upload, wait for the score, log.

Nothing is uploaded unless the file passes `validate_submission`: the same header as the sample, the same
ids in the same order, each once, and every label one of the competition's classes. The log
(submissions/<comp>/log.csv) gets a row per run: time, config hash, git commit, CV and leaderboard scores.
A prediction set already scored (same digest in the log) is not uploaded again unless asked.
"""
from __future__ import annotations

import csv
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from competition.errors import KaggleError, UserError
from competition.kaggle_adapter import describe_request_error, kaggle_api
from competition.paths import submissions_root
from competition.spec import CompetitionSpec
from pipelines.download import raw_dir

LOG_COLUMNS = ["time", "competition", "profile", "config_hash", "git_commit", "predictions_digest", "cv_accuracy",
               "public_score", "private_score", "status", "ref", "file"]
SCORE_TIMEOUT_S = 600


class SubmissionInvalid(UserError):
    pass


def _read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return [row for row in csv.reader(fh) if row]


def write_submission(spec: CompetitionSpec, test_ids: list[str], test_probs: np.ndarray, path: Path) -> None:
    """id,label rows in the sample submission's order and header; written under a temporary name first."""
    sample = raw_dir(spec) / spec.layout.sample_submission
    header = _read_rows(sample)[0]
    if [h.strip() for h in header] != [spec.id_column, spec.label_column]:
        raise SubmissionInvalid(f"{sample}: header {','.join(header)} is not '{spec.id_column},{spec.label_column}'; "
                                "only one-label-per-id submissions are supported")
    labels = [spec.classes[i] for i in test_probs.argmax(axis=1)]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows(zip(test_ids, labels))
    os.replace(tmp, path)


def validate_submission(path: Path, sample: Path, classes: list[str]) -> int:
    """Raise SubmissionInvalid naming the first problem; returns the number of rows."""
    rows, sample_rows = _read_rows(path), _read_rows(sample)
    if not rows:
        raise SubmissionInvalid(f"{path}: empty file")
    if rows[0] != sample_rows[0]:
        raise SubmissionInvalid(f"{path}: header {','.join(rows[0])} differs from the sample's {','.join(sample_rows[0])}")
    if len(rows) != len(sample_rows):
        raise SubmissionInvalid(f"{path}: {len(rows) - 1} rows, the sample submission has {len(sample_rows) - 1}")
    allowed = set(classes)
    seen: set[str] = set()
    for line, (row, expected) in enumerate(zip(rows[1:], sample_rows[1:]), start=2):
        if len(row) != len(sample_rows[0]):
            raise SubmissionInvalid(f"{path} row {line}: {len(row)} fields, expected {len(sample_rows[0])}")
        sample_id, label = row[0], row[1]
        if sample_id in seen:
            raise SubmissionInvalid(f"{path} row {line}: duplicate id '{sample_id}'")
        seen.add(sample_id)
        if sample_id != expected[0]:
            raise SubmissionInvalid(f"{path} row {line}: id '{sample_id}' where the sample submission has '{expected[0]}' "
                                    "(ids must be in the sample's order)")
        if not label.strip():
            raise SubmissionInvalid(f"{path} row {line}: empty label for id '{sample_id}'")
        if label not in allowed:
            raise SubmissionInvalid(f"{path} row {line}: label '{label}' is not one of the competition's classes")
    return len(rows) - 1


@dataclass
class SubmissionResult:
    status: str  # COMPLETE, ERROR, dry-run, limit, already-scored
    public_score: float | None = None
    private_score: float | None = None
    ref: int | None = None


def _score(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def upload_and_wait(spec: CompetitionSpec, path: Path, message: str, timeout_s: float = SCORE_TIMEOUT_S) -> SubmissionResult:
    api = kaggle_api(spec)
    slug = spec.kaggle_slug
    try:
        try:
            limits = api.competition_get_submission_limits(slug)
        except Exception:  # older or other servers may not answer this; the upload will say so itself
            limits = None
        if limits is not None and limits.num_allowed_now is not None and limits.num_allowed_now <= 0:
            print(f"submit: daily submission limit used up ({limits.num_today} today); not uploading {path.name}")
            return SubmissionResult("limit")
        response = api.competition_submit(str(path), message, slug, quiet=True)
    except Exception as exc:
        raise KaggleError(f"upload of {path} refused: {describe_request_error(exc, spec)}") from None
    if response.message == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE or not response.ref:
        raise KaggleError(f"upload of {path} failed: {response.message}")
    deadline, delay = time.monotonic() + timeout_s, 1.0
    while True:
        try:
            submissions = api.competition_submissions(slug)
        except Exception as exc:
            raise KaggleError(f"reading the score of submission {response.ref} failed: {describe_request_error(exc, spec)}") from None
        mine = next((s for s in submissions or [] if s.ref == response.ref), None)
        status = getattr(mine.status, "name", str(mine.status)) if mine else "PENDING"
        if status == "COMPLETE":
            return SubmissionResult("COMPLETE", _score(mine.public_score), _score(mine.private_score), response.ref)
        if status == "ERROR":
            raise KaggleError(f"submission {response.ref} was refused while scoring: {mine.error_description}")
        if time.monotonic() > deadline:
            return SubmissionResult("PENDING", ref=response.ref)
        time.sleep(delay)
        delay = min(delay * 1.5, 15)


def log_path(spec: CompetitionSpec) -> Path:
    return submissions_root() / spec.name / "log.csv"


def read_log(spec: CompetitionSpec) -> list[dict]:
    path = log_path(spec)
    if not path.is_file():
        return []
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def append_log(spec: CompetitionSpec, row: dict) -> None:
    """Rewrite the log with one more row, under a temporary name first, so it is never half-written."""
    path = log_path(spec)
    rows = read_log(spec) + [{k: row.get(k, "") for k in LOG_COLUMNS}]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def submit(spec: CompetitionSpec, profile_name: str, test_ids: list[str], test_probs: np.ndarray, cv_accuracy: float,
           config_hash: str, predictions_digest: str, git_commit: str, dry_run: bool = False,
           resubmit: bool = False) -> SubmissionResult:
    earlier = [r for r in read_log(spec) if r["predictions_digest"] == predictions_digest and r["status"] == "COMPLETE"]
    if earlier and not (dry_run or resubmit) and Path(earlier[-1]["file"]).is_file():
        last = earlier[-1]
        path = Path(last["file"])
        print(f"submit: these predictions were scored already ({last['time']}, public {last['public_score']}, {path.name}); "
              "not uploading again (use --resubmit to upload anyway)")
        result = SubmissionResult("already-scored", _score(last["public_score"]), _score(last["private_score"]),
                                  int(last["ref"]) if last["ref"] else None)
    else:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
        path = submissions_root() / spec.name / f"{stamp}-{config_hash}.csv"
        write_submission(spec, test_ids, test_probs, path)
        try:
            rows = validate_submission(path, raw_dir(spec) / spec.layout.sample_submission, spec.classes)
        except SubmissionInvalid:
            path.unlink(missing_ok=True)
            raise
        print(f"submit: {path} ({rows} rows) matches the sample submission")
        if dry_run:
            result = SubmissionResult("dry-run")
        else:
            message = f"CV {cv_accuracy:.4f} | config {config_hash} | git {git_commit[:12]} | {profile_name}"
            result = upload_and_wait(spec, path, message)
    append_log(spec, {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "competition": spec.name,
        "profile": profile_name, "config_hash": config_hash, "git_commit": git_commit,
        "predictions_digest": predictions_digest, "cv_accuracy": f"{cv_accuracy:.5f}",
        "public_score": "" if result.public_score is None else f"{result.public_score:.5f}",
        "private_score": "" if result.private_score is None else f"{result.private_score:.5f}",
        "status": result.status, "ref": result.ref or "", "file": str(path),
    })
    return result
