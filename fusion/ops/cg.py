"""Batched, matrix-free Krylov solvers: preconditioned conjugate gradients (symmetric positive definite systems)
and BiCGSTAB (non-symmetric ones).

Host synchronisations. Each solver decides on the host whether to go on, which on a GPU means waiting for the
queued work and copying a flag back. Both decide once per ``check_every`` iterations, not every iteration (see
their docstrings for the exact counts); everything else, including which samples are still iterating, stays on
the device.
"""

from __future__ import annotations

import functools
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


def _cg_step(
    apply_a: LinearOperator,
    m_inv: LinearOperator,
    x: torch.Tensor,
    r: torch.Tensor,
    p: torch.Tensor,
    rz: torch.Tensor,
    active: torch.Tensor,
    b_norm: torch.Tensor,
    iterations: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """One preconditioned CG iteration; the samples outside ``active`` take a zero step.

    Args:
        apply_a, m_inv: ``x ↦ A x`` and ``r ↦ M⁻¹ r``.
        x, r, p: ``(B, …)`` iterate, residual and search direction.
        rz: ``(B, 1, …, 1)`` ``⟨r, M⁻¹ r⟩``.
        active: ``(B, 1, …, 1)`` bool, the samples still iterating.
        b_norm: ``(B, 1, …, 1)`` ``‖b‖`` (1 for a zero ``b``).
        iterations: ``(B,)`` iterations so far per sample.

    Returns:
        The new ``x, r, p, rz``, the ``(B,)`` relative residual ``‖r‖ / ‖b‖`` and the ``(B,)`` iteration counts.
    """
    ap = apply_a(p)
    pap = _bdot(p, ap)
    alpha = torch.where(active & (pap > 0), rz / torch.where(pap > 0, pap, torch.ones_like(pap)), 0.0)
    x = x + alpha * p
    r = r - alpha * ap
    z = m_inv(r)
    rz_new = _bdot(r, z)
    beta = torch.where(active & (rz != 0), rz_new / torch.where(rz != 0, rz, torch.ones_like(rz)), 0.0)
    p = z + beta * p
    carried = (_bdot(r, r).sqrt() / b_norm).flatten()
    return x, r, p, rz_new, carried, iterations + active.flatten().to(iterations.dtype)


@functools.cache
def _compiled_cg_step() -> Callable[..., tuple[torch.Tensor, ...]]:
    """:func:`_cg_step` under :func:`torch.compile`, built on first use (importing the compiler takes seconds)."""
    return torch.compile(_cg_step)


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
    compile: bool = False,
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

    Host synchronisations: one before the first iteration and one at each test but a last one at ``max_iter``,
    at most ``⌈iterations / check_every⌉ + 1`` in all; with ``true_residual`` one more at each test that some
    sample passes (each pass stops or restarts a sample, and a restart needs the direct residual to halve).

    ``compile=True`` runs each iteration (one application of ``A`` and ``M⁻¹``, the updates and the residual
    norm) as one :func:`torch.compile`-d function, without graph breaks when ``apply_a`` and ``precondition``
    have none; the stopping test stays outside it, since it must come to the host. The compiled code is keyed
    on the code of ``apply_a`` and ``precondition`` (and on shapes and dtypes), so new closures of the same
    functions, e.g. one operator per solve, reuse it. The results equal the eager ones up to rounding.

    Args:
        apply_a: ``x ↦ A x`` on tensors shaped like ``b``.
        b: ``(B, ...)`` right-hand side.
        x0: initial guess (default zeros).
        precondition: ``r ↦ M⁻¹ r`` (default identity).
        max_iter: iteration limit, ``>= 1``.
        tol: relative residual tolerance, ``> 0``.
        check_every: how often the stopping test is evaluated, ``>= 1``.
        true_residual: confirm convergence on the directly computed residual (see above).
        compile: compile the iteration with :func:`torch.compile` (see above).

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
    step = _compiled_cg_step() if compile else _cg_step
    it = 0
    running = bool(active.any())  # the host decides once per check whether to go on
    while it < max_iter and running:
        for _ in range(min(check_every, max_iter - it)):
            x, r, p, rz, carried, iterations = step(apply_a, m_inv, x, r, p, rz, active, b_norm, iterations)
            history.append(carried)
            it += 1
        reached = torch.where(active.flatten(), carried, reached)
        passed = active.flatten() & (carried <= tol)
        if not true_residual:
            active = active & ~passed.view_as(active)
            running = it < max_iter and bool(active.any())
            continue
        # one transfer: did a sample pass the carried test (then its direct residual decides), do others go on
        some_passed, others = torch.stack([passed.any(), (active.flatten() & ~passed).any()]).tolist()
        if some_passed:
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
            z = m_inv(r)
            p = torch.where(keep, z, p)
            rz = torch.where(keep, _bdot(r, z), rz)
            passed = passed & ~refused
            active = active & ~stuck.view_as(active)
        active = active & ~passed.view_as(active)
        # a restarted sample goes on: the second transfer happens only at checks where a sample passed
        running = (it < max_iter and bool(active.any())) if some_passed else others
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
    check_every: int = 10,
) -> SolverResult:
    """Batched right-preconditioned BiCGSTAB (van der Vorst) for non-symmetric ``A x = b``.

    Used for osmosis systems whose drift does not come from one image (then ``A`` cannot be symmetrised). Unlike
    :func:`conjugate_gradient` it needs no symmetry, at two operator applications per iteration.
    Samples stop independently when ``‖b − A x‖ ≤ tol ‖b‖``; a stopped sample is frozen.

    Each sample is tested after every iteration, on the device; the host looks at the outcome only before the
    first iteration and after every ``check_every``-th (one synchronisation each, at most
    ``⌈iterations / check_every⌉ + 1``), plus once at the end for the iteration count. After the last sample
    has stopped the loop may thus run up to ``check_every − 1`` iterations in which every sample is frozen; they
    change nothing and are cut from the result, so the solution, ``history`` and ``iterations`` do not depend on
    ``check_every`` (the default, 10, costs at most 9 such iterations per solve, a few per cent of a typical
    osmosis step's solve).

    Args:
        apply_a: ``x ↦ A x``, acting on each sample independently.
        b: ``(B, …)`` right-hand side.
        x0: initial guess (default zeros).
        precondition: ``r ↦ M⁻¹ r`` (default identity).
        max_iter: iteration limit.
        tol: relative residual tolerance.
        check_every: how often the host checks whether some sample is still iterating, ``>= 1``.

    Returns:
        :class:`SolverResult` with ``history`` the ``(iterations + 1, B)`` relative residuals and
        ``info["iterations"]`` the ``(B,)`` iterations of each sample.

    Example:
        >>> a = torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
        >>> res = bicgstab(lambda x: x @ a.T, torch.tensor([[3.0, 3.0]], dtype=torch.float64), tol=1e-12)
        >>> res.solution
        tensor([[1., 1.]], dtype=torch.float64)
    """
    if max_iter < 0 or tol <= 0:
        raise ValueError(f"need max_iter >= 0 and tol > 0, got max_iter={max_iter}, tol={tol}")
    check_max_iter(check_every, "check_every")
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
    iterations = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)
    it = 0
    running = max_iter > 0 and bool(active.any())
    while running:
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
        iterations += active.to(iterations.dtype)
        it += 1
        rel = (_bdot(r, r).sqrt() / b_norm).flatten()
        history.append(rel)
        breakdown = ~finite.flatten() | (omega_new.flatten() == 0)
        active = active & (rel > tol) & ~breakdown
        running = it < max_iter and (it % check_every != 0 or bool(active.any()))
    # the iterations after the last sample stopped changed nothing: cut them (one transfer)
    it = int(iterations.max()) if it > 0 else 0
    del history[it + 1 :]
    rel = history[-1]
    return SolverResult(
        solution=x,
        iterations=it,
        history=torch.stack(history),
        converged=torch.isfinite(rel) & (rel <= tol),
        criterion=CG_CRITERION,
        tol=float(tol),
        reached=rel,
        info={"iterations": iterations},
    )


def _safe(x: torch.Tensor, tiny: float) -> torch.Tensor:
    """Guard a denominator against exact zero while keeping its sign."""
    return torch.where(x.abs() < tiny, torch.full_like(x, tiny), x)
