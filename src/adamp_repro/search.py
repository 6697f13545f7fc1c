"""Search spaces of a tuning study and their drawn points: the one owner of what a study may search over.

A search space belongs to an optimizer within a study (``configs/studies/<name>.yaml``, ``spaces:``), never to an
optimizer config: it is part of the method being compared (as in AlgoPerf's external-tuning ruleset,
mlcommons/algorithmic-efficiency), not an option of the optimizer, and it is hashed into no run (a trial's
folder is fixed by the values it ran with). Each dimension is a range of one keyword, on a log or a linear
scale, checked against the optimizer's own allowed values (``optim.hyperparams``: ``HYPERPARAMETERS`` for a
registered optimizer, ``COMMON`` for the lr and weight_decay of one given by ``_target_`` or ``timm``, whose
other keywords are those its config file sets, checked against its class by the optimizer factory).

The drawn points are committed, never only their seed: ``draw_unit`` gives a scrambled quasi-random sequence in
the unit cube (``scipy.stats.qmc``, Halton or Sobol, from a seed), ``to_point`` maps a unit point into a space
and rounds each value to ``DIGITS`` significant digits, and the study writes the values to its points file.
Later runs read the values back; a newer scipy that draws another sequence moves no run folder. Errors are
``ConfigError`` naming the study file, the optimizer, the key and what is allowed (one line, exit 2).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from adamp_repro.errors import ConfigError
from adamp_repro.optim.hyperparams import COMMON, HYPERPARAMETERS, Interval

# Significant digits of a drawn value as committed (4: a step of 1e-4 of a decade, far below any effect).
DIGITS = 4
METHODS = ("halton", "sobol")


@dataclass(frozen=True)
class Range:
    """One dimension: ``key`` between ``low`` and ``high`` (both included), uniform in log(value) when ``log``."""

    key: str
    low: float
    high: float
    log: bool

    def value(self, unit: float) -> float:
        """The value at ``unit`` in [0, 1), rounded to ``DIGITS`` significant digits."""
        if self.log:
            value = math.exp(math.log(self.low) + unit * (math.log(self.high) - math.log(self.low)))
        else:
            value = self.low + unit * (self.high - self.low)
        return float(f"{value:.{DIGITS}g}")

    def position(self, value: float) -> float:
        """Where ``value`` sits in the range, 0 at ``low`` and 1 at ``high`` (on the range's own scale)."""
        if self.log:
            return (math.log(value) - math.log(self.low)) / (math.log(self.high) - math.log(self.low))
        return (value - self.low) / (self.high - self.low)

    def describe(self) -> str:
        return f"[{self.low:g}, {self.high:g}] {'log' if self.log else 'linear'}"


@dataclass(frozen=True)
class Space:
    """The search space of one optimizer: its ranges, in the order the study file gives them."""

    optimizer: str
    ranges: tuple[Range, ...]

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(r.key for r in self.ranges)

    def to_point(self, unit: Iterable[float]) -> dict[str, float]:
        return {r.key: r.value(u) for r, u in zip(self.ranges, unit)}

    def contains(self, point: Mapping[str, Any]) -> bool:
        """Whether ``point`` has exactly this space's keys, each inside its range."""
        if set(point) != set(self.keys):
            return False
        return all(_number(point[r.key]) and r.low <= point[r.key] <= r.high for r in self.ranges)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def searchable_keys(optimizer: str, config_keys: Iterable[str] = ()) -> dict[str, Interval | None]:
    """The keys a study may search for ``optimizer`` and each one's allowed values (None: the class checks it).

    A registered optimizer: its real-valued keywords (``Hyper.searchable``). Any other (``_target_``/``timm``):
    ``COMMON`` (lr, weight_decay) and the numeric keywords its config file sets (``config_keys``)."""
    if optimizer in HYPERPARAMETERS:
        spec = HYPERPARAMETERS[optimizer]
        return {h.key: h.allowed for h in spec.hypers if h.searchable}  # type: ignore[misc]
    keys: dict[str, Interval | None] = {key: hyper.allowed for key, hyper in COMMON.items()}  # type: ignore[misc]
    for key in config_keys:
        keys.setdefault(key, None)
    return keys


def parse_space(where: str, optimizer: str, entry: Any, config_keys: Iterable[str] = ()) -> Space:
    """The space of ``optimizer`` from its study-file entry ``{<key>: {low, high, log}}``; ConfigError at the
    first key the optimizer does not take, an empty, inverted or non-finite range, a log range that is not
    positive, or a range outside the key's allowed values."""
    if not isinstance(entry, Mapping) or not entry:
        raise ConfigError(f"{where}: spaces.{optimizer} must map keys to {{low, high, log}}; got {entry!r}")
    allowed = searchable_keys(optimizer, config_keys)
    ranges = []
    for key, spec in entry.items():
        label = f"{where}: spaces.{optimizer}.{key}"
        if key not in allowed:
            raise ConfigError(
                f"{label}: optimizer {optimizer} takes no searchable key {key!r}; searchable: "
                f"{', '.join(sorted(allowed))}"
            )
        if (
            not isinstance(spec, Mapping)
            or set(spec) - {"low", "high", "log"}
            or not {"low", "high"} <= set(spec)
        ):
            raise ConfigError(
                f"{label}: expected {{low: <number>, high: <number>, log: true|false}}; got {spec!r}"
            )
        low, high, log = spec["low"], spec["high"], spec.get("log", True)
        if not (_number(low) and _number(high)) or not isinstance(log, bool):
            raise ConfigError(
                f"{label}: low and high must be finite numbers and log true or false; got {spec!r}"
            )
        if not low < high:
            what = "empty" if low == high else "inverted"
            raise ConfigError(f"{label}: the range [{low:g}, {high:g}] is {what}; expected low < high")
        if log and low <= 0:
            raise ConfigError(f"{label}: a log range needs low > 0; got [{low:g}, {high:g}]")
        interval = allowed[key]
        if interval is not None and not (interval.contains(low) and interval.contains(high)):
            raise ConfigError(
                f"{label}: the range [{low:g}, {high:g}] leaves the values {optimizer} takes "
                f"({interval.describe()})"
            )
        ranges.append(Range(str(key), float(low), float(high), log))
    return Space(optimizer, tuple(ranges))


def draw_unit(dimensions: int, n: int, seed: int, method: str = "halton") -> np.ndarray:
    """``n`` scrambled quasi-random points in the unit cube, (n, dimensions), from ``seed``. Only for drawing a
    study's points once: the study commits the values, never this call's output alone."""
    from scipy.stats import qmc

    if method not in METHODS:
        raise ConfigError(f"draw.method={method!r}; expected one of {', '.join(METHODS)}")
    engine = (qmc.Halton if method == "halton" else qmc.Sobol)(d=dimensions, scramble=True, seed=seed)
    return engine.random(n)
