"""Discrete isotropic osmosis operators (Weickert et al. 2013; variational osmosis paper, eqs. 5–8 and 14).

Grid: cell-centred pixels with Neumann boundaries, as in :mod:`fusion.ops.diff`. Every quantity that lives on
an edge (drift, flux, edge weights) is a ``(B, C, 2, H, W)`` field on the forward-difference edges: component 0
holds the edge between rows ``i`` and ``i + 1`` at row ``i``, component 1 the edge between columns ``j`` and
``j + 1`` at column ``j``. The last row (column) of each component is a boundary edge and is always zero, which
is the no-flux condition ``⟨∇u − d u, n⟩ = 0`` of eq. (6).

Drift at half-grid points (the standard conservative discretisation of ``d = ∇ log v``)::

    d_{i+1/2} = 2 (v_{i+1} − v_i) / (v_{i+1} + v_i),

osmosis flux and operator (``A u`` discretises ``div(∇u − d u)``)::

    φ_{i+1/2} = (u_{i+1} − u_i) − d_{i+1/2} (u_{i+1} + u_i) / 2,      A u = div φ.

For a drift that comes from a positive image ``v`` the flux factorises as ``φ = h ⊙ ∇(u / v)`` with the harmonic
mean ``h_{i+1/2} = 2 v_i v_{i+1} / (v_i + v_{i+1})``, hence ``A u = −S (u / v)`` with the symmetric positive
semi-definite ``S w = −div(h ⊙ ∇w)``. This is what makes the implicit scheme solvable by conjugate gradients,
and it shows that ``A v = 0`` (the steady state is a multiple of ``v``) and ``Σ A u = 0`` (mass conservation).
"""

from __future__ import annotations

import torch

from fusion.ops.diff import div, grad


def _edge_valid(x: torch.Tensor) -> torch.Tensor:
    """``(…, 2, H, W)`` 0/1 mask of the interior forward-difference edges of an ``(…, H, W)`` tensor."""
    h, w = x.shape[-2:]
    valid = torch.ones(*x.shape[:-2], 2, h, w, dtype=x.dtype, device=x.device)
    valid[..., 0, h - 1, :] = 0
    valid[..., 1, :, w - 1] = 0
    return valid


def edge_mean(u: torch.Tensor) -> torch.Tensor:
    """Arithmetic mean of the two ends of every interior edge, ``(u_i + u_{i+1}) / 2``; zero on boundary edges.

    Args:
        u: ``(…, H, W)`` tensor.

    Returns:
        ``(…, 2, H, W)`` edge field.

    Example:
        >>> edge_mean(torch.tensor([[[1.0, 3.0]]]))[0, 1]
        tensor([[2., 0.]])
    """
    down = torch.cat([0.5 * (u[..., :-1, :] + u[..., 1:, :]), torch.zeros_like(u[..., :1, :])], dim=-2)
    right = torch.cat([0.5 * (u[..., :, :-1] + u[..., :, 1:]), torch.zeros_like(u[..., :, :1])], dim=-1)
    return torch.stack([down, right], dim=-3)


def edge_mean_adjoint(p: torch.Tensor) -> torch.Tensor:
    """Adjoint of :func:`edge_mean`: ``⟨edge_mean(u), p⟩ = ⟨u, edge_mean_adjoint(p)⟩``.

    Args:
        p: ``(…, 2, H, W)`` edge field (its boundary edges are ignored).

    Returns:
        ``(…, H, W)``.
    """
    py = p[..., 0, :-1, :]
    px = p[..., 1, :, :-1]
    zy = torch.zeros_like(p[..., 0, :1, :])
    zx = torch.zeros_like(p[..., 1, :, :1])
    out_y = 0.5 * (torch.cat([py, zy], dim=-2) + torch.cat([zy, py], dim=-2))
    out_x = 0.5 * (torch.cat([px, zx], dim=-1) + torch.cat([zx, px], dim=-1))
    return out_y + out_x


def canonical_drift(v: torch.Tensor) -> torch.Tensor:
    """Drift ``d = ∇ log v`` at half-grid points, ``2 (v_{i+1} − v_i) / (v_{i+1} + v_i)``, for a positive ``v``.

    Args:
        v: ``(B, C, H, W)`` positive image.

    Returns:
        ``(B, C, 2, H, W)`` drift on the forward-difference edges (zero on boundary edges).

    Example:
        >>> canonical_drift(torch.tensor([[[[1.0, 3.0]]]]))[0, 0, 1]
        tensor([[1., 0.]])
    """
    return grad(v, bc="neumann") / edge_mean(v).where(_edge_valid(v) > 0, torch.ones_like(v).unsqueeze(-3))


def harmonic_edge_weights(v: torch.Tensor) -> torch.Tensor:
    """Harmonic means ``2 v_i v_{i+1} / (v_i + v_{i+1})`` on the interior edges (zero on boundary edges).

    Args:
        v: ``(B, C, H, W)`` positive image.

    Returns:
        ``(B, C, 2, H, W)``.
    """
    valid = _edge_valid(v)
    prod = torch.stack(
        [
            torch.cat([v[..., :-1, :] * v[..., 1:, :], torch.zeros_like(v[..., :1, :])], dim=-2),
            torch.cat([v[..., :, :-1] * v[..., :, 1:], torch.zeros_like(v[..., :, :1])], dim=-1),
        ],
        dim=-3,
    )
    mean = edge_mean(v).where(valid > 0, torch.ones_like(prod))
    return prod / mean


def osmosis_flux(u: torch.Tensor, drift: torch.Tensor) -> torch.Tensor:
    """Osmosis flux ``∇u − d ⊙ M u`` on the edges (``M`` = :func:`edge_mean`); zero on boundary edges.

    Args:
        u: ``(B, C, H, W)``.
        drift: ``(B, C, 2, H, W)``.

    Returns:
        ``(B, C, 2, H, W)``.
    """
    return grad(u, bc="neumann") - drift * edge_mean(u)


def osmosis_operator(u: torch.Tensor, drift: torch.Tensor) -> torch.Tensor:
    """Discrete osmosis operator ``A u = div(∇u − d u)`` (eq. 6 with ``W = I``), Neumann (no-flux) boundaries.

    Column sums of ``A`` vanish (mass conservation) and its off-diagonal entries
    ``1 ± d/2`` are non-negative whenever ``|d| ≤ 2`` (always true for :func:`canonical_drift`).

    Args:
        u: ``(B, C, H, W)``.
        drift: ``(B, C, 2, H, W)`` drift on the edges.

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> v = torch.rand(1, 3, 5, 6) + 0.5
        >>> torch.allclose(osmosis_operator(v, canonical_drift(v)), torch.zeros_like(v), atol=1e-6)
        True
    """
    return div(osmosis_flux(u, drift), bc="neumann")


def osmosis_operator_adjoint(w: torch.Tensor, drift: torch.Tensor) -> torch.Tensor:
    """Adjoint ``Aᵀ w = div(∇w) + Mᵀ(d ⊙ ∇w)`` of :func:`osmosis_operator` for the same drift.

    Args:
        w: ``(B, C, H, W)``.
        drift: ``(B, C, 2, H, W)``.

    Returns:
        ``(B, C, H, W)``.
    """
    g = grad(w, bc="neumann")
    return div(g, bc="neumann") + edge_mean_adjoint(drift * g)


def osmosis_operator_diagonal(drift: torch.Tensor) -> torch.Tensor:
    """Diagonal of :func:`osmosis_operator`: ``Σ_edges at i (−1 ∓ d/2)``, shaped ``(B, C, H, W)``.

    The explicit scheme ``u + τ A u`` keeps positivity exactly when ``τ ≤ 1 / max |diag A|``.
    """
    valid = _edge_valid(drift[..., 0, :, :])
    # edge (i, i+1) contributes −(1 + d/2) to row i and −(1 − d/2) to row i+1
    left = -(1 + 0.5 * drift) * valid
    right = -(1 - 0.5 * drift) * valid
    out = left[..., 0, :, :] + left[..., 1, :, :]
    out = out + torch.cat([torch.zeros_like(right[..., 0, :1, :]), right[..., 0, :-1, :]], dim=-2)
    out = out + torch.cat([torch.zeros_like(right[..., 1, :, :1]), right[..., 1, :, :-1]], dim=-1)
    return out


def osmosis_stiffness(w: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Symmetric weighted Laplacian ``S w = −div(h ⊙ ∇w)`` (positive semi-definite for ``h ≥ 0``).

    With ``h = harmonic_edge_weights(v)``: ``osmosis_operator(u, canonical_drift(v)) = −S(u / v)``.

    Args:
        w: ``(B, C, H, W)``.
        weights: ``(B, C, 2, H, W)`` edge weights ``h``.

    Returns:
        ``(B, C, H, W)``.
    """
    return -div(weights * grad(w, bc="neumann"), bc="neumann")


def stiffness_diagonal(weights: torch.Tensor) -> torch.Tensor:
    """Diagonal of :func:`osmosis_stiffness`: the sum of the weights of the edges at each pixel."""
    hy, hx = weights[..., 0, :, :], weights[..., 1, :, :]
    out = hy + hx
    out = out + torch.cat([torch.zeros_like(hy[..., :1, :]), hy[..., :-1, :]], dim=-2)
    out = out + torch.cat([torch.zeros_like(hx[..., :, :1]), hx[..., :, :-1]], dim=-1)
    return out


__all__ = [
    "canonical_drift",
    "edge_mean",
    "edge_mean_adjoint",
    "harmonic_edge_weights",
    "osmosis_flux",
    "osmosis_operator",
    "osmosis_operator_adjoint",
    "osmosis_operator_diagonal",
    "osmosis_stiffness",
    "stiffness_diagonal",
]
