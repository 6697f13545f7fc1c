"""Per-epoch curves of the run records: one row per (run, epoch), read once and shared by every figure.

The curves come from each run's ``metrics.csv``; a run whose metrics lack the diagnostics columns has them
rebuilt from its ``diagnostics.csv`` rows with ``tracking.schema.summarise_rows``, the function the trainer
summarises with.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pandas as pd

from adamp_repro.results.collect import collect_runs
from adamp_repro.tracking.records import DIAGNOSTICS_FILE, METRICS_FILE, read_csv_rows
from adamp_repro.tracking.schema import (
    CLEAN_TOP1,
    EFFECTIVE_STEP_SIZE,
    EPOCH,
    FILTER_EFFECTIVE_STEP_SIZE,
    LR,
    MEAN_FILTER_NORM,
    MEAN_WEIGHT_NORM,
    RMS_FILTER_ANGLE,
    TOP1,
    at_init_key,
    eval_key,
    summarise_rows,
)

# Epoch-row keys of metrics.csv (names and titles in tracking/schema.py); the first two are diagnostics.
CURVE_COLUMNS = (MEAN_WEIGHT_NORM, EFFECTIVE_STEP_SIZE, eval_key(TOP1))
# Also read per epoch when a run has them (NaN otherwise, e.g. the angles of a record written before they
# existed): the lr and the per-filter diagnostics.
EXTRA_COLUMNS = (LR, MEAN_FILTER_NORM, FILTER_EFFECTIVE_STEP_SIZE, RMS_FILTER_ANGLE)
# Per-run columns of collect_runs copied onto every epoch row (the initial norms start the analysis curves).
RUN_KEYS = (
    "experiment",
    "scale",
    "optimizer",
    "seed",
    "table_id",
    "table_block",
    "run_dir",
    at_init_key(MEAN_WEIGHT_NORM),
    at_init_key(MEAN_FILTER_NORM),
)


def read_epoch_curves(runs_root: str | os.PathLike) -> pd.DataFrame:
    """Per-epoch curves of every completed run under ``runs_root``, one row per (run, epoch).

    Columns: ``RUN_KEYS``, ``epoch``, ``CURVE_COLUMNS`` and ``EXTRA_COLUMNS``. The curves come from
    ``metrics.csv`` (``eval_top1`` of an adversarial run, which records clean and attacked top-1, is its
    ``eval_clean_top1``); where a run's metrics lack the diagnostics columns they are recomputed from its
    ``diagnostics.csv`` rows (``summarise_rows``). Missing values: NaN.
    """
    root = Path(runs_root)
    runs, _ = collect_runs(root)
    frames = []
    for run in runs.itertuples(index=False):
        metrics_path = root / run.run_dir / METRICS_FILE
        if not metrics_path.exists():
            continue
        metrics = pd.DataFrame(read_csv_rows(metrics_path))
        if metrics.empty or EPOCH not in metrics:
            continue
        metrics = metrics.apply(pd.to_numeric, errors="coerce")
        if eval_key(TOP1) not in metrics and eval_key(CLEAN_TOP1) in metrics:
            # An adversarial run's top-1 on the clean test images is its eval_clean_top1.
            metrics[eval_key(TOP1)] = metrics[eval_key(CLEAN_TOP1)]
        diagnostics_path = root / run.run_dir / DIAGNOSTICS_FILE
        if diagnostics_path.exists() and metrics.reindex(columns=CURVE_COLUMNS[:2]).isna().all().any():
            metrics = _merge_diagnostics(metrics, read_csv_rows(diagnostics_path))
        frame = metrics.reindex(columns=[EPOCH, *CURVE_COLUMNS, *EXTRA_COLUMNS]).astype(float)
        for key in RUN_KEYS:
            frame[key] = getattr(run, key)
        frames.append(frame)
    columns = [*RUN_KEYS, EPOCH, *CURVE_COLUMNS, *EXTRA_COLUMNS]
    if not frames:
        return pd.DataFrame(columns=columns)
    return pd.concat(frames, ignore_index=True)[columns]


def _merge_diagnostics(metrics: pd.DataFrame, diag_rows: list[dict[str, str]]) -> pd.DataFrame:
    by_epoch: dict[int, list[dict]] = {}
    for row in diag_rows:
        parsed = {k: _to_float(v) for k, v in row.items() if k != "param"}
        by_epoch.setdefault(int(parsed[EPOCH]), []).append(parsed)
    summaries = pd.DataFrame([{EPOCH: e, **summarise_rows(rows)} for e, rows in sorted(by_epoch.items())])
    merged = metrics.drop(columns=[c for c in CURVE_COLUMNS[:2] if c in metrics], errors="ignore")
    return merged.merge(summaries[[EPOCH, *CURVE_COLUMNS[:2]]], on=EPOCH, how="left")


def _to_float(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan
