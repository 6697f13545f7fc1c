"""Which task a config builds: the suite's tasks by ``task.name``, a user's by ``task._target_``.

- ``name: classification`` / ``adversarial`` / ``language_model``: the builders in ``TASKS`` (``configs/task/*.yaml``).
- ``_target_: package.module.Name``: that class (or builder function), called with every other key of the task
  config as a keyword argument except ``name``, which stays the suite's (identity, run folder, tables). The
  object must have every member of the ``Task`` protocol (``train.tasks.base``); a missing one is refused.

A bad value is a ``ConfigError`` naming it, raised before the run folder exists.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

from adamp_repro.errors import ConfigError, plain_config, resolve_target
from adamp_repro.train.tasks.adversarial import build_adversarial_task
from adamp_repro.train.tasks.base import Task
from adamp_repro.train.tasks.classification import build_classification_task
from adamp_repro.train.tasks.language_model import build_language_model_task

TASKS: dict[str, Callable[[Mapping[str, Any]], Task]] = {
    "classification": build_classification_task,
    "adversarial": build_adversarial_task,
    "language_model": build_language_model_task,
}
TARGET_KEY = "_target_"
_MEMBERS = (
    "name",
    "primary_metric",
    "train_metric_names",
    "denominators",
    "set_epoch",
    "train_step",
    "train_metrics",
    "evaluate",
    "finalize",
    "describe",
)


def build_task(cfg: Mapping[str, Any]) -> Task:
    """Build the task a ``task`` config names (module docstring)."""
    if TARGET_KEY in cfg:
        return _build_target(cfg)
    name = cfg.get("name")
    if name not in TASKS:
        raise ConfigError(
            f"Unknown task.name: {name!r}; expected one of {sorted(TASKS)} or a task._target_ (package.module.Class)"
        )
    return TASKS[name](cfg)


def _build_target(cfg: Mapping[str, Any]) -> Task:
    settings = plain_config(cfg, "task")
    target = settings.pop(TARGET_KEY)
    settings.pop("name", None)
    factory = _import_target(target)
    try:
        inspect.signature(factory).bind(**settings)
    except TypeError as exc:
        raise ConfigError(
            f"task._target_={target!r} refuses the task keys {sorted(settings)}: {exc}"
        ) from None
    except ValueError:  # no signature to read (a builtin): let the call say
        pass
    try:
        task = factory(**settings)
    except ValueError as exc:
        raise ConfigError(f"task._target_={target!r}: {exc}") from None
    missing = [member for member in _MEMBERS if not hasattr(task, member)]
    if missing:
        raise ConfigError(
            f"task._target_={target!r} builds a {type(task).__name__} without {missing}; a task needs every "
            "member of adamp_repro.train.tasks.Task (subclass adamp_repro.train.tasks.TaskBase for the defaults)"
        )
    return task


def _import_target(target: Any) -> Callable[..., Any]:
    expected = "expected package.module.Name of a task class or builder function"
    factory = resolve_target(target, "task._target_", expected)
    module_name, _, attribute = target.rpartition(".")
    if not callable(factory):
        what = f"a {type(factory).__name__}, not callable"
        raise ConfigError(f"task._target_={target!r}: {attribute!r} in {module_name} is {what}; {expected}")
    return factory
