"""Before a run continues from its checkpoint: which checkpoint, on which code, after which segments.

A resume is refused when the package's source hash differs from the one the run's last segment recorded
(``allow_code_change=true`` lets it go on; the summary then says ``code_changed_on_resume``), so a record never
mixes code versions without saying so. The checkpoint is read here, before any data, so an unreadable one
fails the run at once, recorded as ``failed`` with the file and the way out.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from adamp_repro.errors import UsageError
from adamp_repro.tracking.provenance import source_hash
from adamp_repro.tracking.records import RunRecord, read_provenance_segments, read_summary
from adamp_repro.train.checkpoint import (
    CHECKPOINT_NAME,
    PREVIOUS_CHECKPOINT_NAME,
    CheckpointError,
    load_resume_checkpoint,
    remove_checkpoints,
)
from adamp_repro.train.distributed import DistContext

log = logging.getLogger("adamp_repro")


def prepare_resume(
    cfg: DictConfig, ctx: DistContext, run_dir: Path, identity: dict[str, Any]
) -> tuple[tuple[Path, dict[str, Any]] | None, list[dict[str, Any]]]:
    """The checkpoint to resume from (or None) and the provenance segments recorded before it.

    Refuses a resume on changed code unless ``allow_code_change``; an unreadable checkpoint is recorded as
    ``failed`` (``identity``: the summary keys to write where the run has no summary yet) and raised
    (``CheckpointError``, a ``UsageError``). ``resume=never`` removes old checkpoints. ``cfg.resume`` is
    ``auto`` or ``never``, as the config schema (``config.validate_config``) has checked before the run began.
    """
    if cfg.resume == "never":
        if ctx.is_main:
            remove_checkpoints(run_dir)
        return None, []
    if not any((run_dir / name).exists() for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME)):
        return None, []
    segments = _earlier_segments(run_dir)
    _check_same_code(cfg, run_dir, segments)
    try:
        point = load_resume_checkpoint(run_dir, move_unreadable=ctx.is_main)
    except CheckpointError as exc:
        if ctx.is_main:
            _record_failure(run_dir, str(exc), identity)
        raise
    return point, segments if point is not None else []


def _earlier_segments(run_dir: Path) -> list[dict[str, Any]]:
    try:
        return read_provenance_segments(run_dir)
    except ValueError as exc:
        log.warning("WARNING: %s; the resumed record starts a new provenance history", exc)
        return [{"unreadable_provenance": str(exc)}]


def _check_same_code(cfg: DictConfig, run_dir: Path, segments: list[dict[str, Any]]) -> None:
    before = segments[-1].get("src_hash") if segments else None
    now = source_hash()
    if before is None or before == now:
        return
    if not cfg.allow_code_change:
        raise UsageError(
            f"refusing to resume {run_dir}: its last segment ran package source {before}, this is {now}; "
            "rerun with allow_code_change=true to continue on this code (the summary then says "
            "code_changed_on_resume), or resume=never to start over"
        )
    log.warning("WARNING: resuming %s on changed package source (%s -> %s)", run_dir, before, now)


def code_changed(segments: list[dict[str, Any]]) -> bool | None:
    """Whether the run's segments ran different code: by source hash, else by a clean git commit; None when
    an older record leaves it unknown."""
    changed: bool | None = False
    for a, b in zip(segments, segments[1:]):
        if a.get("src_hash") and b.get("src_hash"):
            same = a["src_hash"] == b["src_hash"]
        elif a.get("git_commit") and b.get("git_commit") and not (a.get("git_dirty") or b.get("git_dirty")):
            same = a["git_commit"] == b["git_commit"]
        else:
            changed = None
            continue
        if not same:
            return True
    return changed


def _record_failure(run_dir: Path, error: str, identity: dict[str, Any]) -> None:
    try:
        summary = read_summary(run_dir)
    except (OSError, ValueError):
        summary = identity | {"run_dir": str(run_dir)}
    RunRecord(run_dir).write_summary(summary | {"status": "failed", "error": error})
