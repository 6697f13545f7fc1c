"""The record schema: the version and key names of a run record, and the pure helpers that make and read them.

The writer (``tracking.records.RunRecord``, fed by ``train.life.RunLife``), the collector
(``results.collect``), the figures and the dashboards all import their key names from here.

``SCHEMA_VERSION`` is written into every ``summary.json`` (``schema_version``); a summary without the key was
written before versions existed and reads as version 1 (``schema_version_of``). Version 2 adds the key alone:
every other key of a version-1 summary means what it meant.

``summary_metrics`` turns a run's epoch rows (the rows of ``metrics.csv``) into the metric keys of its
summary: ``epochs``, ``final_train_loss``, ``final_eval_<metric>`` (the last evaluation, counts left out),
``best_eval_<primary metric>``, the median ``images_per_s``, ``final_<key>`` and ``initial_<key>`` of the
weight diagnostics.

``ROW_KEYS`` are the columns of ``diagnostics.csv`` (one row per weight tensor and epoch, written by
``train.diagnostics.WeightDiagnostics``); ``SUMMARY_KEYS`` are the per-epoch summary keys of ``metrics.csv``
(and ``final_<key>`` in ``summary.json``). ``summarise_rows`` turns one epoch's rows into its summary: the
trainer calls it as it measures, and the results pipeline calls it on recorded rows, so both read a record the
same way. Only the standard library is used, so the W&B mirror and the results pipeline can import it without
the trainer.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

SCHEMA_VERSION = 2
SCHEMA_VERSION_KEY = "schema_version"
UNVERSIONED = 1  # the version of a summary written before the key existed

SUMMARY_KEYS = (
    "mean_weight_norm",
    "effective_step_size",
    "mean_filter_norm",
    "filter_effective_step_size",
    "detected_share",
    "mean_abs_cos",
)
ROW_KEYS = (
    "epoch",
    "step",
    "param",
    "numel",
    "weight_norm",
    "effective_step_size",
    "filter_norm",
    "filter_effective_step_size",
    "abs_cos_max",
    "detected",
    "followed_by_norm",
)


def summarise_rows(rows: Iterable[dict[str, Any]]) -> dict[str, float]:
    """Epoch summary (keys ``SUMMARY_KEYS``) from one epoch's per-layer rows (keys ``ROW_KEYS``); NaN-tolerant.

    Norms and effective step sizes are means over the weights followed by a normalisation layer;
    ``detected_share`` is weighted by number of elements over the tested weights, ``mean_abs_cos`` their mean.
    """
    rows = list(rows)
    invariant = [r for r in rows if r["followed_by_norm"]]
    tested = [r for r in rows if not math.isnan(r["detected"])]
    tested_numel = sum(r["numel"] for r in tested)
    return {
        "mean_weight_norm": _mean(r["weight_norm"] for r in invariant),
        "effective_step_size": _mean(r["effective_step_size"] for r in invariant),
        # Rows written before the per-filter columns existed read as NaN.
        "mean_filter_norm": _mean(r.get("filter_norm", math.nan) for r in invariant),
        "filter_effective_step_size": _mean(r.get("filter_effective_step_size", math.nan) for r in invariant),
        "detected_share": sum(r["numel"] * r["detected"] for r in tested) / tested_numel
        if tested_numel
        else math.nan,
        "mean_abs_cos": _mean(r["abs_cos_max"] for r in tested),
    }


def _mean(values: Iterable[float]) -> float:
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else math.nan


def schema_version_of(summary: Mapping[str, Any]) -> int:
    """The schema version of a summary: its ``schema_version``, or 1 for one written before the key existed.
    Raises ValueError on a value that is not an integer."""
    version = summary.get(SCHEMA_VERSION_KEY, UNVERSIONED)
    if isinstance(version, bool) or not isinstance(version, int):
        raise ValueError(f"schema_version must be an integer, got {version!r}")
    return version


# The diagnostics whose value before the first epoch's end is also summarised, as initial_<key>.
INITIAL_KEYS = ("mean_weight_norm", "mean_filter_norm")


def summary_metrics(history: Sequence[Mapping[str, Any]], primary_metric: str) -> dict[str, Any]:
    """The metric keys of a summary from the run's epoch rows (module docstring); ``{"epochs": 0}`` without rows."""
    if not history:
        return {"epochs": 0}
    last = history[-1]
    primary = f"eval_{primary_metric}"
    evaluated = [row for row in history if primary in row]
    out: dict[str, Any] = {"epochs": int(last["epoch"]) + 1, "final_train_loss": last.get("train_loss")}
    if evaluated:
        final = evaluated[-1]
        out.update({f"final_{k}": v for k, v in final.items() if k.startswith("eval_") and "count" not in k})
        out[f"best_{primary}"] = max(row[primary] for row in evaluated)
    speeds = [row["images_per_s"] for row in history if "images_per_s" in row]
    out["images_per_s"] = float(statistics.median(speeds)) if speeds else None
    for key in SUMMARY_KEYS:
        if key in last:
            out[f"final_{key}"] = last[key]
    for key in INITIAL_KEYS:
        if key in history[0]:
            out[f"initial_{key}"] = history[0][key]
    return out
