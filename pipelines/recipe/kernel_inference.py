#!/usr/bin/env python3
"""Run a kpipe ensemble on a competition's test images and write submission.csv, with no kpipe installed.

`make export` copies this file, unchanged, into the package it writes (as `inference.py`) and makes it
the code file of a Kaggle script kernel. It needs only torch, numpy, pandas, pillow and safetensors
(plus timm or torchvision when a member model comes from them), and works with older torch than the
pipeline's: weights are plain safetensors state dicts and the model code ships as source
(`kpipe_models.zip`, imported from the zip), so nothing pickled is ever loaded.

Where it looks, as on Kaggle (each overridable):
    --input-root   /kaggle/input (or $KAGGLE_INPUT_ROOT)
    --package      the folder holding ensemble.json: beside this script, else the attached dataset
                   (the <input root>/*/ that holds one)
    --data         the competition's files: <input root>/<competition slug>, else any <input root>/*/ holding
                   the sample submission
    --out          submission.csv in the working directory (/kaggle/working on Kaggle)

What it computes is what the pipeline's ensemble stage computed for the test set: each fold model
(normalisation and resizing included) through its member's test-time views, the mean over folds, each
member's temperature, the weighted sum, the blend's temperature and the decision rule's class weights;
for a multi-label competition a sigmoid per label and each label's fitted threshold.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

BATCH = 512
CHUNK = 16 * BATCH  # test images held at once; a multiple of BATCH, so batches are as if read whole
# The kernel's copy of this script names the package it was pushed for (`make export` writes it in), so
# that it refuses to run on any other version of the attached dataset.
EXPECTED_PACKAGE = None


# --- where things are --------------------------------------------------------------------------------


def find_package(input_root: Path, given: str | None) -> Path:
    candidates = [Path(given)] if given else [Path(__file__).resolve().parent, *sorted(input_root.glob("*"))]
    for folder in candidates:
        if (folder / "ensemble.json").is_file():
            return folder
    sys.exit(f"error: no ensemble.json in {', '.join(str(c) for c in candidates[:3])}; attach the exported dataset "
             "or pass --package DIR")


def check_package(package: Path) -> None:
    """Refuse a package other than the one this script was pushed for (none named: any will do)."""
    if EXPECTED_PACKAGE is None:
        return
    listed = package / "kpipe-package.json"
    found = json.loads(listed.read_text())["digest"] if listed.is_file() else "none"
    if found != EXPECTED_PACKAGE:
        sys.exit(f"error: {package} holds package {found}, but this kernel was pushed for package {EXPECTED_PACKAGE}; "
                 "attach the dataset version that holds it (`make submit` pushes a kernel per version)")


def find_data(input_root: Path, slug: str, sample_name: str, given: str | None) -> Path:
    candidates = [Path(given)] if given else [input_root / slug, *sorted(input_root.glob("*"))]
    for folder in candidates:
        if (folder / sample_name).is_file():
            return folder
    sys.exit(f"error: no {sample_name} in {', '.join(str(c) for c in candidates[:3])}; attach the competition's data "
             "or pass --data DIR")


# --- test images, read as the pipeline read them --------------------------------------------------------


def test_ids(data: Path, config: dict) -> tuple[list[str], list[str]]:
    """(ids in the sample submission's order, the sample submission's header)."""
    import pandas as pd

    sample = pd.read_csv(data / config["layout"]["sample_submission"], dtype=str, keep_default_na=False)
    return sample[config["id_column"]].tolist(), list(sample.columns)


def test_batches(data: Path, config: dict, ids: list[str]):
    """The test images as uint8 N×C×H×W arrays of up to CHUNK rows, in the ids' order: the hidden test set
    is read a chunk at a time, never whole (a code competition's may not fit in the notebook's memory)."""
    import pandas as pd

    layout, shape = config["layout"], config["image"]
    size = (shape["height"], shape["width"], shape["channels"])
    if layout["kind"] == "npy":
        array = np.load(data / layout["test_images"], allow_pickle=False, mmap_mode="r")
        for start in range(0, len(array), CHUNK):
            chunk = np.asarray(array[start:start + CHUNK])
            yield (chunk[..., None] if chunk.ndim == 3 else chunk).transpose(0, 3, 1, 2)
    elif layout["kind"] == "pixel_csv":  # one row of pixel columns an image, in the sample submission's order
        columns = [f"{layout['pixel_prefix']}{i}" for i in range(size[0] * size[1] * size[2])]
        for rows in pd.read_csv(data / layout["test_csv"], usecols=columns, dtype="uint8", chunksize=CHUNK):
            yield rows[columns].to_numpy().reshape(len(rows), *size).transpose(0, 3, 1, 2)
    else:
        from kpipe_image_fit import fit_image  # from kpipe_models.zip: the fitting prepare used
        from PIL import Image

        folders = [data / f for f in ([layout["test_dir"]] if isinstance(layout["test_dir"], str) else layout["test_dir"])]
        for start in range(0, len(ids), CHUNK):
            chunk = np.empty((min(CHUNK, len(ids) - start), *size), dtype=np.uint8)
            for i, sample_id in enumerate(ids[start:start + CHUNK]):
                name = layout["filename"].format(id=sample_id)
                if "/" in name or "\\" in name or name in (".", ".."):  # ids are data, never paths
                    sys.exit(f"error: sample submission id {sample_id!r} would name a file outside the test folder")
                folder = next((f for f in folders if (f / name).is_file()), folders[0])  # test images over folders
                with Image.open(folder / name) as img:
                    chunk[i] = fit_image(img, *size, shape.get("resize", "keep"))
            yield chunk.transpose(0, 3, 1, 2)


def read_test(data: Path, config: dict) -> tuple[list[str], np.ndarray, list[str]]:
    """(ids, all the test images as uint8 N×C×H×W, the sample submission's header): `test_batches` joined."""
    ids, header = test_ids(data, config)
    images = np.concatenate(list(test_batches(data, config, ids)))
    return ids, np.ascontiguousarray(images), header


# --- the models -------------------------------------------------------------------------------------------


class Classifier(nn.Module):
    """The pipeline's ImageClassifier in fp32: 0..255 images, normalised, resized if asked, classified."""

    def __init__(self, net: nn.Module, channels: int, input_size: int | None, multi_label: bool = False):
        super().__init__()
        self.net = net
        self.multi_label = multi_label  # a sigmoid per label, not a softmax over classes
        self.register_buffer("mean", torch.zeros(1, channels, 1, 1))
        self.register_buffer("std", torch.ones(1, channels, 1, 1))
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        return self.net(x)


def build(config: dict, member: dict, fold: dict, package: Path, device: torch.device) -> Classifier:
    from safetensors.torch import load_file

    import models  # the pipeline's model code, from kpipe_models.zip

    run, shape = member["run"], config["image"]
    net = models.create(run["model"], num_classes=len(config["classes"]), in_chans=shape["channels"],
                        img_size=run.get("input_size") or shape["height"], **run.get("model_args", {}))
    model = Classifier(net, shape["channels"], run.get("input_size"), config.get("multi_label", False))
    model.load_state_dict(load_file(str(package / fold["weights"])))
    return model.to(device).eval()


def shift_by(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    shifted = torch.roll(images, shifts=(dy, dx), dims=(2, 3))
    if dy > 0:
        shifted[:, :, :dy] = 0
    elif dy < 0:
        shifted[:, :, dy:] = 0
    if dx > 0:
        shifted[:, :, :, :dx] = 0
    elif dx < 0:
        shifted[:, :, :, dx:] = 0
    return shifted


VIEWS = {
    "identity": [lambda x: x],
    "hflip": [lambda x: x.flip(3)],
    "vflip": [lambda x: x.flip(2)],
    "shift": [lambda x, d=d: shift_by(x, *d) for d in ((1, 0), (-1, 0), (0, 1), (0, -1))],
    # the mirror image moved one pixel four ways: with identity, hflip and shift, every flip x shift
    "hflip_shift": [lambda x, d=d: shift_by(x.flip(3), *d) for d in ((1, 0), (-1, 0), (0, 1), (0, -1))],
}


@torch.no_grad()
def probabilities(model: nn.Module, images: torch.Tensor, transform) -> np.ndarray:
    chunks = []
    for start in range(0, len(images), BATCH):
        logits = model(transform(images[start:start + BATCH])).float()
        chunks.append((logits.sigmoid() if model.multi_label else logits.softmax(dim=1)).cpu())
    return torch.cat(chunks).numpy()


def with_views(model: nn.Module, images: torch.Tensor, views: list[str]) -> np.ndarray:
    return np.mean([np.mean([probabilities(model, images, t) for t in VIEWS[v]], axis=0) for v in views],
                   axis=0).astype(np.float32)


# --- the blend, as the ensemble stage made it -----------------------------------------------------------


def logit(probs: np.ndarray) -> np.ndarray:
    clipped = np.clip(np.asarray(probs, dtype=np.float64), 1e-15, 1 - 1e-15)  # float64: 1 - 1e-15 is 1 in float32
    return np.log(clipped) - np.log1p(-clipped)


def sigmoid(values: np.ndarray) -> np.ndarray:
    return 0.5 * (1 + np.tanh(0.5 * values))  # without overflow for large negative values


def with_temperature(probs: np.ndarray, temperature: float, multi_label: bool = False) -> np.ndarray:
    """Class probabilities with their log divided by `temperature`, renormalised; multi-label: each
    label's logit divided by it."""
    if multi_label:
        return sigmoid(logit(probs) / temperature)
    logits = np.log(np.clip(probs, 1e-15, 1.0)) / temperature
    logits -= logits.max(axis=1, keepdims=True)
    scaled = np.exp(logits)
    return scaled / scaled.sum(axis=1, keepdims=True)


def at_thresholds(probs: np.ndarray, thresholds) -> np.ndarray:
    """Each label's probabilities moved (in logit space, keeping their order) so that its threshold falls
    at 0.5, where a multi-label submission's label sets are cut."""
    return sigmoid(logit(probs) - logit(np.asarray(thresholds, dtype=np.float64)))


def combine(config: dict, member_probs: list[np.ndarray]) -> np.ndarray:
    multi_label = config.get("multi_label", False)
    blend = 0.0
    for member, probs in zip(config["members"], member_probs):
        if member["temperature"] is not None:
            probs = with_temperature(probs, member["temperature"], multi_label)
        blend = blend + member["weight"] * probs
    if config["ensemble_temperature"] is not None:
        blend = with_temperature(blend, config["ensemble_temperature"], multi_label)
    if config["class_weights"] is not None:
        scaled = blend * np.asarray(config["class_weights"])
        blend = scaled / scaled.sum(axis=1, keepdims=True)
    if config.get("thresholds") is not None:
        blend = at_thresholds(blend, config["thresholds"])
    return np.asarray(blend)


def cells(config: dict, columns: list[str], probs: np.ndarray) -> list[str]:
    classes, kind = config["classes"], config["submission"]["kind"]
    if kind == "label":
        return [classes[int(probs.argmax())]]
    if kind == "ranked_labels":
        order = np.argsort(-probs[None, :], axis=1, kind="stable")[0, :config["submission"]["k"]]
        return [" ".join(classes[i] for i in order)]
    if kind == "tags":  # the labels above 0.5 (thresholds already applied); never empty unless allowed
        chosen = list(np.flatnonzero(probs > 0.5))
        if not chosen and not config["submission"].get("allow_empty", False):
            chosen = [int(probs.argmax())]
        return [" ".join(classes[i] for i in chosen)]
    values = probs[1:] if len(columns) == 1 and not config.get("multi_label", False) else probs
    return [f"{float(p):.6g}" for p in values]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input-root", default=os.environ.get("KAGGLE_INPUT_ROOT", "/kaggle/input"))
    parser.add_argument("--package", default=None, help="the folder holding ensemble.json")
    parser.add_argument("--data", default=None, help="the competition's data folder")
    parser.add_argument("--out", default="submission.csv")
    parser.add_argument("--probs", default=None, help="also save the probabilities (N×classes) to this .npy file")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    started = time.time()
    input_root = Path(args.input_root)
    package = find_package(input_root, args.package)
    check_package(package)
    config = json.loads((package / "ensemble.json").read_text())
    sys.path.insert(0, str(package / "kpipe_models.zip"))
    data = find_data(input_root, config["competition"], config["layout"]["sample_submission"], args.data)
    ids, header = test_ids(data, config)
    device = torch.device(args.device)
    print(f"kpipe: {len(ids):,} test images in {data}; package {package}; torch {torch.__version__} on {device}",
          flush=True)
    members = [[build(config, member, fold, package, device) for fold in member["folds"]] for member in config["members"]]
    parts: list[list[np.ndarray]] = [[] for _ in members]
    seen = 0
    shape = (config["image"]["channels"], config["image"]["height"], config["image"]["width"])
    for images in test_batches(data, config, ids):
        if images.shape[1:] != shape:
            sys.exit(f"error: test images are {images.shape[1:]} (C×H×W), expected {shape}")
        batch = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        for member, folds, out in zip(config["members"], members, parts):
            out.append(np.mean([with_views(model, batch, member["views"]) for model in folds], axis=0))
        seen += len(images)
        print(f"kpipe: {seen:,} of {len(ids):,} test images ({time.time() - started:.0f} s)", flush=True)
    if seen != len(ids):
        sys.exit(f"error: {seen:,} test images for {len(ids):,} sample submission rows; they must line up")
    member_probs = [np.concatenate(out) for out in parts]
    # float32, as the ensemble stage stores the test set's blend: the cells are written from the same numbers
    probs = combine(config, member_probs).astype(np.float32)
    with open(args.out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([sample_id, *cells(config, header[1:], p)] for sample_id, p in zip(ids, probs))
    if args.probs:
        np.save(args.probs, probs.astype(np.float32))
    print(f"kpipe: wrote {args.out} ({len(ids):,} rows) in {time.time() - started:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
