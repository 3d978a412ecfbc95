"""`speedrun`: a net built for accuracy per CPU-second at 8×8 to 64×64, from the speedrun line of work on
CIFAR-10 (airbench: each idea below was ablated there on its own, and re-measured here on Fashion-MNIST;
the README's "Accuracy per CPU-minute" says which paid on our CPUs and by how much).

    whiten   a frozen k×k convolution whose filters are the training patches' whitening (eigenvectors of
             their covariance, scaled by 1/sqrt(eigenvalue)), each also negated so a ReLU keeps both signs
    groups   three of: conv3×3 -> max-pool 2 -> BN -> act -> conv3×3 -> BN -> act  (widths w, 2w, 4w)
    head     global max-pool -> linear (no bias), logits scaled by `logit_scale`

With `dirac=True` the convolutions after the first start as identity maps on the channels they share
with their input, plus the usual random init: each group starts as a pooling of what came before. It
did not pay on Fashion-MNIST (README), so it is off unless asked for. BatchNorm runs
with a fast momentum (statistics follow the weights that lookahead keeps moving); the recipe decides
whether its weights train (`bn_weights: false` in the recipe freezes them, `bn_bias_lr` scales its biases'
rate): pipelines/recipe/optim.py.

The whitening filters need the training images: `fit_whitening(images)` is called once, before the
first step, on the fold's training rows only (pipelines/stages/train.py); the filters are then saved
with the weights like any other buffer, so prediction rebuilds the same net.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import FeaturesThenHead, activation as make_activation
from models.registry import register_model

BN_MOMENTUM = 0.4  # PyTorch's convention (1 - airbench's 0.6): fast enough to follow lookahead's jumps


class Whitening(nn.Module):
    """A frozen k×k convolution whitening the input's patches (2·C·k² output channels: each filter and its
    negation). Until `fit` has seen images it is a scaled identity over the patch."""

    def __init__(self, in_chans: int, kernel: int, eps: float = 5e-4):
        super().__init__()
        dims = in_chans * kernel * kernel
        self.kernel, self.eps = kernel, eps
        self.register_buffer("weight", torch.cat([torch.eye(dims), -torch.eye(dims)]).view(2 * dims, in_chans, kernel, kernel))
        self.out_chans = 2 * dims

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters from `images` (N×C×H×W, already normalised): eigenvectors of the patch covariance."""
        patches = F.unfold(images.float(), self.kernel).transpose(1, 2).reshape(-1, self.weight.shape[1] * self.kernel ** 2)
        patches = patches - patches.mean(dim=0)
        covariance = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance.double())
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + self.eps)[:, None]).float()
        filters = filters.view(-1, *self.weight.shape[1:])
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.device))

    def forward(self, x):
        return F.conv2d(x, self.weight.to(x.dtype))


def dirac_init(conv: nn.Conv2d) -> None:
    """The random init, with an identity map on the first min(in, out) channels added: the block starts
    close to passing its input through."""
    out_chans, in_chans = conv.weight.shape[:2]
    with torch.no_grad():
        torch.nn.init.dirac_(conv.weight[:min(in_chans, out_chans), :min(in_chans, out_chans)])


def batch_norm(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, momentum=BN_MOMENTUM)


class ConvGroup(nn.Sequential):
    def __init__(self, in_chans: int, out_chans: int, pool: bool, activation: str, dirac: bool):
        first = nn.Conv2d(in_chans, out_chans, 3, padding=1, bias=False)
        second = nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False)
        if dirac:
            dirac_init(first)
            dirac_init(second)
        super().__init__(first, nn.MaxPool2d(2) if pool else nn.Identity(), batch_norm(out_chans),
                         make_activation(activation), second, batch_norm(out_chans), make_activation(activation))


class SpeedrunNet(FeaturesThenHead):
    def __init__(self, num_classes: int, in_chans: int, img_size: int, widths: tuple[int, int, int],
                 whiten_kernel: int, whiten: bool, dirac: bool, logit_scale: float, activation: str):
        super().__init__(num_classes)
        self.whitening = Whitening(in_chans, whiten_kernel) if whiten else None
        channels = self.whitening.out_chans if whiten else in_chans
        size = img_size - whiten_kernel + 1 if whiten else img_size
        layers: list[nn.Module] = [self.whitening] if whiten else []
        for width in widths:
            pool = size >= 4  # 8×8 inputs: the last group keeps its 2×2 map
            layers.append(ConvGroup(channels, width, pool, activation, dirac))
            channels, size = width, size // 2 if pool else size
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.logit_scale = logit_scale
        self.head = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes, bias=False))

    def fit_whitening(self, images: torch.Tensor) -> None:
        if self.whitening is not None:
            self.whitening.fit(images)

    def forward(self, x):
        return self.head(self.features(x)) * self.logit_scale


@register_model
def speedrun(num_classes: int, in_chans: int, img_size: int, width: int = 32, whiten_kernel: int = 2,
             whiten: bool = True, dirac: bool = False, logit_scale: float = 1.0, activation: str = "relu") -> nn.Module:
    """Whitening stem, then three conv groups at widths w, 2w, 4w (w = 32: about `fastresnet`'s FLOPs)."""
    return SpeedrunNet(num_classes, in_chans, img_size, (width, 2 * width, 4 * width), whiten_kernel, whiten, dirac,
                       logit_scale, activation)
