"""One registry for every architecture: `models.create(name, num_classes, in_chans, img_size)`.

The registry is `models/registry.py`; each family file registers its names when imported here. Adding a
model is adding a decorated function to a family file.
"""
from models.errors import ModelError, UnknownModel
from models.registry import (LIBRARY_EXAMPLES, arguments, check_name, create, list_models, register_model,
                             register_prefix, revision_key)

# Importing a family runs its registrations (timm and torchvision themselves load only when used).
from models import classic, resnets, small_cnns, speedrun, timm_models, torchvision_models  # noqa: E402,F401  isort: skip

__all__ = ["LIBRARY_EXAMPLES", "ModelError", "arguments", "UnknownModel", "check_name", "create", "list_models", "register_model",
           "register_prefix", "revision_key"]
