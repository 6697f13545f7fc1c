"""The one training loop, shared by every task (``train.tasks``) and every data set.

``Trainer.fit`` runs epochs of train -> evaluate -> record -> checkpoint. The trainer knows no metric of its
own: the task turns a batch into a loss and metric sums (``Task.train_step``) and evaluation batches into sums
(``Task.evaluate``); the trainer adds the sums up on the device, all-reduces them once per epoch and lets the task
divide them (``Task.train_metrics`` / ``Task.finalize``). Per-step work stays on the device: the sums are read
back once per epoch, the loss once per logging interval.

A stop signal (``train.stopping``) is honoured before a training step and after an epoch's checkpoint: one
process checks before every step (a Python flag, no device sync); the ranks of a distributed job agree at each
logging interval and each epoch's end, so they all stop at the same step.
"""

from __future__ import annotations

import copy
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from adamp_repro.tracking.schema import EPOCH, IMAGES_PER_S, LOSS, LR, best_of, eval_key, train_key
from adamp_repro.train.checkpoint import (
    CHECKPOINT_NAME,
    load_resume_checkpoint,
    save_checkpoint,
    set_rng_state,
)
from adamp_repro.train.distributed import DistContext, all_reduce_sums, broadcast_flag
from adamp_repro.train.stopping import RunInterrupted, StopSignals
from adamp_repro.train.tasks.base import Task


class DivergedError(RuntimeError):
    """The training loss became NaN or inf: a result of the recipe (status ``diverged``), not a crash."""


@dataclass
class TrainerSettings:
    epochs: int
    max_steps_per_epoch: int | None = None
    grad_clip_norm: float | None = None
    amp: str = "none"
    ema_decay: float | None = None
    log_every_n_steps: int = 50
    eval_every: int = 1
    checkpoint: bool = True
    progress: bool = False

    def epoch_steps(self, data_steps: int) -> int:
        """Training steps per epoch: the data's batches, capped by ``max_steps_per_epoch`` when set."""
        return min(data_steps, int(self.max_steps_per_epoch)) if self.max_steps_per_epoch else data_steps


@dataclass
class TrainState:
    epoch: int = 0  # epochs finished
    global_step: int = 0
    # Best value of eval_<task.primary_metric>, by the metric's direction (tracking.schema.metric_direction);
    # -inf (any non-finite value) until the first evaluation.
    best_eval: float = float("-inf")
    wandb_id: str | None = None
    history: list[dict[str, Any]] = field(default_factory=list)  # the rows of metrics.csv
    diagnostics_history: list[dict[str, Any]] = field(default_factory=list)  # the rows of diagnostics.csv


AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Trainer:
    def __init__(
        self,
        *,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        task: Task,
        data: Any,
        lr_factor: Callable[[int], float],
        settings: TrainerSettings,
        device: torch.device,
        ctx: DistContext,
        run_dir: Path | None,
        seed: int,
        diagnostics: Any = None,
        on_epoch: Callable[[dict[str, Any], list[dict[str, Any]]], None] | None = None,
        on_step: Callable[[int, dict[str, float]], None] | None = None,
        stop: StopSignals | None = None,
    ):
        if settings.amp not in AMP_DTYPES:
            raise ValueError(f"Invalid train.amp: {settings.amp!r}; expected one of {list(AMP_DTYPES)}")
        self.model, self.optimizer, self.task, self.data = model, optimizer, task, data
        self.lr_factor, self.settings, self.device, self.ctx = lr_factor, settings, device, ctx
        self.run_dir, self.seed, self.diag = run_dir, seed, diagnostics
        self.on_epoch, self.on_step, self.stop = on_epoch, on_step, stop
        self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        self.amp_dtype = AMP_DTYPES[settings.amp]
        self.scaler = torch.amp.GradScaler(device.type, enabled=settings.amp == "fp16")
        self.ema = self._make_ema() if settings.ema_decay else None
        self.state = TrainState()
        self.steps_per_epoch = settings.epoch_steps(data.steps_per_epoch)

    # ----------------------------------------------------------------------------------------- checkpoints
    @property
    def checkpoint_path(self) -> Path | None:
        return None if self.run_dir is None else self.run_dir / CHECKPOINT_NAME

    def _unwrapped(self) -> nn.Module:
        return getattr(self.model, "module", self.model)

    def save(self) -> None:
        if not (self.settings.checkpoint and self.ctx.is_main and self.checkpoint_path is not None):
            return
        save_checkpoint(
            self.checkpoint_path,
            {
                "model": self._unwrapped().state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "ema": None if self.ema is None else self.ema.state_dict(),
                "diagnostics": None if self.diag is None else self.diag.state_dict(),
                "epoch": self.state.epoch,
                "global_step": self.state.global_step,
                "best_eval": self.state.best_eval,
                "wandb_id": self.state.wandb_id,
                "history": self.state.history,
                "diagnostics_history": self.state.diagnostics_history,
            },
        )

    def try_resume(self) -> bool:
        """Load the run folder's newest readable checkpoint, if any (every rank reads the same file)."""
        point = (
            None
            if self.run_dir is None
            else load_resume_checkpoint(self.run_dir, move_unreadable=self.ctx.is_main)
        )
        if point is None:
            return False
        self.load_state(point[1])
        return True

    def load_state(self, ckpt: dict[str, Any]) -> None:
        """Continue from a checkpoint's state (see ``checkpoint.load_resume_checkpoint``)."""
        self._unwrapped().load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema") is not None:
            self.ema.load_state_dict(ckpt["ema"])
        if self.diag is not None and ckpt.get("diagnostics") is not None:
            self.diag.load_state_dict(ckpt["diagnostics"])
        self.state = TrainState(
            ckpt["epoch"],
            ckpt["global_step"],
            ckpt["best_eval"],
            ckpt.get("wandb_id"),
            list(ckpt.get("history", [])),
            list(ckpt.get("diagnostics_history") or []),
        )
        set_rng_state(ckpt["rng"])

    # ----------------------------------------------------------------------------------------------- loop
    def fit(self) -> TrainState:
        for epoch in range(self.state.epoch, self.settings.epochs):
            train_metrics = self._train_epoch(epoch)
            row: dict[str, Any] = {EPOCH: epoch, **train_metrics}
            last = epoch + 1 == self.settings.epochs
            if last or (epoch + 1) % self.settings.eval_every == 0:
                row.update({eval_key(k): v for k, v in self.evaluate(self.model, final=last).items()})
                if self.ema is not None:
                    ema = self.evaluate(self.ema, final=last)
                    row.update({eval_key(f"ema_{k}"): v for k, v in ema.items()})
            diag_rows: list[dict[str, Any]] = []
            if self.diag is not None:
                diag_summary, diag_rows = self.diag.epoch_end(epoch)
                row.update(diag_summary)
            skipped = self._take_skipped_images()
            if skipped:
                row["skipped_images"] = skipped
            primary = f"eval_{self.task.primary_metric}"
            if primary in row:
                best = self.state.best_eval
                self.state.best_eval = (
                    row[primary]
                    if not math.isfinite(best)
                    else best_of((best, row[primary]), self.task.primary_metric)
                )
            self.state.epoch = epoch + 1
            self.state.history.append(row)
            self.state.diagnostics_history.extend(diag_rows)
            if self.on_epoch is not None and self.ctx.is_main:
                self.on_epoch(row, diag_rows)
            self.save()
            self._stop_if_asked(agree=True)
        return self.state

    def _stop_if_asked(self, agree: bool) -> None:
        """Raise ``RunInterrupted`` when a stop signal came. ``agree``: a point where the ranks of a distributed
        job meet, so that one signal (to any rank) stops them all at the same step."""
        received = None if self.stop is None else self.stop.received
        if not self.ctx.enabled:
            if received is not None:
                raise RunInterrupted(received)
        elif agree and broadcast_flag(received is not None, self.ctx, self.device):
            raise RunInterrupted(received or signal.SIGTERM)

    def _take_skipped_images(self) -> int:
        """Unreadable images the data skipped since the last call (``dataset.skip_unreadable_images``)."""
        take = getattr(self.data, "take_skipped_images", None)
        if take is None:
            return 0
        count = torch.tensor(float(take()), device=self.device)
        return int(all_reduce_sums({"skipped": count}, self.ctx)["skipped"].item())

    def _set_lr(self, step: int) -> float:
        factor = self.lr_factor(step)
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor
        return self.base_lrs[0] * factor

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.task.set_epoch(self.seed, epoch, self.ctx.rank)
        zero = torch.zeros((), device=self.device)
        sums = {key: zero.clone() for key in (*self.task.train_metric_names, "count")}
        bar = self._progress(epoch)
        started = time.perf_counter()
        steps = 0
        lr = self.base_lrs[0]
        for batch in self.data.train_batches(epoch):
            if steps >= self.steps_per_epoch:
                break
            self._stop_if_asked(agree=False)
            lr = self._set_lr(self.state.global_step)
            loss, batch_sums = self._train_step(batch)
            with torch.no_grad():
                for key, value in batch_sums.items():
                    sums[key] += value
            steps += 1
            self.state.global_step += 1
            if self.state.global_step % self.settings.log_every_n_steps == 0:
                self._check_finite(loss)
                self._report_step(loss, lr, bar)
                self._stop_if_asked(agree=True)
            elif bar is not None:
                bar.update(1)
        elapsed = time.perf_counter() - started
        if bar is not None:
            bar.close()
        totals = all_reduce_sums(sums, self.ctx)
        count = max(float(totals["count"]), 1.0)
        metrics = self.task.train_metrics(totals)
        train_loss = metrics[LOSS]
        if broadcast_flag(not math.isfinite(train_loss), self.ctx, self.device):
            raise DivergedError(f"training loss is {train_loss} at epoch {epoch}")
        return {
            **{train_key(key): value for key, value in metrics.items()},
            LR: lr,
            IMAGES_PER_S: count / max(elapsed, 1e-9),
            "epoch_time_s": elapsed,
            "step": self.state.global_step,
        }

    def _train_step(self, batch: Any) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss, sums = self.task.train_step(self.model, batch)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.settings.grad_clip_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.grad_clip_norm)
        if self.diag is not None:
            # Without clipping a fp16 GradScaler leaves the gradients scaled until its step: the diagnostics
            # divide its scale out of their gradient norms (the scale tensor, read without a host sync).
            scaled = self.scaler.is_enabled() and not self.settings.grad_clip_norm
            scale = self.scaler._get_scale_async() if scaled else None
            self.diag.before_step(self.state.global_step, grad_scale=scale)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.diag is not None:
            self.diag.after_step(self.state.global_step)
        if self.ema is not None:
            self._update_ema()
        return loss, sums

    def _check_finite(self, loss: torch.Tensor) -> None:
        # One host sync per logging interval, not per step.
        if broadcast_flag(not bool(torch.isfinite(loss.detach()).all()), self.ctx, self.device):
            raise DivergedError(f"training loss is {float(loss.detach())} at step {self.state.global_step}")

    def _report_step(self, loss: torch.Tensor, lr: float, bar: Any) -> None:
        values = {LOSS: float(loss.detach()), LR: lr}
        if bar is not None:
            bar.set_postfix(loss=f"{values[LOSS]:.3f}", lr=f"{lr:.3g}")
            bar.update(1)
        if self.on_step is not None and self.ctx.is_main:
            self.on_step(self.state.global_step, values)

    def _progress(self, epoch: int):
        if not (self.settings.progress and self.ctx.is_main):
            return None
        from tqdm.auto import tqdm

        return tqdm(
            total=self.steps_per_epoch,
            desc=f"epoch {epoch + 1}/{self.settings.epochs}",
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
        )

    # ------------------------------------------------------------------------------------------ evaluation
    def evaluate(self, model: nn.Module, final: bool = True) -> dict[str, float]:
        """Metrics over the whole evaluation set: per-rank sums, reduced once, divided by the global count.
        ``final`` lets a task run its costly checks (the adversarial task's AutoAttack and eps sweep) only at the end."""
        was_training = model.training
        model.eval()
        try:
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                sums = self.task.evaluate(model, self.data.eval_batches(), final=final)
        finally:
            model.train(was_training)
        return self.task.finalize(all_reduce_sums(sums, self.ctx))

    # ------------------------------------------------------------------------------------------------- EMA
    def _make_ema(self) -> nn.Module:
        if not 0.0 < float(self.settings.ema_decay) < 1.0:
            raise ValueError(
                f"Invalid train.ema_decay: {self.settings.ema_decay}; expected 0 < decay < 1 or null"
            )
        ema = copy.deepcopy(self._unwrapped())
        ema.requires_grad_(False)
        return ema

    @torch.no_grad()
    def _update_ema(self) -> None:
        src = self._unwrapped().state_dict()
        for name, value in self.ema.state_dict().items():
            if value.dtype.is_floating_point:
                value.lerp_(src[name], 1.0 - float(self.settings.ema_decay))
            else:
                value.copy_(src[name])
