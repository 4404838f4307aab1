"""Poisson problems on an arbitrary region with Dirichlet data around it, solved matrix-free by PCG."""

from __future__ import annotations

from typing import Literal

import torch

from fusion.ops.cg import conjugate_gradient
from fusion.ops.diff import laplacian
from fusion.ops.poisson import solve_poisson
from fusion.ops.result import SolverResult

Preconditioner = Literal["spectral", "jacobi", "none"]


def _region_box(region: torch.Tensor) -> tuple[int, int, int, int]:
    """Union bounding box of ``region`` over the batch, grown by one pixel and clipped to the image."""
    any_rows = region.flatten(0, -3).amax(0).amax(-1) > 0
    any_cols = region.flatten(0, -3).amax(0).amax(-2) > 0
    rows = torch.nonzero(any_rows).flatten()
    cols = torch.nonzero(any_cols).flatten()
    h, w = region.shape[-2:]
    y0, y1 = max(int(rows[0]) - 1, 0), min(int(rows[-1]) + 2, h)
    x0, x1 = max(int(cols[0]) - 1, 0), min(int(cols[-1]) + 2, w)
    return y0, y1, x0, x1


def masked_poisson_operator(region: torch.Tensor):
    """``x ↦ Ω·(−Δ(Ω·x))`` with the Neumann (in-image neighbours) Laplacian, Ω = ``region``.

    On the pixels of Ω this is the matrix of Pérez et al.: ``|N_p| x_p − Σ_{q ∈ N_p ∩ Ω} x_q``. It is symmetric
    and, when every connected part of Ω has a neighbour outside Ω, positive definite.
    """

    def apply(x: torch.Tensor) -> torch.Tensor:
        return -laplacian(x * region, bc="neumann") * region

    return apply


def solve_masked_poisson(
    rhs: torch.Tensor,
    boundary: torch.Tensor,
    region: torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    precondition: Preconditioner = "spectral",
    max_iter: int = 20000,
    tol: float = 1e-6,
    check_every: int = 10,
) -> SolverResult:
    """Solve ``−Δu = rhs`` on the region Ω with ``u = boundary`` off Ω, for a batch of images.

    The discrete equations are, for every pixel ``p`` of Ω with in-image 4-neighbourhood ``N_p``:
    ``|N_p| u_p − Σ_{q ∈ N_p ∩ Ω} u_q = rhs_p + Σ_{q ∈ N_p \\ Ω} boundary_q``. Pixels of Ω on the image border
    simply have fewer neighbours (a natural, Neumann, condition there). Solved by conjugate gradients on the
    unknowns of Ω, matrix-free.

    Preconditioners: ``"spectral"`` applies the inverse Dirichlet Laplacian of the region's bounding box (one
    DST-I pair per iteration, restricted to Ω; exact when Ω is a rectangle), which cuts the iteration count from
    ``O(n)`` to about ``O(√n)`` for an ``n``-pixel-wide region; ``"jacobi"`` divides by ``|N_p|``.

    Args:
        rhs: ``(B, C, H, W)`` right-hand side (only its values on Ω matter).
        boundary: ``(B, C, H, W)`` Dirichlet data (only its values off Ω matter).
        region: ``(B, 1, H, W)`` or ``(1, 1, H, W)`` binary mask of Ω (1 = unknown).
        x0: optional initial guess.
        precondition: ``"spectral"``, ``"jacobi"`` or ``"none"``.
        max_iter, tol, check_every: as in :func:`fusion.ops.conjugate_gradient`.

    Returns:
        :class:`SolverResult` whose ``solution`` is the full ``(B, C, H, W)`` image (``boundary`` off Ω).

    Example:
        >>> region = torch.zeros(1, 1, 5, 5, dtype=torch.float64); region[..., 1:4, 1:4] = 1
        >>> res = solve_masked_poisson(torch.zeros(1, 1, 5, 5, dtype=torch.float64),
        ...                            torch.ones(1, 1, 5, 5, dtype=torch.float64), region, tol=1e-12)
        >>> torch.allclose(res.solution, torch.ones(1, 1, 5, 5, dtype=torch.float64))
        True
    """
    if precondition not in ("spectral", "jacobi", "none"):
        raise ValueError(f"precondition must be 'spectral', 'jacobi' or 'none', got {precondition!r}")
    region = (region > 0.5).to(rhs.dtype)
    outside = 1 - region
    apply_a = masked_poisson_operator(region)
    b = (rhs + laplacian(boundary * outside, bc="neumann")) * region
    if precondition == "spectral":
        y0, y1, x0_, x1 = _region_box(region)
        box_region = region[..., y0:y1, x0_:x1]

        def m_inv(r: torch.Tensor) -> torch.Tensor:
            out = torch.zeros_like(r)
            out[..., y0:y1, x0_:x1] = solve_poisson(r[..., y0:y1, x0_:x1], bc="dirichlet") * box_region
            return out

    elif precondition == "jacobi":
        # |N_p| = 4 minus the neighbours that fall outside the image (the zero ghosts of the Dirichlet stencil).
        degree = 4 + laplacian(torch.ones_like(region), bc="dirichlet")
        inv_degree = region / degree

        def m_inv(r: torch.Tensor) -> torch.Tensor:
            return r * inv_degree

    else:
        m_inv = None
    start = None if x0 is None else x0 * region
    res = conjugate_gradient(apply_a, b, start, precondition=m_inv, max_iter=max_iter, tol=tol, check_every=check_every)
    res.solution = res.solution * region + boundary * outside
    return res
