"""Energies of the variational osmosis fusion model (Parisotto et al.), eqs. (1), (7), (11), (12), (14)–(16).

The model is ``E(u, v) = O(u, v) + γ D(u) + η R(v)`` for positive images ``u`` (the fused result) and ``v`` (the
structure image whose drift ``∇ log v`` drives the osmosis). All energies return one value per batch sample,
summed over pixels and channels (channels are independent).

Discretisation of the osmosis energy (7) with ``W = I``::

    O₁(u, v) = ½ Σ_edges h_e(v) (∇(u / v))_e²,    h_{i+1/2} = 2 v_i v_{i+1} / (v_i + v_{i+1})

(forward differences, Neumann boundaries, see :mod:`fusion.ops.osmosis`). Weighting each edge by the harmonic
mean of ``v`` at its two ends makes ``∂_u O₁ = −(1/v) A u`` hold exactly for the standard discrete osmosis
operator ``A`` of eq. (6) — the discrete counterpart of eq. (14) — so the minimisers of ``O₁(·, v)`` are the
steady states ``c·v`` of the linear osmosis filter.
"""

from __future__ import annotations

from typing import Callable

import torch

from fusion.ops.diff import grad
from fusion.ops.osmosis import harmonic_edge_weights, osmosis_stiffness


def _bsum(x: torch.Tensor) -> torch.Tensor:
    # accumulate in float64: energies of large float32 images are compared to a few ulps in the line search
    return x.flatten(1).sum(1, dtype=torch.float64).to(x.dtype)


def geometric_blend(f: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """The reference structure image ``f^α b^{1−α}`` of eq. (10)–(11), for positive ``f`` and ``b``.

    Args:
        f, b: ``(B, C, H, W)`` positive images.
        alpha: ``(B, 1, H, W)`` α-map in [0, 1] (or broadcastable).

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> geometric_blend(torch.full((1, 1, 1, 1), 4.0), torch.ones(1, 1, 1, 1), torch.full((1, 1, 1, 1), 0.5))
        tensor([[[[2.]]]])
    """
    return torch.exp(alpha * torch.log(f) + (1 - alpha) * torch.log(b))


def osmosis_energy(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Isotropic osmosis energy, eq. (7) with ``W = I`` (times ½): ``½ Σ h(v) |∇(u/v)|²`` per sample.

    Args:
        u: ``(B, C, H, W)``.
        v: ``(B, C, H, W)`` positive.

    Returns:
        ``(B,)``.

    Example:
        >>> v = torch.rand(2, 3, 8, 9) + 0.5
        >>> osmosis_energy(2 * v, v).abs().max() < 1e-6
        tensor(True)
    """
    g = grad(u / v, bc="neumann")
    return 0.5 * _bsum(harmonic_edge_weights(v) * g * g)


def osmosis_fusion_term(
    u: torch.Tensor, v: torch.Tensor, target: torch.Tensor, mu: float | torch.Tensor
) -> torch.Tensor:
    """Osmosis-driven fusion term ``O(u, v)`` of eq. (11): ``O₁(u, v) + µ/2 ‖v − f^α b^{1−α}‖²``.

    Args:
        u, v: ``(B, C, H, W)``, ``v`` positive.
        target: ``(B, C, H, W)`` the reference ``f^α b^{1−α}`` (see :func:`geometric_blend`).
        mu: weight ``µ ≥ 0``.

    Returns:
        ``(B,)``.
    """
    r = v - target
    return osmosis_energy(u, v) + 0.5 * mu * _bsum(r * r)


def fidelity_energy(u: torch.Tensor, f: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """Foreground fidelity ``D(u) = ½ Σ α (u − f)²`` of eq. (12), per sample ``(B,)``."""
    r = u - f
    return 0.5 * _bsum(alpha * r * r)


def prox_fidelity(
    z: torch.Tensor, f: torch.Tensor, alpha: torch.Tensor, gamma: float, step: torch.Tensor | float
) -> torch.Tensor:
    """Closed-form proximal map of ``γ D``, eq. (16): ``(γα + 1/ζ)⁻¹ (γαf + z/ζ)``.

    Args:
        z: ``(B, C, H, W)`` point to map.
        f: ``(B, C, H, W)`` foreground.
        alpha: ``(B, 1, H, W)`` α-map.
        gamma: weight ``γ ≥ 0``.
        step: ``ζ > 0``, a float or ``(B, 1, 1, 1)``.

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> prox_fidelity(torch.zeros(1, 1, 1, 1), torch.ones(1, 1, 1, 1), torch.ones(1, 1, 1, 1), 1.0, 1.0)
        tensor([[[[0.5000]]]])
    """
    ga = gamma * alpha
    return (ga * f * step + z) / (ga * step + 1)


def huber_tv(v: torch.Tensor, epsilon: float) -> torch.Tensor:
    """Huber-regularised total variation ``Σ H_ε(|∇v|)`` per sample, channel by channel.

    ``H_ε(t) = t² / (2ε)`` for ``t ≤ ε`` and ``t − ε/2`` otherwise; ``|∇v|`` is the Euclidean norm of the two
    forward differences at a pixel (Neumann boundaries).

    Args:
        v: ``(B, C, H, W)``.
        epsilon: smoothing ``ε > 0`` (the paper uses 0.05).

    Returns:
        ``(B,)``.

    Example:
        >>> v = torch.tensor([[[[0.0, 1.0]]]])
        >>> huber_tv(v, 0.05)
        tensor([0.9750])
    """
    g = grad(v, bc="neumann")
    n2 = (g * g).sum(-3)
    small = n2 <= epsilon * epsilon
    norm = torch.sqrt(n2.clamp_min(epsilon * epsilon))
    return _bsum(torch.where(small, n2 / (2 * epsilon), norm - 0.5 * epsilon))


def variational_osmosis_energy(
    u: torch.Tensor,
    v: torch.Tensor,
    f: torch.Tensor,
    alpha: torch.Tensor,
    target: torch.Tensor,
    *,
    mu: float,
    gamma: float,
    eta: float,
    epsilon: float = 0.05,
) -> torch.Tensor:
    """The full model (1): ``O(u, v) + γ D(u) + η R(v)`` with ``R`` the Huber TV, per sample ``(B,)``."""
    e = osmosis_fusion_term(u, v, target, mu) + gamma * fidelity_energy(u, f, alpha)
    if eta > 0:
        e = e + eta * huber_tv(v, epsilon)
    return e


def osmosis_grad_u(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Analytic ``∂_u O`` of eq. (14), discrete: ``(1/v) S(u/v) = −(1/v) A u`` (``A`` the osmosis operator).

    Args:
        u, v: ``(B, C, H, W)``, ``v`` positive.

    Returns:
        ``(B, C, H, W)``.
    """
    return osmosis_stiffness(u / v, harmonic_edge_weights(v)) / v


def osmosis_grad_v(u: torch.Tensor, v: torch.Tensor, target: torch.Tensor, mu: float) -> torch.Tensor:
    """Analytic ``∂_v O`` of eq. (15), discrete.

    In the continuum ``∂_v O = ½ |∇(u/v)|² + (u/v²) div(v ∇(u/v)) + µ (v − f^α b^{1−α})``, which expands to the
    terms of eq. (15). The discrete energy gives the same three parts: ``−(u/v²) S(u/v)`` through ``u/v``, the
    derivative of the harmonic edge weights ``∂h/∂v_i = 2 v_{i+1}² / (v_i + v_{i+1})²`` against ``½ (∇(u/v))²``
    (which tends to ``½ |∇(u/v)|²``), and the fidelity term.

    Args:
        u, v, target: ``(B, C, H, W)``, ``v`` positive.
        mu: weight ``µ``.

    Returns:
        ``(B, C, H, W)``.
    """
    w = u / v
    g = grad(w, bc="neumann")
    q = 0.5 * g * g  # zero on boundary edges
    # harmonic-weight derivatives, per axis: wrt the first end a = v_i and the second end b = v_{i+1}
    a_y, b_y = v[..., :-1, :], v[..., 1:, :]
    a_x, b_x = v[..., :, :-1], v[..., :, 1:]
    qy, qx = q[..., 0, :-1, :], q[..., 1, :, :-1]
    dy_a = qy * 2 * b_y * b_y / (a_y + b_y) ** 2
    dy_b = qy * 2 * a_y * a_y / (a_y + b_y) ** 2
    dx_a = qx * 2 * b_x * b_x / (a_x + b_x) ** 2
    dx_b = qx * 2 * a_x * a_x / (a_x + b_x) ** 2
    zy, zx = torch.zeros_like(v[..., :1, :]), torch.zeros_like(v[..., :, :1])
    from_weights = (
        torch.cat([dy_a, zy], dim=-2)
        + torch.cat([zy, dy_b], dim=-2)
        + torch.cat([dx_a, zx], dim=-1)
        + torch.cat([zx, dx_b], dim=-1)
    )
    through_ratio = -(u / (v * v)) * osmosis_stiffness(w, harmonic_edge_weights(v))
    return from_weights + through_ratio + mu * (v - target)


def osmosis_curvature(u: torch.Tensor, v: torch.Tensor, mu: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel curvature bounds of ``O(u, v)`` (eq. 11) for a diagonal, variable-metric iPiano.

    Returns the Gershgorin row sums of the two diagonal Hessian blocks of ``O`` at ``(u, v)``: for each pixel,
    the sum over its edges of the absolute entries of that edge's ``2×2`` Hessian, so that ``diag(d) − ∇²_{xx} O``
    is diagonally dominant, hence positive semi-definite, for each block ``x ∈ {u, v}``.

    * ``u`` block: ``O₁`` is quadratic in ``u`` with Hessian ``V⁻¹ S_h V⁻¹`` (``S_h`` the stiffness of the
      harmonic edge weights), so ``d_u,i = Σ_{j~i} h_ij / v_i · (1/v_i + 1/v_j)`` bounds it for every ``u``.
    * ``v`` block: for one edge ``φ = ½ h(a, b) r²``, ``r = q/b − p/a`` (``a, b`` the values of ``v`` and ``p, q``
      those of ``u`` at its two ends), the exact second derivatives of ``φ`` in ``(a, b)`` are summed in absolute
      value, plus ``µ`` from the fidelity to ``f^α b^{1−α}``. This is the local curvature at the current point (not
      a global bound: the stiffness grows like ``u²/v³``), so the step still needs backtracking.

    Args:
        u, v: ``(B, C, H, W)``, ``v`` positive.
        mu: weight ``µ ≥ 0`` of the ``v`` fidelity.

    Returns:
        ``(d_u, d_v)``, each ``(B, C, H, W)`` and non-negative.

    Example:
        >>> v = torch.rand(1, 1, 4, 5) + 0.5
        >>> d_u, d_v = osmosis_curvature(2 * v, v, 10.0)
        >>> bool((d_u > 0).all()) and bool((d_v >= 10.0).all())
        True
    """
    # u block: per edge h/a · (1/a + 1/b) = 2/a, so d_u = 2 (number of neighbours) / v.
    # v block, per edge, with s = a + b, t_a = h/a = 2b/s, t_b = h/b = 2 − t_a, g_a = p/a², g_b = q/b²,
    # k = r²/(2s):  φ_aa = h g_a² − t_a² k − t_a t_b r g_a,  φ_bb = h g_b² − t_b² k + t_a t_b r g_b,
    #               φ_ab = t_a t_b k + ½ r (t_b² g_a − t_a² g_b) − h g_a g_b.
    w = u / v
    g = w / v
    d_u = torch.zeros_like(v)
    d_v = torch.full_like(v, float(mu))
    for dim in (-2, -1):
        n = v.shape[dim]
        if n < 2:
            continue
        first, second = (
            (slice(None),) * (v.ndim + dim) + (slice(0, n - 1),),
            (slice(None),) * (v.ndim + dim) + (slice(1, n),),
        )
        a, b = v[first], v[second]
        g_a, g_b = g[first], g[second]
        r = w[second] - w[first]
        inv_s = 1 / (a + b)
        t_a = 2 * b * inv_s
        t_b = 2 - t_a
        h = t_a * a
        c = t_a * t_b
        ta2, tb2 = t_a * t_a, t_b * t_b
        k = 0.5 * r * r * inv_s
        hg_a, hg_b, crk = h * g_a, h * g_b, c * r
        phi_ab = (c * k + 0.5 * r * (tb2 * g_a - ta2 * g_b) - hg_a * g_b).abs_()
        d_v[first] += (g_a * (hg_a - crk) - ta2 * k).abs_() + phi_ab
        d_v[second] += (g_b * (hg_b + crk) - tb2 * k).abs_() + phi_ab
        d_u[first] += 2.0
        d_u[second] += 2.0
    d_u /= v
    return d_u, d_v


def _edge_weight_slices(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Harmonic edge weights of ``v`` on the interior vertical ``(…, H−1, W)`` and horizontal ``(…, H, W−1)`` edges."""
    a_y, b_y = v[..., :-1, :], v[..., 1:, :]
    a_x, b_x = v[..., :, :-1], v[..., :, 1:]
    return 2 * a_y * b_y / (a_y + b_y), 2 * a_x * b_x / (a_x + b_x)


def _weighted_laplacian(w: torch.Tensor, h_y: torch.Tensor, h_x: torch.Tensor) -> torch.Tensor:
    """``S w = −div(h ∇w)`` from the interior edge weights (same as :func:`fusion.ops.osmosis.osmosis_stiffness`,
    without materialising the zero boundary edges; it is the inner loop of the exact ``u``-block solve)."""
    flux_y = h_y * (w[..., 1:, :] - w[..., :-1, :])
    flux_x = h_x * (w[..., :, 1:] - w[..., :, :-1])
    out = torch.zeros_like(w)
    out[..., :-1, :] -= flux_y
    out[..., 1:, :] += flux_y
    out[..., :, :-1] -= flux_x
    out[..., :, 1:] += flux_x
    return out


def u_block_hessian(
    v: torch.Tensor, alpha: torch.Tensor, gamma: float
) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """Hessian of the ``u``-block of model (1), ``H_v = V⁻¹ S_h V⁻¹ + γ diag(α)``, for a fixed ``v``.

    For fixed ``v`` the energy ``O(·, v) + γ D(·)`` (eqs. 11–12) is the convex quadratic
    ``½ uᵀ H_v u − γ ⟨α f, u⟩ + const``: ``O₁ = ½ Σ h (∇(u/v))²`` contributes ``V⁻¹ S_h V⁻¹`` (``S_h`` the weighted
    Laplacian of the harmonic edge weights ``h`` of ``v``, ``V = diag(v)``; the derivative of eq. 14 in ``u``) and
    the fidelity ``γ D`` contributes ``γ diag(α)``. ``H_v`` is symmetric positive semi-definite, and definite on
    every channel where ``γ α`` is positive somewhere (the kernel of ``S_h`` is the constants, so that of
    ``V⁻¹ S_h V⁻¹`` is the multiples of ``v``). The ``u``-block minimiser solves ``H_v u = γ α f``.

    Args:
        v: ``(B, C, H, W)`` positive structure image.
        alpha: ``(B, 1, H, W)`` α-map (or broadcastable to ``v``).
        gamma: weight ``γ ≥ 0`` of the fidelity ``D``.

    Returns:
        ``(apply, diagonal)``: the matrix-free product ``x ↦ H_v x`` for ``x`` shaped like ``v`` (the edge weights
        are computed once), and ``diag(H_v)`` ``= Σ_{edges at i} h_e / v_i² + γ α_i`` shaped like ``v`` (the Jacobi
        preconditioner).

    Example:
        >>> v = torch.rand(1, 3, 6, 7, dtype=torch.float64) + 0.5
        >>> apply, diagonal = u_block_hessian(v, torch.zeros(1, 1, 6, 7, dtype=torch.float64), 1.0)
        >>> bool(apply(v).abs().max() < 1e-12)  # α = 0: the multiples of v are the kernel
        True
    """
    inv_v = 1 / v
    h_y, h_x = _edge_weight_slices(v)
    ga = gamma * alpha

    def apply(x: torch.Tensor) -> torch.Tensor:
        return inv_v * _weighted_laplacian(inv_v * x, h_y, h_x) + ga * x

    s = torch.zeros_like(v)
    s[..., :-1, :] += h_y
    s[..., 1:, :] += h_y
    s[..., :, :-1] += h_x
    s[..., :, 1:] += h_x
    return apply, s * inv_v * inv_v + ga


__all__ = [
    "fidelity_energy",
    "geometric_blend",
    "huber_tv",
    "osmosis_curvature",
    "osmosis_energy",
    "osmosis_fusion_term",
    "osmosis_grad_u",
    "osmosis_grad_v",
    "prox_fidelity",
    "u_block_hessian",
    "variational_osmosis_energy",
]
