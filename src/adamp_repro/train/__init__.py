"""The shared trainer: one loop for every task, run from a composed config by ``run(cfg)``."""

from adamp_repro.train.runner import run, run_dir_for

__all__ = ["run", "run_dir_for"]
