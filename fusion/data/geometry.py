"""Geometry of the FusionVAE items: random similarity maps of targets, resizing, and pasting of RGBA occluders.

Every warp is bilinear (``kornia.geometry.transform.warp_affine``); pixels that come from outside the source are 0,
the black background of MNIST and T-LESS. Randomness comes in as a ``torch.Generator``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

from fusion.data.checks import check_range

__all__ = ["affine_matrix", "check_affine", "paste_occluder", "random_affine", "resize_square", "uniform"]


def affine_matrix(
    center: tuple[float, float], angle: float, scale: float, position: tuple[float, float]
) -> torch.Tensor:
    """``(1, 2, 3)`` map rotating by ``angle`` degrees (counter-clockwise) and scaling by ``scale`` about ``center``
    ``(x, y)`` of the source, then moving that point to ``position`` ``(x, y)`` of the output (pixel units).

    Example:
        >>> affine_matrix((1.0, 1.0), 0.0, 2.0, (3.0, 3.0)).tolist()
        [[[2.0, 0.0, 1.0], [-0.0, 2.0, 1.0]]]
    """
    theta = math.radians(angle)
    a, b = scale * math.cos(theta), scale * math.sin(theta)
    cx, cy = center
    px, py = position
    # x' = a (x - cx) + b (y - cy) + px,  y' = -b (x - cx) + a (y - cy) + py
    return torch.tensor([[[a, b, px - a * cx - b * cy], [-b, a, py + b * cx - a * cy]]], dtype=torch.float32)


def _warp(src: torch.Tensor, matrix: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(C, h, w)`` → ``(C, *size)`` under ``matrix`` (source → output pixels), bilinear, zeros outside."""
    from kornia.geometry.transform import warp_affine

    return warp_affine(
        src[None], matrix.to(src), dsize=size, mode="bilinear", padding_mode="zeros", align_corners=True
    )[0]


def uniform(generator: torch.Generator, low: float, high: float) -> float:
    """One draw uniform in ``[low, high)`` from ``generator`` (in float64, so the draw does not depend on a dtype)."""
    return low + (high - low) * float(torch.rand((), generator=generator, dtype=torch.float64))


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

    The occluder's colours are premultiplied by its alpha before the warp, so no colour bleeds in from transparent
    pixels; then ``out = canvas · (1 − α) + colour·α``.

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


def check_affine(rotation: float, scale: Sequence[float], shift: float) -> dict[str, Any]:
    """Validated keyword arguments ``rotation``, ``scale``, ``shift`` of :func:`random_affine` (without ``flip_p``).

    Example:
        >>> check_affine(15, [0.9, 1.1], 0.1)
        {'rotation': 15.0, 'scale': (0.9, 1.1), 'shift': 0.1}
    """
    if not (math.isfinite(rotation) and 0 <= rotation <= 180):
        raise ValueError(f"rotation must be in [0, 180] degrees, got {rotation}")
    if not (math.isfinite(shift) and 0 <= shift <= 1):
        raise ValueError(f"shift must be in [0, 1] (a fraction of the image side), got {shift}")
    return dict(rotation=float(rotation), scale=check_range("scale", scale, 1e-3, 1e3), shift=float(shift))


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
    degrees, a factor uniform in ``scale`` and a shift uniform in ``±shift·S`` pixels per axis. Pixels that come
    from outside the image are 0.

    Returns:
        ``(C, S, S)``.

    Example:
        >>> image = torch.rand(1, 5, 5)
        >>> same = random_affine(image, torch.Generator(), rotation=0.0, scale=(1.0, 1.0), shift=0.0)
        >>> bool(torch.allclose(same, image, atol=1e-6))
        True
    """
    s = image.shape[-1]
    flip = uniform(generator, 0, 1) < flip_p
    angle = uniform(generator, -rotation, rotation)
    factor = uniform(generator, *scale)
    dx, dy = (uniform(generator, -shift, shift) * s for _ in range(2))
    if flip:
        image = image.flip(-1)
    centre = ((s - 1) / 2, (s - 1) / 2)
    return _warp(image, affine_matrix(centre, angle, factor, (centre[0] + dx, centre[1] + dy)), (s, s)).clamp(0, 1)


def resize_square(image: torch.Tensor, size: int) -> torch.Tensor:
    """``(C, h, w)`` uint8 or float → float ``(C, size, size)`` in [0, 1]: shorter side to ``size`` (bilinear,
    antialiased), then the centre crop.

    Example:
        >>> resize_square(torch.full((3, 4, 8), 255, dtype=torch.uint8), 2).shape
        torch.Size([3, 2, 2])
    """
    image = image.float() / 255.0 if image.dtype == torch.uint8 else image.float()
    h, w = image.shape[-2:]
    factor = size / min(h, w)
    nh, nw = max(size, round(h * factor)), max(size, round(w * factor))
    if (nh, nw) != (h, w):
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
    top, left = (nh - size) // 2, (nw - size) // 2
    return image[:, top : top + size, left : left + size].clamp(0.0, 1.0).contiguous()
