"""The prepared arrays and folds of a competition as tensors on the training device.

Loaded once per command and shared by every stage that computes: training, prediction (TTA, ensemble)
and tuning. Images stay uint8 (a quarter of float32's memory); models normalise them on the fly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pipelines.machine.device import Runtime
from pipelines.stages.prepare import Folds, Prepared


@dataclass
class TrainingData:
    images: torch.Tensor  # uint8 N×C×H×W on the device
    images_nhwc: np.ndarray  # the same images on the host, for per-sample albumentations
    labels: torch.Tensor  # int64 on the device
    test_images: torch.Tensor  # uint8 on the device
    fold_of_row: np.ndarray
    mean: list[float]  # per channel, 0..255 scale
    std: list[float]

    def labels_host(self) -> np.ndarray:
        return self.labels.cpu().numpy()


def load_training_data(prepared: Prepared, folds: Folds, runtime: Runtime) -> TrainingData:
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
