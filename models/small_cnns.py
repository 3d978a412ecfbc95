"""Small hand-written CNNs for 8×8 to 64×64 images: the nets course competitors write themselves.

Each is a *plan* in the style of VGG configs: a number is a Conv3×3-BN-ReLU of that width, "M" a 2×2
max-pool (skipped once the feature map is smaller than 4 pixels, so 8×8 inputs work too). They avoid
GELU and pool early where the input allows: both are measured wins on CPU (../shared/PERFORMANCE.md).
"""
from __future__ import annotations

import torch.nn as nn

from models import register_model


def conv_bn_relu(in_chans: int, out_chans: int, kernel: int = 3) -> list[nn.Module]:
    return [nn.Conv2d(in_chans, out_chans, kernel, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_chans),
            nn.ReLU(inplace=True)]


class PlanCNN(nn.Module):
    """Conv-BN-ReLU blocks and max-pools as the plan says, then global max-pool, dropout and a linear head."""

    def __init__(self, plan: list, num_classes: int, in_chans: int, img_size: int, dropout: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        layers: list[nn.Module] = []
        channels, size = in_chans, img_size
        for step in plan:
            if step == "M":
                if size >= 4:
                    layers.append(nn.MaxPool2d(2))
                    size //= 2
            else:
                layers += conv_bn_relu(channels, step)
                channels = step
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))

    def forward_features(self, x):
        return self.features(x)

    def get_classifier(self) -> nn.Module:
        return self.head[-1]

    def forward(self, x):
        return self.head(self.features(x))


def _scaled(plan: list, width: int) -> list:
    """A plan written for width 32, scaled to `width`."""
    return [step if step == "M" else step * width // 32 for step in plan]


@register_model
def fastcnn(num_classes: int, in_chans: int, img_size: int, width: int = 32, dropout: float = 0.0) -> nn.Module:
    """The CPU workhorse: 5 convs (w | 2w 2w | 4w 4w), pooling right after the first; 0.28M params at w=32."""
    return PlanCNN(_scaled([32, "M", 64, 64, "M", 128, 128], width), num_classes, in_chans, img_size, dropout)


@register_model
def cnn3(num_classes: int, in_chans: int, img_size: int, width: int = 32, dropout: float = 0.0) -> nn.Module:
    """Three Conv-BN-ReLU-MaxPool blocks (w, 2w, 4w)."""
    return PlanCNN(_scaled([32, "M", 64, "M", 128], width), num_classes, in_chans, img_size, dropout)


@register_model
def cnn5(num_classes: int, in_chans: int, img_size: int, width: int = 32, dropout: float = 0.0) -> nn.Module:
    """Five Conv-BN-ReLU-MaxPool blocks (w, 2w, 4w, 8w, 8w), pooling while the image allows."""
    return PlanCNN(_scaled([32, "M", 64, "M", 128, "M", 256, "M", 256], width), num_classes, in_chans, img_size, dropout)
