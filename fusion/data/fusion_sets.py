"""The FusionVAE datasets FusionMNIST, FusionCelebA and FusionT-LESS (paper, Section 5.1), plus FusionDigits.

Every item is a dict ``{"target": (C, H, W), "inputs": (K_max, C, H, W)}`` of float32 values in [0, 1]: the
target image and ``K_max`` (3) partial views of it, generated live (Section 5.2):

* FusionMNIST: MNIST digits zero-padded from 28×28 to 32×32; each view keeps the pixels inside a random union of
  ellipses (:func:`fusion.data.masks.ellipse_masks`), blackens the rest, adds Gaussian noise of a fixed standard
  deviation ``noise_std`` and clips to [0, 1]. The paper does not state the noise level; 0.1 is the default here.
* FusionCelebA: aligned-and-cropped CelebA faces, centre-cropped to 148×148 and resized to 64×64; training items
  are flipped horizontally half of the time (target and views alike); views as in FusionMNIST (no noise by
  default).
* FusionT-LESS: real T-LESS training images of classes 19-24 (the objects with power sockets); every tenth image
  of each class is held out for evaluation. Training targets get one random flip / rotation / scaling / shift;
  each view pastes 5 to 8 objects of other classes (cut offline by ``datasets/tless_occluders.py``), each
  randomly flipped, rotated, scaled and placed. Occluders of classes 1, 2, 5-7, 11-14, 25-27 serve training,
  those of classes 3, 4, 8-10, 15-18, 28-30 evaluation.
* FusionDigits: scikit-learn's 1,797 real 8×8 handwritten digits, upsampled, with the FusionMNIST views; a small
  stand-in that needs no download.

Randomness: item ``key`` of a dataset of length ``n`` is item ``key mod n`` drawn in epoch ``key // n``, from a
generator seeded by ``(seed, split, epoch, index)``. Training loaders feed keys ``epoch·n + i`` through
:class:`~fusion.data.transient.EpochSampler`, so each epoch sees fresh masks and occlusions while any epoch can be
reproduced (and a run resumed); evaluation items use epoch 0 and are fixed by ``(seed, index)``.

:class:`FusionDataModule` picks the number of views ``K`` per batch in its collate functions (see there).
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fusion.data.masks import check_ellipse_args, corrupt, ellipse_masks
from fusion.data.transient import EpochSampler

__all__ = [
    "CELEBA_LAYOUT",
    "EVAL_OCCLUDER_CLASSES",
    "LAYOUT",
    "MNIST_LAYOUT",
    "OCCLUDER_LAYOUT",
    "TARGET_CLASSES",
    "TLESS_LAYOUT",
    "TRAIN_OCCLUDER_CLASSES",
    "EllipseFusionSet",
    "EvalCollate",
    "FusionCelebA",
    "FusionDataModule",
    "FusionDigits",
    "FusionMNIST",
    "FusionSet",
    "FusionTLESS",
    "TrainCollate",
    "ValCollate",
    "affine_matrix",
    "find_mnist_files",
    "index_occluders",
    "index_tless",
    "paste_occluder",
    "random_affine",
    "read_idx",
    "split_every_tenth",
    "write_synthetic_celeba",
    "write_synthetic_mnist",
    "write_synthetic_tless",
]

#: Expected MNIST layout (both the plain and torchvision's layout are accepted).
MNIST_LAYOUT = (
    "expected the MNIST layout: the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each optionally .gz) directly in ROOT or in "
    "ROOT/MNIST/raw/ (torchvision's layout)"
)
#: Expected CelebA layout (the aligned-and-cropped images).
CELEBA_LAYOUT = (
    "expected the aligned-and-cropped CelebA layout: ROOT/img_align_celeba/*.jpg plus ROOT/list_eval_partition.txt "
    "(lines '000001.jpg 0'; 0 train, 1 val, 2 test)"
)
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
#: All layouts, quoted by the data module.
LAYOUT = (
    f"mnist: {MNIST_LAYOUT}; celeba: {CELEBA_LAYOUT}; tless: {TLESS_LAYOUT}, and occluder_root: {OCCLUDER_LAYOUT}; "
    "digits: no root (scikit-learn's load_digits)"
)

#: T-LESS classes whose images are the targets (all objects with power sockets).
TARGET_CLASSES = (19, 20, 21, 22, 23, 24)
#: T-LESS classes cut into occluders for training and for evaluation (disjoint).
TRAIN_OCCLUDER_CLASSES = (1, 2, 5, 6, 7, 11, 12, 13, 14, 25, 26, 27)
EVAL_OCCLUDER_CLASSES = (3, 4, 8, 9, 10, 15, 16, 17, 18, 28, 29, 30)

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_CELEBA_SPLITS = {"train": 0, "val": 1, "test": 2}


def _check_int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def _check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}") from None
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} <= low <= high <= {high}, got {value!r}")
    return a, b


def _check_root(root: Any, what: str, layout: str) -> Path:
    if root is None or str(root) in ("", "???"):
        raise ValueError(f"{what} is not set; pass the dataset folder ({layout})")
    path = Path(os.fspath(root)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; {layout}")
    return path


# ----------------------------------------------------------------------------------------------------- MNIST IDX


def read_idx(path: str | os.PathLike[str]) -> torch.Tensor:
    """Read an IDX file (the MNIST format), plain or gzip-compressed, as a tensor of its stored shape.

    The header is two zero bytes, a type code (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64), the number of dimensions ``d``, then ``d`` big-endian uint32 sizes; the data
    follow in row-major order, big-endian.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a corrupt file (bad gzip stream, magic number, type code, truncated or overlong data).

    Example:
        >>> import tempfile, pathlib
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "x-idx1-ubyte"
        >>> _ = p.write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 8, 9]))
        >>> read_idx(p).tolist()
        [7, 8, 9]
    """
    path = Path(os.fspath(path))
    if not path.is_file():
        raise FileNotFoundError(f"IDX file not found: {path}")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path} is a corrupt gzip file ({err}); expected a gzip-compressed IDX file") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise ValueError(
            f"{path} is not an IDX file: magic number {raw[:4].hex() or '(empty)'}, expected 0000TTDD with type "
            f"TT in {{08, 09, 0b, 0c, 0d, 0e}} and DD >= 1 dimensions"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path} is truncated: {len(raw)} bytes, the header of {ndim} dimensions needs {header}")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    expected = header + math.prod(dims) * dtype.itemsize
    if len(raw) != expected:
        raise ValueError(
            f"{path} holds {len(raw)} bytes but its header (dims {list(dims)}, {dtype.itemsize}-byte values) "
            f"implies {expected}; the file is truncated or corrupt"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))


def find_mnist_files(root: str | os.PathLike[str]) -> dict[str, Path]:
    """Locate the four MNIST files in ``root`` or ``root/MNIST/raw`` (each plain or ``.gz``).

    Returns:
        ``{"train_images", "train_labels", "test_images", "test_labels"}`` → path.

    Raises:
        FileNotFoundError: ``root`` missing, or neither folder holds all four files (the message names the layout).
    """
    root = _check_root(root, "MNIST root", MNIST_LAYOUT)
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


def _load_mnist(root: str | os.PathLike[str], train: bool) -> torch.Tensor:
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


# ------------------------------------------------------------------------------------------------ base datasets


class FusionSet(Dataset):
    """Base of the fusion datasets: key → (index, per-item generator) and the ``{"target", "inputs"}`` item.

    Subclasses implement :meth:`make_item`. ``split`` (0 training, 1 evaluation) enters the seed so the two
    splits never share random streams.
    """

    def __init__(self, length: int, *, max_inputs: int, binarize: bool | str, seed: int, split: int) -> None:
        if length < 1:
            raise ValueError(f"{type(self).__name__} has no items")
        self.length = int(length)
        self.max_inputs = _check_int("max_inputs", max_inputs, 1)
        if binarize not in (False, True, "dynamic", "threshold"):
            raise ValueError(f"binarize must be false, true/'dynamic' or 'threshold', got {binarize!r}")
        self.binarize = "dynamic" if binarize is True else binarize
        self.seed = _check_int("seed", seed, 0)
        self.split = int(split)

    def binarized(self, target: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """The target as the Bernoulli decoder sees it: a Bernoulli draw per pixel (``"dynamic"``), grey values
        above one half (``"threshold"``), or unchanged (``False``)."""
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
        raise NotImplementedError

    def __getitem__(self, key: int) -> dict[str, torch.Tensor]:
        index, generator = self.generator(key)
        return self.make_item(index, generator)


class EllipseFusionSet(FusionSet):
    """A fusion dataset whose views are ellipse-masked, noisy copies of the target (FusionMNIST, Section 5.1).

    Subclasses implement :meth:`image` (the clean target). An item: ``target = image(index)`` (binarised by a
    Bernoulli draw per pixel when ``binarize``), then ``K_max`` independent masks from
    :func:`~fusion.data.masks.ellipse_masks` and ``inputs[k] = corrupt(target, mask_k, noise_std)``. The views
    are made from the (binarised) target they accompany.

    With ``augment`` the clean target first gets one random affine map (:func:`random_affine`, no mirror): a
    rotation uniform in ``±rotation`` degrees, a scaling uniform in ``scale`` and a shift uniform in
    ``±shift·side`` pixels along each axis. It is off by default; the data modules turn it on for training items
    only, so evaluation items never change.
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
        self.noise_std = float(noise_std)
        self.augment = bool(augment)
        self.affine_args = _check_affine(rotation, scale, shift)
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


class FusionMNIST(EllipseFusionSet):
    """FusionMNIST (Section 5.1): zero-padded MNIST digits ``(1, S, S)`` with ``K_max`` ellipse-masked noisy views.

    Args:
        root: folder with the four MNIST IDX files (:data:`MNIST_LAYOUT`).
        train: the 60,000 training images, else the 10,000 ``t10k`` images.
        image_size: side after centred zero padding (32 in the paper; at least the stored 28).
        noise_std: standard deviation of the view noise (not stated in the paper; 0.1 by default).
        **options: ``max_inputs``, ``binarize``, ``seed``, the ellipse and the ``augment`` parameters of
            :class:`EllipseFusionSet`.
    """

    def __init__(self, root: str | os.PathLike[str], *, train: bool = True, image_size: int = 32, **options: Any):
        images = _load_mnist(root, train)
        h, w = images.shape[1:]
        image_size = _check_int("image_size", image_size, 1)
        if image_size < max(h, w):
            raise ValueError(f"image_size {image_size} is smaller than the stored {h}x{w} MNIST digits")
        options.setdefault("noise_std", 0.1)
        super().__init__(images.shape[0], split=0 if train else 1, **options)
        top, left = (image_size - h) // 2, (image_size - w) // 2
        self.images = F.pad(images, (left, image_size - w - left, top, image_size - h - top))
        self.train = train

    def image(self, index: int, generator: torch.Generator) -> torch.Tensor:
        return self.images[index][None].float() / 255.0


class FusionDigits(EllipseFusionSet):
    """FusionDigits: scikit-learn's real 8×8 handwritten digits, upsampled, with FusionMNIST views.

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
            :class:`EllipseFusionSet`.

    Raises:
        ImportError: scikit-learn is not installed.
    """

    def __init__(
        self, *, train: bool = True, image_size: int = 16, n_train: int = 1497, split_seed: int = 0, **options: Any
    ):
        try:
            from sklearn.datasets import load_digits
        except ImportError:
            raise ImportError("FusionDigits needs scikit-learn: pip install scikit-learn") from None
        image_size = _check_int("image_size", image_size, 1)
        digits = torch.from_numpy(np.asarray(load_digits().images, dtype=np.float32) / 16.0)  # (1797, 8, 8)
        n_train = _check_int("n_train", n_train, 1)
        if n_train >= digits.shape[0]:
            raise ValueError(f"n_train must be < {digits.shape[0]} (leaving evaluation digits), got {n_train}")
        order = torch.from_numpy(
            np.random.default_rng(_check_int("split_seed", split_seed, 0)).permutation(len(digits))
        )
        chosen = order[:n_train] if train else order[n_train:]
        images = F.interpolate(digits[chosen][:, None], size=(image_size, image_size), mode="bilinear", antialias=False)
        options.setdefault("noise_std", 0.1)
        super().__init__(images.shape[0], split=0 if train else 1, **options)
        self.images = images.clamp(0.0, 1.0).contiguous()
        self.indices = chosen  # positions in load_digits
        self.train = train

    def image(self, index: int, generator: torch.Generator) -> torch.Tensor:
        return self.images[index]


def _read_rgb(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read image {path}: {err}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def _resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(C, h, w)`` uint8 or float → float ``(C, size, size)`` in [0, 1]: shorter side to ``size``, centre crop."""
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    h, w = image.shape[-2:]
    scale = size / min(h, w)
    nh, nw = max(size, round(h * scale)), max(size, round(w * scale))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return image[:, top : top + size, left : left + size].clamp(0.0, 1.0).contiguous()


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
            :class:`EllipseFusionSet`.
    """

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
        if split not in _CELEBA_SPLITS:
            raise ValueError(f"split must be one of {sorted(_CELEBA_SPLITS)}, got {split!r}")
        if not 0 <= flip_p <= 1:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        root = _check_root(root, "CelebA root", CELEBA_LAYOUT)
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
            if int(fields[1]) == _CELEBA_SPLITS[split]:
                files.append(fields[0])
        present = set(os.listdir(folder))
        absent = [f for f in files if f not in present]
        if absent:
            raise FileNotFoundError(
                f"{len(absent)} image(s) of the {split} partition are missing from {folder}, e.g. {absent[0]}; "
                f"{CELEBA_LAYOUT}"
            )
        self.image_size, self.crop = _check_int("image_size", image_size, 1), _check_int("crop", crop, 1)
        options.setdefault("noise_std", 0.0)
        super().__init__(len(files), split=0 if split == "train" else 1, **options)
        self.paths = [folder / f for f in files]
        self.flip_p = float(flip_p)

    def image(self, index: int, generator: torch.Generator) -> torch.Tensor:
        image = _read_rgb(self.paths[index])
        h, w = image.shape[-2:]
        if min(h, w) < self.crop:
            raise ValueError(f"{self.paths[index]} is {h}x{w}, smaller than the {self.crop}x{self.crop} centre crop")
        top, left = (h - self.crop) // 2, (w - self.crop) // 2
        image = _resize(image[:, top : top + self.crop, left : left + self.crop], self.image_size)
        flip = float(torch.rand((), generator=generator)) < self.flip_p
        return image.flip(-1) if flip else image


# ----------------------------------------------------------------------------------------------------- T-LESS


def index_tless(root: str | os.PathLike[str]) -> dict[int, list[Path]]:
    """The sorted frames of every object class under ``root/train_primesense`` (v2 ``01`` or BOP ``000001`` names).

    Raises:
        FileNotFoundError: ``root`` or ``train_primesense`` missing, or no class folder with ``rgb/`` images.
        ValueError: two folders name the same class.
    """
    root = _check_root(root, "T-LESS root", TLESS_LAYOUT)
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
    """Hold out every tenth frame (positions 9, 19, ... of the sorted list) for evaluation (Section 5.1)."""
    ordered = sorted(frames)
    return [f for i, f in enumerate(ordered) if (i % 10 == 9) != train]


def index_occluders(occluder_root: str | os.PathLike[str], classes: Sequence[int]) -> list[Path]:
    """All occluder PNGs of ``classes`` under ``occluder_root/<class:02d>/`` (sorted).

    Raises:
        FileNotFoundError: the folder is missing, or a class has no occluders (the message names the layout).
    """
    root = _check_root(occluder_root, "occluder root", OCCLUDER_LAYOUT)
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


def affine_matrix(
    center: tuple[float, float], angle: float, scale: float, position: tuple[float, float]
) -> torch.Tensor:
    """``(1, 2, 3)`` map rotating by ``angle`` degrees (counter-clockwise) and scaling by ``scale`` about ``center``
    ``(x, y)`` of the source, then moving that point to ``position`` ``(x, y)`` of the output (pixel units)."""
    theta = math.radians(angle)
    a, b = scale * math.cos(theta), scale * math.sin(theta)
    cx, cy = center
    px, py = position
    # x' = a (x - cx) + b (y - cy) + px,  y' = -b (x - cx) + a (y - cy) + py
    return torch.tensor([[[a, b, px - a * cx - b * cy], [-b, a, py + b * cx - a * cy]]], dtype=torch.float32)


def _warp(src: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    from kornia.geometry.transform import warp_affine

    return warp_affine(
        src[None], matrix.to(src), dsize=size, mode="bilinear", padding_mode="zeros", align_corners=True
    )[0]


def paste_occluder(
    canvas: torch.Tensor,
    rgba: torch.Tensor,
    *,
    position: tuple[float, float],
    angle: float = 0.0,
    scale: float = 1.0,
    flip: bool = False,
) -> torch.Tensor:
    """Alpha-composite an RGBA occluder onto ``canvas``, mirrored, rotated and scaled about its centre.

    The occluder's colours are premultiplied by its alpha before the (bilinear, ``kornia`` ``warp_affine``) warp,
    so no colour bleeds in from transparent pixels; then ``out = canvas · (1 − α) + colour·α``.

    Args:
        canvas: ``(3, H, W)`` in [0, 1].
        rgba: ``(4, h, w)`` in [0, 1], alpha last.
        position: where the occluder's centre lands, ``(x, y)`` in pixels of ``canvas``.
        angle: rotation in degrees; scale: size factor; flip: mirror horizontally first.

    Returns:
        ``(3, H, W)`` composite.

    Example:
        >>> rgba = torch.ones(4, 3, 3)
        >>> out = paste_occluder(torch.zeros(3, 8, 8), rgba, position=(4.0, 4.0))
        >>> out[0, 3:6, 3:6].tolist()
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]
    """
    if canvas.ndim != 3 or canvas.shape[0] != 3 or rgba.ndim != 3 or rgba.shape[0] != 4:
        raise ValueError(
            f"expected canvas (3, H, W) and rgba (4, h, w), got {tuple(canvas.shape)} and {tuple(rgba.shape)}"
        )
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    alpha = rgba[3:].to(canvas)
    src = torch.cat([rgba[:3].to(canvas) * alpha, alpha])
    if flip:
        src = src.flip(-1)
    h, w = src.shape[-2:]
    matrix = affine_matrix(((w - 1) / 2, (h - 1) / 2), angle, scale, position)
    warped = _warp(src, matrix, tuple(canvas.shape[-2:]))
    coverage = warped[3:].clamp(0.0, 1.0)
    return (canvas * (1 - coverage) + warped[:3]).clamp(0.0, 1.0)


def _check_affine(rotation: float, scale: Sequence[float], shift: float) -> dict[str, Any]:
    """Validated keyword arguments of :func:`random_affine` (without ``flip_p``)."""
    if not (math.isfinite(rotation) and 0 <= rotation <= 180):
        raise ValueError(f"rotation must be in [0, 180] degrees, got {rotation}")
    if not (math.isfinite(shift) and 0 <= shift <= 1):
        raise ValueError(f"shift must be in [0, 1] (a fraction of the image side), got {shift}")
    return dict(rotation=float(rotation), scale=_check_range("scale", scale, 1e-3, 1e3), shift=float(shift))


def random_affine(
    image: torch.Tensor,
    generator: torch.Generator,
    *,
    rotation: float,
    scale: tuple[float, float],
    shift: float,
    flip_p: float = 0.0,
) -> torch.Tensor:
    """One random similarity map of a square ``(C, S, S)`` image about its centre, clamped to [0, 1].

    Draws, in this order from ``generator``: a mirror (probability ``flip_p``), an angle uniform in ``±rotation``
    degrees, a factor uniform in ``scale`` and a shift uniform in ``±shift·S`` pixels per axis. The warp is
    bilinear; pixels that come from outside the image are 0.
    """
    s = image.shape[-1]
    flip = _uniform(generator, 0, 1) < flip_p
    angle = _uniform(generator, -rotation, rotation)
    factor = _uniform(generator, *scale)
    dx, dy = (_uniform(generator, -shift, shift) * s for _ in range(2))
    if flip:
        image = image.flip(-1)
    centre = ((s - 1) / 2, (s - 1) / 2)
    return _warp(image, affine_matrix(centre, angle, factor, (centre[0] + dx, centre[1] + dy)), (s, s)).clamp(0, 1)


def _uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


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
        max_inputs, binarize, seed: as in :class:`FusionSet`.
    """

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
        self.image_size = _check_int("image_size", image_size, 1)
        min_occluders, max_occluders = _check_int("min_occluders", min_occluders, 0), int(max_occluders)
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
        self.scale = _check_range("scale", scale, 1e-3, 1e3)
        self.occluder_scale = _check_range("occluder_scale", occluder_scale, 1e-3, 1e3)
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
        self.augment = self.train if augment is None else bool(augment)
        self.min_occluders, self.max_occluders = min_occluders, max_occluders
        self.flip_p, self.rotation, self.shift = float(flip_p), float(rotation), float(shift)
        self.occluder_rotation, self.noise_std = float(occluder_rotation), float(noise_std)
        with Image.open(self.frames[0]) as first:
            self.frame_scale = self.image_size / min(first.size)  # frame pixels → output pixels
        self._cache: dict[int, torch.Tensor] = {}

    def target(self, index: int) -> torch.Tensor:
        """The resized, unaugmented target frame ``(3, S, S)``."""
        return _resize(_read_rgb(self.frames[index]), self.image_size)

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
            flip = _uniform(generator, 0, 1) < 0.5
            angle = _uniform(generator, -self.occluder_rotation, self.occluder_rotation)
            scale = _uniform(generator, *self.occluder_scale) / self.occluder_scale[1]
            position = (_uniform(generator, 0, s - 1), _uniform(generator, 0, s - 1))
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


# ----------------------------------------------------------------------------------------------- data module


class _Keyed(Dataset):
    """``key → (key, dataset[key])``: lets the collate functions see which keys a batch holds."""

    def __init__(self, dataset: Dataset, length: int) -> None:
        self.dataset, self.length = dataset, length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key: int) -> tuple[int, dict[str, torch.Tensor]]:
        return int(key), self.dataset[key]


def _stack(items: Sequence[tuple[int, dict[str, torch.Tensor]]], k: int) -> dict[str, torch.Tensor]:
    target = torch.stack([item["target"] for _, item in items])
    inputs = torch.stack([item["inputs"][:k] for _, item in items])
    return {"target": target, "inputs": inputs}


class TrainCollate:
    """Training batches: ``K`` uniform in ``{0, ..., max_inputs}`` (Section 5.4), seeded by the batch's first key.

    The first key of a batch is unique within a run (keys carry the epoch), so ``K`` is reproducible and the
    same on every loader worker.
    """

    def __init__(self, max_inputs: int, seed: int) -> None:
        self.max_inputs, self.seed = int(max_inputs), int(seed)

    def __call__(self, items: Sequence[tuple[int, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
        k = int(np.random.default_rng([self.seed, 17, items[0][0]]).integers(self.max_inputs + 1))
        return _stack(items, k)


class ValCollate:
    """Validation batches: ``K = batch_index mod (max_inputs + 1)``, so consecutive batches cycle through every K.

    The batch index is recovered from the first key of the (sequential, possibly rank-sharded) validation order.
    """

    def __init__(self, max_inputs: int, batch_size: int, world_size: int = 1) -> None:
        self.max_inputs, self.stride = int(max_inputs), int(batch_size) * max(int(world_size), 1)

    def __call__(self, items: Sequence[tuple[int, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
        return _stack(items, (items[0][0] // self.stride) % (self.max_inputs + 1))


class EvalCollate:
    """Evaluation batches: all ``max_inputs`` views (the evaluator slices ``inputs[:, :K]`` itself)."""

    def __init__(self, max_inputs: int) -> None:
        self.max_inputs = int(max_inputs)

    def __call__(self, items: Sequence[tuple[int, dict[str, torch.Tensor]]]) -> dict[str, torch.Tensor]:
        return _stack(items, self.max_inputs)


_DATASETS = ("mnist", "celeba", "tless", "digits")
_DEFAULT_SIZE = {"mnist": 32, "celeba": 64, "tless": 64, "digits": 16}


class FusionDataModule(L.LightningDataModule):
    """FusionMNIST, FusionCelebA, FusionT-LESS or FusionDigits batches for the FusionVAE models.

    Batches are dicts ``{"target": (B, C, H, W), "inputs": (B, K, C, H, W)}`` in [0, 1] with one ``K`` per batch:

    * :meth:`train_dataloader`: ``K`` uniform in ``{0, ..., max_inputs}`` for every batch (Section 5.4); items and
      order are redrawn every epoch from ``(seed, epoch, index)`` (:class:`~fusion.data.transient.EpochSampler`),
      so a run is reproducible and resumes with the same data;
    * :meth:`val_dataloader`: the first ``val_items`` evaluation items in order, ``K = batch_index mod
      (max_inputs + 1)`` (every ``K`` appears once there are at least ``max_inputs + 1`` batches);
    * :meth:`eval_dataloader` / :meth:`test_dataloader`: evaluation items with all ``max_inputs`` views, fixed by
      ``(seed, index)``.

    The training split is MNIST ``train`` / CelebA partition 0 / the T-LESS frames not held out / the digits
    training part; the evaluation split is MNIST ``t10k`` / CelebA partition 2 (test) / every tenth T-LESS frame /
    the remaining digits. Under DDP run the trainer with ``use_distributed_sampler=false``: the samplers shard
    across ranks themselves.

    Args:
        dataset: ``"mnist"``, ``"celeba"``, ``"tless"`` or ``"digits"``.
        root: dataset folder in its published layout (:data:`LAYOUT`); not used by ``"digits"``.
        occluder_root: folder of cut T-LESS occluders (``"tless"`` only).
        batch_size: batch size of every loader (``eval_dataloader`` may override it).
        image_size: output side (default 32 MNIST, 64 CelebA and T-LESS, 16 digits).
        max_inputs: views per item, ``K_max`` (3).
        noise_std: view noise (default 0.1 MNIST and digits, 0 CelebA and T-LESS).
        binarize: for Bernoulli decoders: ``true``/``"dynamic"`` draws each target pixel from a Bernoulli of its grey
            value (dynamic binarisation), ``"threshold"`` keeps grey values above 1/2, ``false`` leaves them.
        min_ellipses, max_ellipses, min_axis, max_axis: mask parameters (MNIST, CelebA, digits).
        flip_p: horizontal flip probability of training targets (CelebA, T-LESS).
        augment: one random affine map of each training target (:func:`random_affine`) with the ``rotation``,
            ``scale`` and ``shift`` ranges. ``None`` (default): on for T-LESS (Section 5.2), off for the others.
            Evaluation items are never augmented.
        rotation, scale, shift: ranges of that affine map.
        min_occluders, max_occluders, occluder_rotation, occluder_scale: T-LESS options.
        num_workers, pin_memory: loader settings.
        seed: seeds every item, the shuffling and the per-batch K (``None``: 0).
        val_items: at most this many evaluation items are used for validation.
    """

    #: The expected folder layouts (quoted when a root is missing or malformed).
    LAYOUT = LAYOUT

    def __init__(
        self,
        dataset: str,
        root: str | None = None,
        *,
        occluder_root: str | None = None,
        batch_size: int = 32,
        image_size: int | None = None,
        max_inputs: int = 3,
        noise_std: float | None = None,
        binarize: bool | str = False,
        min_ellipses: int = 1,
        max_ellipses: int = 4,
        min_axis: float = 0.1,
        max_axis: float = 0.4,
        flip_p: float = 0.5,
        augment: bool | None = None,
        min_occluders: int = 5,
        max_occluders: int = 8,
        rotation: float = 15.0,
        scale: Sequence[float] = (0.9, 1.1),
        shift: float = 0.1,
        occluder_rotation: float = 180.0,
        occluder_scale: Sequence[float] = (0.7, 1.0),
        num_workers: int = 4,
        pin_memory: bool = False,
        seed: int | None = 0,
        val_items: int = 1000,
    ) -> None:
        super().__init__()
        if dataset not in _DATASETS:
            raise ValueError(f"dataset must be one of {', '.join(_DATASETS)}, got {dataset!r}")
        self.batch_size = _check_int("batch_size", batch_size, 1)
        self.val_items = _check_int("val_items", val_items, 1)
        self.num_workers = _check_int("num_workers", num_workers, 0)
        self.seed = 0 if seed is None else _check_int("seed", seed, 0)
        self.max_inputs = _check_int("max_inputs", max_inputs, 1)
        self.pin_memory, self.dataset = bool(pin_memory), dataset
        if root is not None and str(root) in ("", "???"):
            root = None
        if dataset == "digits" and root is not None:
            raise ValueError(f"dataset 'digits' takes no root (it loads scikit-learn's digits), got root={root!r}")
        if dataset != "digits" and root is None:
            layout = {"mnist": MNIST_LAYOUT, "celeba": CELEBA_LAYOUT, "tless": TLESS_LAYOUT}[dataset]
            raise ValueError(f"data.root is not set; pass data.root=PATH ({layout})")
        if dataset == "tless" and (occluder_root is None or str(occluder_root) in ("", "???")):
            raise ValueError(f"data.occluder_root is not set; pass data.occluder_root=PATH ({OCCLUDER_LAYOUT})")
        if dataset != "tless" and occluder_root is not None:
            raise ValueError(f"occluder_root is only used by dataset 'tless', got it for {dataset!r}")
        size = _DEFAULT_SIZE[dataset] if image_size is None else _check_int("image_size", image_size, 1)
        common: dict[str, Any] = dict(max_inputs=self.max_inputs, binarize=binarize, seed=self.seed)
        if noise_std is not None:
            common["noise_std"] = noise_std
        if augment is not None and not isinstance(augment, bool):
            raise ValueError(f"augment must be true, false or null, got {augment!r}")
        ellipses = dict(min_ellipses=min_ellipses, max_ellipses=max_ellipses, min_axis=min_axis, max_axis=max_axis)
        affine = dict(augment=bool(augment), rotation=rotation, scale=tuple(scale), shift=shift)
        if dataset == "mnist":
            self.train_set = FusionMNIST(root, train=True, image_size=size, **common, **ellipses, **affine)
            self.eval_set = FusionMNIST(root, train=False, image_size=size, **common, **ellipses)
        elif dataset == "digits":
            self.train_set = FusionDigits(train=True, image_size=size, **common, **ellipses, **affine)
            self.eval_set = FusionDigits(train=False, image_size=size, **common, **ellipses)
        elif dataset == "celeba":
            self.train_set = FusionCelebA(
                root, split="train", image_size=size, flip_p=flip_p, **common, **ellipses, **affine
            )
            self.eval_set = FusionCelebA(root, split="test", image_size=size, flip_p=0.0, **common, **ellipses)
        else:
            tless = dict(
                image_size=size,
                min_occluders=min_occluders,
                max_occluders=max_occluders,
                flip_p=flip_p,
                rotation=rotation,
                scale=tuple(scale),
                shift=shift,
                occluder_rotation=occluder_rotation,
                occluder_scale=tuple(occluder_scale),
            )
            self.train_set = FusionTLESS(root, occluder_root, train=True, augment=augment, **tless, **common)
            self.eval_set = FusionTLESS(root, occluder_root, train=False, **tless, **common)

    def _loader(
        self,
        dataset: Dataset,
        sampler: EpochSampler,
        collate: Any,
        batch_size: int,
        drop_last: bool,
        persistent: bool = False,
    ) -> DataLoader:
        return DataLoader(
            _Keyed(dataset, len(dataset)),
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=persistent and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches with a random ``K`` each; the sampler follows Lightning's epoch.

        Workers persist across epochs (they keep their cache of decoded T-LESS occluders); the keys, and with them
        every random draw, come from the sampler in the main process.
        """
        n = len(self.train_set)
        sampler = EpochSampler(n, shuffle=True, seed=self.seed)
        collate = TrainCollate(self.max_inputs, self.seed)
        drop_last = n >= self.batch_size
        return self._loader(self.train_set, sampler, collate, self.batch_size, drop_last, persistent=True)

    def val_dataloader(self) -> DataLoader:
        """The first ``val_items`` evaluation items in order; ``K`` cycles with the batch index."""
        sampler = EpochSampler(min(self.val_items, len(self.eval_set)), shuffle=False, follow_epoch=False)
        collate = ValCollate(self.max_inputs, self.batch_size, sampler.world_size)
        return self._loader(self.eval_set, sampler, collate, self.batch_size, drop_last=False)

    def eval_dataloader(self, batch_size: int | None = None, limit: int | None = None) -> DataLoader:
        """Evaluation items ``0 .. limit-1`` (default: all) in order, with all ``max_inputs`` views each."""
        batch_size = self.batch_size if batch_size is None else _check_int("batch_size", batch_size, 1)
        n = len(self.eval_set) if limit is None else min(_check_int("limit", limit, 1), len(self.eval_set))
        sampler = EpochSampler(n, shuffle=False, follow_epoch=False)
        return self._loader(self.eval_set, sampler, EvalCollate(self.max_inputs), batch_size, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        """Same as :meth:`eval_dataloader` with the defaults."""
        return self.eval_dataloader()


# ------------------------------------------------------------------------------------------ synthetic folders


def _write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def _stroke_digits(rng: np.random.Generator, n: int, size: int = 28) -> tuple[np.ndarray, np.ndarray]:
    """``n`` digit-like images: thick random strokes (a few connected line segments and an arc) on black."""
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
    """Write a tiny MNIST in the published layout: the four IDX files (gzip by default) of stroke drawings.

    With ``torchvision`` the files go to ``root/MNIST/raw/`` instead of ``root``. Returns ``root``.
    """
    root = Path(root)
    folder = root / "MNIST" / "raw" if torchvision else root
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images, labels = _stroke_digits(rng, n)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return root


def write_synthetic_celeba(
    root: str | os.PathLike[str], n: int = 15, *, size: tuple[int, int] = (218, 178), seed: int = 0
) -> Path:
    """Write a tiny CelebA in the aligned-and-cropped layout: ``n`` face-like JPEGs and ``list_eval_partition.txt``.

    Each picture is a skin-coloured oval with eyes, mouth and hair on a smooth background, plus a bright mark on
    the left cheek (so a mirror image is told apart). Items are assigned to partitions 0, 0, 0, 1, 2 in turn.
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

    Every frame shows one shaded grey object (a class-specific polygon-like blob, turned with the frame number)
    on a black background, like the turntable frames of T-LESS; ``<obj>`` is ``01``-style, or ``000001``-style
    with ``bop``. Returns ``root``.
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
