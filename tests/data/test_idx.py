"""The IDX format of MNIST: the reader against hand-laid bytes and corrupt files, and the fixture writer's bytes."""

from __future__ import annotations

import gzip
import math
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.data.idx import read_idx
from fusion.data.synthetic_layouts import write_idx


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
    write_idx(images, np.array(_PIXELS, dtype=np.uint8))
    write_idx(labels, np.array(_LABELS, dtype=np.uint8))
    raw_images, raw_labels = images.read_bytes(), labels.read_bytes()
    if suffix:
        assert raw_images[:2] == raw_labels[:2] == b"\x1f\x8b"  # gzip members
        raw_images, raw_labels = gzip.decompress(raw_images), gzip.decompress(raw_labels)
    assert raw_images == _hand_images()
    assert raw_labels == _hand_labels()
