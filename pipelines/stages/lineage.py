"""lineage: what an ensemble is made of, so that it can run again outside the pipeline.

The ensemble stage writes a `lineage` into its manifest: the class order, the image shape, the
submission format's kind, and per member model its run (architecture, arguments, input size,
precision), its TTA views, its weight and temperature, and each fold's checkpoint (its path under the
competition's data folder, the digest of its predictions, its normalisation); then the blend's
temperature and the decision rule's class weights (only when applied). The submissions log names each
row's ensemble (`ensemble`), so a run is found by the config hash users see in the submission file's
name and in the log (`RUN=`), by default the latest logged submission.

    member_sources  the lineage of one model's folds, from its trained fold outputs (chain.py)
    combine         the ensemble's probabilities from each member's (fold-mean, TTA) probabilities: the
                    exported script's own (kernel_inference.py), which the ensemble stage applies to the
                    test set and `make predict` to new images, so all three compute the same numbers
    find_run        (ensemble folder, lineage, log row) for RUN=<config hash>
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from competition.errors import UserError
from competition.paths import competition_root
from competition.spec import CompetitionSpec
from pipelines.recipe.kernel_inference import combine  # noqa: F401  the one blend: the exported script's
from pipelines.stages.artifacts import read_manifest
from pipelines.stages.predict import FoldOutput, load_checkpoint

LINEAGE_VERSION = 1


def _relative(path: Path, spec: CompetitionSpec) -> str:
    root = competition_root(spec.name)
    try:
        return path.relative_to(root).as_posix()
    except ValueError:  # tuning and tests may train elsewhere
        return str(path)


def member_sources(spec: CompetitionSpec, trained: list[FoldOutput], views: list[str]) -> dict:
    """One member's views and folds: checkpoint, digest, normalisation, and the run its checkpoint holds."""
    folds, run = [], None
    for output in trained:
        checkpoint = load_checkpoint(output.folder / "best.pt", torch.device("cpu"))
        run = checkpoint["run"]
        folds.append({"fold": int(output.folder.name.removeprefix("fold")),
                      "checkpoint": _relative(output.folder / "best.pt", spec), "digest": output.digest,
                      "mean": checkpoint["mean"], "std": checkpoint["std"], "best_epoch": checkpoint["epoch"]})
    return {"run": run, "views": list(views), "folds": folds}


def checkpoint_path(spec: CompetitionSpec, fold: dict) -> Path:
    path = Path(fold["checkpoint"])
    return path if path.is_absolute() else competition_root(spec.name) / path


@dataclass(frozen=True)
class LoggedRun:
    config_hash: str
    ensemble: Path  # the ensemble's output folder
    lineage: dict
    row: dict  # its row of the submissions log


def find_run(spec: CompetitionSpec, run: str | None) -> LoggedRun:
    """The ensemble a logged submission was made from: RUN=<config hash> (a prefix will do), else the
    latest logged one. A one-line UserError names what there is when nothing matches."""
    from pipelines.stages.submit import log_path, read_log

    rows = [r for r in read_log(spec) if r.get("ensemble")]
    if not rows:
        raise UserError(f"{log_path(spec)}: no logged submission names its ensemble yet; run `make submit "
                        f"COMP={spec.name}` (or with DRY_RUN=1) first")
    chosen = [r for r in rows if run is None or r["config_hash"].startswith(run)]
    if not chosen:
        known = ", ".join(dict.fromkeys(r["config_hash"] for r in reversed(rows)))
        raise UserError(f"RUN={run}: no logged submission of {spec.name} has that config hash (logged: {known}); "
                        "set RUN= to one of them")
    if run is not None and len({r["config_hash"] for r in chosen}) > 1:
        raise UserError(f"RUN={run}: matches several config hashes ({', '.join(sorted({r['config_hash'] for r in chosen}))}); "
                        "give more of it")
    row = chosen[-1]
    folder = competition_root(spec.name) / "ensemble" / row["ensemble"]
    manifest = read_manifest(folder)
    if manifest is None or "lineage" not in manifest:
        raise UserError(f"{folder}: the ensemble of run {row['config_hash']} is gone (pruned or cleaned); run "
                        f"`make submit COMP={spec.name}` again to rebuild it from the cached folds")
    missing = [fold["checkpoint"] for member in manifest["lineage"]["members"] for fold in member["folds"]
               if not checkpoint_path(spec, fold).is_file()]
    if missing:
        raise UserError(f"{checkpoint_path(spec, {'checkpoint': missing[0]})}: a checkpoint of run {row['config_hash']} "
                        f"is gone ({len(missing)} missing); run `make submit COMP={spec.name}` again to retrain it")
    return LoggedRun(row["config_hash"], folder, manifest["lineage"], row)
