"""Checks on a composed config that fail before any work starts, naming the bad value and the allowed ones.

Hydra already rejects unknown group options; these checks cover values inside the groups. The builders check
their own inputs again (the optimizer classes validate hyper-parameters, the data layer checks paths).
"""

from __future__ import annotations

from omegaconf import DictConfig

SCALES = ("smoke", "mini", "paper")


def _positive_int(value, key: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        allowed = "a positive integer" + (" or null" if allow_none else "")
        raise ValueError(f"Invalid {key}: {value!r}; expected {allowed}")


def validate_config(cfg: DictConfig) -> None:
    if not isinstance(cfg.seed, int) or cfg.seed < 0:
        raise ValueError(f"Invalid seed: {cfg.seed!r}; expected a non-negative integer")
    if cfg.scale.name not in SCALES:
        raise ValueError(f"Invalid scale.name: {cfg.scale.name!r}; expected one of {list(SCALES)}")
    _positive_int(cfg.scale.epochs, "scale.epochs")
    _positive_int(cfg.scale.train_subset, "scale.train_subset", allow_none=True)
    _positive_int(cfg.scale.eval_subset, "scale.eval_subset", allow_none=True)
    _positive_int(cfg.scale.max_steps_per_epoch, "scale.max_steps_per_epoch", allow_none=True)
    _positive_int(cfg.dataset.batch_size, "dataset.batch_size")
    _positive_int(cfg.train.log_every_n_steps, "train.log_every_n_steps")
    _positive_int(cfg.train.eval_every, "train.eval_every")
    lr = cfg.optimizer.lr
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or lr < 0:
        raise ValueError(f"Invalid optimizer.lr: {lr!r}; expected a number >= 0")
    if cfg.train.grad_clip_norm is not None and cfg.train.grad_clip_norm <= 0:
        raise ValueError(f"Invalid train.grad_clip_norm: {cfg.train.grad_clip_norm}; expected > 0 or null")
    if cfg.resume not in ("auto", "never"):
        raise ValueError(f"Invalid resume: {cfg.resume!r}; expected 'auto' or 'never'")
    if "/" in str(cfg.run_name) or "/" in str(cfg.experiment_name):
        raise ValueError(
            f"Invalid run_name/experiment_name: {cfg.run_name!r}/{cfg.experiment_name!r}; "
            "expected names without '/'"
        )
    _check_model_name(str(cfg.model.name))


def _check_model_name(name: str) -> None:
    import timm

    from adamp_repro.models import close_model_names  # importing registers the CIFAR networks with timm

    if not timm.is_model(name):
        raise ValueError(
            f"Unknown model.name: {name!r}; not a timm model. Close matches: {close_model_names(name)}"
        )
