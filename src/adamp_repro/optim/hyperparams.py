"""The hyper-parameters of the suite's registered optimizers: their names and allowed values, in one place.

One owner for each fact about an optimizer's hyper-parameters:

- **names**: ``HYPERPARAMETERS[name]`` lists the constructor keywords a config may set for a registered optimizer
  (``optim.factory.OPTIMIZERS`` takes its keys from here; the config check refuses any other key);
- **allowed values**: each keyword's ``Interval`` / ``Flag`` / ``Pair``. SGDP and AdamP check every param group
  with it (``OptimizerSpec.check``), and the config check refuses a value outside it before any work, in one line
  (``config.combinations``); a tuning study's search space is checked against it too;
- **defaults**: the class's own signature (``defaults``), read, never copied: SGDP's and AdamP's are the official
  package's (adamp 0.3.0), torch's are torch's. The configs write every value out with the source of the value
  in a comment (STYLE: pin every paper hyper-parameter), and tests compare them with ``defaults``.

The ranges follow what the class accepts. For SGDP and AdamP that is the official package's behaviour minus the
values that only produce NaN weights (a NaN or infinite number, a negative decay, AdamP's eps = 0: see their
docstrings). For torch's own classes (sgd, adam, adamw), torch checks its values again; the ranges here are
torch's, except momentum < 1 (momentum 1 never forgets a gradient; SGDP divides by 1 - momentum).
"""

from __future__ import annotations

import inspect
import math
import numbers
from array import array
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "COMMON",
    "HYPERPARAMETERS",
    "Flag",
    "Hyper",
    "Interval",
    "OptimizerSpec",
    "Pair",
    "check_flag",
    "check_range",
    "defaults",
    "spec",
]


def check_range(
    name: str,
    value: Any,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = True,
) -> None:
    """Raise ValueError naming ``value`` and what is allowed unless it is a finite real number in range.

    NaN and +-inf are refused even where the interval is unbounded: the official classes take them and then
    produce NaN weights. A bool is refused (``lr=True`` is a typo, not 1.0); a one-element real tensor is
    taken, as torch and the official classes take a tensor lr.
    """
    if isinstance(value, Tensor):
        if value.numel() != 1 or value.is_complex() or value.dtype == torch.bool:
            raise ValueError(
                f"Invalid {name}: {value!r}; expected a real number or a one-element real tensor"
            )
        number = float(value)
    elif isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {name}: {value!r}; expected a real number")
    else:
        number = float(value)
    too_low = number <= low if low_open else number < low
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high or not math.isfinite(number):
        raise ValueError(
            f"Invalid {name}: {value!r}; expected {_interval_text(low, high, low_open, high_open)}"
        )


def _interval_text(low: float, high: float | None, low_open: bool, high_open: bool) -> str:
    if high is None:
        return f"a finite number {'>' if low_open else '>='} {low:g}"
    left, right = "(" if low_open else "[", ")" if high_open else "]"
    return f"a value in {left}{low:g}, {high:g}{right}"


def check_flag(name: str, value: Any, allowed: tuple[Any, ...] = (True, False)) -> None:
    """Raise ValueError unless ``value`` is one of ``allowed`` (a string such as "no" would be truthy)."""
    if not any(value is option or (isinstance(value, (bool, int)) and value == option) for option in allowed):
        names = ", ".join(repr(option) for option in allowed)
        raise ValueError(f"Invalid {name}: {value!r}; expected one of {names}")


@dataclass(frozen=True)
class Interval:
    """A finite real number between ``low`` and ``high`` (None: unbounded above). ``nonzero_f32``, when set,
    is why a value that is 0 in float32 is refused as well (AdamP's eps, read by fp32 kernels)."""

    low: float
    high: float | None = None
    low_open: bool = False
    high_open: bool = True
    nonzero_f32: str = ""

    def check(self, label: str, value: Any) -> None:
        check_range(label, value, self.low, self.high, low_open=self.low_open, high_open=self.high_open)
        if self.nonzero_f32 and array("f", [float(value)])[0] == 0.0:
            raise ValueError(f"Invalid {label}: {value!r}; {self.nonzero_f32}")

    def describe(self) -> str:
        if self.nonzero_f32 and self.high is None:
            return f"a finite number > {self.low:g}, nonzero in float32"
        return _interval_text(self.low, self.high, self.low_open, self.high_open)

    def contains(self, value: float) -> bool:
        try:
            self.check("value", value)
        except ValueError:
            return False
        return True


@dataclass(frozen=True)
class Flag:
    """One of ``options`` (True/False, or None too for ``foreach``)."""

    options: tuple[Any, ...] = (True, False)

    def check(self, label: str, value: Any) -> None:
        check_flag(label, value, self.options)

    def describe(self) -> str:
        return "one of " + ", ".join("null" if o is None else str(o).lower() for o in self.options)


@dataclass(frozen=True)
class Pair:
    """Two numbers, each in ``each`` (Adam's betas)."""

    each: Interval
    label_of: tuple[str, str] = ("beta parameter at index 0", "beta parameter at index 1")

    def check(self, label: str, value: Any) -> None:
        if not isinstance(value, (tuple, list)) or len(value) != 2:
            raise ValueError(f"Invalid {label}: {value!r}; expected a pair, each {self.each.describe()}")
        for name, item in zip(self.label_of, value):
            self.each.check(name, item)

    def describe(self) -> str:
        each = self.each.describe()
        return f"two numbers in {each[len('a value in ') :]}" if each.startswith("a value in ") else each


@dataclass(frozen=True)
class Hyper:
    """One keyword: its config key, the name its error messages use (torch's wording, e.g. "learning rate"),
    its allowed values, and whether it is a real number a tuning study may search over."""

    key: str
    label: str
    allowed: Interval | Flag | Pair

    @property
    def searchable(self) -> bool:
        return isinstance(self.allowed, Interval)


# The keywords every optimizer config has (also one given by ``_target_`` or ``timm``).
LR = Hyper("lr", "learning rate", Interval(0.0))
WEIGHT_DECAY = Hyper("weight_decay", "weight_decay value", Interval(0.0))
COMMON = {hyper.key: hyper for hyper in (LR, WEIGHT_DECAY)}

_MOMENTUM = Hyper("momentum", "momentum value", Interval(0.0, 1.0))
_DAMPENING = Hyper("dampening", "dampening", Interval(0.0, 1.0, high_open=False))
_NESTEROV = Hyper("nesterov", "nesterov", Flag())
_FOREACH = Hyper("foreach", "foreach", Flag((None, True, False)))
_BETAS = Hyper("betas", "betas", Pair(Interval(0.0, 1.0)))
_EPS = Hyper("eps", "epsilon value", Interval(0.0))
_DELTA = Hyper("delta", "delta", Interval(0.0, low_open=True))
# A multiplier of the decay of the projected weights: the official classes take any value; above 1 the projected
# weights decay more than the others, a choice, not an error.
_WD_RATIO = Hyper("wd_ratio", "wd_ratio", Interval(0.0))
_COMPILE = Hyper("compile", "compile", Flag())
_PROJECTION = Hyper("projection", "projection", Flag())


@dataclass(frozen=True)
class OptimizerSpec:
    """The keywords a config may set for one registered optimizer (``weight_decay`` included)."""

    name: str
    hypers: tuple[Hyper, ...]

    @property
    def keys(self) -> frozenset[str]:
        return frozenset(hyper.key for hyper in self.hypers)

    def get(self, key: str) -> Hyper | None:
        return next((hyper for hyper in self.hypers if hyper.key == key), None)

    def check(self, values: Mapping[str, Any]) -> None:
        """Raise ValueError (torch's wording: ``Invalid <label>: <value>; expected ...``) at the first value
        of ``values`` (a param group or a config) outside its range; keys not present are not checked."""
        for hyper in self.hypers:
            if hyper.key in values:
                hyper.allowed.check(hyper.label, values[hyper.key])


HYPERPARAMETERS: dict[str, OptimizerSpec] = {
    spec.name: spec
    for spec in (
        OptimizerSpec("sgd", (LR, WEIGHT_DECAY, _MOMENTUM, _DAMPENING, _NESTEROV, _FOREACH)),
        OptimizerSpec(
            "sgdp",
            (
                LR,
                WEIGHT_DECAY,
                _MOMENTUM,
                _DAMPENING,
                _NESTEROV,
                _EPS,
                _DELTA,
                _WD_RATIO,
                _FOREACH,
                _COMPILE,
                Hyper("project_buffer", "project_buffer", Flag()),
                _PROJECTION,
            ),
        ),
        OptimizerSpec("adam", (LR, WEIGHT_DECAY, _BETAS, _EPS, _FOREACH)),
        OptimizerSpec("adamw", (LR, WEIGHT_DECAY, _BETAS, _EPS, _FOREACH)),
        OptimizerSpec(
            "adamp",
            (
                LR,
                WEIGHT_DECAY,
                _BETAS,
                # eps = 0 is refused although the official class takes it (AdamP's docstring).
                Hyper(
                    "eps",
                    "epsilon value",
                    Interval(
                        0.0,
                        nonzero_f32="AdamP needs eps > 0 (nonzero in float32): it divides by sqrt(v) + eps, "
                        "0/0 = nan wherever a gradient entry has been 0 at every step",
                    ),
                ),
                _DELTA,
                _WD_RATIO,
                _NESTEROV,
                _FOREACH,
                _COMPILE,
                _PROJECTION,
            ),
        ),
    )
}


def spec(name: str) -> OptimizerSpec:
    """The spec of a registered optimizer; KeyError naming the known ones otherwise."""
    try:
        return HYPERPARAMETERS[name]
    except KeyError:
        raise KeyError(f"no hyper-parameter spec for {name!r}; known: {sorted(HYPERPARAMETERS)}") from None


def defaults(cls: type) -> dict[str, Any]:
    """The keyword defaults of an optimizer class's constructor (``required`` where it has none, as torch's
    sentinel), read from its signature: the class owns its defaults."""
    parameters = list(inspect.signature(cls.__init__).parameters.values())[2:]  # self, params
    return {
        p.name: p.default
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.default is not inspect.Parameter.empty
    }
