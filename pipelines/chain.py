"""The stages chained for the commands that run several: `make train`, `make submit`, `make report`.

download -> prepare -> folds (context.setup) -> [probe -> plan (context.setup_budget)] -> train ->
TTA -> ensemble -> submit -> report.

Every stage skips work whose output already exists (outputs are keyed by what produced them), so a
second run with nothing changed only re-reads predictions, and a rerun of one fold redoes that fold and
what depends on it. A time-budget run trains through `pipelines.execution.runner` with the deadline guard.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from competition.errors import UserError
from competition.spec import stable_hash
from pipelines.after_run.code_submit import submit_through_kernel
from pipelines.after_run.prune import report_disk_usage
from pipelines.context import Context
from pipelines.execution.executors import open_executor
from pipelines.execution.runner import DeadlineGuard, Unit, fixed_units, run_units, units_of
from pipelines.machine import ddp
from pipelines.planning.records import Clock, PlanOfRecord, Shortening, execution, save_plan
from pipelines.report.page import model_summaries, write_report
from pipelines.stages.artifacts import git_commit, is_complete, read_manifest
from pipelines.stages.ensemble import ensemble
from pipelines.stages.lineage import LoggedRun, member_sources
from pipelines.stages.predict import FoldOutput
from pipelines.stages.submit import Submission, submit
from pipelines.stages.train import FoldJob
from pipelines.stages.tta import tta_run
from pipelines.tuning.planned import run_planned_study

GUARD_SLACK = 0.025  # of the budget: a running unit is shortened once it would overrun by more


def config_hash(ctx: Context) -> str:
    """What the submission depends on: the data, the folds, the flips and the whole recipe (or plan)."""
    recipe = ctx.plan.hash_input() if ctx.plan is not None else ctx.profile.model_dump(mode="json")
    return stable_hash({"data": ctx.spec.data_hash(), "folds": ctx.spec.folds.model_dump(),
                        "flips": ctx.spec.flips.model_dump(), "profile": recipe})


def after_unit(ctx: Context, unit: Unit, output: FoldOutput, seconds: float | None) -> None:
    """What the command keeps of a trained unit, wherever it trained: a new shortening for the plan to
    replay, its time, and a line."""
    manifest = read_manifest(output.folder)
    if unit.planned is not None and manifest.get("shortened") and unit.shortening is None:
        unit.planned.shortened.append(Shortening(fold=unit.fold, **manifest["shortened"]))
    if seconds is not None:
        ctx.stage_seconds[f"train {unit.what}"] = seconds
        ctx.trained_any = True
    print(f"train: {unit.what}: val accuracy {manifest['val_accuracy']:.4f} (best epoch {manifest['best_epoch']}) "
          f"-> {output.folder}")


def executor(ctx: Context):
    """This command's executor: this process, or the Dask cluster of WORKERS=/SCHEDULER=."""
    return open_executor(ctx.inputs, ctx.workers, ctx.scheduler, ctx.comp_argument)


def train_models(ctx: Context, only: str | None = None, fold: int | None = None, force: bool = False) -> dict:
    """Train (or reuse) every run and fold; `fold` given = retrain exactly that fold."""
    if ctx.plan is not None and only is None and fold is None and not force:
        return train_planned(ctx)
    work = [(run, [fold] if fold is not None else run_folds) for run, run_folds in ctx.work()
            if not only or only in (run.name, run.model)]
    if only and not work:
        if ctx.plan is None:
            ctx.spec.model_run(ctx.profile_name, only)  # raises the one-line error naming the runs there are
        names = ", ".join(run.name for run, _ in ctx.work())
        raise UserError(f"MODEL={only}: not a run of this plan (has: {names}); set MODEL= to one of them")
    if fold is not None:
        for run, run_folds in ctx.work():
            if (not only or only in (run.name, run.model)) and fold not in run_folds:
                print(f"train: note: fold {fold} is not among {run.name}'s folds {run_folds}, so submit will not use it")
    with executor(ctx) as running:
        return run_units(fixed_units(work, force=force or fold is not None), running,
                         on_done=lambda unit, output, seconds: after_unit(ctx, unit, output, seconds))


def train_planned(ctx: Context) -> dict:
    """The plan's study (if any, and not done yet), then its units through the runner; the deadline guard
    watches unless the plan is a replay."""
    if ctx.plan.study is not None and not ctx.plan.study.done:
        ctx.plan, seconds = run_planned_study(ctx.inputs, PlanOfRecord(ctx.plan, ctx.plan_path, ctx.replay, ctx.started))
        ctx.profile = ctx.plan.profile()
        ctx.stage_seconds["study"] = ctx.stage_seconds.get("study", 0.0) + seconds
    plan = ctx.plan
    started = time.monotonic()

    def keep(plan) -> None:
        if ddp.is_main():  # under DDP rank 0 keeps the plan of record
            save_plan(plan, ctx.plan_path)

    guard = None
    if not ctx.replay:  # each unit's TTA time is counted with the unit (PlannedRun.tta_seconds_per_fold)
        guard = DeadlineGuard(Clock(), plan, train_deadline=ctx.started + plan.budget_seconds - plan.reserve_seconds,
                              slack=GUARD_SLACK * plan.budget_seconds, on_change=keep)
    with executor(ctx) as running:
        trained = run_units(units_of(plan), running, guard,
                            on_done=lambda unit, output, seconds: after_unit(ctx, unit, output, seconds))
    if guard is not None:
        plan.notes.extend(n for n in guard.notes if n not in plan.notes)
        for note in guard.notes:
            print(f"deadline guard: {note}")
    ctx.profile = plan.profile()  # the guard may have dropped runs or folds
    ctx.stage_seconds["train"] = time.monotonic() - started
    keep(plan)
    return trained


def finished_models(ctx: Context) -> dict:
    """The trained folds of every run, or a UserError naming the first missing one."""
    trained = {}
    for run, run_folds in ctx.work():
        trained[run.name] = []
        for fold in run_folds:
            folder = FoldJob(ctx.inputs, run, fold).folder()
            if not is_complete(folder):
                raise UserError(f"{run.name} fold {fold} is not trained yet; run `make submit COMP={ctx.spec.name}` "
                                f"(or `make train COMP={ctx.spec.name}`) first")
            trained[run.name].append(FoldOutput(folder))
    return trained


def tta_and_ensemble(ctx: Context, trained: dict) -> tuple[Path, dict]:
    """TTA and ensemble over trained folds (both cached): (ensemble folder, its report)."""
    started = time.monotonic()
    per_model = {name: tta_run(ctx.spec, name, folds, ctx.data, ctx.profile.tta, ctx.runtime) for name, folds in trained.items()}
    ctx.stage_seconds["tta"] = time.monotonic() - started
    started = time.monotonic()
    def sources() -> dict:
        return {name: member_sources(ctx.spec, folds, ctx.profile.tta) for name, folds in trained.items()}

    result = ensemble(ctx.spec, ctx.profile.ensemble, per_model, ctx.data.labels_host(), ctx.data.fold_of_row, sources)
    ctx.stage_seconds["ensemble"] = time.monotonic() - started
    return result


def report_only(ctx: Context) -> Path:
    trained = finished_models(ctx)
    folder, report = tta_and_ensemble(ctx, trained)
    return write_report(ctx, trained, folder, report)


def submit_all(ctx: Context, dry_run: bool = False, resubmit: bool = False) -> dict:
    trained = train_models(ctx)
    folder, report = tta_and_ensemble(ctx, trained)
    test_probs = np.load(folder / "test_probs.npy")
    cv = report["cross_fitted"]["oof_score"]  # the honest figure: nothing fitted on the rows it scores
    prepared = ctx.prepared.load()
    started = time.monotonic()
    submission = Submission(ctx.profile_name, prepared.test_ids, test_probs, cv, config_hash(ctx),
                            read_manifest(folder)["digest"], git_commit(), ensemble=folder.name,
                            held_out_labels=prepared.test_labels)
    if ctx.spec.kernels_only:  # a code competition: the run enters through a kernel on the host
        manifest = read_manifest(folder)
        logged = LoggedRun(submission.config_hash, folder, manifest["lineage"], {"git_commit": submission.git_commit})
        result = submit_through_kernel(ctx.spec, submission, logged, dry_run=dry_run, resubmit=resubmit)
    else:
        result = submit(ctx.spec, submission, dry_run=dry_run, resubmit=resubmit)
    ctx.stage_seconds["submit"] = time.monotonic() - started
    # A cached rerun keeps the first run's minutes in the plan of record.
    measured = ctx.plan is not None and (ctx.trained_any or not ctx.plan.actual)
    started = time.monotonic()
    if measured:
        record_actual(ctx, report)  # so that the report shows the training minutes
    write_report(ctx, trained, folder, report)
    ctx.stage_seconds["report"] = time.monotonic() - started
    print_summary(ctx, trained, report, result, time.monotonic() - ctx.started)
    if measured:
        record_actual(ctx, report)
    if ctx.plan is not None:
        print(planned_vs_actual(ctx))
    print(report_disk_usage(ctx.spec))
    return {"report": report, "result": result}


def record_actual(ctx: Context, report: dict) -> None:
    """Write the measured minutes, and the outcome a later plan learns from (each run's ensemble weight
    and held-out score, the cross-fitted CV), into the plan of record."""
    plan = ctx.plan
    plan.status = "ran"
    plan.actual = {"seconds": {k: round(v, 1) for k, v in ctx.stage_seconds.items()},
                   "total_seconds": round(time.monotonic() - ctx.started, 1),
                   "weights": {m["name"]: m["weight"] for m in report["models"]},
                   "val_scores": {m["name"]: round(m["oof_score"], 5) for m in report["models"]},
                   "cross_fitted": round(report["cross_fitted"]["oof_score"], 5)}
    save_plan(plan, ctx.plan_path)


def planned_vs_actual(ctx: Context) -> str:
    """The end-of-run table: planned and actual minutes per stage and per run, and the precision chosen."""
    plan, seconds = ctx.plan, ctx.stage_seconds
    rows = [("stage / run", "planned min", "actual min", "precision (why)")]
    parts = ", ".join(f"{k.removeprefix('setup: ')} {v:.0f} s" for k, v in seconds.items() if k.startswith("setup: "))
    rows.append(("setup (download, prepare, load, probe)", f"{plan.setup_seconds / 60:.2f}", f"{seconds.get('setup', 0) / 60:.2f}",
                 parts))
    if plan.study is not None:
        study = plan.study
        found = f"best {study.best_value:.4f} vs own recipe {study.own_recipe_value}" if study.best_params else ""
        rows.append((f"Optuna study on {study.run} ({study.trials_run} trials)", f"{study.seconds / 60:.2f}",
                     f"{seconds.get('study', 0) / 60:.2f}", found))
    for planned in plan.runs:
        actual = sum(v for k, v in seconds.items() if k.startswith(f"train {planned.run.name} fold "))
        cut = "".join(f", fold {s.fold} shortened to {s.epochs} after epoch {s.from_epoch}" for s in planned.shortened)
        rows.append((f"train {planned.run.name} ({len(planned.folds)} fold{'s' * (len(planned.folds) > 1)}, "
                     f"{planned.run.epochs} epochs{cut})", f"{len(planned.folds) * planned.seconds_per_fold / 60:.2f}",
                     f"{actual / 60:.2f}", f"{execution(planned.run)} ({planned.precision_reason})"))
    tta_planned = sum(p.tta_seconds_per_fold * len(p.folds) for p in plan.runs)
    rows.append((f"TTA ({'+'.join(plan.tta)})", f"{tta_planned / 60:.2f}", f"{seconds.get('tta', 0) / 60:.2f}", ""))
    after = sum(seconds.get(k, 0) for k in ("ensemble", "submit", "report"))
    rows.append(("ensemble, upload, report", f"{plan.reserve_seconds / 60:.2f}", f"{after / 60:.2f}", ""))
    total_planned = plan.estimated_total_seconds()
    total = time.monotonic() - ctx.started
    rows.append(("total", f"{total_planned / 60:.2f}", f"{total / 60:.2f}",
                 f"budget {plan.budget_seconds / 60:.2f} min ({total / plan.budget_seconds:.0%} used)"))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = ["\nplanned vs actual"] + ["  ".join([r[0].ljust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2]), r[3]])
                                        for r in rows]
    if plan.precisions_left_out:
        lines.append("precisions not measured: " + "; ".join(f"{k}: {v}" for k, v in plan.precisions_left_out.items()))
    return "\n".join(lines)


def print_summary(ctx: Context, trained: dict, report: dict, result, seconds: float) -> None:
    rows = [(m.name, f"{m.parameters:,}", f"{m.accuracy_without_tta:.4f}", f"{m.accuracy_with_tta:.4f}", f"{m.weight:.2f}",
             f"{m.train_seconds:.0f}") for m in model_summaries(trained, report)]
    header = ("model", "params", "CV acc (no TTA)", f"CV acc ({'+'.join(ctx.profile.tta)})", "weight", "train s")
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = "  ".join("{:<%d}" % w for w in widths)
    print("\n" + line.format(*header))
    for row in rows:
        print(line.format(*row))
    ens, metric = report["ensemble"], ctx.spec.metric.bind()
    best = max(report["models"], key=lambda m: metric.signed(m["oof_score"]))
    shared = f" (the rows every model holds out: {report['shared_note']})" if report.get("shared_note") else ""
    accuracy = "" if metric.name == "accuracy" else f" (accuracy {ens['oof_accuracy']:.4f})"
    print(f"ensemble ({report['method']}): CV {metric.label} {ens['oof_score']:.4f}{accuracy} on {report['oof_rows']:,} "
          f"out-of-fold rows{shared}, log loss {ens['oof_log_loss']:.4f}; best single model {best['name']} "
          f"{best['oof_score']:.4f} on the same rows ({(ens['oof_score'] - best['oof_score']) * 100:+.2f} points, "
          f"{'higher' if metric.greater_is_better else 'lower'} is better)")
    crossed = report["cross_fitted"]
    print(f"cross-fitted CV {metric.label} {crossed['oof_score']:.4f} (weights{' and temperatures' if 'calibration' in report else ''} "
          f"fitted on the other {crossed['groups'] - 1} of {crossed['groups']} groups of rows; the in-sample "
          f"{ens['oof_score']:.4f} reuses the rows it scores)")
    if "decision_rule" in report:
        rule = report["decision_rule"]
        verdict = "applied" if rule["applied"] else "not applied: it did not hold up on held-out rows"
        fitted = (f"per-label thresholds {rule['thresholds']} (against a flat 0.5)" if "thresholds" in rule
                  else f"per-class weights {rule['class_weights']}")
        print(f"decision rule: {fitted}; cross-fitted {metric.label} "
              f"{rule['cross_fitted_without']:.4f} without, {rule['cross_fitted_with']:.4f} with "
              f"({rule['cross_fitted_gain'] * 100:+.2f} points): {verdict}")
    if "calibration" in report:
        calibration = report["calibration"]
        print(f"calibration: temperatures {calibration['temperatures']}; log loss {calibration['log_loss_before']:.4f} -> "
              f"{calibration['log_loss_after']:.4f} (cross-fitted), expected calibration error "
              f"{calibration['ece_before']:.4f} -> {calibration['ece_after']:.4f}")
    synthetic = " (SYNTHETIC stand-in data)" if ctx.spec.synthetic else ""
    if result.status == "LOCAL":
        print(f"local score (a dataset: its held-out rows, no leaderboard): {result.public_score:.4f}{synthetic}")
    elif result.public_score is not None:
        private = f", private {result.private_score:.4f}" if result.private_score is not None else ""
        print(f"leaderboard: public {result.public_score:.4f}{private} ({result.status}){synthetic}")
    else:
        print(f"leaderboard: no score ({result.status})")
    print(f"total {seconds / 60:.1f} min")


def default_dry_run() -> bool:
    return os.environ.get("DRY_RUN", "") not in ("", "0", "false", "no")
