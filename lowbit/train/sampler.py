"""A resumable, rank-sharded training sampler (the engine's DistributedSampler).

Per epoch the order is ``torch.randperm(n)`` from a generator seeded by ``(seed, epoch)`` only:
a pure function, so there is no generator state to checkpoint and a resumed run can start in the
middle of an epoch at a given batch. The ragged tail is dropped *globally* (``n // global_batch``
full global batches per epoch, the same count for any number of processes), and global batch
``b`` is ``perm[b*B:(b+1)*B]``; rank ``r`` of ``W`` takes the ``r``-th contiguous slice of
``B / W`` samples. So ``W`` processes together see exactly the samples one process sees with
the same global batch, which is what makes DDP runs comparable to single-process ones.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

__all__ = ["ResumableShardedSampler", "epoch_generator_seed"]

_MASK = (1 << 63) - 1


def epoch_generator_seed(seed: int, epoch: int, salt: int = 0) -> int:
    """A 63-bit seed mixing ``seed``, ``epoch`` and ``salt`` (splitmix64-style)."""
    x = (seed * 0x9E3779B97F4A7C15 + epoch * 0xBF58476D1CE4E5B9 + salt * 0x94D049BB133111EB)
    x &= (1 << 64) - 1
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & ((1 << 64) - 1)
    x ^= x >> 32
    return x & _MASK


class ResumableShardedSampler(Sampler[int]):
    """Indices of this rank's share of each full global batch, starting at ``start_batch``.

    Args:
        num_samples: data set length ``n``.
        global_batch: ``B``, the batch summed over processes; must be divisible by
            ``world_size`` and at most ``n``.
        seed: run seed; the permutation of epoch ``e`` depends only on ``(seed, e)``.
        shuffle: ``False`` gives ``0..n-1`` in order (still sharded and truncated).
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if global_batch % world_size:
            raise ValueError(
                f"train.batch_size={global_batch} is not divisible by the {world_size} processes"
            )
        if num_samples < global_batch:
            raise ValueError(
                f"train.batch_size={global_batch} exceeds the training set ({num_samples} samples)"
            )
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} out of range for world size {world_size}")
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.per_rank = global_batch // world_size
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        """Full global batches per epoch: ``n // B``."""
        return self.num_samples // self.global_batch

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Select the epoch's permutation and the first batch to yield (resume mid-epoch)."""
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} out of range")
        self.epoch = epoch
        self.start_batch = start_batch

    def permutation(self) -> torch.Tensor:
        """This epoch's order of all ``n`` indices (identical on every rank)."""
        if not self.shuffle:
            return torch.arange(self.num_samples)
        g = torch.Generator()
        g.manual_seed(epoch_generator_seed(self.seed, self.epoch))
        return torch.randperm(self.num_samples, generator=g)

    def __iter__(self) -> Iterator[int]:
        perm = self.permutation().tolist()
        B, k = self.global_batch, self.per_rank
        for b in range(self.start_batch, self.batches_per_epoch):
            lo = b * B + self.rank * k
            yield from perm[lo : lo + k]

    def __len__(self) -> int:
        return (self.batches_per_epoch - self.start_batch) * self.per_rank
