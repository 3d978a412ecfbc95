"""`python -m pipelines <stage> --comp NAME` — run pipeline stages from the command line.

Config is read and validated here, once; stages receive typed objects. Any UserError (bad YAML, bad data,
Kaggle unreachable, unknown model) is printed as one line, `error: ...`, with exit status 2.
"""
from __future__ import annotations

import argparse
import sys

from competition.errors import UserError
from competition.spec import available, load_spec


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


STAGES = {
    "download": (run_download, "fetch the competition's files through the Kaggle API"),
    "prepare": (run_prepare, "download if needed, then build cached arrays and stratified folds"),
    "train": (run_train, "train the profile's models (or one --model, one --fold)"),
    "submit": (run_submit, "everything: download, prepare, train, TTA, ensemble, validate, upload, log"),
}


def main(argv: list[str] | None = None) -> int:
    from pipelines.run import default_dry_run

    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (_, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text)
        stage.add_argument("--comp", required=True, help=f"competition name ({', '.join(available())}) or a YAML path")
        stage.add_argument("--force", action="store_true", help="redo this stage even if its output exists")
        if name in ("train", "submit"):
            stage.add_argument("--profile", default=None, help="recipe profile (default: quick on CPU, full on a GPU)")
        if name == "train":
            stage.add_argument("--model", default=None, help="only this model run (its alias or model name)")
            stage.add_argument("--fold", type=int, default=None, help="(re)train only this fold")
        if name == "submit":
            stage.add_argument("--dry-run", action="store_true", default=default_dry_run(),
                               help="validate the CSV but do not upload (also DRY_RUN=1)")
            stage.add_argument("--resubmit", action="store_true", help="upload even if these predictions were scored before")
    args = parser.parse_args(argv)
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
