"""FusionMNIST, FusionCelebA, FusionT-LESS and FusionDigits on tiny synthetic folders in the published layouts."""

from __future__ import annotations

import gzip
import math
import pickle
import struct
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

from fusion.data import fusion_sets
from fusion.data.fusion_sets import (
    EVAL_OCCLUDER_CLASSES,
    TARGET_CLASSES,
    TRAIN_OCCLUDER_CLASSES,
    FusionCelebA,
    FusionDataModule,
    FusionDigits,
    FusionMNIST,
    FusionSet,
    FusionTLESS,
    TrainCollate,
    _write_idx,
    find_mnist_files,
    index_tless,
    paste_occluder,
    random_affine,
    read_idx,
    split_every_tenth,
    write_synthetic_celeba,
    write_synthetic_mnist,
    write_synthetic_tless,
)
from fusion.data.occluders import cut_occluders

ROOT = Path(__file__).resolve().parents[2]


# tiny images: extra torch threads only contend on a shared machine
pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("mnist"), n_train=40, n_test=24)


@pytest.fixture(scope="module")
def celeba(tmp_path_factory) -> Path:
    return write_synthetic_celeba(tmp_path_factory.mktemp("celeba"), n=15)


@pytest.fixture(scope="module")
def tless(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tless")
    write_synthetic_tless(root, 20, classes=TARGET_CLASSES, size=64)
    write_synthetic_tless(root, 2, classes=TRAIN_OCCLUDER_CLASSES + EVAL_OCCLUDER_CLASSES, size=64, seed=1)
    occluders = tmp_path_factory.mktemp("occluders")
    cut_occluders(root, occluders)
    return root, occluders


def _dm(dataset: str, root=None, **kwargs) -> FusionDataModule:
    args = dict(batch_size=4, num_workers=0, val_items=16)
    args.update(kwargs)
    return FusionDataModule(dataset, None if root is None else str(root), **args)


# ----------------------------------------------------------------------------------------------------- IDX / MNIST


def test_read_idx_round_trip_and_corrupt_files(mnist: Path, tmp_path: Path) -> None:
    path = mnist / "train-images-idx3-ubyte.gz"
    images = read_idx(path)
    assert images.shape == (40, 28, 28) and images.dtype == torch.uint8 and int(images.max()) > 200
    raw = gzip.decompress(path.read_bytes())
    plain = tmp_path / "plain-idx3-ubyte"
    plain.write_bytes(raw)
    assert torch.equal(read_idx(plain), images)
    (tmp_path / "short").write_bytes(raw[:-5])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_idx(tmp_path / "short")
    (tmp_path / "magic").write_bytes(b"\x00\x01" + raw[2:])
    with pytest.raises(ValueError, match="not an IDX file"):
        read_idx(tmp_path / "magic")
    (tmp_path / "header").write_bytes(raw[:6])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "header")
    (tmp_path / "bad.gz").write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="corrupt gzip"):
        read_idx(tmp_path / "bad.gz")
    with pytest.raises(FileNotFoundError):
        read_idx(tmp_path / "absent")


# The published IDX layout (LeCun et al., "THE MNIST DATABASE of handwritten digits"): a 32-bit big-endian magic
# number 0x00000803 (images: unsigned bytes, 3 dimensions) or 0x00000801 (labels: unsigned bytes, 1 dimension),
# one big-endian 32-bit size per dimension, then the values in row-major order. The bytes below are laid out from
# that description alone, never by the reader or the writer under test.
_PIXELS = [
    [[0, 1, 2, 3], [128, 129, 200, 255], [17, 34, 51, 68]],
    [[255, 254, 253, 252], [5, 0, 5, 0], [99, 100, 101, 102]],
]  # two images of 3 rows and 4 columns (no size equals another, bytes >= 128 included)
_IMAGE_HEADER = b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02" + b"\x00\x00\x00\x03" + b"\x00\x00\x00\x04"
_LABELS = [7, 3] + [(5 * i) % 10 for i in range(298)]  # 300 labels: the count needs two bytes (0x012c)
_LABEL_HEADER = b"\x00\x00\x08\x01" + b"\x00\x00\x01\x2c"


def _hand_images() -> bytes:
    return _IMAGE_HEADER + bytes(v for image in _PIXELS for row in image for v in row)


def _hand_labels() -> bytes:
    return _LABEL_HEADER + bytes(_LABELS)


def test_idx_hand_laid_bytes_agree_with_struct_big_endian() -> None:
    """The literal headers above are the big-endian words of the format (a check of the test's own layout)."""
    assert _IMAGE_HEADER == struct.pack(">I", 0x00000803) + struct.pack(">III", 2, 3, 4)
    assert _LABEL_HEADER == struct.pack(">I", 0x00000801) + struct.pack(">I", 300)
    assert len(_hand_images()) == 16 + 2 * 3 * 4 and len(_hand_labels()) == 8 + 300


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_of_hand_laid_files(gz: bool, tmp_path: Path) -> None:
    suffix = ".gz" if gz else ""
    images, labels = tmp_path / f"images-idx3-ubyte{suffix}", tmp_path / f"labels-idx1-ubyte{suffix}"
    for path, data in ((images, _hand_images()), (labels, _hand_labels())):
        path.write_bytes(gzip.compress(data) if gz else data)
    got = read_idx(images)
    assert got.dtype == torch.uint8 and got.shape == (2, 3, 4)
    assert got.tolist() == _PIXELS
    got = read_idx(labels)
    assert got.dtype == torch.uint8 and got.shape == (300,)
    assert got.tolist() == _LABELS
    for name, data in (("long", _hand_images() + b"\x00"), ("short", _hand_images()[:-1])):
        (tmp_path / name).write_bytes(gzip.compress(data) if gz else data)
        with pytest.raises(ValueError, match="implies 40; the file is truncated or corrupt"):
            read_idx(tmp_path / name)


def test_read_idx_of_hand_laid_multi_byte_types(tmp_path: Path) -> None:
    """Type codes 0x09, 0x0B, 0x0C, 0x0D, 0x0E: the values are big-endian too."""
    cases = [
        (0x09, ">3b", [-128, -1, 127], torch.int8),
        (0x0B, ">3h", [-2, 300, 32767], torch.int16),
        (0x0C, ">3i", [-70000, 1, 2**31 - 1], torch.int32),
        (0x0D, ">3f", [1.5, -0.25, 1024.0], torch.float32),
        (0x0E, ">3d", [math.pi, -1e-300, 2.0**60], torch.float64),
    ]
    for code, fmt, values, dtype in cases:
        path = tmp_path / f"type{code:02x}-idx1"
        path.write_bytes(bytes([0, 0, code, 1]) + struct.pack(">I", 3) + struct.pack(fmt, *values))
        got = read_idx(path)
        assert got.dtype == dtype and got.tolist() == values, f"type 0x{code:02x}"
    # a 2-dimensional int16 array: sizes and values big-endian, row-major
    path = tmp_path / "matrix-idx2"
    path.write_bytes(bytes([0, 0, 0x0B, 2]) + struct.pack(">II", 2, 3) + struct.pack(">6h", 1, -2, 3, 256, -257, 9))
    assert read_idx(path).tolist() == [[1, -2, 3], [256, -257, 9]]


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_writer_lays_out_the_published_bytes(suffix: str, tmp_path: Path) -> None:
    images, labels = tmp_path / f"i-idx3-ubyte{suffix}", tmp_path / f"l-idx1-ubyte{suffix}"
    _write_idx(images, np.array(_PIXELS, dtype=np.uint8))
    _write_idx(labels, np.array(_LABELS, dtype=np.uint8))
    raw_images, raw_labels = images.read_bytes(), labels.read_bytes()
    if suffix:
        assert raw_images[:2] == raw_labels[:2] == b"\x1f\x8b"  # gzip members
        raw_images, raw_labels = gzip.decompress(raw_images), gzip.decompress(raw_labels)
    assert raw_images == _hand_images()
    assert raw_labels == _hand_labels()


def test_synthetic_mnist_files_have_the_published_headers(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path, n_train=3, n_test=300, gz=False)
    for prefix, n in (("train", 3), ("t10k", 300)):
        raw = (root / f"{prefix}-images-idx3-ubyte").read_bytes()
        assert raw[:16] == b"\x00\x00\x08\x03" + struct.pack(">III", n, 28, 28) and len(raw) == 16 + n * 28 * 28
        raw = (root / f"{prefix}-labels-idx1-ubyte").read_bytes()
        assert raw[:8] == b"\x00\x00\x08\x01" + struct.pack(">I", n) and len(raw) == 8 + n
        assert max(raw[8:]) <= 9


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
        _dm("mnist", tmp_path / "nope")


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
    dm = _dm("mnist", mnist, binarize=True, noise_std=0.0)
    a, b = dm.train_set[2], dm.train_set[2 + len(dm.train_set)]  # one item, two epochs
    for item in (a, b):
        assert torch.all((item["target"] == 0) | (item["target"] == 1))
        assert torch.all((item["inputs"] == 0) | (item["inputs"] == item["target"]))
    assert not torch.equal(a["target"], b["target"])  # dynamic: redrawn every epoch


# ----------------------------------------------------------------------------------------------------- loaders


def test_training_batches_draw_k_per_batch_and_are_reproducible(mnist: Path) -> None:
    dm = _dm("mnist", mnist)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 10
    ks = [b["inputs"].shape[1] for b in batches]
    assert set(ks) <= {0, 1, 2, 3} and len(set(ks)) >= 3
    for b in batches:
        k = b["inputs"].shape[1]
        assert b["target"].shape == (4, 1, 32, 32) and b["inputs"].shape == (4, k, 1, 32, 32)
        assert b["target"].dtype == b["inputs"].dtype == torch.float32
        assert k == 0 or (0 <= float(b["inputs"].min()) and float(b["inputs"].max()) <= 1)
    again = list(loader)
    assert all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(batches, again))
    loader.sampler.set_epoch(1)
    other = list(loader)
    assert not all(torch.equal(x["target"], y["target"]) for x, y in zip(batches, other))


def test_workers_give_the_same_batches(mnist: Path) -> None:
    def same(a: list, b: list) -> bool:
        pairs = zip(a, b)
        return len(a) == len(b) and all(torch.equal(x["inputs"], y["inputs"]) and torch.equal(x["target"], y["target"])
                                        for x, y in pairs)  # fmt: skip

    loader = _dm("mnist", mnist).train_dataloader()
    pickle.dumps(loader.collate_fn), pickle.dumps(loader.dataset)
    parallel = _dm("mnist", mnist, num_workers=2).train_dataloader()
    assert parallel.persistent_workers
    assert same(list(loader), list(parallel))
    loader.sampler.set_epoch(1), parallel.sampler.set_epoch(1)  # persistent workers follow the epoch
    assert same(list(loader), list(parallel))


def test_validation_cycles_k_and_evaluation_is_fixed(mnist: Path) -> None:
    dm = _dm("mnist", mnist, val_items=20)
    val = dm.val_dataloader()
    assert [b["inputs"].shape[1] for b in val] == [0, 1, 2, 3, 0]
    val.sampler.set_epoch(5)
    first = next(iter(val))["target"]
    assert torch.equal(first, next(iter(dm.val_dataloader()))["target"])
    ev = list(dm.eval_dataloader(batch_size=5, limit=12))
    assert [b["inputs"].shape for b in ev] == [(5, 3, 1, 32, 32), (5, 3, 1, 32, 32), (2, 3, 1, 32, 32)]
    assert len(list(dm.test_dataloader())) == 6  # all 24 t10k items in batches of 4
    same = list(_dm("mnist", mnist).eval_dataloader(batch_size=5, limit=12))
    assert all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(ev, same))
    reseeded = next(iter(_dm("mnist", mnist, seed=7).eval_dataloader(batch_size=5)))
    assert torch.equal(reseeded["target"], ev[0]["target"]) and not torch.equal(reseeded["inputs"], ev[0]["inputs"])
    assert torch.equal(dm.eval_set[3]["inputs"], ev[0]["inputs"][3])  # item content is fixed by (seed, index)


# ----------------------------------------------------------------------------------------------------- CelebA


def test_celeba_items_and_partitions(celeba: Path) -> None:
    train, test = FusionCelebA(celeba), FusionCelebA(celeba, split="test")
    assert (len(train), len(FusionCelebA(celeba, split="val")), len(test)) == (9, 3, 3)
    item = train[0]
    assert item["target"].shape == (3, 64, 64) and item["inputs"].shape == (3, 3, 64, 64)
    assert 0 <= float(item["target"].min()) and float(item["target"].max()) <= 1
    assert torch.all((item["inputs"] == 0) | (item["inputs"] == item["target"]))  # no noise by default


def test_celeba_flips_target_and_views_together(celeba: Path) -> None:
    never, always = FusionCelebA(celeba, flip_p=0.0), FusionCelebA(celeba, flip_p=1.0)
    for key in range(4):
        plain, flipped = never[key], always[key]
        assert torch.equal(flipped["target"], plain["target"].flip(-1))
        assert not torch.equal(flipped["target"], plain["target"])
        shown = flipped["inputs"] != 0
        assert bool(shown.any())
        assert torch.equal(flipped["inputs"][shown], flipped["target"].expand_as(flipped["inputs"])[shown])
    half = FusionCelebA(celeba, flip_p=0.5)
    flips = [torch.equal(half[k]["target"], always[k]["target"]) for k in range(40)]
    assert 5 < sum(flips) < 35
    dm = _dm("celeba", celeba)
    assert dm.train_set.flip_p == 0.5 and dm.eval_set.flip_p == 0.0
    partition = dict(line.split() for line in (celeba / "list_eval_partition.txt").read_text().splitlines())
    assert [p.name for p in dm.train_set.paths] == sorted(f for f, part in partition.items() if part == "0")
    assert [p.name for p in dm.eval_set.paths] == sorted(f for f, part in partition.items() if part == "2")


def test_celeba_centre_crop_and_flip_of_a_hand_made_face(tmp_path: Path) -> None:
    """A 218×178 picture, black outside its central 148×148 square (rows 35-182, columns 15-162), white inside
    except a red band over the square's left 20 columns: the target is that square (crop 148, no resize), its
    mirror image when flipped, and its resized (antialiased) white/red split at 64×64."""
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    picture = np.zeros((218, 178, 3), dtype=np.uint8)
    picture[35:183, 15:163] = 255
    picture[35:183, 15:35] = (255, 0, 0)
    Image.fromarray(picture).save(folder / "000001.jpg", format="PNG")  # lossless content under the listed name
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    square = torch.from_numpy(picture[35:183, 15:163].astype(np.float32) / 255).permute(2, 0, 1)
    plain = FusionCelebA(tmp_path, image_size=148, flip_p=0.0, noise_std=0.0)[0]["target"]
    torch.testing.assert_close(plain, square, rtol=0, atol=0)
    mirrored = FusionCelebA(tmp_path, image_size=148, flip_p=1.0, noise_std=0.0)[0]["target"]
    torch.testing.assert_close(mirrored, square.flip(-1), rtol=0, atol=0)
    small = FusionCelebA(tmp_path, flip_p=0.0, noise_std=0.0)[0]["target"]  # 64×64: red band 20·64/148 ≈ 8.6 wide
    assert small.shape == (3, 64, 64)
    torch.testing.assert_close(small[:, :, 10:], torch.ones(3, 64, 54), rtol=0, atol=1e-6)
    torch.testing.assert_close(small[0, :, :8], torch.ones(64, 8), rtol=0, atol=1e-6)
    assert float(small[1:, :, :8].max()) < 1e-6


def test_celeba_bad_roots(celeba: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"img_align_celeba/\*\.jpg"):
        FusionCelebA(tmp_path)
    broken = write_synthetic_celeba(tmp_path / "broken", n=5)
    (broken / "img_align_celeba" / "000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000001.jpg"):
        FusionCelebA(broken)
    (broken / "list_eval_partition.txt").write_text("000002.jpg 7\n")
    with pytest.raises(ValueError, match="list_eval_partition.txt:1"):
        FusionCelebA(broken)


# ----------------------------------------------------------------------------------------------------- T-LESS


def test_tless_class_split_and_every_tenth_hold_out(tless: tuple[Path, Path]) -> None:
    root, occluders = tless
    assert split_every_tenth([Path(f"{i:04d}.png") for i in range(25)], train=False) == [
        Path("0009.png"),
        Path("0019.png"),
    ]
    train, test = FusionTLESS(root, occluders), FusionTLESS(root, occluders, train=False)
    assert (len(train), len(test)) == (6 * 18, 6 * 2)
    assert {p.parent.parent.name for p in train.frames} == {f"{c:02d}" for c in TARGET_CLASSES}
    assert sorted(p.name for p in test.frames) == sorted(["0009.png", "0019.png"] * 6)
    assert not set(train.frames) & set(test.frames)
    train_classes = {int(p.parent.name) for p in train.occluders}
    test_classes = {int(p.parent.name) for p in test.occluders}
    assert train_classes == set(TRAIN_OCCLUDER_CLASSES) and test_classes == set(EVAL_OCCLUDER_CLASSES)


def test_tless_bop_layout_is_indexed(tmp_path: Path) -> None:
    write_synthetic_tless(tmp_path, 3, classes=(1, 19), size=32, bop=True)
    classes = index_tless(tmp_path)
    assert sorted(classes) == [1, 19] and all(len(v) == 3 for v in classes.values())
    assert classes[19][0].parent.parent.name == "000019"


def test_tless_items(tless: tuple[Path, Path]) -> None:
    root, occluders = tless
    train = FusionTLESS(root, occluders)
    item = train[4]
    target, inputs = item["target"], item["inputs"]
    assert target.shape == (3, 64, 64) and inputs.shape == (3, 3, 64, 64)
    assert 0 <= float(inputs.min()) and float(inputs.max()) <= 1
    changed = (inputs - target).abs().amax(dim=1) > 0.05  # (3, H, W): pixels an occluder covers
    assert all(0.05 < float(c.float().mean()) < 0.99 for c in changed)
    assert not torch.equal(inputs[0], inputs[1])
    assert torch.equal(train[4]["inputs"], inputs)
    augmented = [not torch.allclose(train[k]["target"], train.target(k), atol=1e-3) for k in range(6)]
    assert sum(augmented) >= 4  # the training targets are flipped / rotated / scaled / shifted
    test = FusionTLESS(root, occluders, train=False)
    assert torch.equal(test[1]["target"], test.target(1))  # evaluation targets are not augmented


def test_tless_missing_parts_name_the_layout(tless: tuple[Path, Path], tmp_path: Path) -> None:
    root, occluders = tless
    with pytest.raises(FileNotFoundError, match=r"train_primesense/<obj>/rgb/<frame>\.png"):
        FusionTLESS(tmp_path, occluders)
    (tmp_path / "occ" / "01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"class\(es\) 01, 02, 05.*OCCLUDERS/<class:02d>/\*\.png"):
        FusionTLESS(root, tmp_path / "occ")
    with pytest.raises(ValueError, match="occluder_root is not set"):
        _dm("tless", root)


def test_paste_occluder_composites_alpha() -> None:
    canvas = torch.zeros(3, 16, 16)
    rgba = torch.ones(4, 4, 6)
    rgba[3, :, 3:] = 0.5  # right half semi-transparent
    out = paste_occluder(canvas, rgba, position=(7.5, 7.5))
    assert torch.allclose(out[:, 6:10, 5:8], torch.ones(3, 4, 3))
    assert torch.allclose(out[:, 6:10, 8:11], torch.full((3, 4, 3), 0.5))
    assert float(out[:, :5].abs().sum()) == 0 and float(out[:, :, 12:].abs().sum()) == 0
    mirrored = paste_occluder(canvas, rgba, position=(7.5, 7.5), flip=True)
    assert torch.allclose(mirrored, out.flip(-1), atol=1e-6)
    turned = paste_occluder(canvas, rgba, position=(7.5, 7.5), angle=90.0)
    rows, cols = torch.nonzero(turned[0] > 1e-4).unbind(1)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (5, 10, 6, 9)  # 6 tall, 4 wide
    halves = sorted([float(turned[0, 5:8, 6:10].mean()), float(turned[0, 8:11, 6:10].mean())])
    assert halves == pytest.approx([0.5, 1.0], abs=1e-4)


def test_tless_data_module(tless: tuple[Path, Path]) -> None:
    root, occluders = tless
    dm = _dm("tless", root, occluder_root=str(occluders), val_items=8)
    batch = next(iter(dm.eval_dataloader(limit=4)))
    assert batch["target"].shape == (4, 3, 64, 64) and batch["inputs"].shape == (4, 3, 3, 64, 64)
    assert [b["inputs"].shape[1] for b in dm.val_dataloader()] == [0, 1]


# ----------------------------------------------------------------------------------------------------- digits


def test_digits_need_no_root() -> None:
    dm = _dm("digits", noise_std=0.0, binarize=True)
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


def _ramp(size: int) -> torch.Tensor:
    """``(2, S, S)``: channel 0 is the column index x, channel 1 the row index y (bilinear warps keep them exact)."""
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    return torch.stack([x, y])


def test_random_affine_against_closed_forms() -> None:
    s, c = 15, 7.0
    ramp = _ramp(s) / 100  # in [0, 0.14]: clamping to [0, 1] leaves it alone
    identity = random_affine(ramp, torch.Generator().manual_seed(0), rotation=0.0, scale=(1.0, 1.0), shift=0.0)
    torch.testing.assert_close(identity, ramp, atol=1e-6, rtol=0)
    # A scaling by a about the centre samples the source at c + (p - c) / a.
    zoom = random_affine(ramp, torch.Generator().manual_seed(0), rotation=0.0, scale=(2.0, 2.0), shift=0.0)
    torch.testing.assert_close(zoom, (c + (_ramp(s) - c) / 2) / 100, atol=1e-6, rtol=0)
    # A shift moves the ramp by one constant per axis, within ±shift·S, and fills the uncovered border with 0.
    for seed in range(4):
        moved = random_affine(ramp, torch.Generator().manual_seed(seed), rotation=0.0, scale=(1.0, 1.0), shift=0.2)
        inner = moved[:, 4:-4, 4:-4] - ramp[:, 4:-4, 4:-4]
        offset = inner.flatten(1).mean(1)
        torch.testing.assert_close(inner, offset[:, None, None].expand_as(inner), atol=1e-6, rtol=0)
        assert bool((offset.abs() * 100 <= 0.2 * s + 1e-4).all()) and float(offset.abs().sum()) > 0
    # A rotation keeps the distance to the centre (sampled where the source covers the output).
    for seed in range(4):
        turned = random_affine(ramp, torch.Generator().manual_seed(seed), rotation=30.0, scale=(1.0, 1.0), shift=0.0)
        radius = ((_ramp(s) - c) ** 2).sum(0).sqrt()
        inside = radius <= 6
        torch.testing.assert_close(((turned * 100 - c) ** 2).sum(0).sqrt()[inside], radius[inside], atol=1e-3, rtol=0)
    # The same generator state gives the same map; a mirror with probability 1 flips x.
    draw = dict(rotation=10.0, scale=(0.9, 1.1), shift=0.1)
    a = random_affine(ramp, torch.Generator().manual_seed(5), **draw)
    assert torch.equal(a, random_affine(ramp, torch.Generator().manual_seed(5), **draw))
    flipped = random_affine(
        ramp, torch.Generator().manual_seed(0), rotation=0.0, scale=(1.0, 1.0), shift=0.0, flip_p=1.0
    )
    torch.testing.assert_close(flipped[0], ramp[0].flip(-1), atol=1e-6, rtol=0)


def test_digit_augmentation_is_training_only_and_reproducible() -> None:
    dm = _dm("digits", augment=True, binarize="threshold", noise_std=0.0)
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
        _dm("digits", augment=True, shift=-0.1)
    with pytest.raises(ValueError, match="augment must be true, false or null"):
        _dm("digits", augment="yes")


def test_digits_without_scikit_learn(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="FusionDigits needs scikit-learn: pip install scikit-learn"):
        FusionDigits()


# ----------------------------------------------------------------------------------------------------- module


def test_data_module_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="dataset must be one of"):
        _dm("cifar", tmp_path)
    with pytest.raises(ValueError, match="data.root is not set.*MNIST layout"):
        _dm("mnist", None)
    with pytest.raises(ValueError, match="takes no root"):
        _dm("digits", tmp_path)
    with pytest.raises(ValueError, match="only used by dataset 'tless'"):
        _dm("digits", occluder_root=str(tmp_path))
    with pytest.raises(FileNotFoundError, match="aligned-and-cropped CelebA layout"):
        _dm("celeba", tmp_path / "nope")
    for name in ("MNIST", "CelebA", "T-LESS", "occluder", "digits"):
        assert name in FusionDataModule.LAYOUT


@pytest.mark.parametrize("name", ["fusion_mnist", "fusion_celeba", "fusion_tless", "fusion_digits"])
def test_configs(name: str) -> None:
    node = OmegaConf.load(ROOT / "conf" / "data" / f"{name}.yaml")
    cfg = OmegaConf.create({"seed": 3, "data": node})
    assert cfg.data._target_ == "fusion.data.fusion_sets.FusionDataModule"
    assert cfg.data.seed == 3 and cfg.data.num_workers == 4
    missing = OmegaConf.missing_keys(cfg)
    if name == "fusion_digits":
        from hydra.utils import instantiate

        assert not missing and cfg.data.binarize
        dm = instantiate(cfg.data)
        assert dm.seed == 3 and len(dm.eval_set) == 300
    else:
        assert "data.root" in missing
    expected = {"fusion_mnist": (400, True), "fusion_celeba": (32, False), "fusion_tless": (32, False)}
    if name in expected:
        assert (cfg.data.batch_size, cfg.data.binarize) == expected[name]


def test_synthetic_images_look_like_images(mnist: Path, celeba: Path) -> None:
    digits = read_idx(mnist / "t10k-images-idx3-ubyte.gz").float() / 255
    ink = (digits > 0.5).float().mean(dim=(1, 2))
    assert bool(((ink > 0.02) & (ink < 0.5)).all())  # strokes on a black ground
    face = FusionCelebA(celeba, flip_p=0.0)[0]["target"]
    assert float(face.std()) > 0.1 and np.isfinite(face.numpy()).all()


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


def test_training_k_is_uniform_over_zero_to_max_inputs() -> None:
    """Section 5.4: K uniform in {0, 1, 2, 3}, one per batch, fixed by the batch's first key."""
    item = {"target": torch.zeros(1, 2, 2), "inputs": torch.zeros(3, 1, 2, 2)}
    collate = TrainCollate(3, seed=0)
    ks = [collate([(key, item), (key + 1, item)])["inputs"].shape[1] for key in range(0, 1600, 2)]
    counts = np.bincount(ks, minlength=5)
    assert counts[4] == 0 and all(abs(c / len(ks) - 0.25) < 0.05 for c in counts[:4])
    assert ks == [collate([(key, item)])["inputs"].shape[1] for key in range(0, 1600, 2)]


def test_threshold_binarisation_keeps_values_above_one_half() -> None:
    data = FusionSet(1, max_inputs=1, binarize="threshold", seed=0, split=0)
    grey = torch.tensor([0.0, 0.25, 0.5, 0.5 + 1e-6, 0.75, 1.0])
    assert data.binarized(grey, torch.Generator()).tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]


def test_tless_views_paste_five_to_eight_occluders(tless: tuple[Path, Path], monkeypatch) -> None:
    """Each view pastes n occluders, n uniform in {5, ..., 8} (both ends included)."""
    root, occluders = tless
    train = FusionTLESS(root, occluders)
    calls = []
    monkeypatch.setattr(fusion_sets, "paste_occluder", lambda canvas, rgba, **kwargs: calls.append(1) or canvas)
    counts = []
    image = torch.zeros(3, 64, 64)
    for seed in range(120):
        calls.clear()
        train._occlude(image, torch.Generator().manual_seed(seed))
        counts.append(len(calls))
    assert set(counts) == {5, 6, 7, 8}


def test_digit_splits_draw_from_their_own_random_streams() -> None:
    """``split`` enters the item seed: item i of the training and of the evaluation part never share a stream."""
    train, test = FusionDigits(train=True), FusionDigits(train=False)
    for key in (0, 7):
        a, b = train.generator(key)[1], test.generator(key)[1]
        assert not torch.equal(torch.rand(8, generator=a), torch.rand(8, generator=b))
