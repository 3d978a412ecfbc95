"""The stages chained for the commands that run several: `make train`, `make submit`, `make report`.

download -> prepare -> folds (in context.setup) -> train -> TTA -> ensemble -> submit -> report.

Every stage skips work whose output already exists (outputs are keyed by what produced them), so a
second run with nothing changed only re-reads predictions, and a rerun of one fold redoes that fold and
what depends on it.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from competition.errors import UserError
from competition.recipe import Profile
from competition.spec import CompetitionSpec, stable_hash
from pipelines.artifacts import git_commit, is_complete, read_manifest
from pipelines.checks import find_model_run
from pipelines.context import Context, setup
from pipelines.ensemble import ensemble
from pipelines.predict import FoldOutput
from pipelines.prune import report_disk_usage
from pipelines.report import model_summaries, write_report
from pipelines.submit import submit
from pipelines.train import fold_folder, train_folds
from pipelines.tta import tta_run


def config_hash(spec: CompetitionSpec, profile: Profile) -> str:
    """What the submission depends on: the data, the folds, the flips and the whole recipe."""
    return stable_hash({"data": spec.data_hash(), "folds": spec.folds.model_dump(), "flips": spec.flips.model_dump(),
                        "profile": profile.model_dump(mode="json")})


def train_models(ctx: Context, only: str | None = None, fold: int | None = None, force: bool = False) -> dict:
    """Train (or reuse) every run and fold of the profile; `fold` given = retrain exactly that fold."""
    fold_ids = spec_folds = ctx.spec.fold_indices(ctx.profile)
    if fold is not None:  # checked against folds.n_splits when the command started
        fold_ids = [fold]
    runs = [find_model_run(ctx.spec, ctx.profile_name, only)] if only else ctx.profile.models
    trained = {}
    for run in runs:
        forced = tuple(fold_ids) if (force or fold is not None) else ()
        trained[run.name] = train_folds(ctx.spec, run, ctx.data, ctx.prepared, ctx.folds, fold_ids, ctx.runtime, forced)
    if fold is not None and fold not in spec_folds:
        print(f"train: note: fold {fold} is not in profile '{ctx.profile_name}' (folds {spec_folds}), so submit will not use it")
    return trained


def finished_models(ctx: Context) -> dict:
    """The trained folds of every run of the profile, or a UserError naming the first missing one."""
    trained = {}
    for run in ctx.profile.models:
        trained[run.name] = []
        for fold in ctx.spec.fold_indices(ctx.profile):
            folder = fold_folder(ctx.spec, run, ctx.prepared, ctx.folds, fold)
            if not is_complete(folder):
                raise UserError(f"{run.name} fold {fold} is not trained yet; run `make submit COMP={ctx.spec.name}` "
                                f"(or `make train COMP={ctx.spec.name}`) first")
            trained[run.name].append(FoldOutput(folder))
    return trained


def tta_and_ensemble(ctx: Context, trained: dict) -> tuple[Path, dict]:
    """TTA and ensemble over trained folds (both cached): (ensemble folder, its report)."""
    per_model = {name: tta_run(ctx.spec, name, folds, ctx.data, ctx.profile.tta, ctx.runtime) for name, folds in trained.items()}
    return ensemble(ctx.spec, ctx.profile.ensemble, per_model, ctx.data.labels_host())


def report_only(spec: CompetitionSpec, profile_name: str) -> Path:
    ctx = setup(spec, profile_name)
    trained = finished_models(ctx)
    folder, report = tta_and_ensemble(ctx, trained)
    return write_report(ctx, trained, folder, report)


def submit_all(spec: CompetitionSpec, profile_name: str, dry_run: bool = False, resubmit: bool = False) -> dict:
    started = time.perf_counter()
    ctx = setup(spec, profile_name)
    trained = train_models(ctx)
    folder, report = tta_and_ensemble(ctx, trained)
    test_probs = np.load(folder / "test_probs.npy")
    cv = report["ensemble"]["oof_accuracy"]
    test_ids = ctx.prepared.load().test_ids
    result = submit(spec, profile_name, test_ids, test_probs, cv, config_hash(spec, ctx.profile),
                    read_manifest(folder)["digest"], git_commit(), dry_run=dry_run, resubmit=resubmit)
    write_report(ctx, trained, folder, report)
    print_summary(ctx, trained, report, result, time.perf_counter() - started)
    print(report_disk_usage(spec))
    return {"report": report, "result": result}


def print_summary(ctx: Context, trained: dict, report: dict, result, seconds: float) -> None:
    rows = [(m.name, f"{m.parameters:,}", f"{m.accuracy_without_tta:.4f}", f"{m.accuracy_with_tta:.4f}", f"{m.weight:.2f}",
             f"{m.train_seconds:.0f}") for m in model_summaries(trained, report)]
    header = ("model", "params", "CV acc (no TTA)", f"CV acc ({'+'.join(ctx.profile.tta)})", "weight", "train s")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("{:<%d}" % w for w in widths)
    print("\n" + line.format(*header))
    for row in rows:
        print(line.format(*row))
    ens = report["ensemble"]
    print(f"ensemble ({report['method']}): CV accuracy {ens['oof_accuracy']:.4f} on {report['oof_rows']:,} out-of-fold rows, "
          f"log loss {ens['oof_log_loss']:.4f}")
    if result.public_score is not None:
        private = f", private {result.private_score:.4f}" if result.private_score is not None else ""
        print(f"leaderboard: public {result.public_score:.4f}{private} ({result.status})")
    else:
        print(f"leaderboard: no score ({result.status})")
    print(f"total {seconds / 60:.1f} min")


def default_dry_run() -> bool:
    return os.environ.get("DRY_RUN", "") not in ("", "0", "false", "no")
