"""FusionCelebA (FusionVAE, Section 5.1): aligned-and-cropped CelebA faces with ellipse-masked views.

Faces are centre-cropped to 148×148 and resized to 64×64; training items are flipped horizontally half of the time
(target and views alike); views as in FusionMNIST (no noise by default).
"""

from __future__ import annotations

import os
from typing import Any

import torch

from fusion.data.base import EllipseFusionSet, read_rgb
from fusion.data.checks import check_int, check_root
from fusion.data.geometry import resize_square

__all__ = ["CELEBA_LAYOUT", "FusionCelebA"]

#: Expected CelebA layout (the aligned-and-cropped images).
CELEBA_LAYOUT = (
    "expected the aligned-and-cropped CelebA layout: ROOT/img_align_celeba/*.jpg plus ROOT/list_eval_partition.txt "
    "(lines '000001.jpg 0'; 0 train, 1 val, 2 test)"
)
_SPLITS = {"train": 0, "val": 1, "test": 2}


class FusionCelebA(EllipseFusionSet):
    """FusionCelebA (Section 5.1): aligned CelebA faces ``(3, S, S)`` with ``K_max`` ellipse-masked views.

    Each image is centre-cropped to ``crop``×``crop`` (148) and resized to ``image_size`` (64, antialiased). With
    ``flip_p > 0`` the face is mirrored with that probability (Section 5.2: training only) before the views are
    made, so the target and its views share the flip.

    Args:
        root: folder in the :data:`CELEBA_LAYOUT`.
        split: ``"train"``, ``"val"`` or ``"test"`` (partition 0, 1 or 2 of ``list_eval_partition.txt``).
        image_size, crop: output side and centre-crop side.
        flip_p: probability of a horizontal flip (0.5 for training, 0 for evaluation).
        noise_std: standard deviation of the view noise (0 by default: the paper adds none for CelebA).
        **options: ``max_inputs``, ``binarize``, ``seed``, the ellipse and the ``augment`` parameters of
            :class:`~fusion.data.base.EllipseFusionSet`.

    Example:
        >>> FusionCelebA(None)
        Traceback (most recent call last):
        ...
        ValueError: CelebA root is not set; pass the dataset folder (expected the aligned-and-cropped CelebA ...)
    """

    #: The expected folder layout (quoted when the root is missing or malformed).
    LAYOUT = CELEBA_LAYOUT

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        split: str = "train",
        image_size: int = 64,
        crop: int = 148,
        flip_p: float = 0.5,
        **options: Any,
    ):
        if split not in _SPLITS:
            raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        root = check_root(root, "CelebA root", CELEBA_LAYOUT)
        folder, listing = root / "img_align_celeba", root / "list_eval_partition.txt"
        for part in (folder, listing):
            if not part.exists():
                raise FileNotFoundError(f"{part} is missing; {CELEBA_LAYOUT}")
        files = []
        for number, line in enumerate(listing.read_text().splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise ValueError(f"{listing}:{number} reads {line.strip()!r}; expected '<file>.jpg <0|1|2>'")
            if int(fields[1]) == _SPLITS[split]:
                files.append(fields[0])
        present = set(os.listdir(folder))
        absent = [f for f in files if f not in present]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} image(s) of the {split} partition are missing from {folder}, e.g. {absent[0]}; "
                f"{CELEBA_LAYOUT}"
            )
        self.image_size, self.crop = check_int("image_size", image_size, 1), check_int("crop", crop, 1)
        options.setdefault("noise_std", 0.0)
        super().__init__(len(files), split=0 if split == "train" else 1, **options)
        self.paths = [folder / f for f in files]
        self.flip_p = float(flip_p)

    def image(self, index: int, generator: torch.Generator) -> torch.Tensor:
        image = read_rgb(self.paths[index])
        h, w = image.shape[-2:]
        if min(h, w) < self.crop:
            raise ValueError(f"{self.paths[index]} is {h}x{w}, smaller than the {self.crop}x{self.crop} centre crop")
        top, left = (h - self.crop) // 2, (w - self.crop) // 2
        image = resize_square(image[:, top : top + self.crop, left : left + self.crop], self.image_size)
        flip = float(torch.rand((), generator=generator)) < self.flip_p
        return image.flip(-1) if flip else image
