"""EpochSampler, shared by the FusionVAE and the Transient Attributes data modules."""

from __future__ import annotations

from pathlib import Path

import pytest

from fusion.data.samplers import EpochSampler
from fusion.data.synthetic_layouts import write_synthetic_transient
from fusion.data.transient import TransientAttributesDataModule
from tests.data.conftest import data_module


def test_keys_carry_the_epoch_and_shuffle_per_epoch() -> None:
    ordered = EpochSampler(5, shuffle=False)
    assert list(ordered) == [0, 1, 2, 3, 4] and len(ordered) == 5
    ordered.set_epoch(3)
    assert list(ordered) == [15, 16, 17, 18, 19]
    shuffled = EpochSampler(50, seed=2)
    first = list(shuffled)
    assert sorted(first) == list(range(50)) and first != list(range(50))
    assert first == list(EpochSampler(50, seed=2)) and first != list(EpochSampler(50, seed=3))
    shuffled.set_epoch(1)
    second = list(shuffled)
    assert sorted(second) == list(range(50, 100)) and [k - 50 for k in second] != first


def test_fixed_sampler_ignores_the_epoch() -> None:
    fixed = EpochSampler(4, shuffle=False, follow_epoch=False)
    fixed.set_epoch(9)
    assert list(fixed) == [0, 1, 2, 3]


def test_epoch_sampler_shards_across_ranks() -> None:
    keys = []
    for rank in range(3):
        s = EpochSampler(10, seed=1)
        s.rank, s.world_size = rank, 3
        s.set_epoch(2)
        keys += list(s)
        assert len(s) == len(range(rank, 10, 3))
    assert sorted(keys) == list(range(20, 30))


@pytest.mark.usefixtures("single_thread")
def test_both_data_modules_use_it(tmp_path: Path) -> None:
    fusion = data_module("digits")
    root = write_synthetic_transient(tmp_path, webcams=3, images_per_webcam=2)
    transient = TransientAttributesDataModule(
        str(root), batch_size=2, image_size=32, load_size=40, train_pairs=4, val_pairs=2, num_workers=0
    )
    for dm in (fusion, transient):
        train, val = dm.train_dataloader().sampler, dm.val_dataloader().sampler
        assert isinstance(train, EpochSampler) and isinstance(val, EpochSampler)
        assert train.follow_epoch and train.shuffle and not val.follow_epoch and not val.shuffle
