"""Time evolution ``u^{k+1} = P u^k`` of a linear evolution equation by a fixed number of steps.

The step operator ``P`` is the caller's: an explicit step ``u + τ A u`` or an implicit step
``(I − τA)⁻¹ u`` that solves a linear system (as the osmosis filter does, variational osmosis paper eq. 8). The
loop records what every such scheme reports: the relative change ``‖u^{k+1} − u^k‖ / ‖u^{k+1}‖`` of each step, the
mass ``Σ u`` of every channel after each step (conserved by osmosis), and, for implicit steps, whether every
linear solve met its tolerance and the largest final relative residual among them.

The loop itself never synchronises with the device: it runs exactly ``steps`` steps and keeps its records as
tensors, so the host waits only where the step operator does (an implicit step's Krylov solve checks its
residual once per ``check_every`` iterations, see :mod:`fusion.ops.cg`).
"""

from __future__ import annotations

from typing import Callable

import torch

from fusion.ops.result import SolverResult

#: ``step(u) -> (u_next, solve)``: one time step, with the :class:`SolverResult` of its linear solve (``None`` for
#: an explicit step).
StepOperator = Callable[[torch.Tensor], tuple[torch.Tensor, SolverResult | None]]

#: What ``converged`` of an implicit evolution measures.
STEP_CRITERION = "largest relative residual of the implicit steps' linear solves"


def time_evolution(u0: torch.Tensor, step: StepOperator, *, steps: int, tol: float | None = None) -> SolverResult:
    """Apply ``step`` ``steps`` times from ``u0``.

    Differentiable as far as ``step`` is (the loop itself only records detached quantities). No host
    synchronisation besides those of ``step``.

    Args:
        u0: ``(B, C, H, W)`` start.
        step: the step operator (see :data:`StepOperator`), called once per step with the current image.
        steps: number of steps (``≥ 0``).
        tol: the tolerance of the steps' linear solves, for the record; ``None`` for explicit steps.

    Returns:
        :class:`SolverResult`: ``solution`` the ``(B, C, H, W)`` image after ``steps`` steps; ``history`` the
        ``(steps + 1, B)`` relative change of each step (0 first); ``converged`` the ``(B,)`` flags of whether every
        linear solve met its tolerance (always true for explicit steps); with ``tol``: ``criterion`` (see
        :data:`STEP_CRITERION`), ``tol`` and ``reached``, the ``(B,)`` largest final relative residual over the
        steps (non-finite ones count as ``inf``); ``info["mass"]`` the ``(steps + 1, B, C)`` channel masses and
        ``info["krylov_iterations"]`` the total iterations of the linear solves.

    Example:
        >>> res = time_evolution(torch.ones(1, 1, 2, 2), lambda u: (0.5 * u, None), steps=3)
        >>> res.solution.flatten().tolist(), res.history[:, 0].tolist()
        ([0.125, 0.125, 0.125, 0.125], [0.0, 1.0, 1.0, 1.0])
    """
    batch = u0.shape[0]
    u = u0
    masses = [u.detach().sum((-2, -1))]
    changes = [torch.zeros(batch, dtype=u.dtype, device=u.device)]
    ok = torch.ones(batch, dtype=torch.bool, device=u.device)
    worst = torch.zeros(batch, dtype=u.dtype, device=u.device)
    krylov = 0
    for _ in range(steps):
        new, solve = step(u)
        if solve is not None:
            final = solve.history[-1]
            ok &= solve.converged
            worst = torch.maximum(worst, torch.where(torch.isfinite(final), final, torch.full_like(final, torch.inf)))
            krylov += solve.iterations
        d = new.detach()
        changes.append((d - u.detach()).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1))
        u = new
        masses.append(d.sum((-2, -1)))
    implicit = tol is not None
    return SolverResult(
        solution=u,
        iterations=steps,
        history=torch.stack(changes),
        converged=ok,
        info={"mass": torch.stack(masses), "krylov_iterations": krylov},
        criterion=STEP_CRITERION if implicit else "explicit steps (no linear solve)",
        tol=float(tol) if implicit else None,
        reached=worst if implicit else None,
    )


__all__ = ["STEP_CRITERION", "StepOperator", "time_evolution"]
