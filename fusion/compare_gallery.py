"""The gallery of ``python -m fusion.compare``: every result side by side, with a zoomed crop of the mask boundary.

Each column is one panel (the cut-and-paste composite, then one per method) with its label in a band above it; the
top row shows the whole image with the crop outlined in red, the second row the crop enlarged (nearest neighbour),
centred on the boundary pixel where fg and bg differ most, so every column shows the same place of the seam.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from fusion.data.io import save_side_by_side

__all__ = ["MIN_PANEL_WIDTH", "boundary_point", "crop_box", "gallery_columns", "save_gallery"]

#: Panels narrower than this are enlarged by a whole factor, so that labels and crops stay readable.
MIN_PANEL_WIDTH = 160
_GAP = 4
_RED = (1.0, 0.0, 0.0)


def boundary_point(mask: torch.Tensor, score: torch.Tensor | None = None) -> tuple[int, int]:
    """``(y, x)`` of the mask boundary pixel (inside, with a 4-neighbour outside) of largest ``score``.

    Args:
        mask: ``(1, 1, H, W)``; pixels ``> 0.5`` are inside.
        score: optional ``(1, C, H, W)`` (e.g. ``|fg − bg|``), summed over channels; without it the first boundary
            pixel in row-major order. A mask without boundary gives the image centre.
    """
    inside = mask[0, 0] > 0.5
    padded = F.pad(inside[None, None].float(), (1, 1, 1, 1), mode="replicate")[0, 0] > 0.5
    neighbours_in = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    edge = inside & ~neighbours_in
    if not bool(edge.any()):
        return inside.shape[0] // 2, inside.shape[1] // 2
    weight = score[0].sum(0) if score is not None else torch.zeros(inside.shape, dtype=torch.float32)
    weight = torch.where(edge, weight.to(torch.float32) + 1.0, torch.full_like(weight, -1.0, dtype=torch.float32))
    index = int(torch.argmax(weight.flatten()))
    return index // inside.shape[1], index % inside.shape[1]


def crop_box(point: tuple[int, int], size: tuple[int, int], crop: int) -> tuple[int, int, int]:
    """``(top, left, side)`` of a square crop of side ``min(crop, H, W)`` around ``point``, kept inside the image."""
    height, width = size
    side = max(1, min(int(crop), height, width))
    top = min(max(point[0] - side // 2, 0), height - side)
    left = min(max(point[1] - side // 2, 0), width - side)
    return top, left, side


def _rgb(panel: torch.Tensor) -> torch.Tensor:
    panel = panel.detach().to("cpu", torch.float32).clamp(0, 1)
    panel = panel[None] if panel.ndim == 3 else panel[:1]
    return panel.expand(-1, 3, -1, -1) if panel.shape[1] == 1 else panel


def _outline(panel: torch.Tensor, top: int, left: int, side: int) -> torch.Tensor:
    out = panel.clone()
    colour = torch.tensor(_RED).view(1, 3, 1, 1)
    bottom, right = top + side - 1, left + side - 1
    out[..., top : bottom + 1, left] = colour[..., 0]
    out[..., top : bottom + 1, right] = colour[..., 0]
    out[..., top, left : right + 1] = colour[..., 0]
    out[..., bottom, left : right + 1] = colour[..., 0]
    return out


def gallery_columns(
    panels: Sequence[torch.Tensor | None],
    mask: torch.Tensor,
    *,
    score: torch.Tensor | None = None,
    crop: int = 32,
) -> list[torch.Tensor]:
    """One ``(1, 3, h, w)`` column per panel: the whole panel (crop outlined) over the enlarged crop.

    Args:
        panels: ``(1, C, H, W)`` images of one size; ``None`` (a method that failed) is drawn mid-gray.
        mask: ``(1, 1, H, W)`` mask whose boundary the crop shows.
        score: where the crop is centred (:func:`boundary_point`).
        crop: side of the crop in input pixels.
    """
    height, width = mask.shape[-2:]
    point = boundary_point(mask.cpu(), None if score is None else score.cpu())
    top, left, side = crop_box(point, (height, width), crop)
    scale = max(1, math.ceil(MIN_PANEL_WIDTH / width))
    zoom = max(1, (width * scale) // side)
    columns = []
    for panel in panels:
        image = _rgb(panel) if panel is not None else torch.full((1, 3, height, width), 0.5)
        part = image[..., top : top + side, left : left + side].repeat_interleave(zoom, -2).repeat_interleave(zoom, -1)
        whole = _outline(image.repeat_interleave(scale, -2).repeat_interleave(scale, -1), top * scale, left * scale,
                         side * scale)  # fmt: skip
        part = F.pad(part, (0, whole.shape[-1] - part.shape[-1], 0, 0), value=1.0)
        columns.append(torch.cat([whole, torch.ones(1, 3, _GAP, whole.shape[-1]), part], dim=-2))
    return columns


def save_gallery(
    path: Path,
    panels: Sequence[torch.Tensor | None],
    labels: Sequence[str],
    mask: torch.Tensor,
    *,
    score: torch.Tensor | None = None,
    crop: int = 32,
) -> list[str]:
    """Write the gallery of ``panels`` (:func:`gallery_columns`), each labelled, to ``path``; return the labels.

    The image is ``n·w + (n − 1)·4`` pixels wide for ``n`` panels of width ``w`` (``W`` enlarged to at least
    :data:`MIN_PANEL_WIDTH`), written atomically.
    """
    if len(labels) != len(panels):
        raise ValueError(f"save_gallery needs one label per panel, got {len(labels)} for {len(panels)}")
    save_side_by_side(path, gallery_columns(panels, mask, score=score, crop=crop), labels=list(labels), gap=_GAP)
    return list(labels)
