"""`python -m pipelines <stage> --comp NAME` — run pipeline stages from the command line.

Config is read and validated here, once; stages receive typed objects. Any UserError (bad YAML, bad data,
Kaggle unreachable) is printed as one line, `error: ...`, with exit status 2.
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


STAGES = {
    "download": (run_download, "fetch the competition's files through the Kaggle API"),
    "prepare": (run_prepare, "download if needed, then build cached arrays and stratified folds"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True)
    for name, (_, help_text) in STAGES.items():
        stage = sub.add_parser(name, help=help_text)
        stage.add_argument("--comp", required=True, help=f"competition name ({', '.join(available())}) or a YAML path")
        stage.add_argument("--force", action="store_true", help="redo this stage even if its output exists")
    args = parser.parse_args(argv)
    try:
        spec = load_spec(args.comp)
        STAGES[args.stage][0](spec, args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed stage outputs are kept; partial ones were removed", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
