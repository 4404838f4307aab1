"""Poisson image editing (Pérez, Gangnet & Blake, 2003): seamless cloning, exact and spectral."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

from fusion.energies.poisson import poisson_energy, region_edges
from fusion.methods.registry import register
from fusion.ops.checks import check_batch, check_image, check_mask, check_same_size
from fusion.ops.diff import div, grad
from fusion.ops.masked import solve_masked_poisson
from fusion.ops.poisson import solve_poisson
from fusion.ops.result import SolverResult
from fusion.optim.ipiano import ipiano

Solver = Literal["exact", "spectral", "inertial"]


def place_source(
    fg: torch.Tensor,
    mask: torch.Tensor,
    bg: torch.Tensor,
    offset: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put a source ``fg`` (and its ``mask``) at ``offset`` on a canvas the size of ``bg``.

    Args:
        fg: ``(B, C, h, w)`` source image.
        mask: ``(B, 1, h, w)`` source mask.
        bg: ``(B, C, H, W)`` background; gives the canvas size and fills the canvas outside the source.
        offset: ``(y, x)`` of the source's top-left corner on the canvas (may be negative or run past the
            edge: what falls outside is cropped); ``None`` centres the source.

    Returns:
        ``(fg_canvas, mask_canvas)`` shaped ``(B, C, H, W)`` and ``(B, 1, H, W)``; ``fg_canvas`` equals ``bg``
        outside the pasted rectangle and ``mask_canvas`` is zero there.

    Example:
        >>> f, m, b = torch.ones(1, 3, 2, 2), torch.ones(1, 1, 2, 2), torch.zeros(1, 3, 4, 5)
        >>> fc, mc = place_source(f, m, b, offset=(1, 3))
        >>> mc[0, 0]
        tensor([[0., 0., 0., 0., 0.],
                [0., 0., 0., 1., 1.],
                [0., 0., 0., 1., 1.],
                [0., 0., 0., 0., 0.]])
    """
    check_image(fg, "fg")
    check_image(bg, "bg", channels=fg.shape[1])
    check_image(mask, "mask", channels=1)
    check_same_size(fg=fg, mask=mask)
    batch = check_batch(fg=fg, mask=mask, bg=bg)
    h, w = fg.shape[-2:]
    big_h, big_w = bg.shape[-2:]
    if offset is None:
        oy, ox = (big_h - h) // 2, (big_w - w) // 2
    else:
        if len(offset) != 2:
            raise ValueError(f"offset must be (y, x), got {offset!r}")
        oy, ox = int(offset[0]), int(offset[1])
    y0, y1 = max(oy, 0), min(oy + h, big_h)
    x0, x1 = max(ox, 0), min(ox + w, big_w)
    if y0 >= y1 or x0 >= x1:
        raise ValueError(f"offset {(oy, ox)} puts the {h}x{w} source entirely outside the {big_h}x{big_w} background")
    src = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
    fg_canvas = bg.expand(batch, -1, -1, -1).clone()
    fg_canvas[..., y0:y1, x0:x1] = fg.expand(batch, -1, -1, -1)[..., src[0], src[1]]
    mask_canvas = torch.zeros(batch, 1, big_h, big_w, dtype=mask.dtype, device=mask.device)
    mask_canvas[..., y0:y1, x0:x1] = mask.expand(batch, -1, -1, -1)[..., src[0], src[1]]
    return fg_canvas, mask_canvas


def guidance_field(fg: torch.Tensor, bg: torch.Tensor, *, mixed: bool = False) -> torch.Tensor:
    """Guidance field on the forward-difference edges: ``∇fg``, or Pérez's mixed gradients.

    Mixed: per edge and channel, the one of ``∇fg`` and ``∇bg`` with the larger magnitude (Pérez eq. 13).

    Returns:
        ``(B, C, 2, H, W)``.
    """
    g_fg = grad(fg, bc="neumann")
    if not mixed:
        return g_fg
    g_bg = grad(bg, bc="neumann")
    return torch.where(g_bg.abs() > g_fg.abs(), g_bg, g_fg)


def _validate(fg, bg, mask):
    check_image(fg, "fg")
    check_image(bg, "bg")
    if fg.shape[1] != bg.shape[1]:
        raise ValueError(f"fg and bg channel counts differ: {fg.shape[1]} vs {bg.shape[1]}")
    check_mask(mask)
    check_same_size(fg=fg, bg=bg, mask=mask)
    batch = check_batch(fg=fg, bg=bg, mask=mask)
    if fg.dtype != bg.dtype or fg.device != bg.device:
        raise TypeError(f"fg and bg must share dtype and device, got {fg.dtype}/{fg.device} and {bg.dtype}/{bg.device}")
    c = fg.shape[1]
    return (
        fg.expand(batch, c, -1, -1),
        bg.expand(batch, c, -1, -1),
        mask.to(fg.dtype).expand(batch, 1, -1, -1),
    )


def _box(mask: torch.Tensor) -> tuple[int, int, int, int]:
    inside = (mask > 0.5).flatten(0, 1).any(0)
    rows = torch.nonzero(inside.any(1)).flatten()
    cols = torch.nonzero(inside.any(0)).flatten()
    h, w = mask.shape[-2:]
    return (
        max(int(rows[0]) - 1, 0),
        min(int(rows[-1]) + 2, h),
        max(int(cols[0]) - 1, 0),
        min(int(cols[-1]) + 2, w),
    )


def poisson_solve_exact(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    mixed: bool = False,
    max_iter: int = 20000,
    tol: float = 1e-6,
    precondition: Literal["spectral", "jacobi", "none"] = "spectral",
) -> SolverResult:
    """The discrete Pérez equations on Ω = {mask > 0.5}, solved by PCG; see :func:`poisson_blend`.

    For every pixel ``p`` of Ω with in-image neighbours ``N_p``:
    ``|N_p| f_p − Σ_{q ∈ N_p ∩ Ω} f_q = Σ_{q ∈ N_p \\ Ω} bg_q + Σ_{q ∈ N_p} v_pq`` with ``v_pq = fg_p − fg_q``
    (or the mixed choice). Returns the :class:`SolverResult` (``history``: relative residuals).
    """
    fg, bg, mask = _validate(fg, bg, mask)
    region = (mask > 0.5).to(fg.dtype)
    rhs = -div(guidance_field(fg, bg, mixed=mixed), bc="neumann")
    return solve_masked_poisson(rhs, bg, region, precondition=precondition, max_iter=max_iter, tol=tol)


def _spectral(fg, bg, mask, mixed):
    y0, y1, x0, x1 = _box(mask)
    h, w = mask.shape[-2:]
    # Work on the box plus a one-pixel margin: enough for the differences and the ghosts around the box.
    cy0, cy1, cx0, cx1 = max(y0 - 1, 0), min(y1 + 1, h), max(x0 - 1, 0), min(x1 + 1, w)
    f = fg[..., cy0:cy1, cx0:cx1]
    b = bg[..., cy0:cy1, cx0:cx1]
    m = mask[..., cy0:cy1, cx0:cx1].unsqueeze(-3)
    g_fg = grad(f, bc="neumann")
    g_bg = grad(b, bc="neumann")
    inner = torch.where(g_bg.abs() > g_fg.abs(), g_bg, g_fg) if mixed else g_fg
    field = m * inner + (1 - m) * g_bg  # GP-GAN eq. (8), with a soft mask as a convex combination
    rhs = -div(field, bc="neumann")
    # Dirichlet ghosts around the box come from bg (edge-replicated where the box meets the image border).
    by0, by1, bx0, bx1 = y0 - cy0, y1 - cy0, x0 - cx0, x1 - cx0
    ghost = F.pad(b, (1, 1, 1, 1), mode="replicate")
    ghost[..., by0 + 1 : by1 + 1, bx0 + 1 : bx1 + 1] = 0
    window = ghost[..., by0 : by1 + 2, bx0 : bx1 + 2]
    neighbours = window[..., :-2, 1:-1] + window[..., 2:, 1:-1] + window[..., 1:-1, :-2] + window[..., 1:-1, 2:]
    out = bg.clone()
    out[..., y0:y1, x0:x1] = solve_poisson(rhs[..., by0:by1, bx0:bx1] + neighbours, bc="dirichlet")
    return out


def poisson_blend(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    mixed: bool = False,
    solver: Solver = "exact",
    max_iter: int = 20000,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Seamless cloning of ``fg`` into ``bg`` on ``mask`` (Pérez et al. 2003, eqs. 7–13).

    Solvers:

    * ``"exact"`` — the discrete Pérez equations on Ω = {mask > 0.5} with the Dirichlet boundary from ``bg``
      and guidance ``v_pq = fg_p − fg_q`` (``mixed=True``: the larger of the ``fg`` and ``bg`` differences),
      solved to relative residual ``tol`` by conjugate gradients with a spectral preconditioner. Ω may touch
      the image border (pixels there have fewer neighbours).
    * ``"spectral"`` — the single-solve formulation of OpenCV's ``seamlessClone`` and GP-GAN: the guidance is
      ``∇fg`` inside the mask and ``∇bg`` outside (a soft mask blends the two), solved once by a DST-I over
      the mask's bounding box grown by one pixel, with the ``bg`` values around the box as Dirichlet data.
      Not iterative; differs from ``"exact"`` only near the mask boundary.
    * ``"inertial"`` — minimises the Poisson energy ``½ Σ_{edges touching Ω} (∇u − v)²`` with ``u = bg`` off Ω
      by iPiano (:func:`fusion.optim.ipiano`); converges to the ``"exact"`` solution, slowly. Useful as an
      autograd energy to combine with other terms.

    Args:
        fg: ``(B, C, H, W)`` source, already placed on the canvas (see :func:`place_source`).
        bg: ``(B, C, H, W)`` destination.
        mask: ``(B, 1, H, W)`` in [0, 1].
        mixed: use mixed gradients.
        solver: ``"exact"``, ``"spectral"`` or ``"inertial"``.
        max_iter, tol: iteration limit and tolerance of the iterative solvers.

    Returns:
        ``(B, C, H, W)`` blended image (not clipped; values may leave [0, 1] slightly).

    Example:
        >>> fg, bg = torch.rand(1, 3, 32, 40), torch.rand(1, 3, 32, 40)
        >>> mask = torch.zeros(1, 1, 32, 40); mask[..., 8:24, 10:30] = 1
        >>> poisson_blend(fg, bg, mask).shape
        torch.Size([1, 3, 32, 40])
    """
    if solver == "exact":
        return poisson_solve_exact(fg, bg, mask, mixed=mixed, max_iter=max_iter, tol=tol).solution
    if solver == "spectral":
        fg, bg, mask = _validate(fg, bg, mask)
        return _spectral(fg, bg, mask, mixed)
    if solver == "inertial":
        return poisson_solve_inertial(fg, bg, mask, mixed=mixed, max_iter=max_iter, tol=tol).solution
    raise ValueError(f"solver must be 'exact', 'spectral' or 'inertial', got {solver!r}")


def poisson_solve_inertial(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    mixed: bool = False,
    beta: float = 0.9,
    max_iter: int = 20000,
    tol: float = 1e-10,
) -> SolverResult:
    """Minimise the Poisson energy by iPiano; ``history`` holds the energies. See :func:`poisson_blend`.

    The constraint ``u = bg`` off Ω is the non-smooth part: its prox is the projection ``Ω·z + (1 − Ω)·bg``.
    """
    fg, bg, mask = _validate(fg, bg, mask)
    region = (mask > 0.5).to(fg.dtype)
    edges = region_edges(region)
    field = guidance_field(fg, bg, mixed=mixed)
    start = region * fg + (1 - region) * bg

    def energy(u: torch.Tensor) -> torch.Tensor:
        return poisson_energy(u, field, edges)

    def project(z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return region * z + (1 - region) * bg

    return ipiano(energy, start, prox=project, beta=beta, lipschitz=1.0, max_iter=max_iter, tol=tol, min_iter=10)


register("poisson")(poisson_blend)
