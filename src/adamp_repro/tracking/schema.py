"""The record schema of the weight diagnostics: the key names a run writes and the pure helpers that read them.

``ROW_KEYS`` are the columns of ``diagnostics.csv`` (one row per weight tensor and epoch, written by
``train.diagnostics.WeightDiagnostics``); ``SUMMARY_KEYS`` are the per-epoch summary keys of ``metrics.csv``
(and ``final_<key>`` in ``summary.json``). ``summarise_rows`` turns one epoch's rows into its summary: the
trainer calls it as it measures, and the results pipeline calls it on recorded rows, so both read a record the
same way. Only the standard library is used, so the W&B mirror and the results pipeline can import it without
the trainer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

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
