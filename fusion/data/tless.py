"""FusionT-LESS (FusionVAE, Sections 5.1-5.2): T-LESS objects hidden behind pasted objects of other classes.

Targets are real T-LESS training images of classes 19-24 (the objects with power sockets); every tenth image of
each class is held out for evaluation. Training targets get one random flip / rotation / scaling / shift; each view
pastes 5 to 8 objects of other classes (cut offline by ``datasets/tless_occluders.py``), each randomly flipped,
rotated, scaled and placed. Occluders of classes 1, 2, 5-7, 11-14, 25-27 serve training, those of classes 3, 4,
8-10, 15-18, 28-30 evaluation.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from fusion.data.base import FusionSet, read_rgb
from fusion.data.checks import check_int, check_range, check_root
from fusion.data.geometry import paste_occluder, random_affine, resize_square, uniform
from fusion.data.masks import corrupt

__all__ = [
    "EVAL_OCCLUDER_CLASSES",
    "OCCLUDER_LAYOUT",
    "TARGET_CLASSES",
    "TLESS_LAYOUT",
    "TRAIN_OCCLUDER_CLASSES",
    "FusionTLESS",
    "index_occluders",
    "index_tless",
    "split_every_tenth",
]

#: Expected T-LESS layout (real training images, T-LESS v2 or BOP folder names).
TLESS_LAYOUT = (
    "expected the T-LESS layout: ROOT/train_primesense/<obj>/rgb/<frame>.png with <obj> 01..30 (T-LESS v2) "
    "or 000001..000030 (BOP)"
)
#: Expected occluder folder (written by datasets/tless_occluders.py).
OCCLUDER_LAYOUT = (
    "expected the cut occluders: OCCLUDERS/<class:02d>/*.png (RGBA, written by "
    "python datasets/tless_occluders.py --root ROOT --out OCCLUDERS)"
)
#: T-LESS classes whose images are the targets (all objects with power sockets).
TARGET_CLASSES = (19, 20, 21, 22, 23, 24)
#: T-LESS classes cut into occluders for training and for evaluation (disjoint).
TRAIN_OCCLUDER_CLASSES = (1, 2, 5, 6, 7, 11, 12, 13, 14, 25, 26, 27)
EVAL_OCCLUDER_CLASSES = (3, 4, 8, 9, 10, 15, 16, 17, 18, 28, 29, 30)
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}


def index_tless(root: str | os.PathLike[str]) -> dict[int, list[Path]]:
    """The sorted frames of every object class under ``root/train_primesense`` (v2 ``01`` or BOP ``000001`` names).

    Raises:
        FileNotFoundError: ``root`` or ``train_primesense`` missing, or no class folder with ``rgb/`` images.
        ValueError: two folders name the same class.
    """
    root = check_root(root, "T-LESS root", TLESS_LAYOUT)
    base = root / "train_primesense"
    if not base.is_dir():
        raise FileNotFoundError(f"{base} is missing; {TLESS_LAYOUT}")
    classes: dict[int, list[Path]] = {}
    for folder in sorted(p for p in base.iterdir() if p.is_dir()):
        if not (folder.name.isdigit() and len(folder.name) in (2, 6) and 1 <= int(folder.name) <= 30):
            continue
        rgb = folder / "rgb"
        frames = sorted(p for p in rgb.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES) if rgb.is_dir() else []
        if not frames:
            continue
        cls = int(folder.name)
        if cls in classes:
            raise ValueError(f"{base} holds class {cls} twice ({folder.name} and another spelling); {TLESS_LAYOUT}")
        classes[cls] = frames
    if not classes:
        raise FileNotFoundError(f"{base} has no <obj>/rgb/ folder with images; {TLESS_LAYOUT}")
    return classes


def split_every_tenth(frames: Sequence[Path], train: bool) -> list[Path]:
    """Hold out every tenth frame (positions 9, 19, ... of the sorted list) for evaluation (Section 5.1).

    Example:
        >>> [p.name for p in split_every_tenth([Path(f"{i:02d}.png") for i in range(12)], train=False)]
        ['09.png']
    """
    ordered = sorted(frames)
    return [f for i, f in enumerate(ordered) if (i % 10 == 9) != train]


def index_occluders(occluder_root: str | os.PathLike[str], classes: Sequence[int]) -> list[Path]:
    """All occluder PNGs of ``classes`` under ``occluder_root/<class:02d>/`` (sorted).

    Raises:
        FileNotFoundError: the folder is missing, or a class has no occluders (the message names the layout).
    """
    root = check_root(occluder_root, "occluder root", OCCLUDER_LAYOUT)
    found, empty = [], []
    for cls in classes:
        folder = root / f"{int(cls):02d}"
        files = sorted(folder.glob("*.png")) if folder.is_dir() else []
        if not files:
            empty.append(f"{int(cls):02d}")
        found += files
    if empty:
        raise FileNotFoundError(
            f"occluder root {str(root)!r} has no occluders of class(es) {', '.join(empty)}; {OCCLUDER_LAYOUT}"
        )
    return found


class FusionTLESS(FusionSet):
    """FusionT-LESS (Section 5.1-5.2): T-LESS objects ``(3, S, S)`` and ``K_max`` views hidden behind 5-8 others.

    Targets are the real training frames of :data:`TARGET_CLASSES`; within each class (frames sorted) positions
    9, 19, 29, ... form the evaluation split, the others the training split. Each frame is resized (shorter
    side to ``image_size``, centre crop, antialiased). With ``augment`` the target then gets one random affine
    map: a mirror with probability ``flip_p``, a rotation uniform in ``±rotation`` degrees, a scaling uniform in
    ``scale`` and a shift uniform in ``±shift·image_size`` pixels along each axis (black fills the uncovered
    border, like the T-LESS background). Each view pastes ``n`` occluders, ``n`` uniform in
    ``{min_occluders, ..., max_occluders}``, drawn uniformly from the occluder files of ``occluder_classes``;
    each is mirrored with probability 1/2, rotated uniformly in ``±occluder_rotation`` degrees, scaled by the
    frame-to-``image_size`` factor times a factor uniform in ``occluder_scale`` (objects keep their relative
    size) and centred uniformly over the image. Gaussian noise of ``noise_std`` is added last (0: none).

    Args:
        root: T-LESS folder (:data:`TLESS_LAYOUT`).
        occluder_root: folder of cut occluders (:data:`OCCLUDER_LAYOUT`).
        train: training split with the training occluders, else the held-out frames with the evaluation ones.
        image_size: output side (64).
        augment: random target augmentation (default: ``train``).
        target_classes: classes of the targets (19-24).
        occluder_classes: classes of the occluders (default by ``train``: :data:`TRAIN_OCCLUDER_CLASSES` or
            :data:`EVAL_OCCLUDER_CLASSES`).
        min_occluders, max_occluders: range of occluders per view (5 and 8).
        flip_p, rotation, scale, shift: target augmentation ranges.
        occluder_rotation, occluder_scale: occluder ranges.
        noise_std: view noise (0).
        max_inputs, binarize, seed: as in :class:`~fusion.data.base.FusionSet`.

    Example:
        >>> FusionTLESS(None, None)
        Traceback (most recent call last):
        ...
        ValueError: T-LESS root is not set; pass the dataset folder (expected the T-LESS layout: ...)
    """

    #: The expected folder layouts (quoted when a root is missing or malformed).
    LAYOUT = f"root: {TLESS_LAYOUT}; occluder_root: {OCCLUDER_LAYOUT}"

    def __init__(
        self,
        root: str | os.PathLike[str],
        occluder_root: str | os.PathLike[str],
        *,
        train: bool = True,
        image_size: int = 64,
        augment: bool | None = None,
        target_classes: Sequence[int] = TARGET_CLASSES,
        occluder_classes: Sequence[int] | None = None,
        min_occluders: int = 5,
        max_occluders: int = 8,
        flip_p: float = 0.5,
        rotation: float = 15.0,
        scale: Sequence[float] = (0.9, 1.1),
        shift: float = 0.1,
        occluder_rotation: float = 180.0,
        occluder_scale: Sequence[float] = (0.7, 1.0),
        noise_std: float = 0.0,
        max_inputs: int = 3,
        binarize: bool | str = False,
        seed: int = 0,
    ) -> None:
        self.image_size = check_int("image_size", image_size, 1)
        min_occluders, max_occluders = check_int("min_occluders", min_occluders, 0), int(max_occluders)
        if max_occluders < min_occluders:
            raise ValueError(f"need min_occluders <= max_occluders, got {min_occluders} and {max_occluders}")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        if not (0 <= rotation <= 180 and 0 <= occluder_rotation <= 180):
            raise ValueError(f"rotation ranges must be in [0, 180] degrees, got {rotation} and {occluder_rotation}")
        if not 0 <= shift <= 1:
            raise ValueError(f"shift must be in [0, 1] (a fraction of image_size), got {shift}")
        if not (math.isfinite(noise_std) and noise_std >= 0):
            raise ValueError(f"noise_std must be finite and >= 0, got {noise_std}")
        if augment is not None and not isinstance(augment, bool):
            raise ValueError(f"augment must be true, false or null, got {augment!r}")
        self.scale = check_range("scale", scale, 1e-3, 1e3)
        self.occluder_scale = check_range("occluder_scale", occluder_scale, 1e-3, 1e3)
        classes = index_tless(root)
        absent = [c for c in target_classes if c not in classes]
        if absent:
            raise FileNotFoundError(
                f"T-LESS root {str(root)!r} has no frames of target class(es) {absent}; {TLESS_LAYOUT}"
            )
        self.frames = [f for c in target_classes for f in split_every_tenth(classes[c], train)]
        if occluder_classes is None:
            occluder_classes = TRAIN_OCCLUDER_CLASSES if train else EVAL_OCCLUDER_CLASSES
        self.occluder_classes = tuple(int(c) for c in occluder_classes)
        self.occluders = index_occluders(occluder_root, self.occluder_classes) if max_occluders > 0 else []
        super().__init__(len(self.frames), max_inputs=max_inputs, binarize=binarize, seed=seed, split=0 if train else 1)
        self.train = bool(train)
        self.augment = self.train if augment is None else augment
        self.min_occluders, self.max_occluders = min_occluders, max_occluders
        self.flip_p, self.rotation, self.shift = float(flip_p), float(rotation), float(shift)
        self.occluder_rotation, self.noise_std = float(occluder_rotation), float(noise_std)
        with Image.open(self.frames[0]) as first:
            self.frame_scale = self.image_size / min(first.size)  # frame pixels → output pixels
        self._cache: dict[int, torch.Tensor] = {}

    def target(self, index: int) -> torch.Tensor:
        """The resized, unaugmented target frame ``(3, S, S)``."""
        return resize_square(read_rgb(self.frames[index]), self.image_size)

    def occluder(self, number: int) -> torch.Tensor:
        """Occluder ``number`` as ``(4, h, w)`` float RGBA, pre-shrunk to its largest pasted size (cached)."""
        cached = self._cache.get(number)
        if cached is None:
            path = self.occluders[number]
            try:
                with Image.open(path) as image:
                    array = np.asarray(image.convert("RGBA"), dtype=np.uint8)
            except (OSError, SyntaxError, ValueError) as err:
                raise ValueError(f"cannot read occluder {path}: {err}") from None
            rgba = torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255.0
            factor = self.frame_scale * self.occluder_scale[1]
            size = (max(1, round(rgba.shape[1] * factor)), max(1, round(rgba.shape[2] * factor)))
            rgba = F.interpolate(rgba[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]
            cached = (rgba.clamp(0, 1) * 255).round().to(torch.uint8)
            self._cache[number] = cached
        return cached.float() / 255.0

    def _augment(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return random_affine(
            image, generator, rotation=self.rotation, scale=self.scale, shift=self.shift, flip_p=self.flip_p
        )

    def _occlude(self, image: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        s = self.image_size
        count = int(torch.randint(self.min_occluders, self.max_occluders + 1, (), generator=generator))
        for _ in range(count):
            number = int(torch.randint(len(self.occluders), (), generator=generator))
            flip = uniform(generator, 0, 1) < 0.5
            angle = uniform(generator, -self.occluder_rotation, self.occluder_rotation)
            scale = uniform(generator, *self.occluder_scale) / self.occluder_scale[1]
            position = (uniform(generator, 0, s - 1), uniform(generator, 0, s - 1))
            image = paste_occluder(image, self.occluder(number), position=position, angle=angle, scale=scale, flip=flip)
        return image

    def make_item(self, index: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        target = self.target(index)
        if self.augment:
            target = self._augment(target, generator)
        target = self.binarized(target, generator)
        inputs = torch.stack([self._occlude(target, generator) for _ in range(self.max_inputs)])
        if self.noise_std > 0:
            inputs = corrupt(inputs, torch.ones(()), noise_std=self.noise_std, generator=generator)
        return {"target": target, "inputs": inputs}
