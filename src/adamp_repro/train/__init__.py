"""The shared trainer: one loop for every task, run from a composed config by ``run(cfg)``."""

from __future__ import annotations

from typing import Any

__all__ = ["run", "run_dir_for"]


def __getattr__(name: str) -> Any:
    # The runner reads composed configs (omegaconf); loading it on first use keeps the trainer, tasks and
    # schedules importable where Hydra is not installed (scripts/device_check.py on a bare GPU machine).
    if name in __all__:
        from adamp_repro.train import runner

        return getattr(runner, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
