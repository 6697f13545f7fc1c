"""``run(cfg)``: one training job from a composed config to a finished run record.

The Hydra entry point (``adamp_repro.cli.train``: ``adamp-train``, ``scripts/train.py``) only composes the config
and calls this; tests call it directly.
``_run`` composes every object of the run at its top, in a fixed order (seed -> data -> model -> optimizer ->
task -> diagnostics -> record -> trainer), so the same config and seed give the same numbers. The record's life
is one object, ``train.life.RunLife``: its ``summary.json`` is written however the training ends: a crash
still leaves a record with status ``failed`` and the error, a NaN loss leaves ``diverged``, Ctrl-C, SIGTERM and
SIGHUP leave ``interrupted`` with the signal (see ``train.stopping``), an unreadable checkpoint leaves ``failed``.

Before the run folder exists, ``check_before_work`` refuses a bad config value or a missing data source in one
line (a UsageError). Every line the run logs starts with its name (``run_tag``). Before anything is written,
rank 0 locks the run folder (``tracking.run_lock``); before anything is read, a
resume checks that the package's source hash is the one the run's last segment recorded (``allow_code_change``
lets it go on anyway, and the summary then says ``code_changed_on_resume``). What happens on each fault, and
the way out, is in docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from adamp_repro.config import validate_config
from adamp_repro.data import build_data, check_source
from adamp_repro.data.build import FAMILY_ALIASES
from adamp_repro.models import build_model
from adamp_repro.optim import build_optimizer, fused_cpu
from adamp_repro.optim.forms import describe_optimizer
from adamp_repro.tracking.provenance import collect_provenance
from adamp_repro.tracking.records import RunRecord, is_completed, read_summary
from adamp_repro.tracking.run_lock import RunLock
from adamp_repro.tracking.schema import (
    EVAL_SPLIT,
    FUSED_CPU_BUILD,
    OPTIMIZER_FORMS,
    STUDY,
    STUDY_ROLE,
    STUDY_TRIAL,
    TEST_SPLIT,
    VALIDATION_SPLIT,
)
from adamp_repro.train.diagnostics import WeightDiagnostics, normalised_weights
from adamp_repro.train.distributed import DistContext, init_distributed, resolve_device, shutdown
from adamp_repro.train.life import RunLife
from adamp_repro.train.resume import prepare_resume
from adamp_repro.train.schedule import build_lr_factor
from adamp_repro.train.stopping import RunInterrupted, StopSignals, exit_by_signal
from adamp_repro.train.tasks import build_task
from adamp_repro.train.trainer import Trainer, TrainerSettings

log = logging.getLogger("adamp_repro")

# Keys that do not change what a run computes: they stay out of the run folder's config hash.
VOLATILE_KEYS = (
    "logger",
    "progress",
    "resume",
    "output_root",
    "threads",
    "device",
    "hydra",
    "run_name",
    "allow_code_change",
)
# Options that change a run only when set: at this value they stay out of the hash, so adding one to a config
# file leaves every earlier record in its folder. Dotted paths.
HASHED_ONLY_WHEN_SET = {
    "dataset.skip_unreadable_images": False,
    "optimizer.scale_invariant_weight_decay": None,
    "dataset.validation": None,  # a held-out split (tuning studies)
    "study": None,  # a tuning study's identity (adamp_repro.tune)
}
# Lookup tables a run reads its values from, never hashed themselves: a tuning study's drawn points and chosen
# trials (the values the run takes from them are hashed where they land, e.g. ``optimizer.lr``), so a study that
# adds an optimizer or a trial moves no earlier run's folder. Dotted paths.
HASHED_NEVER = ("study.points", "study.chosen")
# Renamed values: the hash reads each under the spelling it has always used, so a rename moves no run folder
# and a config in the old spelling and one in the new map to the same folder. Dotted path -> {new: hashed}.
# A later rename of the same value adds its new spelling here, mapped to the same hashed spelling.
HASH_SPELLINGS = {"dataset.family": {new: old for old, new in FAMILY_ALIASES.items()}}


def config_hash(cfg: DictConfig) -> str:
    """Eight hex digits identifying everything that changes a run's numbers (seed included).

    The hash is taken on a canonical form of the resolved config: ``VOLATILE_KEYS`` (and
    ``distributed.backend``) left out, each ``HASHED_ONLY_WHEN_SET`` option left out at its unset value, each
    ``HASHED_NEVER`` lookup table left out, and each renamed value of ``HASH_SPELLINGS`` read in its hashed
    spelling (``dataset.family: in_memory`` is
    hashed as ``cifar``, its spelling before the rename). So none of these changes moves a run folder.
    """
    data = OmegaConf.to_container(cfg, resolve=True)
    for key in VOLATILE_KEYS:
        data.pop(key, None)
    data.get("distributed", {}).pop("backend", None)
    for dotted, default in HASHED_ONLY_WHEN_SET.items():
        node, key = _holder(data, dotted)
        if node is not None and key in node and node[key] == default:
            del node[key]
    for dotted in HASHED_NEVER:
        node, key = _holder(data, dotted)
        if node is not None:
            node.pop(key, None)
    for dotted, spellings in HASH_SPELLINGS.items():
        node, key = _holder(data, dotted)
        if node is not None and isinstance(node.get(key), str) and node[key] in spellings:
            node[key] = spellings[node[key]]
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:8]


def _holder(data: dict[str, Any], dotted: str) -> tuple[dict[str, Any] | None, str]:
    """The mapping holding the dotted key ``dotted`` in ``data`` (None where a parent is missing) and the
    key's last part."""
    *parents, key = dotted.split(".")
    node: Any = data
    for parent in parents:
        node = node.get(parent) if isinstance(node, dict) else None
    return (node if isinstance(node, dict) else None), key


def run_dir_for(cfg: DictConfig) -> Path:
    """``<output_root>/<experiment>/<scale>/<run_name>-<hash>``: the same config always maps to the same folder."""
    return Path(cfg.output_root) / cfg.experiment_name / cfg.scale.name / f"{cfg.run_name}-{config_hash(cfg)}"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _identity(cfg: DictConfig, data: Any) -> dict[str, Any]:
    return {
        "run_name": cfg.run_name,
        "experiment": cfg.experiment_name,
        "scale": cfg.scale.name,
        "seed": int(cfg.seed),
        "model": cfg.model.name,
        "dataset": cfg.dataset.name,
        "dataset_label": getattr(data, "label", cfg.dataset.get("label")),
        "optimizer": cfg.optimizer.name,
        "optimizer_values": optimizer_values(cfg),
        "task": cfg.task.name,
        "table_id": cfg.table.id,
        "table_block": cfg.table.block,
        "table_model": cfg.table.model,
        "epochs_planned": int(cfg.scale.epochs),
        EVAL_SPLIT: VALIDATION_SPLIT if cfg.dataset.get("validation") else TEST_SPLIT,
        **study_identity(cfg),
    }


def study_identity(cfg: DictConfig) -> dict[str, Any]:
    """The summary keys of a tuning study's run (``tracking.schema``: study, role, trial); none for another run."""
    study = cfg.get("study")
    if not study:
        return {}
    trial = study.get("trial")
    return {
        STUDY: str(study.name),
        STUDY_ROLE: str(study.role),
        STUDY_TRIAL: None if trial is None else int(trial),
    }


NO_RECIPE_ENTRY = "optimizer file (no recipe entry)"


def optimizer_values(cfg: DictConfig) -> str:
    """Where the run's optimizer hyper-parameters come from: ``recipe.<name>`` when the experiment has an
    entry for the optimizer (the optimizer files read theirs with oc.select), else the optimizer file's own
    values (a one-off run: a user's optimizer, or one the experiment has no recipe for). Recorded in the
    summary, not the config, so that no run's hash moves."""
    name = str(cfg.optimizer.name)
    return f"recipe.{name}" if name in (cfg.get("recipe") or {}) else NO_RECIPE_ENTRY


def check_before_work(cfg: DictConfig, *, data: bool = True, base: Path | None = None) -> None:
    """Every refusal a run makes before its folder exists, as a UsageError (one line): the config schema, the
    task's own checks (attack settings) and, with ``data``, the data source (``data.check_source``: file names
    only; relative roots taken from ``base``, default the launch directory). A run whose record is already
    complete needs no data (``resume: auto`` returns it as it is), so its data source is not checked."""
    validate_config(cfg)
    build_task(cfg.task)
    run_dir = run_dir_for(cfg) if base is None else Path(base) / run_dir_for(cfg)
    if data and not (cfg.resume == "auto" and is_completed(run_dir)):
        check_source(cfg.dataset, base)


def run_tag(cfg: DictConfig) -> str:
    """``[<experiment> <optimizer> s<seed>]``: the prefix of every line a run logs, so that the interleaved
    output of runs side by side can be told apart."""
    return f"[{cfg.experiment_name} {cfg.optimizer.name} s{cfg.seed}]"


class _RunTagFilter(logging.Filter):
    """Prefixes each record of the package logger with the run's tag (the message format stays Hydra's)."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        if not message.startswith(self.tag):
            # %-escaped: the tag becomes part of the format string the record's args are merged into
            escaped = self.tag.replace("%", "%%") if record.args else self.tag
            record.msg = f"{escaped} {message}"
        return True


def run(cfg: DictConfig) -> dict[str, Any]:
    """Train and evaluate one configuration; return its summary (also written to ``summary.json``)."""
    check_before_work(cfg)  # before the run folder exists: a refused run writes nothing
    tag = _RunTagFilter(run_tag(cfg))
    log.addFilter(tag)
    try:
        return _locked_run(cfg)
    finally:
        log.removeFilter(tag)


def _locked_run(cfg: DictConfig) -> dict[str, Any]:
    if cfg.threads:
        torch.set_num_threads(int(cfg.threads))
    if cfg.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    device = resolve_device(str(cfg.device))
    ctx = init_distributed(str(cfg.distributed.backend), device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device(f"cuda:{ctx.local_rank}")
    run_dir = run_dir_for(cfg)
    stops = StopSignals().install()
    lock = RunLock(run_dir) if ctx.is_main else None
    stopped_by = None
    try:
        if lock is not None:
            lock.acquire()  # before anything is read or written: a second process of this run stops here
        if cfg.resume == "auto" and is_completed(run_dir):
            log.info("run already completed: %s", run_dir)
            return read_summary(run_dir)
        return _run(cfg, device, ctx, run_dir, stops, lock)
    except RunInterrupted as exc:
        stopped_by = exc.signum
        raise
    finally:
        if lock is not None:
            lock.release()
        stops.restore()
        shutdown(ctx)
        if stopped_by is not None:
            exit_by_signal(stopped_by)  # the record is written: end as the signal would have (128 + signum)


def _run(
    cfg: DictConfig,
    device: torch.device,
    ctx: DistContext,
    run_dir: Path,
    stops: StopSignals,
    lock: RunLock | None,
) -> dict[str, Any]:
    # ---- composition: every object of the run, in the order that fixes its random draws
    resume_point, earlier_segments = prepare_resume(cfg, ctx, run_dir, _identity(cfg, None))
    seed_everything(int(cfg.seed))
    data = build_data(
        cfg.dataset,
        seed=int(cfg.seed),
        train_subset=cfg.scale.train_subset,
        eval_subset=cfg.scale.eval_subset,
        rank=ctx.rank,
        world_size=ctx.world_size,
        device=device,
    )
    # The data keeps with the run what a resume must find unchanged (the text family's vocabulary).
    data.bind_run_folder(run_dir, resuming=resume_point is not None, write=ctx.is_main)
    model = build_model(cfg.model, data.num_classes, data.mean, data.std).to(device)
    if _channels_last(cfg, device):
        model = model.to(memory_format=torch.channels_last)
    if ctx.enabled and cfg.distributed.sync_batchnorm:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    log.info(
        "optimizer %s: values from %s (experiment %s): lr=%s, weight_decay=%s",
        cfg.optimizer.name,
        optimizer_values(cfg),
        cfg.experiment_name,
        cfg.optimizer.lr,
        cfg.optimizer.get("weight_decay", 0.0),
    )
    # The weights followed by a normalisation layer (the diagnostics' structural set): a config may give them a
    # decay of their own (optimizer.scale_invariant_weight_decay).
    optimizer = build_optimizer(_scaled_optimizer_cfg(cfg, ctx), model, normalised_weights(model))
    train_model = model
    if ctx.enabled:
        train_model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    task = build_task(cfg.task)
    diagnostics = None
    if cfg.diagnostics.enabled:
        diagnostics = WeightDiagnostics(
            model,
            optimizer,
            every_n_steps=int(cfg.diagnostics.every_n_steps),
            delta=float(cfg.optimizer.get("delta", 0.1)),
        )
    settings = _trainer_settings(cfg)
    steps_per_epoch = settings.epoch_steps(data.steps_per_epoch)
    lr_factor = build_lr_factor(cfg.scheduler, settings.epochs * steps_per_epoch, steps_per_epoch)
    identity = _identity(cfg, data) | {"world_size": ctx.world_size, "task_settings": task.describe()}
    if lock is not None:
        identity["run_lock"] = lock.status
    life = RunLife(
        RunRecord(run_dir) if ctx.is_main else None,
        identity,
        task.primary_metric,
        run_dir,
        at_init=None if diagnostics is None else diagnostics.at_init,
        code_that_ran=lambda: code_that_ran(optimizer),
    )
    trainer = Trainer(
        model=train_model,
        optimizer=optimizer,
        task=task,
        data=data,
        lr_factor=lr_factor,
        settings=settings,
        device=device,
        ctx=ctx,
        run_dir=run_dir,
        seed=int(cfg.seed),
        diagnostics=diagnostics,
        on_epoch=life.on_epoch,
        on_step=life.on_step,
        stop=stops,
    )

    # ---- the run: resume, start the record, train; the record's life is RunLife's
    segment: dict[str, Any] = {}
    if resume_point is not None:
        (path, ckpt), resume_point = resume_point, None
        trainer.load_state(ckpt)
        del ckpt  # the state now lives in the model and optimizer
        segment = {"resumed_from": path.name, "resumed_after_epoch": trainer.state.epoch}
        log.info("resuming %s from %s after epoch %d", run_dir, path.name, trainer.state.epoch)
    life.start(
        trainer.state,
        OmegaConf.to_yaml(cfg, resolve=True),
        collect_provenance(device, int(cfg.seed), ctx.world_size) | segment,
        earlier_segments,
        logger_cfg=cfg.logger,
        wandb_name=f"{cfg.run_name}",
        wandb_config=OmegaConf.to_container(cfg, resolve=True) | {"run_dir": str(run_dir)},
    )
    with life.running():
        trainer.fit()
    return life.summary


def code_that_ran(optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """What stepped the weights in this process (a segment's ``optimizer_forms`` and ``fused_cpu_build``)."""
    return {OPTIMIZER_FORMS: describe_optimizer(optimizer), FUSED_CPU_BUILD: fused_cpu.build_info()}


def _trainer_settings(cfg: DictConfig) -> TrainerSettings:
    return TrainerSettings(
        epochs=int(cfg.scale.epochs),
        max_steps_per_epoch=cfg.scale.max_steps_per_epoch,
        grad_clip_norm=cfg.train.grad_clip_norm,
        amp=str(cfg.train.amp),
        ema_decay=cfg.train.ema_decay,
        log_every_n_steps=int(cfg.train.log_every_n_steps),
        eval_every=int(cfg.train.eval_every),
        checkpoint=bool(cfg.train.checkpoint),
        progress=_progress_enabled(cfg.progress),
    )


def _channels_last(cfg: DictConfig, device: torch.device) -> bool:
    setting = cfg.train.channels_last
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def _progress_enabled(setting: Any) -> bool:
    if setting == "auto":
        return sys.stderr.isatty()
    return bool(setting)


def _scaled_optimizer_cfg(cfg: DictConfig, ctx: DistContext) -> DictConfig:
    """Apply the stated lr rule for the global batch (``distributed.lr_scaling``); the default keeps lr."""
    opt_cfg = cfg.optimizer.copy()
    rule = cfg.distributed.lr_scaling
    if rule == "linear":
        global_batch = int(cfg.dataset.batch_size) * ctx.world_size
        opt_cfg.lr = float(opt_cfg.lr) * global_batch / int(cfg.distributed.reference_batch)
    elif rule != "none":
        raise ValueError(f"Invalid distributed.lr_scaling: {rule!r}; expected 'none' or 'linear'")
    return opt_cfg
