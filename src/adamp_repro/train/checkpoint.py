"""Checkpoints: everything a resumed run needs to continue bit for bit, written atomically.

``last.ckpt`` holds the model, optimizer, grad scaler, EMA and diagnostics state, the epoch and global step
finished, the best metric so far, the W&B run id, and the global RNG states (torch CPU and CUDA, Python).
Data order and augmentation need no saved state: they are functions of (seed, epoch), see ``adamp_repro.data``.
The LR schedule is a function of the global step.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import torch

from adamp_repro.tracking.records import atomic_write_bytes

CHECKPOINT_NAME = "last.ckpt"


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": _python_rng_to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _python_rng_to_lists(state: tuple) -> list:
    # weights_only loading accepts lists of ints, so the tuple state is stored as plain lists.
    version, internal, gauss = state
    return [version, list(internal), gauss]


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save({**payload, "rng": rng_state()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: a checkpoint holds tensors and plain containers only."""
    with open(path, "rb") as handle:
        return torch.load(handle, map_location=map_location, weights_only=True)
