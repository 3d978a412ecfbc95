"""Any torchvision classification model by name: `tv:resnet101`, `tv:vgg19`, `tv:vit_b_32`, `tv:swin_b`, ...

Built with the competition's class count (so parameter counts match torchvision's own for that count);
the first RGB convolution is rebuilt for other channel counts (pretrained RGB filters summed for 1
channel). `pretrained=True` uses torchvision's published weights (needs the internet) and swaps the
1000-class classifier for a new one; a local file (`pretrained_file`) is loaded by the registry. ViT-style models need a
fixed input size: set `input_size: 224` in the recipe and images are resized on the fly.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.errors import ModelError
from models.registry import register_prefix


def _replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def adapt_first_conv(model: nn.Module, in_chans: int) -> None:
    """Rebuild the first 3-channel Conv2d for `in_chans` channels, keeping (summed or repeated) weights."""
    if in_chans == 3:
        return
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == 3), (None, None))
    if conv is None:
        raise ModelError(f"{type(model).__name__}: found no RGB convolution to adapt to {in_chans} channel(s)")
    new = nn.Conv2d(in_chans, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.dilation, conv.groups,
                    conv.bias is not None, conv.padding_mode)
    with torch.no_grad():
        rgb = conv.weight
        new.weight.copy_(rgb.sum(dim=1, keepdim=True) if in_chans == 1 else rgb.mean(dim=1, keepdim=True).repeat(1, in_chans, 1, 1))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _replace_module(model, name, new)


def replace_classifier(model: nn.Module, num_classes: int) -> None:
    """Swap the last Linear layer (the 1000-class ImageNet head) for a fresh one with `num_classes` outputs."""
    name, linear = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
    _replace_module(model, name, nn.Linear(linear.in_features, num_classes))


def create_torchvision(name: str, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False,
                       **kwargs) -> nn.Module:
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ModelError(f"unknown torchvision model '{name}'; known: {', '.join(sorted(known)[:12])}, ... "
                        "(torchvision.models.list_models())")
    try:
        if pretrained:
            model = torchvision.models.get_model(name, weights="DEFAULT", **kwargs)
            replace_classifier(model, num_classes)
        else:
            model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise ModelError(f"tv:{name}: bad model_args ({exc})") from None
    except (OSError, RuntimeError, ValueError) as exc:
        if pretrained:
            raise ModelError(f"tv:{name}: could not fetch pretrained weights ({type(exc).__name__}); "
                            "offline, download them elsewhere and set `pretrained_file:`") from None
        raise
    adapt_first_conv(model, in_chans)
    return model


register_prefix("tv", create_torchvision)
