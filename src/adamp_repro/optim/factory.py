"""Build an optimizer from one ``configs/optimizer/*.yaml`` file: a registry, not an if/elif chain.

A config names the optimizer (``name``) and writes every hyper-parameter explicitly (STYLE: pin every paper
hyper-parameter in the config). The factory passes those values unchanged to the class, adds nothing of its
own (unlike timm's factory, which sets ``wd_ratio=0.01, nesterov=True`` for AdamP), and rejects keys the
optimizer does not take, naming them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adamp_repro.optim.adamp import AdamP
from adamp_repro.optim.param_groups import param_groups
from adamp_repro.optim.sgdp import SGDP

__all__ = ["OPTIMIZERS", "OptimizerEntry", "build_optimizer"]

# Keys every config has; consumed by the factory rather than passed on.
FACTORY_KEYS = frozenset({"name", "weight_decay", "no_decay_bias_norm"})


@dataclass(frozen=True)
class OptimizerEntry:
    """One registry entry: the class and the constructor keywords a config may set for it."""

    cls: type[torch.optim.Optimizer]
    keys: frozenset[str]

    def allowed(self) -> list[str]:
        return sorted(self.keys | FACTORY_KEYS)


OPTIMIZERS: dict[str, OptimizerEntry] = {
    "sgd": OptimizerEntry(torch.optim.SGD, frozenset({"lr", "momentum", "dampening", "nesterov", "foreach"})),
    "sgdp": OptimizerEntry(
        SGDP,
        frozenset(
            {
                "lr",
                "momentum",
                "dampening",
                "nesterov",
                "eps",
                "delta",
                "wd_ratio",
                "foreach",
                "compile",
                "project_buffer",
            }
        ),
    ),
    "adam": OptimizerEntry(torch.optim.Adam, frozenset({"lr", "betas", "eps", "foreach"})),
    "adamw": OptimizerEntry(torch.optim.AdamW, frozenset({"lr", "betas", "eps", "foreach"})),
    "adamp": OptimizerEntry(
        AdamP, frozenset({"lr", "betas", "eps", "delta", "wd_ratio", "nesterov", "foreach", "compile"})
    ),
}


def build_optimizer(cfg: Mapping[str, Any], model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` describes, over ``model``'s trainable parameters.

    ``cfg`` is a mapping or DictConfig with the keys of a ``configs/optimizer/*.yaml`` file. ``weight_decay``
    (torch units) goes to the parameter groups built by ``param_groups(model, weight_decay,
    no_decay_bias_norm)``; every other key is passed to the class as written (``betas`` as a tuple).
    """
    settings = _plain_dict(cfg)
    name = settings.get("name")
    entry = OPTIMIZERS.get(name)
    if entry is None:
        raise ValueError(f"Unknown optimizer name {name!r}; expected one of {sorted(OPTIMIZERS)}")
    unknown = sorted(set(settings) - entry.keys - FACTORY_KEYS)
    if unknown:
        raise ValueError(f"Unknown key(s) {unknown} for optimizer {name!r}; allowed keys: {entry.allowed()}")
    if "lr" not in settings:
        raise ValueError(f"Optimizer config {name!r} has no 'lr'; every config must set it explicitly")
    weight_decay = float(settings.get("weight_decay", 0.0))
    kwargs = {key: value for key, value in settings.items() if key in entry.keys}
    if "betas" in kwargs:
        kwargs["betas"] = tuple(float(beta) for beta in kwargs["betas"])
    groups = param_groups(model, weight_decay, bool(settings.get("no_decay_bias_norm", False)))
    return entry.cls(groups, weight_decay=weight_decay, **kwargs)


def _plain_dict(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """A resolved plain dict from a DictConfig (interpolations such as the recipe's oc.select) or mapping."""
    try:
        from omegaconf import DictConfig, OmegaConf
    except ImportError:  # omegaconf comes with hydra; plain mappings still work without it
        return dict(cfg)
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)
    return dict(cfg)
