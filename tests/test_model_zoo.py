"""The model zoo: every registered name builds at each competition's shape, runs forward and backward,
has the parameter counts of the course report, and each family learns on digits."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import models
from competition.spec import load_spec
from models.__main__ import count_parameters
from models.__main__ import main as models_main
from pipelines.__main__ import main as pipelines_main
from pipelines.stages.artifacts import read_manifest
from tests.test_train_submit import write_digits_variant

COMPETITIONS = ["digits", "fashion-mnist", "tiny-image-challenge"]
# Library models that only take a fixed input size: a recipe sets `input_size: 224` for them.
FIXED_SIZE = {"timm:vit_base_patch32_224": 224, "timm:swin_base_patch4_window7_224": 224, "tv:vit_b_32": 224, "tv:swin_b": 224}


@pytest.mark.parametrize("name, expected", [
    ("tv:vgg19", 139_979_940), ("tv:resnet101", 42_705_060), ("tv:vit_b_32", 87_532_132), ("tv:swin_b", 86_845_724),
])
def test_course_report_parameter_counts_at_100_classes_224px(name, expected):
    assert count_parameters(name, classes=100, channels=3, size=224) == expected


@pytest.mark.parametrize("name, expected", [("cnn2", 219_044), ("cnn3", 168_036), ("cnn5", 1_116_388)])
def test_cnn_n_are_the_cifar100_reports_nets(name, expected):
    """The report's CNN_n at 32×32×3 and 100 classes: 5×5 conv (padding 2) -> BN -> ReLU -> max-pool blocks of
    16, 32, 64, ... channels, then one Linear layer; the counts it tabulates."""
    assert count_parameters(name, classes=100, channels=3, size=32) == expected
    net = models.create(name, num_classes=100, in_chans=3, img_size=32)
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16 * 2 ** i for i in range(int(name[-1]))]
    assert all(c.kernel_size == (5, 5) and c.padding == (2, 2) for c in convs)
    assert sum(isinstance(m, torch.nn.Linear) for m in net.modules()) == 1


@pytest.mark.parametrize("name, expected", [("se_resnet18", 11_264_074), ("se_resnet34", 21_444_866),
                                            ("se_resnet50", 26_051_834)])
def test_se_resnets_at_three_depths(name, expected):
    """Pinned (10 classes, 32×32×3): SE in every block of ResNet-18/34 (basic) and -50 (bottleneck) layouts."""
    assert count_parameters(name, classes=10, channels=3, size=32) == expected


@pytest.mark.parametrize("activation, kind", [("relu", torch.nn.ReLU), ("leaky_relu", torch.nn.LeakyReLU),
                                              ("elu", torch.nn.ELU)])
def test_the_hand_written_nets_take_an_activation(activation, kind):
    for name in ("cnn3", "fastcnn", "deeper_cnn", "naive_cnn", "shallow_cnn", "lenet", "fastresnet", "se_resnet34"):
        net = models.create(name, num_classes=10, in_chans=1, img_size=28, activation=activation)
        used = {type(m) for path, m in net.named_modules()  # SE gates keep their own ReLU, as SE defines it
                if isinstance(m, (torch.nn.ReLU, torch.nn.LeakyReLU, torch.nn.ELU)) and ".gate." not in path}
        assert used == {kind}, (name, used)
        assert net(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(models.ModelError, match="activation 'gelu': not one of relu, leaky_relu, elu"):
        models.create("cnn3", num_classes=10, in_chans=1, img_size=28, activation="gelu")


def test_the_earlier_cnn_n_stay_reachable_and_keyed_apart():
    """style=plan builds the global-max-pool CNN_n shipped before; the report's nets have their own
    revision in the training outputs' keys, so no checkpoint of the old net is ever loaded into the new."""
    old = models.create("cnn3", num_classes=10, in_chans=1, img_size=8, style="plan", width=32)
    assert [m.out_channels for m in old.modules() if isinstance(m, torch.nn.Conv2d)] == [32, 64, 128]
    assert isinstance(old.head[0], torch.nn.AdaptiveMaxPool2d)
    assert models.revision_key("cnn3") == {"net_revision": 2} and models.revision_key("fastcnn") == {}


def test_lenet_is_the_classic_44426_parameter_net():
    assert count_parameters("lenet", classes=10, channels=1, size=28) == 44_426


@pytest.mark.slow
def test_models_list_prints_every_name_with_a_count(capsys):
    assert models_main(["list", "--classes", "10", "--channels", "1", "--size", "28"]) == 0
    out = capsys.readouterr().out
    for name in models.list_models():
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert line.split()[-1].replace(",", "").isdigit()
    assert "44,426" in out


def _input_size(name: str, size: int) -> int:
    if name in FIXED_SIZE:
        return FIXED_SIZE[name]
    # ImageNet nets down-sample 32x: give them at least 32 pixels, as `input_size: 32` in a recipe would.
    return max(size, 32) if ":" in name else size


@pytest.mark.slow
@pytest.mark.parametrize("comp", COMPETITIONS)
@pytest.mark.parametrize("name", models.list_models())
def test_every_model_builds_runs_forward_and_backward(name, comp):
    spec = load_spec(comp)
    size = _input_size(name, spec.image.height)
    if name in FIXED_SIZE and comp == "digits":
        pytest.skip(f"{name} sees 1x224x224 inputs for digits exactly as for fashion-mnist (tested there); "
                    "skipped to save ~5 s of CPU")
    model = models.create(name, num_classes=len(spec.classes), in_chans=spec.image.channels, img_size=size)
    model.train()
    x = torch.randn(2, spec.image.channels, size, size)
    output = model(x)
    logits = output.logits if hasattr(output, "logits") else output
    assert logits.shape == (2, len(spec.classes))
    loss = model.training_loss(output, torch.tensor([0, 1]), F.cross_entropy) if hasattr(model, "training_loss") \
        else F.cross_entropy(logits, torch.tensor([0, 1]))
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, len(spec.classes))


def test_multi_output_resnet_has_five_gated_heads():
    model = models.create("multi_output_resnet", num_classes=10, in_chans=1, img_size=28).train()
    output = model(torch.randn(2, 1, 28, 28))
    assert len(output.heads) == 5 and torch.allclose(output.gates.sum(), torch.tensor(1.0))


@pytest.mark.slow
def test_each_family_learns_digits_above_chance(pipeline_env, tmp_path):
    base = {"epochs": 4, "batch_size": 64, "augment": {"policy": "light", "shift": 1},
            "optimizer": {"name": "adamw", "lr": 0.003, "weight_decay": 0.01}, "schedule": {"name": "cosine", "warmup_epochs": 1}}
    families = {
        "small_cnns": {"model": "lenet"},
        "classic": {"model": "mobilenet_v1", "model_args": {"width_mult": 0.5}},
        "resnets": {"model": "multi_output_resnet", "model_args": {"width": 16}},
        "timm": {"model": "timm:resnet18", "input_size": 32},
        "torchvision": {"model": "tv:resnet18", "input_size": 32},
    }
    runs = [{**base, **run, "alias": family} for family, run in families.items()]
    spec_path = write_digits_variant(tmp_path, runs, folds=(0,))
    assert pipelines_main(["train", "--comp", str(spec_path)]) == 0
    for family in families:
        manifest = read_manifest(next((pipeline_env / "digits" / "train").glob(f"{family}-*/fold0")))
        assert manifest["val_accuracy"] > 0.3, (family, manifest["val_accuracy"])  # chance is 0.1
