"""Searched augmentation policies as albumentations ops, with torchvision's operations and magnitudes:

    autoaugment     AutoAugment's CIFAR-10 policy (Cubuk et al. 2019): one of 25 learned pairs of ops, each
                    applied with its own probability at its own magnitude (of 10 bins)
    randaugment     RandAugment (Cubuk et al. 2020): `augment.ops` (N, default 2) ops drawn uniformly with
                    replacement, each at magnitude `augment.magnitude` (M of 30, default 9), random sign
    trivialaugment  TrivialAugment Wide (Müller & Hutter 2021): one op, at a magnitude drawn uniformly from
                    the wide ranges

Each function here gives a policy's searched ops alone; `augment.py` registers the policies, each
after the `light` flips and shift, as these policies are used on CIFAR. Where the spec says
colour defines the class, every op that changes pixel values (brightness, colour, contrast, posterize,
solarize, auto-contrast, equalize, invert) becomes the identity, so only geometry and sharpness remain.
Sampling is albumentations', so a seed fixes it like every other policy.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from competition.recipe import AugmentConfig
from competition.spec import CompetitionSpec
from pipelines.recipe.albumentations_import import albumentations

SEARCHED = ("autoaugment", "randaugment", "trivialaugment")
COLOUR_OPS = {"Brightness", "Color", "Contrast", "Posterize", "Solarize", "AutoContrast", "Equalize", "Invert"}
RANDAUGMENT_OPS = ["Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
                   "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize"]
DEFAULT_OPS, DEFAULT_MAGNITUDE, MAGNITUDE_BINS = 2, 9, 31

# (op, probability, magnitude bin of 10 or None): torchvision's AutoAugmentPolicy.CIFAR10.
CIFAR10_POLICY = [
    (("Invert", 0.1, None), ("Contrast", 0.2, 6)), (("Rotate", 0.7, 2), ("TranslateX", 0.3, 9)),
    (("Sharpness", 0.8, 1), ("Sharpness", 0.9, 3)), (("ShearY", 0.5, 8), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.5, None), ("Equalize", 0.9, None)), (("ShearY", 0.2, 7), ("Posterize", 0.3, 7)),
    (("Color", 0.4, 3), ("Brightness", 0.6, 7)), (("Sharpness", 0.3, 9), ("Brightness", 0.7, 9)),
    (("Equalize", 0.6, None), ("Equalize", 0.5, None)), (("Contrast", 0.6, 7), ("Sharpness", 0.6, 5)),
    (("Color", 0.7, 7), ("TranslateX", 0.5, 8)), (("Equalize", 0.3, None), ("AutoContrast", 0.4, None)),
    (("TranslateY", 0.4, 3), ("Sharpness", 0.2, 6)), (("Brightness", 0.9, 6), ("Color", 0.2, 8)),
    (("Solarize", 0.5, 2), ("Invert", 0.0, None)), (("Equalize", 0.2, None), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.2, None), ("Equalize", 0.6, None)), (("Color", 0.9, 9), ("Equalize", 0.6, None)),
    (("AutoContrast", 0.8, None), ("Solarize", 0.2, 8)), (("Brightness", 0.1, 3), ("Color", 0.7, 0)),
    (("Solarize", 0.4, 5), ("AutoContrast", 0.9, None)), (("TranslateY", 0.9, 9), ("TranslateY", 0.7, 9)),
    (("AutoContrast", 0.9, None), ("Solarize", 0.8, 3)), (("Equalize", 0.8, None), ("Invert", 0.1, None)),
    (("TranslateY", 0.7, 9), ("AutoContrast", 0.9, None)),
]


def _maxima(spec: CompetitionSpec, wide: bool) -> dict[str, float]:
    """The largest magnitude of each signed op (torchvision's ranges; `wide`: TrivialAugment Wide's)."""
    width, height = spec.image.width, spec.image.height
    return {"ShearX": 0.99 if wide else 0.3, "ShearY": 0.99 if wide else 0.3,
            "TranslateX": 32.0 if wide else 150 / 331 * width, "TranslateY": 32.0 if wide else 150 / 331 * height,
            "Rotate": 135.0 if wide else 30.0, "Brightness": 0.99 if wide else 0.9, "Color": 0.99 if wide else 0.9,
            "Contrast": 0.99 if wide else 0.9, "Sharpness": 0.99 if wide else 0.9}


def _sharpness(image: np.ndarray, factor: float) -> np.ndarray:
    """PIL's ImageEnhance.Sharpness: blend with the image smoothed by PIL's 3×3 SMOOTH kernel (factor 0:
    smoothed, 1: unchanged, 2: sharpened)."""
    import cv2

    kernel = np.array([[1, 1, 1], [1, 5, 1], [1, 1, 1]], np.float32) / 13
    smooth = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REPLICATE).reshape(image.shape)
    return np.clip(smooth.astype(np.float32) * (1 - factor) + image.astype(np.float32) * factor, 0, 255).astype(np.uint8)


@functools.cache
def _sharpness_transform():
    """The albumentations transform of `_sharpness` (defined on first use: albumentations loads lazily)."""
    A = albumentations()

    class Sharpness(A.ImageOnlyTransform):
        def __init__(self, factor: float = 1.0, p: float = 1.0):
            super().__init__(p=p)
            self.factor = factor

        def apply(self, img: np.ndarray, **params) -> np.ndarray:
            return _sharpness(img, self.factor)

        def get_transform_init_args_names(self) -> tuple[str, ...]:
            return ("factor",)

    return Sharpness


def op(name: str, value: float, spec: CompetitionSpec, p: float = 1.0):
    """One torchvision op at a fixed signed magnitude `value`, as an albumentations transform."""
    A = albumentations()
    import cv2

    if spec.colour_defines_class and name in COLOUR_OPS or name == "Identity":
        return A.NoOp(p=p)
    fill = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "p": p}
    if name in ("ShearX", "ShearY"):
        degrees = math.degrees(math.atan(value))
        return A.Affine(shear={"x": (degrees, degrees) if name == "ShearX" else (0, 0),
                               "y": (degrees, degrees) if name == "ShearY" else (0, 0)}, **fill)
    if name in ("TranslateX", "TranslateY"):
        pixels = int(value)
        return A.Affine(translate_px={"x": (pixels, pixels) if name == "TranslateX" else (0, 0),
                                      "y": (pixels, pixels) if name == "TranslateY" else (0, 0)}, **fill)
    if name == "Rotate":
        return A.Affine(rotate=(value, value), **fill)
    if name in ("Brightness", "Color", "Contrast"):
        factor = (1 + value, 1 + value)
        keep = (1.0, 1.0)
        return A.ColorJitter(brightness=factor if name == "Brightness" else keep,
                             contrast=factor if name == "Contrast" else keep,
                             saturation=factor if name == "Color" else keep, hue=(0.0, 0.0), p=p)
    if name == "Sharpness":
        return _sharpness_transform()(factor=1 + value, p=p)
    if name == "Posterize":
        return A.Posterize(num_bits=(int(value), int(value)), p=p)
    if name == "Solarize":
        return A.Solarize(threshold_range=(value / 255, value / 255), p=p)
    if name == "AutoContrast":
        return A.AutoContrast(p=p)
    if name == "Equalize":
        return A.Equalize(p=p)
    if name == "Invert":
        return A.InvertImg(p=p)
    raise ValueError(f"unknown augmentation op '{name}'")


def signed_op(name: str, fraction: float, spec: CompetitionSpec, p: float = 1.0, wide: bool = False):
    """`name` at `fraction` (0..1) of its range; a signed op gets a random sign, as torchvision draws it."""
    A = albumentations()

    maxima = _maxima(spec, wide)
    if name in maxima:
        value = fraction * maxima[name]
        return A.OneOf([op(name, value, spec), op(name, -value, spec)], p=p)
    if name == "Posterize":
        return op(name, 8 - round(fraction * (6 if wide else 4)), spec, p)
    if name == "Solarize":
        return op(name, 255 * (1 - fraction), spec, p)
    return op(name, 0.0, spec, p)


def autoaugment(config: AugmentConfig, spec: CompetitionSpec) -> list:
    A = albumentations()

    pairs = [A.Sequential([signed_op(name, (magnitude or 0) / 9, spec, p) for name, p, magnitude in pair], p=1.0)
             for pair in CIFAR10_POLICY]
    return [A.OneOf(pairs, p=1.0)]


def randaugment(config: AugmentConfig, spec: CompetitionSpec) -> list:
    A = albumentations()

    ops = config.ops if config.ops is not None else DEFAULT_OPS
    magnitude = config.magnitude if config.magnitude is not None else DEFAULT_MAGNITUDE
    chosen = [signed_op(name, magnitude / (MAGNITUDE_BINS - 1), spec) for name in RANDAUGMENT_OPS]
    return [A.SomeOf(chosen, n=ops, replace=True, p=1.0)]


def trivialaugment(config: AugmentConfig, spec: CompetitionSpec) -> list:
    """One op, its magnitude one of 31 bins drawn uniformly: each (op, bin) pair is one equally likely choice."""
    A = albumentations()

    choices = [signed_op(name, b / (MAGNITUDE_BINS - 1), spec, wide=True) for name in RANDAUGMENT_OPS
               for b in range(MAGNITUDE_BINS)]
    return [A.OneOf(choices, p=1.0)]
