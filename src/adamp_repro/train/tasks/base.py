"""The task protocol: what the trainer asks of a task, and the metric sums a classifier's tasks share.

The trainer knows no metric of its own. A task turns a batch into a loss and per-batch metric SUMS, and
evaluation batches into per-metric SUMS; the trainer adds the sums up on the device, all-reduces them across
ranks once per epoch (or evaluation) and hands the totals back to the task, which divides them into metrics.
Every sample is counted exactly once, so ``sum / count`` is a metric in its reported unit.

A task (``Task``) has:

- ``name``: the ``task.name`` of its config; ``primary_metric``: the evaluation key whose best value the run
  tracks (``best_eval_<key>``; best by ``tracking.schema.metric_direction``: the largest top-1, the smallest
  perplexity).
- ``train_metric_names``: the ``train_<name>`` columns of ``metrics.csv``; ``"loss"`` is one of them (the
  trainer stops a run whose training loss is not finite).
- ``denominators``: ``{evaluation metric: count key}`` for metrics measured on fewer samples than ``"count"``.
- ``set_epoch(seed, epoch, rank)``: called before every training epoch, so a task's random draws (CutMix boxes,
  attack starts) follow (seed, epoch, rank) and a resumed epoch repeats them.
- ``train_step(model, batch) -> (loss, sums)``: the loss of one training batch (an adversarial task crafts
  its inputs here) and the batch's sums, ``"count"`` (samples) among them, one per ``train_metric_names``.
  The batch is what the data yields: ``(x, y)`` for the image families (``x`` in [0, 1], normalisation inside
  the model, shape (B, C, H, W)), ``(tokens, targets)`` of shape (B, T) for the text family. A sample is what
  the task counts: an image, or a predicted token.
- ``train_metrics(totals) -> dict``: the epoch's training metrics from its (all-reduced) sums.
- ``evaluate(model, batches, final) -> sums``: per-metric sums plus ``"count"``; ``final`` marks the run's last
  evaluation (where a task may run its costly checks).
- ``finalize(sums) -> dict``: evaluation metrics from (all-reduced) sums.
- ``describe() -> dict``: settings recorded next to the numbers in ``summary.json``.

``TaskBase`` gives the defaults (no random draws, every metric over ``"count"``); ``classifier_sums`` and
``classifier_train_metrics`` are the training sums of a task whose model returns class logits.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from adamp_repro.tracking.schema import LOSS, TOP1
from adamp_repro.train.metrics import correct_topk, finalize_sums

Batch = Any  # what the data's train_batches / eval_batches yield: (x, y) images, or (tokens, targets)


@runtime_checkable
class Task(Protocol):
    name: str
    primary_metric: str
    train_metric_names: tuple[str, ...]
    denominators: Mapping[str, str]

    def set_epoch(self, seed: int, epoch: int, rank: int = 0) -> None: ...

    def train_step(self, model: nn.Module, batch: Batch) -> tuple[Tensor, dict[str, Tensor]]: ...

    def train_metrics(self, totals: Mapping[str, Tensor | float]) -> dict[str, float]: ...

    def evaluate(
        self, model: nn.Module, batches: Iterable[Batch], final: bool = True
    ) -> dict[str, Tensor]: ...

    def finalize(self, sums: Mapping[str, Tensor | float]) -> dict[str, float]: ...

    def describe(self) -> dict[str, Any]: ...


class TaskBase:
    """Defaults of the protocol: no random draws; every metric is its sum over ``"count"``."""

    name = "task"
    primary_metric = LOSS
    train_metric_names: tuple[str, ...] = (LOSS,)
    denominators: Mapping[str, str] = {}

    def set_epoch(self, seed: int, epoch: int, rank: int = 0) -> None:
        return None

    def train_metrics(self, totals: Mapping[str, Tensor | float]) -> dict[str, float]:
        count = max(float(totals["count"]), 1.0)
        return {key: float(totals[key]) / count for key in self.train_metric_names}

    def finalize(self, sums: Mapping[str, Tensor | float]) -> dict[str, float]:
        return finalize_sums(sums, self.denominators)

    def describe(self) -> dict[str, Any]:
        return {"task": self.name}


CLASSIFIER_TRAIN_METRICS = (LOSS, TOP1)


@torch.no_grad()
def classifier_sums(loss: Tensor, logits: Tensor, y: Tensor) -> dict[str, Tensor]:
    """One training batch's sums: loss x samples, top-1 hits on ``logits`` and the sample count."""
    return {
        LOSS: loss.detach().float() * y.numel(),
        TOP1: correct_topk(logits.detach(), y, (1,))[0],
        "count": torch.tensor(y.numel(), device=y.device),
    }


def classifier_train_metrics(totals: Mapping[str, Tensor | float]) -> dict[str, float]:
    """``loss`` (mean per sample) and ``top1`` (percent) from an epoch's ``classifier_sums``."""
    count = max(float(totals["count"]), 1.0)
    return {LOSS: float(totals[LOSS]) / count, TOP1: 100.0 * float(totals[TOP1]) / count}


class ClassifierTaskBase(TaskBase):
    """A task whose model returns class logits: its subclass gives ``train_loss(model, x, y) -> (loss,
    logits)``; the training step and its metrics (loss, top-1) are these."""

    train_metric_names = CLASSIFIER_TRAIN_METRICS

    def train_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def train_step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The loss of ``train_loss`` and the batch's sums (loss, top-1 on the logits it was taken on, count)."""
        x, y = batch
        loss, logits = self.train_loss(model, x, y)
        return loss, classifier_sums(loss, logits, y)

    def train_metrics(self, totals: Mapping[str, Tensor | float]) -> dict[str, float]:
        return classifier_train_metrics(totals)
