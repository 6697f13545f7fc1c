"""Which code an optimizer ran, for a run record: ``describe_optimizer(optimizer)`` after the training.

The forms of one optimizer differ by a few ulp per step, which a short high-lr run turns into points of
top-1, so a record names them:

- SGDP / AdamP (``ProjectedOptimizer``): the forms counted as they stepped (``forms_used``: parameter-steps
  per form, ``fused_cpu`` / ``fast`` / ``reference`` / ``compiled``) and every fallback with its reason;
  ``source: "counted"``;
- torch's SGD, Adam and AdamW: the implementation torch picks for each param group, read from its ``fused``
  and ``foreach`` flags and, where both are unset, from torch's own default rule
  (``torch.optim.optimizer._default_to_fused_or_foreach``: the multi-tensor form where every parameter sits on
  a device with foreach kernels, i.e. never on CPU, else the for-loop); the forms are ``torch_fused``,
  ``torch_foreach``, ``torch_for_loop`` counted in parameters; ``source: "torch rules"``;
- any other class (``_target_``, timm): its class path alone; ``source: "class only"``.

The result is plain JSON (``unit`` says what the counts count).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.optimizer import _default_to_fused_or_foreach

from adamp_repro.optim.base import ProjectedOptimizer

__all__ = ["TORCH_FORMS", "describe_optimizer", "torch_form"]

TORCH_FUSED, TORCH_FOREACH, TORCH_FOR_LOOP = "torch_fused", "torch_foreach", "torch_for_loop"
TORCH_FORMS = (TORCH_FUSED, TORCH_FOREACH, TORCH_FOR_LOOP)
# torch's optimizers whose step follows the fused / foreach / for-loop rule read here (the factory's registry).
_TORCH_CLASSES = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)


def class_path(optimizer: torch.optim.Optimizer) -> str:
    cls = type(optimizer)
    return f"{cls.__module__}.{cls.__qualname__}"


def torch_form(optimizer: torch.optim.Optimizer, group: dict[str, Any]) -> str:
    """The implementation torch's SGD / Adam / AdamW runs for ``group`` (one of ``TORCH_FORMS``), by the rule
    of ``torch.optim.sgd.sgd`` / ``adam.adam``: ``fused`` first, then ``foreach``, and where both are None
    torch's default (``_default_to_fused_or_foreach``; Adam also keeps the for-loop for a tensor lr without
    ``capturable``)."""
    fused, foreach = group.get("fused"), group.get("foreach")
    if fused:
        return TORCH_FUSED
    if foreach is None and fused is None:
        params = [p for p in group["params"] if p is not None]
        _, foreach = _default_to_fused_or_foreach(params, bool(group.get("differentiable", False)), False)
        if (
            foreach
            and not isinstance(optimizer, torch.optim.SGD)
            and isinstance(group.get("lr"), torch.Tensor)
            and not group.get("capturable", False)
        ):
            foreach = False
    return TORCH_FOREACH if foreach else TORCH_FOR_LOOP


def describe_optimizer(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """``{"class", "source", "unit", "forms", "fallbacks"}`` of ``optimizer`` (module docstring): ``forms`` maps a
    form to its count (in ``unit``: ``parameter_steps`` or ``parameters``; empty where nothing is known),
    ``fallbacks`` lists ``ProjectedOptimizer.form_fallbacks``."""
    if isinstance(optimizer, ProjectedOptimizer):
        return {
            "class": class_path(optimizer),
            "source": "counted",
            "unit": "parameter_steps",
            "forms": dict(sorted(optimizer.forms_used().items())),
            "fallbacks": optimizer.form_fallbacks(),
        }
    if type(optimizer) in _TORCH_CLASSES:
        forms: dict[str, int] = {}
        for group in optimizer.param_groups:
            form = torch_form(optimizer, group)
            forms[form] = forms.get(form, 0) + len(group["params"])
        return {
            "class": class_path(optimizer),
            "source": "torch rules",
            "unit": "parameters",
            "forms": dict(sorted(forms.items())),
            "fallbacks": [],
        }
    return {
        "class": class_path(optimizer),
        "source": "class only",
        "unit": None,
        "forms": {},
        "fallbacks": [],
    }
