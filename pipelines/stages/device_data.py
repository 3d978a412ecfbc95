"""The prepared arrays and folds of a competition as tensors on the training device.

Loaded once per command and shared by every stage that computes: training, prediction (TTA, ensemble)
and tuning. Images stay uint8 (a quarter of float32's memory); models normalise them on the fly.

Arrays larger than a share of this machine's memory (or any, with KPIPE_MEMMAP=1) stay on disk: the
images are `MappedImages`, read from the memory-mapped prepared array a batch at a time and sent to the
device per step (through pinned memory on CUDA), and the normalisation statistics are computed in
chunks. The pixels a model sees are the same either way.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines.machine.device import Runtime
from pipelines.machine.memory import memory_mapped
from pipelines.stages.prepare import Folds, Prepared


MATERIALISE_ROWS = 4096  # a selection of more rows stays a lazy view; batches are read when indexed
STATS_CHUNK_BYTES = 32 << 20  # float64 pixels summed at a time: memory for the statistics stays this size


class MappedImages:
    """uint8 N×C×H×W images, read from a memory-mapped N×H×W×C array when indexed: what training and
    prediction ask of the images tensor (`len`, `shape`, `device`, indexing by a slice or an index
    tensor), with at most a batch of rows in memory. A large selection is itself a lazy view."""

    def __init__(self, array: np.ndarray, device: torch.device, rows: np.ndarray | None = None):
        self.array, self.device = array, device
        self.rows = np.arange(len(array)) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        height, width, channels = self.array.shape[1:]
        return (len(self.rows), channels, height, width)

    def __getitem__(self, key) -> "torch.Tensor | MappedImages":
        if isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        rows = self.rows[key]
        if np.ndim(rows) == 0:
            rows = rows[None]
        if len(rows) > MATERIALISE_ROWS:
            return MappedImages(self.array, self.device, rows)
        batch = torch.from_numpy(np.ascontiguousarray(self.array[rows])).permute(0, 3, 1, 2).contiguous()
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and (unbiased) std of N×H×W×C uint8 images, 0..255 scale, in chunks: memory for one
    chunk, however large the array."""
    channels = images.shape[-1]
    rows = max(1, STATS_CHUNK_BYTES // (8 * int(np.prod(images.shape[1:]))))
    total, squares, count = np.zeros(channels), np.zeros(channels), 0
    for start in range(0, len(images), rows):
        chunk = np.asarray(images[start:start + rows], dtype=np.float64).reshape(-1, channels)
        total += chunk.sum(axis=0)
        squares += (chunk ** 2).sum(axis=0)
        count += len(chunk)
    mean = total / count
    std = np.sqrt(np.maximum(squares - count * mean ** 2, 0) / max(count - 1, 1))
    return mean.tolist(), np.maximum(std, 1.0).tolist()


@dataclass
class TrainingData:
    images: torch.Tensor | MappedImages  # uint8 N×C×H×W on the device (or read to it a batch at a time)
    images_nhwc: np.ndarray  # the same images on the host, for per-sample albumentations
    labels: torch.Tensor  # int64 on the device
    test_images: torch.Tensor | MappedImages  # uint8 on the device
    fold_of_row: np.ndarray
    mean: list[float]  # per channel, 0..255 scale
    std: list[float]

    def labels_host(self) -> np.ndarray:
        return self.labels.cpu().numpy()


def load_training_data(prepared: Prepared, folds: Folds, runtime: Runtime) -> TrainingData:
    mapped = prepared.load(mmap=True)
    nbytes = mapped.train_images.nbytes + mapped.test_images.nbytes
    if memory_mapped(nbytes):
        print(f"data: {nbytes / 2**30:.1f} GiB of images stay memory-mapped from {prepared.folder}; batches are read "
              "as they are needed", flush=True)
        mean, std = channel_stats(mapped.train_images)
        return TrainingData(
            images=MappedImages(mapped.train_images, runtime.device),
            images_nhwc=mapped.train_images,
            labels=torch.from_numpy(mapped.train_labels).to(runtime.device),
            test_images=MappedImages(mapped.test_images, runtime.device),
            fold_of_row=folds.fold_of_each_row(len(mapped.train_labels)),
            mean=mean,
            std=std,
        )
    data = prepared.load(mmap=False)
    images = torch.from_numpy(data.train_images).permute(0, 3, 1, 2).contiguous()
    pixels = images.float().transpose(0, 1).reshape(images.shape[1], -1)
    return TrainingData(
        images=images.to(runtime.device),
        images_nhwc=data.train_images,
        labels=torch.from_numpy(data.train_labels).to(runtime.device),
        test_images=torch.from_numpy(data.test_images).permute(0, 3, 1, 2).contiguous().to(runtime.device),
        fold_of_row=folds.fold_of_each_row(len(data.train_labels)),
        mean=pixels.mean(dim=1).tolist(),
        std=pixels.std(dim=1).clamp_min(1.0).tolist(),
    )
