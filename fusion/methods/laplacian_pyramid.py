"""Multi-band blending (Burt & Adelson 1983): Laplacian pyramids of the images, a Gaussian pyramid of the mask."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from fusion.methods.contract import MethodResult
from fusion.methods.registry import MethodOutput, register
from fusion.ops.checks import check_blend_inputs, check_int
from fusion.ops.pyramids import collapse_laplacian, gaussian_pyramid_ba, laplacian_pyramid


@dataclass
class LaplacianPyramidResult(MethodResult):
    """What :func:`laplacian_pyramid_solve` returns: ``image``; ``bands`` the blended Laplacian levels ``L_k``
    and ``masks`` the mask's Gaussian pyramid ``M_k``, both fine to coarse. ``solver`` is ``None``."""

    bands: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)


def max_levels(height: int, width: int) -> int:
    """The deepest pyramid of an ``H × W`` image: halving (``N → ⌈N/2⌉``) until the longer side is 1.

    Example:
        >>> max_levels(1, 1), max_levels(7, 10), max_levels(64, 64), max_levels(512, 768)
        (1, 5, 7, 11)
    """
    return 1 + math.ceil(math.log2(max(height, width)))


#: Default number of levels: coarsest level 1/128 of the image side (capped for smaller images).
DEFAULT_LEVELS = 8


def laplacian_pyramid_solve(
    fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, levels: int = DEFAULT_LEVELS
) -> LaplacianPyramidResult:
    """Burt–Adelson multi-band blending: ``u = collapse_k(M_k·L_k(fg) + (1 − M_k)·L_k(bg))``.

    ``L_k(x) = G_k(x) − EXPAND(G_{k+1}(x))`` is the Laplacian pyramid (the coarsest level is ``G_{K−1}`` itself)
    and ``M_k = G_k(mask)`` the mask's Gaussian pyramid, with ``G_{k+1} = REDUCE(G_k)``: the 5-tap binomial
    kernel ``[1, 4, 6, 4, 1]/16`` with half-sample mirror boundaries, then every other sample, so a side ``N``
    becomes ``⌈N/2⌉`` (any ``H``, ``W``); EXPAND is the normalised-convolution inverse step
    (:mod:`fusion.ops.pyramids`). Each frequency band is blended with a transition as wide as its wavelength:
    fine detail meets sharply, colour and shading blend over the size of the coarse levels.

    ``levels=1`` is :func:`fusion.methods.paste_blend`; identical ``fg`` and ``bg`` come back unchanged (the
    collapse inverts the decomposition). Direct (``solver`` is ``None``); each sample depends on that sample's
    inputs only. Linear in ``fg`` and ``bg`` and bilinear with the mask: differentiable in all three.

    Args:
        fg: ``(B, C, H, W)`` source, already placed on the canvas.
        bg: ``(B, C, H, W)`` destination.
        mask: ``(B, 1, H, W)`` in [0, 1] (a soft mask is a soft alpha at the finest level).
        levels: number of pyramid levels, an integer ``>= 1``. The pyramid used has
            ``K = min(levels, max_levels(H, W))`` levels: deeper ones would be 1×1 copies of the coarsest with
            zero bands, which change nothing.

    Returns:
        :class:`LaplacianPyramidResult`: ``image`` the ``(B, C, H, W)`` blend, ``bands`` and ``masks``.

    Example:
        >>> fg, bg = torch.rand(1, 3, 20, 30), torch.rand(1, 3, 20, 30)
        >>> mask = torch.zeros(1, 1, 20, 30); mask[..., 5:15, :12] = 1
        >>> r = laplacian_pyramid_solve(fg, bg, mask, levels=3)
        >>> r.image.shape, [tuple(b.shape[-2:]) for b in r.bands]
        (torch.Size([1, 3, 20, 30]), [(20, 30), (10, 15), (5, 8)])
    """
    check_int(levels, "levels", minimum=1)
    fg, bg, mask = check_blend_inputs(fg, bg, mask)
    levels = min(levels, max_levels(*fg.shape[-2:]))
    masks = gaussian_pyramid_ba(mask, levels)
    bands = [
        m * a + (1 - m) * b for m, a, b in zip(masks, laplacian_pyramid(fg, levels), laplacian_pyramid(bg, levels))
    ]
    return LaplacianPyramidResult(collapse_laplacian(bands), None, bands, masks)


def laplacian_pyramid_blend(
    fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, levels: int = DEFAULT_LEVELS
) -> torch.Tensor:
    """Multi-band blending: the image of :func:`laplacian_pyramid_solve` (same arguments).

    Returns:
        ``(B, C, H, W)`` (not clipped).

    Example:
        >>> x = torch.rand(2, 3, 13, 17, dtype=torch.float64)
        >>> mask = torch.zeros(2, 1, 13, 17, dtype=torch.float64); mask[..., 3:9, 4:12] = 1
        >>> torch.allclose(laplacian_pyramid_blend(x, x, mask), x)
        True
    """
    return laplacian_pyramid_solve(fg, bg, mask, levels=levels).image


class LaplacianPyramidBlend(nn.Module):
    """:func:`laplacian_pyramid_blend` as a layer: ``forward(fg, bg, mask)`` with ``levels`` fixed at construction.

    Example:
        >>> fg, bg = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
        >>> mask = torch.zeros(2, 1, 16, 16); mask[..., 4:12, 4:12] = 1
        >>> LaplacianPyramidBlend(levels=3)(fg, bg, mask).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, *, levels: int = DEFAULT_LEVELS) -> None:
        super().__init__()
        self.options = dict(levels=levels)

    def forward(self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return laplacian_pyramid_blend(fg, bg, mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


@register("laplacian_pyramid")
def laplacian_pyramid_cli(
    fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, levels: int = DEFAULT_LEVELS
) -> MethodOutput:
    """Command-line adapter (``infer.py method=laplacian_pyramid``): :func:`laplacian_pyramid_solve`; no extra
    outputs."""
    return MethodOutput(result=laplacian_pyramid_solve(fg, bg, mask, levels=levels).image)
