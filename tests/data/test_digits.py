"""FusionDigits: scikit-learn's real digits with FusionMNIST views; no folder needed."""

from __future__ import annotations

import sys

import pytest
import torch

from fusion.data.digits import FusionDigits
from tests.data.conftest import data_module

pytestmark = pytest.mark.usefixtures("single_thread")


def test_digits_need_no_root() -> None:
    dm = data_module("digits", None, "noise_std=0.0", "binarize=true")
    assert (len(dm.train_set), len(dm.eval_set)) == (1497, 300)
    assert not set(dm.train_set.indices.tolist()) & set(dm.eval_set.indices.tolist())
    plain = FusionDigits(train=False)
    assert plain.images.shape == (300, 1, 16, 16) and float(plain.images.max()) == 1.0
    batch = next(iter(dm.eval_dataloader(limit=8)))
    assert batch["target"].shape == (4, 1, 16, 16) and batch["inputs"].shape == (4, 3, 1, 16, 16)
    assert torch.all((batch["target"] == 0) | (batch["target"] == 1))
    assert torch.equal(
        FusionDigits(image_size=8).images[0, 0] * 16, torch.round(FusionDigits(image_size=8).images[0, 0] * 16)
    )


def test_digit_augmentation_is_training_only_and_reproducible() -> None:
    dm = data_module("digits", None, "train_set.augment=true", "binarize=threshold", "noise_std=0.0")
    plain = FusionDigits(train=True, binarize="threshold", noise_std=0.0)
    assert dm.train_set.augment and not dm.eval_set.augment
    keys = range(8)
    changed = [not torch.equal(dm.train_set[k]["target"], plain[k]["target"]) for k in keys]
    assert sum(changed) >= 6
    for k in keys:
        item = dm.train_set[k]
        assert torch.equal(item["target"], dm.train_set[k]["target"])  # fixed by (seed, epoch, index)
        assert set(item["target"].unique().tolist()) <= {0.0, 1.0}
        visible = item["inputs"] > 0
        assert torch.equal(item["inputs"][visible], item["target"].expand_as(item["inputs"])[visible])
    epoch_two = dm.train_set[0 + len(dm.train_set)]["target"]
    assert not torch.equal(epoch_two, dm.train_set[0]["target"])  # a new map every epoch
    evaluation = FusionDigits(train=False, binarize="threshold", noise_std=0.0)
    assert all(torch.equal(dm.eval_set[k]["target"], evaluation[k]["target"]) for k in keys)
    with pytest.raises(ValueError, match="rotation must be in"):
        FusionDigits(augment=True, rotation=200.0)
    with pytest.raises(ValueError, match="shift must be in"):
        data_module("digits", None, "train_set.augment=true", "train_set.shift=-0.1")
    with pytest.raises(ValueError, match="augment must be true or false"):
        data_module("digits", None, 'train_set.augment="yes"')


def test_digits_without_scikit_learn(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="FusionDigits needs scikit-learn: pip install scikit-learn"):
        FusionDigits()


def test_threshold_binarisation_is_deterministic() -> None:
    grey = FusionDigits(train=False, max_inputs=2)
    crisp = FusionDigits(train=False, max_inputs=2, binarize="threshold")
    for key in (0, 5):
        target = crisp[key]["target"]
        assert set(target.unique().tolist()) <= {0.0, 1.0}
        torch.testing.assert_close(target, (grey[key]["target"] > 0.5).float())
        torch.testing.assert_close(target, crisp[key + len(crisp)]["target"])  # the same in every epoch
    with pytest.raises(ValueError, match="binarize"):
        FusionDigits(binarize="sometimes")


def test_digit_splits_draw_from_their_own_random_streams() -> None:
    """``split`` enters the item seed: item i of the training and of the evaluation part never share a stream."""
    train, test = FusionDigits(train=True), FusionDigits(train=False)
    for key in (0, 7):
        a, b = train.generator(key)[1], test.generator(key)[1]
        assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
