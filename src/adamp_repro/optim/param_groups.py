"""Parameter groups for the optimizers, and a per-parameter description used by snapshot tests and logs.

The official recipe decays every parameter (the README passes ``model.parameters()``), so
``no_decay_bias_norm`` is off by default. timm's factory instead exempts biases and ``ndim <= 1`` parameters,
which changes what wd_ratio can act on (NOTE: [projection scope] in ``projection.py``).
"""

from __future__ import annotations

from collections.abc import Collection
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
    model: nn.Module,
    weight_decay: float,
    no_decay_bias_norm: bool = False,
    *,
    scale_invariant: Collection[str] = (),
    scale_invariant_weight_decay: float | None = None,
) -> list[dict[str, Any]]:
    """Trainable parameters of ``model`` as optimizer param groups.

    ``no_decay_bias_norm=False``: one group with ``weight_decay``. ``True``: biases and ``ndim <= 1``
    parameters in a second group with weight_decay 0. ``scale_invariant_weight_decay`` set: the parameters named
    in ``scale_invariant`` (weights followed by a normalisation layer, as the trainer's diagnostics find them) get
    a group of their own with that decay, every other parameter keeps ``weight_decay``: a decay raised on the
    scale-invariant weights alone (the rotation-matched AdamW of the equilibrium table, docs/equilibrium.md).
    Frozen parameters (requires_grad False) are left out; empty groups are dropped.
    """
    if scale_invariant_weight_decay is not None and not scale_invariant:
        raise ValueError(
            "scale_invariant_weight_decay is set but no scale-invariant weight was named; the model has no weight "
            "followed by a normalisation layer, or the caller did not pass them"
        )
    named = set(scale_invariant) if scale_invariant_weight_decay is not None else set()
    unknown = named - {name for name, _ in model.named_parameters()}
    if unknown:
        raise ValueError(f"scale_invariant names parameters the model does not have: {sorted(unknown)[:3]}")
    decay, invariant, no_decay = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in named:
            invariant.append(p)
        elif no_decay_bias_norm and is_no_decay(name, p.dim()):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": float(weight_decay)},
        {"params": invariant, "weight_decay": float(scale_invariant_weight_decay or 0.0)},
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
