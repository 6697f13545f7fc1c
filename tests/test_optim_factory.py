"""The optimizer factory, the config files it reads, and the parameter-group helpers.

- every configs/optimizer/*.yaml composes (hydra.compose) and builds, and the class receives exactly the
  composed values; the recipe of an experiment reaches lr / weight_decay;
- unknown keys and names are rejected with the offending names;
- our class defaults equal the official adamp 0.3.0 signatures (not timm's factory defaults);
- which ResNet-18 parameters get wd > 0 and which can be projected, for both grouping rules (snapshot).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import adamp
import pytest
import timm
import timm.optim
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from torch import nn

from adamp_repro.optim import OPTIMIZERS, SGDP, AdamP, build_optimizer, describe_param_groups, param_groups

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
# The files of registered optimizers; files naming their own class (_target_ / timm: the variants, timm's
# optimizers) are covered by tests/test_optim_config.py.
NAMES = sorted(
    path.stem
    for path in (CONFIG_DIR / "optimizer").glob("*.yaml")
    if not {"_target_", "timm"} & set(OmegaConf.load(path))
)
ALL_KEYS = {
    "name",
    "lr",
    "weight_decay",
    "momentum",
    "dampening",
    "nesterov",
    "betas",
    "eps",
    "delta",
    "wd_ratio",
    "no_decay_bias_norm",
    "foreach",
}
APPLICABLE = {  # the keys each file must write: everything its optimizer takes
    "sgd": ALL_KEYS - {"betas", "eps", "delta", "wd_ratio"},
    "sgdp": ALL_KEYS - {"betas"},
    "adam": ALL_KEYS - {"momentum", "dampening", "nesterov", "delta", "wd_ratio"},
    "adamw": ALL_KEYS - {"momentum", "dampening", "nesterov", "delta", "wd_ratio"},
    "adamp": ALL_KEYS - {"momentum", "dampening"},
}


pytestmark = pytest.mark.usefixtures("one_thread")


def _compose_optimizer(name: str, overrides: list[str] | None = None) -> dict:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name=None, overrides=[f"+optimizer={name}", *(overrides or [])])
    return cfg.optimizer


def _tiny_model() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))


def test_registry_and_config_files_agree() -> None:
    assert NAMES == sorted(OPTIMIZERS) == ["adam", "adamp", "adamw", "sgd", "sgdp"]


@pytest.mark.parametrize("name", NAMES)
def test_config_writes_every_applicable_key(name) -> None:
    raw = OmegaConf.load(CONFIG_DIR / "optimizer" / f"{name}.yaml")
    assert set(raw.keys()) == APPLICABLE[name]
    assert raw.name == name


@pytest.mark.parametrize("name", NAMES)
def test_class_receives_the_composed_values(name) -> None:
    cfg = _compose_optimizer(name)
    values = OmegaConf.to_container(cfg, resolve=True)
    optimizer = build_optimizer(cfg, _tiny_model())
    assert type(optimizer) is OPTIMIZERS[name].cls
    for key, value in values.items():
        if key in {"name", "no_decay_bias_norm"}:
            continue
        expected = tuple(value) if key == "betas" else value
        assert optimizer.defaults[key] == expected, key
        assert all(group[key] == expected for group in optimizer.param_groups), key


def test_documented_defaults_of_the_config_files() -> None:
    """The values the brief fixes for each file (CIFAR defaults; experiments override lr / wd)."""
    expected = {
        "sgd": dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4),
        "sgdp": dict(
            lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4, delta=0.1, wd_ratio=0.1, eps=1e-8
        ),
        "adam": dict(lr=1e-3, weight_decay=0.0),
        "adamw": dict(lr=1e-3, weight_decay=5e-2, betas=[0.9, 0.999], eps=1e-8),
        "adamp": dict(
            lr=1e-3, weight_decay=5e-2, betas=[0.9, 0.999], delta=0.1, wd_ratio=0.1, nesterov=False
        ),
    }
    for name, values in expected.items():
        cfg = OmegaConf.to_container(_compose_optimizer(name), resolve=True)
        assert {key: cfg[key] for key in values} == values, name
        assert cfg["no_decay_bias_norm"] is False and cfg["foreach"] is None


def test_recipe_of_an_experiment_reaches_the_optimizer() -> None:
    cfg = _compose_optimizer("adamp", ["+recipe={adamp: {lr: 0.002, weight_decay: 0.01}}"])
    optimizer = build_optimizer(cfg, _tiny_model())
    assert optimizer.defaults["lr"] == 0.002 and optimizer.param_groups[0]["weight_decay"] == 0.01


def test_unknown_keys_and_names_are_rejected() -> None:
    cfg = {"name": "sgd", "lr": 0.1, "weight_decay": 0.0, "delta": 0.1, "wd_ratio": 0.1}
    with pytest.raises(ValueError, match=r"\['delta', 'wd_ratio'\].*'sgd'"):
        build_optimizer(cfg, _tiny_model())
    with pytest.raises(ValueError, match="'lamb'.*adamp"):
        build_optimizer({"name": "lamb", "lr": 1.0}, _tiny_model())
    with pytest.raises(ValueError, match="lr"):
        build_optimizer({"name": "adamp"}, _tiny_model())


@pytest.mark.parametrize(("ours", "official"), [(AdamP, adamp.AdamP), (SGDP, adamp.SGDP)])
def test_defaults_equal_the_official_signature(ours, official) -> None:
    theirs = inspect.signature(official.__init__).parameters
    mine = inspect.signature(ours.__init__).parameters
    for name, parameter in theirs.items():
        if name in {"self", "params"}:
            continue
        # SGDP's lr: both default to torch's ``required`` sentinel (the same object).
        assert mine[name].default is parameter.default or mine[name].default == parameter.default, name
        assert mine[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD, name
    # Positional order matches too, so SGDP(params, 0.1, 0.9) means the same in both.
    assert list(mine)[: len(theirs)] == list(theirs)


def test_defaults_are_not_timms_factory_defaults() -> None:
    """timm's registry builds AdamP with wd_ratio=0.01, nesterov=True; ours and our config keep official."""
    timm_optimizer = timm.optim.create_optimizer_v2(_tiny_model(), "adamp", lr=1e-3)
    assert timm_optimizer.defaults["wd_ratio"] == 0.01 and timm_optimizer.defaults["nesterov"] is True
    ours = build_optimizer(_compose_optimizer("adamp"), _tiny_model())
    assert ours.defaults["wd_ratio"] == 0.1 and ours.defaults["nesterov"] is False
    assert AdamP([nn.Parameter(torch.zeros(1))]).defaults["wd_ratio"] == 0.1


def test_param_groups_rule() -> None:
    model = _tiny_model()
    (single,) = param_groups(model, 0.05, no_decay_bias_norm=False)
    assert single["weight_decay"] == 0.05 and len(single["params"]) == len(list(model.parameters()))
    decay, no_decay = param_groups(model, 0.05, no_decay_bias_norm=True)
    assert [p.dim() for p in decay["params"]] == [4, 2]
    assert no_decay["weight_decay"] == 0.0 and all(p.dim() <= 1 for p in no_decay["params"])
    model[0].weight.requires_grad_(False)
    assert all(p is not model[0].weight for g in param_groups(model, 0.05, True) for p in g["params"])


RESNET18_WEIGHTS = [
    "conv1.weight",
    "layer1.0.conv1.weight",
    "layer1.0.conv2.weight",
    "layer1.1.conv1.weight",
    "layer1.1.conv2.weight",
    "layer2.0.conv1.weight",
    "layer2.0.conv2.weight",
    "layer2.0.downsample.0.weight",
    "layer2.1.conv1.weight",
    "layer2.1.conv2.weight",
    "layer3.0.conv1.weight",
    "layer3.0.conv2.weight",
    "layer3.0.downsample.0.weight",
    "layer3.1.conv1.weight",
    "layer3.1.conv2.weight",
    "layer4.0.conv1.weight",
    "layer4.0.conv2.weight",
    "layer4.0.downsample.0.weight",
    "layer4.1.conv1.weight",
    "layer4.1.conv2.weight",
    "fc.weight",
]


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return timm.create_model("resnet18", pretrained=False)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("no_decay_bias_norm", [False, True])
def test_resnet18_decay_and_projection_snapshot(resnet18, name, no_decay_bias_norm) -> None:
    """Which ResNet-18 parameters get wd > 0 and which the optimizer may project.

    62 parameters: 21 weights with ndim > 1 (20 convs + fc), 41 BN gains / BN biases / fc bias."""
    cfg = OmegaConf.to_container(_compose_optimizer(name), resolve=True)
    cfg.update(weight_decay=1e-4, no_decay_bias_norm=no_decay_bias_norm)
    described = describe_param_groups(resnet18, build_optimizer(cfg, resnet18))
    assert len(described) == 62
    decayed = sorted(n for n, d in described.items() if d["weight_decay"] > 0)
    projected = sorted(n for n, d in described.items() if d["projection_candidate"])
    expected_decayed = RESNET18_WEIGHTS if no_decay_bias_norm else list(described)
    assert decayed == sorted(expected_decayed)
    assert projected == (sorted(RESNET18_WEIGHTS) if name in {"sgdp", "adamp"} else [])
