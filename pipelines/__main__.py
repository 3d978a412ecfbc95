"""`python -m pipelines <stage> --comp NAME` — run pipeline stages from the command line.

Config is read and validated here, once; stages receive typed objects. Any UserError (bad YAML, bad data,
Kaggle unreachable, unknown model) is printed as one line, `error: ...`, with exit status 2; so is a
full disk. SIGTERM is handled like Ctrl-C, so that whatever was being written is cleaned up.
"""
from __future__ import annotations

import argparse
import errno
import shutil
import signal
import sys
import threading

from competition.errors import UserError
from competition.paths import competition_root
from competition.spec import available, load_spec

DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def run_download(spec, args) -> None:
    from pipelines.download import download

    download(spec, force=args.force)


def run_prepare(spec, args) -> None:
    from pipelines.download import download
    from pipelines.prepare import make_folds, prepare

    download(spec)
    prepared = prepare(spec, force=args.force)
    make_folds(spec, prepared, force=args.force)


def run_train(spec, args) -> None:
    from pipelines.run import setup, train_models

    train_models(setup(spec, args.profile), only=args.model, fold=args.fold, force=args.force)


def run_submit(spec, args) -> None:
    from pipelines.run import submit_all

    submit_all(spec, args.profile, dry_run=args.dry_run, resubmit=args.resubmit)


def run_tune(spec, args) -> None:
    import optuna

    from competition.paths import competition_root
    from pipelines.run import find_run, setup
    from pipelines.tune import (default_study_name, finished_trials, open_storage, report_study, spawn_workers,
                                storage_url, tune)

    if args.total is None and args.trials is None:
        raise UserError("say how many trials: --trials N (add N to the study) or --total N (run until it holds N)")
    ctx = setup(spec, args.profile, resolve_tuned=False)
    run = find_run(ctx, args.model).model_copy(update={"params": None}) if args.model else ctx.profile.models[0]
    study_name = args.study or default_study_name(spec, run)
    url = storage_url(spec, args.storage)
    total = args.total
    if total is None:  # fixed once here, so that every worker aims at the same total
        study = optuna.create_study(study_name=study_name, storage=open_storage(url), direction="maximize", load_if_exists=True)
        total = finished_trials(study) + args.trials
    if args.workers > 1:
        argv = ["tune", "--comp", args.comp, "--profile", args.profile, "--model", run.name, "--study", study_name,
                "--total", str(total), "--workers", "1", "--no-report"]
        status = spawn_workers(argv, args.workers, storage=url)  # the URL may hold a password: not on argv
        if status:
            raise UserError(f"tune: a worker exited with status {status}")
        study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    else:
        study = tune(spec, ctx, run, total, study_name, url)
    if not args.no_report:  # spawned workers leave the report to the command that started them
        report_study(study, competition_root(spec.name) / "tuning" / study_name, url)


def run_prune(spec, args) -> None:
    from pipelines.prune import prune

    prune(spec, dry_run=args.dry_run)


def run_report(spec, args) -> None:
    from pipelines.run import report_only

    report_only(spec, args.profile)


STAGES = {
    "download": (run_download, "fetch the competition's files through the Kaggle API"),
    "prepare": (run_prepare, "download if needed, then build cached arrays and stratified folds"),
    "train": (run_train, "train the profile's models (or one --model, one --fold)"),
    "tune": (run_tune, "an Optuna study over one model's hyperparameters (search space from the YAML)"),
    "report": (run_report, "the HTML run report (tables, learning curves, confusion matrix, studies, submissions)"),
    "submit": (run_submit, "everything: download, prepare, train, TTA, ensemble, validate, upload, log"),
    "prune": (run_prune, "remove output folders that no logged submission, plan or study needs"),
}


def _terminated(signum, frame):
    raise KeyboardInterrupt  # unwinds like Ctrl-C: staging files and folders are removed on the way out


def disk_full_message(exc: BaseException, comp: str) -> str | None:
    """One line for a write that failed because the disk (or a quota) is full; None for other errors."""
    filename = getattr(exc, "filename", None)
    if isinstance(exc, OSError) and exc.errno in DISK_FULL:
        where = filename or competition_root(comp)
    elif isinstance(exc, RuntimeError) and "write failed" in str(exc):  # torch.save's own writer
        where = competition_root(comp)
        if shutil.disk_usage(where if where.exists() else where.parent).free > 64 << 20:
            return None
    else:
        return None
    return (f"disk full while writing {where}: nothing partial was kept; free space (`make prune COMP={comp}` "
            "removes outputs no submission needs) and run the same command again")


def main(argv: list[str] | None = None) -> int:
    from pipelines.run import default_dry_run

    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (_, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text)
        stage.add_argument("--comp", required=True, help=f"competition name ({', '.join(available())}) or a YAML path")
        stage.add_argument("--force", action="store_true", help="redo this stage even if its output exists")
        if name == "prune":
            stage.add_argument("--dry-run", action="store_true", default=default_dry_run(),
                               help="list what would be removed (also DRY_RUN=1)")
        if name in ("train", "submit", "tune", "report"):
            stage.add_argument("--profile", default=None, help="recipe profile (default: quick on CPU, full on a GPU)")
        if name in ("train", "tune"):
            stage.add_argument("--model", default=None, help="only this model run (its alias or model name)")
        if name == "tune":
            stage.add_argument("--trials", type=int, default=None, help="add this many trials to the study")
            stage.add_argument("--total", type=int, default=None, help="run until the study holds this many finished trials")
            stage.add_argument("--storage", default=None, help="SQLAlchemy URL (default: SQLite under .data/<comp>/tuning)")
            stage.add_argument("--study", default=None, help="study name (default: <comp>-<model>)")
            stage.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
            stage.add_argument("--no-report", action="store_true", help=argparse.SUPPRESS)
        if name == "train":
            stage.add_argument("--fold", type=int, default=None, help="(re)train only this fold")
        if name == "submit":
            stage.add_argument("--dry-run", action="store_true", default=default_dry_run(),
                               help="validate the CSV but do not upload (also DRY_RUN=1)")
            stage.add_argument("--resubmit", action="store_true", help="upload even if these predictions were scored before")
    args = parser.parse_args(argv)
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
    spec = None
    try:
        spec = load_spec(args.comp)
        if getattr(args, "profile", "") is None:
            from pipelines.device import default_profile

            args.profile = default_profile()
        STAGES[args.stage][0](spec, args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept and a fold in progress resumes from its last epoch",
              file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as exc:
        message = disk_full_message(exc, spec.name if spec else args.comp)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
