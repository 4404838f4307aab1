"""Tiny synthetic data sets written to disk in the published layouts: stand-ins for tests, benchmarks and smoke runs.

This is the one module of the package that writes data sets. The real databases cannot be downloaded here, so the
tests, the benchmarks (``benchmarks/fusionvae_mnist.py``, ``benchmarks/gpgan.py``) and the smoke runs documented in
``datasets/*.md`` build small folders in the exact layouts the loaders read:

* :func:`write_synthetic_mnist`: the four MNIST IDX files (stroke drawings on black);
* :func:`write_synthetic_celeba`: aligned-and-cropped CelebA (face-like ovals, a mark on one cheek);
* :func:`write_synthetic_tless`: T-LESS training frames (shaded grey blobs on black, v2 or BOP folder names);
* :func:`write_synthetic_transient`: the Transient Attributes database (smooth scenes under changing light).

The folder and file names are written from the published layouts, not taken from the loaders' constants, so a
loader that drifts from its layout fails its tests.
"""

from __future__ import annotations

import gzip
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "write_idx",
    "write_synthetic_celeba",
    "write_synthetic_mnist",
    "write_synthetic_tless",
    "write_synthetic_transient",
]


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` as an unsigned-byte IDX file (gzip-compressed when ``path`` ends with ``.gz``).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
        >>> write_idx(path, np.array([7, 8, 9]))
        >>> list(path.read_bytes())
        [0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]
    """
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _stroke_digits(rng: np.random.Generator, n: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digit-like images ``(n, size, size)`` uint8 (thick random strokes on black) and random labels ``(n,)``."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    images = np.zeros((n, size, size), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    for i in range(n):
        canvas = np.zeros((size, size))
        points = rng.uniform(7, size - 7, size=(rng.integers(3, 6), 2))
        width = rng.uniform(1.2, 2.2)
        for (y0, x0), (y1, x1) in zip(points[:-1], points[1:]):
            t = np.clip(
                ((yy - y0) * (y1 - y0) + (xx - x0) * (x1 - x0)) / max((y1 - y0) ** 2 + (x1 - x0) ** 2, 1e-9), 0, 1
            )
            dist = np.hypot(yy - (y0 + t * (y1 - y0)), xx - (x0 + t * (x1 - x0)))
            canvas = np.maximum(canvas, np.clip(1.5 - dist / width, 0, 1))
        images[i] = np.round(np.clip(canvas, 0, 1) * 255)
    return images, labels


def write_synthetic_mnist(
    root: str | os.PathLike[str],
    n_train: int = 64,
    n_test: int = 32,
    *,
    gz: bool = True,
    torchvision: bool = False,
    seed: int = 0,
) -> Path:
    """Write a tiny MNIST in the published layout: the four IDX files (gzip by default) of 28×28 stroke drawings.

    With ``torchvision`` the files go to ``root/MNIST/raw/`` instead of ``root``. Returns ``root``.
    """
    root = Path(root)
    folder = root / "MNIST" / "raw" if torchvision else root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = _stroke_digits(rng, n)
        write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return root


def write_synthetic_celeba(
    root: str | os.PathLike[str], n: int = 15, *, size: tuple[int, int] = (218, 178), seed: int = 0
) -> Path:
    """Write a tiny CelebA in the aligned-and-cropped layout: ``n`` face-like JPEGs and ``list_eval_partition.txt``.

    Each picture (``size`` = (H, W)) is a skin-coloured oval with eyes, mouth and hair on a smooth background, plus
    a bright mark on the left cheek (so a mirror image is told apart). Items are assigned to partitions 0, 0, 0, 1,
    2 in turn. Returns ``root``.
    """
    root = Path(root)
    folder = root / "img_align_celeba"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    lines = []
    for i in range(n):
        top, bottom = rng.uniform(0.2, 0.6, size=3), rng.uniform(0.2, 0.6, size=3)
        image = top + (bottom - top) * (yy / h)[..., None]
        cy, cx = h * rng.uniform(0.5, 0.56), w * rng.uniform(0.47, 0.53)
        ry, rx = h * rng.uniform(0.22, 0.27), w * rng.uniform(0.22, 0.27)
        hair = ((yy - cy + 0.25 * ry) / (1.2 * ry)) ** 2 + ((xx - cx) / (1.2 * rx)) ** 2 <= 1
        image[hair] = rng.uniform(0.05, 0.5, size=3)
        face = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1
        image[face] = np.array([0.85, 0.65, 0.55]) * rng.uniform(0.7, 1.1)
        for side in (-1, 1):
            eye = ((yy - cy + 0.25 * ry) / (0.08 * ry)) ** 2 + ((xx - cx - side * 0.4 * rx) / (0.15 * rx)) ** 2 <= 1
            image[eye] = 0.1
        mouth = ((yy - cy - 0.5 * ry) / (0.07 * ry)) ** 2 + ((xx - cx) / (0.35 * rx)) ** 2 <= 1
        image[mouth] = [0.6, 0.2, 0.2]
        mark = ((yy - cy - 0.1 * ry) / (0.12 * ry)) ** 2 + ((xx - cx + 0.6 * rx) / (0.12 * rx)) ** 2 <= 1
        image[mark] = [1.0, 1.0, 0.3]
        image = np.clip(image + rng.normal(0, 0.01, size=image.shape), 0, 1)
        name = f"{i + 1:06d}.jpg"
        Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / name, quality=95)
        lines.append(f"{name} {(0, 0, 0, 1, 2)[i % 5]}")
    (root / "list_eval_partition.txt").write_text("\n".join(lines) + "\n")
    return root


def write_synthetic_tless(
    root: str | os.PathLike[str],
    frames_per_class: int = 10,
    *,
    classes: Sequence[int] = tuple(range(1, 31)),
    size: int = 96,
    bop: bool = False,
    seed: int = 0,
) -> Path:
    """Write a tiny T-LESS in the published layout: ``root/train_primesense/<obj>/rgb/<frame:04d>.png``.

    Every ``size``×``size`` frame shows one shaded grey object (a class-specific polygon-like blob, turned with the
    frame number) on a black background, like the turntable frames of T-LESS; ``<obj>`` is ``01``-style, or
    ``000001``-style with ``bop``. Returns ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    c = (size - 1) / 2
    for cls in classes:
        folder = root / "train_primesense" / (f"{cls:06d}" if bop else f"{cls:02d}") / "rgb"
        folder.mkdir(parents=True, exist_ok=True)
        lobes, depth = 3 + cls % 4, 0.1 + 0.02 * (cls % 5)
        radius = size * (0.22 + 0.08 * ((cls * 7) % 5) / 4)
        grey = 0.35 + 0.4 * ((cls * 3) % 10) / 9
        for f in range(frames_per_class):
            turn = 2 * np.pi * f / max(frames_per_class, 1) + rng.uniform(0, 0.2)
            angle = np.arctan2(yy - c, xx - c)
            r = np.hypot(yy - c, xx - c)
            edge = radius * (1 + depth * np.cos(lobes * (angle - turn)))
            inside = r <= edge
            shade = grey * (0.75 + 0.25 * np.cos(angle - turn)) * (1 - 0.3 * r / radius)
            image = np.where(inside, shade, 0.02)[..., None] * np.array([1.0, 0.97, 0.93])
            image = np.clip(image + rng.normal(0, 0.01, size=image.shape), 0, 1)
            Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / f"{f:04d}.png")
    return root


def write_synthetic_transient(
    root: str | os.PathLike[str],
    *,
    webcams: int = 4,
    images_per_webcam: int = 5,
    size: tuple[int, int] = (48, 64),
    attributes: int = 40,
    seed: int = 0,
) -> Path:
    """Write a tiny Transient Attributes database in the published layout (``datasets/transient_attributes.md``).

    Each webcam ``imageAlignedLD/<8 digits>/`` gets a smooth random scene; its images are that scene under
    different global illumination and colour casts (like one aligned webcam across times of day and seasons),
    saved as JPEGs of ``size`` (H, W). ``annotations/annotations.tsv`` lists every image with ``attributes``
    random ``value,confidence`` pairs, ``annotations/attributes.txt`` names them. Returns ``root``.
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    h, w = size
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    lines = []
    for c in range(webcams):
        name = f"{c:08d}"
        folder = root / "imageAlignedLD" / name
        folder.mkdir(parents=True, exist_ok=True)
        scene = np.zeros((h, w, 3))
        for _ in range(4):
            fy, fx, phase = rng.uniform(0.5, 3, size=2).tolist() + [rng.uniform(0, 2 * np.pi)]
            scene += rng.uniform(0.05, 0.2, size=3) * np.sin(2 * np.pi * (fy * yy + fx * xx) + phase)[..., None]
        scene += rng.uniform(0.3, 0.6, size=3)
        for i in range(images_per_webcam):
            gain, cast = rng.uniform(0.5, 1.3), rng.uniform(-0.1, 0.1, size=3)
            image = np.clip(scene * gain + cast + rng.normal(0, 0.01, size=scene.shape), 0, 1)
            file = f"2014{i:04d}_120000.jpg"
            Image.fromarray((image * 255).round().astype(np.uint8)).save(folder / file, quality=95)
            pairs = [f"{rng.uniform():.4f},{rng.uniform():.4f}" for _ in range(attributes)]
            lines.append("\t".join([f"{name}/{file}", *pairs]))
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / "annotations.tsv").write_text("\n".join(lines) + "\n")
    names = "\n".join(f"attribute_{k:02d}" for k in range(attributes))
    (root / "annotations" / "attributes.txt").write_text(names + "\n")
    return root
