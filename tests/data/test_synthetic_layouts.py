"""The fixture writers: tiny folders in the published layouts that the loaders read, with image-like content."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from fusion.data.celeba import FusionCelebA
from fusion.data.idx import read_idx
from fusion.data.synthetic_layouts import write_synthetic_mnist, write_synthetic_transient
from fusion.data.transient import index_webcams


def test_synthetic_mnist_files_have_the_published_headers(tmp_path: Path) -> None:
    root = write_synthetic_mnist(tmp_path, n_train=3, n_test=300, gz=False)
    for prefix, n in (("train", 3), ("t10k", 300)):
        raw = (root / f"{prefix}-images-idx3-ubyte").read_bytes()
        assert raw[:16] == b"\x00\x00\x08\x03" + struct.pack(">III", n, 28, 28) and len(raw) == 16 + n * 28 * 28
        raw = (root / f"{prefix}-labels-idx1-ubyte").read_bytes()
        assert raw[:8] == b"\x00\x00\x08\x01" + struct.pack(">I", n) and len(raw) == 8 + n
        assert max(raw[8:]) <= 9


def test_synthetic_images_look_like_images(mnist: Path, celeba: Path) -> None:
    digits = read_idx(mnist / "t10k-images-idx3-ubyte.gz").float() / 255
    ink = (digits > 0.5).float().mean(dim=(1, 2))
    assert bool(((ink > 0.02) & (ink < 0.5)).all())  # strokes on a black ground
    face = FusionCelebA(celeba, flip_p=0.0)[0]["target"]
    assert float(face.std()) > 0.1 and np.isfinite(face.numpy()).all()


def test_synthetic_transient_is_in_the_published_layout(tmp_path: Path) -> None:
    root = write_synthetic_transient(tmp_path, webcams=2, images_per_webcam=3, attributes=4)
    webcams = index_webcams(root)  # also validates annotations.tsv against attributes.txt
    assert sorted(webcams) == ["00000000", "00000001"] and all(len(v) == 3 for v in webcams.values())
    assert (root / "annotations" / "attributes.txt").read_text().splitlines() == [f"attribute_0{k}" for k in range(4)]
