"""The Transient Attributes database (Laffont et al. 2014) as copy-and-paste training pairs for GP-GAN.

Published layout under a local ``root`` (documented in ``datasets/transient_attributes.md``)::

    root/
      imageAlignedLD/<webcam>/<file>.jpg     aligned photographs, 60-120 per webcam
      annotations/annotations.tsv            optional: "<webcam>/<file>.jpg" then 40 tab-separated "value,confidence"
      annotations/attributes.txt             optional: the 40 attribute names, one a line

GP-GAN needs only the photographs; the annotations are checked when they are there (both files or neither).

A training example (GP-GAN, Section 4.1) takes two photographs of the same webcam, a source and a destination,
resizes both so the shorter side is ``load_size``, crops the same random ``image_size`` square from each, and
pastes the central square (side ``ratio·image_size``) of the source onto the destination. The ground truth is the
destination. A fraction of the webcams is held out for validation. Pairs are drawn from a seeded stream keyed by
``(seed, epoch, index)``, so every epoch sees fresh pairs, any epoch can be reproduced, and loader workers need
no shared state. With ``eval_masks`` the validation composites use object masks instead of the central square.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler

from fusion.data.samplers import EpochSampler

__all__ = [
    "LAYOUT",
    "TransientAttributesDataModule",
    "TransientPairs",
    "central_square_mask",
    "index_webcams",
    "is_complete_image",
    "split_webcams",
]

#: The expected layout, quoted by every error about a bad root.
LAYOUT = (
    "expected the Transient Attributes layout: ROOT/imageAlignedLD/<webcam>/*.jpg (optionally with "
    "ROOT/annotations/annotations.tsv and ROOT/annotations/attributes.txt)"
)
IMAGE_DIR = "imageAlignedLD"
ANNOTATIONS = ("annotations", "annotations.tsv")
ATTRIBUTES = ("annotations", "attributes.txt")
_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png"}


def _read_annotations(root: Path) -> tuple[list[str], int]:
    """Check ``annotations.tsv`` against ``attributes.txt``; return the listed image paths and the attribute count."""
    attributes = [line.strip() for line in (root.joinpath(*ATTRIBUTES)).read_text().splitlines() if line.strip()]
    if not attributes:
        raise ValueError(f"{root.joinpath(*ATTRIBUTES)} lists no attributes; {LAYOUT}")
    listed = []
    path = root.joinpath(*ANNOTATIONS)
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) != len(attributes) + 1:
            raise ValueError(
                f"{path}:{number} has {len(fields) - 1} attribute fields, expected {len(attributes)} "
                f"(one per line of attributes.txt); {LAYOUT}"
            )
        try:
            [float(v) for field in fields[1:] for v in field.split(",")]
        except ValueError:
            raise ValueError(f"{path}:{number} has a field that is not 'value,confidence'; {LAYOUT}") from None
        listed.append(fields[0])
    return listed, len(attributes)


def index_webcams(root: str | Path) -> dict[str, list[Path]]:
    """Validate ``root`` and list the images of every webcam (sorted), keeping webcams with at least two images.

    The annotation files are optional (GP-GAN uses the photographs only); when present they are validated.

    Every JPEG and PNG is checked for truncation (:func:`is_complete_image`): a truncated file is one error naming
    the first such file and their number, before training starts.

    Raises:
        FileNotFoundError: ``root``, ``imageAlignedLD`` or one of the two annotation files (when the other is
            there) is missing (the message names the layout).
        ValueError: malformed annotations, or fewer than two usable webcams.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"Transient Attributes root {str(root)!r} does not exist; {LAYOUT}")
    if not (root / IMAGE_DIR).is_dir():
        raise FileNotFoundError(f"{root / IMAGE_DIR} is missing; {LAYOUT}")
    present = [root.joinpath(*part).is_file() for part in (ANNOTATIONS, ATTRIBUTES)]
    if any(present):  # the annotations are optional, but a half-present pair is a broken download
        if not all(present):
            have, lack = (ANNOTATIONS, ATTRIBUTES) if present[0] else (ATTRIBUTES, ANNOTATIONS)
            raise FileNotFoundError(
                f"{root.joinpath(*lack)} is missing but {root.joinpath(*have)} is there; the annotations are "
                f"optional, but need both files; {LAYOUT}"
            )
        _read_annotations(root)
    webcams = {}
    for folder in sorted(p for p in (root / IMAGE_DIR).iterdir() if p.is_dir()):
        images = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if len(images) >= 2:
            webcams[folder.name] = images
    broken = [path for images in webcams.values() for path in images if not is_complete_image(path)]
    if broken:
        raise ValueError(
            f"{len(broken)} image(s) under {root / IMAGE_DIR} are truncated (no end-of-image marker), e.g. "
            f"{broken[0]}; replace or remove them"
        )
    if len(webcams) < 2:
        raise ValueError(
            f"{root / IMAGE_DIR} has {len(webcams)} webcam folder(s) with at least two images; need two or more "
            f"(one for training, one for validation); {LAYOUT}"
        )
    return webcams


def is_complete_image(path: Path) -> bool:
    """Whether a JPEG or PNG file ends with its format's end marker (JPEG EOI ``FF D9``, PNG ``IEND``).

    A download or copy cut short loses its end, so this finds truncated files by reading their last bytes only,
    without decoding them. Other formats are not checked (``True``).
    """
    suffix = path.suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        return True
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        size = handle.tell()
        handle.seek(max(0, size - 64))
        tail = handle.read()
    return (b"\xff\xd9" in tail) if suffix != ".png" else (b"IEND" in tail)


def split_webcams(names: Sequence[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Hold out ``round(val_fraction·n)`` webcams (at least one, at most ``n − 1``) for validation, chosen by seed."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    names = sorted(names)
    n_val = min(max(1, round(val_fraction * len(names))), len(names) - 1)
    order = np.random.default_rng(seed).permutation(len(names))
    val = sorted(names[i] for i in order[:n_val])
    train = sorted(names[i] for i in order[n_val:])
    return train, val


def central_square_mask(image_size: int, ratio: float) -> torch.Tensor:
    """``(1, S, S)`` binary mask of the central square of side ``int(ratio·S)`` (GP-GAN, Fig. 6c)."""
    side = int(image_size * ratio)
    start = image_size // 2 - side // 2
    mask = torch.zeros(1, image_size, image_size)
    mask[:, start : start + side, start : start + side] = 1
    return mask


def _load_resized(path: Path, load_size: int, *, mode: str = "RGB") -> torch.Tensor:
    """Read ``path``, resize it so its shorter side is ``load_size`` (bilinear); ``(C, h, w)`` in [0, 1].

    Raises:
        ValueError: the file cannot be decoded (naming it).
    """
    try:
        with Image.open(path) as image:
            image = image.convert(mode)
            w, h = image.size
            scale = load_size / min(w, h)
            size = (max(load_size, math.ceil(w * scale)), max(load_size, math.ceil(h * scale)))
            image = image.resize(size, Image.BILINEAR, reducing_gap=None)
            array = np.asarray(image, dtype=np.float32) / 255.0
    except (OSError, SyntaxError, ValueError) as err:  # Pillow's UnidentifiedImageError is an OSError
        raise ValueError(f"cannot read image {path}: {err}") from None
    if array.ndim == 2:
        array = array[:, :, None]
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


class TransientPairs(Dataset):
    """Copy-and-paste pairs from the given webcams; item ``k`` is pair ``k mod length`` of epoch ``k // length``.

    Items are dicts of ``composite`` ``(3, S, S)``, ``target`` (the destination, the ground truth), ``source`` and
    ``mask`` ``(1, S, S)``, all in [0, 1]. With ``masks`` (webcam → object mask files), the composite uses a random
    object mask of the webcam (resized and cropped like the images) instead of the central square.
    """

    def __init__(
        self,
        webcams: dict[str, list[Path]],
        length: int,
        *,
        image_size: int = 64,
        load_size: int = 64,
        ratio: float = 0.5,
        seed: int = 0,
        random_crop: bool = True,
        masks: dict[str, list[Path]] | None = None,
    ) -> None:
        if not webcams:
            raise ValueError("no webcams to draw pairs from")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}")
        if load_size < image_size:
            raise ValueError(f"load_size ({load_size}) must be >= image_size ({image_size})")
        if not 0 < ratio <= 1:
            raise ValueError(f"ratio must be in (0, 1], got {ratio}")
        self.names = sorted(webcams)
        self.webcams = webcams
        self.length, self.image_size, self.load_size, self.ratio = length, image_size, load_size, ratio
        self.seed, self.random_crop, self.masks = seed, random_crop, masks
        if masks is not None:
            self.names = [n for n in self.names if masks.get(n)]
            if not self.names:
                raise ValueError("none of the webcams has an object mask")
        self.square = central_square_mask(image_size, ratio)

    def __len__(self) -> int:
        return self.length

    def draw(self, key: int) -> tuple[str, Path, Path, int | None]:
        """The webcam, source and destination paths and mask index of item ``key`` (deterministic in ``key``)."""
        epoch, index = divmod(int(key), self.length)
        rng = np.random.default_rng([self.seed, epoch, index])
        name = self.names[rng.integers(len(self.names))]
        src, dst = rng.choice(len(self.webcams[name]), size=2, replace=False)
        mask_index = int(rng.integers(len(self.masks[name]))) if self.masks is not None else None
        return name, self.webcams[name][src], self.webcams[name][dst], mask_index

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        name, src_path, dst_path, mask_index = self.draw(key)
        src = _load_resized(src_path, self.load_size)
        dst = _load_resized(dst_path, self.load_size)
        if src.shape != dst.shape:  # aligned webcams share a size; tolerate odd files by resampling the source
            src = torch.nn.functional.interpolate(src[None], size=dst.shape[-2:], mode="bilinear")[0]
        h, w = dst.shape[-2:]
        s = self.image_size
        if self.random_crop:
            rng = np.random.default_rng([self.seed, int(key), 1])
            top, left = int(rng.integers(h - s + 1)), int(rng.integers(w - s + 1))
        else:
            top, left = (h - s) // 2, (w - s) // 2
        src, dst = src[:, top : top + s, left : left + s], dst[:, top : top + s, left : left + s]
        if self.masks is None:
            mask = self.square
        else:
            full = _load_resized(self.masks[name][mask_index], self.load_size, mode="L")
            if full.shape[-2:] != (h, w):
                full = torch.nn.functional.interpolate(full[None], size=(h, w), mode="bilinear")[0]
            mask = (full[:, top : top + s, left : left + s] > 0.5).float()
        composite = mask * src + (1 - mask) * dst
        return {"composite": composite, "target": dst, "source": src, "mask": mask.clone()}


def _index_masks(mask_root: Path, webcams: Sequence[str]) -> dict[str, list[Path]]:
    if not mask_root.is_dir():
        raise FileNotFoundError(
            f"eval_masks folder {str(mask_root)!r} does not exist; expected <eval_masks>/<webcam>/*.png"
        )
    found = {}
    for name in webcams:
        folder = mask_root / name
        if folder.is_dir():
            files = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
            if files:
                found[name] = files
    if not found:
        raise ValueError(f"{mask_root} has no masks for the validation webcams ({', '.join(webcams)})")
    return found


class TransientAttributesDataModule(L.LightningDataModule):
    """Training and validation pairs from a local copy of the Transient Attributes database (GP-GAN, Section 4.1).

    The root is validated on construction (a missing root or layout part raises ``FileNotFoundError`` naming the
    expected layout). ``val_fraction`` of the webcams (5 %, at least one) are held out; training pairs are redrawn
    every epoch (:class:`~fusion.data.samplers.EpochSampler`), validation pairs are fixed (epoch 0, centre crops).

    Args:
        root: dataset root in the published layout.
        batch_size: batch size of both loaders.
        image_size: crop side (64 in the paper).
        load_size: shorter side after resizing, before cropping (64 in the paper's code).
        ratio: side of the pasted central square relative to ``image_size`` (0.5).
        train_pairs: pairs per training epoch (150 000 in the paper).
        val_pairs: validation pairs.
        val_fraction: fraction of webcams held out for validation.
        eval_masks: optional folder ``<eval_masks>/<webcam>/*.png`` of object masks (object-mask evaluation mode).
        num_workers, pin_memory: loader settings.
        seed: seeds the split and the pair stream.
    """

    #: The expected folder layout (quoted when the root is missing or malformed).
    LAYOUT = LAYOUT

    def __init__(
        self,
        root: str,
        *,
        batch_size: int = 64,
        image_size: int = 64,
        load_size: int = 64,
        ratio: float = 0.5,
        train_pairs: int = 150_000,
        val_pairs: int = 256,
        val_fraction: float = 0.05,
        eval_masks: str | None = None,
        num_workers: int = 4,
        pin_memory: bool = False,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if root is None or str(root) in ("", "???"):
            raise ValueError(f"data.root is not set; pass data.root=PATH ({LAYOUT})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.root = Path(root).expanduser()
        self.webcams = index_webcams(self.root)
        self.train_webcams, self.val_webcams = split_webcams(list(self.webcams), val_fraction, seed)
        self.batch_size, self.num_workers, self.pin_memory = batch_size, num_workers, pin_memory
        common = dict(image_size=image_size, load_size=load_size, ratio=ratio)
        masks = _index_masks(Path(eval_masks).expanduser(), self.val_webcams) if eval_masks else None
        self.train_set = TransientPairs(
            {n: self.webcams[n] for n in self.train_webcams}, train_pairs, seed=seed, random_crop=True, **common
        )
        self.val_set = TransientPairs(
            {n: self.webcams[n] for n in self.val_webcams},
            val_pairs,
            seed=seed + 1,
            random_crop=False,
            masks=masks,
            **common,
        )
        self.seed = seed

    def _loader(self, dataset: TransientPairs, sampler: Sampler[int], drop_last: bool) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=False,
        )

    def train_dataloader(self) -> DataLoader:
        sampler = EpochSampler(len(self.train_set), shuffle=True, seed=self.seed)
        return self._loader(self.train_set, sampler, drop_last=len(self.train_set) >= self.batch_size)

    def val_dataloader(self) -> DataLoader:
        return self._loader(
            self.val_set, EpochSampler(len(self.val_set), shuffle=False, follow_epoch=False), drop_last=False
        )


def __getattr__(name: str):
    # The writer of a synthetic database in this layout sits with the other layout writers; it is reachable here too.
    if name == "write_synthetic_transient":
        from fusion.data.synthetic_layouts import write_synthetic_transient

        return write_synthetic_transient
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
