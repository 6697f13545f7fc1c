"""The language-modelling task: next-token cross-entropy; loss, perplexity and bits per character on evaluation.

A batch is ``(tokens, targets)``, both int64 of shape (B, T): ``targets`` is ``tokens`` shifted by one position
in the token stream (``data.text``), so position t of a window is trained to predict the token after it. The
model maps (B, T) token ids to (B, T, V) logits over the vocabulary of V tokens (``models.transformer_lm``).

Every token of a batch is one sample: the sums are over tokens (``"count"`` is the number of predicted tokens),
so the epoch's ``train_loss`` and the evaluation's ``loss`` are mean cross-entropies in nats per token. From the
evaluation loss L: ``perplexity`` = exp(L) (the primary metric; lower is better, ``tracking.schema``), and at
character level ``bits_per_char`` = L / ln 2. No random draw is made (no ``set_epoch`` of its own): the windows'
offsets are the data's, drawn per (seed, epoch).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from adamp_repro.tracking.schema import BITS_PER_CHAR, LOSS, PERPLEXITY
from adamp_repro.train.tasks.base import TaskBase

TOKENIZATIONS = ("char", "word")


class LanguageModelTask(TaskBase):
    """Next-token prediction (module docstring). ``tokenization``: the data's (``dataset.tokenization``);
    ``bits_per_char`` is reported at character level only, where one token is one character."""

    name = "language_model"
    primary_metric = PERPLEXITY
    train_metric_names = (LOSS,)

    def __init__(self, tokenization: str = "char"):
        if tokenization not in TOKENIZATIONS:
            raise ValueError(
                f"Invalid task.tokenization: {tokenization!r}; expected one of {list(TOKENIZATIONS)}"
            )
        self.tokenization = tokenization

    @staticmethod
    def _loss(model: nn.Module, batch: tuple[Tensor, Tensor], reduction: str) -> tuple[Tensor, Tensor]:
        tokens, targets = batch
        logits = model(tokens)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction=reduction)
        return loss, targets

    def train_step(self, model: nn.Module, batch: tuple[Tensor, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        """The mean cross-entropy (nats per token) of one batch, and its sums: loss x tokens, tokens."""
        loss, targets = self._loss(model, batch, "mean")
        count = torch.tensor(targets.numel(), device=targets.device)
        return loss, {LOSS: loss.detach().float() * targets.numel(), "count": count}

    @torch.no_grad()
    def evaluate(
        self, model: nn.Module, batches: Iterable[tuple[Tensor, Tensor]], final: bool = True
    ) -> dict[str, Tensor]:
        """Summed cross-entropy (nats) over every predicted token, and the token count."""
        sums: dict[str, Tensor] = {}
        for batch in batches:
            loss, targets = self._loss(model, batch, "sum")
            count = torch.tensor(float(targets.numel()), device=targets.device)
            sums[LOSS] = sums.get(LOSS, 0) + loss.float()
            sums["count"] = sums.get("count", 0) + count
        return sums

    def finalize(self, sums: Mapping[str, Tensor | float]) -> dict[str, float]:
        """``loss`` (nats per token), ``perplexity`` = exp(loss), ``bits_per_char`` = loss / ln 2 at character
        level, and ``count`` (tokens)."""
        count = float(sums["count"])
        loss = float(sums[LOSS]) / max(count, 1.0)
        out = {LOSS: loss, PERPLEXITY: math.exp(min(loss, 700.0)), "count": count}  # exp(>709) overflows
        if self.tokenization == "char":
            out[BITS_PER_CHAR] = loss / math.log(2.0)
        return out

    def describe(self) -> dict[str, Any]:
        return {"task": self.name, "tokenization": self.tokenization}


def build_language_model_task(cfg: Mapping[str, Any]) -> LanguageModelTask:
    """Build the task from ``configs/task/language_model.yaml``."""
    return LanguageModelTask(tokenization=cfg.get("tokenization", "char"))
