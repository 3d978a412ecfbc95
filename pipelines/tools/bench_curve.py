"""`make bench-curve` (and a section of `make bench`): validation accuracy after N seconds of training, for
every candidate of the competition's pool, on fold 0 of this machine. The table a competitor racing a
deadline wants: which net buys the most accuracy in the minutes there are.

For each candidate and each N (`SECONDS=`, default 60): its speed comes from the planner's probe (cached
per machine), which sets a schedule of E = N × images/s ÷ training rows whole epochs, so the one-cycle
schedule ends at about N seconds; where even one epoch takes longer, the fold's training rows are
subsampled so that one epoch fits. Each run trains from scratch under a scratch folder (nothing joins
the competition's outputs); the table gives the best validation accuracy, the seconds the training steps
really took (validation passes excluded), the epochs and the share of rows.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import numpy as np

import models
from competition.errors import UserError
from competition.spec import load_spec
from pipelines.machine.device import machine_description
from pipelines.planning.plan import pick_precision
from pipelines.planning.probe import check_reduced_precision, probe_run
from pipelines.stages.artifacts import read_manifest
from pipelines.stages.inputs import TrainingInputs, load_inputs
from pipelines.stages.train import FoldJob, FoldOptions, train_fold


def accuracy_by_time(inputs: TrainingInputs, seconds: list[float]) -> list[dict]:
    spec, data, runtime = inputs.spec, inputs.data, inputs.runtime
    if spec.pool is None:
        raise UserError(f"competition/{spec.name}.yaml has no `pool:` of candidates to compare; use a competition "
                        "with one (fashion-mnist, digits, tiny-image-challenge)")
    train_rows = int(np.sum(data.fold_of_row != 0))
    rows = []
    for candidate in spec.pool.candidates:
        speeds = probe_run(spec, candidate, data, runtime)
        precision, _ = pick_precision(candidate, speeds,
                                      lambda c, p: check_reduced_precision(spec, c, data, runtime, p, family=c.family))
        rate = speeds[precision].train_images_per_second
        for asked in seconds:
            epochs_fitting = asked * rate / train_rows
            epochs, subsample = max(1, math.floor(epochs_fitting)), min(1.0, epochs_fitting)
            run = candidate.as_run(epochs, precision)
            with tempfile.TemporaryDirectory(prefix="kpipe-curve-") as scratch:
                output = train_fold(FoldJob(inputs, run, 0), FoldOptions(force=True, out_root=Path(scratch),
                                                                        subsample=subsample))
                manifest = read_manifest(output.folder)
            rows.append({"candidate": candidate.name, "family": candidate.family, "precision": precision,
                         "seconds_asked": asked, "epochs": epochs, "row_share": round(subsample, 3),
                         "train_seconds": manifest["train_seconds"], "val_accuracy": round(manifest["val_accuracy"], 4)})
    return rows


def print_table(rows: list[dict], machine: str, competition: str) -> None:
    print(f"\naccuracy after N seconds of training: {competition}, fold 0, {machine}")
    print(f"{'candidate':<16} {'precision':<9} {'N s':>5} {'epochs':>6} {'rows':>5} {'trained s':>9} {'val acc':>8}")
    for r in rows:
        print(f"{r['candidate']:<16} {r['precision']:<9} {r['seconds_asked']:>5.0f} {r['epochs']:>6} "
              f"{r['row_share']:>5.0%} {r['train_seconds']:>9.0f} {r['val_accuracy']:>8.4f}")


def parse_seconds(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(not 5 <= v <= 7200 for v in values):
        raise UserError(f"SECONDS={text}: give seconds of training between 5 and 7200, comma-separated (e.g. 60,120)")
    return values


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench-curve", description=__doc__.splitlines()[0])
    parser.add_argument("--comp", default="fashion-mnist")
    parser.add_argument("--seconds", default="60")
    args = parser.parse_args(argv)
    try:
        seconds = parse_seconds(args.seconds)
        inputs = load_inputs(load_spec(args.comp))
        rows = accuracy_by_time(inputs, seconds)
    except (UserError, models.ModelError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    machine = machine_description(inputs.runtime)
    print_table(rows, machine, inputs.spec.name)
    print(json.dumps({"benchmark": "accuracy_by_time", "competition": inputs.spec.name, "machine": machine,
                      "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
