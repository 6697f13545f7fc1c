"""Checks on a composed config that fail before any work starts, in one line naming the bad value and the
allowed ones (``adamp_repro.errors.ConfigError``; the command line prints it as ``error: ...`` and exits 2).

Hydra already refuses unknown group options; ``schema`` owns the type and range of every key inside the groups
and which subtrees are open, ``combinations`` the impossible combinations of keys. The builders check their
own inputs again (the optimizer classes validate hyper-parameters, the data layer checks paths).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from adamp_repro.config.combinations import check_combinations
from adamp_repro.config.schema import SCALES, RunConfig, check_schema
from adamp_repro.errors import ConfigError

__all__ = ["SCALES", "RunConfig", "resolved", "validate_config"]


def resolved(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The config as plain data with every interpolation resolved; a broken interpolation is a ConfigError.
    The config itself is left untouched (the run folder's hash is taken from it)."""
    if not isinstance(cfg, DictConfig):
        return dict(cfg)
    try:
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        key = getattr(exc, "full_key", None)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"{key}: {first}" if key else first) from None


def validate_config(cfg: DictConfig | Mapping[str, Any]) -> None:
    """Raise ConfigError at the first value or combination the project refuses; return None when all pass."""
    data = resolved(cfg)
    check_schema(data)
    check_combinations(data)
