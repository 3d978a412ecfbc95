"""Building blocks shared by the model families."""
from __future__ import annotations

from typing import Callable

import torch.nn as nn

from models.errors import ModelError

# The activations a hand-written net takes by name (`activation:` in model_args). In place where the
# module allows it: the next layer owns the tensor.
ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": lambda: nn.ReLU(inplace=True),
    "leaky_relu": lambda: nn.LeakyReLU(0.01, inplace=True),
    "elu": lambda: nn.ELU(inplace=True),
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise ModelError(f"activation '{name}': not one of {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def conv_bn_relu(in_chans: int, out_chans: int, kernel: int = 3, act: str = "relu") -> list[nn.Module]:
    """Conv (no bias: the BN shifts) -> BN -> the activation (ReLU unless `act` names another)."""
    return [nn.Conv2d(in_chans, out_chans, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_chans),
            activation(act)]


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
