"""Model registry, augmentation policies, TTA views and the OOF-weighted ensemble."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import models
from competition.metrics import accuracy, kaggle_log_loss, metric
from competition.recipe import AugmentConfig
from competition.spec import load_spec
from models.weights import load_weights_file
from pipelines.recipe.albumentations_import import albumentations
from pipelines.recipe.augment import albumentations_policy, flip_and_shift
from pipelines.recipe.kernel_inference import shift_by
from pipelines.stages.ensemble import find_weights
from pipelines.stages.predict import VIEWS


@pytest.mark.parametrize("name", ["fastcnn", "cnn3", "cnn5", "speedrun", "timm:resnet18"])
@pytest.mark.parametrize("comp", ["digits", "fashion-mnist", "tiny-image-challenge"])
def test_registry_builds_models_for_each_competition_shape(name, comp):
    spec = load_spec(comp)
    model = models.create(name, num_classes=len(spec.classes), in_chans=spec.image.channels, img_size=spec.image.height)
    x = torch.randn(2, spec.image.channels, spec.image.height, spec.image.width)
    logits = model(x)
    assert logits.shape == (2, len(spec.classes))
    logits.sum().backward()


def test_unknown_model_suggests_close_names():
    with pytest.raises(models.ModelError, match="unknown model 'fastcn': did you mean fastcnn"):
        models.create("fastcn", 10, 1, 28)
    with pytest.raises(models.ModelError, match="unknown timm model 'resnet19'"):
        models.create("timm:resnet19", 10, 1, 28)


def test_pretrained_file_loads_and_refuses_mismatched_shapes(tmp_path):
    source = models.create("timm:resnet18", num_classes=10, in_chans=3, img_size=32)
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    # Another class count: everything but the classifier is loaded.
    target = models.create("timm:resnet18", num_classes=5, in_chans=3, img_size=32, pretrained_file=str(tmp_path / "resnet18.pth"))
    assert torch.equal(target.conv1.weight, source.conv1.weight)
    wrong = models.create("timm:resnet34", num_classes=10, in_chans=3, img_size=32)
    torch.save(wrong.state_dict(), tmp_path / "resnet34.pth")
    torch.save({"conv1.weight": torch.zeros(64, 1, 7, 7)}, tmp_path / "one-channel.pth")
    with pytest.raises(models.ModelError, match=r"tensor 'conv1.weight' has shape \(64, 1, 7, 7\) but the model needs \(64, 3, 7, 7\)"):
        load_weights_file(models.create("timm:resnet18", 10, 3, 32), str(tmp_path / "one-channel.pth"))
    with pytest.raises(models.ModelError, match="no such file"):
        load_weights_file(target, str(tmp_path / "missing.pth"))


def test_whitening_stem_whitens_the_patches_it_was_fitted_on():
    from models.speedrun import Whitening

    generator = torch.Generator().manual_seed(0)
    smooth = torch.nn.functional.avg_pool2d(torch.randn(512, 3, 18, 18, generator=generator), 3, 1)  # correlated pixels
    stem = Whitening(3, kernel=2, eps=1e-6)
    stem.fit(smooth)
    out = stem(smooth)[:, :12]  # the filters (the other half: their negations)
    assert torch.allclose(stem(smooth)[:, 12:], -out)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 12)
    covariance = torch.cov(flat.T)
    assert torch.allclose(covariance, torch.eye(12), atol=0.05)  # decorrelated, unit variance
    assert "whitening.weight" in models.create("speedrun", 10, 3, 16).state_dict()  # saved with the weights


def test_a_whitening_stem_sees_training_rows_only(monkeypatch):
    from types import SimpleNamespace

    from competition.recipe import ModelRun
    from models.speedrun import SpeedrunNet
    from pipelines.machine.device import Runtime
    from pipelines.stages.train import make_learner

    seen = []
    monkeypatch.setattr(SpeedrunNet, "fit_whitening", lambda self, images: seen.append(images))
    images = torch.zeros(100, 1, 8, 8, dtype=torch.uint8)
    images[50:] = 255  # the held-out rows are bright: any of them in the sample would show
    data = SimpleNamespace(images=images, labels=torch.zeros(100, dtype=torch.long), mean=[0.0], std=[1.0])
    spec = load_spec("digits")
    learner = make_learner(ModelRun(model="speedrun", precision="fp32"), spec, data, Runtime(torch.device("cpu")),
                           steps_per_epoch=10, init_seed=3, train_rows=torch.arange(50))
    assert len(seen) == 1 and len(seen[0]) == 50 and seen[0].max() == 0  # all 50 training rows, no held-out one
    assert learner.model.net.whitening is not None


def test_batchnorm_biases_learn_faster_and_frozen_scales_not_at_all():
    from competition.recipe import ModelRun
    from pipelines.recipe.optim import make_optimizer, make_scheduler

    net = models.create("speedrun", 10, 1, 28)
    run = ModelRun(model="speedrun", bn_bias_lr_scale=16, bn_freeze_weights=True, epochs=2)
    optimizer = make_optimizer(run, net)
    norms = [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    in_groups = [p for group in optimizer.param_groups for p in group["params"]]
    assert not any(n.weight is p for n in norms for p in in_groups) and not any(n.weight.requires_grad for n in norms)
    fast = optimizer.param_groups[-1]
    assert [id(p) for p in fast["params"]] == [id(n.bias) for n in norms] and fast["weight_decay"] == 0.0
    scheduler, _ = make_scheduler(run, optimizer, steps_per_epoch=10)
    for _ in range(5):  # to the one-cycle peak (pct_start 0.25 of 20 steps)
        optimizer.step()
        scheduler.step()
    assert fast["lr"] == pytest.approx(16 * optimizer.param_groups[0]["lr"])


def test_lookahead_follows_early_and_averages_late():
    from pipelines.recipe.optim import Lookahead

    net = torch.nn.Linear(2, 1, bias=False)
    lookahead = Lookahead(net, every=5, total_steps=100)
    start = net.weight.detach().clone()
    for _ in range(5):  # 5% of training: decay 0.77 x 0.05^3, nothing held back
        net.weight.data += 1.0
        lookahead.step(net)
    assert torch.allclose(net.weight, start + 5, atol=1e-3)
    lookahead.steps = 99  # the next step is the last sync: decay 0.95^5
    before = lookahead.slow[0].clone()
    net.weight.data += 10.0
    lookahead.step(net)
    assert torch.allclose(net.weight, before + 10 * (1 - 0.95 ** 5)) and torch.equal(net.weight, lookahead.slow[0])
    again = Lookahead(net, every=5, total_steps=1)
    again.load_state_dict(lookahead.state_dict())
    assert again.steps == 100 and again.total_steps == 100 and torch.equal(again.slow[0], lookahead.slow[0])


def test_light_policy_respects_the_competitions_flips():
    images = torch.zeros(256, 1, 8, 8, dtype=torch.uint8)
    images[:, :, :, :4] = 255  # left half bright: a horizontal flip moves it right
    generator = torch.Generator().manual_seed(0)
    unflipped = flip_and_shift(images, generator, hflip=False, vflip=False, shift=0)
    assert torch.equal(unflipped, images)
    flipped = flip_and_shift(images, torch.Generator().manual_seed(0), hflip=True, vflip=False, shift=0)
    share_flipped = (flipped[:, 0, 0, 7] == 255).float().mean().item()
    assert 0.35 < share_flipped < 0.65
    shifted = flip_and_shift(images, torch.Generator().manual_seed(1), hflip=False, vflip=False, shift=2)
    assert shifted.dtype == torch.uint8 and shifted.shape == images.shape
    assert not torch.equal(shifted, images)
    again = flip_and_shift(images, torch.Generator().manual_seed(1), hflip=False, vflip=False, shift=2)
    assert torch.equal(shifted, again)


def test_alternating_flips_show_every_image_both_ways_in_two_epochs():
    from pipelines.recipe.augment import BatchAugmenter

    spec = load_spec("fashion-mnist")
    images = torch.zeros(256, 1, 8, 8, dtype=torch.uint8)
    images[:, :, :, :4] = 255  # left half bright: a horizontal flip moves it right
    augmenter = BatchAugmenter(AugmentConfig(policy="light", shift=0, flip_order="alternating"), spec, images, None)
    rows = [torch.arange(0, 128), torch.arange(128, 256)]
    flipped = {epoch: torch.cat(list(augmenter.batches(rows, seed=epoch, epoch=epoch)))[:, 0, 0, 7] == 255
               for epoch in (1, 2, 3)}
    assert 0.35 < flipped[1].float().mean().item() < 0.65  # epoch 1: a coin per image
    assert torch.equal(flipped[2], ~flipped[1]) and torch.equal(flipped[3], flipped[1])  # then the other way, alternately
    # The same rows in another order (another epoch's batches) get the same flips: they follow the row, not the batch.
    shuffled = torch.cat(list(augmenter.batches([torch.arange(255, -1, -1)], seed=9, epoch=1)))[:, 0, 0, 7] == 255
    assert torch.equal(shuffled, flipped[1].flip(0))


@pytest.mark.parametrize("comp, config, message", [
    ("digits", AugmentConfig(policy="light", flip_order="alternating"), "flips: {hflip: false}"),
    ("fashion-mnist", AugmentConfig(policy="medium", flip_order="alternating"), "policy 'medium' runs per sample"),
])
def test_alternating_flips_where_they_cannot_apply_are_refused(comp, config, message):
    from pipelines.recipe.augment import alternation_problem

    assert message in alternation_problem(config, load_spec(comp))
    assert alternation_problem(config.model_copy(update={"flip_order": None}), load_spec(comp)) is None


@pytest.mark.parametrize("policy", ["light", "medium", "strong"])
@pytest.mark.parametrize("comp", ["digits", "tiny-image-challenge"])
def test_albumentations_policies_build_for_each_competition(policy, comp):
    spec = load_spec(comp)
    transform = albumentations_policy(AugmentConfig(policy=policy), spec, seed=0)
    names = [type(t).__name__ for t in transform.transforms]
    assert ("HorizontalFlip" in names) == spec.flips.hflip
    image = np.random.default_rng(0).integers(0, 255, (spec.image.height, spec.image.width, spec.image.channels), dtype=np.uint8)
    out = transform(image=image)["image"]
    assert out.shape[:2] == image.shape[:2] and out.dtype == np.uint8
    assert albumentations_policy(AugmentConfig(policy="none"), spec) is None


def test_tta_views_and_shift():
    x = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    assert torch.equal(VIEWS["hflip"][0](x), x.flip(3))
    moved = shift_by(x, 1, 0)
    assert moved[0, 0, 0].tolist() == [0, 0, 1, 2]
    assert len(VIEWS["shift"]) == 4


def test_hill_climbing_prefers_the_better_model_and_never_loses_on_oof():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 2000)
    def noisy(strength):
        logits = rng.normal(0, 1, (2000, 5))
        logits[np.arange(2000), labels] += strength
        return np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    good, weak, other = noisy(2.0), noisy(0.5), noisy(1.8)
    weights = find_weights("hill_climb", [good, weak, other], labels, metric("accuracy"))
    assert weights[0] >= weights[1] and weights[1] <= 0.2 and abs(weights.sum() - 1) < 1e-9
    blend = sum(w * p for w, p in zip(weights, [good, weak, other]))
    assert accuracy(blend, labels) >= max(accuracy(p, labels) for p in (good, weak, other))
    assert find_weights("best", [good, weak], labels, metric("accuracy")).tolist() == [1.0, 0.0]
    # A lower-is-better metric is minimised: the blend's log loss is no worse than the best model's.
    weights = find_weights("hill_climb", [good, weak, other], labels, metric("log_loss"))
    blend = sum(w * p for w, p in zip(weights, [good, weak, other]))
    assert kaggle_log_loss(blend, labels) <= min(kaggle_log_loss(p, labels) for p in (good, weak, other))
    assert find_weights("best", [weak, good], labels, metric("log_loss")).tolist() == [0.0, 1.0]


def test_own_models_load_a_local_file_but_refuse_published_weights(tmp_path):
    from competition.recipe import ModelRun
    from pipelines.machine.device import Runtime
    from pipelines.recipe.classifier import build_model

    spec = load_spec("digits")
    source = models.create("cnn3", num_classes=10, in_chans=1, img_size=8)
    torch.save(source.state_dict(), tmp_path / "cnn3.pth")
    run = ModelRun(model="cnn3", pretrained_file=str(tmp_path / "cnn3.pth"))
    loaded = build_model(run, spec, mean=[0.0], std=[1.0], runtime=Runtime(torch.device("cpu")))
    assert torch.equal(loaded.net.features[0].weight, source.features[0].weight)
    with pytest.raises(models.ModelError, match="model 'cnn3' has no published pretrained weights; set `pretrained_file:`"):
        build_model(ModelRun(model="cnn3", pretrained=True), spec, mean=[0.0], std=[1.0], runtime=Runtime(torch.device("cpu")))


def test_focal_loss_is_cross_entropy_at_gamma_zero_and_down_weights_easy_examples():
    from competition.recipe import LossConfig
    from pipelines.recipe.losses import LOSSES

    logits = torch.tensor([[4.0, 0.0, 0.0], [0.2, 0.1, 0.0]])
    targets = torch.tensor([0, 2])
    plain = LOSSES["cross_entropy"](logits, targets, 0.1, LossConfig())
    assert torch.allclose(LOSSES["focal"](logits, targets, 0.1, LossConfig(name="focal", gamma=0.0)), plain)
    per_row = [LOSSES["focal"](logits[i:i + 1], targets[i:i + 1], 0.0, LossConfig(name="focal", gamma=2.0)) /
               LOSSES["cross_entropy"](logits[i:i + 1], targets[i:i + 1], 0.0, LossConfig()) for i in range(2)]
    assert per_row[0] < 0.01 < 0.3 < per_row[1]  # the easy row all but vanishes, the hard one keeps its weight
    soft = torch.tensor([[0.9, 0.05, 0.05], [0.0, 0.5, 0.5]])
    assert torch.allclose(LOSSES["focal"](logits, soft, 0.0, LossConfig(name="focal", gamma=0.0)),
                          LOSSES["cross_entropy"](logits, soft, 0.0, LossConfig()))


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["autoaugment", "randaugment", "trivialaugment"])
def test_searched_policies_are_seeded_and_leave_colour_alone_where_it_defines_the_class(policy):
    from competition.recipe import AugmentConfig
    from pipelines.recipe.augment import albumentations_policy
    from pipelines.recipe.auto_augment import COLOUR_OPS, op

    rng = np.random.default_rng(0)
    for comp in ("fashion-mnist", "tiny-image-challenge"):
        spec = load_spec(comp)
        h, w, c = spec.image.height, spec.image.width, spec.image.channels
        ramp = np.linspace(40, 200, h * w).reshape(h, w, 1) + rng.normal(0, 20, (h, w, c))  # a picture, not flat noise
        image = np.clip(ramp, 0, 255).astype(np.uint8)
        config = AugmentConfig(policy=policy, shift=0)
        transforms = [albumentations_policy(config, spec, seed=7) for _ in range(2)]
        runs = [[transform(image=image)["image"] for _ in range(30)] for transform in transforms]
        assert all(np.array_equal(a, b) for a, b in zip(*runs))  # the seed fixes every draw
        # Most draws change the image, differently; fewer where colour defines the class (its ops are identities).
        assert len({a.tobytes() for a in runs[0]}) > (4 if spec.colour_defines_class else 10)
    tiny = load_spec("tiny-image-challenge")
    assert tiny.colour_defines_class
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for name in COLOUR_OPS:
        assert type(op(name, 100.0 if name == "Solarize" else 0.5, tiny)).__name__ == "NoOp"
        changed = op(name, 100.0 if name == "Solarize" else 4 if name == "Posterize" else 0.5, load_spec("fashion-mnist"))
        assert type(changed).__name__ != "NoOp"
    # Geometry stays: a rotation moves pixels on the colour-defined competition too.
    A = albumentations()
    rotated = A.Compose([op("Rotate", 20.0, tiny)], seed=0)(image=image)["image"]
    assert not np.array_equal(rotated, image)


@pytest.mark.slow
def test_activation_maximisation_finds_inputs_the_unit_prefers_and_grad_cam_maps_each_image():
    from competition.recipe import ModelRun
    from pipelines.machine.device import Runtime
    from pipelines.recipe.classifier import build_model
    from pipelines.report.insight import grad_cam, maximise, optimise

    spec = load_spec("fashion-mnist")
    torch.manual_seed(0)
    model = build_model(ModelRun(model="cnn3", precision="fp32"), spec, [72.9], [90.0], Runtime(torch.device("cpu"))).eval()
    for what, units in (("classes", 10), ("filters", 16)):
        _, before, after = optimise(model, what, spec)
        assert len(after) == units and (after > before).all(), (what, before, after)  # every unit rose
        pictures = maximise(model, what, spec)
        assert pictures.shape == (units, 28, 28, 1) and pictures.dtype == np.uint8 and pictures.std() > 10
    noise = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 1, 28, 28))).to(torch.uint8)
    maps = grad_cam(build_model(ModelRun(model="cnn3", precision="fp32"), spec, [72.9], [90.0],
                                Runtime(torch.device("cpu"))).eval(), noise, np.array([0, 1, 2, 3]))
    assert maps.shape == (4, 28, 28) and 0 <= maps.min() and maps.max() <= 1
