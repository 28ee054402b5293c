"""The order of training samples: a function of (seed, epoch) alone, so a requeued run continues at the exact sample.

Every epoch is one permutation of the training set drawn from (seed, epoch).
Global batch ``i`` is its slice ``[i*B, (i+1)*B)``; rank ``r`` of ``W`` takes
the ``r``-th of ``W`` equal parts of it, so the global batch is the same for
any number of ranks, and a run resumed at step ``i`` of an epoch starts at
batch ``i`` of the same permutation. The last incomplete batch is dropped.
"""
from __future__ import annotations

from typing import Iterator, List, Tuple, Union

import torch
from torch.utils.data import Sampler


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed * 7919 + epoch)
    return torch.randperm(n, generator=g)


class EpochBatchSampler(Sampler):
    """Per-rank batches of one epoch, from batch ``first`` on (DataLoader's ``batch_sampler``).

    ``keyed=True`` yields ``(epoch, index)`` pairs instead of indices, so that a
    dataset can seed its augmentation from them: DataLoader workers (persistent
    or not) then draw the same crops whichever worker loads a sample, and after
    a requeue too.
    """

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 keyed: bool = False) -> None:
        if batch_size % world_size:
            raise ValueError(f"train.batch_size={batch_size} must divide evenly over {world_size} processes")
        if n < batch_size:
            raise ValueError(f"train.batch_size={batch_size} exceeds the {n} training images (data.train_size)")
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.per_rank, self.keyed = rank, batch_size // world_size, keyed
        self.epoch, self.first = 0, 0

    @property
    def steps_per_epoch(self) -> int:
        return self.n // self.batch_size

    def set_epoch(self, epoch: int, first: int = 0) -> None:
        self.epoch, self.first = epoch, first

    def __len__(self) -> int:
        return self.steps_per_epoch - self.first

    def __iter__(self) -> Iterator[Union[torch.Tensor, List[Tuple[int, int]]]]:
        order = epoch_order(self.n, self.seed, self.epoch)
        b, p, r = self.batch_size, self.per_rank, self.rank
        for i in range(self.first, self.steps_per_epoch):
            idx = order[i * b:(i + 1) * b][r * p:(r + 1) * p]
            yield [(self.epoch, j) for j in idx.tolist()] if self.keyed else idx
