"""The epoch-keyed sampler shared by the data modules (FusionVAE's data sets and GP-GAN's Transient Attributes pairs).

The data sets of :mod:`fusion.data` draw item ``key`` of a data set of length ``n`` as item ``key mod n`` in epoch
``key // n``, from a random stream fixed by the key. :class:`EpochSampler` hands out the keys of one epoch, so a
loader sees fresh random items every epoch, any epoch can be reproduced (a run resumes with the same data), and
loader workers need no shared state.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import Sampler

__all__ = ["EpochSampler"]


class EpochSampler(Sampler[int]):
    """Yields the keys ``epoch·length + i``, ``i = 0 .. length-1``, of one epoch; Lightning calls :meth:`set_epoch`.

    With ``shuffle`` the order of ``i`` is a permutation seeded by ``(seed, epoch)``; without it ``i`` runs in
    order. Under ``torch.distributed`` each rank takes every ``world_size``-th key of that order, so ranks see
    disjoint items (run DDP with the trainer's ``use_distributed_sampler=false`` so Lightning does not shard a
    second time).

    Args:
        length: keys per epoch (the data set's length, or fewer).
        shuffle: permute the keys of every epoch.
        seed: seed of the permutation.
        follow_epoch: ``False`` keeps epoch 0 whatever :meth:`set_epoch` says (fixed validation items).

    Example:
        >>> sampler = EpochSampler(4, shuffle=False)
        >>> sampler.set_epoch(2)
        >>> list(sampler)
        [8, 9, 10, 11]
    """

    def __init__(self, length: int, *, shuffle: bool = True, seed: int = 0, follow_epoch: bool = True) -> None:
        self.length, self.shuffle, self.seed, self.epoch = length, shuffle, seed, 0
        self.follow_epoch = follow_epoch
        self.rank, self.world_size = 0, 1
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self.rank, self.world_size = torch.distributed.get_rank(), torch.distributed.get_world_size()

    def set_epoch(self, epoch: int) -> None:
        """Move to ``epoch`` (a no-op with ``follow_epoch=False``)."""
        if self.follow_epoch:
            self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))

    def __iter__(self) -> Iterator[int]:
        order = np.arange(self.length)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch, 7]).permutation(self.length)
        base = self.epoch * self.length
        return iter([base + int(i) for i in order[self.rank :: self.world_size]])
