"""The implicitly differentiated Krylov solve: gradients against finite differences, warnings of the adjoint."""

import pytest
import torch

from fusion import ConvergenceWarning
from fusion.ops.cg import bicgstab, conjugate_gradient
from fusion.optim.linear_solve import differentiable_solve


def _spd(d: torch.Tensor, c: torch.Tensor):
    """``x ↦ d x + c (2x − x_left − x_right)`` along the last axis (SPD for ``d, c > 0``), Jacobi-preconditioned."""

    def apply(x):
        lap = 2 * x
        lap[..., 1:] -= x[..., :-1]
        lap[..., :-1] -= x[..., 1:]
        return d * x + c * lap

    return apply, (lambda r: r / (d + 2 * c))


def _skew(d: torch.Tensor, c: torch.Tensor):
    """``x ↦ d x + c (x_right − x_left)``: not symmetric; its transpose flips the sign of ``c``."""

    def apply(x):
        out = d * x
        out[..., :-1] += c * x[..., 1:]
        out[..., 1:] -= c * x[..., :-1]
        return out

    return apply, (lambda r: r / d)


def _skew_t(d, c):
    return _skew(d, -c)


def test_gradients_of_a_symmetric_solve(gen):
    d = (torch.rand(2, 1, 1, 6, generator=gen, dtype=torch.float64) + 1).requires_grad_(True)
    c = torch.tensor(0.7, dtype=torch.float64, requires_grad=True)
    rhs = torch.rand(2, 1, 1, 6, generator=gen, dtype=torch.float64).requires_grad_(True)

    def solve(rhs, d, c):
        x, res = differentiable_solve(
            _spd, rhs, torch.zeros_like(rhs), d, c, solver=conjugate_gradient, max_iter=100, tol=1e-14, method="t"
        )
        assert bool(res.converged.all())
        return x

    assert torch.autograd.gradcheck(solve, (rhs, d, c))


def test_gradients_of_a_non_symmetric_solve_use_the_transpose(gen):
    d = (torch.rand(1, 1, 1, 5, generator=gen, dtype=torch.float64) + 2).requires_grad_(True)
    c = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    rhs = torch.rand(1, 1, 1, 5, generator=gen, dtype=torch.float64).requires_grad_(True)

    def solve(rhs, d, c, transpose=_skew_t):
        x, _ = differentiable_solve(
            _skew, rhs, torch.zeros_like(rhs), d, c, solver=bicgstab, max_iter=200, tol=1e-14, method="t",
            transpose=transpose,
        )  # fmt: skip
        return x

    assert torch.autograd.gradcheck(solve, (rhs, d, c))
    # without the transpose the adjoint solve would use M itself: the gradient to rhs is then wrong
    x = solve(rhs, d, c, transpose=None)
    (g_wrong,) = torch.autograd.grad(x.sum(), rhs)
    (g_right,) = torch.autograd.grad(solve(rhs, d, c).sum(), rhs)
    assert float((g_wrong - g_right).abs().max()) > 1e-3


def test_an_unfinished_adjoint_solve_warns_with_the_method_name(gen):
    d = (torch.rand(1, 1, 1, 30, generator=gen, dtype=torch.float64) + 1).requires_grad_(True)
    c = torch.tensor(5.0, dtype=torch.float64)
    rhs = torch.rand(1, 1, 1, 30, generator=gen, dtype=torch.float64)
    x, res = differentiable_solve(_spd, rhs, rhs, d, c, solver=conjugate_gradient, max_iter=2, tol=1e-14, method="m")
    assert not bool(res.converged.all())
    with pytest.warns(ConvergenceWarning, match=r"m \(gradient\) did not converge"):
        x.sum().backward()
    assert d.grad is not None
