"""Feathered alpha blending: the mask's edge softened by a linear ramp of the distance to the outside."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusion.methods.contract import MethodResult
from fusion.methods.registry import MethodOutput, register
from fusion.ops.checks import check_blend_inputs, check_nonnegative_number
from fusion.ops.distance import distance_to_outside

#: Default feather width in pixels.
DEFAULT_WIDTH = 8.0


@dataclass
class FeatherResult(MethodResult):
    """What :func:`feather_solve` returns: ``image`` and the ``(B, 1, H, W)`` feathered ``alpha`` it used."""

    alpha: torch.Tensor | None = None


def feather_alpha(mask: torch.Tensor, width: float) -> torch.Tensor:
    """The feathered α-map of :func:`feather_solve`: ``clip(d / (width + 1), 0, 1)``, or ``mask`` for ``width = 0``.

    ``d`` is the Euclidean distance (pixel centre to pixel centre) from a pixel of Ω = {mask > 0.5} to the
    nearest in-image pixel outside Ω, and 0 outside Ω (see :func:`fusion.ops.distance.distance_to_outside`).

    Example:
        >>> m = torch.zeros(1, 1, 1, 9); m[..., 1:8] = 1
        >>> feather_alpha(m, 2.0)[0, 0, 0]
        tensor([0.0000, 0.3333, 0.6667, 1.0000, 1.0000, 1.0000, 0.6667, 0.3333, 0.0000])
    """
    if width == 0:
        return mask
    region = (mask > 0.5).to(mask.dtype)
    return distance_to_outside(region, width + 1) / (width + 1)


def feather_solve(
    fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, width: float = DEFAULT_WIDTH
) -> FeatherResult:
    """Alpha blending with a feathered mask: ``u = α·fg + (1 − α)·bg``, ``α = clip(d / (width + 1), 0, 1)``.

    Ω = {mask > 0.5}; ``d(p)`` is the Euclidean distance from ``p ∈ Ω`` to the nearest in-image pixel outside Ω
    (``d = 1`` on Ω's rim, 0 outside Ω; the image border is not an edge of Ω). So α is 0 outside Ω, rises by
    ``1/(width + 1)`` per pixel of distance across the ``width`` pixels just inside the boundary, and is 1 deeper
    inside: the feather eats into the mask and never spills fg onto bg. ``width = 0`` uses the mask itself as α
    (equal to :func:`fusion.methods.paste_blend`).

    Direct and per pixel (``solver`` is ``None``); each sample depends on that sample's inputs only.
    Differentiable in ``fg`` and ``bg``; in ``mask`` only for ``width = 0`` (α is otherwise a function of the
    thresholded mask, piecewise constant in it).

    Args:
        fg: ``(B, C, H, W)`` source, already placed on the canvas.
        bg: ``(B, C, H, W)`` destination.
        mask: ``(B, 1, H, W)`` in [0, 1].
        width: feather width in pixels, a number ``>= 0`` (the ramp costs ``O(width²)`` passes over the image).

    Returns:
        :class:`FeatherResult`: ``image`` the ``(B, C, H, W)`` blend, ``alpha`` the ``(B, 1, H, W)`` α-map.

    Example:
        >>> fg, bg = torch.ones(1, 1, 1, 9), torch.zeros(1, 1, 1, 9)
        >>> mask = torch.zeros(1, 1, 1, 9); mask[..., 1:8] = 1
        >>> feather_solve(fg, bg, mask, width=2).image[0, 0, 0]
        tensor([0.0000, 0.3333, 0.6667, 1.0000, 1.0000, 1.0000, 0.6667, 0.3333, 0.0000])
    """
    width = check_nonnegative_number(width, "width")
    fg, bg, mask = check_blend_inputs(fg, bg, mask)
    alpha = feather_alpha(mask, width)
    return FeatherResult(alpha * fg + (1 - alpha) * bg, None, alpha)


def feather_blend(
    fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, width: float = DEFAULT_WIDTH
) -> torch.Tensor:
    """Feathered alpha blending: the image of :func:`feather_solve` (same arguments).

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> fg, bg = torch.rand(1, 3, 20, 24), torch.rand(1, 3, 20, 24)
        >>> mask = torch.zeros(1, 1, 20, 24); mask[..., 4:16, 5:19] = 1
        >>> feather_blend(fg, bg, mask, width=3).shape
        torch.Size([1, 3, 20, 24])
    """
    return feather_solve(fg, bg, mask, width=width).image


class FeatherBlend(nn.Module):
    """:func:`feather_blend` as a layer: ``forward(fg, bg, mask)`` with ``width`` fixed at construction.

    Example:
        >>> fg, bg = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 12, 12)
        >>> mask = torch.zeros(2, 1, 12, 12); mask[..., 3:9, 3:9] = 1
        >>> FeatherBlend(width=2)(fg, bg, mask).shape
        torch.Size([2, 3, 12, 12])
    """

    def __init__(self, *, width: float = DEFAULT_WIDTH) -> None:
        super().__init__()
        self.options = dict(width=width)

    def forward(self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return feather_blend(fg, bg, mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


@register("feather")
def feather_cli(
    fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, width: float = DEFAULT_WIDTH
) -> MethodOutput:
    """Command-line adapter (``infer.py method=feather``): :func:`feather_solve`; writes the α-map as ``alpha``."""
    res = feather_solve(fg, bg, mask, width=width)
    return MethodOutput(result=res.image, images={"alpha": res.alpha.expand_as(res.image)})
