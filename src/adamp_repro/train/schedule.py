"""Learning-rate schedules as pure functions of the global step (so a resumed run needs no scheduler state).

Every schedule is ``base_lr x factor(step)``; warmup is linear from ``warmup_start_factor`` to 1 over
``warmup_epochs``. Decays are expressed as fractions of the run so a recipe keeps its shape at every scale.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

SCHEDULES = ("cosine", "step", "multistep", "constant")


def build_lr_factor(cfg: Mapping[str, Any], total_steps: int, steps_per_epoch: int) -> Callable[[int], float]:
    """Return ``factor(step)`` for ``step`` in ``[0, total_steps)``."""
    name = cfg.get("name")
    if name not in SCHEDULES:
        raise ValueError(f"Unknown scheduler.name: {name!r}; expected one of {list(SCHEDULES)}")
    if total_steps <= 0:
        raise ValueError(f"Invalid total training steps: {total_steps}; the run must have at least one step")
    warmup_epochs = float(cfg.get("warmup_epochs", 0))
    if warmup_epochs < 0:
        raise ValueError(f"Invalid scheduler.warmup_epochs: {warmup_epochs}; expected >= 0")
    warmup_steps = min(int(round(warmup_epochs * steps_per_epoch)), total_steps)
    start = float(cfg.get("warmup_start_factor", 0.1))
    decay = _decay(name, cfg, total_steps, steps_per_epoch, warmup_steps)

    def factor(step: int) -> float:
        if step < warmup_steps:
            return start + (1.0 - start) * step / warmup_steps
        return decay(step)

    return factor


def _decay(
    name: str, cfg: Mapping[str, Any], total: int, per_epoch: int, warmup: int
) -> Callable[[int], float]:
    if name == "constant":
        return lambda step: 1.0
    if name == "cosine":
        floor = float(cfg.get("min_lr_factor", 0.0))
        span = max(total - warmup, 1)
        return lambda step: floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / span))
    gamma = float(cfg.get("gamma", 0.1))
    if not 0.0 < gamma <= 1.0:
        raise ValueError(f"Invalid scheduler.gamma: {gamma}; expected 0 < gamma <= 1")
    epochs = total / per_epoch
    if name == "step":
        frac = float(cfg.get("step_frac", 0.0))
        if not 0.0 < frac <= 1.0:
            raise ValueError(f"Invalid scheduler.step_frac: {frac}; expected 0 < step_frac <= 1")
        milestones = [round(k * frac * epochs) for k in range(1, int(1 / frac) + 1)]
    else:
        fracs = [float(f) for f in cfg.get("milestones_frac", [])]
        if any(not 0.0 < f <= 1.0 for f in fracs) or fracs != sorted(fracs):
            raise ValueError(
                f"Invalid scheduler.milestones_frac: {fracs}; expected increasing values in (0, 1]"
            )
        milestones = [round(f * epochs) for f in fracs]
    # Decays happen at epoch boundaries, as MultiStepLR stepped per epoch does.
    bounds = [m * per_epoch for m in milestones]
    return lambda step: gamma ** sum(step >= b for b in bounds)
