"""Stage outputs on disk: one folder per output, keyed by a hash of what produced it, written atomically.

A stage writes into a temporary sibling folder and renames it into place only when it has finished,
so an interrupted run leaves either the previous complete output or nothing — never half a folder.
Every output folder holds a `manifest.json` saying what made it: the stage, its config and config hash,
the hashes of its inputs, the package versions and the git commit.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from competition.paths import REPO_ROOT
from competition.spec import stable_hash

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
    except json.JSONDecodeError:
        return None


def is_complete(folder: Path) -> bool:
    return read_manifest(folder) is not None


def write_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def publish(staging: Path, final: Path, stage: str, config: dict, inputs: dict[str, str], extra: dict | None = None) -> None:
    """Write the manifest into a finished staging folder and rename it to `final` (replacing an old one)."""
    write_json(staging / MANIFEST, {
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
    if final.exists():  # a stale output, or one being redone on purpose
        shutil.rmtree(final)
    os.replace(staging, final)


@contextlib.contextmanager
def atomic_output(final: Path, stage: str, config: dict, inputs: dict[str, str], extra: dict | None = None):
    """Yield a temporary folder to fill; on success write its manifest and rename it to `final`.

    `extra` is read only after the with-block, so the caller may fill it inside."""
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        yield staging
        publish(staging, final, stage, config, inputs, extra)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
