"""Classic ImageNet architectures adapted to 8×8–64×64 inputs: AlexNet, VGG, GoogLeNet, MobileNet v1.

The adaptations are the usual ones for CIFAR-sized images: a small stride-1 first convolution,
down-sampling only while the feature map is at least 4 pixels wide, and global pooling before a small
classifier, so each net accepts any of our image sizes and any channel count.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.registry import register_model
from models.layers import FeaturesThenHead, conv_bn_relu
from models.small_cnns import PlanCNN


class AlexNetSmall(FeaturesThenHead):
    """AlexNet with a 5×5 stride-1 first conv and half the filters (48-128-192-192-128)."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int, hidden: int = 1024, dropout: float = 0.5):
        super().__init__(num_classes)
        size = img_size
        layers: list[nn.Module] = []
        for in_c, out_c, kernel, pool in ((in_chans, 48, 5, True), (48, 128, 5, True), (128, 192, 3, False),
                                          (192, 192, 3, False), (192, 128, 3, True)):
            layers += [nn.Conv2d(in_c, out_c, kernel, padding=kernel // 2), nn.ReLU(inplace=True)]
            if pool and size >= 4:
                layers.append(nn.MaxPool2d(2))
                size //= 2
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(2))
        self.head = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(128 * 2 * 2, hidden), nn.ReLU(inplace=True),
                                  nn.Dropout(dropout), nn.Linear(hidden, hidden), nn.ReLU(inplace=True),
                                  nn.Linear(hidden, num_classes))



@register_model
def alexnet_small(num_classes: int, in_chans: int, img_size: int, hidden: int = 1024, dropout: float = 0.5) -> nn.Module:
    return AlexNetSmall(num_classes, in_chans, img_size, hidden, dropout)


# VGG configurations A, B, D, E (Simonyan & Zisserman), with batch norm; the classifier is one linear layer
# after global pooling, as in the CIFAR versions, instead of three 4096-wide layers.
VGG_PLANS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def _vgg(depth_name: str):
    def build(num_classes: int, in_chans: int, img_size: int, dropout: float = 0.0) -> nn.Module:
        return PlanCNN(VGG_PLANS[depth_name], num_classes, in_chans, img_size, dropout)

    build.__name__ = depth_name
    build.__doc__ = f"{depth_name.upper()} with batch norm, pooling only while the map is >= 4 px, one linear head."
    return build


for _name in VGG_PLANS:
    register_model(_vgg(_name))


class Inception(nn.Module):
    """GoogLeNet's block: 1×1 | 1×1→3×3 | 1×1→5×5 (as two 3×3) | 3×3 max-pool→1×1, concatenated."""

    def __init__(self, in_c: int, c1: int, c3r: int, c3: int, c5r: int, c5: int, pool_proj: int):
        super().__init__()
        self.b1 = nn.Sequential(*conv_bn_relu(in_c, c1, 1))
        self.b3 = nn.Sequential(*conv_bn_relu(in_c, c3r, 1), *conv_bn_relu(c3r, c3))
        self.b5 = nn.Sequential(*conv_bn_relu(in_c, c5r, 1), *conv_bn_relu(c5r, c5), *conv_bn_relu(c5, c5))
        self.bp = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1), *conv_bn_relu(in_c, pool_proj, 1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.bp(x)], dim=1)


class GoogLeNet(FeaturesThenHead):
    """Inception v1 for small images: a 3×3 stem, inception blocks 3a–5b, global average pooling, dropout 0.2."""

    def __init__(self, num_classes: int, in_chans: int, img_size: int, dropout: float = 0.2):
        super().__init__(num_classes)
        size = img_size

        def pool() -> nn.Module:
            nonlocal size
            if size >= 4:
                size //= 2
                return nn.MaxPool2d(3, stride=2, padding=1)
            return nn.Identity()

        self.features = nn.Sequential(
            *conv_bn_relu(in_chans, 192),
            Inception(192, 64, 96, 128, 16, 32, 32), Inception(256, 128, 128, 192, 32, 96, 64), pool(),
            Inception(480, 192, 96, 208, 16, 48, 64), Inception(512, 160, 112, 224, 24, 64, 64),
            Inception(512, 128, 128, 256, 24, 64, 64), Inception(512, 112, 144, 288, 32, 64, 64),
            Inception(528, 256, 160, 320, 32, 128, 128), pool(),
            Inception(832, 256, 160, 320, 32, 128, 128), Inception(832, 384, 192, 384, 48, 128, 128))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(1024, num_classes))



@register_model
def googlenet(num_classes: int, in_chans: int, img_size: int, dropout: float = 0.2) -> nn.Module:
    return GoogLeNet(num_classes, in_chans, img_size, dropout)


class MobileNetV1(FeaturesThenHead):
    """Depthwise-separable convolutions (Howard et al. 2017), stride 2 only while the map is >= 4 px."""

    PLAN = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
            (1024, 2), (1024, 1)]

    def __init__(self, num_classes: int, in_chans: int, img_size: int, width_mult: float = 1.0, dropout: float = 0.0):
        super().__init__(num_classes)
        first = int(32 * width_mult)
        layers = conv_bn_relu(in_chans, first)
        channels, size = first, img_size
        for out_c, stride in self.PLAN:
            out_c = int(out_c * width_mult)
            stride = stride if size >= 4 else 1
            size = (size + stride - 1) // stride
            layers += [nn.Conv2d(channels, channels, 3, stride=stride, padding=1, groups=channels, bias=False),
                       nn.BatchNorm2d(channels), nn.ReLU(inplace=True), *conv_bn_relu(channels, out_c, 1)]
            channels = out_c
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))



@register_model
def mobilenet_v1(num_classes: int, in_chans: int, img_size: int, width_mult: float = 1.0, dropout: float = 0.0) -> nn.Module:
    return MobileNetV1(num_classes, in_chans, img_size, width_mult, dropout)
