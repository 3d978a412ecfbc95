"""The model registry: every architecture by name, and where its weights come from.

`create(name, num_classes, in_chans, img_size, pretrained=False, pretrained_file=None, **kwargs)` is the
one door in. Own architectures register with `@register_model` in their family's file; whole libraries
register a name prefix (`timm:resnet18`, `tv:resnet50`) with `register_prefix`. Weights are resolved
here, for every model alike: `pretrained=True` asks the library for its published weights (own models
have none), `pretrained_file` loads a local checkpoint over whatever was built (offline machines).
"""
from __future__ import annotations

import difflib
from typing import Callable

import torch.nn as nn

from models.errors import ModelError, UnknownModel
from models.weights import load_weights_file

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_PREFIXES: dict[str, Callable[..., nn.Module]] = {}
_REVISIONS: dict[str, int] = {}

# Library models the course reports use; any other timm/torchvision name works too.
LIBRARY_EXAMPLES = ["timm:resnet18", "timm:efficientnet_b0", "timm:mobilenetv3_small_100", "timm:seresnet50",
                    "timm:vit_base_patch32_224", "timm:swin_base_patch4_window7_224",
                    "tv:resnet50", "tv:resnet101", "tv:vgg19", "tv:vit_b_32", "tv:swin_b"]


def register_model(fn: Callable[..., nn.Module] | None = None, *, revision: int = 1):
    """Register `fn(num_classes, in_chans, img_size, **kwargs) -> nn.Module` under its function name.

    `@register_model(revision=2)` marks a net whose layers changed under the same name and arguments:
    trained outputs and studies are keyed by it (`revision_key`), so old checkpoints are never reused."""
    def register(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _MODELS[fn.__name__] = fn
        _REVISIONS[fn.__name__] = revision
        return fn
    return register(fn) if fn is not None else register


def revision_key(name: str) -> dict:
    """What a cache key adds for a model's revision: nothing for the first, so keys of unchanged nets stay."""
    revision = _REVISIONS.get(name, 1)
    return {} if revision == 1 else {"net_revision": revision}


def register_prefix(prefix: str, factory: Callable[..., nn.Module]) -> None:
    """`factory(model_name, num_classes, in_chans, img_size, pretrained, **kwargs)` builds any '<prefix>:<name>'."""
    _PREFIXES[prefix] = factory


def list_models() -> list[str]:
    """Every registered own model, then the library examples."""
    return sorted(_MODELS) + LIBRARY_EXAMPLES


def arguments(name: str) -> dict[str, object] | None:
    """The keyword arguments an own model takes besides the three every model takes, with their defaults
    (None for library models, whose arguments the library decides)."""
    import inspect

    if name not in _MODELS:
        return None
    parameters = inspect.signature(_MODELS[name]).parameters.values()
    return {p.name: p.default for p in parameters if p.name not in ("num_classes", "in_chans", "img_size")
            and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}


def check_name(name: str) -> None:
    """Raise UnknownModel with the closest known names unless `name` can be built."""
    prefix, _, rest = name.partition(":")
    if (rest and prefix in _PREFIXES) or name in _MODELS:
        return
    close = difflib.get_close_matches(name, list(_MODELS), n=3)
    hint = f"did you mean {', '.join(close)}? " if close else ""
    raise UnknownModel(f"unknown model '{name}': {hint}see `python -m models list` "
                       f"(or use a prefix: {', '.join(p + ':<name>' for p in sorted(_PREFIXES))})")


def create(name: str, num_classes: int, in_chans: int, img_size: int, pretrained: bool = False,
           pretrained_file: str | None = None, **kwargs) -> nn.Module:
    check_name(name)
    prefix, _, rest = name.partition(":")
    if rest and prefix in _PREFIXES:
        model = _PREFIXES[prefix](rest, num_classes=num_classes, in_chans=in_chans, img_size=img_size,
                                  pretrained=pretrained, **kwargs)
    elif pretrained:
        raise ModelError(f"model '{name}' has no published pretrained weights; set `pretrained_file:` to a local checkpoint")
    else:
        model = _MODELS[name](num_classes=num_classes, in_chans=in_chans, img_size=img_size, **kwargs)
    if pretrained_file:
        load_weights_file(model, pretrained_file)
    return model
