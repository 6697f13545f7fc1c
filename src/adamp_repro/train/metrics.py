"""Metric helpers shared by the tasks and the trainer: top-k hits of a batch, and metrics from summed counts.

A task's ``evaluate`` returns per-metric sums plus sample counts, so ranks can all-reduce sums and divide once
(see ``train.tasks``); ``finalize_sums`` does the division.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor


def correct_topk(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose target is in the top-k logits, for each k (clamped to the class count)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(target.unsqueeze(1))
    return [hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


def finalize_sums(sums: Mapping[str, Any], denominators: Mapping[str, str] | None = None) -> dict[str, float]:
    """Metrics from (all-reduced) sums: each sum over its count key (``"count"`` unless ``denominators`` names
    another); the count keys themselves are returned unchanged."""
    denominators = dict(denominators or {})
    count_keys = {"count", *denominators.values()}
    out: dict[str, float] = {}
    for key, value in sums.items():
        if key in count_keys:
            out[key] = float(value)
        else:
            out[key] = float(value) / max(float(sums[denominators.get(key, "count")]), 1.0)
    return out
