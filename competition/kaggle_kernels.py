"""Datasets and kernels through the Kaggle API: what entering a code competition (or training on
Kaggle's machine) takes, every call through `kaggle_adapter.call`.

- `publish_dataset`: a folder as a private dataset: created the first time, a new version when its
  contents changed (by the digest its `kpipe-package.json` records, read back from the host), nothing
  when they did not;
- `push_kernel`: `kernels push`, refused pushes (quota, bad metadata) as one line;
- `wait_for_kernel`: the kernel followed to COMPLETE or ERROR with a progress line;
- `fetch_output`: its output files and log into a folder.
"""
from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from competition.errors import KaggleError
from competition.kaggle_adapter import Competition, call, host_description

PACKAGE_FILE = "kpipe-package.json"
DATASET_READY_TIMEOUT_S = 600
KERNEL_POLL_MAX_S = 30.0
FINISHED = ("COMPLETE", "ERROR", "CANCEL_ACKNOWLEDGED")


def file_digests(folder: Path) -> dict:
    """What PACKAGE_FILE holds for a folder to publish: {"files": each file's SHA-256, "digest": one over
    them all} (the metadata file aside: it names the account, not the package)."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
             if p.is_file() and p.name not in ("dataset-metadata.json", PACKAGE_FILE)}
    digest = hashlib.sha256("".join(f"{name}:{sha}\n" for name, sha in files.items()).encode()).hexdigest()[:16]
    return {"files": files, "digest": digest}


def _not_found(exc: Exception) -> bool:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None) == 404


def dataset_version(spec: Competition, api, ref: str) -> int | None:
    """The dataset's current version; None when it does not exist (yet)."""
    owner, slug = ref.split("/", 1)

    def ask():
        from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetRequest

        request = ApiGetDatasetRequest()
        request.owner_slug, request.dataset_slug = owner, slug
        with api.build_kaggle_client() as kaggle:
            try:
                return kaggle.datasets.dataset_api_client.get_dataset(request).current_version_number
            except Exception as exc:  # noqa: BLE001 - a 404 is an answer here, anything else goes to call()
                if _not_found(exc):
                    return None
                raise

    return call(spec, f"looking up dataset {ref}", ask)


def published_digest(spec: Competition, api, ref: str) -> str | None:
    """The package digest the dataset's latest version holds; None when it holds none."""
    with tempfile.TemporaryDirectory(prefix="kpipe-published-") as scratch:
        def fetch():
            try:
                api.dataset_download_file(ref, PACKAGE_FILE, path=scratch, force=True, quiet=True)
            except Exception as exc:  # noqa: BLE001 - no such file: an older or foreign dataset
                if _not_found(exc):
                    return None
                raise
            return json.loads((Path(scratch) / PACKAGE_FILE).read_text(encoding="utf-8")).get("digest")

        try:
            return call(spec, f"reading {PACKAGE_FILE} of dataset {ref}", fetch)
        except (ValueError, OSError):
            return None


@dataclass(frozen=True)
class Published:
    ref: str
    version: int
    uploaded: bool  # False: the host held this package already


def publish_dataset(spec: Competition, api, folder: Path, ref: str, digest: str, notes: str) -> Published:
    """`folder` (with its dataset-metadata.json) as dataset `ref`: created, versioned, or left as it is."""
    version = dataset_version(spec, api, ref)
    if version is not None and published_digest(spec, api, ref) == digest:
        return Published(ref, version, False)
    if version is None:
        response = call(spec, f"creating dataset {ref}", lambda: api.dataset_create_new(
            str(folder), public=False, quiet=True, convert_to_csv=False, dir_mode="skip"), retry=False)
    else:
        response = call(spec, f"adding a version to dataset {ref}", lambda: api.dataset_create_version(
            str(folder), notes, quiet=True, convert_to_csv=False, dir_mode="skip"), retry=False)
    error = getattr(response, "error", None)
    if error:
        raise KaggleError(f"{host_description(spec)} refused dataset {ref}: {error}")
    deadline = time.monotonic() + DATASET_READY_TIMEOUT_S
    while (status := call(spec, f"reading the status of dataset {ref}", lambda: api.dataset_status(ref))) != "ready":
        if time.monotonic() > deadline:
            raise KaggleError(f"dataset {ref} is still '{status}' after {DATASET_READY_TIMEOUT_S // 60} minutes; run "
                              "the command again later (it publishes nothing twice)")
        time.sleep(2)
    new = dataset_version(spec, api, ref)
    if new is None or (version is not None and new <= version):
        raise KaggleError(f"dataset {ref} shows version {new} after the upload (was {version}); run the command again")
    return Published(ref, new, True)


def push_kernel(spec: Competition, api, folder: Path, timeout_s: int | None = None) -> int:
    """`kaggle kernels push -p folder`: the new version's number. Never retried blindly (a push that
    arrived and timed out would run twice)."""
    response = call(spec, f"pushing the kernel in {folder}",
                    lambda: api.kernels_push(str(folder), timeout=str(timeout_s) if timeout_s else None), retry=False)
    error = getattr(response, "error", None)
    if error or not getattr(response, "version_number", None):
        raise KaggleError(f"{host_description(spec)} refused the kernel push: {error or 'no version number returned'}")
    return int(response.version_number)


def kernel_status(spec: Competition, api, ref: str, version: int) -> tuple[str, str]:
    """(status name, failure message) of one kernel version."""
    response = call(spec, f"reading the status of kernel {ref} version {version}",
                    lambda: api.kernels_status(f"{ref}/{version}"))
    status = getattr(response.status, "name", str(response.status))
    return status, getattr(response, "failure_message", "") or ""


def wait_for_kernel(spec: Competition, api, ref: str, version: int, timeout_s: float) -> tuple[str, str]:
    """Poll until the kernel version finishes, with a progress line on stderr; (status, failure). A
    kernel still running at `timeout_s` is ('RUNNING', ...) and keeps running on the host."""
    started, delay = time.monotonic(), 1.0
    tty = sys.stderr.isatty()
    last = ""
    while True:
        status, failure = kernel_status(spec, api, ref, version)
        elapsed = time.monotonic() - started
        line = f"kernel {ref} v{version}: {status.lower()} ({elapsed // 60:.0f}m{elapsed % 60:02.0f}s)"
        if tty:
            print(f"\r{line}   ", end="", file=sys.stderr, flush=True)
        elif status != last:  # a log file gets one line a change, not one a poll
            print(line, file=sys.stderr, flush=True)
        last = status
        if status in FINISHED or elapsed > timeout_s:
            if tty:
                print(file=sys.stderr)
            return status, failure
        time.sleep(delay)
        delay = min(delay * 1.5, KERNEL_POLL_MAX_S)


def fetch_output(spec: Competition, api, ref: str, version: int, dest: Path) -> list[Path]:
    """The kernel version's output files and its log (<slug>.log) into `dest`."""
    dest.mkdir(parents=True, exist_ok=True)
    files, _ = call(spec, f"downloading the output of kernel {ref} version {version}",
                    lambda: api.kernels_output(f"{ref}/{version}", str(dest), force=True, quiet=True))
    return [Path(f) for f in files]


def log_tail(log: Path, lines: int = 3) -> str:
    """The last non-empty lines of a kernel's log, joined into one."""
    if not log.is_file():
        return "(no log)"
    text = [line.strip() for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return " | ".join(text[-lines:]) or "(empty log)"
