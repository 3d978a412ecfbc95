"""albumentations, imported the one way the project imports it: without its update check.

On import albumentations asks PyPI whether a newer release exists: a network request from every run
(and a warning on machines without a network). The pipeline pins what it uses, so the question is never
asked; the setting has to be in place before the library's first import, which is here.
"""
from __future__ import annotations

import os
from types import ModuleType


def albumentations() -> ModuleType:
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    import albumentations as library

    return library
