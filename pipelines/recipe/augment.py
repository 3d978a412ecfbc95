"""Augmentation policies, by the names a recipe gives them (`augment.policy`): none, light, medium, strong,
geometric (strong without colour changes), and the searched policies autoaugment, randaugment and
trivialaugment (pipelines/recipe/auto_augment.py, registered from there).

Each policy is one registered function returning its albumentations ops, built for the competition:
flips only where the spec says they keep the class, colour jitter only on RGB. A policy may also have a
batched tensor implementation with the same distribution (`light`: random flips with p=0.5 and integer
shifts drawn uniformly from [-shift, shift] with zero fill): it runs on whole batches on the training
device, ~50× faster than per-sample albumentations on 2 CPU cores. The others run albumentations per
sample in a background thread, overlapping the model's work. Adding a policy touches one file.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from competition.recipe import AugmentConfig
from competition.spec import CompetitionSpec
from pipelines.recipe import auto_augment
from pipelines.recipe.albumentations_import import albumentations
from pipelines.recipe.registry import Registry

BatchedPolicy = Callable[[torch.Tensor, torch.Generator, AugmentConfig, CompetitionSpec], torch.Tensor]


@dataclass(frozen=True)
class AugmentPolicy:
    albumentations_ops: Callable[[AugmentConfig, CompetitionSpec], list]  # the per-sample definition
    batched: BatchedPolicy | None  # the same distribution on a whole N×C×H×W batch, where there is one
    changes_colour: bool  # refused where the spec says colour defines the class


POLICIES: Registry[AugmentPolicy] = Registry("augmentation policy")


def register_policy(name: str, batched: BatchedPolicy | None = None, changes_colour: bool = False):
    """Decorator over a policy's albumentations ops; `batched` is its whole-batch twin, if any."""
    def register(ops: Callable[[AugmentConfig, CompetitionSpec], list]):
        POLICIES[name] = AugmentPolicy(ops, batched, changes_colour)
        return ops
    return register


def flip_and_shift(images: torch.Tensor, generator: torch.Generator, hflip: bool, vflip: bool, shift: int) -> torch.Tensor:
    """Random flips (p=0.5), then integer shifts with zero fill, on a whole N×C×H×W batch."""
    n, _, height, width = images.shape
    out = images.clone()
    device = images.device
    for allowed, dim in ((hflip, 3), (vflip, 2)):
        if allowed:
            mask = (torch.rand(n, generator=generator) < 0.5).to(device)
            out[mask] = out[mask].flip(dim)
    if shift:
        padded = torch.nn.functional.pad(out, (shift, shift, shift, shift))
        dx = torch.randint(-shift, shift + 1, (n,), generator=generator)
        dy = torch.randint(-shift, shift + 1, (n,), generator=generator)
        # One slice per distinct offset: at most (2*shift+1)^2 cheap copies per batch.
        for ox in range(-shift, shift + 1):
            for oy in range(-shift, shift + 1):
                chosen = ((dx == ox) & (dy == oy)).nonzero().flatten().to(device)
                if len(chosen):
                    out[chosen] = padded[chosen, :, shift + oy: shift + oy + height, shift + ox: shift + ox + width]
    return out


@register_policy("none", batched=lambda images, generator, config, spec: images)
def no_augmentation(config: AugmentConfig, spec: CompetitionSpec) -> list:
    return []


@register_policy("light", batched=lambda images, generator, config, spec: flip_and_shift(
    images, generator, spec.flips.hflip, spec.flips.vflip, config.shift))
def flips_and_shift(config: AugmentConfig, spec: CompetitionSpec) -> list:
    A = albumentations()
    import cv2

    ops = []
    if spec.flips.hflip:
        ops.append(A.HorizontalFlip(p=0.5))
    if spec.flips.vflip:
        ops.append(A.VerticalFlip(p=0.5))
    if config.shift:
        height, width = spec.image.height, spec.image.width
        ops += [A.PadIfNeeded(height + 2 * config.shift, width + 2 * config.shift, border_mode=cv2.BORDER_CONSTANT, fill=0),
                A.RandomCrop(height, width)]
    return ops


@register_policy("medium", changes_colour=True)
def light_and_colour(config: AugmentConfig, spec: CompetitionSpec) -> list:
    A = albumentations()

    # Colour jitter as in the course reports; hue and saturation only mean something on RGB.
    if spec.image.channels == 3:
        colour = A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03, p=0.8)
    else:
        colour = A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.8)
    return flips_and_shift(config, spec) + [colour]


def geometry_ops() -> list:
    A = albumentations()
    import cv2

    return [A.Affine(scale=(0.9, 1.1), rotate=(-12, 12), shear=(-6, 6), border_mode=cv2.BORDER_CONSTANT, fill=0, p=0.7),
            # random erasing
            A.CoarseDropout(num_holes_range=(1, 1), hole_height_range=(0.2, 0.4), hole_width_range=(0.2, 0.4), fill=0,
                            p=0.5)]


@register_policy("strong", changes_colour=True)
def medium_and_geometry(config: AugmentConfig, spec: CompetitionSpec) -> list:
    return light_and_colour(config, spec) + geometry_ops()


@register_policy("geometric")
def light_and_geometry(config: AugmentConfig, spec: CompetitionSpec) -> list:
    """`strong` without its colour jitter: for competitions whose classes colour defines."""
    return flips_and_shift(config, spec) + geometry_ops()


# The searched policies (auto_augment.py), after the light flips and shift as they are used on CIFAR.
# They keep colour where it defines the class: there their colour ops become the identity.
@register_policy("autoaugment")
def light_and_autoaugment(config: AugmentConfig, spec: CompetitionSpec) -> list:
    return flips_and_shift(config, spec) + auto_augment.autoaugment(config, spec)


@register_policy("randaugment")
def light_and_randaugment(config: AugmentConfig, spec: CompetitionSpec) -> list:
    return flips_and_shift(config, spec) + auto_augment.randaugment(config, spec)


@register_policy("trivialaugment")
def light_and_trivialaugment(config: AugmentConfig, spec: CompetitionSpec) -> list:
    return flips_and_shift(config, spec) + auto_augment.trivialaugment(config, spec)


def colour_problem(spec: CompetitionSpec, policy: str) -> str | None:
    """Why `policy` cannot be used on this competition (it changes colour, and colour defines the class),
    or None."""
    if spec.colour_defines_class and policy in POLICIES and POLICIES[policy].changes_colour:
        keeps = ", ".join(name for name in POLICIES if not POLICIES[name].changes_colour)
        return (f"policy '{policy}' changes colour, and colour defines this competition's classes "
                f"(colour_defines_class: true); use one that keeps it: {keeps}")
    return None


def albumentations_policy(config: AugmentConfig, spec: CompetitionSpec, seed: int | None = None):
    """The policy as an albumentations Compose over uint8 H×W×C images (None for `none`)."""
    A = albumentations()

    if config.policy == "none":
        return None
    return A.Compose(POLICIES[config.policy].albumentations_ops(config, spec), seed=seed)


def alternation_problem(config: AugmentConfig, spec: CompetitionSpec) -> str | None:
    """Why `flip_order: alternating` cannot apply here, or None."""
    if config.flip_order != "alternating":
        return None
    if not spec.flips.hflip:
        return "alternating flips need horizontal flips, and this competition's `flips: {hflip: false}` forbids them"
    if POLICIES[config.policy].batched is None:
        batched = ", ".join(name for name in POLICIES if POLICIES[name].batched is not None)
        return f"alternating flips are drawn on whole batches; policy '{config.policy}' runs per sample: use {batched}"
    return None


class BatchAugmenter:
    """Yields augmented uint8 N×C×H×W batches for a list of index batches, deterministically from `seed`.

    With `flip_order: alternating` the horizontal flips are not drawn per batch: each training row is
    flipped at random (seeded by the competition's seed) in epoch 1, and the other way every epoch
    after, so two consecutive epochs show every image both ways (the speedrun line of work: 8% fewer
    epochs to a fixed CIFAR-10 accuracy; README, "Accuracy per CPU-minute")."""

    def __init__(self, config: AugmentConfig, spec: CompetitionSpec, images_nchw: torch.Tensor, images_nhwc: np.ndarray):
        self.config = config
        self.spec = spec
        self.images = images_nchw  # on the training device
        self.images_nhwc = images_nhwc  # on the host, for albumentations
        self.batched = POLICIES[config.policy].batched
        self.first_flips = None
        if config.flip_order == "alternating" and self.batched is not None and spec.flips.hflip:
            self.first_flips = torch.rand(len(images_nchw), generator=torch.Generator().manual_seed(spec.folds.seed)) < 0.5
            self.spec = spec.model_copy(update={"flips": spec.flips.model_copy(update={"hflip": False})})

    def batches(self, index_batches: list[torch.Tensor], seed: int, epoch: int = 1) -> Iterator[torch.Tensor]:
        if self.batched is not None:
            generator = torch.Generator().manual_seed(seed)
            for idx in index_batches:
                images = self.images[idx.to(self.images.device)]
                if self.first_flips is not None:
                    flip = (self.first_flips[idx] ^ (epoch % 2 == 0)).to(images.device)
                    images = torch.where(flip[:, None, None, None], images.flip(3), images)
                yield self.batched(images, generator, self.config, self.spec)
        else:
            yield from self._albumentations_batches(index_batches, seed)

    def _albumentations_batches(self, index_batches: list[torch.Tensor], seed: int) -> Iterator[torch.Tensor]:
        transform = albumentations_policy(self.config, self.spec, seed=seed)
        ready: queue.Queue = queue.Queue(maxsize=3)
        stop = threading.Event()

        def produce():
            try:
                for idx in index_batches:
                    if stop.is_set():
                        return
                    batch = np.stack([transform(image=self.images_nhwc[i])["image"] for i in idx.tolist()])
                    if batch.ndim == 3:
                        batch = batch[..., None]
                    ready.put(torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous())
                ready.put(None)
            except BaseException as exc:  # hand the error to the consumer instead of hanging it
                ready.put(exc)

        worker = threading.Thread(target=produce, name="augment", daemon=True)
        worker.start()
        try:
            while (item := ready.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item.to(self.images.device, non_blocking=True)
        finally:
            stop.set()
            while not ready.empty():
                ready.get_nowait()
            worker.join(timeout=5)

