"""submit: write the submission CSV, validate it against the sample submission, upload, wait for the score, log.

Nothing is uploaded unless the file passes `validate_submission`: the same header as the sample, the same
ids in the same order, each once, and every label one of the competition's classes.

The log, submissions/<comp>/log.csv, is the record of every attempt, and the guard against uploading the
same predictions twice. All of it happens under the log's lock, so concurrent submits of one competition
take turns. Before an upload a PENDING row with the predictions' digest is written, and the digest goes
into the submission's description; if anything fails after that (the host drops, the process is killed),
the next run finds the submission on the host by its ref or digest and completes the row from there,
instead of uploading again.
"""
from __future__ import annotations

import csv
import io
import re
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from competition import atomic, locks
from competition.errors import DataError, KaggleError, UserError
from competition.formats import SubmissionFormat, score
from competition.kaggle_adapter import call, host_description, kaggle_api
from competition.paths import submissions_root
from competition.spec import CompetitionSpec
from pipelines.stages.download import raw_dir

# `ensemble`: the ensemble's output folder under .data/<comp>/ensemble/ (its manifest holds the lineage
# that `make predict` and `make export` replay).
# `data`: "synthetic" where the competition's data is a synthetic stand-in (its scores are not real ones).
# `kernel`: for a code competition, the kernel version whose output was submitted and the dataset
# version it read ("owner/slug v3, dataset v2").
DATA_LOG_COLUMNS = ["time", "competition", "profile", "config_hash", "git_commit", "predictions_digest", "ensemble",
                    "cv_score", "metric", "public_score", "private_score", "status", "ref", "file", "data"]
LOG_COLUMNS = DATA_LOG_COLUMNS + ["kernel"]
# Logs of earlier versions, read with the missing columns empty and rewritten in today's columns at the
# next write: before `kernel`, before `data`, before lineage (no `ensemble`), and before metrics other
# than accuracy (`cv_accuracy`, read as cv_score with metric `accuracy`).
LINEAGE_LOG_COLUMNS = [c for c in DATA_LOG_COLUMNS if c != "data"]
METRIC_LOG_COLUMNS = [c for c in LINEAGE_LOG_COLUMNS if c != "ensemble"]
ACCURACY_LOG_COLUMNS = ["time", "competition", "profile", "config_hash", "git_commit", "predictions_digest",
                        "cv_accuracy", "public_score", "private_score", "status", "ref", "file"]
# PENDING: recorded before the upload, completed by this or a later run. FAILED: the upload never reached
# the host. The others are final.
# LOCAL: a dataset's predictions, scored here on its held-out rows (public_score holds that score).
LOG_STATUSES = ("COMPLETE", "ERROR", "PENDING", "FAILED", "dry-run", "limit", "already-scored", "LOCAL")
SCORE_TIMEOUT_S = 600
DIGEST_PATTERN = re.compile(r"digest ([0-9a-f]{8,64})")


class SubmissionInvalid(UserError):
    pass




def read_rows(path: Path) -> list[list[str]]:
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return [row for row in csv.reader(fh) if row]
    except UnicodeDecodeError:
        raise SubmissionInvalid(f"{path}: not UTF-8 text; save it as UTF-8 CSV") from None
    except csv.Error as exc:
        raise SubmissionInvalid(f"{path}: not a readable CSV ({exc})") from None


def submission_header(spec: CompetitionSpec) -> list[str]:
    """The sample submission's header; for a dataset, which has none, the metric's columns in kpipe's
    names (id, label; or id, class_<label> ...)."""
    if spec.source == "dataset":
        if spec.metric.bind().submission == "probabilities":
            return [spec.submission_id, *(f"class_{label}" for label in spec.classes)]
        return [spec.submission_id, spec.submission_label]
    return read_rows(raw_dir(spec) / spec.layout.sample_submission)[0]


def submission_format(spec: CompetitionSpec) -> SubmissionFormat:
    """The competition's format (competition/formats.py), checked against its sample submission."""
    sample = raw_dir(spec) / spec.layout.sample_submission
    header = submission_header(spec)
    try:
        return SubmissionFormat.of(spec.metric.bind(), spec.submission_id, spec.submission_label, spec.classes, header)
    except ValueError as exc:
        raise SubmissionInvalid(f"{sample}: {exc}; the spec's metric ({spec.metric}) and the sample submission "
                                "disagree") from None


def write_submission(spec: CompetitionSpec, test_ids: list[str], test_probs: np.ndarray, path: Path) -> None:
    """Rows in the sample submission's order and header, in the metric's format; written under a
    temporary name first."""
    fmt = submission_format(spec)
    with atomic.atomic_file(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(submission_header(spec))
        writer.writerows([sample_id, *fmt.cells(probs)] for sample_id, probs in zip(test_ids, test_probs))


def validate_submission(path: Path, sample: Path, fmt: SubmissionFormat) -> int:
    """Raise SubmissionInvalid naming the first problem; returns the number of rows."""
    rows, sample_rows = read_rows(path), read_rows(sample)
    if not rows:
        raise SubmissionInvalid(f"{path}: empty file")
    if rows[0] != sample_rows[0]:
        raise SubmissionInvalid(f"{path}: header {','.join(rows[0])} differs from the sample's {','.join(sample_rows[0])}")
    if len(rows) != len(sample_rows):
        raise SubmissionInvalid(f"{path}: {len(rows) - 1} rows, the sample submission has {len(sample_rows) - 1}")
    seen: set[str] = set()
    for line, (row, expected) in enumerate(zip(rows[1:], sample_rows[1:]), start=2):
        if len(row) != len(sample_rows[0]):
            raise SubmissionInvalid(f"{path} row {line}: {len(row)} fields, expected {len(sample_rows[0])}")
        sample_id = row[0]
        if sample_id in seen:
            raise SubmissionInvalid(f"{path} row {line}: duplicate id '{sample_id}'")
        seen.add(sample_id)
        if sample_id != expected[0]:
            raise SubmissionInvalid(f"{path} row {line}: id '{sample_id}' where the sample submission has '{expected[0]}' "
                                    "(ids must be in the sample's order)")
        try:
            fmt.parse(row[1:])
        except ValueError as exc:
            raise SubmissionInvalid(f"{path} row {line} (id '{sample_id}'): {exc}") from None
    return len(rows) - 1


@dataclass
class Submission:
    """Predictions to submit, and what they came from (all of it goes into the log row and the upload's
    description)."""

    profile_name: str  # the profile, or `budget-15m` / `plan`
    test_ids: list[str]
    test_probs: np.ndarray  # class probabilities, one row per test id
    cv_score: float  # the cross-fitted CV score of the competition's metric
    config_hash: str  # what the predictions depend on (chain.config_hash)
    predictions_digest: str  # a digest of the ensemble's predictions: the guard against uploading twice
    git_commit: str
    ensemble: str = ""  # the ensemble's output folder name (its lineage is what `make predict` replays)
    held_out_labels: np.ndarray | None = None  # `source: dataset`: the test rows' classes, for the local score


@dataclass
class SubmissionResult:
    status: str  # one of LOG_STATUSES
    public_score: float | None = None
    private_score: float | None = None
    ref: int | None = None
    error: str = ""  # the host's reason when it refused the file while scoring


def _score(value) -> float | None:
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _score_text(value: float | None) -> str:
    return "" if value is None else f"{value:.5f}"


# --- the log ---------------------------------------------------------------------------------------


def log_path(spec: CompetitionSpec) -> Path:
    return submissions_root() / spec.name / "log.csv"


def _checklog_row(row: dict) -> str | None:
    """What is wrong with one row of the log, or None."""
    if row["status"] not in LOG_STATUSES:
        return f"status '{row['status']}' is not one of {', '.join(LOG_STATUSES)}"
    if not re.fullmatch(r"[0-9a-f]{8,64}", row["predictions_digest"]):
        return f"predictions_digest '{row['predictions_digest']}' is not a hex digest"
    if row["data"] not in ("", "real", "synthetic"):
        return f"data '{row['data']}' is not real or synthetic"
    if row["ensemble"] and not re.fullmatch(r"[0-9a-f]{8,64}", row["ensemble"]):
        return f"ensemble '{row['ensemble']}' is not an ensemble folder's name"
    for column in ("cv_score", "public_score", "private_score"):
        if row[column] and _score(row[column]) is None:
            return f"{column} '{row[column]}' is not a number"
    if row["ref"] and not row["ref"].isdigit():
        return f"ref '{row['ref']}' is not a submission number"
    return None


def read_log(spec: CompetitionSpec) -> list[dict]:
    """Every row of the log, checked: a hand-edited or truncated log is one DataError naming the row."""
    path = log_path(spec)
    if not path.is_file():
        return []
    fix = "fix that row, or move the file away to start a new log"
    try:
        text = path.read_text(encoding="utf-8")
        rows = list(csv.reader(io.StringIO(text, newline="")))
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; {fix}") from None
    except csv.Error as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}); {fix}") from None
    if not rows:
        return []
    if rows[0] not in (LOG_COLUMNS, DATA_LOG_COLUMNS, LINEAGE_LOG_COLUMNS, METRIC_LOG_COLUMNS, ACCURACY_LOG_COLUMNS):
        raise DataError(f"{path} row 1: the header must be {','.join(LOG_COLUMNS)}; {fix}")
    columns = rows[0]
    entries = []
    for number, fields in enumerate(rows[1:], start=2):
        if not fields:
            continue
        if len(fields) != len(columns):
            raise DataError(f"{path} row {number}: {len(fields)} fields, expected {len(columns)} "
                            f"(a truncated or hand-edited row?); {fix}")
        entry = {**dict.fromkeys(LOG_COLUMNS, ""), **dict(zip(columns, fields))}
        if "cv_accuracy" in entry:
            entry["cv_score"], entry["metric"] = entry.pop("cv_accuracy"), "accuracy"
        problem = _checklog_row(entry)
        if problem:
            raise DataError(f"{path} row {number}: {problem}; {fix}")
        entries.append(entry)
    return entries


def write_log(spec: CompetitionSpec, rows: list[dict]) -> None:
    with atomic.atomic_file(log_path(spec), "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: row.get(k, "") for k in LOG_COLUMNS} for row in rows)


def write_log_naming(spec: CompetitionSpec, rows: list[dict], path: Path) -> None:
    """Write the log whose new row first names the submission file `path`. If the log cannot be written
    (a full disk), the file goes too: no row would ever name it, nor was it uploaded."""
    try:
        write_log(spec, rows)
    except BaseException:
        path.unlink(missing_ok=True)
        raise


def log_row(spec: CompetitionSpec, submission: Submission, result: SubmissionResult, path: Path,
             kernel: str = "") -> dict:
    return {"kernel": kernel, "time": datetime.now(timezone.utc).isoformat(timespec="seconds"), "competition": spec.name,
            "profile": submission.profile_name, "config_hash": submission.config_hash,
            "git_commit": submission.git_commit, "predictions_digest": submission.predictions_digest,
            "ensemble": submission.ensemble, "cv_score": f"{submission.cv_score:.5f}", "metric": str(spec.metric), "public_score": _score_text(result.public_score),
            "private_score": _score_text(result.private_score), "status": result.status, "ref": result.ref or "",
            "file": str(path), "data": "synthetic" if spec.synthetic else "real"}


def _update(row: dict, result: SubmissionResult) -> None:
    row.update(status=result.status, public_score=_score_text(result.public_score),
               private_score=_score_text(result.private_score), ref=result.ref or row["ref"])


# --- the host --------------------------------------------------------------------------------------


def _status_name(submission) -> str:
    return getattr(submission.status, "name", str(submission.status))


HOST_PAGE = 100  # submissions a listing call asks for
HOST_PAGES = 50  # at most this many pages are read


def host_submissions(spec: CompetitionSpec, api):
    """This account's submissions on the host, newest first, a page at a time as the caller reads on
    (the client returns no page token: a short page is the last)."""
    for page in range(1, HOST_PAGES + 1):
        listed = call(spec, f"listing the submissions of '{spec.kaggle_slug}'",
                      lambda page=page: api.competition_submissions(spec.kaggle_slug, page_number=page,
                                                                    page_size=HOST_PAGE)) or []
        yield from listed
        if len(listed) < HOST_PAGE:
            return


def find_on_host(spec: CompetitionSpec, api, ref: int | None, digest: str):
    """The host's record of a submission, by ref or by the digest in its description; None if absent."""
    for submission in host_submissions(spec, api):  # newest first
        if ref is not None and submission.ref == ref:
            return submission
        match = DIGEST_PATTERN.search(submission.description or "")
        if ref is None and match and match.group(1) == digest:
            return submission
    return None


def wait_for_score(spec: CompetitionSpec, api, ref: int | None, digest: str,
                   timeout_s: float = SCORE_TIMEOUT_S) -> SubmissionResult | None:
    """Poll the host until the submission is scored; None when the host has no such submission."""
    deadline, delay = time.monotonic() + timeout_s, 1.0
    while True:
        mine = find_on_host(spec, api, ref, digest)
        if mine is None:
            return None
        status = _status_name(mine)
        if status == "COMPLETE":
            return SubmissionResult("COMPLETE", _score(mine.public_score), _score(mine.private_score), mine.ref)
        if status == "ERROR":
            return SubmissionResult("ERROR", ref=mine.ref, error=mine.error_description or "")
        if time.monotonic() > deadline:
            return SubmissionResult("PENDING", ref=mine.ref)
        time.sleep(delay)
        delay = min(delay * 1.5, 15)


def awaiting_private(rows: list[dict]) -> list[dict]:
    """Scored rows whose private score the host did not show yet (it shows them after the deadline)."""
    return [r for r in rows if r["status"] in ("COMPLETE", "already-scored") and r["ref"] and not r["private_score"]]


def fill_private_scores(spec: CompetitionSpec, api, rows: list[dict]) -> int:
    """Copy into the log (in place, and written) the private scores the host shows now; how many."""
    waiting = awaiting_private(rows)
    if not waiting:
        return 0
    shown = {submission.ref: submission for submission in host_submissions(spec, api)}
    filled = 0
    for row in waiting:
        private = _score(getattr(shown.get(int(row["ref"])), "private_score", None))
        if private is not None:
            row["private_score"], filled = _score_text(private), filled + 1
    if filled:
        write_log(spec, rows)
    return filled


def settle_pending(spec: CompetitionSpec, api, rows: list[dict]) -> None:
    """Complete the PENDING rows an earlier, interrupted run left, from what the host knows (in place)."""
    for row in rows:
        if row["status"] != "PENDING":
            continue
        result = wait_for_score(spec, api, int(row["ref"]) if row["ref"] else None, row["predictions_digest"])
        if result is None:
            print(f"submit: the upload of {Path(row['file']).name} ({row['time']}) never reached {host_description(spec)}; "
                  "marked FAILED in the log")
            row["status"] = "FAILED"
        else:
            print(f"submit: completed the log row of {Path(row['file']).name} from {host_description(spec)}: "
                  f"{result.status}, public {_score_text(result.public_score) or '-'}")
            _update(row, result)
        write_log(spec, rows)


def update_scores(spec: CompetitionSpec) -> list[dict]:
    """`make scores`: complete the log's PENDING rows and fill in the private scores the host shows now
    (after the deadline), then print the scored rows."""
    with locks.hold(log_path(spec), f"the submissions log of {spec.name}"):
        rows = read_log(spec)
        uploaded = [r for r in rows if r["ref"] or r["status"] == "PENDING"]
        if uploaded:
            api = kaggle_api(spec)
            settle_pending(spec, api, rows)
            filled = fill_private_scores(spec, api, rows)
            print(f"scores: {filled} private score{'s' * (filled != 1)} filled in from {host_description(spec)}")
    if not uploaded:
        print(f"scores: no uploaded submission in {log_path(spec)}")
        return rows
    header = ("time (UTC)", "profile", f"CV {spec.metric}", "public", "private", "status", "ref")
    table = [header] + [(r["time"], r["profile"], r["cv_score"], r["public_score"] or "-",
                         r["private_score"] or ("hidden until the deadline" if r["status"] == "COMPLETE" else "-"),
                         r["status"], r["ref"]) for r in uploaded]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    if spec.synthetic:
        print("scores: SYNTHETIC stand-in data: these scores are not real ones")
    return rows


def create_submission(spec: CompetitionSpec, api, path: Path, message: str) -> tuple[int | None, KaggleError | None]:
    """Upload once: (ref, None), or (None, the failure). Never retried blindly: a timeout or a dropped
    connection may hide a submission that arrived, so the caller asks the host instead."""
    try:
        response = call(spec, f"uploading {path.name}",
                        lambda: api.competition_submit(str(path), message, spec.kaggle_slug, quiet=True), retry=False)
    except KaggleError as exc:
        return None, exc
    if response.ref and response.message != api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        return int(response.ref), None
    return None, KaggleError(f"uploading {path.name} failed: {response.message}")


# --- the stage -------------------------------------------------------------------------------------


def submit(spec: CompetitionSpec, submission: Submission, dry_run: bool = False, resubmit: bool = False) -> SubmissionResult:
    """Write, check and (unless `dry_run`) upload the predictions, under the log's lock; one log row each run.
    A dataset's predictions are scored here instead, on its held-out rows."""
    if spec.source == "dataset":
        return score_locally(spec, submission)
    with locks.hold(log_path(spec), f"the submissions log of {spec.name}"):
        rows, api = settled_log(spec, dry_run)

        def new_row(result: SubmissionResult, path: Path) -> dict:
            return log_row(spec, submission, result, path)

        if not dry_run:
            earlier = earlier_result(spec, rows, submission.predictions_digest, resubmit, new_row)
            if earlier is not None:
                return earlier
        path = checked_submission_file(spec, submission.test_ids, submission.test_probs, submission.config_hash)
        if dry_run:
            rows.append(new_row(SubmissionResult("dry-run"), path))
            write_log_naming(spec, rows, path)
            return SubmissionResult("dry-run")
        return upload(spec, api or kaggle_api(spec), rows, new_row(SubmissionResult("PENDING"), path),
                       description(spec, submission))


def settled_log(spec: CompetitionSpec, dry_run: bool) -> tuple[list[dict], object]:
    """The log's rows (under its lock, held by the caller), with what an interrupted run left PENDING and
    the private scores the host shows now filled in; and the API client when that needed one."""
    rows = read_log(spec)
    waiting = any(r["status"] == "PENDING" for r in rows) or awaiting_private(rows)
    api = kaggle_api(spec) if not dry_run and waiting else None
    if api is not None:
        settle_pending(spec, api, rows)
        if filled := fill_private_scores(spec, api, rows):
            print(f"submit: {filled} private score{'s' * (filled > 1)} now shown by {host_description(spec)} "
                  f"(the competition has closed) filled into {log_path(spec)}")
    return rows, api


def description(spec: CompetitionSpec, submission: Submission) -> str:
    """The submission's description on the host: CV, config, commit, and the digest a rerun finds it by."""
    return (f"CV {spec.metric} {submission.cv_score:.4f} | config {submission.config_hash} | git "
            f"{submission.git_commit[:12]} | {submission.profile_name} | digest {submission.predictions_digest}")


def score_locally(spec: CompetitionSpec, submission: Submission) -> SubmissionResult:
    """A dataset has no leaderboard: its submission file is scored here, read back as the local host reads
    an upload, against the held-out rows' labels; the log row says LOCAL."""
    if submission.held_out_labels is None or len(submission.held_out_labels) != len(submission.test_ids):
        raise UserError(f"{spec.name}: the prepared data holds no labels for its {len(submission.test_ids)} test rows; "
                        f"run `make prepare COMP={spec.name}` again (FORCE=1)")
    with locks.hold(log_path(spec), f"the submissions log of {spec.name}"):
        rows = read_log(spec)
        path = checked_submission_file(spec, submission.test_ids, submission.test_probs, submission.config_hash)
        fmt = submission_format(spec)
        predictions = [fmt.parse(row[1:]) for row in read_rows(path)[1:]]
        value = score(spec.metric.bind(), fmt, predictions, submission.held_out_labels)
        result = SubmissionResult("LOCAL", value)
        rows.append(log_row(spec, submission, result, path))
        write_log_naming(spec, rows, path)
    print(f"submit: {spec.name} is a Kaggle dataset: nothing uploaded; {spec.metric} {value:.5f} on its "
          f"{len(predictions):,} held-out rows (logged as LOCAL in {log_path(spec)})")
    return result


def earlier_result(spec: CompetitionSpec, rows: list[dict], digest: str, resubmit: bool, new_row) -> SubmissionResult | None:
    """The result of an earlier upload of the same predictions, if it stands in for this one."""
    same = [r for r in rows if r["predictions_digest"] == digest]
    scored = [r for r in same if r["status"] == "COMPLETE" and Path(r["file"]).is_file()]
    if scored and not resubmit:
        last = scored[-1]
        print(f"submit: these predictions were scored already ({last['time']}, public {last['public_score']}, "
              f"{Path(last['file']).name}); not uploading again (use --resubmit to upload anyway)")
        result = SubmissionResult("already-scored", _score(last["public_score"]), _score(last["private_score"]),
                                  int(last["ref"]) if last["ref"] else None)
        rows.append(new_row(result, Path(last["file"])))
        write_log(spec, rows)
        return result
    if any(r["status"] == "PENDING" for r in same):
        print("submit: these predictions are still being scored; not uploading them again (run again later)")
        return SubmissionResult("PENDING")
    return None


def checked_submission_file(spec: CompetitionSpec, test_ids: list[str], test_probs: np.ndarray, config_hash: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S")
    path = submissions_root() / spec.name / f"{stamp}-{config_hash}.csv"
    write_submission(spec, test_ids, test_probs, path)
    if spec.source == "dataset":  # no sample submission to hold it against: score_locally reads it back
        return path
    try:
        count = validate_submission(path, raw_dir(spec) / spec.layout.sample_submission, submission_format(spec))
    except SubmissionInvalid:
        path.unlink(missing_ok=True)
        raise
    print(f"submit: {path} ({count} rows) matches the sample submission")
    return path


def upload(spec: CompetitionSpec, api, rows: list[dict], row: dict, message: str,
            create=None) -> SubmissionResult:
    """Upload once and wait for the score, keeping `row` (PENDING before the upload) up to date in the log.
    `create()` makes the submission ((ref, None) or (None, the failure)); by default it uploads row's file."""
    path = Path(row["file"])
    create = create or (lambda: create_submission(spec, api, path, message))
    try:
        limits = call(spec, f"reading the submission limits of '{spec.kaggle_slug}'",
                      lambda: api.competition_get_submission_limits(spec.kaggle_slug))
    except KaggleError as exc:  # not every server answers this; the upload itself will say if it is refused
        print(f"submit: {exc}; uploading without knowing today's remaining submissions")
        limits = None
    if limits is not None and limits.num_allowed_now is not None and limits.num_allowed_now <= 0:
        print(f"submit: daily submission limit used up ({limits.num_today} today); not uploading {path.name}")
        _update(row, SubmissionResult("limit"))
        write_log_naming(spec, rows + [row], path)
        return SubmissionResult("limit")
    rows.append(row)
    write_log_naming(spec, rows, path)  # PENDING before the upload: a rerun completes it instead of uploading again
    ref, failure = create()
    if ref is not None:
        row["ref"] = str(ref)
        write_log(spec, rows)
    try:
        # With a ref, by ref; after a failed call, by digest: the submission may have arrived anyway.
        result = wait_for_score(spec, api, ref, row["predictions_digest"])
    except KaggleError as exc:
        raise KaggleError(f"{failure or exc}; the log keeps a PENDING row for {path.name}, and the next "
                          "`make submit` completes it from the host without uploading again") from None
    if result is None:
        row["status"] = "FAILED"
        write_log(spec, rows)
        raise KaggleError(f"{failure or f'submission {ref} is not listed by {host_description(spec)}'}; nothing was "
                          "scored, the next `make submit` uploads it again")
    _update(row, result)
    write_log(spec, rows)
    if result.status == "ERROR":
        raise KaggleError(f"submission {result.ref} of {path.name} was refused by {host_description(spec)} while "
                          f"scoring: {result.error or 'no reason given'}")
    if result.status == "PENDING":
        print(f"submit: submission {result.ref} is not scored yet; the next `make submit` reads its score")
    return result
