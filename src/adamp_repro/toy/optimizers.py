"""Where the toys get SGDP and AdamP: the suite's own ``adamp_repro.optim`` (checked against the official
``adamp`` package 0.3.0 in tests/test_optim_parity.py)."""

from __future__ import annotations

from adamp_repro.optim import SGDP, AdamP


def projected_optimizers() -> tuple[type, type]:
    """(SGDP, AdamP) classes taking the official package's constructor arguments."""
    return SGDP, AdamP


def optimizer_source() -> str:
    """The module the toys' SGDP comes from, for provenance."""
    return projected_optimizers()[0].__module__
