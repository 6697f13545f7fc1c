"""The ``in_memory`` family: the whole data set as uint8 tensors on the device, augmented a batch at a time.

No DataLoader and no worker processes: a CIFAR batch is a gather from a tensor that already sits on
the device, so the input pipeline costs a few milliseconds per batch even on a laptop CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from adamp_repro.data.augment import crop_flip, draw_crop_flip
from adamp_repro.data.base import (
    Batch,
    ClassificationData,
    DataInfo,
    channel_stats,
    positive_int,
    require,
    resolve_root,
)
from adamp_repro.data.cifar_sources import CifarArrays, check_layout, load_cifar_arrays
from adamp_repro.data.sharding import (
    STREAM_AUGMENTATION,
    balanced_subset,
    epoch_permutation,
    eval_shard,
    make_generator,
    steps_per_epoch,
    train_shard,
)

GENERIC_HOW_TO_OBTAIN = (
    "set dataset.download=true (with internet) to fetch torchvision's copy into "
    "dataset.root, or point dataset.root at one of the allowed layouts"
)


class InMemoryData(ClassificationData):
    """Batches drawn from uint8 image tensors held on ``device``.

    Training batches: the epoch permutation (shared by all ranks) is split into strided per-rank
    shards; each batch is randomly cropped from the image zero-padded by ``crop_padding`` pixels and
    flipped left-right with probability 1/2 when ``hflip`` (see :mod:`adamp_repro.data.augment`).

    Attributes (besides :class:`ClassificationData`'s):
        train_images, eval_images: uint8 (N, 3, H, W) on ``device``, after subsetting, in the
            class-interleaved order when subset; read-only by convention (they may be a shared cache).
        train_labels, eval_labels: int64 (N,) on ``device``.
    """

    def __init__(
        self,
        info: DataInfo,
        arrays: CifarArrays,
        *,
        train_index: torch.Tensor | None,
        eval_index: torch.Tensor | None,
        batch_size: int,
        eval_batch_size: int,
        crop_padding: int,
        hflip: bool,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        def select(images: torch.Tensor, labels: torch.Tensor, index: torch.Tensor | None):
            if index is not None:
                images, labels = images[index], labels[index]
            return images.to(device), labels.to(device)

        self.train_images, self.train_labels = select(arrays.train_images, arrays.train_labels, train_index)
        self.eval_images, self.eval_labels = select(arrays.eval_images, arrays.eval_labels, eval_index)
        num_train = len(self.train_labels)
        super().__init__(
            info,
            num_train=num_train,
            num_eval=len(self.eval_labels),
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            steps_per_epoch=steps_per_epoch(num_train, batch_size, world_size),
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=device,
        )
        self.crop_padding = crop_padding
        self.hflip = hflip

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """See :meth:`ClassificationData.train_batches`; x is float32 (B, 3, H, W) in [0, 1]."""
        permutation = epoch_permutation(self.num_train, self.seed, epoch)
        shard = train_shard(permutation, self.rank, self.world_size, self.steps_per_epoch, self.batch_size)
        shard = shard.to(self.device)
        generator = make_generator(self.seed, epoch, self.rank, self.world_size, STREAM_AUGMENTATION)
        for step in range(self.steps_per_epoch):
            index = shard[step * self.batch_size : (step + 1) * self.batch_size]
            images = self.train_images[index]
            offsets, flips = draw_crop_flip(len(index), self.crop_padding, self.hflip, generator)
            images = crop_flip(images, offsets, flips, self.crop_padding)
            yield images.float().div_(255), self.train_labels[index]

    def eval_batches(self) -> Iterator[Batch]:
        """See :meth:`ClassificationData.eval_batches`."""
        shard = eval_shard(self.num_eval, self.rank, self.world_size).to(self.device)
        for start in range(0, len(shard), self.eval_batch_size):
            index = shard[start : start + self.eval_batch_size]
            yield self.eval_images[index].float().div_(255), self.eval_labels[index]


def check_in_memory_source(cfg: Mapping[str, Any], base: Path | None = None) -> None:
    """Refuse (``DataSourceMissing``, one line) an ``in_memory`` config whose root holds none of the layouts,
    by looking at file names only; relative roots are taken from ``base`` when given (see ``resolve_root``)."""
    root = require(cfg, "root")
    check_layout(
        cfg.get("format", "auto"),
        None if root is None else resolve_root(root, base),
        torchvision_name=cfg.get("torchvision_name"),
        download=bool(cfg.get("download", False)),
        how_to_obtain=cfg.get("how_to_obtain") or GENERIC_HOW_TO_OBTAIN,
        embedded_test=str(cfg.get("embedded_test", "mini")),
    )


def hold_out_validation(arrays: CifarArrays, validation: Mapping[str, Any] | None) -> tuple[CifarArrays, str]:
    """``dataset.validation: {size, seed}``: the arrays with ``size`` training images held out (class-balanced,
    drawn by ``seed`` alone, so every run and every optimizer of a study holds out the same images) as the
    evaluation split, the training split being the rest in its own order; and a label saying so. Unset: the
    arrays unchanged (the test set stays the evaluation split) and an empty label. The test images are never
    read by a run with a validation split."""
    if not validation:
        return arrays, ""
    size, seed = validation.get("size"), validation.get("seed", 0)
    labels = arrays.train_labels.numpy()
    classes = np.unique(labels)
    if isinstance(size, bool) or not isinstance(size, int) or not 0 < size < len(labels):
        raise ValueError(
            f"dataset.validation.size={size!r}; expected an integer in [1, {len(labels) - 1}] "
            f"(the training split has {len(labels)} images)"
        )
    rng = np.random.default_rng(seed)
    # Per class a random order; the held-out images are the first of each class, round robin over the classes.
    per_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    order = np.stack([p[: min(len(p) for p in per_class)] for p in per_class], axis=1).reshape(-1)
    if size > len(order):
        raise ValueError(f"dataset.validation.size={size} leaves no class-balanced training split")
    held = np.sort(order[:size])
    rest = np.setdiff1d(np.arange(len(labels)), held)
    held_t, rest_t = torch.from_numpy(held), torch.from_numpy(rest)
    split = dataclasses.replace(
        arrays,
        train_images=arrays.train_images[rest_t],
        train_labels=arrays.train_labels[rest_t],
        eval_images=arrays.train_images[held_t],
        eval_labels=arrays.train_labels[held_t],
    )
    return split, f"evaluated on {size} training images held out (seed {seed}), not the test set"


def build_in_memory_data(
    cfg: Mapping[str, Any],
    *,
    seed: int,
    train_subset: int | None,
    eval_subset: int | None,
    rank: int,
    world_size: int,
    device: torch.device,
) -> InMemoryData:
    """Build the ``in_memory``-family data of ``cfg`` (keys: see configs/dataset/cifar10.yaml)."""
    root = require(cfg, "root")
    torchvision_name = cfg.get("torchvision_name")
    arrays = load_cifar_arrays(
        cfg.get("format", "auto"),
        None if root is None else resolve_root(root),
        torchvision_name=torchvision_name,
        download=bool(cfg.get("download", False)),
        image_size=positive_int(cfg, "image_size"),
        how_to_obtain=cfg.get("how_to_obtain") or GENERIC_HOW_TO_OBTAIN,
        embedded_test=str(cfg.get("embedded_test", "mini")),
    )
    num_classes = positive_int(cfg, "num_classes")
    if len(arrays.class_names) != num_classes:
        raise ValueError(
            f"dataset.num_classes={num_classes}, but {arrays.source} has "
            f"{len(arrays.class_names)} classes {arrays.class_names[:12]}"
        )
    crop_padding = require(cfg, "crop_padding")
    if isinstance(crop_padding, bool) or not isinstance(crop_padding, int) or crop_padding < 0:
        raise ValueError(f"dataset.crop_padding must be a non-negative integer, got {crop_padding!r}")
    label = str(require(cfg, "label"))
    if arrays.jpeg_copy and "JPEG copy" not in label:
        # Results on the lossy JPEG copy are not comparable with published CIFAR-10 numbers: say so.
        label += " (JPEG copy)"
    info = DataInfo(
        num_classes=num_classes,
        mean=channel_stats(cfg, "mean"),
        std=channel_stats(cfg, "std"),
        label=label,
        class_names=arrays.class_names,
        source=arrays.source,
    )

    arrays, held_out = hold_out_validation(arrays, cfg.get("validation"))
    if held_out:
        info = dataclasses.replace(info, label=f"{info.label}; {held_out}")

    def subset_index(labels: torch.Tensor, subset: int | None, which: str) -> torch.Tensor | None:
        index = balanced_subset(labels.numpy(), subset, which)
        return None if index is None else torch.from_numpy(index)

    return InMemoryData(
        info,
        arrays,
        train_index=subset_index(arrays.train_labels, train_subset, "train_subset"),
        eval_index=subset_index(arrays.eval_labels, eval_subset, "eval_subset"),
        batch_size=positive_int(cfg, "batch_size"),
        eval_batch_size=positive_int(cfg, "eval_batch_size"),
        crop_padding=crop_padding,
        hflip=bool(require(cfg, "hflip")),
        seed=seed,
        rank=rank,
        world_size=world_size,
        device=device,
    )
