"""`make bench`: does the pipeline's data path starve the model? Prints a table, then the same as JSON.

Rows:
- plain loop: a minimal PyTorch loop written here — in-memory uint8 tensors, random flip + shift, SGD,
  channels_last — the reference the pipeline must keep up with (target: pipeline >= 0.9x).
- pipeline: the real `train_fold` on the same fold, model and batch size, its images/s from history.csv
  (training steps only, validation excluded, as in the plain loop).
- augmentation alone: the batched `light` policy and per-sample albumentations `strong`.

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
from pipelines.augment import BatchAugmenter
from pipelines.device import pick_runtime
from pipelines.download import download
from pipelines.prepare import make_folds, prepare
from pipelines.device_data import load_training_data
from pipelines.train import train_fold


def plain_loop(images: torch.Tensor, labels: torch.Tensor, rows: torch.Tensor, model_name: str, batch: int,
               num_classes: int, device: torch.device, hflip: bool) -> float:
    """The reference: as little as a training loop can be. Returns images/s over one pass of `rows`."""
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


def main() -> None:
    comp = os.environ.get("BENCH_COMP", "fashion-mnist")
    model_name = os.environ.get("BENCH_MODEL", "fastcnn")
    batch = int(os.environ.get("BENCH_BATCH", "128"))
    epochs = int(os.environ.get("BENCH_EPOCHS", "1"))
    spec = load_spec(comp)
    download(spec)
    prepared = prepare(spec)
    folds = make_folds(spec, prepared)
    runtime = pick_runtime()
    data = load_training_data(prepared, folds, runtime)
    train_rows = torch.from_numpy(np.flatnonzero(data.fold_of_row != 0)).to(runtime.device)

    results = []
    plain = plain_loop(data.images, data.labels, train_rows, model_name, batch, len(spec.classes), runtime.device,
                       spec.flips.hflip)
    results.append({"path": "plain loop (reference)", "images_per_second": round(plain, 1)})

    # A run of its own (alias bench-...), retrained on every call; its outputs sit beside the real runs'.
    run = ModelRun(model=model_name, alias=f"bench-{model_name}", epochs=epochs, batch_size=batch,
                   augment=AugmentConfig(policy="light", shift=2))
    output = train_fold(spec, run, data, prepared, folds, 0, runtime, force=True)
    with open(output.folder / "history.csv", newline="") as fh:
        history = list(csv.DictReader(fh))
    pipeline = float(np.mean([float(h["images_per_second"]) for h in history]))
    results.append({"path": "pipeline train_fold", "images_per_second": round(pipeline, 1),
                    "ratio_to_plain": round(pipeline / plain, 3)})
    for policy in ("light", "strong"):
        rate = augmentation_only(spec, data, policy, train_rows.cpu(), batch)
        results.append({"path": f"augmentation only: {policy}", "images_per_second": round(rate, 1)})

    print(f"\nbenchmark: {comp}, model {model_name}, batch {batch}, fold 0 ({len(train_rows):,} training images), "
          f"{runtime.device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"{'path':<30} {'images/s':>10} {'vs plain':>9}")
    for r in results:
        ratio = f"{r['ratio_to_plain']:.2f}x" if "ratio_to_plain" in r else ""
        print(f"{r['path']:<30} {r['images_per_second']:>10,.0f} {ratio:>9}")
    verdict = "PASS" if pipeline >= 0.9 * plain else "FAIL"
    print(f"target: pipeline >= 0.9x plain loop: {verdict}")
    print(json.dumps({"benchmark": "training_throughput", "competition": comp, "model": model_name, "batch_size": batch,
                      "device": str(runtime.device), "threads": torch.get_num_threads(), "results": results,
                      "target_met": verdict == "PASS"}))


if __name__ == "__main__":
    try:
        main()
    except (UserError, models.ModelError) as exc:  # no data, no host: one line, as every other command
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
