"""``build_data``: one dataset config -> the batches of one rank, whichever family the data set is;
``check_source``: the cheap check that the data is there, made before any run folder exists."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from adamp_repro.data.base import ClassificationData, plain_config, require
from adamp_repro.data.image_folder import build_loader_data, check_image_folder_source
from adamp_repro.data.in_memory import build_in_memory_data, check_in_memory_source
from adamp_repro.data.sharding import check_rank
from adamp_repro.data.text import build_text_data, check_text_source

# dataset.family -> builder. The family names a storage layout, not a data set. "in_memory": the whole data
# set held in memory as tensors and augmented on the device; "image_folder": ImageFolder trees read from disk
# by DataLoader workers; "text": a token stream from a text file, cut into windows.
BUILDERS = {"in_memory": build_in_memory_data, "image_folder": build_loader_data, "text": build_text_data}
# dataset.family -> its data-source check (file and folder names only, nothing decoded; the text family counts
# the characters of its file, to refuse a context longer than a split).
SOURCE_CHECKS = {
    "in_memory": check_in_memory_source,
    "image_folder": check_image_folder_source,
    "text": check_text_source,
}
# Old spellings of dataset.family, still read (a config or run record written before the rename).
FAMILY_ALIASES = {"cifar": "in_memory", "imagenet": "image_folder"}


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
        device: where the batches (and, for the ``in_memory`` family, the whole data set) live.

    Returns:
        A :class:`~adamp_repro.data.base.ClassificationData`.
    """
    cfg = plain_config(dataset_cfg)
    family = require(cfg, "family")
    family = FAMILY_ALIASES.get(family, family)
    if family not in BUILDERS:
        raise ValueError(
            f"dataset.family={family!r} (dataset {cfg.get('name')!r}) is not one of {list(BUILDERS)} "
            f"(old spellings, still read: {', '.join(map(repr, FAMILY_ALIASES))})"
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


def check_source(dataset_cfg: Any, base: Path | None = None) -> None:
    """Refuse a dataset config whose data is not where ``dataset.root`` says, before any work: raises
    ``data.base.DataSourceMissing`` (a UsageError) in one line naming ``dataset.root``, its value, whether it
    exists, the layouts the family reads and how to obtain the data (the config's ``how_to_obtain``).

    Cheap: it looks at file and folder names only and decodes nothing. A family it does not know is left to
    the config schema. ``base``: the folder relative roots are taken from (default: the launch directory).
    """
    cfg = plain_config(dataset_cfg)
    family = cfg.get("family")
    check = SOURCE_CHECKS.get(FAMILY_ALIASES.get(family, family))
    if check is not None:
        check(cfg, base)
