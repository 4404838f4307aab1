"""Finite differences, gradient, divergence and Laplacian with explicit boundary conditions.

Grids (per axis of length ``N``, samples ``u_0 … u_{N-1}``):

* ``"neumann"`` — cell-centred grid with a mirror across the half-sample boundary (``u_{-1} = u_0``,
  ``u_N = u_{N-1}``). Forward differences vanish on the last sample. ``laplacian`` equals ``div(grad(u))``
  and is diagonalised by the DCT-II.
* ``"dirichlet"`` — vertex grid with zero ghost values ``u_{-1} = u_N = 0``. The forward difference at the last
  sample is ``0 - u_{N-1}``; its adjoint pairs with it so that ``div = -gradᵀ`` holds exactly. ``laplacian`` is the
  symmetric three-point stencil with both ghosts zero (diagonalised by the DST-I); it differs from
  ``div(grad(u))`` on the first sample, where the one-sided pair sees only one ghost.
* ``"periodic"`` — ``u_{-1} = u_{N-1}``, ``u_N = u_0``; ``laplacian = div(grad(u))``, diagonalised by the DFT.

Gradient fields of ``(B, C, H, W)`` images are ``(B, C, 2, H, W)`` with component 0 along H (rows, ``y``) and
component 1 along W (columns, ``x``). All functions are linear, differentiable and run on the input's device
and dtype.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F

BoundaryCondition = Literal["neumann", "dirichlet", "periodic"]
BOUNDARY_CONDITIONS: tuple[str, ...] = ("neumann", "dirichlet", "periodic")


def check_bc(bc: str) -> None:
    """Raise ``ValueError`` unless ``bc`` is one of :data:`BOUNDARY_CONDITIONS`."""
    if bc not in BOUNDARY_CONDITIONS:
        raise ValueError(f"boundary condition must be one of {BOUNDARY_CONDITIONS}, got {bc!r}")


def _shift_pad(x: torch.Tensor, dim: int, before: bool) -> torch.Tensor:
    """Pad ``x`` with one zero slice before (or after) ``dim`` — helper for the one-sided stencils."""
    dim = dim % x.ndim
    # F.pad counts from the last dimension: pad[2k:2k+2] is (left, right) of dimension ndim-1-k.
    k = x.ndim - 1 - dim
    pad = [0, 0] * (k + 1)
    pad[2 * k + (0 if before else 1)] = 1
    return F.pad(x, pad)


def forward_diff(u: torch.Tensor, dim: int = -1, bc: BoundaryCondition = "neumann") -> torch.Tensor:
    """Forward difference ``u_{i+1} - u_i`` along ``dim`` with the ghost value of ``bc`` at the far end.

    Args:
        u: tensor of any shape.
        dim: axis to differentiate along.
        bc: ``"neumann"`` (last difference 0), ``"dirichlet"`` (``u_N = 0``) or ``"periodic"``.

    Returns:
        Tensor of the same shape as ``u``.

    Example:
        >>> forward_diff(torch.tensor([1.0, 2.0, 4.0]), bc="neumann")
        tensor([1., 2., 0.])
    """
    check_bc(bc)
    if bc == "periodic":
        return torch.roll(u, -1, dims=dim) - u
    n = u.shape[dim]
    head = u.narrow(dim, 1, n - 1) - u.narrow(dim, 0, n - 1)
    if bc == "neumann":
        last = torch.zeros_like(u.narrow(dim, 0, 1))
    else:
        last = -u.narrow(dim, n - 1, 1)
    return torch.cat([head, last], dim=dim)


def backward_diff(p: torch.Tensor, dim: int = -1, bc: BoundaryCondition = "neumann") -> torch.Tensor:
    """Backward difference, the negative adjoint of :func:`forward_diff` for the same ``bc``.

    ``⟨forward_diff(u), p⟩ = -⟨u, backward_diff(p)⟩`` for all ``u``, ``p``.

    Example:
        >>> backward_diff(torch.tensor([1.0, 2.0, 5.0]), bc="neumann")
        tensor([ 1.,  1., -2.])
    """
    check_bc(bc)
    if bc == "periodic":
        return p - torch.roll(p, 1, dims=dim)
    n = p.shape[dim]
    if bc == "neumann":
        # (bd p)_i = p_i [i <= N-2] - p_{i-1} [i >= 1]
        inner = p.narrow(dim, 0, n - 1)
        return _shift_pad(inner, dim, before=False) - _shift_pad(inner, dim, before=True)
    # dirichlet: (bd p)_i = p_i - p_{i-1} [i >= 1]
    return p - _shift_pad(p.narrow(dim, 0, n - 1), dim, before=True)


def _per_axis(bc: BoundaryCondition | Sequence[BoundaryCondition], ndim: int) -> list[str]:
    if isinstance(bc, str):
        return [bc] * ndim
    bcs = list(bc)
    if len(bcs) != ndim:
        raise ValueError(f"expected {ndim} boundary conditions (one per axis), got {len(bcs)}")
    return bcs


def grad(u: torch.Tensor, bc: BoundaryCondition | Sequence[BoundaryCondition] = "neumann") -> torch.Tensor:
    """Forward-difference gradient of a ``(B, C, H, W)`` image.

    Args:
        u: ``(..., H, W)`` tensor.
        bc: one boundary condition for both axes, or a pair ``(bc_H, bc_W)``.

    Returns:
        ``(..., 2, H, W)``: ``[∂_y u, ∂_x u]``.

    Example:
        >>> grad(torch.zeros(1, 3, 4, 5)).shape
        torch.Size([1, 3, 2, 4, 5])
    """
    by, bx = _per_axis(bc, 2)
    return torch.stack([forward_diff(u, -2, by), forward_diff(u, -1, bx)], dim=-3)


def div(p: torch.Tensor, bc: BoundaryCondition | Sequence[BoundaryCondition] = "neumann") -> torch.Tensor:
    """Divergence of a ``(..., 2, H, W)`` field, the negative adjoint of :func:`grad` (``div = -gradᵀ``).

    Example:
        >>> div(torch.zeros(1, 3, 2, 4, 5)).shape
        torch.Size([1, 3, 4, 5])
    """
    if p.ndim < 3 or p.shape[-3] != 2:
        raise ValueError(f"div expects a field of shape (..., 2, H, W), got {tuple(p.shape)}")
    by, bx = _per_axis(bc, 2)
    return backward_diff(p[..., 0, :, :], -2, by) + backward_diff(p[..., 1, :, :], -1, bx)


def second_diff(u: torch.Tensor, dim: int = -1, bc: BoundaryCondition = "neumann") -> torch.Tensor:
    """Three-point second difference ``u_{i-1} - 2u_i + u_{i+1}`` along ``dim`` with the ghosts of ``bc``."""
    check_bc(bc)
    if bc == "periodic":
        return torch.roll(u, 1, dims=dim) + torch.roll(u, -1, dims=dim) - 2 * u
    if bc == "neumann":
        return backward_diff(forward_diff(u, dim, "neumann"), dim, "neumann")
    n = u.shape[dim]
    prev = _shift_pad(u.narrow(dim, 0, n - 1), dim, before=True)
    nxt = _shift_pad(u.narrow(dim, 1, n - 1), dim, before=False)
    return prev + nxt - 2 * u


def laplacian(
    u: torch.Tensor,
    bc: BoundaryCondition | Sequence[BoundaryCondition] = "neumann",
    dims: Sequence[int] = (-2, -1),
) -> torch.Tensor:
    """Standard (2·len(dims)+1)-point Laplacian over ``dims`` (default the image axes H, W).

    Args:
        u: tensor of any shape.
        bc: one boundary condition, or one per axis in ``dims``.
        dims: axes to sum the second differences over.

    Returns:
        Tensor shaped like ``u``.

    Example:
        >>> laplacian(torch.ones(1, 1, 3, 3)).abs().max().item()
        0.0
    """
    bcs = _per_axis(bc, len(dims))
    if u.ndim >= 2 and [d % u.ndim for d in dims] == [u.ndim - 2, u.ndim - 1] and bcs[0] == bcs[1]:
        # Fast path for images: one padded copy, four shifted views.
        mode = {"neumann": "replicate", "periodic": "circular", "dirichlet": "constant"}[bcs[0]]
        h, w = u.shape[-2:]
        p = F.pad(u.reshape(1, -1, h, w), (1, 1, 1, 1), mode=mode)
        lap = p[..., :-2, 1:-1] + p[..., 2:, 1:-1] + p[..., 1:-1, :-2] + p[..., 1:-1, 2:]
        return lap.reshape(u.shape) - 4 * u
    out = torch.zeros_like(u)
    for d, b in zip(dims, bcs):
        out = out + second_diff(u, d, b)
    return out
