"""Loading weights from a local file, for any registered model (offline machines cannot use a hub)."""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from models.errors import ModelError


def classifier_of(model: nn.Module) -> nn.Module | None:
    """The classification head: `get_classifier()` where the model has one (timm, ours), else the last Linear."""
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def load_weights_file(model: nn.Module, path: str, skip_head: bool = True) -> None:
    """Load a local checkpoint into `model`; the classifier is skipped when its shape differs (new classes)."""
    file = Path(path)
    if not file.is_file():
        raise ModelError(f"pretrained_file {path}: no such file")
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(file))
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt files raise many different errors
        raise ModelError(f"pretrained_file {path}: cannot read it ({type(exc).__name__}: {exc})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    own = model.state_dict()
    head_names = set()
    classifier = classifier_of(model) if skip_head else None
    if classifier is not None:
        head_names = {name for name, p in model.named_parameters() if any(p is q for q in classifier.parameters())}
    mismatched = [k for k, v in state.items() if k in own and own[k].shape != v.shape and k not in head_names]
    if mismatched:
        k = mismatched[0]
        raise ModelError(f"pretrained_file {path}: tensor '{k}' has shape {tuple(state[k].shape)} but the model needs "
                        f"{tuple(own[k].shape)} ({len(mismatched)} mismatches); was it saved for another architecture?")
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    missing = [k for k in own if k not in usable and k not in head_names]
    if not usable or len(missing) > len(own) // 2:
        raise ModelError(f"pretrained_file {path}: only {len(usable)} of {len(own)} tensors match the model's names; "
                        "was it saved for another architecture?")
    model.load_state_dict(usable, strict=False)
