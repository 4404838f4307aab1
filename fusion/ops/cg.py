"""Batched, matrix-free Krylov solvers: preconditioned conjugate gradients (symmetric positive definite systems)
and BiCGSTAB (non-symmetric ones)."""

from __future__ import annotations

from typing import Callable

import torch

from fusion.ops.checks import check_max_iter, check_tol
from fusion.ops.result import SolverResult

LinearOperator = Callable[[torch.Tensor], torch.Tensor]

#: What :func:`conjugate_gradient` compares with ``tol``.
CG_CRITERION = "relative residual ‖b − A x‖/‖b‖"


def _bdot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product over every axis but the first, shaped ``(B, 1, …, 1)`` for broadcasting."""
    return (a * b).flatten(1).sum(1).view(-1, *([1] * (a.ndim - 1)))


def _norms(b: torch.Tensor) -> torch.Tensor:
    """``‖b‖`` per sample, ``(B, 1, …, 1)``, with 1 in place of 0 (a zero right-hand side is measured absolutely)."""
    norm = _bdot(b, b).sqrt()
    return torch.where(norm > 0, norm, torch.ones_like(norm))


def relative_residual(apply_a: LinearOperator, b: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``‖b − A x‖ / ‖b‖`` per sample, computed directly (``(B,)``; the norm of ``b − A x`` when ``b = 0``).

    Example:
        >>> d = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
        >>> relative_residual(lambda x: d * x, torch.ones_like(d), torch.zeros_like(d))
        tensor([1.], dtype=torch.float64)
    """
    r = b - apply_a(x)
    return (_bdot(r, r).sqrt() / _norms(b)).flatten()


def conjugate_gradient(
    apply_a: LinearOperator,
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    *,
    precondition: LinearOperator | None = None,
    max_iter: int = 1000,
    tol: float = 1e-6,
    check_every: int = 10,
    true_residual: bool = False,
) -> SolverResult:
    """Solve ``A x = b`` for every sample of a batch with preconditioned conjugate gradients.

    ``A`` (and the preconditioner ``M⁻¹``) must be symmetric positive definite on each sample and act on each
    sample independently. Convergence is ``‖b − A x‖ ≤ tol · ‖b‖`` per sample, tested every ``check_every``
    iterations (so that a GPU is not synchronised on every step) on the residual the iteration carries, which
    equals ``b − A x`` up to rounding.

    Samples are independent: each stops at the first test it passes and is frozen from then on (its ``x`` no
    longer changes) while the others go on, so a sample stops at the same iteration with the same iterate alone
    as in any batch; ``info["iterations"]`` holds the per-sample counts.

    With ``true_residual=True`` a sample that passes the test is only accepted once ``b − A x``, computed
    directly, passes it too. Otherwise the carried residual is replaced by the direct one and the iteration
    restarts from the current ``x``; a sample whose direct residual did not at least halve since its previous
    replacement has reached what its floating-point precision allows and is stopped as not converged
    (``info["stagnated"]``). ``converged`` then means the directly computed residual met ``tol``.

    Args:
        apply_a: ``x ↦ A x`` on tensors shaped like ``b``.
        b: ``(B, ...)`` right-hand side.
        x0: initial guess (default zeros).
        precondition: ``r ↦ M⁻¹ r`` (default identity).
        max_iter: iteration limit, ``>= 1``.
        tol: relative residual tolerance, ``> 0``.
        check_every: how often the stopping test is evaluated.
        true_residual: confirm convergence on the directly computed residual (see above).

    Returns:
        :class:`SolverResult` with ``history`` the ``(iterations + 1, B)`` relative residuals the iteration
        carries, ``criterion`` :data:`CG_CRITERION`, ``tol``, ``reached`` the final relative residual per sample
        (the direct one where it was computed), ``info["iterations"]`` the ``(B,)`` iterations of each sample and
        ``info["stagnated"]`` the ``(B,)`` samples stopped for lack of progress.

    Example:
        >>> d = torch.tensor([[1.0, 2.0, 4.0]], dtype=torch.float64)
        >>> res = conjugate_gradient(lambda x: d * x, torch.ones_like(d), tol=1e-12)
        >>> res.solution
        tensor([[1.0000, 0.5000, 0.2500]], dtype=torch.float64)
    """
    check_max_iter(max_iter, "max_iter")
    check_tol(tol, "tol")
    check_max_iter(check_every, "check_every")
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    m_inv = precondition if precondition is not None else (lambda r: r)
    b_norm = _norms(b)
    r = b - apply_a(x) if x0 is not None else b.clone()
    z = m_inv(r)
    p = z.clone()
    rz = _bdot(r, z)
    history = [(_bdot(r, r).sqrt() / b_norm).flatten()]
    reached = history[0].clone()
    active = (history[0] > tol).view_as(b_norm)
    batch = b.shape[0]
    iterations = torch.zeros(batch, dtype=torch.long, device=b.device)
    stagnated = torch.zeros(batch, dtype=torch.bool, device=b.device)
    last_direct = torch.full_like(reached, float("inf"))
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
            iterations += active.flatten().to(iterations.dtype)
            it += 1
        carried = history[-1]
        reached = torch.where(active.flatten(), carried, reached)
        passed = active.flatten() & (carried <= tol)
        if true_residual and bool(passed.any()):
            direct_r = b - apply_a(x)
            direct = (_bdot(direct_r, direct_r).sqrt() / b_norm).flatten()
            reached = torch.where(passed, direct, reached)
            refused = passed & (direct > tol)
            stuck = refused & (direct > 0.5 * last_direct)
            restart = refused & ~stuck
            stagnated |= stuck
            last_direct = torch.where(refused, direct, last_direct)
            # restart the refused samples from their directly computed residual
            keep = restart.view_as(b_norm)
            r = torch.where(keep, direct_r, r)
            z = torch.where(keep, m_inv(r), z)
            p = torch.where(keep, z, p)
            rz = torch.where(keep, _bdot(r, z), rz)
            passed = passed & ~refused
            active = active & ~stuck.view_as(active)
        active = active & ~passed.view_as(active)
    return SolverResult(
        solution=x,
        iterations=it,
        history=torch.stack(history),
        converged=reached <= tol,
        criterion=CG_CRITERION,
        tol=float(tol),
        reached=reached,
        info={"iterations": iterations, "stagnated": stagnated},
    )


def bicgstab(
    apply_a,
    b: torch.Tensor,
    x0: torch.Tensor | None = None,
    *,
    precondition=None,
    max_iter: int = 1000,
    tol: float = 1e-6,
) -> SolverResult:
    """Batched right-preconditioned BiCGSTAB (van der Vorst) for non-symmetric ``A x = b``.

    Used for osmosis systems whose drift does not come from one image (then ``A`` cannot be symmetrised). Unlike
    :func:`conjugate_gradient` it needs no symmetry, at two operator applications per iteration.
    Samples stop independently when ``‖b − A x‖ ≤ tol ‖b‖``; a stopped sample is frozen.

    Args:
        apply_a: ``x ↦ A x``, acting on each sample independently.
        b: ``(B, …)`` right-hand side.
        x0: initial guess (default zeros).
        precondition: ``r ↦ M⁻¹ r`` (default identity).
        max_iter: iteration limit.
        tol: relative residual tolerance.

    Returns:
        :class:`SolverResult` with ``history`` the ``(iterations + 1, B)`` relative residuals.

    Example:
        >>> a = torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
        >>> res = bicgstab(lambda x: x @ a.T, torch.tensor([[3.0, 3.0]], dtype=torch.float64), tol=1e-12)
        >>> res.solution
        tensor([[1., 1.]], dtype=torch.float64)
    """
    if max_iter < 0 or tol <= 0:
        raise ValueError(f"need max_iter >= 0 and tol > 0, got max_iter={max_iter}, tol={tol}")
    m_inv = precondition if precondition is not None else (lambda r: r)
    x = torch.zeros_like(b) if x0 is None else x0.clone()
    r = b - apply_a(x)
    r_hat = r.clone()
    b_norm = _bdot(b, b).sqrt().clamp_min(torch.finfo(b.dtype).tiny)
    rel = _bdot(r, r).sqrt() / b_norm
    history = [rel.flatten()]
    active = rel.flatten() > tol
    rho = alpha = omega = torch.ones_like(b_norm)
    v = torch.zeros_like(b)
    p = torch.zeros_like(b)
    tiny = torch.finfo(b.dtype).tiny
    it = 0
    while it < max_iter and bool(active.any()):
        keep = active.view(-1, *([1] * (b.ndim - 1)))
        rho_new = _bdot(r_hat, r)
        beta = (rho_new / _safe(rho, tiny)) * (alpha / _safe(omega, tiny))
        p_new = r + beta * (p - omega * v)
        y = m_inv(p_new)
        v_new = apply_a(y)
        alpha_new = rho_new / _safe(_bdot(r_hat, v_new), tiny)
        s = r - alpha_new * v_new
        z = m_inv(s)
        t = apply_a(z)
        omega_new = _bdot(t, s) / _safe(_bdot(t, t), tiny)
        x_new = x + alpha_new * y + omega_new * z
        r_new = s - omega_new * t
        finite = torch.isfinite(_bdot(r_new, r_new)) & torch.isfinite(omega_new) & torch.isfinite(alpha_new)
        keep = keep & finite
        x = torch.where(keep, x_new, x)
        r = torch.where(keep, r_new, r)
        p = torch.where(keep, p_new, p)
        v = torch.where(keep, v_new, v)
        rho = torch.where(keep, rho_new, rho)
        alpha = torch.where(keep, alpha_new, alpha)
        omega = torch.where(keep, omega_new, omega)
        it += 1
        rel = (_bdot(r, r).sqrt() / b_norm).flatten()
        history.append(rel)
        breakdown = ~finite.flatten() | (omega_new.flatten() == 0)
        active = active & (rel > tol) & ~breakdown
    rel = history[-1]
    return SolverResult(
        solution=x,
        iterations=it,
        history=torch.stack(history),
        converged=torch.isfinite(rel) & (rel <= tol),
        criterion=CG_CRITERION,
        tol=float(tol),
        reached=rel,
    )


def _safe(x: torch.Tensor, tiny: float) -> torch.Tensor:
    """Guard a denominator against exact zero while keeping its sign."""
    return torch.where(x.abs() < tiny, torch.full_like(x, tiny), x)
