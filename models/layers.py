"""Building blocks shared by the model families."""
from __future__ import annotations

import torch.nn as nn


def conv_bn_relu(in_chans: int, out_chans: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(in_chans, out_chans, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True)]


class FeaturesThenHead(nn.Module):
    """A net that is `features` then `head` (whose last layer is the classifier); subclasses build both.

    Every such model answers the same questions: forward_features(), get_classifier(), num_classes."""

    features: nn.Module
    head: nn.Sequential

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def forward_features(self, x):
        return self.features(x)

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def forward(self, x):
        return self.head(self.features(x))
