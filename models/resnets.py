"""ResNets for small inputs (3×3 stride-1 stem, no max-pool), squeeze-and-excitation variants, and a
multi-output ResNet with an auxiliary head after every stage.

`multi_output_resnet` returns, while training, a `MultiOutput` (combined logits, each head's logits and
the gate weights) and provides `training_loss`: the gate-weighted sum of the heads' losses. In eval
mode it returns the gate-weighted combination of the heads' logits, like any other model.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn as nn

from models.layers import activation as make_activation
from models.registry import register_model


class SqueezeExcite(nn.Module):
    """Channel attention (Hu et al. 2018): global average pool -> bottleneck MLP -> sigmoid scale."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        hidden = max(channels // reduction, 8)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x):
        return x * self.gate(x)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, in_c: int, out_c: int, stride: int = 1, se: bool = False, activation: str = "relu"):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_c, out_c, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(out_c),
            make_activation(activation),
            nn.Conv2d(out_c, out_c, 3, padding=1, bias=False), nn.BatchNorm2d(out_c),
            SqueezeExcite(out_c) if se else nn.Identity())
        self.shortcut = _shortcut(in_c, out_c, stride)
        self.act = make_activation(activation)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, in_c: int, width: int, stride: int = 1, se: bool = False, activation: str = "relu"):
        super().__init__()
        out_c = width * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(in_c, width, 1, bias=False), nn.BatchNorm2d(width), make_activation(activation),
            nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(width),
            make_activation(activation),
            nn.Conv2d(width, out_c, 1, bias=False), nn.BatchNorm2d(out_c),
            SqueezeExcite(out_c) if se else nn.Identity())
        self.shortcut = _shortcut(in_c, out_c, stride)
        self.act = make_activation(activation)

    def forward(self, x):
        return self.act(self.body(x) + self.shortcut(x))


def _shortcut(in_c: int, out_c: int, stride: int) -> nn.Module:
    if stride == 1 and in_c == out_c:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(in_c, out_c, 1, stride=stride, bias=False), nn.BatchNorm2d(out_c))


class SmallResNet(nn.Module):
    """Stem conv3×3 (and a max-pool, with `stem_pool`) -> stages (widths w, 2w, 4w, 8w; stride 2 from stage 2 on
    while the map is >= 4 px)
    -> global average pool -> linear. `se` puts SE in every block; `stage_se` also between stages."""

    def __init__(self, block, layers: list[int], num_classes: int, in_chans: int, img_size: int, width: int = 64,
                 se: bool = False, stage_se: bool = False, stem_pool: bool = False, activation: str = "relu"):
        super().__init__()
        self.num_classes = num_classes
        stem = [nn.Conv2d(in_chans, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), make_activation(activation)]
        if stem_pool:  # halve the map before the first stage, where most of the FLOPs are
            stem.append(nn.MaxPool2d(2))
            img_size //= 2
        self.stem = nn.Sequential(*stem)
        channels, size = width, img_size
        self.stages = nn.ModuleList()
        self.stage_channels = []
        for index, count in enumerate(layers):
            stride = 2 if index > 0 and size >= 4 else 1
            size = (size + stride - 1) // stride
            blocks = []
            for b in range(count):
                blocks.append(block(channels, width * 2 ** index, stride if b == 0 else 1, se=se, activation=activation))
                channels = width * 2 ** index * block.expansion
            if stage_se:
                blocks.append(SqueezeExcite(channels))
            self.stages.append(nn.Sequential(*blocks))
            self.stage_channels.append(channels)
        self.num_features = channels
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(channels, num_classes)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def forward_features(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return x

    def forward(self, x):
        return self.fc(self.pool(self.forward_features(x)))


@register_model
def resnet18(num_classes: int, in_chans: int, img_size: int, width: int = 64, activation: str = "relu") -> nn.Module:
    return SmallResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_chans, img_size, width, activation=activation)


@register_model
def fastresnet(num_classes: int, in_chans: int, img_size: int, width: int = 32, activation: str = "relu") -> nn.Module:
    """A ResNet sized for 2 CPU cores: max-pool after the stem (inputs of 16 px and up), then one basic block
    per stage at widths w, 2w, 4w — about the FLOPs of `fastcnn`, with shortcuts."""
    return SmallResNet(BasicBlock, [1, 1, 1], num_classes, in_chans, img_size, width, stem_pool=img_size >= 16,
                       activation=activation)


@register_model
def resnet34(num_classes: int, in_chans: int, img_size: int, width: int = 64, activation: str = "relu") -> nn.Module:
    return SmallResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_chans, img_size, width, activation=activation)


@register_model
def resnet50(num_classes: int, in_chans: int, img_size: int, width: int = 64, activation: str = "relu") -> nn.Module:
    return SmallResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_chans, img_size, width, activation=activation)


@register_model
def se_resnet(num_classes: int, in_chans: int, img_size: int, width: int = 32, activation: str = "relu") -> nn.Module:
    """A small SE-ResNet: ResNet-18 layout at half width, SE in every block."""
    return SmallResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_chans, img_size, width, se=True, activation=activation)


@register_model
def se_resnet18(num_classes: int, in_chans: int, img_size: int, width: int = 64, activation: str = "relu") -> nn.Module:
    """SE-ResNet-18 (Hu et al. 2018) for small inputs: ResNet-18's basic blocks, SE in every block."""
    return SmallResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_chans, img_size, width, se=True, activation=activation)


@register_model
def se_resnet34(num_classes: int, in_chans: int, img_size: int, width: int = 64, activation: str = "relu") -> nn.Module:
    """SE-ResNet-34, the 10-class course report's net: basic blocks [3, 4, 6, 3], SE in every block."""
    return SmallResNet(BasicBlock, [3, 4, 6, 3], num_classes, in_chans, img_size, width, se=True, activation=activation)


@register_model
def se_resnet50(num_classes: int, in_chans: int, img_size: int, width: int = 64, activation: str = "relu") -> nn.Module:
    """SE-ResNet-50: bottleneck blocks [3, 4, 6, 3], SE in every block."""
    return SmallResNet(Bottleneck, [3, 4, 6, 3], num_classes, in_chans, img_size, width, se=True, activation=activation)


@register_model
def multi_se_resnet(num_classes: int, in_chans: int, img_size: int, width: int = 32, activation: str = "relu") -> nn.Module:
    """se_resnet with one more SE block between consecutive stages."""
    return SmallResNet(BasicBlock, [2, 2, 2, 2], num_classes, in_chans, img_size, width, se=True, stage_se=True,
                       activation=activation)


class MultiOutput(NamedTuple):
    logits: torch.Tensor  # gate-weighted combination of the heads
    heads: list[torch.Tensor]  # one per stage, then the final head
    gates: torch.Tensor  # softmax weights of the heads


class MultiOutputResNet(SmallResNet):
    """An auxiliary classifier after each of the 4 stages plus the final one, combined by learnable gates."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int, width: int = 32):
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes, in_chans, img_size, width)
        self.aux_heads = nn.ModuleList(nn.Linear(c, num_classes) for c in self.stage_channels)
        self.gate_logits = nn.Parameter(torch.zeros(len(self.stage_channels) + 1))

    def forward(self, x):
        x = self.stem(x)
        heads = []
        for stage, aux in zip(self.stages, self.aux_heads):
            x = stage(x)
            heads.append(aux(self.pool(x)))
        heads.append(self.fc(self.pool(x)))
        gates = self.gate_logits.softmax(dim=0)
        combined = sum(g * h for g, h in zip(gates, heads))
        return MultiOutput(combined, heads, gates) if self.training else combined

    @staticmethod
    def training_loss(output: MultiOutput, targets, base_loss: Callable) -> torch.Tensor:
        """The gate-weighted sum of every head's loss."""
        return sum(g * base_loss(h, targets) for g, h in zip(output.gates, output.heads))


@register_model
def multi_output_resnet(num_classes: int, in_chans: int, img_size: int, width: int = 32) -> nn.Module:
    return MultiOutputResNet(num_classes, in_chans, img_size, width)
