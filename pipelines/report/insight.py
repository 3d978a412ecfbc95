"""insight: what a trained fold model looks at and what excites it, computed once per fold and cached.

For one fold of a model it writes <data>/<comp>/insight/<run>-<key>/fold<k>/ (keyed by the fold's
predictions' digest, so a retrained fold gets new maps), with manifest.json and:
    cam_rows.npy      the out-of-fold rows shown: up to IMAGES_PER_CLASS of each of the first MAX_CLASSES classes
    cam.npy           their Grad-CAM heat maps (0..1, image-sized) for their true class, by the maintained
                      `grad-cam` library (pytorch_grad_cam) on the last convolution of the network
    filters.npy       activation maximisation of the first convolution's first FILTERS filters (the patch
                      each one sees at the centre: its kernel and a pixel around it)
    classes.npy       activation maximisation of the first MAX_CLASSES class logits
Activation maximisation starts from faint noise and follows the gradient of the filter's response at the
image's centre (or the class's logit) with respect to the input, with a little L2 and total-variation penalty so that
the picture stays readable rather than adversarial noise; class pictures are also optimised under small
random shifts and a light blur every tenth step. Images are uint8 in the competition's shape.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn as nn

from competition.paths import competition_root
from competition.spec import CompetitionSpec
from pipelines.machine.cores import CoreShare
from pipelines.machine.device import Runtime
from pipelines.stages.artifacts import atomic_output, build_once, output_key
from pipelines.stages.device_data import TrainingData
from pipelines.stages.predict import FoldOutput, load_fold_model

MAX_CLASSES = 10
IMAGES_PER_CLASS = 2
FILTERS = 16
STEPS = 80
L2_WEIGHT, TV_WEIGHT = 1e-3, 1e-2
JITTER = 2  # pixels: class pictures are optimised under random shifts of up to this much


def fold_insight(spec: CompetitionSpec, run_name: str, trained: FoldOutput, data: TrainingData, runtime: Runtime):
    """The cached insight folder of one trained fold (built on first use)."""
    config = {"insight": 4, "classes": MAX_CLASSES, "per_class": IMAGES_PER_CLASS, "filters": FILTERS, "steps": STEPS}
    final = competition_root(spec.name) / "insight" / f"{run_name}-{output_key(config, {'train': trained.digest})}" \
        / trained.folder.name
    return build_once(final, f"the insight maps of {run_name} {trained.folder.name}",
                      lambda: _build(spec, trained, data, runtime, final, config), lambda: final)


def last_conv(net: nn.Module) -> nn.Conv2d | None:
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def first_conv(net: nn.Module) -> nn.Conv2d | None:
    return next((m for m in net.modules() if isinstance(m, nn.Conv2d)), None)


def cam_rows(labels: np.ndarray, oof_index: np.ndarray, classes: int) -> np.ndarray:
    """Up to IMAGES_PER_CLASS held-out rows of each of the first `classes` classes, in row order."""
    chosen = [oof_index[labels[oof_index] == c][:IMAGES_PER_CLASS] for c in range(min(classes, MAX_CLASSES))]
    return np.concatenate(chosen) if chosen else np.array([], dtype=np.int64)


def _build(spec, trained: FoldOutput, data: TrainingData, runtime: Runtime, final, config: dict):
    torch.manual_seed(spec.folds.seed)
    model = load_fold_model(trained.folder, spec, runtime, precision="fp32")
    model.eval()
    rows = cam_rows(data.labels_host(), np.load(trained.folder / "oof_index.npy"), len(spec.classes))
    with atomic_output(final, "insight", config, {"train": trained.digest}) as staging:
        np.save(staging / "cam_rows.npy", rows)
        np.save(staging / "cam.npy", grad_cam(model, data.images[torch.from_numpy(rows).to(runtime.device)],
                                              data.labels_host()[rows]).astype(np.float16))
        np.save(staging / "filters.npy", receptive_field(maximise(model, "filters", spec, runtime.cores), first_conv(model.net)))
        np.save(staging / "classes.npy", maximise(model, "classes", spec, runtime.cores))
    return final


def grad_cam(model: nn.Module, images: torch.Tensor, targets: np.ndarray) -> np.ndarray:
    """N×H×W heat maps in 0..1 for each image's target class (zeros when the net has no convolution)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = last_conv(model.net)
    if layer is None or len(images) == 0:
        return np.zeros((len(images), *images.shape[2:]), dtype=np.float32)
    with GradCAM(model=model, target_layers=[layer]) as cam:
        return cam(input_tensor=images.float(), targets=[ClassifierOutputTarget(int(t)) for t in targets])


def optimise(model: nn.Module, what: str, spec: CompetitionSpec,
             share: CoreShare | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Inputs (in the net's normalised units, N×C×H×W) that maximise the first-layer filters' responses at
    the centre ("filters") or the class logits ("classes"), one unit per input; with each unit's score
    before and after."""
    shape = (spec.image.channels, spec.image.height, spec.image.width)
    if what == "filters":
        layer = first_conv(model.net)
        if layer is None:
            return torch.zeros(0, *shape), torch.zeros(0), torch.zeros(0)
        units = min(FILTERS, layer.out_channels)
        captured: list[torch.Tensor] = []
        hook = layer.register_forward_hook(lambda module, args, output: captured.append(output))
    else:
        units, hook = min(MAX_CLASSES, len(spec.classes)), None
    for parameter in model.parameters():  # only the input is optimised
        parameter.requires_grad_(False)
    mean, std = model.mean.detach(), model.std.detach()
    z = (0.1 * torch.randn(units, *shape, device=mean.device)).requires_grad_(True)
    optimizer = torch.optim.Adam([z], lr=0.05)
    scores = []
    try:
        for step in range(STEPS + 1):
            if share is not None:
                share.follow()
            if hook is not None:
                captured.clear()
            seen = z
            if hook is None and step < STEPS:
                # Classes: a random shift of a pixel or two each step, and a light blur every tenth, so that
                # what grows is a shape the class responds to anywhere, not one pixel pattern.
                dy, dx = (int(v) for v in torch.randint(-JITTER, JITTER + 1, (2,)))
                seen = torch.roll(z, shifts=(dy, dx), dims=(2, 3))
                if step % 10 == 9:
                    with torch.no_grad():
                        z.mul_(0.5).add_(0.5 * torch.nn.functional.avg_pool2d(z, 3, 1, 1, count_include_pad=False))
            logits = model(mean + std * seen)  # the classifier normalises again: `seen` is what the net sees
            # A filter's score is its response at the image's centre, so the picture shows the patch it
            # prefers (over the whole image, a constant picture wins); a class's is its logit.
            if hook is not None:
                centre = captured[0][:, :, captured[0].shape[2] // 2, captured[0].shape[3] // 2]
                score = centre[torch.arange(units), torch.arange(units)]
            else:
                score = logits[torch.arange(units), torch.arange(units)]
            scores.append(score.detach())
            tv = (z[..., 1:, :] - z[..., :-1, :]).abs().mean() + (z[..., :, 1:] - z[..., :, :-1]).abs().mean()
            loss = -score.sum() + L2_WEIGHT * z.pow(2).sum() + TV_WEIGHT * units * tv
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    finally:
        if hook is not None:
            hook.remove()
    return z.detach(), scores[0], scores[-1]


def receptive_field(pictures: np.ndarray, layer: nn.Conv2d | None, margin: int = 1) -> np.ndarray:
    """The centre patch a first-layer filter sees (its kernel, and `margin` pixels around it): outside it
    the maximised picture is only the penalties' flat grey."""
    if layer is None or not len(pictures):
        return pictures
    height, width = pictures.shape[1:3]
    half_h, half_w = layer.kernel_size[0] // 2 + margin, layer.kernel_size[1] // 2 + margin
    top, left = max(height // 2 - half_h, 0), max(width // 2 - half_w, 0)
    return pictures[:, top:height // 2 + half_h + 1, left:width // 2 + half_w + 1]


def maximise(model: nn.Module, what: str, spec: CompetitionSpec, share: CoreShare | None = None) -> np.ndarray:
    """`optimise`'s inputs as uint8 N×H×W×C pictures, each stretched to the full 0..255 range."""
    pictures = optimise(model, what, spec, share)[0]
    if not len(pictures):
        return np.zeros((0, spec.image.height, spec.image.width, spec.image.channels), dtype=np.uint8)
    low = pictures.amin(dim=(1, 2, 3), keepdim=True)
    high = pictures.amax(dim=(1, 2, 3), keepdim=True)
    scaled = (pictures - low) / (high - low).clamp_min(1e-8) * 255
    return scaled.round().byte().permute(0, 2, 3, 1).cpu().numpy()
