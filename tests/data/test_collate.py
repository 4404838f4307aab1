"""One number of views K per batch, fixed by the batch's keys (FusionVAE, Section 5.4)."""

from __future__ import annotations

import numpy as np
import torch

from fusion.data.collate import EvalCollate, TrainCollate, ValCollate


def _item() -> dict[str, torch.Tensor]:
    return {"target": torch.zeros(1, 2, 2), "inputs": torch.arange(3.0).view(3, 1, 1, 1).expand(3, 1, 2, 2)}


def test_training_k_is_uniform_over_zero_to_max_inputs() -> None:
    """Section 5.4: K uniform in {0, 1, 2, 3}, one per batch, fixed by the batch's first key."""
    item = {"target": torch.zeros(1, 2, 2), "inputs": torch.zeros(3, 1, 2, 2)}
    collate = TrainCollate(3, seed=0)
    ks = [collate([(key, item), (key + 1, item)])["inputs"].shape[1] for key in range(0, 1600, 2)]
    counts = np.bincount(ks, minlength=5)
    assert counts[4] == 0 and all(abs(c / len(ks) - 0.25) < 0.05 for c in counts[:4])
    assert ks == [collate([(key, item)])["inputs"].shape[1] for key in range(0, 1600, 2)]


def test_validation_k_cycles_and_evaluation_keeps_every_view() -> None:
    item = _item()
    val = ValCollate(3, batch_size=2, world_size=2)  # 4 keys per step over both ranks
    assert [val([(key, item)])["inputs"].shape[1] for key in range(0, 20, 4)] == [0, 1, 2, 3, 0]
    batch = EvalCollate(3)([(0, item), (1, item)])
    assert batch["target"].shape == (2, 1, 2, 2) and batch["inputs"].shape == (2, 3, 1, 2, 2)
    assert batch["inputs"][:, :, 0, 0, 0].tolist() == [[0.0, 1.0, 2.0]] * 2  # the first K views, in order
