"""What the FusionVAE data sets share: per-item random streams and binarised targets."""

from __future__ import annotations

import torch

from fusion.data.base import FusionSet


def test_threshold_binarisation_keeps_values_above_one_half() -> None:
    data = FusionSet(1, max_inputs=1, binarize="threshold", seed=0, split=0)
    grey = torch.tensor([0.0, 0.25, 0.5, 0.5 + 1e-6, 0.75, 1.0])
    assert data.binarized(grey, torch.Generator()).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_items_have_their_own_streams() -> None:
    """Key → (index, generator): epochs and indices never share a stream, the same key always gives the same one."""
    data = FusionSet(5, max_inputs=1, binarize=False, seed=3, split=0)
    draws = {key: torch.rand(4, generator=data.generator(key)[1]) for key in range(10)}
    assert [data.generator(key)[0] for key in range(10)] == [0, 1, 2, 3, 4] * 2
    assert all(not torch.equal(draws[a], draws[b]) for a in draws for b in draws if a < b)
    assert torch.equal(torch.rand(4, generator=data.generator(7)[1]), draws[7])
