"""The data contract the trainer codes against, and config helpers shared by the data builders."""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from adamp_repro import errors

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class DataInfo:
    """What a data set is, independent of how batches are produced.

    Attributes:
        num_classes: number of classes K; labels are in [0, K).
        mean, std: per-channel floats (RGB) for the Normalize that lives inside the model.
        label: name shown in records and tables, e.g. "CIFAR-10 (JPEG copy)".
        class_names: K names, in label order.
        source: where the pixels came from (format and path), for the run record's provenance.
    """

    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    label: str
    class_names: tuple[str, ...]
    source: str


class ClassificationData(abc.ABC):
    """Batches of one data set for one rank of a (possibly distributed) run: images and labels (the image
    families), or token windows and their next tokens (the text family, whose "classes" are its tokens).

    Attributes:
        num_classes, mean, std, label, class_names, source: see :class:`DataInfo`.
        num_train, num_eval: global sample counts after subsetting (all ranks together).
        batch_size, eval_batch_size: per-rank batch sizes; the global train batch is
            world_size * batch_size.
        steps_per_epoch: full train batches per epoch on this rank (the last partial one is dropped);
            the same on every rank.
        seed, rank, world_size, device: as given to ``build_data``.
        input_kind: what a batch's inputs are, ``"images"`` or ``"tokens"`` (the model must take them).
    """

    input_kind = "images"

    def __init__(
        self,
        info: DataInfo,
        *,
        num_train: int,
        num_eval: int,
        batch_size: int,
        eval_batch_size: int,
        steps_per_epoch: int,
        seed: int,
        rank: int,
        world_size: int,
        device: torch.device,
    ) -> None:
        self.info = info
        self.num_classes = info.num_classes
        self.mean = info.mean
        self.std = info.std
        self.label = info.label
        self.class_names = info.class_names
        self.source = info.source
        self.num_train = num_train
        self.num_eval = num_eval
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.device = device

    @abc.abstractmethod
    def train_batches(self, epoch: int) -> Iterator[Batch]:
        """Yield ``steps_per_epoch`` augmented batches ``(x, y)`` of epoch ``epoch`` for this rank.

        x: float32 (batch_size, 3, H, W) in [0, 1] on ``device``; y: int64 (batch_size,) on ``device``.
        The batches depend only on (seed, epoch, rank, world_size).
        """

    @abc.abstractmethod
    def eval_batches(self) -> Iterator[Batch]:
        """Yield this rank's evaluation batches ``(x, y)``, un-augmented, shapes as in train_batches.

        Over all ranks every evaluation sample appears exactly once (no padding duplicates); the last
        batch may be smaller and shard sizes may differ by one between ranks.
        """

    def bind_run_folder(self, run_dir: Path, *, resuming: bool, write: bool) -> None:
        """Keep with the run what a resume must find unchanged (the text family's vocabulary), or refuse a
        resume whose folder holds another (``UsageError``). ``write``: this process writes the record (rank 0).
        The image families keep nothing: their classes are fixed by the config."""
        return None

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(label={self.label!r}, num_train={self.num_train}, "
            f"num_eval={self.num_eval}, batch_size={self.batch_size}, rank={self.rank}/"
            f"{self.world_size}, device={self.device})"
        )


def plain_config(cfg: Any) -> dict[str, Any]:
    """A plain dict of a dataset config given as an OmegaConf DictConfig or a mapping."""
    return errors.plain_config(cfg, "dataset")


def require(cfg: Mapping[str, Any], key: str) -> Any:
    """``cfg[key]``, or a KeyError naming the missing key and the dataset."""
    if key not in cfg:
        name = cfg.get("name", "<unnamed>")
        raise KeyError(f"dataset config {name!r} lacks the required key {key!r} (have: {sorted(cfg)})")
    return cfg[key]


def channel_stats(cfg: Mapping[str, Any], key: str) -> tuple[float, ...]:
    """``cfg[key]`` (mean or std) as a tuple of 3 floats; std entries must be positive."""
    values = tuple(float(v) for v in require(cfg, key))
    if len(values) != 3 or (key == "std" and min(values) <= 0):
        raise ValueError(
            f"dataset.{key} must be 3 per-channel (RGB) floats{', all > 0' if key == 'std' else ''}"
            f", got {values}"
        )
    return values


def positive_int(cfg: Mapping[str, Any], key: str) -> int:
    """``cfg[key]`` as a positive int, or a ValueError naming the key and the value."""
    value = require(cfg, key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"dataset.{key} must be a positive integer, got {value!r}")
    return value


class DataSourceMissing(errors.UsageError, FileNotFoundError):
    """``dataset.root`` (or the embedded copy) holds none of the layouts its family reads; the one-line message
    names the key, the value, whether it exists, the allowed layouts and how to obtain the data."""


def resolve_root(root: str | Path, base: Path | None = None) -> Path:
    """An absolute path for ``dataset.root``; relative roots are taken from ``base`` when given, else from the
    launch directory.

    Under Hydra that is the directory the command was started in (Hydra may change the working
    directory of a job); otherwise it is the current working directory.
    """
    path = Path(root).expanduser()
    if path.is_absolute():
        return path
    if base is not None:
        return Path(base) / path
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd

    return (Path(get_original_cwd()) if HydraConfig.initialized() else Path.cwd()) / path
