"""Checkpoints: everything a resumed run needs to continue bit for bit, written atomically.

``last.ckpt`` holds the model, optimizer, grad scaler, EMA and diagnostics state, the epoch and global step
finished, the best metric so far, the W&B run id, the epoch rows of ``metrics.csv`` and ``diagnostics.csv``, and
the global RNG states (torch CPU and CUDA, Python). Data order and augmentation need no saved state: they are
functions of (seed, epoch), see ``adamp_repro.data``. The LR schedule is a function of the global step.

Writing a new ``last.ckpt`` first moves the one before it to ``prev.ckpt``. A ``last.ckpt`` that cannot be read
(truncated, overwritten, not a checkpoint) is moved aside to ``last.unreadable.ckpt`` and the run resumes from
``prev.ckpt``, one epoch earlier, with the same numbers (the resume is exact). With no readable ``prev.ckpt`` the
error names the file and ``resume=never``. Loading is always ``weights_only=True``: a checkpoint that would run
code when unpickled is refused like any other unreadable file.
"""

from __future__ import annotations

import io
import logging
import os
import random
from pathlib import Path
from typing import Any

import torch

from adamp_repro.errors import UsageError
from adamp_repro.tracking.records import atomic_write_bytes

log = logging.getLogger("adamp_repro")

CHECKPOINT_NAME = "last.ckpt"
PREVIOUS_CHECKPOINT_NAME = "prev.ckpt"
UNREADABLE_CHECKPOINT_NAME = "last.unreadable.ckpt"


class CheckpointError(UsageError):
    """A checkpoint that cannot be read; the message names the file and the way out."""


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


def save_checkpoint(path: Path, payload: dict[str, Any], keep_previous: bool = True) -> None:
    """Write ``payload`` (plus the RNG states) to ``path``; the file it replaces becomes ``prev.ckpt``."""
    buffer = io.BytesIO()
    torch.save({**payload, "rng": rng_state()}, buffer)
    backup = Path(path).with_name(PREVIOUS_CHECKPOINT_NAME) if keep_previous else None
    atomic_write_bytes(path, buffer.getvalue(), backup=backup)


def load_checkpoint(path: Path, map_location: torch.device | str = "cpu") -> dict[str, Any]:
    """Load with ``weights_only=True``: a checkpoint holds tensors and plain containers only.

    Raises ``FileNotFoundError`` for a missing file and ``CheckpointError`` (naming it) for an unreadable one.
    """
    try:
        with open(path, "rb") as handle:
            ckpt = torch.load(handle, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as exc:  # torch raises RuntimeError, UnpicklingError, EOFError, ... for a bad file
        raise CheckpointError(f"cannot read checkpoint {path}: {_reason(exc)}") from exc
    if not isinstance(ckpt, dict) or "epoch" not in ckpt:
        raise CheckpointError(f"cannot read checkpoint {path}: not a training checkpoint of this suite")
    return ckpt


def load_resume_checkpoint(
    run_dir: Path, map_location: torch.device | str = "cpu", move_unreadable: bool = True
) -> tuple[Path, dict[str, Any]] | None:
    """The newest readable checkpoint of ``run_dir`` (``last.ckpt``, else ``prev.ckpt``), or None if there is
    none. An unreadable ``last.ckpt`` is moved to ``last.unreadable.ckpt`` (when ``move_unreadable``, rank 0)
    so the next save does not rotate it into ``prev.ckpt``."""
    last, prev = run_dir / CHECKPOINT_NAME, run_dir / PREVIOUS_CHECKPOINT_NAME
    if not last.exists() and not prev.exists():
        return None
    try:
        return last, load_checkpoint(last, map_location)
    except (CheckpointError, FileNotFoundError) as exc:
        last_error = exc
    try:
        ckpt = load_checkpoint(prev, map_location)
    except (CheckpointError, FileNotFoundError) as exc:
        what = "missing" if isinstance(exc, FileNotFoundError) else "unreadable too"
        raise CheckpointError(
            f"{_message(last_error, last)}; no previous good checkpoint to resume from ({prev} is {what}): "
            "rerun with resume=never to start this run over"
        ) from None
    if last.exists():
        if move_unreadable:
            os.replace(last, run_dir / UNREADABLE_CHECKPOINT_NAME)
        log.warning(
            "WARNING: %s; resuming from %s (after epoch %d) instead, the unreadable file is kept as %s",
            _message(last_error, last),
            prev,
            ckpt["epoch"],
            UNREADABLE_CHECKPOINT_NAME,
        )
    return prev, ckpt


def remove_checkpoints(run_dir: Path) -> None:
    """``resume=never``: the run starts over, so no checkpoint of an earlier attempt may be resumed later."""
    for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME):
        (run_dir / name).unlink(missing_ok=True)


def _message(exc: BaseException, path: Path) -> str:
    return str(exc) if isinstance(exc, CheckpointError) else f"cannot read checkpoint {path}: it is missing"


def _reason(exc: BaseException) -> str:
    """The first sentence of torch's message (the rest advises weights_only=False, which we never do)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    text = text.split(". ")[0].rstrip(".")
    return f"{type(exc).__name__}: {text[:160]}" if text else type(exc).__name__
