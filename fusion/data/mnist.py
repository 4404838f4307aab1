"""FusionMNIST (FusionVAE, Section 5.1): MNIST digits zero-padded from 28×28 to 32×32 with ellipse-masked views.

Each view keeps the pixels inside a random union of ellipses (:func:`fusion.data.masks.ellipse_masks`), blackens
the rest, adds Gaussian noise of a fixed standard deviation ``noise_std`` and clips to [0, 1]. The paper does not
state the noise level; 0.1 is the default here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fusion.data.base import EllipseFusionSet
from fusion.data.checks import check_int, check_root
from fusion.data.idx import read_idx

__all__ = ["MNIST_FILES", "MNIST_LAYOUT", "FusionMNIST", "find_mnist_files", "load_mnist"]

#: Expected MNIST layout (both the plain and torchvision's layout are accepted).
MNIST_LAYOUT = (
    "expected the MNIST layout: the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each optionally .gz) directly in ROOT or in "
    "ROOT/MNIST/raw/ (torchvision's layout)"
)
#: The four files of the published layout, by role.
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def find_mnist_files(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Locate the four MNIST files in ``root`` or ``root/MNIST/raw`` (each plain or ``.gz``).

    Returns:
        ``{"train_images", "train_labels", "test_images", "test_labels"}`` → path.

    Raises:
        FileNotFoundError: ``root`` missing, or neither folder holds all four files (the message names the layout).
    """
    root = check_root(root, "MNIST root", MNIST_LAYOUT)
    missing: list[str] = []
    for folder in (root, root / "MNIST" / "raw"):
        found, missing_here = {}, []
        for key, name in MNIST_FILES.items():
            path = next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)
            if path is None:
                missing_here.append(name)
            else:
                found[key] = path
        if not missing_here:
            return found
        if not missing:
            missing = missing_here
    raise FileNotFoundError(f"MNIST root {str(root)!r} lacks {', '.join(missing)}; {MNIST_LAYOUT}")


def load_mnist(root: str | os.PathLike[str], train: bool) -> torch.Tensor:
    """The training (60,000) or ``t10k`` (10,000) digits of ``root`` as ``(N, 28, 28)`` uint8, labels checked.

    Raises:
        FileNotFoundError: the layout is incomplete; ValueError: the files hold the wrong types or shapes.
    """
    files = find_mnist_files(root)
    prefix = "train" if train else "test"
    images, labels = read_idx(files[f"{prefix}_images"]), read_idx(files[f"{prefix}_labels"])
    if images.ndim != 3 or images.dtype != torch.uint8:
        raise ValueError(
            f"{files[f'{prefix}_images']} holds {images.dtype} data of shape {tuple(images.shape)}; "
            "expected unsigned bytes of shape (N, H, W)"
        )
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(
            f"{files[f'{prefix}_labels']} holds labels of shape {tuple(labels.shape)}; expected ({images.shape[0]},) "
            "to match the images"
        )
    return images


class FusionMNIST(EllipseFusionSet):
    """FusionMNIST (Section 5.1): zero-padded MNIST digits ``(1, S, S)`` with ``K_max`` ellipse-masked noisy views.

    Args:
        root: folder with the four MNIST IDX files (:data:`MNIST_LAYOUT`).
        train: the 60,000 training images, else the 10,000 ``t10k`` images.
        image_size: side after centred zero padding (32 in the paper; at least the stored 28).
        noise_std: standard deviation of the view noise (not stated in the paper; 0.1 by default).
        **options: ``max_inputs``, ``binarize``, ``seed``, the ellipse and the ``augment`` parameters of
            :class:`~fusion.data.base.EllipseFusionSet`.

    Example:
        >>> FusionMNIST(None)
        Traceback (most recent call last):
        ...
        ValueError: MNIST root is not set; pass the dataset folder (expected the MNIST layout: ...)
    """

    #: The expected folder layout (quoted when the root is missing or malformed).
    LAYOUT = MNIST_LAYOUT

    def __init__(self, root: str | os.PathLike[str], *, train: bool = True, image_size: int = 32, **options: Any):
        images = load_mnist(root, train)
        h, w = images.shape[1:]
        image_size = check_int("image_size", image_size, 1)
        if image_size < max(h, w):
            raise ValueError(f"image_size {image_size} is smaller than the stored {h}x{w} MNIST digits")
        options.setdefault("noise_std", 0.1)
        super().__init__(images.shape[0], split=0 if train else 1, **options)
        top, left = (image_size - h) // 2, (image_size - w) // 2
        self.images = F.pad(images, (left, image_size - w - left, top, image_size - h - top))
        self.train = train

    def image(self, index: int, generator: torch.Generator) -> torch.Tensor:
        return self.images[index][None].float() / 255.0
