"""prune: remove the artifact folders of a competition that nothing needs any more, and say how much it freed.

Every config change makes new output folders (they are keyed by what produced them) and nothing else
removes the old ones. A folder is needed when a row of the submissions log leads to it: the log names
the predictions' digest, the ensemble with that digest names the digests of its fold predictions (TTA
or train), a TTA fold names its train fold, and a train fold names its prepared arrays and folds. The
downloaded files (raw/), the tuning studies (tuning/), saved plans (plans/) and the report are always
kept, and so is anything a running process holds the lock of, or is still writing.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from competition import locks
from competition.atomic import STAGING_MARK
from competition.paths import competition_root
from competition.spec import CompetitionSpec
from pipelines.stages.artifacts import read_manifest
from pipelines.stages.submit import read_log

ALWAYS_KEPT = ("raw", "tuning", "plans")
# Stages whose outputs are `<stage>/<key>` (one level) or `<stage>/<run>-<key>/fold<k>` (two levels).
ONE_LEVEL = ("prepared", "folds", "ensemble")
TWO_LEVELS = ("train", "tta")


@dataclass
class PrunePlan:
    keep: list[Path] = field(default_factory=list)
    remove: list[Path] = field(default_factory=list)

    @property
    def bytes_to_free(self) -> int:
        return sum(disk_usage(p) for p in self.remove)


def disk_usage(path: Path) -> int:
    """Bytes a file or folder holds (what `du` counts, in whole bytes); 0 if it is gone."""
    if not path.exists():
        return 0
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    total = 0
    for folder, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass  # removed while we counted
    return total


def human(size: float) -> str:
    for unit in ("B", "kB", "MB"):
        if size < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} GB"


def _outputs(root: Path) -> list[Path]:
    """Every output folder of the keyed stages, with staging leftovers and interrupted folds."""
    found = []
    for stage in ONE_LEVEL:
        found += [p for p in (root / stage).glob("*") if p.is_dir()] if (root / stage).is_dir() else []
    for stage in TWO_LEVELS:
        for run in (root / stage).glob("*") if (root / stage).is_dir() else []:
            if run.is_dir():
                found += [p for p in run.iterdir() if p.is_dir()]
    return found


def needed_outputs(spec: CompetitionSpec) -> set[Path]:
    """The output folders some logged submission was made from, following the manifests' inputs."""
    root = competition_root(spec.name)
    by_digest: dict[str, list[tuple[Path, dict]]] = {}
    for folder in _outputs(root):
        manifest = read_manifest(folder)
        if manifest is not None and "digest" in manifest:
            by_digest.setdefault(manifest["digest"], []).append((folder, manifest))
    needed: set[Path] = set()
    digests = [row["predictions_digest"] for row in read_log(spec)]
    seen: set[str] = set()
    while digests:
        digest = digests.pop()
        if digest in seen:
            continue
        seen.add(digest)
        for folder, manifest in by_digest.get(digest, []):
            needed.add(folder)
            for name, value in manifest.get("inputs", {}).items():
                if name in ("prepared", "folds"):  # named by key; a train fold names both it was made from
                    needed.add(root / name / value)
                else:  # ensemble inputs are fold predictions, TTA inputs a train fold: both by digest
                    digests.append(value)
    return needed


def _in_use(folder: Path) -> bool:
    """Held by a running process: its own lock, or (for a fold) the lock a trainer holds while writing it."""
    if locks.is_held(folder):
        return True
    name = folder.name
    if STAGING_MARK in name:  # `.fold0.kpipe-staging-<pid>-…`: the lock of the output it stages
        return locks.is_held(folder.with_name(name[1:].split(STAGING_MARK)[0]))
    if name.startswith(".") and name.endswith(".partial"):  # a fold being trained: `.fold0.partial`
        return locks.is_held(folder.with_name(name[1:-len(".partial")]))
    return False


def plan_prune(spec: CompetitionSpec) -> PrunePlan:
    root = competition_root(spec.name)
    needed = needed_outputs(spec)
    plan = PrunePlan()
    for folder in _outputs(root):
        (plan.keep if folder in needed or _in_use(folder) else plan.remove).append(folder)
    # TensorBoard logs mirror train/<run>-<key>/fold<k>; they go with their fold (kept while it trains).
    for fold_log in (root / "tensorboard").glob("*/*") if (root / "tensorboard").is_dir() else []:
        fold = root / "train" / fold_log.parent.name / fold_log.name
        if fold not in needed and not _in_use(fold):
            plan.remove.append(fold_log)
    return plan


def prune(spec: CompetitionSpec, dry_run: bool = False) -> int:
    """Remove what no logged submission, plan or study needs; returns the bytes freed (or to be freed)."""
    root = competition_root(spec.name)
    plan = plan_prune(spec)
    freed = 0
    for folder in sorted(plan.remove):
        size = disk_usage(folder)
        freed += size
        print(f"prune: {'would remove' if dry_run else 'removing'} {folder.relative_to(root)} ({human(size)})")
        if not dry_run:
            # Its lock file stays: deleting a lock file another process may be about to take would let two
            # processes hold "the same" lock on two different files.
            shutil.rmtree(folder, ignore_errors=True)
    verb = "would free" if dry_run else "freed"
    print(f"prune: {spec.name}: {verb} {human(freed)} in {len(plan.remove)} folders; kept {len(plan.keep)} that logged "
          f"submissions or running processes need, and {'/, '.join(ALWAYS_KEPT)}/; {root} holds {human(disk_usage(root))}")
    return freed


def report_disk_usage(spec: CompetitionSpec) -> str:
    """One line for the end of a run: what the competition's artifacts hold, and what prune would free."""
    root = competition_root(spec.name)
    reclaimable = plan_prune(spec).bytes_to_free
    hint = f"; `make prune COMP={spec.name}` would free {human(reclaimable)}" if reclaimable else ""
    return f"disk: {root} holds {human(disk_usage(root))}{hint}"
