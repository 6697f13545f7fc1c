"""The ``image_folder`` family: ImageFolder trees at ``root/train`` and ``root/val`` read by a DataLoader.

Train: RandomResizedCrop(crop_size) + horizontal flip; eval: Resize(resize_size) + CenterCrop(crop_size);
both end in ToTensor, so x is in [0, 1]: the mean/std Normalize lives inside the model.

Determinism: the sampler, iterated in the main process, yields ``(index, sample_seed)`` pairs; the
worker applies the random transform under a torch RNG seeded with ``sample_seed`` (saved and restored
around it). The augmentation of a sample is thus a function of (seed, epoch, sample) alone: the same
with 0 or 8 workers, persistent or not, and after a resume.

An image that cannot be read (truncated, not an image) is an error naming its path. With
``dataset.skip_unreadable_images: true`` it is left out of its batch instead, with a warning naming it; the
trainer counts the skipped images per epoch (``skipped_images`` in ``metrics.csv`` and the summary).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from adamp_repro.data.base import (
    Batch,
    ClassificationData,
    DataInfo,
    DataSourceMissing,
    channel_stats,
    positive_int,
    require,
    resolve_root,
)
from adamp_repro.data.sharding import (
    STREAM_SAMPLE_SEEDS,
    balanced_subset,
    epoch_permutation,
    eval_shard,
    make_generator,
    steps_per_epoch,
    train_shard,
)
from adamp_repro.errors import UsageError

log = logging.getLogger("adamp_repro")

TRAIN_DIR, EVAL_DIR = "train", "val"
_UNREADABLE = "cannot read image "
INTERPOLATIONS = {"bilinear": T.InterpolationMode.BILINEAR, "bicubic": T.InterpolationMode.BICUBIC}
GENERIC_HOW_TO_OBTAIN = "point dataset.root at a folder holding train/<class>/* and val/<class>/* images"


class UnreadableImageError(UsageError, OSError):
    """An image file of the tree that PIL cannot decode; the one-line message names the file."""


def load_rgb(path: str) -> Image.Image:
    """Open an image file as RGB (some ImageNet and Imagenette images are greyscale or CMYK)."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        # PIL's own message ("Truncated File Read", "image file is truncated") names no file.
        raise UnreadableImageError(
            f"{_UNREADABLE}{path}: {type(exc).__name__}: {exc}; replace or delete the file, or set "
            "dataset.skip_unreadable_images=true to leave such images out (counted in the run's summary)"
        ) from exc


def train_transform(
    crop_size: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool, interpolation: str
) -> Callable[[Image.Image], torch.Tensor]:
    """RandomResizedCrop(crop_size, scale, ratio) [+ RandomHorizontalFlip] + ToTensor -> (3, crop, crop)."""
    steps = [T.RandomResizedCrop(crop_size, scale=scale, ratio=ratio, interpolation=_mode(interpolation))]
    if hflip:
        steps.append(T.RandomHorizontalFlip())
    return T.Compose([*steps, T.ToTensor()])


def eval_transform(
    resize_size: int, crop_size: int, interpolation: str
) -> Callable[[Image.Image], torch.Tensor]:
    """Resize(short side -> resize_size) + CenterCrop(crop_size) + ToTensor -> float32 (3, crop, crop)."""
    return T.Compose(
        [T.Resize(resize_size, interpolation=_mode(interpolation)), T.CenterCrop(crop_size), T.ToTensor()]
    )


def _mode(name: str) -> T.InterpolationMode:
    if name not in INTERPOLATIONS:
        raise ValueError(f"dataset.interpolation={name!r} is not one of {sorted(INTERPOLATIONS)}")
    return INTERPOLATIONS[name]


class SeededImageDataset(Dataset):
    """Image files transformed under a per-sample seed: ``dataset[(index, seed)] -> (x, label)``, or None for
    an unreadable file when ``skip_unreadable`` (``collate_readable`` then leaves it out of the batch)."""

    def __init__(
        self,
        samples: list[tuple[str, int]],
        transform: Callable[[Image.Image], torch.Tensor],
        skip_unreadable: bool = False,
    ):
        self.samples = samples
        self.transform = transform
        self.skip_unreadable = skip_unreadable

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int] | None:
        index, sample_seed = key
        path, label = self.samples[index]
        try:
            image = load_rgb(path)
        except UnreadableImageError as exc:
            if not self.skip_unreadable:
                raise
            log.warning("WARNING: skipped: %s", exc)
            return None
        # fork_rng restores the RNG afterwards: with num_workers=0 this runs in the trainer's process.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sample_seed)
            return self.transform(image), label


def collate_readable(samples: list[tuple[torch.Tensor, int] | None]) -> tuple[Any, Any, int]:
    """``(images, labels, skipped)``: the batch of the readable samples (None, None when there are none) and
    the number left out. With every sample readable the tensors are exactly ``default_collate``'s."""
    readable = [s for s in samples if s is not None]
    skipped = len(samples) - len(readable)
    if not readable:
        return None, None, skipped
    images, labels = default_collate(readable)
    return images, labels, skipped


class SeededShardSampler(Sampler):
    """This rank's ``(dataset index, sample seed)`` pairs for one epoch (call ``set_epoch`` first).

    ``indices`` are the dataset indices in use (after subsetting). Train: the shared epoch permutation,
    strided per rank, cut to ``steps * batch_size``. Eval: a strided shard, no shuffle, no padding.
    """

    def __init__(
        self,
        indices: np.ndarray,
        *,
        train: bool,
        seed: int,
        rank: int,
        world_size: int,
        steps: int = 0,
        batch_size: int = 0,
    ) -> None:
        self.indices = indices
        self.train = train
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.steps, self.batch_size = steps, batch_size
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        if self.train:
            return self.steps * self.batch_size
        return len(eval_shard(len(self.indices), self.rank, self.world_size))

    def __iter__(self) -> Iterator[tuple[int, int]]:
        n = len(self.indices)
        if not self.train:
            for position in eval_shard(n, self.rank, self.world_size).tolist():
                yield int(self.indices[position]), 0
            return
        permutation = epoch_permutation(n, self.seed, self.epoch)
        # One seed per sample, drawn for all samples so it does not depend on rank or world size.
        generator = make_generator(self.seed, self.epoch, STREAM_SAMPLE_SEEDS)
        sample_seeds = torch.randint(0, 2**62, (n,), generator=generator).tolist()
        positions = train_shard(permutation, self.rank, self.world_size, self.steps, self.batch_size)
        for position in positions.tolist():
            yield int(self.indices[position]), sample_seeds[position]


class LoaderData(ClassificationData):
    """Batches from two DataLoaders (train, eval), moved to ``device``."""

    def __init__(
        self,
        info: DataInfo,
        train_loader: DataLoader,
        eval_loader: DataLoader,
        *,
        num_train: int,
        num_eval: int,
        batch_size: int,
        eval_batch_size: int,
        steps: int,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        super().__init__(
            info,
            num_train=num_train,
            num_eval=num_eval,
            batch_size=batch_size,
            eval_batch_size=eval_batch_size,
            steps_per_epoch=steps,
            seed=seed,
            rank=rank,
            world_size=world_size,
            device=device,
        )
        self.train_loader = train_loader
        self.eval_loader = eval_loader
        self.skipped_images = 0

    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """See :meth:`ClassificationData.train_batches`; x is float32 (B, 3, crop, crop) in [0, 1]."""
        self.train_loader.sampler.set_epoch(epoch)
        yield from self._readable(self.train_loader)

    def eval_batches(self) -> Iterator[Batch]:
        """See :meth:`ClassificationData.eval_batches`."""
        yield from self._readable(self.eval_loader)

    def take_skipped_images(self) -> int:
        """Unreadable images left out since the last call (``dataset.skip_unreadable_images``)."""
        count, self.skipped_images = self.skipped_images, 0
        return count

    def _readable(self, loader: DataLoader) -> Iterator[Batch]:
        try:
            for images, labels, skipped in loader:
                self.skipped_images += skipped
                if images is not None:
                    yield self._to_device(images, labels)
        except UnreadableImageError as exc:
            # From a worker process the message carries the worker's traceback: keep our own line only.
            text = str(exc)
            raise UnreadableImageError(text[text.rfind(_UNREADABLE) :].strip()) from None

    def _to_device(self, images: torch.Tensor, labels: torch.Tensor) -> Batch:
        return (
            images.to(self.device, non_blocking=True),
            labels.to(self.device, dtype=torch.int64, non_blocking=True),
        )


def build_loader_data(
    cfg: Mapping[str, Any],
    *,
    seed: int,
    train_subset: int | None,
    eval_subset: int | None,
    rank: int,
    world_size: int,
    device: torch.device,
) -> LoaderData:
    """Build the ``image_folder``-family data of ``cfg`` (keys: see configs/dataset/imagenet.yaml)."""
    root = _checked_root(cfg)
    classes, train_samples, eval_samples = _read_trees(root, positive_int(cfg, "num_classes"))
    train_index = _subset_index(train_samples, train_subset, "train_subset")
    eval_index = _subset_index(eval_samples, eval_subset, "eval_subset")
    batch_size, eval_batch_size = positive_int(cfg, "batch_size"), positive_int(cfg, "eval_batch_size")
    steps = steps_per_epoch(len(train_index), batch_size, world_size)
    crop_size, interpolation = positive_int(cfg, "crop_size"), str(require(cfg, "interpolation"))
    augment = train_transform(
        crop_size,
        _pair(cfg, "rrc_scale"),
        _pair(cfg, "rrc_ratio"),
        bool(require(cfg, "hflip")),
        interpolation,
    )
    center = eval_transform(positive_int(cfg, "resize_size"), crop_size, interpolation)
    skip = _skip_unreadable(cfg)
    shard = dict(seed=seed, rank=rank, world_size=world_size)
    # The loaders draw their workers' base seed from this generator, not from the global RNG, which they
    # would otherwise advance at every epoch.
    loader = functools.partial(
        _make_loader,
        num_workers=_num_workers(cfg),
        device=device,
        generator=make_generator(seed, rank, world_size),
    )
    train_sampler = SeededShardSampler(train_index, train=True, steps=steps, batch_size=batch_size, **shard)
    info = DataInfo(
        num_classes=len(classes),
        mean=channel_stats(cfg, "mean"),
        std=channel_stats(cfg, "std"),
        label=str(require(cfg, "label")),
        class_names=tuple(classes),
        source=f"ImageFolder trees at {root}/{{{TRAIN_DIR},{EVAL_DIR}}}",
    )
    return LoaderData(
        info,
        loader(SeededImageDataset(train_samples, augment, skip), train_sampler, batch_size, drop_last=True),
        loader(
            SeededImageDataset(eval_samples, center, skip),
            SeededShardSampler(eval_index, train=False, **shard),
            eval_batch_size,
            drop_last=False,
        ),
        num_train=len(train_index),
        num_eval=len(eval_index),
        batch_size=batch_size,
        eval_batch_size=eval_batch_size,
        steps=steps,
        **shard,
        device=device,
    )


def _checked_root(cfg: Mapping[str, Any], base: Path | None = None) -> Path:
    """The absolute ``dataset.root`` (relative ones taken from ``base`` when given, see ``resolve_root``), or
    ``DataSourceMissing`` saying what it must hold and how to obtain the data; looks at folder names only."""
    root = require(cfg, "root")
    how_to_obtain = cfg.get("how_to_obtain") or GENERIC_HOW_TO_OBTAIN
    layout = f"ImageFolder trees {TRAIN_DIR}/<class>/* and {EVAL_DIR}/<class>/*"
    if root is None:
        raise DataSourceMissing(
            f"dataset.root=null: dataset {cfg.get('name')!r} needs a folder holding {layout}. "
            f"To obtain the data: {how_to_obtain}"
        )
    root = resolve_root(root, base)
    if not (root / TRAIN_DIR).is_dir() or not (root / EVAL_DIR).is_dir():
        state = "exists, incomplete" if root.exists() else "does not exist"
        raise DataSourceMissing(
            f"dataset.root={str(root)!r} ({state}) must hold {layout}. To obtain the data: {how_to_obtain}"
        )
    return root


def check_image_folder_source(cfg: Mapping[str, Any], base: Path | None = None) -> None:
    """Refuse (``DataSourceMissing``, one line) an ``image_folder`` config whose root lacks the train or eval
    tree; nothing is listed or opened beyond the two folders."""
    _checked_root(cfg, base)


def _read_trees(
    root: Path, num_classes: int
) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """Class names (sorted folder names) and the (path, label) samples of the train and eval trees."""
    classes, class_to_idx = find_classes(str(root / TRAIN_DIR))
    eval_classes, _ = find_classes(str(root / EVAL_DIR))
    if classes != eval_classes:
        raise ValueError(
            f"class folders differ between {root / TRAIN_DIR} ({len(classes)}) and {root / EVAL_DIR} "
            f"({len(eval_classes)})"
        )
    if len(classes) != num_classes:
        raise ValueError(
            f"dataset.num_classes={num_classes}, but {root / TRAIN_DIR} has {len(classes)} class folders"
        )
    train = make_dataset(str(root / TRAIN_DIR), class_to_idx, extensions=IMG_EXTENSIONS)
    return classes, train, make_dataset(str(root / EVAL_DIR), class_to_idx, extensions=IMG_EXTENSIONS)


def _subset_index(samples: list[tuple[str, int]], subset: int | None, which: str) -> np.ndarray:
    index = balanced_subset(np.array([label for _, label in samples]), subset, which)
    return np.arange(len(samples)) if index is None else index


def _pair(cfg: Mapping[str, Any], key: str) -> tuple[float, float]:
    value = require(cfg, key)
    if len(value) != 2 or not 0 < float(value[0]) <= float(value[1]):
        raise ValueError(f"dataset.{key} must be [low, high] with 0 < low <= high, got {value!r}")
    return float(value[0]), float(value[1])


def _skip_unreadable(cfg: Mapping[str, Any]) -> bool:
    value = cfg.get("skip_unreadable_images", False)
    if not isinstance(value, bool):
        raise ValueError(f"dataset.skip_unreadable_images must be true or false, got {value!r}")
    return value


def _num_workers(cfg: Mapping[str, Any]) -> int:
    value = require(cfg, "num_workers")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"dataset.num_workers must be a non-negative integer, got {value!r}")
    return value


def _make_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    *,
    drop_last: bool,
    num_workers: int,
    device: torch.device,
    generator: torch.Generator,
) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        drop_last=drop_last,
        collate_fn=collate_readable,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        persistent_workers=num_workers > 0,  # restarting workers every epoch costs seconds on ImageNet
        generator=generator,
    )
