"""Checks across keys: values each fine alone that make an impossible (or silently altered) run together.

Each is refused before any data is read, in one line that says what to change. Refused rather than warned:
a warning scrolls away in a sweep's log while the run record keeps the config as written, so the record would
describe a run that did not happen (a warmup cut short, batch norm not synchronised).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from adamp_repro.config.messages import show, suggest
from adamp_repro.errors import ConfigError


def check_combinations(data: Mapping[str, Any]) -> None:
    """Raise ConfigError at the first impossible combination in the resolved config ``data``."""
    _check_model(data["model"], data["dataset"], data["task"])
    _check_optimizer_keys(data["optimizer"])
    _check_schedule(data["scheduler"], data["scale"])
    _check_device(data)


def _check_model(model: Mapping[str, Any], dataset: Mapping[str, Any], task: Mapping[str, Any]) -> None:
    # importing the models registers the CIFAR networks with timm
    from adamp_repro.models import check_model_kwargs, check_model_name

    name = model["name"]
    check_model_name(name)
    check_model_kwargs(model["kwargs"])
    _check_task_fits(model, dataset, task)
    if "tokenization" not in dataset:
        _check_input_size(name, model["kwargs"], dataset)


def _check_task_fits(model: Mapping[str, Any], dataset: Mapping[str, Any], task: Mapping[str, Any]) -> None:
    """A model takes what the data gives: token ids from a text data set (it has a ``tokenization``), images
    from the others; the language-modelling task needs token data, the image tasks image data; a language
    model's context holds the data's windows."""
    from adamp_repro.models import input_kind

    name, kind = model["name"], input_kind(model["name"])
    tokens = "tokenization" in dataset
    gives = f"dataset {dataset['name']!r} (family {dataset['family']})"
    if tokens and kind != "tokens":
        raise ConfigError(
            f"model.name={name!r} is an image model, but {gives} gives token windows; choose a language model "
            "(model=causal_transformer)"
        )
    if not tokens and kind == "tokens":
        raise ConfigError(
            f"model.name={name!r} is a language model, but {gives} gives images; choose a text data set "
            "(dataset=tinyshakespeare) or an image model"
        )
    if "_target_" not in task and (task["name"] == "language_model") != tokens:
        wanted = "task=language_model" if tokens else "an image task (task=classification or adversarial)"
        raise ConfigError(f"task.name={task['name']!r} does not fit {gives}; set {wanted}")
    context = model["kwargs"].get("context")
    if tokens and isinstance(context, int) and context < dataset["context"]:
        raise ConfigError(
            f"model.kwargs.context={context}: shorter than the data's windows (dataset.context="
            f"{dataset['context']}); set model.kwargs.context >= dataset.context"
        )


def _check_input_size(name: str, kwargs: Mapping[str, Any], dataset: Mapping[str, Any]) -> None:
    """Networks with a fixed input size (ViT, Swin: timm's ``pretrained_cfg.fixed_input_size``) take only the
    size they were built for: ``kwargs.img_size`` when given, else the size of their pretrained config."""
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(name)
    if pretrained is None or not pretrained.fixed_input_size or kwargs.get("dynamic_img_size"):
        return
    size = kwargs.get("img_size", list(pretrained.input_size[1:]))
    built = [size, size] if isinstance(size, int) else list(size)
    key = "crop_size" if "crop_size" in dataset else "image_size"
    fed = dataset[key]
    if built != [fed, fed]:
        raise ConfigError(
            f"model.name={name!r} takes {built[0]}x{built[1]} images only, but the data gives {fed}x{fed} "
            f"(dataset.{key}={fed}); set model.kwargs.img_size={fed} (on the command line "
            f"+model.kwargs.img_size={fed}) or choose a model that takes any size"
        )


def _check_optimizer_keys(optimizer: Mapping[str, Any]) -> None:
    """The keywords of a registered optimizer and their allowed values are ``optim.hyperparams``'s; an optimizer
    given by ``_target_`` or ``timm`` is checked against its class's signature and by the class itself."""
    from adamp_repro.optim.factory import OPTIMIZERS, check_optimizer_config, is_external
    from adamp_repro.optim.hyperparams import HYPERPARAMETERS

    if is_external(optimizer):
        check_optimizer_config(optimizer)
        return
    name = optimizer["name"]
    entry = OPTIMIZERS.get(name)
    if entry is None:
        raise ConfigError(
            f"optimizer.name={name!r}: expected one of {sorted(OPTIMIZERS)}, or a config that names its class "
            "(_target_: a torch.optim.Optimizer class, or timm: a timm optimizer name)"
        )
    allowed = entry.allowed()
    for key in optimizer:
        if key not in allowed:
            hint = suggest(key, allowed, ["optimizer"])
            raise ConfigError(f"optimizer.{key}={show(optimizer[key])}: not a keyword of {name!r}{hint}")
    for hyper in HYPERPARAMETERS[name].hypers:
        if hyper.key in optimizer:
            try:
                hyper.allowed.check(hyper.label, optimizer[hyper.key])
            except ValueError:
                raise ConfigError(
                    f"optimizer.{hyper.key}={show(optimizer[hyper.key])}: expected {hyper.allowed.describe()} "
                    f"({name})"
                ) from None


def _check_schedule(scheduler: Mapping[str, Any], scale: Mapping[str, Any]) -> None:
    warmup, epochs = scheduler.get("warmup_epochs", 0), scale["epochs"]
    if warmup > 0 and warmup >= epochs:
        raise ConfigError(
            f"scheduler.warmup_epochs={show(warmup)}: expected fewer than the run's scale.epochs={epochs} "
            "(the warmup would be cut at the end of the run and the schedule never start); lower it, or run "
            "more epochs"
        )
    fracs = scheduler.get("milestones_frac")
    if fracs is not None and fracs != sorted(fracs):
        raise ConfigError(f"scheduler.milestones_frac={show(fracs)}: expected increasing fractions in (0, 1]")


def _check_device(data: Mapping[str, Any]) -> None:
    import torch

    device = data["device"]
    cuda = torch.cuda.is_available()
    if device.startswith("cuda") and not cuda:
        raise ConfigError(f"device={device!r}: CUDA is not available here; expected auto or cpu")
    world_size = max(int(os.environ.get(k, "1") or 1) for k in ("WORLD_SIZE", "SLURM_NTASKS"))
    on_cpu = device == "cpu" or (device == "auto" and not cuda)
    if data["distributed"]["sync_batchnorm"] and world_size > 1 and on_cpu:
        raise ConfigError(
            f"distributed.sync_batchnorm=true: SyncBatchNorm needs CUDA and this {world_size}-process job runs "
            f"on the CPU (device={device}); set distributed.sync_batchnorm=false"
        )
