"""``RunLife``: the life of one run's record, in one place.

``start`` writes the config and provenance and marks the run ``running`` (rows kept by a resume survive, a
short file is rebuilt from the checkpoint's rows) and opens the W&B mirror; ``on_epoch`` / ``on_step`` are the
trainer's callbacks (``Trainer(on_epoch=..., on_step=...)``); ``running()`` wraps the training and writes the
final ``summary.json`` on every way out:

=====================================  ==============  ============================================
the training ...                       status          then
=====================================  ==============  ============================================
returns                                ``completed``
raises ``DivergedError`` (NaN loss)    ``diverged``    the run returns its summary (a result)
is stopped by a signal, Ctrl-C or a    ``interrupted`` the exception goes on (the runner ends as the
launcher's exit                                        signal would have)
raises anything else                   ``failed``      the exception goes on, its line in ``error``
=====================================  ==============  ============================================

The final summary also names the code that ran: ``code_that_ran()`` (given by the runner: the optimizer's forms
and the fused kernels' build) goes into this segment's provenance entry and, with the earlier segments' entries,
into the summary (``optimizer_forms``, ``fused_cpu_build``: one entry per segment; ``optimizer_forms_mixed``);
key names and meaning in ``tracking.schema``.

Only rank 0 of a distributed job has a record (``record=None`` elsewhere): the other ranks compute the same
summary and write nothing.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from adamp_repro.tracking.records import RunRecord
from adamp_repro.tracking.schema import (
    EPOCH,
    FUSED_CPU_BUILD,
    IMAGES_PER_S,
    MEAN_WEIGHT_NORM,
    OPTIMIZER_FORMS,
    OPTIMIZER_FORMS_MIXED,
    ROBUST_TOP1,
    TOP1,
    TRAIN_LOSS,
    at_init_key,
    eval_key,
    forms_mixed,
    summary_metrics,
)
from adamp_repro.tracking.wandb_mirror import WandbMirror
from adamp_repro.train.resume import code_changed
from adamp_repro.train.stopping import RunInterrupted
from adamp_repro.train.trainer import DivergedError, TrainState

log = logging.getLogger("adamp_repro")

BRIEF_KEYS = (TRAIN_LOSS, eval_key(TOP1), eval_key(ROBUST_TOP1), MEAN_WEIGHT_NORM, IMAGES_PER_S)


class RunLife:
    """The record of one run from start to final summary (module docstring).

    Args:
        record: the run folder's writer, or None on the ranks that write nothing.
        identity: the identifying keys of the summary (run name, table, task settings, ...).
        primary_metric: the task's evaluation key whose best value the summary reports.
        run_dir: the run folder (its path goes into the summary).
        at_init: the weight diagnostics before the first step (``at_init_<key>`` in the summary), or None.
        code_that_ran: called once when the training ends; returns this segment's ``optimizer_forms`` and
            ``fused_cpu_build`` entries (``tracking.schema``), or None to record neither.
    """

    def __init__(
        self,
        record: RunRecord | None,
        identity: Mapping[str, Any],
        primary_metric: str,
        run_dir: Path,
        at_init: Mapping[str, float] | None = None,
        code_that_ran: Callable[[], Mapping[str, Any]] | None = None,
    ):
        self.record, self.identity = record, dict(identity)
        self.code_that_ran = code_that_ran
        self.primary_metric, self.run_dir, self.at_init = primary_metric, run_dir, at_init
        self.wandb: WandbMirror | None = None
        self.state: TrainState | None = None
        self.summary: dict[str, Any] = {}

    def start(
        self,
        state: TrainState,
        config_yaml: str,
        provenance: Mapping[str, Any],
        earlier_segments: list[dict[str, Any]],
        logger_cfg: Any,
        wandb_name: str,
        wandb_config: Mapping[str, Any],
    ) -> None:
        """Mark the run ``running`` and open the mirror; ``state``: the trainer's (after any resume)."""
        self.state = state
        if self.record is None:
            return
        segments = self.record.start(
            config_yaml, provenance, self.identity, earlier_segments=earlier_segments
        )
        self.identity |= {"segments": len(segments), "code_changed_on_resume": code_changed(segments)}
        for name in self.record.restore_rows(state.epoch, state.history, state.diagnostics_history):
            log.warning("%s was missing or short: rebuilt from the checkpoint's rows", name)
        self.wandb = WandbMirror(
            logger_cfg,
            name=wandb_name,
            run_dir=self.run_dir,
            config=dict(wandb_config),
            resume_id=state.wandb_id,
        )
        state.wandb_id = self.wandb.run_id

    def on_epoch(self, row: dict[str, Any], diag_rows: list[dict[str, Any]]) -> None:
        if self.record is not None:
            self.record.log_epoch(row, diag_rows)
        if self.wandb is not None:
            self.wandb.log_epoch(row)
        log.info("epoch %d: %s", row[EPOCH] + 1, brief(row))

    def on_step(self, step: int, values: dict[str, float]) -> None:
        if self.wandb is not None:
            self.wandb.log_step(step, values)

    @contextmanager
    def running(self) -> Iterator[None]:
        """Wrap the training: the final summary is written however it ends (module docstring's table)."""
        started = time.perf_counter()
        status, error = "failed", None
        try:
            yield
            status = "completed"
        except DivergedError as exc:
            status, error = "diverged", str(exc)
            log.error("run diverged: %s", exc)
        except RunInterrupted as exc:
            status, error = "interrupted", f"stopped by {exc}"
            raise
        except KeyboardInterrupt:
            status, error = "interrupted", "stopped by SIGINT (KeyboardInterrupt)"
            raise
        except SystemExit as exc:  # submitit's requeue on preemption or a time limit exits from its handler
            status, error = "interrupted", f"stopped by SystemExit({exc.code}) (a launcher's requeue or exit)"
            raise
        except Exception as exc:
            status, error = "failed", "".join(traceback.format_exception_only(type(exc), exc)).strip()
            raise
        finally:
            self.finish(status, error, time.perf_counter() - started)

    def finish(self, status: str, error: str | None, wall_time_s: float) -> dict[str, Any]:
        """Write the final summary (and close the mirror); returns it."""
        history = [] if self.state is None else self.state.history
        summary = (
            self.identity
            | summary_metrics(history, self.primary_metric)
            | {"status": status, "error": error, "wall_time_s": wall_time_s, "run_dir": str(self.run_dir)}
        )
        if self.at_init is not None:  # the weights before the first step (the paper's curves start there)
            summary |= {at_init_key(k): v for k, v in self.at_init.items()}
        skipped = sum(int(row.get("skipped_images", 0)) for row in history)
        if skipped:
            summary["skipped_images"] = skipped
            log.warning(
                "WARNING: %d unreadable images were skipped (dataset.skip_unreadable_images)", skipped
            )
        summary |= self._code_keys()
        if self.record is not None:
            summary = self.record.write_summary(summary)
        if self.wandb is not None:
            self.wandb.finish(summary)
        self.summary = summary
        return summary

    def _code_keys(self) -> dict[str, Any]:
        """This segment's code that ran, written into its provenance entry; the summary keys of all segments."""
        if self.code_that_ran is None:
            return {}
        try:
            code = dict(self.code_that_ran())
        except Exception as exc:  # noqa: BLE001 - the final summary is written however this goes
            log.warning("could not describe the code that ran (%s: %s)", type(exc).__name__, exc)
            return {}
        segments = self.record.end_segment(code) if self.record is not None else []
        segments = segments or [code]  # no record (other ranks), or a record never started
        forms = [segment.get(OPTIMIZER_FORMS) for segment in segments]
        return {
            OPTIMIZER_FORMS: forms,
            OPTIMIZER_FORMS_MIXED: forms_mixed(forms),
            FUSED_CPU_BUILD: [segment.get(FUSED_CPU_BUILD) for segment in segments],
        }


def brief(row: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={row[k]:.4g}" for k in BRIEF_KEYS if isinstance(row.get(k), float))
