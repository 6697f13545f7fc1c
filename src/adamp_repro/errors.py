"""Errors meant for the person at the keyboard: the command line prints them as one line and exits with 2.

``UsageError`` is a value or a state the user can fix (a bad config value, a run folder held by another
process, a resume refused after a code change); anything else is a bug or a fault and keeps its traceback.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


class UsageError(Exception):
    """A problem the user can fix; its message names the bad value and what is allowed."""

    exit_status = 2


class ConfigError(UsageError, ValueError):
    """A config value that is refused before any work starts."""


def resolve_target(target: Any, key: str, expected: str) -> Any:
    """The object ``package.module.Name`` names (a config's ``_target_``), or a ConfigError on ``key`` saying
    what is wrong and what is ``expected``; the caller checks what kind of object it is."""
    if not isinstance(target, str) or "." not in target:
        raise ConfigError(f"{key}={target!r}: {expected}")
    module_name, _, attribute = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"{key}={target!r}: cannot import {module_name!r} ({exc}); {expected}") from None
    found = getattr(module, attribute, None)
    if found is None:
        raise ConfigError(f"{key}={target!r}: {attribute!r} in {module_name} is not found; {expected}")
    return found


def plain_config(cfg: Any, what: str) -> dict[str, Any]:
    """A config section as a plain dict with its interpolations resolved: an OmegaConf DictConfig (a composed
    config) or any mapping; anything else is a ConfigError naming ``what``. omegaconf is imported only for a
    DictConfig, so the optimizers and models stay usable where Hydra is not installed."""
    if isinstance(cfg, Mapping) and not _is_dictconfig(cfg):
        return dict(cfg)
    if _is_dictconfig(cfg):
        from omegaconf import OmegaConf

        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    raise ConfigError(f"Invalid {what}: {cfg!r}; expected a mapping (a config section)")


def _is_dictconfig(cfg: Any) -> bool:
    return any(c.__name__ == "DictConfig" and c.__module__.startswith("omegaconf") for c in type(cfg).__mro__)
