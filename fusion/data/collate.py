"""Batches of the FusionVAE data sets with one number of views ``K`` per batch (FusionVAE, Section 5.4).

Loaders wrap a data set in :class:`Keyed`, so each collate function sees the keys of its batch and can fix ``K``
from them: the same on every loader worker, reproducible, and independent of the batch's content. A batch is
``{"target": (B, C, H, W), "inputs": (B, K, C, H, W)}``: the first ``K`` views of each item.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["EvalCollate", "Keyed", "TrainCollate", "ValCollate", "stack_items"]

Item = tuple[int, dict[str, torch.Tensor]]


class Keyed(Dataset):
    """``key → (key, dataset[key])`` over ``length`` keys: lets the collate functions see which keys a batch holds."""

    def __init__(self, dataset: Dataset, length: int) -> None:
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int) -> Item:
        return int(key), self.dataset[key]


def stack_items(items: Sequence[Item], k: int) -> dict[str, torch.Tensor]:
    """The batch of ``items`` with the first ``k`` views of each: target ``(B, C, H, W)``, inputs ``(B, k, C, H, W)``.

    Example:
        >>> item = {"target": torch.zeros(1, 2, 2), "inputs": torch.zeros(3, 1, 2, 2)}
        >>> tuple(stack_items([(0, item), (1, item)], 2)["inputs"].shape)
        (2, 2, 1, 2, 2)
    """
    target = torch.stack([item["target"] for _, item in items])
    inputs = torch.stack([item["inputs"][:k] for _, item in items])
    return {"target": target, "inputs": inputs}


class TrainCollate:
    """Training batches: ``K`` uniform in ``{0, ..., max_inputs}`` (Section 5.4), seeded by the batch's first key.

    The first key of a batch is unique within a run (keys carry the epoch), so ``K`` is reproducible and the
    same on every loader worker.
    """

    def __init__(self, max_inputs: int, seed: int) -> None:
        self.max_inputs, self.seed = int(max_inputs), int(seed)

    def __call__(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        k = int(np.random.default_rng([self.seed, 17, items[0][0]]).integers(self.max_inputs + 1))
        return stack_items(items, k)


class ValCollate:
    """Validation batches: ``K = batch_index mod (max_inputs + 1)``, so consecutive batches cycle through every K.

    The batch index is recovered from the first key of the (sequential, possibly rank-sharded) validation order.
    """

    def __init__(self, max_inputs: int, batch_size: int, world_size: int = 1) -> None:
        self.max_inputs, self.stride = int(max_inputs), int(batch_size) * max(int(world_size), 1)

    def __call__(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        return stack_items(items, (items[0][0] // self.stride) % (self.max_inputs + 1))


class EvalCollate:
    """Evaluation batches: all ``max_inputs`` views (the evaluator slices ``inputs[:, :K]`` itself)."""

    def __init__(self, max_inputs: int) -> None:
        self.max_inputs = int(max_inputs)

    def __call__(self, items: Sequence[Item]) -> dict[str, torch.Tensor]:
        return stack_items(items, self.max_inputs)
