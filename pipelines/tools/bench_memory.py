"""Data larger than memory: prepare and train on a big copy of Fashion-MNIST, memory-mapped against in memory.

Builds a competition's raw folder (the npy layout: Fashion-MNIST's 70,000 images upscaled to SIDE×SIDE×3, the
first 3,500 test images as the test set and the other 66,500 as training rows, repeated beyond that only if
IMAGES asks for more: repeats are exact duplicates, which the folds stage then pairs at great cost), then in a fresh process for each mode
(KPIPE_MEMMAP=1, and =0 when the arrays leave room for it): prepare, load the data for training, and take
STEPS training steps of `fastcnn` at 32×32 input. Each process reports its anonymous memory (RssAnon:
what the arrays in memory cost; a memory map's pages are the file's) at its peak while setting up
(download, prepare, folds, loading; a second run reuses what the first prepared), after loading, and at
its peak while training, and the training images a second. The raw folder is written here, not fetched from the local host: the
download is tested elsewhere, and this measures memory.

    python -m pipelines.tools.bench_memory [--images 66500] [--side 208] [--steps 60] [--keep]
    (the defaults: 8.6 GB of training images, 9.1 GB of prepared arrays)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CHUNK = 2048


def rss_anon_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def build_raw(raw: Path, images: int, side: int) -> None:
    """raw/ as the npy layout holds it (train_images.npy, train.csv, test_images.npy, sample_submission.csv)
    and the download's manifest, written in chunks (never the whole array in memory)."""
    import torch
    import torch.nn.functional as F

    from competition.host.builders import fashion_mnist_arrays

    train, labels, test, test_labels = fashion_mnist_arrays()
    held = 3500
    train, labels = np.concatenate([train, test[held:]]), np.concatenate([labels, test_labels[held:]])
    test = test[:held]
    raw.mkdir(parents=True)

    def write(name: str, source: np.ndarray, n: int) -> None:
        out = np.lib.format.open_memmap(raw / name, mode="w+", dtype=np.uint8, shape=(n, side, side, 3))
        for start in range(0, n, CHUNK):
            rows = np.arange(start, min(n, start + CHUNK)) % len(source)
            up = F.interpolate(torch.from_numpy(source[rows]).float()[:, None], size=(side, side), mode="bilinear")
            out[start:start + len(rows)] = up.clamp(0, 255).round().byte().permute(0, 2, 3, 1).expand(-1, -1, -1, 3).numpy()
        out.flush()
        del out

    n_test = held
    write("train_images.npy", train, images)
    write("test_images.npy", test, n_test)
    (raw / "train.csv").write_text("id,label\n" + "".join(f"t{i},{labels[i % len(labels)]}\n" for i in range(images)))
    (raw / "sample_submission.csv").write_text("id,label\n" + "".join(f"s{i},0\n" for i in range(n_test)))
    files = {p.name: p.stat().st_size for p in raw.iterdir()}
    (raw / "manifest.json").write_text(json.dumps({"stage": "download", "files": files}))


def measure(spec_path: str, steps: int) -> dict:
    """In this process: prepare, load, train `steps` steps; RssAnon after loading and at its peak."""
    import torch

    from competition.recipe import AugmentConfig, ModelRun
    from competition.spec import load_spec
    from pipelines.recipe.augment import BatchAugmenter
    from pipelines.stages.inputs import load_inputs
    from pipelines.stages.train import epoch_batches, make_learner, train_one_epoch

    peak = [rss_anon_mib()]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.05):
            peak[0] = max(peak[0], rss_anon_mib())

    threading.Thread(target=sample, daemon=True).start()
    started = time.monotonic()
    inputs = load_inputs(load_spec(spec_path))
    setup_s, loaded = time.monotonic() - started, rss_anon_mib()
    setup_peak, peak[0] = max(peak[0], loaded), loaded  # from here on, the peak while training
    data, runtime = inputs.data, inputs.runtime
    run = ModelRun(model="fastcnn", input_size=32, batch_size=128, augment=AugmentConfig(policy="light", shift=2),
                   epochs=1)
    learner = make_learner(run, inputs.spec, data, runtime, steps_per_epoch=100_000, init_seed=0)
    augmenter = BatchAugmenter(run.augment, inputs.spec, data.images, data.images_nhwc)
    rows = torch.from_numpy(np.flatnonzero(data.fold_of_row != 0))
    train_one_epoch(learner, augmenter, data.labels, epoch_batches(rows, 128, 5, 0), 0, runtime, "warm-up")
    begun = time.monotonic()
    train_one_epoch(learner, augmenter, data.labels, epoch_batches(rows, 128, steps, 1), 1, runtime, "bench")
    seconds = time.monotonic() - begun
    stop.set()
    return {"mode": "memory-mapped" if not isinstance(data.images, torch.Tensor) else "in memory",
            "images_gib": round((data.images_nhwc.nbytes + np.asarray(data.test_images.shape).prod()) / 2**30, 2),
            "setup_s": round(setup_s, 1), "rss_anon_setup_peak_mib": round(setup_peak),
            "rss_anon_after_load_mib": round(loaded), "rss_anon_peak_mib": round(max(peak[0], rss_anon_mib())),
            "train_img_per_s": round(steps * 128 / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=66_500)
    parser.add_argument("--side", type=int, default=208)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--keep", action="store_true", help="keep the built data (in $KPIPE_DATA or a temp folder)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)  # internal: a spec path, measured in this process
    args = parser.parse_args()
    if args.measure:
        print("RESULT " + json.dumps(measure(args.measure, args.steps)), flush=True)
        return
    import yaml

    root = Path(os.environ.get("KPIPE_DATA") or tempfile.mkdtemp(prefix="kpipe-bench-memory-"))
    spec = {"name": "big-fashion", "title": "Fashion-MNIST upscaled (memory benchmark)", "kaggle_slug": "big-fashion",
            "host": "local", "layout": {"kind": "npy"}, "classes": [str(i) for i in range(10)],
            "image": {"height": args.side, "width": args.side, "channels": 3}, "metric": "accuracy",
            "folds": {"n_splits": 5, "seed": 42, "duplicates": "ignore"}}
    spec_path = root / "big-fashion.yaml"
    try:
        if not (root / "big-fashion" / "raw").is_dir():
            started = time.monotonic()
            build_raw(root / "big-fashion" / "raw", args.images, args.side)
            print(f"bench_memory: built {args.images:,} images of {args.side}x{args.side}x3 in "
                  f"{time.monotonic() - started:.0f} s", flush=True)
        spec_path.write_text(yaml.safe_dump(spec))
        nbytes = args.images * args.side * args.side * 3
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
        modes = ["1"] + (["0"] if 10 * nbytes < total / 2 else [])  # in memory only where its ~10x peak fits
        results = []
        for mode in modes:
            env = {**os.environ, "KPIPE_DATA": str(root), "KPIPE_MEMMAP": mode}
            out = subprocess.run([sys.executable, "-m", "pipelines.tools.bench_memory", "--measure", str(spec_path),
                                  "--steps", str(args.steps)], env=env, capture_output=True, text=True)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if line is None:
                sys.exit(f"bench_memory: the KPIPE_MEMMAP={mode} run failed:\n{out.stderr[-2000:]}")
            results.append(json.loads(line[len("RESULT "):]))
        print(f"{'mode':<15}{'images GiB':>11}{'setup s':>9}{'RssAnon MiB: setup peak':>25}{'loaded':>8}"
              f"{'training peak':>15}{'img/s':>8}")
        for r in results:
            print(f"{r['mode']:<15}{r['images_gib']:>11}{r['setup_s']:>9}{r['rss_anon_setup_peak_mib']:>25}"
                  f"{r['rss_anon_after_load_mib']:>8}{r['rss_anon_peak_mib']:>15}{r['train_img_per_s']:>8}")
        print(json.dumps(results))
    finally:
        if not args.keep and not os.environ.get("KPIPE_DATA"):
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
