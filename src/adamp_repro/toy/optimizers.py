"""Where the toys get SGDP and AdamP: the suite's own ``adamp_repro.optim`` when it provides them, else the
official ``adamp`` package (0.3.0, the reference the suite's optimizers are checked against)."""

from __future__ import annotations

import functools


@functools.cache
def projected_optimizers() -> tuple[type, type]:
    """(SGDP, AdamP) classes taking the official package's constructor arguments."""
    try:
        from adamp_repro.optim import SGDP, AdamP
    except ImportError:
        from adamp import SGDP, AdamP
    return SGDP, AdamP


def optimizer_source() -> str:
    """The module the toys' SGDP came from (``adamp_repro.optim...`` or ``adamp...``), for provenance."""
    return projected_optimizers()[0].__module__
