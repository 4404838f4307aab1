"""FusionDigits: scikit-learn's 1,797 real 8×8 handwritten digits, upsampled, with FusionMNIST's views.

A small stand-in for FusionMNIST that needs no download (scikit-learn must be installed).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fusion.data.base import EllipseFusionSet
from fusion.data.checks import check_int

__all__ = ["FusionDigits"]


class FusionDigits(EllipseFusionSet):
    """FusionDigits: scikit-learn's real 8×8 handwritten digits ``(1, S, S)``, upsampled, with FusionMNIST views.

    ``sklearn.datasets.load_digits`` ships 1,797 images with values 0..16 (mapped to [0, 1]); they are upsampled
    bilinearly (no antialiasing) to ``image_size`` and split once by ``split_seed`` into ``n_train`` training
    and the remaining evaluation images.

    Args:
        train: the training part of the split, else the evaluation part.
        image_size: output side (16 by default).
        n_train: size of the training part (1,497 by default, leaving 300 for evaluation).
        split_seed: seed of the fixed split (independent of the item seed, so every run evaluates the same digits).
        noise_std: standard deviation of the view noise (0.1 by default).
        **options: ``max_inputs``, ``binarize``, ``seed``, the ellipse and the ``augment`` parameters of
            :class:`~fusion.data.base.EllipseFusionSet`.

    Raises:
        ImportError: scikit-learn is not installed.

    Example:
        >>> digits = FusionDigits(train=False, image_size=8)
        >>> len(digits), tuple(digits[0]["inputs"].shape)
        (300, (3, 1, 8, 8))
    """

    def __init__(
        self, *, train: bool = True, image_size: int = 16, n_train: int = 1497, split_seed: int = 0, **options: Any
    ):
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ImportError("FusionDigits needs scikit-learn: pip install scikit-learn") from None
        image_size = check_int("image_size", image_size, 1)
        digits = torch.from_numpy(np.asarray(load_digits().images, dtype=np.float32) / 16.0)  # (1797, 8, 8)
        n_train = check_int("n_train", n_train, 1)
        if n_train >= digits.shape[0]:
            raise ValueError(f"n_train must be < {digits.shape[0]} (leaving evaluation digits), got {n_train}")
        order = torch.from_numpy(np.random.default_rng(check_int("split_seed", split_seed, 0)).permutation(len(digits)))
        chosen = order[:n_train] if train else order[n_train:]
        images = F.interpolate(digits[chosen][:, None], size=(image_size, image_size), mode="bilinear", antialias=False)
        options.setdefault("noise_std", 0.1)
        super().__init__(images.shape[0], split=0 if train else 1, **options)
        self.images = images.clamp(0.0, 1.0).contiguous()
        self.indices = chosen  # positions in load_digits
        self.train = train

    def image(self, index: int, generator: torch.Generator) -> torch.Tensor:
        return self.images[index]
