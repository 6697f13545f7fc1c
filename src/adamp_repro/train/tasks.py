"""Tasks: how a batch becomes a loss, and which metrics evaluation reports.

Tasks do not fork the training loop (``trainer.py`` is the one loop). A task provides:

- ``train_loss(model, x, y) -> (loss, logits)``: the loss of one training batch; an adversarial task crafts its
  inputs here. ``x`` is in [0, 1] (normalisation lives inside the model), shape (B, C, H, W).
- ``evaluate(model, batches) -> dict[str, Tensor]``: per-metric SUMS over the batches this process saw, plus
  ``"count"`` (number of samples). ``sum / count`` is the metric in its reported unit (accuracies in percent),
  so the trainer can all-reduce sums across ranks and divide once; every sample is counted exactly once.
- ``primary_metric``: the evaluation key whose best value the run tracks (``best_eval_<key>``).
- optional ``denominators``: ``{metric: count key}`` for metrics measured on fewer samples than ``"count"``.
- ``describe() -> dict``: settings recorded next to the numbers in ``summary.json`` (attack settings, ...).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def correct_topk(logits: Tensor, target: Tensor, ks: tuple[int, ...] = (1, 5)) -> list[Tensor]:
    """Number of samples whose target is in the top-k logits, for each k (clamped to the class count)."""
    maxk = min(max(ks), logits.shape[1])
    top = logits.topk(maxk, dim=1).indices
    hits = top.eq(target.unsqueeze(1))
    return [hits[:, : min(k, maxk)].any(dim=1).sum() for k in ks]


class ClassificationTask:
    """Cross-entropy training (optional label smoothing); top-1 / top-5 accuracy and loss on evaluation."""

    name = "classification"
    primary_metric = "top1"

    def __init__(self, label_smoothing: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Invalid task.label_smoothing: {label_smoothing}; expected 0 <= value < 1")
        self.label_smoothing = float(label_smoothing)

    def train_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], final: bool = True
    ) -> dict[str, Tensor]:
        """Sums of loss, top-1 and top-5 (percent) and the sample count; ``final`` changes nothing here."""
        sums: dict[str, Tensor] = {}
        for x, y in batches:
            logits = model(x)
            top1, top5 = correct_topk(logits, y)
            batch = {
                "loss": F.cross_entropy(logits.float(), y, reduction="sum"),
                "top1": 100.0 * top1,
                "top5": 100.0 * top5,
                "count": torch.tensor(float(y.numel()), device=y.device),
            }
            for key, value in batch.items():
                sums[key] = sums.get(key, 0) + value.float()
        return sums

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "label_smoothing": self.label_smoothing}


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


def _build_classification(cfg: Mapping[str, Any]) -> ClassificationTask:
    return ClassificationTask(label_smoothing=cfg.get("label_smoothing", 0.0))


def _build_adversarial(cfg: Mapping[str, Any]):
    from adamp_repro.train.adversarial import build_adversarial_task

    return build_adversarial_task(cfg)


TASKS: dict[str, Callable[[Mapping[str, Any]], Any]] = {
    "classification": _build_classification,
    "adversarial": _build_adversarial,
}


def build_task(cfg: Mapping[str, Any]):
    """Build the task named by ``cfg["name"]`` from the registry."""
    name = cfg.get("name")
    if name not in TASKS:
        raise ValueError(f"Unknown task.name: {name!r}; expected one of {sorted(TASKS)}")
    return TASKS[name](cfg)
