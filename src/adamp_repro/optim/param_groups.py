"""Parameter groups for the optimizers, and a per-parameter description used by snapshot tests and logs.

The official recipe decays every parameter (the README passes ``model.parameters()``), so
``no_decay_bias_norm`` is off by default. timm's factory instead exempts biases and ``ndim <= 1`` parameters,
which changes what wd_ratio can act on (NOTE: [projection scope] in ``projection.py``).
"""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.optim import Optimizer

from adamp_repro.optim.base import ProjectedOptimizer
from adamp_repro.optim.projection import is_projection_candidate

__all__ = ["describe_param_groups", "is_no_decay", "param_groups"]


def is_no_decay(name: str, ndim: int) -> bool:
    """The timm rule: biases and parameters with ndim <= 1 (norm gains, scalars) are not decayed."""
    return ndim <= 1 or name.endswith(".bias")


def param_groups(
    model: nn.Module, weight_decay: float, no_decay_bias_norm: bool = False
) -> list[dict[str, Any]]:
    """Trainable parameters of ``model`` as optimizer param groups.

    ``no_decay_bias_norm=False``: one group with ``weight_decay``. ``True``: biases and ``ndim <= 1``
    parameters in a second group with weight_decay 0. Frozen parameters (requires_grad False) are left out.
    Empty groups are dropped, so the result always has one or two groups.
    """
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if no_decay_bias_norm and is_no_decay(name, p.dim()) else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return [group for group in groups if group["params"]]


def describe_param_groups(model: nn.Module, optimizer: Optimizer) -> dict[str, dict[str, Any]]:
    """Per parameter name: its group index, weight_decay, and whether the optimizer may project it.

    ``projection_candidate`` is True only for SGDP/AdamP with the projection on and weights with ndim > 1
    (the test can then pass and apply wd_ratio); parameters the optimizer does not hold are omitted.
    """
    group_of = {id(p): index for index, group in enumerate(optimizer.param_groups) for p in group["params"]}
    projects = isinstance(optimizer, ProjectedOptimizer)
    described = {}
    for name, p in model.named_parameters():
        index = group_of.get(id(p))
        if index is None:
            continue
        group = optimizer.param_groups[index]
        described[name] = {
            "group": index,
            "shape": tuple(p.shape),
            "weight_decay": float(group.get("weight_decay", 0.0)),
            "projection_candidate": projects and group.get("projection", True) and is_projection_candidate(p),
        }
    return described
