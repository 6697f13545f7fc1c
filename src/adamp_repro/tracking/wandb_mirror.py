"""Mirror of a run to Weights & Biases. The record on disk is the source of truth; this is a dashboard.

Project, group (the experiment / table) and name (model-dataset-optimizer-seed) are fixed by config, so
dashboards group cleanly. With no API key the run is offline and can be uploaded later with ``wandb sync``.
W&B's local files go into the run folder (``<run_dir>/wandb/``), or under ``$WANDB_DIR/wandb/`` when the user
sets ``WANDB_DIR`` (``make sync-wandb`` and ``dashboard.read_offline_run`` look there too).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from adamp_repro.tracking.schema import (
    EPOCH,
    IMAGES_PER_S,
    LR,
    STEP,
    SUMMARY_KEYS,
    eval_key,
    step_key,
    train_key,
)

MODES = ("auto", "online", "offline", "disabled")


def resolve_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"Invalid logger.mode: {mode!r}; expected one of {list(MODES)}")
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online") and mode == "auto":
        return os.environ["WANDB_MODE"]
    if mode == "auto":
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"
    return mode


def wandb_root(run_dir: Path) -> Path:
    """The folder given to ``wandb.init(dir=...)``: the user's ``WANDB_DIR`` when set, else the run folder.

    Read at every run, not once per process: wandb caches its settings at a process's first ``init``."""
    return Path(os.environ.get("WANDB_DIR") or run_dir)


class WandbMirror:
    """Thin wrapper over one ``wandb`` run; every method is a no-op when the logger is ``none``."""

    def __init__(
        self,
        logger_cfg: Mapping[str, Any],
        *,
        name: str,
        config: Mapping[str, Any],
        run_dir: Path,
        resume_id: str | None = None,
    ):
        self.run = None
        if logger_cfg.get("name", "none") == "none":
            return
        if logger_cfg["name"] != "wandb":
            raise ValueError(f"Unknown logger.name: {logger_cfg['name']!r}; expected 'wandb' or 'none'")
        import wandb

        mode = resolve_mode(logger_cfg.get("mode", "auto"))
        root = wandb_root(run_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=logger_cfg.get("project", "adamp-repro"),
            entity=logger_cfg.get("entity"),
            group=logger_cfg.get("group"),
            job_type=logger_cfg.get("job_type", "train"),
            tags=list(logger_cfg.get("tags", [])),
            name=name,
            id=resume_id,
            resume="allow" if resume_id else None,
            # run_dir: how dashboard.read_offline_run finds this run's files under a shared WANDB_DIR.
            config={**config, "run_dir": str(run_dir)},
            dir=str(root),
            mode=mode,
            reinit="finish_previous",
        )
        # Per-step and per-epoch series share one x-axis each, so panels line up.
        self.run.define_metric(STEP)
        self.run.define_metric(step_key("*"), step_metric=STEP)
        self.run.define_metric(EPOCH)
        for prefix in (train_key("*"), eval_key("*"), LR, IMAGES_PER_S, *SUMMARY_KEYS):
            self.run.define_metric(prefix, step_metric=EPOCH)

    @property
    def run_id(self) -> str | None:
        return None if self.run is None else self.run.id

    def log_step(self, step: int, values: Mapping[str, float]) -> None:
        if self.run is not None:
            self.run.log({STEP: step, **{step_key(k): v for k, v in values.items()}})

    def log_epoch(self, row: Mapping[str, Any]) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if isinstance(v, (int, float))})

    def finish(self, summary: Mapping[str, Any]) -> None:
        if self.run is None:
            return
        for key, value in summary.items():
            if isinstance(value, (int, float, str, bool)) or value is None:
                self.run.summary[key] = value
        status = summary.get("status")
        self.run.finish(exit_code=0 if status == "completed" else 1)
        self.run = None
