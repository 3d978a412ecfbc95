"""Small hand-written CNNs for 8×8 to 64×64 images: the nets course competitors write themselves.

`cnn2`, `cnn3`, `cnn5` are the CIFAR-100 course report's CNN_n exactly: n blocks of Conv2d 5×5 (padding 2)
-> BatchNorm2d -> ReLU -> MaxPool2d(2), 16 channels doubling per block, then one Linear layer on the
flattened map (at 32×32×3 with 100 classes: 219,044 / 168,036 / 1,116,388 parameters).

The others are *plans* in the style of VGG configs: a number is a Conv3×3-BN-ReLU of that width, "M" a
2×2 max-pool (skipped once the feature map is smaller than 4 pixels, so 8×8 inputs work too). They avoid
GELU (ReLU trained 17% faster) and pool early where the input allows (a max-pool right after the first
conv of a 28×28 input doubled images/s): both measured on the project's 2-core CPUs. Every net here
takes `activation` (relu, leaky_relu, elu; models/layers.py).
"""
from __future__ import annotations

import torch.nn as nn

from models.errors import ModelError
from models.registry import register_model
from models.layers import FeaturesThenHead, activation as make_activation, conv_bn_relu


class PlanCNN(FeaturesThenHead):
    """Conv-BN-ReLU blocks and max-pools as the plan says, then global max-pool, dropout and a linear head."""

    def __init__(self, plan: list, num_classes: int, in_chans: int, img_size: int, dropout: float = 0.0,
                 activation: str = "relu"):
        super().__init__(num_classes)
        layers: list[nn.Module] = []
        channels, size = in_chans, img_size
        for step in plan:
            if step == "M":
                if size >= 4:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                layers += conv_bn_relu(channels, step, act=activation)
                channels = step
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))



def _scaled(plan: list, width: int) -> list:
    """A plan written for width 32, scaled to `width`."""
    return [step if step == "M" else step * width // 32 for step in plan]


class ReportCNN(FeaturesThenHead):
    """n blocks of Conv k×k (with bias, 'same' padding) -> BN -> activation -> MaxPool2d(2) (while the map is
    at least 2 pixels wide), `width` channels doubling per block; then dropout and one Linear layer on the
    flattened map."""

    def __init__(self, blocks: int, num_classes: int, in_chans: int, img_size: int, width: int = 16, kernel: int = 5,
                 dropout: float = 0.0, activation: str = "relu"):
        super().__init__(num_classes)
        layers: list[nn.Module] = []
        channels, size = in_chans, img_size
        for block in range(blocks):
            out = width * 2 ** block
            layers += [nn.Conv2d(channels, out, kernel, padding=kernel // 2), nn.BatchNorm2d(out),
                       make_activation(activation)]
            if size >= 2:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = out
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels * size * size, num_classes))


def _cnn(blocks: int, plan: list, num_classes: int, in_chans: int, img_size: int, width: int | None, kernel: int,
         dropout: float, activation: str, style: str) -> nn.Module:
    if style == "report":
        return ReportCNN(blocks, num_classes, in_chans, img_size, width or 16, kernel, dropout, activation)
    if style == "plan":  # the global-max-pool CNN_n this project shipped before the report's nets
        return PlanCNN(_scaled(plan, width or 32), num_classes, in_chans, img_size, dropout, activation)
    raise ModelError(f"style '{style}': 'report' (the course report's CNN_{blocks}) or 'plan'")


@register_model
def fastcnn(num_classes: int, in_chans: int, img_size: int, width: int = 32, dropout: float = 0.0,
            activation: str = "relu") -> nn.Module:
    """The CPU workhorse: 5 convs (w | 2w 2w | 4w 4w), pooling right after the first; 0.28M params at w=32."""
    return PlanCNN(_scaled([32, "M", 64, 64, "M", 128, 128], width), num_classes, in_chans, img_size, dropout, activation)


@register_model(revision=2)  # 2: the course report's CNN_2 (before: style=plan)
def cnn2(num_classes: int, in_chans: int, img_size: int, width: int | None = None, kernel: int = 5, dropout: float = 0.0,
         activation: str = "relu", style: str = "report") -> nn.Module:
    """The report's CNN_2 (channels w, 2w; w = 16). style=plan: 3×3 convs (w, 2w; w = 32), global max-pool."""
    return _cnn(2, [32, "M", 64, "M"], num_classes, in_chans, img_size, width, kernel, dropout, activation, style)


@register_model(revision=2)  # 2: the course report's CNN_3 (before: style=plan)
def cnn3(num_classes: int, in_chans: int, img_size: int, width: int | None = None, kernel: int = 5, dropout: float = 0.0,
         activation: str = "relu", style: str = "report") -> nn.Module:
    """The report's CNN_3 (w, 2w, 4w; w = 16). style=plan: 3×3 convs (w, 2w, 4w; w = 32), global max-pool."""
    return _cnn(3, [32, "M", 64, "M", 128], num_classes, in_chans, img_size, width, kernel, dropout, activation, style)


@register_model(revision=2)  # 2: the course report's CNN_5 (before: style=plan)
def cnn5(num_classes: int, in_chans: int, img_size: int, width: int | None = None, kernel: int = 5, dropout: float = 0.0,
         activation: str = "relu", style: str = "report") -> nn.Module:
    """The report's CNN_5 (w .. 16w; w = 16). style=plan: 3×3 convs (w, 2w, 4w, 8w, 8w; w = 32), global max-pool."""
    return _cnn(5, [32, "M", 64, "M", 128, "M", 256, "M", 256], num_classes, in_chans, img_size, width, kernel, dropout,
                activation, style)


class FlattenCNN(FeaturesThenHead):
    """Plain Conv-ReLU-MaxPool layers (no batch norm), flattened into two fully connected layers:
    the first nets of most course reports."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int, widths: tuple[int, ...], kernel: int,
                 hidden: int, dropout: float = 0.0, activation: str = "relu"):
        super().__init__(num_classes)
        layers: list[nn.Module] = []
        channels, size = in_chans, img_size
        for width in widths:
            layers += [nn.Conv2d(channels, width, kernel, padding=kernel // 2), make_activation(activation)]
            if size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            channels = width
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(channels * size * size, hidden), make_activation(activation),
                                  nn.Dropout(dropout), nn.Linear(hidden, num_classes))


@register_model
def naive_cnn(num_classes: int, in_chans: int, img_size: int, hidden: int = 128, activation: str = "relu") -> nn.Module:
    """2 conv (5×5: 32, 64) + 2 fc."""
    return FlattenCNN(num_classes, in_chans, img_size, (32, 64), kernel=5, hidden=hidden, activation=activation)


@register_model
def deeper_cnn(num_classes: int, in_chans: int, img_size: int, hidden: int = 256, dropout: float = 0.25,
               activation: str = "relu") -> nn.Module:
    """3 conv with smaller kernels (3×3: 32, 64, 128) + 2 fc with dropout."""
    return FlattenCNN(num_classes, in_chans, img_size, (32, 64, 128), kernel=3, hidden=hidden, dropout=dropout,
                      activation=activation)


class ShallowCNN(FeaturesThenHead):
    """4 convs — 7×7×64, then 3×3×128, 3×3×256, 3×3×256 — and 2 fully connected layers."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int, hidden: int = 256, dropout: float = 0.3,
                 activation: str = "relu"):
        super().__init__(num_classes)
        layers = conv_bn_relu(in_chans, 64, kernel=7, act=activation)
        size = img_size
        for in_c, out_c, pool in ((64, 128, True), (128, 256, False), (256, 256, True)):
            if pool and size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            layers += conv_bn_relu(in_c, out_c, act=activation)
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(256, hidden),
                                  make_activation(activation), nn.Dropout(dropout), nn.Linear(hidden, num_classes))



@register_model
def shallow_cnn(num_classes: int, in_chans: int, img_size: int, hidden: int = 256, dropout: float = 0.3,
                activation: str = "relu") -> nn.Module:
    return ShallowCNN(num_classes, in_chans, img_size, hidden, dropout, activation)


class LeNet(FeaturesThenHead):
    """LeNet-5 as used on 28×28 MNIST: conv5(6)-pool-conv5(16)-pool, 16·4·4 → 120 → 84 → classes.

    On 28×28 it is the classic net exactly (44,426 parameters for 10 classes, 1 channel). Smaller
    images get padded convolutions and other sizes an adaptive pool to 4×4, so the head never changes."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int, activation: str = "relu"):
        super().__init__(num_classes)
        padding = 2 if img_size < 28 else 0
        act = make_activation
        self.features = nn.Sequential(
            nn.Conv2d(in_chans, 6, 5, padding=padding), act(activation), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5, padding=padding), act(activation), nn.MaxPool2d(2) if img_size >= 8 else nn.Identity(),
            nn.AdaptiveAvgPool2d(4))
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, 120), act(activation),
                                  nn.Linear(120, 84), act(activation), nn.Linear(84, num_classes))



@register_model
def lenet(num_classes: int, in_chans: int, img_size: int, activation: str = "relu") -> nn.Module:
    return LeNet(num_classes, in_chans, img_size, activation)
