"""Implicit differentiation of a minimiser against closed forms, dense solves and finite differences."""

from __future__ import annotations

import warnings

import pytest
import torch

import fusion
from fusion.optim.implicit import implicit_minimiser


def _newton(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise minimiser of a x⁴/4 + x²/2 − b x (strictly convex), by Newton's method in float64."""
    x = torch.zeros_like(b)
    for _ in range(60):
        x = x - (a * x**3 + x - b) / (3 * a * x**2 + 1)
    return x


def _quartic(x, a, b):
    return (a * x**4 / 4 + x**2 / 2 - b * x).flatten(1).sum(1)


def test_gradcheck_nonlinear_energy() -> None:
    gen = torch.Generator().manual_seed(0)
    a = (torch.rand(2, 5, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(2, 5, generator=gen, dtype=torch.float64).requires_grad_()

    def solve(a, b):
        return implicit_minimiser(_quartic, _newton(a.detach(), b.detach()), [a, b], tol=1e-13)

    assert torch.autograd.gradcheck(solve, (a, b))


def test_quadratic_matches_dense_solve() -> None:
    # E(x, θ) = ½ xᵀAx − θᵀx per sample: x* = A⁻¹θ, so ∂⟨w, x*⟩/∂θ = A⁻¹w (A symmetric), from a dense solve
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(2, 6, 6, generator=gen, dtype=torch.float64)
    a = q @ q.transpose(1, 2) + 6 * torch.eye(6, dtype=torch.float64)
    theta = torch.randn(2, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    w = torch.randn(2, 6, generator=gen, dtype=torch.float64)

    def energy(x, t):
        return 0.5 * torch.einsum("bi,bij,bj->b", x, a, x) - (t * x).sum(1)

    x_star = torch.linalg.solve(a, theta.detach())
    x = implicit_minimiser(energy, x_star, [theta], tol=1e-13)
    (x * w).sum().backward()
    assert torch.allclose(theta.grad, torch.linalg.solve(a, w), atol=1e-10)


def test_samples_are_independent() -> None:
    # the gradient of sample 0 does not change when sample 1 changes
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([[0.5, -1.0], [2.0, 1.0]], dtype=torch.float64)
    x = implicit_minimiser(lambda x, a: _quartic(x, a, b), _newton(a.detach(), b), [a], tol=1e-13)
    x[0].sum().backward()
    g_pair = a.grad[0].clone()
    a1 = a.detach()[:1].clone().requires_grad_()
    x1 = implicit_minimiser(lambda x, a: _quartic(x, a, b[:1]), _newton(a1.detach(), b[:1]), [a1], tol=1e-13)
    x1.sum().backward()
    assert torch.allclose(g_pair, a1.grad[0], atol=1e-12)
    assert torch.all(a.grad[1] == 0)


def test_free_mask_and_two_blocks() -> None:
    # E(x, y) = ½|x − p|² + ½|y − 2x|² with y held fixed where free_y = 0: on the free entries the minimiser is
    # closed form; the fixed entries of y pass their value through unchanged (gradient 0 from this path)
    p = torch.tensor([[1.0, -2.0, 0.5]], dtype=torch.float64, requires_grad=True)
    free_y = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    y_fixed = torch.tensor([[0.0, 7.0, 0.0]], dtype=torch.float64)

    def energy(x, y, p):
        return 0.5 * ((x - p) ** 2).sum(1) + 0.5 * ((y - 2 * x) ** 2).sum(1)

    # y free: y = 2x and x = p; y fixed at 7: x minimises ½(x − p)² + ½(7 − 2x)²  →  x = (p + 14)/5
    x_star = torch.where(free_y > 0, p.detach(), (p.detach() + 14) / 5)
    y_star = torch.where(free_y > 0, 2 * p.detach(), y_fixed)
    x, y = implicit_minimiser(energy, (x_star, y_star), [p], free=[None, free_y], tol=1e-13)
    (x.sum() + y.sum()).backward()
    expected = torch.where(free_y > 0, torch.full_like(p, 3.0), torch.full_like(p, 0.2))
    assert torch.allclose(p.grad, expected, atol=1e-10)


def test_no_graph_when_nothing_requires_grad() -> None:
    x = torch.ones(1, 3)
    assert implicit_minimiser(_quartic, x, [torch.ones(1, 3), torch.ones(1, 3)]) is x


def test_adjoint_solve_that_stops_early_warns() -> None:
    a = torch.rand(1, 50, dtype=torch.float64) + 0.5
    b = torch.randn(1, 50, dtype=torch.float64)
    a.requires_grad_()
    q = torch.randn(50, 50, dtype=torch.float64)

    def energy(x, a):  # coupled quadratic: CG needs more than one iteration
        return 0.5 * ((x @ q) ** 2).sum(1) + 0.5 * (a * x * x).sum(1) - (b * x).sum(1)

    x = implicit_minimiser(energy, torch.zeros_like(b), [a], max_iter=1, tol=1e-14, method="demo")
    with pytest.warns(fusion.ConvergenceWarning, match="demo \\(implicit gradient\\)"):
        x.sum().backward()
    with warnings.catch_warnings():
        warnings.simplefilter("error", fusion.ConvergenceWarning)
        a.grad = None
        implicit_minimiser(energy, torch.zeros_like(b), [a], tol=1e-10).sum().backward()
