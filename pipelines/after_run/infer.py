"""infer: `make predict` — a logged run's ensemble on new images.

INPUT is a folder of images (ids: file names without the suffix), a .npy array of uint8 images
(N×H×W or N×H×W×C; ids: row numbers), or a CSV listing image paths (column `path`, relative to the CSV's
folder, and optionally the competition's id column; ids: that column, else the file names). Images go
through exactly the preprocessing of training: the competition's size and channels, then each fold
model's own normalisation (classifier.py). An image of another size is one error line, or resized
(bilinear) with RESIZE=1; colour is converted to the competition's channels.

The ensemble is the one a logged submission was made from (lineage.py): every fold model of every
member, through the member's TTA views, averaged over folds, then temperatures, weights and decision
rule exactly as the ensemble stage applied them to the test set. The output is a CSV in the
competition's submission format (the sample submission's header), written whole or not at all; PROBS=1
adds `<out>.probs.csv` with one probability column per class.
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from competition import atomic
from competition.errors import DataError
from competition.metrics import label_sets
from competition.paths import competition_root
from competition.spec import CompetitionSpec
from pipelines.machine.cores import CoreShare
from pipelines.machine.device import Runtime, cpu_flags, pick_runtime
from pipelines.stages.lineage import LoggedRun, checkpoint_path, combine, find_run
from pipelines.stages.predict import load_checkpoint, predict_with_views, rebuild_from_checkpoint
from pipelines.stages.readers import IMAGE_SUFFIXES, load_images, open_npy, read_table

RESIZE_HINT = "resize it, or run with RESIZE=1 to resize every image (bilinear)"


# --- input ---------------------------------------------------------------------------------------------


def read_input(spec: CompetitionSpec, source: Path, resize: bool = False) -> tuple[list[str], np.ndarray]:
    """(ids, uint8 N×H×W×C images in the competition's shape) from a folder, a .npy file or a CSV of paths."""
    if source.is_dir():
        paths = sorted(p for p in source.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not paths:
            raise DataError(f"{source}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}); point INPUT= at a "
                            "folder of images, a .npy array or a CSV of paths")
        ids = [p.stem for p in paths]
        where = [f"INPUT folder {source}" for _ in paths]
    elif source.suffix == ".npy":
        images = _read_array(spec, source, resize)
        return [str(i) for i in range(len(images))], images
    elif source.suffix == ".csv":
        table = read_table(source, ["path"], "INPUT list of image paths")
        paths = [(source.parent / p) for p in table["path"].astype(str)]
        ids = (table[spec.id_column].astype(str).tolist() if spec.id_column in table.columns
               else [p.stem for p in paths])
        where = [f"{source.name} row {row + 2}" for row in range(len(paths))]
    elif not source.exists():
        raise DataError(f"{source}: not found; INPUT= takes a folder of images, a .npy array or a CSV of paths")
    else:
        raise DataError(f"{source}: INPUT= takes a folder of images, a .npy array or a CSV with a `path` column, "
                        f"not a {source.suffix or 'suffix-less'} file")
    if len(set(ids)) != len(ids):
        duplicate = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{source}: id '{duplicate}' twice; ids (file names without suffix) must be unique")
    return ids, load_images(paths, spec, where, "images", resize=resize, size_fix=RESIZE_HINT)


def _read_array(spec: CompetitionSpec, path: Path, resize: bool) -> np.ndarray:
    from PIL import Image

    array = open_npy(path)
    if array.dtype != np.uint8:
        raise DataError(f"{path}: dtype {array.dtype}; INPUT arrays hold uint8 images (0..255), as training's did")
    if array.ndim == 3:
        array = array[..., None]
    shape = (spec.image.height, spec.image.width, spec.image.channels)
    if array.ndim != 4 or array.shape[-1] not in (1, 3):
        raise DataError(f"{path}: array shape {array.shape}; INPUT arrays are N×H×W or N×H×W×C (C = 1 or 3)")
    if array.shape[1:] == shape:
        return np.array(array)
    if not resize:
        raise DataError(f"{path}: images are {array.shape[1]}x{array.shape[2]}x{array.shape[3]}, the competition's "
                        f"are {shape[0]}x{shape[1]}x{shape[2]}; {RESIZE_HINT}")
    mode = "L" if spec.image.channels == 1 else "RGB"
    out = np.empty((len(array), *shape), dtype=np.uint8)
    for i, image in enumerate(array):
        picture = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).convert(mode)
        out[i] = np.asarray(picture.resize((shape[1], shape[0]), Image.BILINEAR)).reshape(shape)
    return out


# --- the ensemble ----------------------------------------------------------------------------------------


def inference_precision(runtime: Runtime, trained: str) -> str:
    """The fastest precision that is safe here: on CUDA the device's autocast; on a CPU bf16 only where it
    trained in bf16 and the CPU computes bf16 natively (elsewhere it is ~11x slower than fp32), else fp32."""
    if runtime.is_cuda:
        return runtime.precision().name
    native_bf16 = bool({"avx512_bf16", "amx_bf16"} & cpu_flags())
    return trained if trained == "bf16-cl" and native_bf16 else "fp32-cl"


def predict_ensemble(spec: CompetitionSpec, run: LoggedRun, images: np.ndarray, runtime: Runtime) -> np.ndarray:
    """The logged ensemble's class probabilities for uint8 N×H×W×C images."""
    batch = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(runtime.device)
    members = run.lineage["members"]
    passes = tqdm(total=sum(len(m["folds"]) for m in members), desc="predict", unit="fold model",
                  disable=len(images) < 2000)
    member_probs = []
    for member in members:
        fold_probs = []
        for fold in member["folds"]:
            checkpoint = load_checkpoint(checkpoint_path(spec, fold), runtime.device)
            precision = inference_precision(runtime, checkpoint["run"].get("precision", "auto"))
            model = rebuild_from_checkpoint(checkpoint, spec, runtime, precision)
            fold_probs.append(predict_with_views(model, batch, member["views"], desc="", share=runtime.cores))
            passes.update()
        member_probs.append(np.mean(fold_probs, axis=0))
    passes.close()
    # float32, as the ensemble stage stores the test set's blend: the same cells as the submission's
    return combine(run.lineage, member_probs).astype(np.float32)


# --- output ----------------------------------------------------------------------------------------------


def write_predictions(spec: CompetitionSpec, ids: list[str], probs: np.ndarray, out: Path, with_probs: bool) -> None:
    from pipelines.stages.submit import submission_format

    fmt = submission_format(spec)
    with atomic.atomic_file(out, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(fmt.header)
        writer.writerows([i, *fmt.cells(p)] for i, p in zip(ids, probs))
    if with_probs:
        with atomic.atomic_file(out.with_suffix(".probs.csv"), "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh, lineterminator="\n")
            writer.writerow([spec.submission_id, *(f"class_{c}" for c in spec.classes)])
            writer.writerows([i, *(f"{float(v):.6g}" for v in p)] for i, p in zip(ids, probs))


def run_predict(spec: CompetitionSpec, source: Path, out: Path | None = None, run: str | None = None,
                resize: bool = False, with_probs: bool = False, share: CoreShare | None = None) -> Path:
    logged = find_run(spec, run)
    spec = spec.with_classes(logged.lineage["classes"])  # `classes: auto`: the classes the run was trained on
    ids, images = read_input(spec, source, resize)
    runtime = pick_runtime(share)
    probs = predict_ensemble(spec, logged, images, runtime)
    out = out or competition_root(spec.name) / "predictions" / f"{source.stem}-{logged.config_hash}.csv"
    write_predictions(spec, ids, probs, out, with_probs)
    metric = spec.metric.bind()
    # Single-label: each image's class; multi-label: each label's images (as the submission cuts the sets).
    counts = (label_sets(probs, metric.allow_empty).sum(axis=0) if metric.multi_label else
              np.bincount(probs.argmax(axis=1), minlength=len(spec.classes)))
    common = ", ".join(f"{spec.classes[c]}: {counts[c]}" for c in np.argsort(-counts)[:3] if counts[c])
    print(f"predict: {len(ids):,} images through run {logged.config_hash} ({len(logged.lineage['members'])} model(s), "
          f"{sum(len(m['folds']) for m in logged.lineage['members'])} fold models) on {runtime.device.type} -> {out}"
          f"{' (+ ' + out.with_suffix('.probs.csv').name + ')' if with_probs else ''}; most predicted {common}")
    return out
