"""Stage outputs on disk: one folder per output, keyed by a hash of what produced it, written atomically.

A stage writes into a staging sibling and renames it into place only when it has finished (see
competition/atomic.py), so an interrupted run leaves either the previous complete output or nothing —
never half a folder. Writers of one output take its lock first (competition/locks.py), so two processes
never build the same output at once: the second waits, then finds it done.
Every output folder holds a `manifest.json` saying what made it: the stage, its config and config hash,
the hashes of its inputs, the package versions and the git commit.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Callable, TypeVar

from competition import atomic, locks
from competition.paths import REPO_ROOT
from competition.spec import stable_hash

T = TypeVar("T")
MANIFEST = "manifest.json"
TRACKED_PACKAGES = ("numpy", "pandas", "scikit-learn", "pillow", "torch", "torchvision", "timm", "albumentations", "optuna", "kaggle")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def git_commit() -> str:
    """HEAD's hash, with '-dirty' when tracked files differ from it; 'unknown' outside a git checkout."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("-dirty" if dirty else "")


def output_key(config: dict, inputs: dict[str, str]) -> str:
    """The folder name of a stage output: a hash of the stage's own config and its inputs' keys."""
    return stable_hash({"config": config, "inputs": inputs})


def read_manifest(folder: Path) -> dict | None:
    path = folder / MANIFEST
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def is_complete(folder: Path) -> bool:
    return read_manifest(folder) is not None


def build_once(final: Path, what: str, build: Callable[[], T], reuse: Callable[[], T], force: bool = False,
               complete: Callable[[Path], bool] = is_complete) -> T:
    """`reuse()` when `final` is complete, else `build()` while holding `final`'s lock (`what` names it in
    the waiting message), after clearing what interrupted writers left and checking again: another
    process may have finished it while this one waited. `force` builds in any case."""
    if not force and complete(final):
        return reuse()
    with locks.hold(final, what):
        atomic.remove_staging_leftovers(final)
        if not force and complete(final):
            return reuse()
        return build()


def publish(staging: Path, final: Path, stage: str, config: dict, inputs: dict[str, str], extra: dict | None = None,
            replace: bool = False) -> bool:
    """Write the manifest into a finished staging folder and rename it to `final`.

    An existing `final` is kept (and this staging folder discarded) unless `replace` is set, as when a
    fold is retrained on purpose. Returns whether this folder was published."""
    atomic.write_json(staging / MANIFEST, {
        "stage": stage,
        "key": final.name,
        "config": config,
        "config_hash": stable_hash(config),
        "inputs": inputs,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "git_commit": git_commit(),
        "packages": package_versions(),
        **(extra or {}),
    })
    return atomic.publish_folder(staging, final, replace=replace)


@contextlib.contextmanager
def atomic_output(final: Path, stage: str, config: dict, inputs: dict[str, str], extra: dict | None = None,
                  replace: bool = False):
    """Yield a staging folder to fill; on success write its manifest and publish it as `final`.

    `extra` is read only after the with-block, so the caller may fill it inside."""
    with atomic.staged_folder(final) as staging:
        yield staging
        publish(staging, final, stage, config, inputs, extra, replace)
