"""Chain the stages: download -> prepare -> folds -> train -> TTA -> ensemble -> submit.

Every stage skips work whose output already exists (outputs are keyed by what produced them), so a
second run with nothing changed only re-reads predictions, and a rerun of one fold redoes that fold and
what depends on it.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import models
from competition.errors import SpecError, UserError
from competition.recipe import ModelRun, Profile
from competition.spec import CompetitionSpec, stable_hash
from pipelines.artifacts import git_commit, is_complete, read_manifest
from pipelines.device import Runtime, pick_runtime
from pipelines.download import download
from pipelines.ensemble import ensemble
from pipelines.prepare import Folds, Prepared, make_folds, prepare
from pipelines.prune import report_disk_usage
from pipelines.submit import submit
from pipelines.report import write_report
from pipelines.train import FoldOutput, TrainingData, fold_folder, load_training_data, train_run
from pipelines.tta import tta_run


def check_profile(spec: CompetitionSpec, profile_name: str, profile: Profile) -> None:
    """Model names are checked at the edge too, with the YAML key that holds them."""
    for number, run in enumerate(profile.models):
        try:
            models.check_name(run.model)
        except UserError as exc:
            raise SpecError(f"competition/{spec.name}.yaml: key 'profiles.{profile_name}.models.{number}.model': {exc}") from None


def config_hash(spec: CompetitionSpec, profile: Profile) -> str:
    """What the submission depends on: the data, the folds, the flips and the whole recipe."""
    return stable_hash({"data": spec.data_hash(), "folds": spec.folds.model_dump(), "flips": spec.flips.model_dump(),
                        "profile": profile.model_dump(mode="json")})


@dataclass
class Context:
    spec: CompetitionSpec
    profile_name: str
    profile: Profile
    prepared: Prepared
    folds: Folds
    runtime: Runtime
    data: TrainingData


def setup(spec: CompetitionSpec, profile_name: str, resolve_tuned: bool = True) -> Context:
    profile = spec.profile(profile_name)
    check_profile(spec, profile_name, profile)
    if resolve_tuned:  # `params: best` -> the study's best parameters, before anything is hashed
        from pipelines.tune import resolve_params

        profile = profile.model_copy(update={"models": [resolve_params(spec, run) for run in profile.models]})
    download(spec)
    prepared = prepare(spec)
    folds = make_folds(spec, prepared)
    runtime = pick_runtime()
    print(f"run: {spec.name}, profile '{profile_name}' on {runtime.device}"
          f"{'' if runtime.amp_dtype is None else f' with {runtime.amp_dtype} autocast'}; "
          f"folds {spec.fold_indices(profile)} of {spec.folds.n_splits}")
    return Context(spec, profile_name, profile, prepared, folds, runtime, load_training_data(prepared, folds, runtime))


def find_run(ctx: Context, name: str) -> ModelRun:
    for run in ctx.profile.models:
        if name in (run.name, run.model):
            return run
    names = ", ".join(r.name for r in ctx.profile.models)
    raise SpecError(f"competition/{ctx.spec.name}.yaml: profile '{ctx.profile_name}' has no model '{name}' (has: {names})")


def train_models(ctx: Context, only: str | None = None, fold: int | None = None, force: bool = False) -> dict:
    """Train (or reuse) every run and fold of the profile; `fold` given = retrain exactly that fold."""
    fold_ids = spec_folds = ctx.spec.fold_indices(ctx.profile)
    if fold is not None:
        if not 0 <= fold < ctx.spec.folds.n_splits:
            raise UserError(f"FOLD={fold}: folds are numbered 0..{ctx.spec.folds.n_splits - 1}")
        fold_ids = [fold]
    runs = [find_run(ctx, only)] if only else ctx.profile.models
    trained = {}
    for run in runs:
        forced = tuple(fold_ids) if (force or fold is not None) else ()
        trained[run.name] = train_run(ctx.spec, run, ctx.data, ctx.prepared, ctx.folds, fold_ids, ctx.runtime, forced)
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


def combine(ctx: Context, trained: dict) -> tuple[dict, Path, dict]:
    """TTA and ensemble over trained folds (both cached): (per-model TTA outputs, ensemble folder, report)."""
    per_model = {name: tta_run(ctx.spec, name, folds, ctx.data, ctx.profile.tta, ctx.runtime) for name, folds in trained.items()}
    folder, report = ensemble(ctx.spec, ctx.profile.ensemble, per_model, ctx.data.labels.cpu().numpy())
    return per_model, folder, report


def report_only(spec: CompetitionSpec, profile_name: str) -> Path:
    ctx = setup(spec, profile_name)
    trained = finished_models(ctx)
    per_model, folder, report = combine(ctx, trained)
    return write_report(ctx, trained, per_model, folder, report)


def submit_all(spec: CompetitionSpec, profile_name: str, dry_run: bool = False, resubmit: bool = False) -> dict:
    started = time.perf_counter()
    ctx = setup(spec, profile_name)
    trained = train_models(ctx)
    per_model, folder, report = combine(ctx, trained)
    test_probs = np.load(folder / "test_probs.npy")
    cv = report["ensemble"]["oof_accuracy"]
    test_ids = ctx.prepared.load().test_ids
    result = submit(spec, profile_name, test_ids, test_probs, cv, config_hash(spec, ctx.profile),
                    read_manifest(folder)["digest"], git_commit(), dry_run=dry_run, resubmit=resubmit)
    write_report(ctx, trained, per_model, folder, report)
    print_summary(ctx, trained, per_model, report, result, time.perf_counter() - started)
    print(report_disk_usage(spec))
    return {"report": report, "result": result}


def print_summary(ctx: Context, trained: dict, per_model: dict, report: dict, result, seconds: float) -> None:
    rows = []
    for entry in report["models"]:
        manifests = [read_manifest(f.folder) for f in trained[entry["name"]]]
        plain = np.mean([m["val_accuracy"] for m in manifests])
        rows.append((entry["name"], f"{manifests[0]['parameters']:,}", f"{plain:.4f}", f"{entry['oof_accuracy']:.4f}",
                     f"{entry['weight']:.2f}", f"{sum(m['train_seconds'] for m in manifests):.0f}"))
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
