"""`make bench`: does the pipeline's data path starve the model? Prints a table, then the same as JSON.

Rows:
- plain loop: a minimal PyTorch loop written here — in-memory uint8 tensors, random flip + shift, SGD,
  channels_last — the reference the pipeline must keep up with (target: pipeline >= 0.9x).
- pipeline: the real `train_fold` on the same fold, model and batch size, its images/s from history.csv
  (training steps only, validation excluded, as in the plain loop).
- augmentation alone: the batched `light` policy and per-sample albumentations `strong`.
- inference: test-set predictions a second, of the benchmark's fold model without and with the spec's TTA
  views, and of the latest logged run's whole ensemble as `make predict` runs it.
- precision probe: every candidate of the competition's pool in every precision this machine offers
  (measured afresh, not from the probe cache), with the speed-up over fp32.
- planner accuracy: a real time-budget run of digits (BENCH_PLAN_BUDGET, default 60s, dry run), then
  actual / planned wall time of every plan of record on this machine.
- accuracy after N seconds (pipelines/tools/bench_curve.py): every pool candidate trained from scratch on fold 0
  for schedules of BENCH_CURVE seconds each (default 60; comma-separated for several).
- concurrency (pipelines/tools/bench_concurrency.py): one training process alone, two at once taking every core
  each, two sharing the cores, and the same work in one process or two; for the benchmark's model and for
  digits' small `cnn3` (small steps, where threads fighting over cores costs most).

Environment: BENCH_COMP (default fashion-mnist), BENCH_MODEL (fastcnn), BENCH_BATCH (128), BENCH_EPOCHS (1).
"""
from __future__ import annotations

import csv
import json
import os
import platform
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

import models
from competition.errors import UserError
from competition.recipe import AugmentConfig, ModelRun
from competition.spec import load_spec
from pipelines.machine.device import machine_description, machine_key, offered_precisions
from pipelines.recipe.augment import BatchAugmenter
from pipelines.stages.inputs import load_inputs
from pipelines.stages.train import FoldJob, FoldOptions, train_fold
from pipelines.tools.bench_concurrency import concurrency_table, print_tune, tune_workers
from pipelines.tools.bench_curve import accuracy_by_time, parse_seconds
from pipelines.tools.bench_curve import print_table as print_curve
from pipelines.tools.bench_concurrency import print_table as print_concurrency


def plain_loop(images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, model_name: str, batch: int,
               num_classes: int, device: torch.device, hflip: bool) -> float:
    """The reference: as little as a training loop can be. Returns images/s over one pass of `rows`.
    (Its inputs are spelled out one by one: it shares no object with the pipeline it is measured against.)"""
    torch.manual_seed(0)
    model = models.create(model_name, num_classes=num_classes, in_chans=images.shape[1], img_size=images.shape[2])
    model = model.to(device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4)
    mean, std = images.float().mean(), images.float().std()
    order = rows[torch.randperm(len(rows))]
    steps = len(order) // batch
    started = time.perf_counter()
    for step in range(steps):
        idx = order[step * batch:(step + 1) * batch]
        x = images[idx]
        if hflip:
            flip = torch.rand(len(x), device=device) < 0.5
            x = torch.where(flip[:, None, None, None], x.flip(3), x)
        dx, dy = np.random.randint(-2, 3, 2)  # one shift per batch: the cheapest possible
        x = torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))
        x = ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(model(x), labels[idx], label_smoothing=0.1)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * batch / (time.perf_counter() - started)


def augmentation_only(spec, data, policy: str, rows: torch.Tensor, batch: int) -> float:
    augmenter = BatchAugmenter(AugmentConfig(policy=policy), spec, data.images, data.images_nhwc)
    batches = list(rows.split(batch))
    started = time.perf_counter()
    count = sum(len(b) for b in augmenter.batches(batches, seed=0))
    return count / (time.perf_counter() - started)


def precision_table(spec, data, runtime) -> list[dict]:
    from pipelines.planning.probe import measure

    rows = []
    for candidate in spec.pool.candidates if spec.pool else []:
        speeds = {p: measure(spec, candidate.model_copy(update={"precision": p}), data, runtime)
                  for p in offered_precisions(runtime)[0]}
        base = speeds["fp32"].train_images_per_second if "fp32" in speeds else None
        for precision, speed in speeds.items():
            rows.append({"candidate": candidate.name, "precision": precision,
                         "train_images_per_second": speed.train_images_per_second,
                         "predict_images_per_second": speed.predict_images_per_second,
                         "train_vs_fp32": round(speed.train_images_per_second / base, 3) if base else 1.0})
    return rows


def inference_table(spec, fold_folder, data, runtime) -> list[dict]:
    """Prediction throughput on the test images (final predictions a second): the benchmark's fold model
    without TTA and through the views the spec plans with, then the latest logged run's whole ensemble
    as `make predict` runs it (every fold model of every member, with its views), where there is one."""
    from pipelines.after_run.infer import predict_ensemble
    from pipelines.stages.lineage import find_run
    from pipelines.stages.predict import load_fold_model, predict_with_views

    images = data.test_images
    views = spec.pool.tta if spec.pool else ["identity", "hflip"]
    model = load_fold_model(fold_folder, spec, runtime)
    predict_with_views(model, images[:256], ["identity"], desc="")  # warm-up: first calls allocate
    rows = []
    for what, chosen in (("fold model, no TTA", ["identity"]), (f"fold model, TTA {'+'.join(views)}", views)):
        started = time.perf_counter()
        predict_with_views(model, images, chosen, desc="")
        rows.append({"path": what, "images_per_second": round(len(images) / (time.perf_counter() - started), 1)})
    try:
        logged = find_run(spec, None)
    except UserError as exc:
        rows.append({"path": "logged ensemble (make predict)", "images_per_second": None, "note": str(exc)})
        return rows
    nhwc = data.test_images.permute(0, 2, 3, 1).cpu().numpy()
    started = time.perf_counter()
    predict_ensemble(spec, logged, nhwc, runtime)
    members = logged.lineage["members"]
    rows.append({"path": f"logged ensemble {logged.config_hash} (make predict)",
                 "images_per_second": round(len(nhwc) / (time.perf_counter() - started), 1),
                 "note": f"{sum(len(m['folds']) for m in members)} fold models, views "
                         + "; ".join(f"{m['name']}: {'+'.join(m['views'])}" for m in members)})
    return rows


def planner_accuracy(runtime, budget: str) -> list[dict]:
    """A fresh budget run of digits (its own temporary data folder, dry run: probe, plan, train, all of it),
    then actual / planned wall time of every plan of record of this machine."""
    import tempfile

    from competition.paths import data_root
    from pipelines.__main__ import main as pipelines_main

    records = sorted(data_root().glob("*/plans/*.json"))
    saved = {k: os.environ.get(k) for k in ("DRY_RUN", "KPIPE_DATA")}
    with tempfile.TemporaryDirectory(prefix="kpipe-bench-") as scratch:
        os.environ.update(DRY_RUN="1", KPIPE_DATA=scratch)
        try:
            if pipelines_main(["submit", "--comp", "digits", "--budget", budget]) != 0:
                raise UserError("bench: the digits budget run failed (see above)")
            records += sorted(data_root().glob("*/plans/*.json"))
            rows = [row for path in records if (row := _accuracy_row(path, runtime))]
        finally:
            for key, value in saved.items():
                os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)
    return rows


def _accuracy_row(path, runtime) -> dict | None:
    from pipelines.planning.records import PlanRecord

    plan = PlanRecord.model_validate_json(path.read_text())
    if plan.status != "ran" or plan.machine_key != machine_key(runtime) or not plan.actual:
        return None
    planned, actual = plan.estimated_total_seconds(), plan.actual["total_seconds"]
    return {"competition": plan.competition, "plan": path.name, "budget_minutes": plan.budget_seconds / 60,
            "planned_minutes": planned / 60, "actual_minutes": actual / 60,
            "actual_over_planned": round(actual / planned, 3), "actual_over_budget": round(actual / plan.budget_seconds, 3)}


def main() -> None:
    comp = os.environ.get("BENCH_COMP", "fashion-mnist")
    model_name = os.environ.get("BENCH_MODEL", "fastcnn")
    batch = int(os.environ.get("BENCH_BATCH", "128"))
    epochs = int(os.environ.get("BENCH_EPOCHS", "1"))
    spec = load_spec(comp)
    inputs = load_inputs(spec)
    spec = inputs.spec  # with `classes: auto` filled in
    runtime, data = inputs.runtime, inputs.data
    train_rows = torch.from_numpy(np.flatnonzero(data.fold_of_row != 0)).to(runtime.device)

    results = []
    plain = plain_loop(data.images, data.labels, train_rows, model_name, batch, len(spec.classes), runtime.device,
                       spec.flips.hflip)
    results.append({"path": "plain loop (reference)", "images_per_second": round(plain, 1)})

    # A run of its own (alias bench-...), retrained on every call; its outputs sit beside the real runs'.
    run = ModelRun(model=model_name, alias=f"bench-{model_name}", epochs=epochs, batch_size=batch,
                   augment=AugmentConfig(policy="light", shift=2))
    output = train_fold(FoldJob(inputs, run, 0), FoldOptions(force=True))
    with open(output.folder / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    pipeline = float(np.mean([float(h["images_per_second"]) for h in history]))
    results.append({"path": "pipeline train_fold", "images_per_second": round(pipeline, 1),
                    "ratio_to_plain": round(pipeline / plain, 3)})
    for policy in ("light", "strong"):
        rate = augmentation_only(spec, data, policy, train_rows.cpu(), batch)
        results.append({"path": f"augmentation only: {policy}", "images_per_second": round(rate, 1)})

    inference_rows = inference_table(spec, output.folder, data, runtime)
    precision_rows = precision_table(spec, data, runtime)
    planner_rows = planner_accuracy(runtime, os.environ.get("BENCH_PLAN_BUDGET", "60s"))
    curve_rows = accuracy_by_time(inputs, parse_seconds(os.environ.get("BENCH_CURVE", "60"))) if spec.pool else []
    runtime.cores.leave()  # from here this process only starts others and waits for them
    concurrency = [concurrency_table(comp, model_name, batch), concurrency_table("digits", "cnn3", 64)]
    tune = tune_workers()

    print(f"\nbenchmark: {comp}, model {model_name}, batch {batch}, fold 0 ({len(train_rows):,} training images), "
          f"{runtime.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'path':<30} {'images/s':>10} {'vs plain':>9}")
    for r in results:
        ratio = f"{r['ratio_to_plain']:.2f}x" if "ratio_to_plain" in r else ""
        print(f"{r['path']:<30} {r['images_per_second']:>10,.0f} {ratio:>9}")
    verdict = "PASS" if pipeline >= 0.9 * plain else "FAIL"
    print(f"target: pipeline >= 0.9x plain loop: {verdict}")
    print(f"\ninference on the {len(data.test_images):,} test images (final predictions a second)")
    for r in inference_rows:
        rate = f"{r['images_per_second']:>10,.0f}" if r["images_per_second"] is not None else f"{'-':>10}"
        print(f"{r['path']:<52} {rate}  {r.get('note', '')}")
    print(f"\nprecision probe on {machine_description(runtime)}")
    print(f"{'candidate':<16} {'precision':<10} {'train img/s':>12} {'predict img/s':>14} {'train vs fp32':>14}")
    for r in precision_rows:
        print(f"{r['candidate']:<16} {r['precision']:<10} {r['train_images_per_second']:>12,.0f} "
              f"{r['predict_images_per_second']:>14,.0f} {r['train_vs_fp32']:>13.2f}x")
    for precision, why in offered_precisions(runtime)[1].items():
        print(f"  {precision} not measured: {why}")
    print("\nplanner accuracy (plans of record on this machine)")
    print(f"{'competition':<22} {'budget min':>10} {'planned min':>12} {'actual min':>11} {'actual/planned':>15} {'actual/budget':>14}")
    for r in planner_rows:
        print(f"{r['competition']:<22} {r['budget_minutes']:>10.2f} {r['planned_minutes']:>12.2f} {r['actual_minutes']:>11.2f} "
              f"{r['actual_over_planned']:>15.2f} {r['actual_over_budget']:>14.2f}")
    if curve_rows:
        print_curve(curve_rows, machine_description(runtime), comp)
    for table in concurrency:
        print_concurrency(table)
    print_tune(tune)
    print(json.dumps({"benchmark": "training_throughput", "competition": comp, "model": model_name, "batch_size": batch,
                      "device": str(runtime.device), "machine": machine_description(runtime),
                      "threads": torch.get_num_threads(), "results": results, "target_met": verdict == "PASS",
                      "inference": inference_rows, "precision_probe": precision_rows, "planner": planner_rows,
                      "accuracy_by_time": curve_rows, "concurrency": concurrency, "tune_workers": tune}))


if __name__ == "__main__":
    try:
        main()
    except (UserError, models.ModelError) as exc:  # no data, no host: one line, as every other command
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
