"""A Krylov solve of a parameterised linear system, differentiated implicitly.

For ``M(θ) x = r`` solved by a Krylov method (conjugate gradients, BiCGSTAB), the vector–Jacobian product for a
cotangent ``g`` of ``x`` is

    λ = M⁻ᵀ g,    ∂r = λ,    ∂θ = −∂_θ ⟨λ, M(θ) x⟩,

one adjoint solve with the same solver and limits and one backward pass through ``x ↦ M(θ) x`` at the solution.
The forward iterations are not recorded, so memory does not depend on their number. An adjoint solve that stops
before its tolerance emits one :class:`fusion.ConvergenceWarning` naming the method and "(gradient)".
"""

from __future__ import annotations

from typing import Callable

import torch

from fusion.ops.result import SolverResult, warn_unconverged

LinearMap = Callable[[torch.Tensor], torch.Tensor]
#: ``factory(*params) -> (x ↦ M x, r ↦ P⁻¹ r)``: the operator and its preconditioner for given parameters.
OperatorFactory = Callable[..., tuple[LinearMap, LinearMap]]
KrylovSolver = Callable[..., SolverResult]


class _Spec:
    """What :class:`_LinearSolve` needs besides tensors: operator factories, the Krylov solver and its limits."""

    def __init__(self, operator, transpose, solver, max_iter: int, tol: float, method: str) -> None:
        self.operator = operator
        self.transpose = transpose
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.method = method
        self.result: SolverResult | None = None


class _LinearSolve(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, rhs: torch.Tensor, x0: torch.Tensor, *params: torch.Tensor):  # noqa: ANN205
        apply, precondition = spec.operator(*params)
        res = spec.solver(apply, rhs, x0, precondition=precondition, max_iter=spec.max_iter, tol=spec.tol)
        spec.result = res
        ctx.spec = spec
        ctx.save_for_backward(res.solution, *params)
        return res.solution.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN205
        spec: _Spec = ctx.spec
        x, *params = ctx.saved_tensors
        apply_t, precondition_t = spec.transpose(*params)
        adj = spec.solver(apply_t, grad, None, precondition=precondition_t, max_iter=spec.max_iter, tol=spec.tol)
        adj.criterion, adj.tol, adj.reached = "relative residual of the adjoint solve", spec.tol, adj.history[-1]
        warn_unconverged(adj, f"{spec.method} (gradient)")
        lam = adj.solution
        needs = ctx.needs_input_grad[3:]
        grads: list[torch.Tensor | None] = [None] * len(params)
        if any(needs):
            with torch.enable_grad():
                leaves = [p.detach().requires_grad_(need) for p, need in zip(params, needs)]
                apply, _ = spec.operator(*leaves)
                wanted = [p for p, need in zip(leaves, needs) if need]
                found = iter(torch.autograd.grad(apply(x), wanted, grad_outputs=-lam, allow_unused=True))
            grads = [next(found) if need else None for need in needs]
        return (None, lam if ctx.needs_input_grad[1] else None, None, *grads)


def differentiable_solve(
    operator: OperatorFactory,
    rhs: torch.Tensor,
    x0: torch.Tensor,
    *params: torch.Tensor,
    solver: KrylovSolver,
    max_iter: int,
    tol: float,
    method: str,
    transpose: OperatorFactory | None = None,
) -> tuple[torch.Tensor, SolverResult]:
    """Solve ``M(θ) x = rhs`` by ``solver`` with gradients to ``rhs`` and ``θ = params`` by implicit differentiation.

    Args:
        operator: ``operator(*params) -> (apply, precondition)``: ``x ↦ M(θ) x`` and ``r ↦ P⁻¹ r``, built from
            the parameters so that the backward pass can differentiate ``M(θ) x`` with respect to them.
        rhs: ``(B, …)`` right-hand side.
        x0: ``(B, …)`` start of the forward solve (no gradient flows to it).
        params: the tensors ``θ`` the operator depends on.
        solver: a Krylov solver ``solver(apply, b, x0, *, precondition, max_iter, tol) -> SolverResult``
            (:func:`fusion.ops.cg.conjugate_gradient` for symmetric ``M``, :func:`fusion.ops.cg.bicgstab` otherwise).
        max_iter, tol: its limits, for the forward and the adjoint solve.
        method: the name the adjoint solve's :class:`fusion.ConvergenceWarning` gives.
        transpose: ``transpose(*params) -> (y ↦ Mᵀ y, r ↦ P⁻ᵀ r)``; default ``operator`` (symmetric ``M``).

    Returns:
        ``(x, result)``: the ``(B, …)`` solution, attached to the autograd graph, and the forward solve's
        :class:`SolverResult` (not warned about: the caller reports it).

    Example:
        >>> from fusion.ops.cg import conjugate_gradient
        >>> d = torch.tensor([[2.0, 4.0]], dtype=torch.float64, requires_grad=True)
        >>> diagonal = lambda d: (lambda x: d * x, lambda r: r / d)
        >>> x, res = differentiable_solve(diagonal, torch.ones_like(d), torch.zeros_like(d), d,
        ...                               solver=conjugate_gradient, max_iter=10, tol=1e-12, method="demo")
        >>> x.sum().backward()
        >>> d.grad  # d/dd (1/d) = −1/d²
        tensor([[-0.2500, -0.0625]], dtype=torch.float64)
    """
    spec = _Spec(operator, transpose or operator, solver, max_iter, tol, method)
    x = _LinearSolve.apply(spec, rhs, x0, *params)
    assert spec.result is not None
    return x, spec.result


__all__ = ["differentiable_solve"]
