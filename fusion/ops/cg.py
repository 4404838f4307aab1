"""Batched, matrix-free preconditioned conjugate gradients."""

from __future__ import annotations

from typing import Callable

import torch

from fusion.ops.result import SolverResult

LinearOperator = Callable[[torch.Tensor], torch.Tensor]


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product over every axis but the first, shaped ``(B, 1, …, 1)`` for broadcasting."""
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.ndim - 1)))


def conjugate_gradient(
    apply_a: LinearOperator,
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    *,
    precondition: LinearOperator | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
) -> SolverResult:
    """Solve ``A x = b`` for every sample of a batch with preconditioned conjugate gradients.

    ``A`` (and the preconditioner ``M⁻¹``) must be symmetric positive definite on each sample and act on each
    sample independently. Samples stop at their own pace: a converged sample is frozen while the others go on.
    Convergence is ``‖b − A x‖ ≤ tol · ‖b‖`` per sample, checked every ``check_every`` iterations so that a GPU
    is not synchronised on every step.

    Args:
        apply_a: ``x ↦ A x`` on tensors shaped like ``b``.
        b: ``(B, ...)`` right-hand side.
        x0: initial guess (default zeros).
        precondition: ``r ↦ M⁻¹ r`` (default identity).
        max_iter: iteration limit.
        tol: relative residual tolerance.
        check_every: how often the stopping test is evaluated.

    Returns:
        :class:`SolverResult` with ``history`` the ``(iterations + 1, B)`` relative residuals.

    Example:
        >>> d = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
        >>> res = conjugate_gradient(lambda x: d * x, torch.ones_like(d), tol=1e-12)
        >>> res.solution
        tensor([[1.0000, 0.5000, 0.2500]], dtype=torch.float64)
    """
    if max_iter < 0:
        raise ValueError(f"max_iter must be >= 0, got {max_iter}")
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    m_inv = precondition if precondition is not None else (lambda r: r)
    b_norm = _bdot(b, b).sqrt()
    b_norm = torch.where(b_norm > 0, b_norm, torch.ones_like(b_norm))
    r = b - apply_a(x) if x0 is not None else b.clone()
    z = m_inv(r)
    p = z.clone()
    rz = _bdot(r, z)
    history = [(_bdot(r, r).sqrt() / b_norm).flatten()]
    active = (history[0] > tol).view_as(b_norm)
    it = 0
    while it < max_iter and bool(active.any()):
        for _ in range(min(check_every, max_iter - it)):
            ap = apply_a(p)
            pap = _bdot(p, ap)
            alpha = torch.where(active & (pap > 0), rz / torch.where(pap > 0, pap, torch.ones_like(pap)), 0.0)
            x = x + alpha * p
            r = r - alpha * ap
            z = m_inv(r)
            rz_new = _bdot(r, z)
            beta = torch.where(active & (rz != 0), rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), 0.0)
            p = z + beta * p
            rz = rz_new
            history.append((_bdot(r, r).sqrt() / b_norm).flatten())
            it += 1
        active = active & (history[-1] > tol).view_as(b_norm)
    rel = history[-1]
    return SolverResult(
        solution=x,
        iterations=it,
        history=torch.stack(history),
        converged=rel <= tol,
    )
