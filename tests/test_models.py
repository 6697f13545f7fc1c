"""Models: every model config builds and runs, the wrapper normalises inside, timm finds the CIFAR nets,
and the CIFAR ResNet and Madry Wide-ResNet have the structure their papers and code give them."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from adamp_repro.models import CifarResNet, MadryWideResNet, NormalizedModel, build_model, input_kind
from adamp_repro.models.wide_resnet_madry import PoolPadShortcut, PreActBlock

# The image models' configs (the language model's is tested in test_language_model.py).
MODEL_CONFIGS = sorted(
    p
    for p in (Path(__file__).resolve().parents[1] / "configs" / "model").glob("*.yaml")
    if input_kind(OmegaConf.load(p).name) == "images"
)
CIFAR_NETS = [
    "cifar_resnet18",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet56",
    "wide_resnet10_2_madry",
    "wide_resnet34_10_madry",
]
MEAN, STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)


@pytest.mark.parametrize("path", MODEL_CONFIGS, ids=lambda p: p.stem)
def test_every_model_config_builds_and_forwards(path):
    cfg = OmegaConf.load(path)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=10, mean=MEAN, std=STD).eval()
    assert isinstance(model, NormalizedModel) and model.net.num_classes == 10
    with torch.no_grad():
        logits = model(torch.rand(2, *cfg.input_size))
    assert logits.shape == (2, 10) and torch.isfinite(logits).all()


def test_wrapper_normalises_inside():
    torch.manual_seed(0)
    model = build_model({"name": "cifar_resnet20", "pretrained": False, "kwargs": {}}, 10, MEAN, STD).eval()
    x = torch.rand(4, 3, 32, 32)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    with torch.no_grad():
        assert torch.allclose(model(x), model.net((x - mean) / std), atol=1e-6)
    assert {"mean", "std"} <= set(model.state_dict())  # the normalisation travels with checkpoints
    raw = build_model({"name": "wide_resnet10_2_madry", "normalize": False}, 10, MEAN, STD).eval()
    with torch.no_grad():
        assert torch.equal(raw(x), raw.net(x))


def test_timm_registry_finds_the_cifar_nets():
    for name in CIFAR_NETS:
        assert timm.is_model(name), name
    assert set(timm.list_models("cifar_resnet*")) >= {"cifar_resnet18", "cifar_resnet20", "cifar_resnet56"}
    net = timm.create_model("cifar_resnet20", num_classes=100, drop_rate=0.1)
    assert isinstance(net, CifarResNet) and net.fc.out_features == 100


def test_unknown_name_and_bad_options_are_named():
    with pytest.raises(ValueError, match=r"model.name='resnet20' is not a timm model.*cifar_resnet20"):
        build_model({"name": "resnet20"}, 10, MEAN, STD)
    with pytest.raises(ValueError, match=r"unknown keys \['drop_rte'\]"):
        build_model({"name": "resnet18", "drop_rte": 0.1}, 10, MEAN, STD)
    with pytest.raises(ValueError, match="cifar_resnet20 has no pretrained weights"):
        build_model({"name": "cifar_resnet20", "pretrained": True}, 10, MEAN, STD)
    with pytest.raises(ValueError, match="6n\\+2.*got 21"):
        CifarResNet(depth=21)
    with pytest.raises(ValueError, match="6n\\+4.*got 30"):
        MadryWideResNet(depth=30)
    with pytest.raises(ValueError, match="shortcut must be one of.*'C'"):
        CifarResNet(shortcut="C")


def test_cifar_resnet_parameter_counts_and_shortcuts():
    # He et al. 2016, Table 6: 0.27M / 0.46M / 0.85M parameters; option A adds none.
    counts = {depth: sum(p.numel() for p in CifarResNet(depth=depth).parameters()) for depth in (20, 32, 56)}
    assert counts == {20: 269_722, 32: 464_154, 56: 853_018}
    assert not any(m.kernel_size == (1, 1) for m in CifarResNet(20).modules() if isinstance(m, nn.Conv2d))
    option_b = CifarResNet(20, shortcut="B")
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) for m in option_b.modules()) == 2
    block = CifarResNet(20).stages[1][0]  # 16 -> 32 channels, stride 2
    x = torch.randn(2, 16, 8, 8)
    assert torch.equal(block.shortcut(x), F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8)))


def test_cifar_resnet18_has_the_cifar_stem():
    net = timm.create_model("cifar_resnet18", num_classes=10)
    assert (
        net.conv1.kernel_size == (3, 3)
        and net.conv1.stride == (1, 1)
        and isinstance(net.maxpool, nn.Identity)
    )
    assert net.forward_features(torch.rand(1, 3, 32, 32)).shape == (1, 512, 4, 4)


def test_madry_wide_resnet_structure():
    net = MadryWideResNet(depth=10, widen_factor=2)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.kernel_size == (3, 3) for m in convs) and len(convs) == 1 + 2 * 3  # no 1x1 conv anywhere
    blocks = [m for m in net.modules() if isinstance(m, PreActBlock)]
    assert [type(b.shortcut) for b in blocks] == [
        PoolPadShortcut
    ] * 3  # each stage's first block changes width
    assert [c.out_channels for c in convs] == [16, 32, 32, 64, 64, 128, 128]
    # A width-changing block adds AvgPool(stride) + symmetric zero channel padding of relu(bn1(x)).
    block = blocks[1].eval()
    x = torch.randn(2, 32, 8, 8)
    activated = F.relu(block.bn1(x))
    residual = block.conv2(F.relu(block.bn2(block.conv1(activated))))
    shortcut = F.pad(F.avg_pool2d(activated, 2), (0, 0, 0, 0, 16, 16))
    with torch.no_grad():
        assert torch.allclose(block(x), residual + shortcut, atol=1e-6)
    wrn34 = [m for m in timm.create_model("wide_resnet34_10_madry").modules() if isinstance(m, PreActBlock)]
    assert len(wrn34) == 15 and wrn34[-1].conv2.out_channels == 640
