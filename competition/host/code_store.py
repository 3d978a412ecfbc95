"""The local host's datasets and kernels: what a Kaggle code competition needs.

Layout under the host root (beside store.py's):
    datasets/<owner>/<slug>/<version>/   the files of each dataset version, as uploaded
    kernels/<owner>/<slug>/<version>/    script.py, output/ (the kernel's working directory), log.txt
    host.db                              tables `datasets` and `kernels`

A pushed kernel is queued and run on a background thread, one at a time (they would fight over the
cores), by kernel_runner.py, in a sandbox that hides this folder from it. The accelerator it asked for
(`enable_gpu`, `--accelerator`) is recorded; the runner says in its log what it ran on. Its output can
then be submitted to a code competition it attached; the score is recorded as any submission
(store.record_submission). A kernel that was running when the host stopped is marked ERROR when it
starts again.
"""
from __future__ import annotations

import json
import re
import secrets
import shutil
import sqlite3
import threading
import zipfile
from pathlib import Path

from competition import atomic
from competition.host.kernel_runner import run_kernel
from competition.host.scoring import SubmissionRejected
from competition.host.store import HostStore, InvalidName, NotFound, iso, utcnow

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    owner TEXT NOT NULL, slug TEXT NOT NULL, version INTEGER NOT NULL, title TEXT NOT NULL, license TEXT NOT NULL,
    created TEXT NOT NULL, notes TEXT NOT NULL, total_bytes INTEGER NOT NULL, PRIMARY KEY (owner, slug, version));
CREATE TABLE IF NOT EXISTS kernels (
    owner TEXT NOT NULL, slug TEXT NOT NULL, version INTEGER NOT NULL, title TEXT NOT NULL, created TEXT NOT NULL,
    status TEXT NOT NULL, failure TEXT NOT NULL, datasets TEXT NOT NULL, competitions TEXT NOT NULL,
    internet INTEGER NOT NULL, output_token TEXT NOT NULL, accelerator TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (owner, slug, version));
"""
DATASET_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{4,48}[a-z0-9]")  # 6-50 characters, as kaggle.com asks
KERNEL_SLUG = re.compile(r"[a-z0-9][a-z0-9-]{3,48}[a-z0-9]")  # at least 5
FILE_NAME = re.compile(r"[A-Za-z0-9._-][A-Za-z0-9._ -]{0,199}")
MAX_SCRIPT_CHARS = 1 << 20
_run_one_at_a_time = threading.Lock()


def check_dataset_slug(slug) -> str:
    if not isinstance(slug, str) or not DATASET_SLUG.fullmatch(slug):
        raise InvalidName(f"'{str(slug)[:80]}' is not a dataset slug (6-50 lower-case letters, digits and hyphens)")
    return slug


def check_kernel_slug(slug) -> str:
    if not isinstance(slug, str) or not KERNEL_SLUG.fullmatch(slug):
        raise InvalidName(f"'{str(slug)[:80]}' is not a kernel slug (5-50 lower-case letters, digits and hyphens)")
    return slug


def check_file_name(name) -> str:
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name) or name in (".", ".."):
        raise InvalidName(f"'{str(name)[:80]}' is not a file name (letters, digits, '.', '_', '-', no folders)")
    return name


class CodeHost:
    """Datasets and kernels of the host's one account, beside a HostStore's competitions."""

    def __init__(self, store: HostStore):
        self.store = store
        self.root = store.root
        with store._db() as db:
            db.executescript(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(kernels)")}
            if "accelerator" not in columns:  # a host folder from before kernels recorded it
                db.execute("ALTER TABLE kernels ADD COLUMN accelerator TEXT NOT NULL DEFAULT ''")
        try:  # the host's folder is its own: no other user (a kernel's, above all) may enter it
            self.root.chmod(0o700)
        except OSError:
            pass

    def recover(self) -> None:
        """Kernels left QUEUED or RUNNING by a host that stopped will never finish: say so."""
        with self.store._db() as db:
            db.execute("UPDATE kernels SET status='ERROR', failure='The local host stopped while this kernel "
                       "was queued or running; push it again' WHERE status IN ('QUEUED', 'RUNNING')")

    # --- datasets ------------------------------------------------------------------------------

    def _dataset_versions(self, owner: str, slug: str) -> list[dict]:
        with self.store._db() as db:
            rows = db.execute("SELECT version, title, license, created, notes, total_bytes FROM datasets "
                              "WHERE owner=? AND slug=? ORDER BY version", (owner, slug)).fetchall()
        return [dict(zip(("version", "title", "license", "created", "notes", "total_bytes"), r)) for r in rows]

    def dataset(self, owner: str, slug: str, version: int | None = None) -> dict:
        versions = self._dataset_versions(owner, check_dataset_slug(slug))
        if not versions:
            raise NotFound(f"Dataset {owner}/{slug} does not exist on the local host")
        chosen = versions[-1] if not version else next((v for v in versions if v["version"] == version), None)
        if chosen is None:
            raise NotFound(f"Dataset {owner}/{slug} has no version {version} (latest: {versions[-1]['version']})")
        return {**chosen, "owner": owner, "slug": slug, "folder": self.root / "datasets" / owner / slug / str(chosen["version"])}

    def create_dataset(self, owner: str, slug: str, title: str, license_name: str, files: list, notes: str = "",
                       new: bool = True) -> int:
        """A new dataset (version 1), or a new version of an existing one, from finished uploads."""
        check_dataset_slug(slug)
        if not isinstance(files, list) or not files:
            raise SubmissionRejected("A dataset needs at least one file")
        uploads = []
        for entry in files:
            if not isinstance(entry, dict):
                raise SubmissionRejected("Each entry of 'files' must be an object with a 'token'")
            name, path = self.store.finished_upload(entry.get("token"))
            uploads.append((check_file_name(name), path))
        with self.store.locked():
            versions = self._dataset_versions(owner, slug)
            if new and versions:
                raise SubmissionRejected(f'The requested slug "{slug}" is already in use by {owner}/{slug}; use '
                                         "`kaggle datasets version` to add a version")
            if not new and not versions:
                raise NotFound(f"Dataset {owner}/{slug} does not exist on the local host; create it first")
            version = (versions[-1]["version"] + 1) if versions else 1
            title = title or versions[-1]["title"]
            license_name = license_name or versions[-1]["license"]
            folder = self.root / "datasets" / owner / slug / str(version)
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
            for name, path in uploads:
                shutil.copyfile(path, folder / name)
            total = sum(p.stat().st_size for p in folder.iterdir())
            with self.store._db() as db:
                db.execute("INSERT INTO datasets VALUES (?,?,?,?,?,?,?,?)",
                           (owner, slug, version, title[:200], license_name[:100], iso(utcnow()), notes[:1000], total))
        return version

    def dataset_file(self, owner: str, slug: str, version: int, name: str) -> Path:
        path = self.dataset(owner, slug, version)["folder"] / check_file_name(name)
        if not path.is_file():
            raise NotFound(f"Dataset {owner}/{slug} has no file '{name[:120]}'")
        return path

    def dataset_zip(self, owner: str, slug: str, version: int) -> Path:
        """The files of one dataset version in one zip (built once; a version never changes)."""
        folder = self.dataset(owner, slug, version)["folder"]
        path = self.root / "downloads" / "datasets" / owner / slug / str(version) / f"{slug}.zip"
        with self.store.locked():
            if not path.is_file():
                with atomic.atomic_file(path, "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
                    for file in sorted(folder.iterdir()):
                        zf.write(file, file.name)
        return path

    def datasets(self, owner: str | None = None, search: str = "") -> list[dict]:
        with self.store._db() as db:
            rows = db.execute("SELECT owner, slug, MAX(version) FROM datasets GROUP BY owner, slug ORDER BY owner, slug").fetchall()
        found = [self.dataset(o, s, v) for o, s, v in rows if owner in (None, o)]
        return [d for d in found if search.lower() in d["slug"] or search.lower() in d["title"].lower()]

    # --- kernels -------------------------------------------------------------------------------

    def save_kernel(self, owner: str, slug: str, title: str, script: str, datasets: list[str], competitions: list[str],
                    internet: bool, run: bool, timeout_s: float | None, accelerator: str = "") -> int:
        check_kernel_slug(slug)
        if not isinstance(script, str) or not script.strip():
            raise SubmissionRejected("The kernel's code file is empty")
        if len(script) > MAX_SCRIPT_CHARS:
            raise SubmissionRejected(f"The kernel's code file is {len(script):,} characters; the limit is {MAX_SCRIPT_CHARS:,}")
        for ref in datasets:
            dataset_owner, _, dataset_slug = str(ref).partition("/")
            try:
                self.dataset(dataset_owner, dataset_slug)
            except (NotFound, InvalidName):
                raise SubmissionRejected(f"dataset_sources: '{str(ref)[:80]}' is not a dataset on the local host; "
                                         "publish it first (`kaggle datasets create`)") from None
        for competition in competitions:
            try:
                self.store.meta(competition)
            except (NotFound, InvalidName):
                raise SubmissionRejected(f"competition_sources: '{str(competition)[:80]}' is not hosted here") from None
        with self.store.locked():
            with self.store._db() as db:
                latest = db.execute("SELECT MAX(version) FROM kernels WHERE owner=? AND slug=?", (owner, slug)).fetchone()[0]
                version = (latest or 0) + 1
                db.execute("INSERT INTO kernels (owner, slug, version, title, created, status, failure, datasets, "
                           "competitions, internet, output_token, accelerator) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                           (owner, slug, version, title[:200], iso(utcnow()), "QUEUED" if run else "COMPLETE", "",
                            json.dumps(datasets), json.dumps(competitions), int(bool(internet)), secrets.token_urlsafe(24),
                            accelerator))
            folder = self.kernel_folder(owner, slug, version)
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "script.py").write_text(script, encoding="utf-8")
            (folder / "output").mkdir(exist_ok=True)
        if run:
            threading.Thread(target=self._run, args=(owner, slug, version, timeout_s), name=f"kernel {slug} v{version}",
                             daemon=True).start()
        return version

    def kernel_folder(self, owner: str, slug: str, version: int) -> Path:
        return self.root / "kernels" / owner / check_kernel_slug(slug) / str(int(version))

    def kernel(self, owner: str, slug: str, version: int | None = None) -> dict:
        query = "SELECT * FROM kernels WHERE owner=? AND slug=?" + (" AND version=?" if version else "") + \
                " ORDER BY version DESC LIMIT 1"
        with self.store._db() as db:
            db.row_factory = sqlite3.Row
            row = db.execute(query, (owner, check_kernel_slug(slug), *([int(version)] if version else []))).fetchone()
        if row is None:
            raise NotFound(f"Notebook {owner}/{slug}{f' version {version}' if version else ''} does not exist on the local host")
        return {**dict(row), "datasets": json.loads(row["datasets"]), "competitions": json.loads(row["competitions"])}

    def _set_status(self, owner: str, slug: str, version: int, status: str, failure: str = "") -> None:
        with self.store._db() as db:
            db.execute("UPDATE kernels SET status=?, failure=? WHERE owner=? AND slug=? AND version=?",
                       (status, failure[:2000], owner, slug, version))

    def _run(self, owner: str, slug: str, version: int, timeout_s: float | None) -> None:
        try:
            with _run_one_at_a_time:
                self._set_status(owner, slug, version, "RUNNING")
                kernel = self.kernel(owner, slug, version)
                inputs: dict[str, list[Path]] = {}
                for ref in kernel["datasets"]:
                    dataset = self.dataset(*ref.split("/", 1))
                    inputs[dataset["slug"]] = [dataset["folder"]]
                for competition in kernel["competitions"]:
                    folder = self.store.competition_dir(competition)
                    inputs[competition] = [folder / "data"] + ([folder / "hidden"] if (folder / "hidden").is_dir() else [])
                folder = self.kernel_folder(owner, slug, version)
                result = run_kernel((folder / "script.py").read_text(encoding="utf-8"), inputs, folder / "output", timeout_s,
                                    accelerator=kernel["accelerator"], hide=[self.root])
                (folder / "log.txt").write_text(result.log, encoding="utf-8")
                self._set_status(owner, slug, version, result.status, result.failure)
        except Exception as exc:  # noqa: BLE001 - a kernel's failure must be its status, never a dead thread
            self._set_status(owner, slug, version, "ERROR", f"The local host failed to run the kernel: "
                             f"{type(exc).__name__}: {str(exc)[:300]}")

    def outputs(self, owner: str, slug: str, version: int | None = None) -> tuple[dict, list[str], str]:
        """(the kernel version, its output files relative to output/, its log)."""
        kernel = self.kernel(owner, slug, version)
        folder = self.kernel_folder(owner, slug, kernel["version"])
        files = sorted(p.relative_to(folder / "output").as_posix() for p in (folder / "output").rglob("*") if p.is_file())
        log = (folder / "log.txt").read_text(encoding="utf-8") if (folder / "log.txt").is_file() else ""
        return kernel, files, log

    def output_file(self, token: str, name: str) -> Path:
        """A kernel's output file by the unguessable token of its version (output URLs carry no credentials)."""
        with self.store._db() as db:
            row = db.execute("SELECT owner, slug, version FROM kernels WHERE output_token=?", (str(token),)).fetchone()
        if row is None:
            raise NotFound("No such kernel output")
        base = (self.kernel_folder(*row) / "output").resolve()
        path = (base / name).resolve()
        if base not in path.parents or not path.is_file():
            raise NotFound(f"The kernel has no output file '{name[:120]}'")
        return path

    def submit_output(self, competition: str, team: str, owner: str, slug: str, version: int | None, file_name: str,
                      description: str) -> int:
        """Score a kernel version's output file as a submission to a code competition it attached."""
        solution = self.store.solution(competition)  # builds the competition first if needed (takes the lock)
        kernel = self.kernel(owner, slug, version)
        where = f"Notebook {owner}/{slug} version {kernel['version']}"
        if kernel["status"] != "COMPLETE":
            raise SubmissionRejected(f"{where} has status {kernel['status']}"
                                     + (f" ({kernel['failure']})" if kernel["failure"] else "")
                                     + "; submit once it is COMPLETE")
        if competition not in kernel["competitions"]:
            raise SubmissionRejected(f"{where} does not have competition '{competition}' attached; add it to "
                                     "competition_sources in kernel-metadata.json and push again")
        if kernel["internet"]:
            raise SubmissionRejected(f"{where} has internet access enabled; code competitions require "
                                     '"enable_internet": false')
        _, files, _ = self.outputs(owner, slug, kernel["version"])
        if file_name not in files:
            raise SubmissionRejected(f"{where} did not write '{file_name}' (its output: {', '.join(files) or 'nothing'})")
        data = (self.kernel_folder(owner, slug, kernel["version"]) / "output" / file_name).read_bytes()
        return self.store.record_submission(competition, team, f"{slug} v{kernel['version']}/{file_name}", data,
                                            description, solution, submitter=owner)
