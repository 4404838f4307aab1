"""GP-GAN's Gaussian–Poisson equation (Wu et al. 2019, eqs. 5–9, Algorithm 1) in a Gaussian pyramid."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from fusion.methods.contract import MethodResult
from fusion.methods.registry import MethodOutput, register
from fusion.ops.checks import check_blend_inputs, check_image
from fusion.ops.diff import div, grad
from fusion.ops.filters import gaussian_dct_symbol, gaussian_pyramid, pyramid_sizes, resize
from fusion.ops.poisson import laplacian_symbol
from fusion.ops.transforms import dct, idct

#: Side of the coarsest level when ``levels`` is not given: the Blending GAN works at 64×64.
COARSEST_SIDE = 64


@dataclass
class GaussianPoissonResult(MethodResult):
    """What :func:`gaussian_poisson_solve` returns: ``image`` and, in ``levels``, the solution of eq. (9) at every
    pyramid level, coarsest first (``levels[-1]`` is ``image``). ``solver`` is ``None``: each level is closed form."""

    levels: list[torch.Tensor] = field(default_factory=list)


def gaussian_poisson_level(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    color: torch.Tensor,
    *,
    beta: float = 1.0,
    sigma: float = 0.5,
) -> torch.Tensor:
    """Closed-form minimiser of eq. (9), ``‖u − L x‖² + β ‖G x − x̃_l‖²``, at one scale.

    ``u = div v`` with ``v = m ∇fg + (1 − m) ∇bg`` (eq. 8; a soft mask blends the two fields), ``L`` the
    Neumann Laplacian and ``G`` the Gaussian filter of width ``σ`` with mirror boundaries. Both are diagonal
    in the DCT-II basis, so the normal equations ``(LᵀL + βGᵀG) x = Lᵀu + βGᵀx̃_l`` are solved by
    ``x̂ = (L̂ û + β ĝ ĉ) / (L̂² + β ĝ²)``: two forward DCTs and one inverse. Direct (no iteration) and
    differentiable with respect to ``fg``, ``bg``, ``mask`` and ``color``.

    Args:
        fg, bg: ``(B, C, H, W)`` source and destination at this scale.
        mask: ``(B, 1, H, W)`` in [0, 1].
        color: ``(B, C, H, W)`` low-frequency target ``x̃_l``.
        beta: colour-preserving weight ``β > 0``.
        sigma: Gaussian width ``σ > 0`` in pixels.

    Returns:
        ``(B, C, H, W)`` solution ``x_h``.
    """
    m = mask.unsqueeze(-3)
    field = m * grad(fg, bc="neumann") + (1 - m) * grad(bg, bc="neumann")
    u_hat = dct(div(field, bc="neumann"), (-2, -1))
    c_hat = dct(color, (-2, -1))
    h, w = fg.shape[-2:]
    lap = -laplacian_symbol(fg.shape, "neumann", (-2, -1), dtype=fg.dtype, device=fg.device)
    g = (
        gaussian_dct_symbol(h, sigma, dtype=fg.dtype, device=fg.device)[:, None]
        * gaussian_dct_symbol(w, sigma, dtype=fg.dtype, device=fg.device)[None, :]
    )
    x_hat = (lap * u_hat + beta * g * c_hat) / (lap * lap + beta * g * g)
    return idct(x_hat, (-2, -1))


#: Smallest side of a level that is blurred on the way down (the 5×5 Gaussian's mirror padding needs 3 pixels).
MIN_BLURRED_SIDE = 3


def check_levels(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """The fine-to-coarse level sizes of a ``levels``-deep pyramid, checked to be buildable.

    Every level but the coarsest is blurred by a 5×5 Gaussian before it is halved, so it needs at least
    :data:`MIN_BLURRED_SIDE` pixels per side; the coarsest needs 2 (eq. (9) is solved there).

    Raises:
        ValueError: ``levels`` is not a positive integer, or the image is too small for that many levels.
    """
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 1:
        raise ValueError(f"levels must be a positive integer, got {levels!r}")
    sizes = pyramid_sizes(height, width, levels)
    if min(height, width) < 2:
        raise ValueError(f"the {height}x{width} image is too small: Gaussian-Poisson blending needs 2 pixels per side")
    if min(sizes[-1]) < 2 or any(min(size) < MIN_BLURRED_SIDE for size in sizes[:-1]):
        deepest = default_levels(height, width, longest=False)
        raise ValueError(
            f"levels={levels} is too deep for the {height}x{width} image (too small for that many halvings); "
            f"use levels <= {deepest}"
        )
    return sizes


def default_levels(height: int, width: int, *, longest: bool = True) -> int:
    """Pyramid depth whose coarsest level has its longer side at most :data:`COARSEST_SIDE` (at least 1), and no
    deeper than the image allows (:func:`check_levels`): a thin image (say 5×500) gets fewer levels.

    With ``longest=False`` the deepest pyramid the image allows, whatever its longer side.
    """
    levels = 1 + max(0, math.ceil(math.log2(max(height, width) / COARSEST_SIDE))) if longest else 64
    while levels > 1:
        sizes = pyramid_sizes(height, width, levels)
        if min(sizes[-1]) >= 2 and all(min(size) >= MIN_BLURRED_SIDE for size in sizes[:-1]):
            break
        levels -= 1
    return levels


def gaussian_poisson_solve(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    color: torch.Tensor | None = None,
    beta: float = 1.0,
    sigma: float = 0.5,
    levels: int | None = None,
) -> GaussianPoissonResult:
    """High-resolution blending by the Gaussian–Poisson equation in a pyramid (GP-GAN, Algorithm 1).

    Builds pyramids of ``fg``, ``bg`` and ``mask`` (each level keeps the image's aspect ratio), solves eq. (9)
    in closed form at the coarsest level with the colour constraint ``color``, then at each finer level with
    the upsampled previous result as ``x̃_l``.

    Nothing here is iterative: each level is one closed-form DCT solve (:func:`gaussian_poisson_level`), so
    there is no tolerance, no iteration cap and nothing that can stop unconverged. Each sample's result
    depends on that sample's inputs only. Differentiable (a chain of linear operations) with respect to ``fg``,
    ``bg``, the soft ``mask`` (through the blend of the two gradient fields, eq. 8, at every level) and ``color``.

    Args:
        fg, bg: ``(B, C, H, W)``; ``fg`` already placed on the canvas.
        mask: ``(B, 1, H, W)`` in [0, 1].
        color: ``(B, C, h, w)`` low-resolution colour constraint, e.g. the Blending GAN's output; resized to
            the coarsest level. ``None`` uses the composite ``mask·fg + (1 − mask)·bg`` at the coarsest level
            (the paper's ablation without the GAN, Fig. 8).
        beta: colour-preserving weight ``β`` (paper: 1).
        sigma: Gaussian filter width ``σ`` of the colour constraint (default 0.5).
        levels: number of pyramid levels; ``None`` picks the depth whose coarsest level is at most 64 pixels
            on its longer side.

    Returns:
        :class:`GaussianPoissonResult`: ``image`` the ``(B, C, H, W)`` blend (not clipped), ``levels`` the
        solution at every pyramid level, coarsest first (the last is ``image``); ``solver`` is ``None``.

    Example:
        >>> fg, bg = torch.rand(1, 3, 48, 80), torch.rand(1, 3, 48, 80)
        >>> mask = torch.zeros(1, 1, 48, 80); mask[..., 12:36, 20:60] = 1
        >>> r = gaussian_poisson_solve(fg, bg, mask, levels=2)
        >>> r.image.shape, [tuple(x.shape[-2:]) for x in r.levels]
        (torch.Size([1, 3, 48, 80]), [(24, 40), (48, 80)])
    """
    fg, bg, mask = check_blend_inputs(fg, bg, mask)
    if not beta > 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    h, w = fg.shape[-2:]
    if levels is None:
        levels = default_levels(h, w)
    sizes = check_levels(h, w, levels)
    fgs = gaussian_pyramid(fg, sizes)
    bgs = gaussian_pyramid(bg, sizes)
    masks = gaussian_pyramid(mask, sizes)
    if color is None:
        target = masks[-1] * fgs[-1] + (1 - masks[-1]) * bgs[-1]
    else:
        check_image(color, "color", channels=fg.shape[1])
        if color.shape[0] not in (1, fg.shape[0]):
            raise ValueError(f"color batch size {color.shape[0]} does not match {fg.shape[0]}")
        target = resize(color.to(fg.dtype), sizes[-1]).expand(fg.shape[0], -1, -1, -1)
    x = target
    solved = []
    for level in reversed(range(levels)):
        target = resize(x, sizes[level])
        x = gaussian_poisson_level(fgs[level], bgs[level], masks[level], target, beta=beta, sigma=sigma)
        solved.append(x)
    return GaussianPoissonResult(x, None, solved)


def gaussian_poisson_blend(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    color: torch.Tensor | None = None,
    beta: float = 1.0,
    sigma: float = 0.5,
    levels: int | None = None,
) -> torch.Tensor:
    """The Gaussian–Poisson pyramid blend: the image of :func:`gaussian_poisson_solve` (same arguments).

    Returns:
        ``(B, C, H, W)`` blended image (not clipped).

    Example:
        >>> fg, bg = torch.rand(1, 3, 48, 80), torch.rand(1, 3, 48, 80)
        >>> mask = torch.zeros(1, 1, 48, 80); mask[..., 12:36, 20:60] = 1
        >>> gaussian_poisson_blend(fg, bg, mask).shape
        torch.Size([1, 3, 48, 80])
    """
    return gaussian_poisson_solve(fg, bg, mask, color=color, beta=beta, sigma=sigma, levels=levels).image


class GaussianPoissonBlend(nn.Module):
    """:func:`gaussian_poisson_blend` as a layer: ``forward(fg, bg, mask, color=None)`` with the options fixed at
    construction. A chain of linear operations, differentiable in every input (the soft mask included).

    Example:
        >>> layer = GaussianPoissonBlend(levels=2)
        >>> fg, bg = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
        >>> mask = torch.zeros(2, 1, 32, 32); mask[..., 8:24, 8:24] = 1
        >>> layer(fg, bg, mask).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(self, *, beta: float = 1.0, sigma: float = 0.5, levels: int | None = None) -> None:
        super().__init__()
        self.options = dict(beta=beta, sigma=sigma, levels=levels)

    def forward(
        self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, color: torch.Tensor | None = None
    ) -> torch.Tensor:
        return gaussian_poisson_blend(fg, bg, mask, color=color, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


@register("gaussian_poisson")
def gaussian_poisson_cli(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    beta: float = 1.0,
    sigma: float = 0.5,
    levels: int | None = None,
) -> MethodOutput:
    """Command-line adapter (``infer.py method=gaussian_poisson``): :func:`gaussian_poisson_solve` with the
    composite as colour (no GAN); no extra outputs."""
    return MethodOutput(result=gaussian_poisson_solve(fg, bg, mask, beta=beta, sigma=sigma, levels=levels).image)
