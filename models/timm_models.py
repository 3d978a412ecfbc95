"""Any timm model by name: `timm:resnet18`, `timm:efficientnet_b0`, ...

timm adapts the classifier (num_classes) and the stem (in_chans: it sums pretrained RGB filters for
1-channel input). Weights: `pretrained=True` uses timm's own loader (needs the internet);
a local file (`pretrained_file`) is loaded by the registry over whatever is built here.
"""
from __future__ import annotations

import torch.nn as nn

from models.errors import ModelError
from models.registry import register_prefix


def create_timm(name: str, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False,
                **kwargs) -> nn.Module:
    import timm

    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise ModelError(f"unknown timm model '{name}'; list them with `python -c \"import timm; print(timm.list_models())\"`")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        raise ModelError(f"timm:{name}: bad model_args ({exc})") from None
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise ModelError(f"timm:{name}: could not fetch pretrained weights ({type(exc).__name__}); "
                            "offline, download them elsewhere and set `pretrained_file:`") from None
        raise
    return model


register_prefix("timm", create_timm)
