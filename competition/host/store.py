"""The local host's state on disk: competitions (files + hidden solution), uploads, submissions.

Layout under the host root:
    credentials.json                 the one account the host accepts (made on first start)
    client/kaggle.json               the same account, as the kaggle client reads it
    competitions/<slug>/             competition.json, data/, solution.csv (see builders.py)
    downloads/<slug>/<slug>.zip      the data/ folder zipped, rebuilt when data/ changes
    uploads/<token>                  raw submission bytes, as PUT by the client
    submitted/<ref>                  each submission's file as scored (submission-download)
    host.db                          SQLite: uploads and submissions
"""
from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import secrets
import shutil
import sqlite3
import threading
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path, PurePosixPath
from typing import Callable

from competition import atomic, metrics
from competition.host import builders
from competition.host.scoring import Score, Solution, SubmissionRejected, score_submission

MAX_UPLOAD_BYTES = 64 * 1024 * 1024

_SCHEMA = """
CREATE TABLE IF NOT EXISTS uploads (
    token TEXT PRIMARY KEY, competition TEXT NOT NULL, file_name TEXT NOT NULL,
    content_length INTEGER NOT NULL, created TEXT NOT NULL, complete INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS submissions (
    ref INTEGER PRIMARY KEY AUTOINCREMENT, competition TEXT NOT NULL, team TEXT NOT NULL,
    file_name TEXT NOT NULL, total_bytes INTEGER NOT NULL, date TEXT NOT NULL, description TEXT NOT NULL,
    status TEXT NOT NULL, public_score REAL, private_score REAL, error_description TEXT NOT NULL DEFAULT '');
"""
# Added later: a submission is PENDING until `scored_at`, then takes `final_status` (COMPLETE or ERROR).
# `submitter`: the account that uploaded (a teammate), where the team is not enough.
_LATER_COLUMNS = {"final_status": "TEXT", "scored_at": "TEXT", "submitter": "TEXT"}


SLUG_PATTERN = re.compile(r"[a-z0-9][a-z0-9-]{0,63}")
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,64}")
USERNAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{2,39}")


class NotFound(Exception):
    pass


class InvalidName(ValueError):
    """A slug, token or file name from a request or an admin command that must not touch a path."""


def check_slug(slug) -> str:
    """Competition slugs are lower-case letters, digits and hyphens: never a separator, '..' or empty."""
    if not isinstance(slug, str) or not SLUG_PATTERN.fullmatch(slug):
        raise InvalidName(f"{str(slug)[:80]!r} is not a competition slug (1-64 lower-case letters, digits and hyphens, "
                          "starting with a letter or digit)")
    return slug


def check_token(token) -> str:
    if not isinstance(token, str) or not TOKEN_PATTERN.fullmatch(token):
        raise InvalidName("Unknown upload token")
    return token


def check_data_name(name: str) -> PurePosixPath:
    """A data file's name relative to data/: no absolute path, '..', backslash or NUL."""
    path = PurePosixPath(name)
    if not name or "\\" in name or "\0" in name or path.is_absolute() or ".." in path.parts:
        raise InvalidName(f"{name[:120]!r} is not a data file name")
    return path


class LimitReached(Exception):
    pass


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def iso(dt: datetime) -> str:
    return dt.isoformat(timespec="milliseconds") + "Z"


def parse_deadline(text: str) -> datetime:
    """competition.json's `deadline` (ISO 8601, UTC; a trailing Z or not) as a naive UTC datetime."""
    value = datetime.fromisoformat(str(text).removesuffix("Z"))
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def scoring_delay_s() -> float:
    """Seconds an accepted submission stays PENDING ($KPIPE_HOST_SCORING_DELAY_S, default 2): small, but
    long enough that a client's wait-and-poll path runs, as it must for kaggle.com."""
    try:
        return max(0.0, float(os.environ.get("KPIPE_HOST_SCORING_DELAY_S", "2")))
    except ValueError:
        return 2.0


MAX_UNZIPPED_BYTES = 4 * MAX_UPLOAD_BYTES


def unpacked(data: bytes, file_name: str) -> bytes:
    """The CSV inside a zipped submission (kaggle.com accepts a .zip holding one CSV), else `data`.
    Bounded: one member, at most MAX_UNZIPPED_BYTES when expanded, read no further than that."""
    if not data.startswith(b"PK\x03\x04"):
        return data
    import io

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = [m for m in archive.infolist() if not m.is_dir()]
            if len(members) != 1 or not members[0].filename.lower().endswith(".csv"):
                raise SubmissionRejected(f"{file_name}: a zipped submission must hold exactly one .csv file "
                                         f"(it holds {', '.join(m.filename for m in members)[:200] or 'nothing'})")
            if members[0].file_size > MAX_UNZIPPED_BYTES:
                raise SubmissionRejected(f"{file_name}: its CSV expands to {members[0].file_size:,} bytes, over the "
                                         f"{MAX_UNZIPPED_BYTES:,} this host accepts")
            with archive.open(members[0]) as member:
                content = member.read(MAX_UNZIPPED_BYTES + 1)
    except (zipfile.BadZipFile, NotImplementedError, EOFError, ValueError) as exc:
        raise SubmissionRejected(f"{file_name}: not a readable zip file ({exc})") from None
    if len(content) > MAX_UNZIPPED_BYTES:
        raise SubmissionRejected(f"{file_name}: its CSV expands past the {MAX_UNZIPPED_BYTES:,} bytes this host accepts")
    return content


BENCHMARK_SUFFIX = " Benchmark"  # a benchmark's team name ends so; account names have no spaces
BENCHMARK_SAMPLE = "Sample Submission Benchmark"


def is_benchmark(team: str) -> bool:
    return team.endswith(BENCHMARK_SUFFIX)


class HostBusy(Exception):
    """The store's lock was held past the time limit: another request (a build, a zip) is still working."""


LOCK_TIMEOUT_S = float(os.environ.get("KPIPE_HOST_LOCK_TIMEOUT_S", "120"))


class HostStore:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        # One writer at a time: builds, zips, submissions. Re-entrant, so that a path which needs a
        # competition built while it holds the lock (a submission to a competition nobody downloaded yet)
        # takes it again instead of waiting on itself forever.
        self._lock = threading.RLock()
        with self._db() as db:
            db.executescript(_SCHEMA)
            present = {row[1] for row in db.execute("PRAGMA table_info(submissions)")}
            for column, kind in _LATER_COLUMNS.items():  # a host.db from before asynchronous scoring
                if column not in present:
                    db.execute(f"ALTER TABLE submissions ADD COLUMN {column} {kind}")

    @contextlib.contextmanager
    def locked(self):
        """The store's lock, waited for at most LOCK_TIMEOUT_S: a request never hangs behind a stuck one."""
        if not self._lock.acquire(timeout=LOCK_TIMEOUT_S):
            raise HostBusy(f"The local host is busy with another request (building a competition or a download) "
                           f"for over {LOCK_TIMEOUT_S:.0f} s; try again, or see its server.log")
        try:
            yield
        finally:
            self._lock.release()

    def _db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.root / "host.db", timeout=30)

    # --- credentials ---------------------------------------------------------------------------

    def credentials(self) -> dict:
        """The host's account; created on first use, mirrored as a kaggle.json for the client."""
        path = self.root / "credentials.json"
        if not path.is_file():
            creds = {"username": "localuser", "key": secrets.token_hex(16), "token": "KGAT_" + secrets.token_hex(16)}
            # Mode 0600 from the moment each file exists: the key is never readable by other users.
            (self.root / "client").mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic.write_json(self.root / "client" / "kaggle.json", {"username": creds["username"], "key": creds["key"]},
                              perm=0o600)
            atomic.write_json(path, creds, perm=0o600)
        return json.loads(path.read_text())

    def accounts(self) -> list[dict]:
        """Every account: the host's own (credentials.json), then those made with `add-user` (users.json),
        each {username, key, token, team}; a team of one is named after its account."""
        own = self.credentials()
        added = json.loads((self.root / "users.json").read_text()) if (self.root / "users.json").is_file() else []
        return [{**own, "team": own.get("team") or own["username"]}, *added]

    def add_user(self, username: str, team: str | None = None) -> Path:
        """A further account (a classmate, a teammate), with a kaggle.json of its own; returns that file."""
        if not USERNAME_PATTERN.fullmatch(username):
            raise InvalidName(f"'{username[:80]}' is not a valid user name: 3 to 40 letters, digits, '-' or '_'")
        team = (team or username).strip()
        if not team or len(team) > 50 or not team.isprintable() or team.endswith(BENCHMARK_SUFFIX):
            raise InvalidName(f"'{team[:80]}' is not a valid team name: 1 to 50 printable characters, "
                              f"not ending in '{BENCHMARK_SUFFIX}'")
        with self.locked():
            accounts = self.accounts()
            if any(a["username"] == username for a in accounts):
                raise InvalidName(f"user '{username}' exists already")
            account = {"username": username, "key": secrets.token_hex(16), "token": "KGAT_" + secrets.token_hex(16),
                       "team": team}
            folder = self.root / "users" / username
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            atomic.write_json(folder / "kaggle.json", {"username": username, "key": account["key"]}, perm=0o600)
            atomic.write_json(self.root / "users.json", accounts[1:] + [account], perm=0o600)
        return folder / "kaggle.json"

    def team_of(self, username: str) -> str:
        """The team an account submits for (its own name unless it joined one)."""
        return next((a["team"] for a in self.accounts() if a["username"] == username), username)

    # --- competitions --------------------------------------------------------------------------

    def slugs(self) -> list[str]:
        built = {p.parent.name for p in (self.root / "competitions").glob("*/competition.json")}
        return sorted(built | set(builders.BUILTIN_META))

    def meta(self, slug: str) -> dict:
        path = self.root / "competitions" / check_slug(slug) / "competition.json"
        if path.is_file():
            return json.loads(path.read_text())
        if slug in builders.BUILTIN_META:
            return builders.BUILTIN_META[slug]
        raise NotFound(f"Competition '{slug}' is not hosted here; hosted: {', '.join(self.slugs())}")

    def competition_dir(self, slug: str) -> Path:
        """The competition's folder, building a built-in competition the first time it is needed."""
        folder = self.root / "competitions" / check_slug(slug)
        if (folder / "competition.json").is_file():
            return folder
        self.meta(slug)  # raises NotFound for unknown slugs
        with self.locked():
            if not (folder / "competition.json").is_file():
                _build_folder(folder, builders.BUILDERS[slug])
        return folder

    def closed(self, slug: str) -> bool:
        """Whether the competition's deadline has passed: only then do private scores show, as on kaggle.com."""
        return utcnow() >= parse_deadline(self.meta(slug)["deadline"])

    def close(self, slug: str) -> str:
        """End the competition now (its deadline becomes this moment); returns the new deadline."""
        path = self.competition_dir(slug) / "competition.json"
        with self.locked():
            meta = json.loads(path.read_text())
            if not self.closed(slug):
                meta["deadline"] = iso(utcnow())
                atomic.write_json(path, meta)
        return meta["deadline"]

    def add_competition(self, source: Path) -> str:
        """Host a course competition of one's own: `source` holds competition.json, data/ and solution.csv."""
        meta = read_competition_json(source / "competition.json")
        data = source / "data"
        if not (data / "sample_submission.csv").is_file():
            raise ValueError(f"{data / 'sample_submission.csv'}: missing; participants need it")
        links = [p for p in source.rglob("*") if p.is_symlink()]
        if links:
            raise ValueError(f"{links[0]}: a symbolic link; copy the file in instead (the host serves only what the folder holds)")
        # Parse the solution now so a broken one is refused here, not at the first submission.
        Solution.load(source / "solution.csv", meta["id_column"], meta["label_column"], [str(x) for x in meta["labels"]],
                      meta.get("metric", "accuracy"), sample_header(data / "sample_submission.csv"))
        meta = {"category": "Community", "metric": "accuracy", "max_daily_submissions": 20,
                "deadline": builders.DEFAULT_DEADLINE, "description": "", "synthetic": False, **meta,
                "hosted_by": self.credentials()["username"], "created": iso(utcnow())}

        def copy_with_defaults(staging: Path) -> None:
            shutil.copytree(source, staging, dirs_exist_ok=True)
            atomic.write_json(staging / "competition.json", meta)

        with self.locked():
            _build_folder(self.root / "competitions" / meta["slug"], copy_with_defaults)
        return meta["slug"]

    def data_files(self, slug: str) -> list[Path]:
        data_dir = self.competition_dir(slug) / "data"
        return sorted(p for p in data_dir.rglob("*") if p.is_file())

    def data_file(self, slug: str, name: str) -> Path:
        data_dir = (self.competition_dir(slug) / "data").resolve()
        path = (data_dir / check_data_name(name)).resolve()
        if data_dir not in path.parents or not path.is_file():
            raise NotFound(f"Competition '{slug}' has no data file '{name}'")
        return path

    def data_zip(self, slug: str) -> Path:
        """All data files in one zip, rebuilt only when a data file is newer than the zip."""
        files = self.data_files(slug)
        data_dir = self.competition_dir(slug) / "data"
        zip_path = self.root / "downloads" / slug / f"{slug}.zip"
        newest = max(p.stat().st_mtime for p in files)
        with self.locked():
            if not zip_path.is_file() or zip_path.stat().st_mtime < newest:
                with atomic.atomic_file(zip_path, "wb") as fh, \
                        zipfile.ZipFile(fh, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                    for path in files:
                        zf.write(path, path.relative_to(data_dir).as_posix())
        return zip_path

    def solution(self, slug: str) -> Solution:
        meta = self.meta(slug)
        folder = self.competition_dir(slug)
        return Solution.load(folder / "solution.csv", meta["id_column"], meta["label_column"],
                             [str(x) for x in meta["labels"]], meta.get("metric", "accuracy"),
                             sample_header(folder / "data" / "sample_submission.csv"))

    # --- uploads and submissions ---------------------------------------------------------------

    def start_upload(self, slug: str, file_name: str, content_length: int) -> str:
        self.meta(slug)
        # Kept for display only, never as a path: the last segment, printable, bounded.
        file_name = "".join(c for c in file_name.replace("\\", "/").rsplit("/", 1)[-1] if c.isprintable())[:255]
        if content_length == 0:  # refused here, where the client prints why; an empty upload fails with no word
            raise SubmissionRejected(f"Submission file '{file_name}' is empty (0 bytes): there is nothing to score; "
                                     "submit the CSV your predictions were written to")
        if not 0 < content_length <= MAX_UPLOAD_BYTES:
            raise SubmissionRejected(f"Submission is {content_length} bytes; the limit is {MAX_UPLOAD_BYTES}")
        return self._new_upload(slug, file_name, content_length)

    def _new_upload(self, competition: str, file_name: str, content_length: int) -> str:
        """A fresh upload token, recorded with what it is for ("" for a dataset's file)."""
        token = secrets.token_urlsafe(24)
        with self._db() as db:
            db.execute("INSERT INTO uploads VALUES (?,?,?,?,?,0)",
                       (token, competition, file_name, content_length, iso(utcnow())))
        return token

    def receive_upload(self, token: str, body: bytes) -> None:
        with self._db() as db:
            row = db.execute("SELECT content_length FROM uploads WHERE token=?", (check_token(token),)).fetchone()
            if row is None:
                raise NotFound("Unknown upload token")
            if len(body) > max(row[0], 0) or len(body) > MAX_UPLOAD_BYTES:
                raise ValueError(f"Upload of {len(body)} bytes is larger than the {row[0]} bytes announced")
            atomic.write_bytes(self.root / "uploads" / token, body)
            db.execute("UPDATE uploads SET complete=1 WHERE token=?", (token,))

    def start_blob_upload(self, name: str, content_length: int) -> str:
        """An upload slot for one file of a dataset (no competition); the name is kept for display and
        checked as a file name when the dataset is made."""
        if not 0 <= content_length <= MAX_UPLOAD_BYTES:
            raise SubmissionRejected(f"File '{name[:80]}' is {content_length} bytes; the limit is {MAX_UPLOAD_BYTES}")
        return self._new_upload("", name[:255], content_length)

    def finished_upload(self, token) -> tuple[str, Path]:
        """(file name, path) of a completed dataset-file upload; InvalidName for anything else."""
        with self._db() as db:
            row = db.execute("SELECT file_name, complete, competition FROM uploads WHERE token=?",
                             (check_token(token),)).fetchone()
        if row is None or not row[1] or row[2] != "":
            raise InvalidName("No finished file upload for this token; upload the file first")
        return row[0], self.root / "uploads" / token

    def upload_complete(self, token: str) -> bool:
        with self._db() as db:
            row = db.execute("SELECT complete FROM uploads WHERE token=?", (check_token(token),)).fetchone()
        return bool(row and row[0])

    def limits(self, slug: str, team: str) -> dict:
        meta = self.meta(slug)
        self._publish_scored()  # a submission that failed to score stops counting once it shows ERROR
        today = utcnow().date().isoformat()
        with self._db() as db:
            num_today = db.execute(
                "SELECT COUNT(*) FROM submissions WHERE competition=? AND team=? AND status!='ERROR' AND substr(date,1,10)=?",
                (slug, team, today)).fetchone()[0]
            num_total = db.execute(
                "SELECT COUNT(*) FROM submissions WHERE competition=? AND team=? AND status!='ERROR'", (slug, team)).fetchone()[0]
        allowed = max(int(meta["max_daily_submissions"]) - num_today, 0)
        return {"numToday": num_today, "numTotal": num_total, "numAllowedNow": allowed, "limitedByTotal": False}

    def create_submission(self, slug: str, team: str, token: str, description: str, submitter: str | None = None) -> int:
        """Record the uploaded file for scoring (see record_submission); its ref."""
        meta = self.meta(slug)
        # Loaded before taking the lock: loading may build the competition, which takes the same lock.
        solution = self.solution(slug)
        if not TOKEN_PATTERN.fullmatch(token):
            raise SubmissionRejected("No uploaded file for this token; upload the CSV first")
        with self._db() as db:
            row = db.execute("SELECT competition, file_name, complete FROM uploads WHERE token=?", (token,)).fetchone()
        if row is None or not row[2]:
            raise SubmissionRejected("No uploaded file for this token; upload the CSV first")
        if row[0] != slug:
            raise SubmissionRejected(f"This upload was started for competition '{row[0]}', not '{slug}'")
        if meta.get("code_competition"):
            raise SubmissionRejected(
                f"'{slug}' is a code competition: it only accepts the output of a notebook. Push a kernel with "
                f"the competition attached, then `kaggle competitions submit {slug} -k <owner>/<kernel> -v <version> "
                "-f submission.csv -m <message>`")
        return self.record_submission(slug, team, row[1], (self.root / "uploads" / token).read_bytes(), description,
                                      solution, submitter)

    def record_submission(self, slug: str, team: str, file_name: str, data: bytes, description: str,
                          solution: Solution, submitter: str | None = None) -> int:
        """Score `data` (a CSV, zipped or not, or a kernel's output file) and record it; its ref. It shows as
        PENDING for the scoring delay, then COMPLETE, or ERROR with the reason for a malformed file (which
        then no longer counts against the daily limit)."""
        meta = self.meta(slug)
        with self.locked():
            if self.limits(slug, team)["numAllowedNow"] <= 0:
                now = utcnow()
                hours = (24 * 3600 - (now.hour * 3600 + now.minute * 60 + now.second)) / 3600
                # kaggle.com's own wording (a 400, as there), so that scripts written for it match here too
                raise LimitReached(
                    f"Submission not allowed:  Your team has used its daily Submission allowance "
                    f"({meta['max_daily_submissions']}) today, please try again tomorrow UTC ({hours:.1f} hours from now).")
            score: Score | None = None
            error = ""
            try:
                score = score_submission(unpacked(data, file_name), solution)
            except SubmissionRejected as exc:
                error = str(exc)
            # Scored now, shown as kaggle.com shows it: PENDING for the scoring delay, then COMPLETE or
            # ERROR (a malformed file is accepted and fails to score; it does not count against the limit).
            now, delay = utcnow(), scoring_delay_s()
            final = "ERROR" if error else "COMPLETE"
            with self._db() as db:
                ref = _insert_submission(db, competition=slug, team=team, file_name=file_name, total_bytes=len(data),
                                         date=iso(now), description=description,
                                         status=final if delay <= 0 else "PENDING",
                                         public_score=score.public if score else None,
                                         private_score=score.private if score else None, error_description=error,
                                         final_status=final, scored_at=iso(now + timedelta(seconds=delay)),
                                         submitter=submitter or team)
            # Kept as submitted, for `kaggle competitions submission-download <ref>`.
            atomic.write_bytes(self.root / "submitted" / str(ref), data)
        return ref

    def submitted_file(self, ref: int, team: str) -> tuple[str, Path]:
        """(file name, stored bytes) of the team's submission `ref`; NotFound for another team's or none."""
        found = self.submissions(team=team, ref=int(ref))
        path = self.root / "submitted" / str(int(ref))
        if not found or not path.is_file():
            raise NotFound(f"No submission {ref} of your team's is stored on the local host")
        return PurePosixPath(found[0]["file_name"]).name or "submission.csv", path

    def _publish_scored(self) -> None:
        """PENDING submissions whose scoring delay has passed take their final status."""
        with self._db() as db:
            db.execute("UPDATE submissions SET status=final_status WHERE status='PENDING' AND final_status IS NOT NULL"
                       " AND scored_at <= ?", (iso(utcnow()),))

    def submissions(self, slug: str | None = None, team: str | None = None, ref: int | None = None) -> list[dict]:
        self._publish_scored()
        query, args = "SELECT * FROM submissions WHERE 1=1", []
        for column, value in (("competition", slug), ("team", team), ("ref", ref)):
            if value is not None:
                query += f" AND {column}=?"
                args.append(value)
        with self._db() as db:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute(query + " ORDER BY ref DESC", args)]

    def enter_benchmarks(self, slug: str) -> None:
        """The competition's benchmark entries, once: the sample submission and each simple model's
        predictions in baselines/ (builders.write_baseline; a course host may add its own CSVs there), each
        a team of its own, so that a leaderboard rank means something from the first submission on. Every
        leaderboard read asks; only a missing entry takes the store's lock (a build may hold it)."""
        folder = self.competition_dir(slug)
        sample = folder / "hidden" / "sample_submission.csv"  # a code competition's full one
        entries = {BENCHMARK_SAMPLE: sample if sample.is_file() else folder / "data" / "sample_submission.csv"}
        entries.update({f"{path.stem.replace('-', ' ').title()}{BENCHMARK_SUFFIX}": path
                        for path in sorted((folder / "baselines").glob("*.csv"))})

        def missing() -> dict[str, Path]:
            with self._db() as db:
                entered = {row[0] for row in db.execute("SELECT DISTINCT team FROM submissions WHERE competition=?",
                                                        (slug,))}
            return {team: path for team, path in entries.items() if team not in entered}

        if not missing():
            return
        solution = self.solution(slug)
        # Dated when the competition was built: a benchmark was there before anyone submitted.
        built = iso(datetime.fromtimestamp((folder / "solution.csv").stat().st_mtime, timezone.utc).replace(tzinfo=None))
        with self.locked():
            for team, path in missing().items():
                try:
                    score = score_submission(path.read_bytes(), solution)
                except (SubmissionRejected, OSError):
                    continue  # a baseline that does not fit the competition is left out, not fatal
                with self._db() as db:
                    _insert_submission(db, competition=slug, team=team, file_name=path.name,
                                       total_bytes=path.stat().st_size, date=built, description="benchmark",
                                       status="COMPLETE", public_score=score.public, private_score=score.private,
                                       error_description="", final_status="COMPLETE", scored_at=built)

    def leaderboard(self, slug: str, private: bool = False) -> list[dict]:
        """Each team's entry, best first by the metric's direction (ties: earlier submission first),
        benchmarks included. Public: the team's best public score. Private (after the deadline): as
        kaggle.com selects when a team chose none, its two best submissions by public score, and of
        those the better private score; the entry's `score` is the one ranked."""
        self.enter_benchmarks(slug)
        metric = self.solution(slug).metric
        by_team: dict[str, list[dict]] = {}
        for sub in reversed(self.submissions(slug)):  # oldest first: a tie keeps the earlier one
            if sub["status"] == "COMPLETE":
                by_team.setdefault(sub["team"], []).append(sub)
        entries = []
        for subs in by_team.values():
            chosen = sorted(subs, key=lambda s: (-metric.signed(s["public_score"]), s["date"]))
            if private:
                chosen = sorted(chosen[:2], key=lambda s: (-metric.signed(s["private_score"]), s["date"]))
            entries.append({**chosen[0], "score": chosen[0]["private_score" if private else "public_score"]})
        return sorted(entries, key=lambda s: (-metric.signed(s["score"]), s["date"]))


def _insert_submission(db: sqlite3.Connection, **row) -> int:
    """Insert one submissions row (columns named by the keywords); its ref."""
    cursor = db.execute(f"INSERT INTO submissions ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                        tuple(row.values()))
    return cursor.lastrowid


def _build_folder(dest: Path, fill: Callable[[Path], None]) -> None:
    """Fill a staging folder and swap it in for `dest` (the caller holds the store's lock)."""
    atomic.remove_staging_leftovers(dest)
    with atomic.staged_folder(dest) as staging:
        fill(staging)
        atomic.publish_folder(staging, dest, replace=dest.exists())


def sample_header(path: Path) -> list[str]:
    """The first row of a sample submission (empty when the file is missing or unreadable: the format
    check then names the mismatch)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            return next(csv.reader(fh), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return []


def read_competition_json(path: Path) -> dict:
    """competition.json of a course competition, checked: every refusal is one ValueError naming the key."""
    if not path.is_file():
        raise ValueError(f"{path}: missing; see README 'Host your own course competition'")
    try:
        meta = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not UTF-8 text; save it as UTF-8") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: must be a JSON object with slug, title, labels, id_column, label_column")
    for key in ("slug", "title", "labels", "id_column", "label_column"):
        if key not in meta:
            raise ValueError(f"{path}: missing key '{key}'")
    try:
        check_slug(meta["slug"])
    except InvalidName as exc:
        raise ValueError(f"{path}: key 'slug': {exc}") from None
    for key in ("title", "id_column", "label_column"):
        if not isinstance(meta[key], str) or not meta[key].strip():
            raise ValueError(f"{path}: key '{key}' must be a non-empty string")
    labels = meta["labels"]
    if not isinstance(labels, list) or len(labels) < 2 or any(isinstance(v, (bool, dict, list)) or v is None for v in labels):
        raise ValueError(f"{path}: key 'labels' must list at least two labels (strings or numbers)")
    if len({str(v) for v in labels}) != len(labels):
        raise ValueError(f"{path}: key 'labels' lists a label twice")
    limit = meta.get("max_daily_submissions", 20)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 10_000:
        raise ValueError(f"{path}: key 'max_daily_submissions' must be a whole number from 1 to 10000")
    try:
        metrics.parse(meta.get("metric", "accuracy"))
    except ValueError as exc:
        raise ValueError(f"{path}: key 'metric': {exc}") from None
    try:
        parse_deadline(meta.get("deadline", builders.DEFAULT_DEADLINE))
    except (TypeError, ValueError):
        raise ValueError(f"{path}: key 'deadline' must be an ISO 8601 UTC time, e.g. 2026-12-31T23:59:59") from None
    return meta
