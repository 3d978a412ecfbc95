"""The model as the pipeline trains and runs it: a registry network behind the competition's own
normalisation (and resizing, for networks that need a fixed input size), in its run's precision.

Both training (a fresh model) and prediction (a model rebuilt from a checkpoint) build it here, so the
two can never disagree about preprocessing or precision.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

import models
from competition.recipe import ModelRun
from competition.spec import CompetitionSpec
from pipelines.machine.device import PRECISIONS, Precision, Runtime


def in_layout(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """`x` laid out as the precision asks. With one channel both layouts count as contiguous, so
    `.contiguous(memory_format=...)` changes nothing, and the convolutions pick their kernels from
    whichever strides the batch happened to have: a shifted TTA view ran at half the speed of the
    identity view of the same images (2-core AVX2 EPYC, speedrun). The strides are set outright (a view:
    no copy)."""
    x = x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if x.shape[1] == 1:
        height, width = x.shape[2:]
        x = x.as_strided(x.shape, (x.stride(0), 1, width, 1) if channels_last else (x.stride(0), height * width, width, 1))
    return x


class ImageClassifier(nn.Module):
    """Takes images with values 0..255 (uint8 or float), normalises them, resizes if asked, classifies.

    The forward pass runs in `precision` (autocast dtype, memory layout) and returns logits;
    `probabilities` turns them into what the pipeline predicts: a softmax over the classes, or
    (`multi_label`) an independent sigmoid per label."""

    def __init__(self, net: nn.Module, mean: list[float], std: list[float], input_size: int | None = None,
                 precision: Precision = PRECISIONS["fp32-cl"], multi_label: bool = False):
        super().__init__()
        self.net = net
        self.multi_label = multi_label
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))
        self.input_size = input_size
        self.precision = precision

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.mean) / self.std
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        x = in_layout(x, self.precision.channels_last)
        dtype = self.precision.amp_dtype
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
            return self.net(x)  # logits in the autocast dtype: the loss and the softmax take .float()

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.float().sigmoid() if self.multi_label else logits.float().softmax(dim=1)

    @property
    def fits_to_images(self) -> bool:
        """Whether the net sets a layer from the data (`fit_whitening`: models/speedrun.py)."""
        return hasattr(self.net, "fit_whitening")

    def fit_to_images(self, images: torch.Tensor) -> None:
        """Show such a net `images` (uint8 N×C×H×W, training rows only), normalised as the forward pass
        normalises them."""
        self.net.fit_whitening((images.float().to(self.mean.device) - self.mean) / self.std)


def build_model(run: ModelRun, spec: CompetitionSpec, mean: list[float], std: list[float],
                runtime: Runtime) -> ImageClassifier:
    """The run's network for this competition's classes and channels on the runtime's device, in the
    run's precision (`auto`: the device's default); the registry loads any weights."""
    net = models.create(run.model, num_classes=len(spec.classes), in_chans=spec.image.channels,
                        img_size=run.input_size or spec.image.height, pretrained=run.pretrained,
                        pretrained_file=run.pretrained_file, **run.model_args)
    precision = runtime.precision(run.precision)
    model = ImageClassifier(net, mean, std, run.input_size, precision, spec.task == "multi_label").to(runtime.device)
    return model.to(memory_format=torch.channels_last) if precision.channels_last else model
