"""Cutting T-LESS objects out of their frames for use as occluders (FusionVAE, Sections 5.1-5.2).

FusionT-LESS hides its targets behind objects of other classes that were "cut from images of other classes using
a Canny edge detector", offline, to keep training fast. :func:`object_mask` turns a frame (an object on a dark
background) into a solid object mask:

1. Canny edges (``kornia.filters.canny``, hysteresis thresholds ``low`` / ``high``);
2. a dilation by a ``close``×``close`` square joins the broken outline (``kornia.morphology.dilation``);
3. the holes are filled: every pixel that the background cannot reach from the image border through non-edge
   pixels belongs to the object (:func:`fill_holes`, a 4-connected flood fill);
4. an erosion by the same square undoes the dilation (together with 2 a morphological closing);
5. only the largest 4-connected component is kept (:func:`largest_component`).

:func:`cut_occluder` crops a frame to the mask's bounding box as RGBA (alpha = mask), and :func:`cut_occluders`
does this for every frame of the chosen classes, writing ``OUT/<class:02d>/<frame>.png`` atomically; the
``datasets/tless_occluders.py`` command line wraps it.

The flood fill and the labelling propagate along whole rows and columns at once (a maximum over each run of
free pixels, alternating axes), so they converge in as many sweeps as a path needs turns, not pixels.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from fusion.data.io import atomic_output
from fusion.data.tless import EVAL_OCCLUDER_CLASSES, TRAIN_OCCLUDER_CLASSES, index_tless

__all__ = [
    "OCCLUDER_CLASSES",
    "cut_occluder",
    "cut_occluders",
    "fill_holes",
    "largest_component",
    "object_mask",
]

#: Every class that provides occluders (training and evaluation ones).
OCCLUDER_CLASSES = tuple(sorted(TRAIN_OCCLUDER_CLASSES + EVAL_OCCLUDER_CLASSES))


def _check_mask(mask: torch.Tensor, name: str = "mask") -> None:
    if not isinstance(mask, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.ndim != 4 or mask.shape[1] != 1:
        raise ValueError(f"{name} must have shape (B, 1, H, W), got {tuple(mask.shape)}")


def _run_max(values: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Replace every free pixel by the maximum of its run of free pixels along the last axis; others become 0."""
    n, h, w = values.shape
    offset = torch.arange(n * h, device=values.device).view(n, h, 1) * (w + 1)
    run = torch.cumsum((~free).long(), dim=-1) + offset
    masked = torch.where(free, values, torch.zeros_like(values))
    best = torch.zeros(n * h * (w + 1), dtype=values.dtype, device=values.device)
    best = best.scatter_reduce(0, run.flatten(), masked.flatten(), reduce="amax")
    return torch.where(free, best[run], torch.zeros_like(values))


def _propagate(values: torch.Tensor, free: torch.Tensor) -> torch.Tensor:
    """Spread maxima of ``values`` (N, H, W) through 4-connected regions of ``free`` until nothing changes."""
    values = torch.where(free, values, torch.zeros_like(values))
    while True:
        spread = _run_max(values, free)
        spread = _run_max(spread.transpose(1, 2), free.transpose(1, 2)).transpose(1, 2)
        if torch.equal(spread, values):
            return spread
        values = spread


def fill_holes(mask: torch.Tensor) -> torch.Tensor:
    """Fill the holes of binary masks: pixels outside ``mask`` that no 4-connected path links to the border.

    Args:
        mask: ``(B, 1, H, W)`` bool (or 0/1) tensor.

    Returns:
        ``(B, 1, H, W)`` bool: ``mask`` plus its enclosed holes.

    Example:
        >>> ring = torch.zeros(1, 1, 5, 5, dtype=torch.bool)
        >>> ring[..., 1:4, 1:4] = True
        >>> ring[..., 2, 2] = False
        >>> int(fill_holes(ring).sum())
        9
    """
    _check_mask(mask)
    solid = mask[:, 0] > 0
    free = ~solid
    border = torch.zeros_like(free)
    border[:, 0, :] = border[:, -1, :] = border[:, :, 0] = border[:, :, -1] = True
    reached = _propagate((free & border).to(torch.uint8), free) > 0
    return (~reached)[:, None]


def largest_component(mask: torch.Tensor) -> torch.Tensor:
    """Keep the largest 4-connected component of each mask (ties: the one found first); empty masks stay empty.

    Args:
        mask: ``(B, 1, H, W)`` bool (or 0/1) tensor.

    Returns:
        ``(B, 1, H, W)`` bool.

    Example:
        >>> m = torch.zeros(1, 1, 4, 6, dtype=torch.bool)
        >>> m[..., 0, 0] = True
        >>> m[..., 1:3, 2:5] = True
        >>> largest_component(m)[0, 0].sum().item(), largest_component(m)[0, 0, 0, 0].item()
        (6, False)
    """
    _check_mask(mask)
    solid = mask[:, 0] > 0
    n, h, w = solid.shape
    ids = torch.arange(1, h * w + 1, device=solid.device, dtype=torch.long).view(1, h, w).expand(n, h, w)
    labels = _propagate(ids.clone(), solid)
    keep = torch.zeros_like(solid)
    for b in range(n):
        found, counts = torch.unique(labels[b][solid[b]], return_counts=True)
        if found.numel():
            keep[b] = labels[b] == found[torch.argmax(counts)]
    return keep[:, None]


def object_mask(image: torch.Tensor, *, low: float = 0.1, high: float = 0.2, close: int = 5) -> torch.Tensor:
    """Solid masks of the objects in ``image``: Canny edges, closing, hole filling, largest component.

    Args:
        image: ``(B, 3, H, W)`` or ``(B, 1, H, W)`` in [0, 1]: objects on a plain dark background.
        low, high: hysteresis thresholds of the Canny detector (on the gradient magnitude).
        close: side of the square used to close gaps in the outline (odd, ``>= 1``).

    Returns:
        ``(B, 1, H, W)`` bool masks (empty where no edge was found).

    Example:
        >>> img = torch.zeros(1, 3, 40, 40)
        >>> img[..., 10:30, 12:28] = 0.8
        >>> m = object_mask(img)
        >>> 300 <= int(m.sum()) <= 360, bool(m[0, 0, 20, 20]), bool(m[0, 0, 2, 2])  # the 20x16 block, ±1 pixel
        (True, True, False)
    """
    from kornia.filters import canny
    from kornia.morphology import dilation, erosion

    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"image must have shape (B, 1 or 3, H, W), got {tuple(image.shape)}")
    if not 0 <= low <= high:
        raise ValueError(f"need 0 <= low <= high for the Canny thresholds, got low={low}, high={high}")
    if isinstance(close, bool) or not isinstance(close, int) or close < 1 or close % 2 == 0:
        raise ValueError(f"close must be an odd int >= 1, got {close!r}")
    image = image.float()
    _, edges = canny(image, low_threshold=low, high_threshold=high)
    kernel = torch.ones(close, close, device=image.device)
    outline = dilation(edges, kernel) > 0.5
    filled = fill_holes(outline)
    solid = erosion(filled.float(), kernel) > 0.5
    return largest_component(solid)


def cut_occluder(image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor | None:
    """Crop ``image`` to the bounding box of ``mask`` as RGBA with alpha = mask.

    Args:
        image: ``(3, H, W)`` in [0, 1].
        mask: ``(1, H, W)`` bool or 0/1.

    Returns:
        ``(4, h, w)`` float in [0, 1], or ``None`` for an empty mask.
    """
    if image.ndim != 3 or image.shape[0] != 3 or mask.shape != (1, *image.shape[1:]):
        raise ValueError(f"expected image (3, H, W) and mask (1, H, W), got {tuple(image.shape)}, {tuple(mask.shape)}")
    inside = mask[0] > 0
    if not bool(inside.any()):
        return None
    rows, cols = torch.nonzero(inside.any(dim=1))[:, 0], torch.nonzero(inside.any(dim=0))[:, 0]
    top, bottom, left, right = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    rgba = torch.cat([image.float(), inside[None].float()])
    return rgba[:, top:bottom, left:right].contiguous()


def _write_rgba(path: Path, rgba: torch.Tensor) -> None:
    pixels = (rgba.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        Image.fromarray(np.ascontiguousarray(pixels), mode="RGBA").save(handle, format="PNG")


def _load(path: Path) -> torch.Tensor:
    try:
        with Image.open(path) as image:
            array = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (OSError, SyntaxError, ValueError) as err:
        raise ValueError(f"cannot read frame {path}: {err}") from None
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def cut_occluders(
    root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    classes: Sequence[int] = OCCLUDER_CLASSES,
    low: float = 0.1,
    high: float = 0.2,
    close: int = 5,
    batch_size: int = 16,
    device: torch.device | str = "cpu",
    overwrite: bool = False,
    log: Callable[[str], None] | None = None,
) -> dict[int, int]:
    """Cut the object out of every T-LESS training frame of ``classes`` into ``out/<class:02d>/<frame>.png``.

    Frames whose file already exists in ``out`` are skipped unless ``overwrite`` (so an interrupted run resumes);
    frames in which no object is found are reported and skipped. Files are written atomically.

    Args:
        root: T-LESS folder (``root/train_primesense/<obj>/rgb/<frame>.png``).
        out: output folder; must not be ``root`` itself nor lie inside ``root/train_primesense``.
        classes: T-LESS classes to cut (default: all 24 occluder classes).
        low, high, close: :func:`object_mask` parameters.
        batch_size: frames processed together; device: where the image operations run.
        overwrite: redo frames whose output exists.
        log: called with one progress line per class.

    Returns:
        ``{class: number of occluders written}``.

    Raises:
        FileNotFoundError: ``root`` is not a T-LESS folder, or a class is missing from it.
        ValueError: ``out`` points into the dataset, or bad parameters.
    """
    frames_by_class = index_tless(root)
    root_path = Path(root).expanduser().resolve()
    out_path = Path(out).expanduser().resolve()
    protected = root_path / "train_primesense"
    if out_path == root_path or out_path == protected or protected in out_path.parents:
        raise ValueError(f"refusing to write occluders into the T-LESS root {str(root_path)!r}; choose another --out")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    wanted = [int(c) for c in classes]
    absent = [c for c in wanted if c not in frames_by_class]
    if absent:
        raise FileNotFoundError(f"the T-LESS root {str(root_path)!r} has no frames of class(es) {absent}")
    written: dict[int, int] = {}
    for cls in wanted:
        todo = [
            f for f in frames_by_class[cls] if overwrite or not (out_path / f"{cls:02d}" / f"{f.stem}.png").exists()
        ]
        count, empty = 0, 0
        for start in range(0, len(todo), batch_size):
            chunk = todo[start : start + batch_size]
            images = [_load(p) for p in chunk]
            by_size: dict[tuple[int, int], list[int]] = {}
            for i, image in enumerate(images):
                by_size.setdefault(tuple(image.shape[-2:]), []).append(i)
            for members in by_size.values():
                batch = torch.stack([images[i] for i in members]).to(device).float() / 255.0
                masks = object_mask(batch, low=low, high=high, close=close)
                for j, i in enumerate(members):
                    rgba = cut_occluder(batch[j], masks[j])
                    if rgba is None:
                        empty += 1
                        continue
                    _write_rgba(out_path / f"{cls:02d}" / f"{chunk[i].stem}.png", rgba)
                    count += 1
        written[cls] = count
        if log is not None:
            skipped = len(frames_by_class[cls]) - len(todo)
            log(f"class {cls:02d}: wrote {count}, no object found in {empty}, already present {skipped}")
    return written
