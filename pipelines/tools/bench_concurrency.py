"""`make bench`'s concurrency table: what two kpipe processes computing at once get from the machine.

Each arrangement starts real worker processes that build the benchmark's model, optimizer and
augmentation on the competition's own images and take training steps (train_one_epoch, as training
does). Workers warm up, then wait at a barrier so that every measurement of a group covers the same
seconds:
- alone: one process, every core;
- two at once, each taking every core: what kpipe did before it shared cores (and what any two
  programs that size their pools to the machine do);
- two at once, sharing the cores through the registry (pipelines/machine/cores.py);
- the same total work as one process with every core, and as two sharing processes with half each:
  which arrangement finishes first (what a planner or WORKERS= would choose between);
- `make tune COMP=digits` with WORKERS=1 and WORKERS=2, wall time of the whole command, on a copy of the
  digits spec whose search space is pinned to one point and whose pruner never prunes, so that both
  arrangements do the same trials (with the real space, which trials get pruned decides the time).

Run alone: `python -m pipelines.tools.bench_concurrency [COMP [MODEL [BATCH]]]`.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from competition.paths import REPO_ROOT

MEASURE_SECONDS = 6.0
TUNE_TRIALS = 6
PINNED_SPACE = {"optimizer.lr": {"type": "float", "low": 0.05, "high": 0.06},
                "batch_size": {"type": "categorical", "choices": [64]},
                "model_args.width": {"type": "categorical", "choices": [32]}}
TARGET_EACH, TARGET_TOGETHER = 0.45, 0.9


def worker(args: argparse.Namespace) -> None:
    """One process of an arrangement: set up, warm up, meet the others at the barrier, then measure."""
    import torch

    from competition.recipe import AugmentConfig, ModelRun
    from competition.spec import load_spec
    from pipelines.machine import cores
    from pipelines.machine.device import Runtime, pick_runtime
    from pipelines.recipe.augment import BatchAugmenter
    from pipelines.stages.device_data import load_training_data
    from pipelines.stages.prepare import make_folds, prepare
    from pipelines.stages.train import epoch_batches, make_learner, train_one_epoch

    spec = load_spec(args.comp)
    prepared = prepare(spec)
    spec = spec.with_classes(prepared.classes())
    folds = make_folds(spec, prepared)
    if args.unmanaged:  # every core, whoever else computes: the behaviour before the registry
        torch.set_num_threads(cores.machine_cores())
        runtime = Runtime(torch.device("cpu"))
    else:
        runtime = pick_runtime()
    data = load_training_data(prepared, folds, runtime)
    run = ModelRun(model=args.model, batch_size=args.batch, augment=AugmentConfig(policy="light", shift=2), epochs=1)
    learner = make_learner(run, spec, data, runtime, steps_per_epoch=100_000, init_seed=0)
    augmenter = BatchAugmenter(run.augment, spec, data.images, data.images_nhwc)
    rows = torch.randperm(len(data.labels), generator=torch.Generator().manual_seed(0))
    batch = min(args.batch, len(rows))
    train_one_epoch(learner, augmenter, data.labels, epoch_batches(rows, batch, 3, 0), 0, runtime, "warm-up")
    Path(args.ready).touch()
    go = Path(args.go)
    while not go.exists():
        time.sleep(0.005)
    started, steps, threads = float(go.read_text() or time.time()), 0, cores.machine_cores()
    while (steps < args.steps) if args.steps else (time.time() - started < args.seconds):
        chunk = min(4, args.steps - steps) if args.steps else 4
        train_one_epoch(learner, augmenter, data.labels, epoch_batches(rows, batch, chunk, steps + 1), steps + 1,
                        runtime, "bench")
        steps += chunk
        threads = min(threads, torch.get_num_threads())  # a partner that ends first gives its cores back
    elapsed = time.time() - started
    print(json.dumps({"images_per_second": round(steps * batch / elapsed, 1), "seconds": round(elapsed, 2),
                      "threads": threads, "steps": steps}), flush=True)


def run_group(comp: str, model: str, batch: int, count: int, unmanaged: bool = False, seconds: float = MEASURE_SECONDS,
              steps: int = 0) -> list[dict]:
    """Start `count` workers, release them together, return what each measured."""
    with tempfile.TemporaryDirectory(prefix="kpipe-bench-cores-") as scratch:
        go = Path(scratch) / "go"
        argv = [sys.executable, "-m", "pipelines.tools.bench_concurrency", "--worker", "--comp", comp, "--model", model,
                "--batch", str(batch), "--go", str(go), "--seconds", str(seconds), "--steps", str(steps)]
        argv += ["--unmanaged"] if unmanaged else []
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "KPIPE_DEVICE": "cpu", "KPIPE_CORES": "share"}
        workers = [subprocess.Popen(argv + ["--ready", str(Path(scratch) / f"ready-{i}")], cwd=REPO_ROOT, env=env,
                                    stdout=subprocess.PIPE, text=True) for i in range(count)]
        while not all((Path(scratch) / f"ready-{i}").exists() for i in range(count)):
            if any(w.poll() not in (None, 0) for w in workers):
                break
            time.sleep(0.02)
        tmp_go = go.with_suffix(".tmp")
        tmp_go.write_text(repr(time.time()))
        tmp_go.rename(go)  # one instant for all
        results = []
        for w in workers:
            out, _ = w.communicate()
            if w.returncode != 0:
                raise RuntimeError(f"bench: a concurrency worker exited with status {w.returncode}")
            results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def concurrency_table(comp: str, model: str, batch: int) -> dict:
    from competition.spec import load_spec
    from pipelines.machine import cores
    from pipelines.stages.download import download
    from pipelines.stages.prepare import make_folds, prepare

    spec = load_spec(comp)
    download(spec)
    make_folds(spec, prepare(spec))  # once here, not raced by the workers (this process computes nothing)
    alone = run_group(comp, model, batch, 1)[0]
    rows = [{"arrangement": "alone", "each": [alone["images_per_second"]], "threads": [alone["threads"]]}]
    for label, unmanaged in (("two at once, each taking every core", True), ("two at once, sharing the cores", False)):
        pair = run_group(comp, model, batch, 2, unmanaged=unmanaged)
        rows.append({"arrangement": label, "each": [r["images_per_second"] for r in pair],
                     "threads": [r["threads"] for r in pair]})
    for row in rows:
        row["each_vs_alone"] = [round(v / alone["images_per_second"], 3) for v in row["each"]]
        row["together_vs_alone"] = round(sum(row["each"]) / alone["images_per_second"], 3)
    # The same total work, about MEASURE_SECONDS of the lone process: all of it in one process, or half in each of two.
    steps = max(8, int(alone["images_per_second"] * MEASURE_SECONDS / batch) // 8 * 8)
    one = run_group(comp, model, batch, 1, steps=steps)[0]
    two = run_group(comp, model, batch, 2, steps=steps // 2)
    same_work = {"steps": steps, "one_process_seconds": one["seconds"], "one_process_threads": one["threads"],
                 "two_processes_seconds": max(r["seconds"] for r in two), "two_processes_threads": [r["threads"] for r in two]}
    same_work["faster"] = "two processes" if same_work["two_processes_seconds"] < one["seconds"] else "one process"
    shared = rows[2]
    met = min(shared["each_vs_alone"]) >= TARGET_EACH and shared["together_vs_alone"] >= TARGET_TOGETHER
    return {"competition": comp, "model": model, "batch_size": batch, "cores": cores.machine_cores(), "rows": rows,
            "same_work": same_work, "target_met": met}


def tune_workers(trials: int = TUNE_TRIALS) -> dict:
    """Seconds of a whole `make tune` on digits with one and with two workers, the same trials in both."""
    import yaml

    from competition.spec import spec_path

    spec = yaml.safe_load(spec_path("digits").read_text())
    spec["tuning"].update(search_space=PINNED_SPACE, pruner={"name": "median", "n_startup_trials": 10 * trials})
    seconds = {}
    with tempfile.TemporaryDirectory(prefix="kpipe-bench-tune-") as scratch:
        pinned = Path(scratch) / "digits.yaml"
        pinned.write_text(yaml.safe_dump(spec))
        for workers in (1, 2):
            env = {**os.environ, "KPIPE_OPTUNA_STORAGE": f"sqlite:///{scratch}/studies.db", "KPIPE_CORES": "share"}
            started = time.perf_counter()
            subprocess.run([sys.executable, "-m", "pipelines", "tune", "--comp", str(pinned), "--trials", str(trials),
                            "--study", f"bench-workers-{workers}", "--workers", str(workers)], cwd=REPO_ROOT, env=env,
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            seconds[workers] = round(time.perf_counter() - started, 1)
    return {"trials": trials, "workers_1_seconds": seconds[1], "workers_2_seconds": seconds[2],
            "target_met": seconds[2] <= seconds[1]}


def print_table(table: dict) -> None:
    print(f"\nconcurrency: {table['competition']} {table['model']} batch {table['batch_size']}, training steps, "
          f"{table['cores']} cores")
    print(f"{'arrangement':<38} {'threads':>8} {'img/s each':>18} {'each vs alone':>16} {'together vs alone':>18}")
    for r in table["rows"]:
        print(f"{r['arrangement']:<38} {'+'.join(map(str, r['threads'])):>8} "
              f"{' + '.join(f'{v:,.0f}' for v in r['each']):>18} "
              f"{' / '.join(f'{v:.2f}x' for v in r['each_vs_alone']):>16} {r['together_vs_alone']:>17.2f}x")
    w = table["same_work"]
    print(f"same work ({w['steps']} steps): one {w['one_process_threads']}-thread process {w['one_process_seconds']:.1f} s, "
          f"two processes ({'+'.join(map(str, w['two_processes_threads']))} threads) {w['two_processes_seconds']:.1f} s: "
          f"{w['faster']} faster ({w['one_process_seconds'] / w['two_processes_seconds']:.2f}x)")
    print(f"target: sharing, each >= {TARGET_EACH}x and together >= {TARGET_TOGETHER}x a lone run: "
          f"{'PASS' if table['target_met'] else 'FAIL'}")


def print_tune(row: dict) -> None:
    print(f"\nmake tune COMP=digits, {row['trials']} trials pinned to one point: WORKERS=1 {row['workers_1_seconds']:.1f} s, "
          f"WORKERS=2 {row['workers_2_seconds']:.1f} s ({row['workers_1_seconds'] / row['workers_2_seconds']:.2f}x)")
    print(f"target: WORKERS=2 not slower than WORKERS=1: {'PASS' if row['target_met'] else 'FAIL'}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m pipelines.tools.bench_concurrency")
    parser.add_argument("comp", nargs="?", default="fashion-mnist")
    parser.add_argument("model_name", nargs="?", default="fastcnn")
    parser.add_argument("batch_size", nargs="?", type=int, default=128)
    parser.add_argument("--worker", action="store_true")
    for name in ("--comp", "--model", "--go", "--ready"):
        parser.add_argument(name)
    parser.add_argument("--batch", type=int)
    parser.add_argument("--seconds", type=float, default=MEASURE_SECONDS)
    parser.add_argument("--steps", type=int, default=0)
    parser.add_argument("--unmanaged", action="store_true")
    args = parser.parse_args()
    if args.worker:
        return worker(args)
    table = concurrency_table(args.comp, args.model_name, args.batch_size)
    tune = tune_workers()
    print_table(table)
    print_tune(tune)
    print(json.dumps({"benchmark": "concurrency", **table, "tune": tune}))


if __name__ == "__main__":
    main()
