"""Build an optimizer from one ``configs/optimizer/*.yaml`` file: a registry, not an if/elif chain.

A config names the optimizer (``name``) and writes every hyper-parameter explicitly (STYLE: pin every paper
hyper-parameter in the config). The factory passes those values unchanged to the class, adds nothing of its
own (unlike timm's factory, which sets ``wd_ratio=0.01, nesterov=True`` for AdamP), and rejects keys the
optimizer does not take, naming them.

Three forms of config:

- a registered ``name`` (``OPTIMIZERS``: sgd, sgdp, adam, adamw, adamp): the registry gives the class and
  the keys it takes;
- ``_target_: package.module.Class``: any ``torch.optim.Optimizer`` subclass that takes the parameters first;
  every key but the suite's own (``SUITE_KEYS``) is a keyword argument of the class (a variant of SGDP/AdamP,
  a user's own optimizer);
- ``timm: <name>``: ``timm.optim.create_optimizer_v2`` with that optimizer name (``lion``, ``lamb``, ``adan``,
  ...); the other keys are its keyword arguments. timm's factory fills in its own defaults for keys the file
  leaves out (``momentum=0.9`` where the optimizer has one, per-optimizer defaults), so write every key out.

In every form ``weight_decay`` goes to the parameter groups (``param_groups``) and ``foreach: null`` is passed
only to a class that takes it. A bad class, name or keyword is a ``ConfigError`` (one line: the value and what
is allowed), raised by ``check_optimizer_config`` before any work.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from adamp_repro.errors import ConfigError, plain_config, resolve_target
from adamp_repro.optim.adamp import AdamP
from adamp_repro.optim.hyperparams import HYPERPARAMETERS
from adamp_repro.optim.param_groups import param_groups
from adamp_repro.optim.sgdp import SGDP

__all__ = ["OPTIMIZERS", "OptimizerEntry", "build_optimizer", "check_optimizer_config", "is_external"]

# Keys every config has; consumed by the factory rather than passed on.
FACTORY_KEYS = frozenset({"name", "weight_decay", "no_decay_bias_norm", "scale_invariant_weight_decay"})
# Keys that name the class of a config outside the registry (one of them, never both).
SOURCE_KEYS = ("_target_", "timm")
# The suite's own keys of such a config: read by the factory, never passed to the class as written.
SUITE_KEYS = FACTORY_KEYS | set(SOURCE_KEYS)


@dataclass(frozen=True)
class OptimizerEntry:
    """One registry entry: the class and the constructor keywords a config may set for it."""

    cls: type[torch.optim.Optimizer]
    keys: frozenset[str]

    def allowed(self) -> list[str]:
        return sorted(self.keys | FACTORY_KEYS)


# The classes of the registered names; the keywords each takes are owned by ``optim.hyperparams``.
_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "sgd": torch.optim.SGD,
    "sgdp": SGDP,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "adamp": AdamP,
}
OPTIMIZERS: dict[str, OptimizerEntry] = {
    name: OptimizerEntry(cls, HYPERPARAMETERS[name].keys - FACTORY_KEYS) for name, cls in _CLASSES.items()
}


def build_optimizer(
    cfg: Mapping[str, Any], model: nn.Module, scale_invariant: Collection[str] = ()
) -> torch.optim.Optimizer:
    """The optimizer ``cfg`` describes, over ``model``'s trainable parameters.

    ``cfg`` is a mapping or DictConfig with the keys of a ``configs/optimizer/*.yaml`` file. ``weight_decay``
    (torch units) goes to the parameter groups built by ``param_groups(model, weight_decay,
    no_decay_bias_norm)``; ``scale_invariant_weight_decay``, when set, replaces it on the parameters named in
    ``scale_invariant`` (the caller finds them: the trainer passes the weights followed by a normalisation layer);
    every other key is passed to the class as written (``betas`` as a tuple). A config with ``_target_`` or
    ``timm`` builds the class it names (module docstring); ``check_optimizer_config`` checks it first.
    """
    settings = plain_config(cfg, "optimizer")
    if is_external(settings):
        make, kwargs = _external(settings)
        return make(_groups(settings, model, scale_invariant), kwargs)
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
    return entry.cls(_groups(settings, model, scale_invariant), weight_decay=weight_decay, **kwargs)


def _groups(settings: Mapping[str, Any], model: nn.Module, scale_invariant: Collection[str]) -> list[dict]:
    invariant_decay = settings.get("scale_invariant_weight_decay")
    return param_groups(
        model,
        float(settings.get("weight_decay", 0.0)),
        bool(settings.get("no_decay_bias_norm", False)),
        scale_invariant=scale_invariant,
        scale_invariant_weight_decay=None if invariant_decay is None else float(invariant_decay),
    )


def is_external(settings: Mapping[str, Any]) -> bool:
    """Whether the config names its own class (``_target_`` or ``timm``) rather than a registered name."""
    return any(key in settings for key in SOURCE_KEYS)


def check_optimizer_config(cfg: Mapping[str, Any]) -> None:
    """Raise ConfigError unless an external config (``_target_`` / ``timm``) names a class that can be built
    with its keys; a registered name is checked by ``config.combinations`` against the registry."""
    settings = plain_config(cfg, "optimizer")
    if not is_external(settings):
        return
    make, kwargs = _external(settings)
    # The class's own checks of its values (a beta out of range, three betas for two), and one step as the
    # trainer takes it (no closure), on a dummy parameter.
    weight = nn.Parameter(torch.ones(2, 2))
    weight.grad = torch.full_like(weight, 0.5)
    try:
        make([{"params": [weight], "weight_decay": float(settings.get("weight_decay", 0.0))}], kwargs).step()
    except (ValueError, TypeError, KeyError, AssertionError, RuntimeError) as exc:
        source = " ".join(f"{key}={settings[key]!r}" for key in SOURCE_KEYS if key in settings)
        raise ConfigError(f"optimizer ({source}): the class refuses these values: {exc}") from None


def _external(settings: Mapping[str, Any]) -> tuple[Callable[[list, dict], torch.optim.Optimizer], dict]:
    """The constructor of an external config and the keyword arguments it gets, checked before any work."""
    given = [key for key in SOURCE_KEYS if key in settings]
    if len(given) > 1:
        raise ConfigError(
            f"optimizer._target_={settings['_target_']!r} and optimizer.timm={settings['timm']!r}: expected one "
            "of them (_target_: a torch.optim.Optimizer class; timm: a timm optimizer name)"
        )
    if "lr" not in settings:
        raise ConfigError(
            f"optimizer.lr: missing; every optimizer config sets it explicitly ({given[0]} form)"
        )
    kwargs = {key: value for key, value in settings.items() if key not in SUITE_KEYS}
    if isinstance(kwargs.get("betas"), (list, tuple)):
        kwargs["betas"] = tuple(float(beta) for beta in kwargs["betas"])
    weight_decay = float(settings.get("weight_decay", 0.0))
    if given[0] == "_target_":
        cls = _import_optimizer(settings["_target_"])
        kwargs = _checked_kwargs(cls, kwargs, weight_decay, f"_target_={settings['_target_']!r}")
        return (lambda groups, kw: cls(groups, **kw)), kwargs
    import timm.optim

    opt = settings["timm"]
    names = timm.optim.list_optimizers()
    if not isinstance(opt, str) or opt.lower() not in names:
        close = difflib.get_close_matches(str(opt).lower(), names, n=3, cutoff=0.6)
        hint = f"; close matches: {close}" if close else f"; known: {', '.join(names)}"
        raise ConfigError(
            f"optimizer.timm={opt!r}: not a timm optimizer name (timm.optim.list_optimizers()){hint}"
        )
    info = timm.optim.get_optimizer_info(opt)
    cls = info.opt_class
    if isinstance(cls, str):  # apex / bitsandbytes classes are imported by name, on CUDA only
        cls = None
    if cls is not None:
        kwargs = _checked_kwargs(cls, kwargs, weight_decay, f"timm={opt!r}")
    kwargs.pop("weight_decay", None)
    foreach = kwargs.pop("foreach", None)

    def make(groups: list, kw: dict) -> torch.optim.Optimizer:
        return timm.optim.create_optimizer_v2(groups, opt, weight_decay=weight_decay, foreach=foreach, **kw)

    return make, kwargs


def _import_optimizer(target: Any) -> type[torch.optim.Optimizer]:
    """The class a ``_target_`` names, or a ConfigError saying what is wrong with it."""
    expected = "expected a torch.optim.Optimizer subclass as package.module.Class, e.g. torch.optim.RMSprop"
    cls = resolve_target(target, "optimizer._target_", expected)
    module_name, _, attribute = target.rpartition(".")
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        what = f"a {type(cls).__name__}, not an optimizer class"
        raise ConfigError(
            f"optimizer._target_={target!r}: {attribute!r} in {module_name} is {what}; {expected}"
        )
    return cls


def _checked_kwargs(cls: type, kwargs: dict[str, Any], weight_decay: float, source: str) -> dict[str, Any]:
    """``kwargs`` with ``weight_decay`` added where the class takes it and ``foreach: null`` dropped where it
    does not; any other keyword the constructor does not take is refused, naming those it does."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, params
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return {**kwargs, "weight_decay": weight_decay}
    accepted = [p.name for p in parameters if p.kind is not inspect.Parameter.VAR_POSITIONAL]
    out = dict(kwargs)
    if "foreach" not in accepted and out.get("foreach", 0) is None:
        del out["foreach"]
    if "weight_decay" in accepted:
        out["weight_decay"] = weight_decay
    elif weight_decay != 0.0:
        raise ConfigError(
            f"optimizer.weight_decay={weight_decay!r}: {cls.__name__} ({source}) takes no weight_decay; set 0"
        )
    for key in out:
        if key not in accepted:
            valid = sorted(set(accepted) | FACTORY_KEYS)
            close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
            hint = f"did you mean optimizer.{close[0]}?" if close else f"valid keys: {', '.join(valid)}"
            raise ConfigError(
                f"optimizer.{key}={out[key]!r}: not a keyword of {cls.__name__} ({source}); {hint}"
            )
    return out
