"""``build_data``: one dataset config -> the batches of one rank, whichever family the data set is."""

from __future__ import annotations

from typing import Any

import torch

from adamp_repro.data.base import ClassificationData, plain_config, require
from adamp_repro.data.image_folder import build_loader_data
from adamp_repro.data.in_memory import build_in_memory_data
from adamp_repro.data.sharding import check_rank

# dataset.family -> builder. "cifar": small images held in memory and augmented on the device;
# "imagenet": ImageFolder trees read from disk by DataLoader workers.
BUILDERS = {"cifar": build_in_memory_data, "imagenet": build_loader_data}


def build_data(
    dataset_cfg: Any,
    *,
    seed: int,
    train_subset: int | None = None,
    eval_subset: int | None = None,
    rank: int = 0,
    world_size: int = 1,
    device: torch.device | str = "cpu",
) -> ClassificationData:
    """Build the train and eval batches of ``dataset_cfg`` for rank ``rank`` of ``world_size``.

    Args:
        dataset_cfg: a config from configs/dataset/ (OmegaConf DictConfig or dict); its ``family``
            key picks the pipeline.
        seed: non-negative run seed; with the epoch, rank and world size it fixes every batch.
        train_subset, eval_subset: use only the class-balanced first N samples of a split (None: all).
        rank, world_size: this process's place in a distributed run.
        device: where the batches (and, for the CIFAR family, the whole data set) live.

    Returns:
        A :class:`~adamp_repro.data.base.ClassificationData`.
    """
    cfg = plain_config(dataset_cfg)
    family = require(cfg, "family")
    if family not in BUILDERS:
        raise ValueError(
            f"dataset.family={family!r} (dataset {cfg.get('name')!r}) is not one of {sorted(BUILDERS)}"
        )
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    check_rank(rank, world_size)
    return BUILDERS[family](
        cfg,
        seed=seed,
        train_subset=train_subset,
        eval_subset=eval_subset,
        rank=rank,
        world_size=world_size,
        device=torch.device(device),
    )
