"""FusionMNIST on hand-laid and synthetic folders in the published MNIST layouts."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.data.idx import read_idx
from fusion.data.mnist import FusionMNIST, find_mnist_files
from fusion.data.synthetic_layouts import write_synthetic_mnist
from tests.data.conftest import data_module

# tiny images: extra torch threads only contend on a shared machine
pytestmark = pytest.mark.usefixtures("single_thread")


def test_fusion_mnist_reads_hand_laid_digits_and_pads_them_to_32(tmp_path: Path) -> None:
    """A hand-laid MNIST folder (28×28 digits whose pixels encode their position): FusionMNIST's targets are the
    digits /255 with 2 zero rows and columns on every side."""
    n = 3
    pattern = [[[(11 * r + 3 * c + 50 * i) % 256 for c in range(28)] for r in range(28)] for i in range(n)]
    body = bytes(v for image in pattern for row in image for v in row)
    for prefix in ("train", "t10k"):
        header = b"\x00\x00\x08\x03" + struct.pack(">III", n, 28, 28)
        (tmp_path / f"{prefix}-images-idx3-ubyte").write_bytes(header + body)
        (tmp_path / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(
            gzip.compress(b"\x00\x00\x08\x01" + struct.pack(">I", n) + bytes([4, 1, 9]))
        )
    data = FusionMNIST(tmp_path, train=False, noise_std=0.0)
    training = FusionMNIST(tmp_path, train=True, noise_std=0.0)
    assert len(data) == len(training) == n
    for i in range(n):
        expected = np.zeros((32, 32), dtype=np.float64)
        expected[2:30, 2:30] = np.array(pattern[i], dtype=np.float64) / 255
        np.testing.assert_allclose(data[i]["target"][0].double().numpy(), expected, rtol=0, atol=1e-7)
        # the same digits in both splits: the evaluation split draws its own masks (its own random streams)
        assert torch.equal(training[i]["target"], data[i]["target"])
        assert not torch.equal(training[i]["inputs"], data[i]["inputs"])


def test_mnist_layouts_and_padding(mnist: Path, tmp_path: Path) -> None:
    tv = write_synthetic_mnist(tmp_path / "tv", n_train=8, n_test=4, gz=False, torchvision=True)
    files = find_mnist_files(tv)
    assert files["train_images"] == tv / "MNIST" / "raw" / "train-images-idx3-ubyte"
    assert len(FusionMNIST(tv, train=False)) == 4
    train, test = FusionMNIST(mnist, noise_std=0.0), FusionMNIST(mnist, train=False)
    assert (len(train), len(test)) == (40, 24)
    digits = read_idx(mnist / "train-images-idx3-ubyte.gz")
    item = train[3]
    assert item["target"].shape == (1, 32, 32) and item["inputs"].shape == (3, 1, 32, 32)
    assert torch.equal(item["target"][0, 2:30, 2:30], digits[3].float() / 255)  # centred zero padding
    assert float(item["target"][0, :2].abs().sum() + item["target"][0, :, 30:].abs().sum()) == 0


def test_mnist_missing_or_incomplete_root_names_the_layout(mnist: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"t10k-images-idx3-ubyte .*MNIST/raw"):
        FusionMNIST(tmp_path / "nope")
    partial = write_synthetic_mnist(tmp_path / "partial", n_train=4, n_test=4)
    (partial / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError, match="lacks t10k-labels-idx1-ubyte"):
        FusionMNIST(partial)
    with pytest.raises(FileNotFoundError, match="MNIST layout"):
        data_module("mnist", tmp_path / "nope")
    with pytest.raises(ValueError, match=r"MNIST root is not set.*MNIST layout"):
        FusionMNIST(None)


def test_mnist_views_are_masked_noisy_and_distinct(mnist: Path) -> None:
    clean = FusionMNIST(mnist, noise_std=0.0, seed=1)
    distinct = 0
    for key in range(10):
        item = clean[key]
        target, inputs = item["target"], item["inputs"]
        kept = inputs == target  # noiseless: every view pixel is the target's or black
        assert bool((kept | (inputs == 0)).all())
        assert bool(kept.any()) and bool((inputs != target).any())
        distinct += all(not torch.equal(inputs[i], inputs[j]) for i, j in ((0, 1), (1, 2), (0, 2)))
    assert distinct >= 5  # independent masks (two may both miss a small digit)
    noisy = FusionMNIST(mnist, noise_std=0.3, seed=1)
    views = torch.stack([noisy[k]["inputs"] for k in range(5)])
    assert float(views.min()) == 0.0 and float(views.max()) == 1.0  # clipped
    assert 0 < float((views == 0).float().mean()) < 0.9


def test_binarised_targets_and_their_views(mnist: Path) -> None:
    dm = data_module("mnist", mnist, "binarize=true", "noise_std=0.0")
    a, b = dm.train_set[2], dm.train_set[2 + len(dm.train_set)]  # one item, two epochs
    for item in (a, b):
        assert torch.all((item["target"] == 0) | (item["target"] == 1))
        assert torch.all((item["inputs"] == 0) | (item["inputs"] == item["target"]))
    assert not torch.equal(a["target"], b["target"])  # dynamic: redrawn every epoch
