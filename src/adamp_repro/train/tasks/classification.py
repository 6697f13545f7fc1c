"""The classification task: cross-entropy training, top-1 / top-5 accuracy and loss on evaluation."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adamp_repro.tracking.schema import LOSS, TOP1, TOP5
from adamp_repro.train.metrics import correct_topk
from adamp_repro.train.tasks.base import (
    CLASSIFIER_TRAIN_METRICS,
    ClassifierTaskBase,
)


class ClassificationTask(ClassifierTaskBase):
    """Cross-entropy training (optional label smoothing and CutMix); top-1 / top-5 accuracy and loss on
    evaluation.

    CutMix (Yun et al. 2019, arXiv 1905.04899): with probability ``cutmix_prob`` a batch gets a box of a
    shuffled copy of itself pasted in, box area ``1 - lam`` with ``lam ~ Beta(cutmix_alpha, cutmix_alpha)``, and
    the loss mixes the two targets by area. Its random draws come from a generator seeded by (seed, epoch,
    rank) in ``set_epoch``, so a resumed epoch repeats them; with CutMix off no random number is drawn.
    """

    name = "classification"
    primary_metric = TOP1
    train_metric_names = CLASSIFIER_TRAIN_METRICS

    def __init__(self, label_smoothing: float = 0.0, cutmix_alpha: float = 0.0, cutmix_prob: float = 0.0):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"Invalid task.label_smoothing: {label_smoothing}; expected 0 <= value < 1")
        if cutmix_alpha < 0.0:
            raise ValueError(f"Invalid task.cutmix_alpha: {cutmix_alpha}; expected >= 0 (0 = CutMix off)")
        if not 0.0 <= cutmix_prob <= 1.0:
            raise ValueError(f"Invalid task.cutmix_prob: {cutmix_prob}; expected 0 <= value <= 1")
        self.label_smoothing = float(label_smoothing)
        self.cutmix_alpha, self.cutmix_prob = float(cutmix_alpha), float(cutmix_prob)
        self.rng = np.random.default_rng(0)

    def set_epoch(self, seed: int, epoch: int, rank: int = 0) -> None:
        self.rng = np.random.default_rng([seed, epoch, rank, 0xC07])

    def train_loss(self, model: nn.Module, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if self.cutmix_alpha > 0.0 and self.cutmix_prob > 0.0 and self.rng.random() < self.cutmix_prob:
            x, y_pasted, lam = self.cutmix(x, y)
            logits = model(x)
            loss = lam * F.cross_entropy(logits, y, label_smoothing=self.label_smoothing) + (
                1.0 - lam
            ) * F.cross_entropy(logits, y_pasted, label_smoothing=self.label_smoothing)
            return loss, logits
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=self.label_smoothing), logits

    def cutmix(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor, float]:
        """Paste a box of ``x[perm]`` into ``x`` (a new tensor); returns (mixed x, pasted labels, lam), lam being
        the share of each image that is still its own. x: (B, C, H, W)."""
        height, width = x.shape[-2:]
        lam = float(self.rng.beta(self.cutmix_alpha, self.cutmix_alpha))
        perm = torch.as_tensor(self.rng.permutation(x.shape[0]), device=x.device)
        cut = math.sqrt(1.0 - lam)
        cy, cx = int(self.rng.integers(height)), int(self.rng.integers(width))
        half_h, half_w = int(height * cut) // 2, int(width * cut) // 2
        y0, y1 = max(cy - half_h, 0), min(cy + half_h, height)
        x0, x1 = max(cx - half_w, 0), min(cx + half_w, width)
        mixed = x.clone()
        mixed[..., y0:y1, x0:x1] = x[perm][..., y0:y1, x0:x1]
        lam = 1.0 - (y1 - y0) * (x1 - x0) / (height * width)  # the box as clipped, not as drawn
        return mixed, y[perm], lam

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
                LOSS: F.cross_entropy(logits.float(), y, reduction="sum"),
                TOP1: 100.0 * top1,
                TOP5: 100.0 * top5,
                "count": torch.tensor(float(y.numel()), device=y.device),
            }
            for key, value in batch.items():
                sums[key] = sums.get(key, 0) + value.float()
        return sums

    def describe(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "label_smoothing": self.label_smoothing,
            "cutmix_alpha": self.cutmix_alpha,
            "cutmix_prob": self.cutmix_prob,
        }


def build_classification_task(cfg: Mapping[str, Any]) -> ClassificationTask:
    """Build the task from ``configs/task/classification.yaml``; a key left out takes its default."""
    return ClassificationTask(
        label_smoothing=cfg.get("label_smoothing", 0.0),
        cutmix_alpha=cfg.get("cutmix_alpha", 0.0),
        cutmix_prob=cfg.get("cutmix_prob", 0.0),
    )
