"""Shared fixtures: compose the real config tree with hydra.compose, shrunk to smoke size in a temp folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")
# One thread per pytest-xdist worker (``make test`` runs two): two workers of two threads each on a 2-core machine
# spin against each other in OpenMP waits and run slower than one worker; alone, two threads.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, torch.get_num_threads()))


def compose_config(overrides: list[str] | None = None) -> DictConfig:
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides or []))


@pytest.fixture
def smoke_cfg(tmp_path):
    """Factory: a composed smoke-scale config writing under tmp_path."""

    def make(*overrides: str) -> DictConfig:
        return compose_config(
            ["scale=smoke", "device=cpu", "progress=false", f"output_root={tmp_path}/runs", *overrides]
        )

    return make


@pytest.fixture(scope="module")
def one_thread():
    """One thread for a module (``pytestmark = pytest.mark.usefixtures("one_thread")``): bitwise-reproducible
    numbers, faster on tiny tensors, and immune to OpenMP spin-waits and oversubscription on a shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
