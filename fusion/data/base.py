"""What the FusionVAE data sets share: keyed items with their own random streams, and ellipse-masked views.

Every item is a dict ``{"target": (C, H, W), "inputs": (K_max, C, H, W)}`` of float32 values in [0, 1]: the target
image and ``K_max`` partial views of it, generated live (FusionVAE, Section 5.2).

Randomness: item ``key`` of a data set of length ``n`` is item ``key mod n`` drawn in epoch ``key // n``, from a
generator seeded by ``(seed, split, epoch, index)``. Training loaders feed keys ``epoch·n + i`` through
:class:`~fusion.data.samplers.EpochSampler`, so each epoch sees fresh masks and occlusions while any epoch can be
reproduced (and a run resumed); evaluation items use epoch 0 and are fixed by ``(seed, index)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from fusion.data.checks import check_int
from fusion.data.geometry import check_affine, random_affine
from fusion.data.masks import check_ellipse_args, corrupt, ellipse_masks

__all__ = ["EllipseFusionSet", "FusionSet", "read_rgb"]


class FusionSet(Dataset):
    """Base of the fusion data sets: key → (index, per-item generator) and the ``{"target", "inputs"}`` item.

    Subclasses implement :meth:`make_item`. ``split`` (0 training, 1 evaluation) enters the seed so the two
    splits never share random streams.

    Args:
        length: number of items per epoch (at least 1).
        max_inputs: views per item, ``K_max``.
        binarize: ``True``/``"dynamic"`` (a Bernoulli draw per target pixel), ``"threshold"`` (grey values above
            one half) or ``False`` (targets unchanged); see :meth:`binarized`.
        seed: seeds every item.
        split: 0 for a training split, 1 for an evaluation split.
    """

    def __init__(self, length: int, *, max_inputs: int, binarize: bool | str, seed: int, split: int) -> None:
        if length < 1:
            raise ValueError(f"{type(self).__name__} has no items")
        self.length = int(length)
        self.max_inputs = check_int("max_inputs", max_inputs, 1)
        if binarize not in (False, True, "dynamic", "threshold"):
            raise ValueError(f"binarize must be false, true/'dynamic' or 'threshold', got {binarize!r}")
        self.binarize = "dynamic" if binarize is True else binarize
        self.seed = check_int("seed", seed, 0)
        self.split = int(split)

    def binarized(self, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The target ``(C, H, W)`` as the Bernoulli decoder sees it: a Bernoulli draw per pixel (``"dynamic"``),
        grey values above one half (``"threshold"``), or unchanged (``False``)."""
        if self.binarize == "dynamic":
            return torch.bernoulli(target, generator=generator)
        if self.binarize == "threshold":
            return (target > 0.5).to(target.dtype)
        return target

    def __len__(self) -> int:
        return self.length

    def generator(self, key: int) -> tuple[int, torch.Generator]:
        """Item index of ``key`` and a CPU generator seeded by ``(seed, split, epoch, index)``."""
        key = int(key)
        if key < 0:
            raise IndexError(f"{type(self).__name__} keys are >= 0, got {key}")
        epoch, index = divmod(key, self.length)
        state = np.random.SeedSequence([self.seed, self.split, epoch, index]).generate_state(2, dtype=np.uint32)
        return index, torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))

    def make_item(self, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The item of ``index``: ``{"target": (C, H, W), "inputs": (K_max, C, H, W)}``, drawn from ``generator``."""
        raise NotImplementedError

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        index, generator = self.generator(key)
        return self.make_item(index, generator)


class EllipseFusionSet(FusionSet):
    """A fusion data set whose views are ellipse-masked, noisy copies of the target (FusionMNIST, Section 5.1).

    Subclasses implement :meth:`image` (the clean target). An item: ``target = image(index)`` (binarised when
    ``binarize``), then ``K_max`` independent masks from :func:`~fusion.data.masks.ellipse_masks` and
    ``inputs[k] = corrupt(target, mask_k, noise_std)``. The views are made from the (binarised) target they
    accompany.

    With ``augment`` the clean target first gets one random affine map (:func:`~fusion.data.geometry.random_affine`,
    no mirror): a rotation uniform in ``±rotation`` degrees, a scaling uniform in ``scale`` and a shift uniform in
    ``±shift·side`` pixels along each axis. It is off by default; the data configs turn it on for training items
    only, so evaluation items never change.

    Args:
        length, max_inputs, binarize, seed, split: as in :class:`FusionSet`.
        noise_std: standard deviation of the Gaussian view noise (views are clipped to [0, 1]).
        min_ellipses, max_ellipses, min_axis, max_axis: mask parameters (:func:`~fusion.data.masks.ellipse_masks`).
        augment, rotation, scale, shift: the random affine map of the target.
    """

    def __init__(
        self,
        length: int,
        *,
        max_inputs: int = 3,
        noise_std: float = 0.1,
        binarize: bool | str = False,
        min_ellipses: int = 1,
        max_ellipses: int = 4,
        min_axis: float = 0.1,
        max_axis: float = 0.4,
        augment: bool = False,
        rotation: float = 15.0,
        scale: Sequence[float] = (0.9, 1.1),
        shift: float = 0.1,
        seed: int = 0,
        split: int = 0,
    ) -> None:
        super().__init__(length, max_inputs=max_inputs, binarize=binarize, seed=seed, split=split)
        check_ellipse_args(min_ellipses, max_ellipses, min_axis, max_axis)
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be finite and >= 0, got {noise_std}")
        if not isinstance(augment, bool):
            raise ValueError(f"augment must be true or false, got {augment!r}")
        self.noise_std = float(noise_std)
        self.augment = augment
        self.affine_args = check_affine(rotation, scale, shift)
        self.mask_args = dict(
            min_ellipses=min_ellipses, max_ellipses=max_ellipses, min_axis=min_axis, max_axis=max_axis
        )

    def image(self, index: int, generator: torch.Generator) -> torch.Tensor:
        """The clean target ``(C, H, W)`` in [0, 1] (may draw from ``generator``, e.g. for a flip)."""
        raise NotImplementedError

    def make_item(self, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        image = self.image(index, generator)
        if self.augment:
            image = random_affine(image, generator, **self.affine_args)
        target = self.binarized(image, generator)
        c, h, w = target.shape
        masks = ellipse_masks(self.max_inputs, h, w, generator=generator, **self.mask_args)
        inputs = corrupt(target.expand(self.max_inputs, c, h, w), masks, noise_std=self.noise_std, generator=generator)
        return {"target": target, "inputs": inputs}


def read_rgb(path: Path) -> torch.Tensor:
    """The image file at ``path`` as ``(3, H, W)`` uint8 RGB.

    Raises:
        ValueError: the file cannot be decoded (naming it).
    """
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)
