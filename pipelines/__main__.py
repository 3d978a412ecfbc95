"""`python -m pipelines <stage> --comp NAME` — run pipeline stages from the command line.

Config is read and validated here, once; stages receive typed objects. Any UserError (bad YAML, bad data,
Kaggle unreachable, unknown model) is printed as one line, `error: ...`, with exit status 2; so is a
full disk. SIGTERM is handled like Ctrl-C, so that whatever was being written is cleaned up.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from competition import disk
from competition.cli import OneLineParser, whole_number
from competition.errors import UserError
from competition.paths import competition_root
from competition.redaction import redact
from competition.spec import available, load_spec
from models.errors import ModelError
from pipelines.machine.cores import CoreShare


def command_download(spec, args, share: CoreShare) -> None:
    from pipelines.stages.download import download

    download(spec, force=args.force)


def command_prepare(spec, args, share: CoreShare) -> None:
    from pipelines.stages.download import download
    from pipelines.stages.prepare import make_folds, prepare

    download(spec)
    prepared = prepare(spec, force=args.force)
    make_folds(spec, prepared, force=args.force)


def context_for(spec, args, share: CoreShare, need_record: bool = False):
    """A fixed profile's context (PROFILE=), or a time-budget plan's (BUDGET=, PLAN=, or the spec's pool)."""
    from pipelines.context import setup, setup_budget

    ctx = setup(spec, args.profile, share) if args.profile is not None else \
        setup_budget(spec, args.budget, args.plan, share, need_record=need_record)
    ctx.workers, ctx.scheduler, ctx.comp_argument = getattr(args, "workers", 1), getattr(args, "scheduler", None), args.comp
    return ctx


def command_train(spec, args, share: CoreShare) -> None:
    from pipelines.chain import train_models

    train_models(context_for(spec, args, share), only=args.model, fold=args.fold, force=args.force)


def command_submit(spec, args, share: CoreShare) -> None:
    from pipelines.chain import submit_all, train_models
    from pipelines.machine import ddp

    if not ddp.is_main():  # under DDP the other ranks train beside rank 0; it alone goes on to submit
        train_models(context_for(spec, args, share))
        return
    submit_all(context_for(spec, args, share), dry_run=args.dry_run, resubmit=args.resubmit)


def command_tune(spec, args, share: CoreShare) -> None:
    import dataclasses

    from pipelines.tuning.make_tune import run_study, study_request

    request = study_request(spec, args.profile, args.model, args.study, args.storage, args.trials, args.total)
    request = dataclasses.replace(request, workers=args.workers, scheduler=args.scheduler, comp_argument=args.comp)
    run_study(spec, request, share)


def command_scores(spec, args, share: CoreShare) -> None:
    from pipelines.stages.submit import update_scores

    update_scores(spec)


def command_prune(spec, args, share: CoreShare) -> None:
    from pipelines.after_run.prune import prune

    prune(spec, dry_run=args.dry_run)


def command_predict(spec, args, share: CoreShare) -> None:
    from pathlib import Path

    from pipelines.after_run.infer import run_predict

    run_predict(spec, Path(args.input), Path(args.out) if args.out else None, args.run, resize=args.resize,
                with_probs=args.probs, share=share)


def command_export(spec, args, share: CoreShare) -> None:
    from pipelines.after_run.export import export

    export(spec, args.run, competition=args.competition, owner=args.owner)


def command_report(spec, args, share: CoreShare) -> None:
    from pipelines.chain import report_only

    report_only(context_for(spec, args, share, need_record=True))


STAGES = {
    "download": (command_download, "fetch the competition's files through the Kaggle API"),
    "prepare": (command_prepare, "download if needed, then build cached arrays and stratified folds"),
    "train": (command_train, "train the profile's models (or one --model, one --fold)"),
    "tune": (command_tune, "an Optuna study over one model's hyperparameters (search space from the YAML)"),
    "report": (command_report, "the HTML run report (tables, learning curves, confusion matrix, studies, submissions)"),
    "submit": (command_submit, "everything: download, prepare, train, TTA, ensemble, validate, upload, log"),
    "scores": (command_scores, "complete the submissions log from the host: pending scores, and private scores "
               "once the competition has closed"),
    "prune": (command_prune, "remove output folders that no logged submission, plan or study needs"),
    "predict": (command_predict, "a logged run's ensemble on new images (a folder, a .npy array or a CSV of paths)"),
    "export": (command_export, "package a logged run for a Kaggle code competition: weights, model code, script, "
               "dataset and kernel metadata"),
}


def _terminated(signum, frame):
    raise KeyboardInterrupt  # unwinds like Ctrl-C: staging files and folders are removed on the way out


def disk_full_message(exc: BaseException, comp: str) -> str | None:
    """One line for a write the disk refused (full, a quota, a file-size limit); None for other errors."""
    root = competition_root(comp)
    code = disk.refusal(exc, root)
    if code is None:
        return None
    return disk.describe(code, getattr(exc, "filename", None) or root, f"make prune COMP={comp}")


def build_parser() -> argparse.ArgumentParser:
    from pipelines.chain import default_dry_run

    parser = OneLineParser(prog="python -m pipelines", description=__doc__,
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
            stage.add_argument("--profile", default=None, help="a fixed recipe profile (quick, full); default: plan "
                               "inside the time budget where the spec has a `pool:`, else quick on CPU, full on a GPU")
        if name in ("train", "submit", "report"):
            stage.add_argument("--budget", default=None, help="wall-clock budget for the whole command: 90s, 15m, 2h "
                               "(default: the spec's budget for this device)")
            stage.add_argument("--plan", default=None, help="replay this plan.json's decisions exactly")
        if name in ("train", "submit", "tune"):
            stage.add_argument("--workers", type=whole_number("WORKERS"), default=1,
                               help="Dask worker processes on this machine (train, submit: n workers; tune: "
                               "this process and n-1 workers)")
        if name in ("train", "submit", "tune"):
            stage.add_argument("--scheduler", default=None, help="a running Dask scheduler (tcp://host:8786) whose "
                               "workers share this data folder")
        if name in ("train", "submit"):
            stage.add_argument("--gpus", type=whole_number("GPUS"), default=1, help="train each run data-parallel on this many devices "
                               "(DDP through torchrun: NCCL on GPUs, gloo between CPU processes)")
        if name in ("train", "tune"):
            stage.add_argument("--model", default=None, help="only this model run (its alias or model name)")
        if name == "tune":
            stage.add_argument("--trials", type=whole_number("TRIALS", example=20), default=None, help="add this many trials to the study")
            stage.add_argument("--total", type=whole_number("--total", example=20), default=None, help="run until the study holds this many finished trials")
            stage.add_argument("--storage", default=None, help="SQLAlchemy URL (default: SQLite under .data/<comp>/tuning)")
            stage.add_argument("--study", default=None, help="study name (default: <comp>-<model>)")
        if name in ("predict", "export"):
            stage.add_argument("--run", default=None, help="the config hash of a logged submission (its file name and "
                               "log.csv show it; a prefix will do); default: the latest logged submission")
        if name == "predict":
            stage.add_argument("--input", required=True, help="a folder of images, a .npy array or a CSV with a path column")
            stage.add_argument("--out", default=None, help="output CSV (default: .data/<comp>/predictions/<input>-<run>.csv)")
            stage.add_argument("--resize", action="store_true", help="resize images of another size (bilinear)")
            stage.add_argument("--probs", action="store_true", help="also write <out>.probs.csv, one column a class")
        if name == "export":
            stage.add_argument("--competition", default=None, help="the Kaggle competition the kernel enters "
                               "(default: the spec's code_competition, else its kaggle_slug)")
            stage.add_argument("--owner", default=None, help="the Kaggle user who publishes the dataset and kernel "
                               "(default: the username of the kaggle client's credentials)")
        if name == "train":
            stage.add_argument("--fold", type=whole_number("FOLD", minimum=None, example=0), default=None, help="(re)train only this fold")
        if name == "submit":
            stage.add_argument("--dry-run", action="store_true", default=default_dry_run(),
                               help="validate the CSV but do not upload (also DRY_RUN=1)")
            stage.add_argument("--resubmit", action="store_true", help="upload even if these predictions were scored before")
    return parser


def main(argv: list[str] | None = None) -> int:
    from pipelines.machine import ddp

    argv = sys.argv[1:] if argv is None else argv
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, or the one line of a bad command line: a status like any other refusal
        return exc.code
    if not ddp.is_main():
        sys.stdout = open(os.devnull, "w")  # rank 0 speaks for the run; errors still reach stderr
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _terminated)
        disk.keep_writes_failing_instead_of_dying()
    spec = None
    try:
        spec = load_spec(args.comp)
        from pipelines.checks import check_command, resolve_mode

        resolve_mode(spec, args)  # PROFILE= or BUDGET=/PLAN=, with the defaults filled in

        check_command(spec, args)  # names, profile, MODEL=, FOLD=, tuning: before any download or training
        if getattr(args, "gpus", 1) > 1 and not ddp.launched():
            return ddp.launch(args.gpus, argv)
        share = CoreShare()  # this command's share of the cores: joined when it computes, given back at its end
        try:
            STAGES[args.stage][0](spec, args, share)
        finally:
            share.leave()
    except (UserError, ModelError) as exc:
        print(f"error: {redact(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished outputs are kept and a fold in progress resumes from its last epoch",
              file=sys.stderr)
        return 130
    except Exception as exc:  # a refused write is one line however its writer said it; anything else is raised
        message = disk_full_message(exc, spec.name if spec else args.comp)
        if message is None:
            raise
        print(f"error: {redact(message)}", file=sys.stderr)
        return 2
    finally:
        ddp.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
