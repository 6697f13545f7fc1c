"""``build_model``: a model config -> a timm network wrapped so that it takes [0, 1] pixels.

The mean/std normalisation lives inside the returned module (RobustBench convention), so attacks,
evaluation and data loading all work in [0, 1] pixel space and the normalisation travels with the
checkpoint (its mean/std are buffers).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from typing import Any

import timm
import torch
from torch import nn

# Importing these modules registers the CIFAR networks with timm's registry.
from adamp_repro.errors import ConfigError, plain_config
from adamp_repro.models import cifar_resnet, transformer_lm, wide_resnet_madry  # noqa: F401

# Keys build_model reads; any other key in a model config is an error, so typos do not pass silently.
MODEL_KEYS = ("name", "pretrained", "kwargs", "normalize", "input_size")


class NormalizedModel(nn.Module):
    """``net((x - mean) / std)`` for x in [0, 1]. x: (B, C, H, W); mean, std: C floats.

    Attributes:
        net: the wrapped network (a timm model); optimizers see its parameters as ``net.*``.
        mean, std: buffers of shape (1, C, 1, 1).
    """

    def __init__(self, net: nn.Module, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(
                f"mean and std need one entry per channel and std > 0, got mean={mean}, std={std}"
            )
        self.net = net
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)

    def extra_repr(self) -> str:
        return f"mean={tuple(self.mean.flatten().tolist())}, std={tuple(self.std.flatten().tolist())}"


def close_model_names(name: str, limit: int = 10) -> list[str]:
    """Registered timm names that look like ``name``: wildcard matches of its parts, then difflib."""
    pieces = [p for p in name.replace("-", "_").split("_") if p]
    found: list[str] = []
    for pattern in [f"*{name}*", *(f"*{p}*" for p in pieces if len(p) > 2)]:
        for match in timm.list_models(pattern):
            if match not in found:
                found.append(match)
    ranked = difflib.get_close_matches(name, found or timm.list_models(), n=limit, cutoff=0.0)
    return ranked[:limit]


def check_model_name(name: Any) -> None:
    """Refuse a ``model.name`` that is no registered timm model (the suite's CIFAR networks included), naming the
    close matches. Raises ConfigError (a ValueError)."""
    if not isinstance(name, str) or not timm.is_model(name):
        raise ConfigError(
            f"model.name={name!r} is not a timm model; close matches: {close_model_names(str(name))}"
        )


def input_kind(name: str) -> str:
    """What a registered network takes: ``"tokens"`` (token ids, the language models of
    ``models.transformer_lm``) or ``"images"`` (every other timm network)."""
    return "tokens" if name in transformer_lm.TOKEN_MODELS else "images"


def check_model_kwargs(kwargs: Any) -> None:
    """Refuse ``model.kwargs.num_classes``: the data set sets it. Raises ConfigError (a ValueError)."""
    if "num_classes" in kwargs:
        raise ConfigError(
            f"model.kwargs.num_classes={kwargs['num_classes']!r} is set by the data set "
            "(dataset.num_classes); remove it"
        )


def build_model(model_cfg: Any, num_classes: int, mean: Sequence[float], std: Sequence[float]) -> nn.Module:
    """Create ``timm.create_model(model_cfg.name, ...)`` and wrap it in :class:`NormalizedModel`; a network that
    takes token ids (``input_kind``) is returned unwrapped (it has no pixels to normalise; ``num_classes`` is
    its vocabulary size).

    Args:
        model_cfg: DictConfig or mapping with keys ``name`` (any timm name, including our CIFAR nets),
            ``pretrained`` (bool), ``kwargs`` (extra create_model arguments, e.g. ``drop_rate``,
            ``img_size``), optionally ``normalize`` (default true; false feeds the net [0, 1] pixels,
            as the adversarial-training codebase does) and ``input_size`` (C, H, W the net is built
            for; informational, read by tests and benchmarks).
        num_classes: classifier outputs.
        mean, std: per-channel statistics of the data set (``data.mean``, ``data.std``).

    Raises:
        ValueError: unknown timm name (with close matches), unknown config key, or bad kwargs.
    """
    cfg = plain_config(model_cfg, "model")
    unknown = sorted(set(cfg) - set(MODEL_KEYS))
    if unknown:
        raise ValueError(
            f"model config {cfg.get('name')!r} has unknown keys {unknown}; allowed: {MODEL_KEYS}"
        )
    name = cfg.get("name")
    check_model_name(name)
    kwargs = dict(cfg.get("kwargs") or {})
    check_model_kwargs(kwargs)
    net = timm.create_model(
        name, pretrained=bool(cfg.get("pretrained", False)), num_classes=num_classes, **kwargs
    )
    if input_kind(name) == "tokens":
        return net
    if not cfg.get("normalize", True):
        channels = len(mean)
        mean, std = (0.0,) * channels, (1.0,) * channels
    return NormalizedModel(net, tuple(mean), tuple(std))
