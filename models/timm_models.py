"""Any timm model by name: `timm:resnet18`, `timm:efficientnet_b0`, ...

timm adapts the classifier (num_classes) and the stem (in_chans: it sums pretrained RGB filters for
1-channel input). Weights: `pretrained=True` uses timm's own loader (needs the internet);
`pretrained_file=path` loads a local .safetensors or .pth checkpoint, refusing shape mismatches clearly.
"""
from __future__ import annotations

import torch.nn as nn

from competition.errors import UserError
from models import register_prefix
from models.weights import load_weights_file


def create_timm(name: str, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False,
                pretrained_file: str | None = None, **kwargs) -> nn.Module:
    import timm

    if name not in timm.list_models() and name not in timm.list_models(pretrained=True):
        raise UserError(f"unknown timm model '{name}'; list them with `python -c \"import timm; print(timm.list_models())\"`")
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, **kwargs)
    except TypeError as exc:
        raise UserError(f"timm:{name}: bad model_args ({exc})") from None
    except (OSError, RuntimeError) as exc:
        if pretrained:
            raise UserError(f"timm:{name}: could not fetch pretrained weights ({type(exc).__name__}); "
                            "offline, download them elsewhere and set `pretrained_file:`") from None
        raise
    if pretrained_file:
        load_weights_file(model, pretrained_file)
    return model


register_prefix("timm", create_timm)
