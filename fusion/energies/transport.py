"""The Benamou–Brenier kinetic energy ``J(m, f) = |m|²/(2f)`` and its proximal map (Papadakis et al. 2014).

``J`` is the perspective of ``|m|²/2``: ``|m|²/(2f)`` for ``f > 0``, ``0`` at ``(m, f) = (0, 0)`` and ``+∞``
otherwise. It is convex, lower semicontinuous and positively 1-homogeneous, so its conjugate is the indicator of
the parabolic set ``{(a, b) : b + |a|²/2 ≤ 0}``.

Its proximal map is pointwise: for ``γ > 0``, ``prox_{γJ}(m̃, f̃) = (m*, f*)`` where ``f*`` is the largest real
root of the cubic

    (f − f̃)(f + γ)² − (γ/2)|m̃|² = 0                                             (Papadakis et al., Prop. 1)

and ``m* = f* m̃ / (f* + γ)`` when ``f* > 0``, else ``(m*, f*) = (0, 0)``. :func:`cubic_largest_root` solves the
cubic for every cell at once by a few Newton steps from a tight upper bound (monotone convergence, no
branches, no cancellation in float32).
"""

from __future__ import annotations

import math

import torch


def kinetic_energy(m_sq: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """Pointwise ``J``: ``m_sq/(2f)`` where ``f > 0``, ``0`` where ``f = 0`` and ``m_sq = 0``, ``+inf`` otherwise.

    Args:
        m_sq: ``|m|²``, any shape.
        f: density, broadcastable against ``m_sq``.

    Returns:
        The pointwise energy (not summed).

    Example:
        >>> kinetic_energy(torch.tensor([4.0, 0.0, 1.0]), torch.tensor([2.0, 0.0, 0.0]))
        tensor([1., 0., inf])
    """
    positive = f > 0
    safe = torch.where(positive, f, torch.ones_like(f))
    value = torch.where(positive, m_sq / (2 * safe), torch.zeros_like(m_sq))
    bad = (~positive) & ((m_sq > 0) | (f < 0))
    return torch.where(bad, torch.full_like(value, math.inf), value)


def cubic_largest_root(
    f_tilde: torch.Tensor, m_sq: torch.Tensor, gamma: float | torch.Tensor, *, newton_steps: int = 5
) -> torch.Tensor:
    """Largest real root of ``p(f) = (f − f̃)(f + γ)² − (γ/2)|m̃|²`` for every element.

    With ``x = f + γ``, ``d = f̃ + γ`` and ``c = γ|m̃|²/2`` the cubic reads ``q(x) = x²(x − d) − c``; its largest
    root is the only one with ``x ≥ max(d, 0)``, where ``q`` is convex and increasing. Newton's method started
    from an upper bound decreases monotonically onto it. The start is the smaller of two bounds:
    ``d + min(c^{1/3}, c/d²)`` for ``d ≥ 0`` (from ``x − d = c/x² ≤ c/d²``) and ``min(c^{1/3}, √(c/|d|))`` for
    ``d < 0`` (from ``x³ ≤ c`` and ``|d|x² ≤ c``), close enough that five steps reach float64 round-off over
    many orders of magnitude of ``f̃``, ``|m̃|`` and ``γ`` (tested against ``numpy.roots``).

    Args:
        f_tilde: ``f̃``, any shape.
        m_sq: ``|m̃|² >= 0``, same shape.
        gamma: ``γ > 0``, a number or a tensor broadcastable against ``f_tilde``.
        newton_steps: Newton steps from the upper bound.

    Returns:
        The root ``f``, shape of ``f_tilde``. Differentiable in ``f_tilde``, ``m_sq`` and ``gamma``: the first
        ``newton_steps − 1`` steps run without autograd and only the last one is recorded, so the gradient is the
        implicit derivative ``∂f/∂(f̃, |m̃|², γ) = −∂_θ p / p'(f)`` at the root (no ``c^{1/3}`` at ``c = 0`` on the
        graph, no growth with ``newton_steps``).

    Example:
        >>> cubic_largest_root(torch.tensor([1.0, -3.0]), torch.tensor([0.0, 0.0]), 1.0)
        tensor([ 1., -1.])
    """
    if newton_steps < 1:
        raise ValueError(f"newton_steps must be >= 1, got {newton_steps}")
    d = f_tilde + gamma
    c = 0.5 * gamma * m_sq
    tiny = torch.finfo(d.dtype).tiny
    with torch.no_grad():
        d0, c0 = d.detach(), c.detach()
        c3 = c0.pow(1 / 3)
        above = d0 + torch.minimum(c3, c0 / (d0 * d0).clamp_min(tiny))
        below = torch.minimum(c3, (c0 / (-d0).clamp_min(tiny)).sqrt())
        x = torch.where(d0 >= 0, above, below)
        for _ in range(newton_steps - 1):
            x = x - (x * x * (x - d0) - c0) / (x * (3 * x - 2 * d0)).clamp_min(tiny)
    # The last Newton step is taken on the graph: at a converged x its derivative is the implicit one,
    # dx/d(d, c) = (x², 1)/q'(x), so autograd sees the root, not the unrolled Newton iteration.
    x = x - (x * x * (x - d) - c) / (x * (3 * x - 2 * d)).clamp_min(tiny)
    return x - gamma


def prox_kinetic(
    m: tuple[torch.Tensor | None, ...] | list[torch.Tensor | None],
    f: torch.Tensor,
    gamma: float | torch.Tensor,
    *,
    newton_steps: int = 5,
) -> tuple[tuple[torch.Tensor | None, ...], torch.Tensor]:
    """``prox_{γJ}`` at every point: the minimiser of ``γ J(m, f) + ½|m − m̃|² + ½(f − f̃)²``.

    Args:
        m: the momentum components ``m̃`` (each the shape of ``f``; ``None`` entries are skipped and returned as
            ``None``), so ``|m̃|²`` sums over the components.
        f: ``f̃``.
        gamma: ``γ > 0``, a number or a tensor broadcastable against ``f``.

    Returns:
        ``(m*, f*)`` with ``m*`` a tuple of the same structure.

    Example:
        >>> (mx,), f = prox_kinetic((torch.tensor([1.0]),), torch.tensor([1.0]), 1.0)
        >>> bool(f > 1) and bool(0 < mx < 1)
        True
    """
    m_sq = sum(mi * mi for mi in m if mi is not None)
    root = cubic_largest_root(f, m_sq, gamma, newton_steps=newton_steps)
    f_star = root.clamp_min(0)
    scale = f_star / (f_star + gamma)  # zero where the root is not positive
    return tuple(None if mi is None else scale * mi for mi in m), f_star


def transport_cost(mx, my, mc, f, cell_volume: float) -> torch.Tensor:
    """Discrete Benamou–Brenier cost ``Σ J(m, f) · cell volume`` per sample, for centred ``(B, ...)`` tensors.

    Cells with ``f <= 0`` count as zero (the iterates of the solver carry no momentum there at convergence);
    returns a ``(B,)`` tensor.
    """
    m_sq = mx * mx + my * my + (mc * mc if mc is not None else 0)
    positive = f > 0
    value = torch.where(positive, m_sq / (2 * torch.where(positive, f, torch.ones_like(f))), torch.zeros_like(f))
    return value.flatten(1).sum(1) * cell_volume
