"""One owner for the optimizers' hyper-parameters (``optim.hyperparams``): the classes, the factory and the config
check all read it, so a value is refused (or taken) the same way by each."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn
from torch.optim.optimizer import required

from adamp_repro.config import validate_config
from adamp_repro.errors import ConfigError
from adamp_repro.optim import SGDP, AdamP
from adamp_repro.optim.factory import FACTORY_KEYS, OPTIMIZERS
from adamp_repro.optim.hyperparams import HYPERPARAMETERS, Interval, defaults
from tests.conftest import compose_config

OURS = {"sgdp": SGDP, "adamp": AdamP}


def _outside(interval: Interval) -> list[float]:
    """Values just outside the interval, and the non-finite ones."""
    values = [interval.low - 1.0, math.nan, math.inf]
    if interval.low_open:
        values.append(interval.low)
    if interval.high is not None:
        values.append(interval.high + 1.0 if not interval.high_open else interval.high)
    return values


def _searchable(name: str) -> list:
    return [h for h in HYPERPARAMETERS[name].hypers if h.searchable]


def test_factory_takes_its_keywords_from_the_spec() -> None:
    assert set(OPTIMIZERS) == set(HYPERPARAMETERS)
    for name, entry in OPTIMIZERS.items():
        assert entry.keys | {"weight_decay"} == HYPERPARAMETERS[name].keys
        assert set(entry.allowed()) == HYPERPARAMETERS[name].keys | FACTORY_KEYS


@pytest.mark.parametrize("name", sorted(HYPERPARAMETERS))
def test_class_defaults_are_allowed_values(name: str) -> None:
    """Every default of the class's signature (read, not copied) lies in the spec's range."""
    spec = HYPERPARAMETERS[name]
    found = defaults(OPTIMIZERS[name].cls)
    for hyper in spec.hypers:
        if hyper.key == "lr" and found.get("lr") is required:
            continue  # SGDP, like torch's SGD of old, has no default lr
        assert hyper.key in found, f"{name}: {hyper.key} is not a keyword of {OPTIMIZERS[name].cls.__name__}"
        spec.check({hyper.key: found[hyper.key]})


@pytest.mark.parametrize("name", sorted(OURS))
def test_our_classes_and_the_config_check_refuse_the_same_values(name: str) -> None:
    """For every number the spec bounds: our class raises ValueError with the spec's label, and the composed config
    is refused with the spec's description of the range, before any work."""
    cls = OURS[name]
    base = {"lr": 0.1} if name == "sgdp" else {}
    composed = OmegaConf.to_container(compose_config([f"optimizer={name}"]), resolve=True)
    for hyper in _searchable(name):
        for value in _outside(hyper.allowed):
            with pytest.raises(ValueError, match=f"Invalid {hyper.label}"):
                cls([nn.Parameter(torch.randn(3, 2))], **{**base, hyper.key: value})
            if math.isfinite(value):
                with pytest.raises(ConfigError, match=f"optimizer.{hyper.key}=.*expected .*"):
                    data = copy.deepcopy(composed)
                    data["optimizer"][hyper.key] = value
                    validate_config(data)


@pytest.mark.parametrize("name", ["sgdp", "adamp"])
def test_wd_ratio_above_one_is_taken_by_the_class_and_by_the_config(name: str) -> None:
    """The official classes take any wd_ratio; so do ours and the config check (it once refused > 1)."""
    cfg = compose_config([f"optimizer={name}", "optimizer.wd_ratio=2.0"])
    validate_config(cfg)
    weight = nn.Parameter(torch.randn(4, 3))
    weight.grad = torch.randn(4, 3)
    OURS[name]([weight], lr=0.1, wd_ratio=2.0, weight_decay=1e-2).step()
    assert torch.isfinite(weight).all()


def test_eps_ranges_differ_per_optimizer_as_the_classes_do() -> None:
    """AdamP refuses eps = 0 (0/0 on a gradient entry that has always been 0), SGDP takes it: one key, two
    ranges, each the class's own."""
    validate_config(compose_config(["optimizer=sgdp", "optimizer.eps=0"]))
    SGDP([nn.Parameter(torch.randn(2, 2))], lr=0.1, eps=0.0)
    with pytest.raises(ConfigError, match=r"optimizer.eps=0: expected a finite number > 0.*\(adamp\)"):
        validate_config(compose_config(["optimizer=adamp", "optimizer.eps=0"]))
