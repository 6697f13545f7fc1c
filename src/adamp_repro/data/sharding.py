"""Which samples a rank sees, in which order: seeds, epoch permutations, shards and subsets.

Everything here is a pure function of its integer arguments, so an epoch's batches can be rebuilt
from ``(seed, epoch, rank, world_size)`` alone: a run resumed at epoch ``e`` sees exactly the batches
the uninterrupted run saw. Random numbers come from ``torch.Generator`` objects made here, never from
the global RNG, which the trainer and the model initialisation also draw from.
"""

from __future__ import annotations

import numpy as np
import torch

# Independent random streams drawn from one (seed, epoch, ...) tuple. Distinct tags keep the training
# order, the augmentation and the per-sample seeds statistically independent of each other.
STREAM_PERMUTATION = 0
STREAM_AUGMENTATION = 1
STREAM_SAMPLE_SEEDS = 2


def derive_seed(*parts: int) -> int:
    """Mix non-negative integers into one 63-bit seed (numpy SeedSequence: stable across platforms)."""
    for part in parts:
        if int(part) < 0:
            raise ValueError(f"Seed parts must be non-negative integers, got {part} in {parts}")
    words = np.random.SeedSequence([int(p) for p in parts]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def make_generator(*parts: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator(device="cpu").manual_seed(derive_seed(*parts))


def check_rank(rank: int, world_size: int) -> None:
    """Raise ValueError unless ``0 <= rank < world_size``."""
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size - 1}] for world_size={world_size}, got {rank}")


def epoch_permutation(num_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """The epoch's training order shared by every rank: int64 (num_samples,) on the CPU."""
    generator = make_generator(seed, epoch, STREAM_PERMUTATION)
    return torch.randperm(num_samples, generator=generator)


def steps_per_epoch(num_train: int, batch_size: int, world_size: int) -> int:
    """Full batches each rank gets per epoch (drop_last); the global batch is world_size * batch_size.

    Raises ValueError when not even one global batch fits into the training data.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    steps = (num_train // world_size) // batch_size
    if steps == 0:
        raise ValueError(
            f"batch_size={batch_size} per rank x world_size={world_size} = {batch_size * world_size} "
            f"is larger than the training data ({num_train} samples); lower dataset.batch_size or "
            "raise train_subset"
        )
    return steps


def train_shard(permutation: torch.Tensor, rank: int, world_size: int, steps: int, batch_size: int):
    """This rank's strided share of the epoch permutation, cut to ``steps * batch_size`` samples.

    Batch k of rank r holds permutation[k*G + r :: world_size] for the first batch_size of them
    (G = world_size * batch_size), so the ranks' k-th batches together form global batch k.
    """
    return permutation[rank::world_size][: steps * batch_size]


def eval_shard(num_samples: int, rank: int, world_size: int) -> torch.Tensor:
    """Positions ``rank, rank + world_size, ...``: each sample on exactly one rank, no padding.

    Shard sizes differ by at most one, so the trainer must sum correct counts and sample counts
    across ranks (never average per-rank accuracies).
    """
    return torch.arange(rank, num_samples, world_size, dtype=torch.int64)


def class_interleaved_order(labels: np.ndarray) -> np.ndarray:
    """Indices ordering samples as class 0, 1, ..., K-1, class 0, 1, ... (each class in its own order).

    The first N of this order is the class-balanced first-N subset: with K classes every class gets
    floor(N/K) or one more sample, as long as each class has enough. The order is stable, so it is
    the identity on data whose rows are already interleaved by class (the CIFAR JPEG copies).
    """
    labels = np.asarray(labels, dtype=np.int64)
    by_class = np.argsort(labels, kind="stable")
    sorted_labels = labels[by_class]
    group_start = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank_in_class = np.empty_like(labels)
    rank_in_class[by_class] = np.arange(len(labels)) - group_start
    return np.lexsort((labels, rank_in_class))


def balanced_subset(labels: np.ndarray, subset: int | None, which: str) -> np.ndarray | None:
    """Indices of the class-balanced first-``subset`` samples, or None for the whole split.

    ``which`` names the split in errors ("train_subset" or "eval_subset").
    """
    if subset is None:
        return None
    if isinstance(subset, bool) or not isinstance(subset, int | np.integer) or subset < 1:
        raise ValueError(f"{which} must be a positive integer or None, got {subset!r}")
    if subset > len(labels):
        raise ValueError(f"{which}={subset} is larger than the split it subsets ({len(labels)} samples)")
    return class_interleaved_order(labels)[:subset]
