"""Batched L-BFGS with a fixed step: every batch sample has its own memory, inner products and stopping.

For a per-sample objective ``f_b(x_b)`` (``energy(x)`` returns the ``(B,)`` values, the gradient comes from
autograd) each sample ``b`` is minimised by limited-memory BFGS (Nocedal & Wright, *Numerical Optimization*,
Algorithm 7.4, the two-loop recursion) without a line search:

    x_{k+1} = x_k + t_k d_k,    d_k = −H_k ∇f(x_k),

where ``H_k`` is the L-BFGS inverse-Hessian estimate built from the sample's last ``history_size`` curvature
pairs ``s_i = t_i d_i``, ``y_i = ∇f(x_{i+1}) − ∇f(x_i)`` (a pair is stored only when ``⟨y_i, s_i⟩ >
curvature_eps``) with the initial scaling ``H_0 = ⟨y, s⟩ / ⟨y, y⟩`` of the newest stored pair. The step is
``t_k = lr``, except on a sample's first iteration, where the direction is ``−∇f`` and the step is
``lr · min(1, 1 / ‖∇f(x_0)‖₁)``. These are the rules of ``torch.optim.LBFGS`` with ``max_iter=1`` per ``step``
call and no line search, and for a batch of one the iterates agree with it to round-off. The difference: every
vector product (the two-loop recursion, ``⟨y, s⟩``, ``‖∇f‖₁``) is taken per sample, so no sample's memory, step
or stopping depends on another sample — ``torch.optim.LBFGS`` on a batch tensor forms them over the whole
batch, which couples the samples. Since only pairs with ``⟨y, s⟩ > 0`` are stored, ``H_k`` is positive definite
and ``d_k`` a descent direction (up to round-off); without a line search a step may still raise the objective.

Stopping criterion (per sample): the relative change of the objective per iteration, over the last ``w =
window`` iterations,

    r_k = (max_{k−w ≤ j ≤ k} f(x_j) − min_{k−w ≤ j ≤ k} f(x_j)) / (w · max(|f(x_k)|, tiny))  ≤  tol,

which for ``w = 1`` is ``|f(x_k) − f(x_{k−1})| / |f(x_k)|``. A window longer than one iteration keeps a single
iteration of a non-monotone descent (no line search: the objective may go up and come back) from passing the
test by chance. The window never includes a sample's first step (the test starts at ``k = w + 1``): that is a
short gradient step (of length ``lr / ‖∇f‖₁`` when the gradient is large), and the little it changes the
objective says nothing about how close the sample is to a stationary point. A sample that meets the criterion
stops at ``x_k`` (``stop_early=True``) and is frozen while the others go on; otherwise it stops after
``max_iter`` steps, and ``converged`` says whether the criterion holds at its last iterate. With
``stop_early=False`` every sample takes all ``max_iter`` steps (a fixed iteration count) and the same test is
applied to its last iterate. A sample whose objective or gradient becomes non-finite stops at its last finite
iterate, is marked ``diverged`` and is not converged.

The criterion is relative to the objective's value, so it does not depend on the objective's scale. For an
objective whose minimum is 0 it is met only when the iterates stagnate at round-off (converging to a zero
minimum, ``f_k / f_{k−1}`` stays well below 1, so ``r_k`` does not shrink): give such objectives a positive
offset.

:func:`lbfgs_stage` runs the same descent as one stage of a staged optimisation (Deep Image Blending's two
stages, for instance) and keeps its record: the named parts of the objective at every iterate, snapshots at
planned iterations, progress calls, and a ``finish`` map (a clip to a box) applied to the last iterate, at which
the record is closed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import torch

from fusion.ops.checks import (
    check_flag,
    check_int,
    check_max_iter,
    check_nonnegative_number,
    check_positive_number,
    check_tol,
)
from fusion.ops.result import SolverResult

__all__ = ["LBFGSStageResult", "criterion", "lbfgs", "lbfgs_stage"]

Energy = Callable[[torch.Tensor], torch.Tensor]
Projection = Callable[[torch.Tensor], torch.Tensor]


def criterion(window: int) -> str:
    """What ``converged`` measures, in words (:attr:`SolverResult.criterion`), for a given ``window``.

    Example:
        >>> criterion(10)
        'relative change of the objective per iteration over the last 10 iterations'
    """
    base = "relative change of the objective per iteration"
    return f"{base} over the last {window} iterations" if window > 1 else base


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product of two ``(B, n)`` tensors: ``(B,)``."""
    return torch.linalg.vecdot(a, b, dim=1)


def _col(v: torch.Tensor) -> torch.Tensor:
    return v.unsqueeze(1)


def lbfgs(
    energy: Energy,
    x0: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    history_size: int = 100,
    lr: float = 1.0,
    window: int = 1,
    stop_early: bool = True,
    project: Projection | None = None,
    curvature_eps: float = 1e-10,
) -> SolverResult:
    """Minimise a per-sample objective by fixed-step L-BFGS, each batch sample on its own.

    Args:
        energy: ``energy(x) -> (B,)`` per-sample objective of a ``(B, …)`` tensor. It must be separable over the
            batch (``f_b`` depends on ``x[b]`` only): the gradient is that of ``energy(x).sum()``. It is called
            once per iterate — ``max_iter + 1`` times at most, the last call without gradient — always with the
            whole batch (samples that have stopped are passed at their final iterate; their values are ignored).
        x0: ``(B, …)`` starting point (not modified).
        max_iter: the most steps per sample (``>= 1``).
        tol: tolerance ``> 0`` of the stopping criterion ``r_k`` (see the module docstring).
        window: the number ``w >= 1`` of iterations the criterion looks back over.
        history_size: number ``m >= 1`` of curvature pairs each sample keeps.
        lr: the fixed step ``t > 0`` (``1`` is the quasi-Newton step).
        stop_early: stop a sample as soon as ``r_k <= tol``; ``False`` runs ``max_iter`` steps for every sample
            (stopping only at a non-finite objective) and applies the test to the last step.
        project: optional ``project(x) -> x`` applied after every step (e.g. clipping to a box). The curvature
            pair keeps ``s = t d`` (the unprojected step), as ``torch.optim.LBFGS`` does when its parameters are
            modified between steps.
        curvature_eps: a curvature pair is stored only when ``⟨y, s⟩ > curvature_eps`` (absolute).

    Returns:
        :class:`SolverResult` with ``solution`` ``(B, …)``; ``iterations`` the most steps any sample took;
        ``history`` ``(iterations + 1, B)`` objective values at ``x_0, x_1, …`` (a sample's last value repeated
        after it stops); ``converged`` ``(B,)``; ``criterion`` (:func:`criterion`, with a note when a sample
        diverged); ``tol``; ``reached`` ``(B,)`` each sample's last ``r_k`` (``inf`` before its first test at
        ``k = window + 1``, ``nan`` for a diverged sample). ``info``: ``"iterations"`` ``(B,)`` steps per
        sample; ``"diverged"`` ``(B,)`` bool; ``"pairs_skipped"`` ``(B,)`` curvature pairs not stored.

    Example:
        >>> a = torch.tensor([[1.0, 4.0], [2.0, 10.0]], dtype=torch.float64)
        >>> res = lbfgs(lambda x: 1 + 0.5 * (a * (x - 1) ** 2).sum(1), torch.zeros(2, 2, dtype=torch.float64),
        ...             max_iter=100, tol=1e-14, history_size=5)
        >>> bool(res.converged.all()), torch.allclose(res.solution, torch.ones(2, 2, dtype=torch.float64))
        (True, True)
    """
    settings = _check_settings(x0, max_iter, tol, window, history_size, lr, stop_early, curvature_eps)
    return _minimise(energy, x0, project=project, **settings)


def _check_settings(x0, max_iter, tol, window, history_size, lr, stop_early, curvature_eps) -> dict[str, Any]:
    """The optimiser's settings, checked (once per public call) and normalised; no side effects."""
    if not isinstance(x0, torch.Tensor) or not x0.is_floating_point() or x0.ndim < 1:
        raise TypeError(f"x0 must be a floating-point tensor with a batch dimension, got {type(x0).__name__}")
    return {
        "max_iter": check_max_iter(max_iter, "max_iter"),
        "tol": check_tol(tol, "tol"),
        "window": check_max_iter(window, "window"),
        "history_size": check_max_iter(history_size, "history_size"),
        "lr": check_positive_number(lr, "lr"),
        "stop_early": check_flag(stop_early, "stop_early"),
        "curvature_eps": check_nonnegative_number(curvature_eps, "curvature_eps"),
    }


def _minimise(
    energy: Energy,
    x0: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    window: int,
    history_size: int,
    lr: float,
    stop_early: bool,
    project: Projection | None,
    curvature_eps: float,
) -> SolverResult:
    """The iterations of :func:`lbfgs`, on settings already checked."""
    batch, shape = x0.shape[0], x0.shape
    dev, real = x0.device, x0.dtype
    tiny = torch.finfo(real).tiny
    x = x0.detach().clone().reshape(batch, -1)
    n = x.shape[1]
    samples = torch.arange(batch, device=dev)

    def evaluate(flat: torch.Tensor, with_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        if not with_grad:
            with torch.no_grad():
                return energy(flat.reshape(shape)).detach().reshape(batch), None
        with torch.enable_grad():
            leaf = flat.detach().reshape(shape).requires_grad_(True)
            value = energy(leaf)
            (grad,) = torch.autograd.grad(value.sum(), leaf)
        return value.detach(), grad.detach().reshape(batch, n)

    def finite(f: torch.Tensor, g: torch.Tensor | None) -> torch.Tensor:
        ok = torch.isfinite(f)
        return ok if g is None else ok & torch.isfinite(g).all(1)

    # memory: per sample a ring buffer of curvature pairs; slot (head − 1 − j) mod m is its j-th newest pair
    m = history_size
    s_mem = torch.zeros(m, batch, n, dtype=real, device=dev)
    y_mem = torch.zeros(m, batch, n, dtype=real, device=dev)
    rho = torch.zeros(m, batch, dtype=real, device=dev)
    count = torch.zeros(batch, dtype=torch.long, device=dev)
    head = torch.zeros(batch, dtype=torch.long, device=dev)
    h_diag = torch.ones(batch, dtype=real, device=dev)
    fresh = torch.ones(batch, dtype=torch.bool, device=dev)  # the next direction is −∇f with the first step rule

    f, g = evaluate(x, True)
    if f.shape != (batch,):
        raise ValueError(f"energy must return one value per sample, shape ({batch},), got {tuple(f.shape)}")
    diverged = ~finite(f, g)
    active = ~diverged
    steps = torch.zeros(batch, dtype=torch.long, device=dev)
    skipped = torch.zeros(batch, dtype=torch.long, device=dev)
    reached = torch.full((batch,), float("inf"), dtype=real, device=dev)
    g = torch.where(_col(diverged), torch.zeros_like(g), g)
    d_prev = torch.zeros_like(x)
    t_prev = torch.zeros(batch, dtype=real, device=dev)
    g_prev = torch.zeros_like(x)
    history = [f]

    with torch.no_grad():
        for k in range(max_iter):
            if not bool(active.any()):
                break
            # -- store the newest curvature pair (samples past their first step)
            update = active & ~fresh
            if bool(update.any()):
                y = g - g_prev
                s = d_prev * _col(t_prev)
                ys = _dot(y, s)
                accept = update & (ys > curvature_eps)
                skipped += (update & ~accept).to(skipped.dtype)
                idx = samples[accept]
                if idx.numel():
                    slot = head[idx]
                    s_mem[slot, idx] = s[idx]
                    y_mem[slot, idx] = y[idx]
                    rho[slot, idx] = 1.0 / ys[idx]
                    head[idx] = (slot + 1) % m
                    count[idx] = torch.clamp(count[idx] + 1, max=m)
                    h_diag = torch.where(accept, ys / _dot(y, y), h_diag)
            # -- two-loop recursion, each sample over its own pairs
            most = int(count.max())
            # when every sample holds the same pairs' slots (no sample has skipped a pair), the pairs are read in
            # place; otherwise each sample's j-th newest pair is gathered from its own slot
            shared = batch == 1 or bool(((head == head[0]) & (count == count[0])).all())

            def pair(j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
                valid = j < count
                if shared:
                    slot = (int(head[0]) - 1 - j) % m
                    return s_mem[slot], y_mem[slot], rho[slot], valid
                slot = (head - 1 - j) % m
                return s_mem[slot, samples], y_mem[slot, samples], rho[slot, samples], valid

            q = -g
            alphas = []
            for j in range(most):
                s_j, y_j, rho_j, valid = pair(j)
                a = torch.where(valid, _dot(s_j, q) * rho_j, 0.0)
                alphas.append(a)
                q.addcmul_(_col(a), y_j, value=-1.0)
            r = q * _col(h_diag)
            for j in range(most - 1, -1, -1):
                s_j, y_j, rho_j, valid = pair(j)
                b = _dot(y_j, r) * rho_j
                r.addcmul_(_col(torch.where(valid, alphas[j] - b, 0.0)), s_j)
            d = torch.where(_col(fresh), -g, r)
            first_step = lr * torch.clamp(1.0 / g.abs().sum(1), max=1.0)
            t = torch.where(fresh, first_step, torch.full_like(first_step, lr))
            # -- the step
            x_prev = x
            moved = x + _col(t) * d
            if project is not None:
                moved = project(moved.reshape(shape)).reshape(batch, n)
            x = torch.where(_col(active), moved, x)
            g_prev = torch.where(_col(active), g, g_prev)
            d_prev = torch.where(_col(active), d, d_prev)
            t_prev = torch.where(active, t, t_prev)
            fresh = fresh & ~active
            steps += active.to(steps.dtype)
            # -- the new iterate: its value (and gradient unless it is the last one), divergence, convergence
            last = k + 1 == max_iter
            f_new, g_new = evaluate(x, not last)
            bad = active & ~finite(f_new, g_new)
            if bool(bad.any()):
                x = torch.where(_col(bad), x_prev, x)  # keep the last finite iterate
                steps -= bad.to(steps.dtype)
                diverged |= bad
                reached = torch.where(bad, float("nan"), reached)
            good = active & ~bad
            f = torch.where(good, f_new, f)
            if g_new is not None:
                g = torch.where(_col(good), g_new, g)
            history.append(f)
            tested = good & (steps > window)  # the window [k − w, k] leaves out the first, short step
            if bool(tested.any()):
                recent = torch.stack(history[-(window + 1) :])
                rel = (recent.amax(0) - recent.amin(0)) / (window * f.abs().clamp_min(tiny))
                reached = torch.where(tested, rel, reached)
                if stop_early:
                    active = active & ~(tested & (rel <= tol))
            active = active & good

    converged = ~diverged & (reached <= tol)
    iterations = int(steps.max()) if batch else 0
    described = criterion(window)
    if bool(diverged.any()):
        described += " (nan: the objective became non-finite, the sample kept its last finite iterate)"
    if bool(torch.isinf(reached).any()):
        described += f" (inf: not measured, it needs {window + 1} iterations)"

    return SolverResult(
        solution=x.reshape(shape),
        iterations=iterations,
        history=torch.stack(history[: iterations + 1]),
        converged=converged,
        info={"iterations": steps, "diverged": diverged, "pairs_skipped": skipped},
        criterion=described,
        tol=tol,
        reached=reached,
    )


Objective = Callable[[torch.Tensor], tuple[torch.Tensor, Mapping[str, torch.Tensor]]]


@dataclass
class LBFGSStageResult:
    """What :func:`lbfgs_stage` returns: the finished point and the record of the run that led to it.

    Attributes:
        solution: ``(B, …)`` the stage's result, ``finish(x_T)`` for each sample's last iterate ``x_T``.
        solver: the optimiser's :class:`SolverResult` (unfinished iterates: ``solver.solution`` is ``x_T``;
            ``info["iterations"]`` the ``(B,)`` steps per sample, ``info["diverged"]``, ``info["pairs_skipped"]``).
        history: ``(T + 1, B)`` objective values, row ``k`` at iterate ``k`` (``T`` the most steps any sample took);
            from a sample's last iteration on, the value at its finished point ``solution``.
        terms: ``{name: (T + 1, B)}`` the named parts of the objective, recorded like ``history``.
        frames: ``(F, B, …)`` snapshots (see :func:`lbfgs_stage`), or ``None`` when none were asked for.
    """

    solution: torch.Tensor
    solver: SolverResult
    history: torch.Tensor
    terms: dict[str, torch.Tensor]
    frames: torch.Tensor | None = None


def lbfgs_stage(
    objective: Objective,
    x0: torch.Tensor,
    *,
    max_iter: int,
    tol: float,
    window: int = 1,
    history_size: int = 100,
    lr: float = 1.0,
    stop_early: bool = True,
    project: Projection | None = None,
    finish: Projection | None = None,
    frames: int = 0,
    snapshot: Projection | None = None,
    on_iterate: Callable[[int, torch.Tensor], None] | None = None,
    curvature_eps: float = 1e-10,
) -> LBFGSStageResult:
    """One stage of a staged optimisation: :func:`lbfgs` on ``objective`` from ``x0``, recorded.

    The descent, its per-sample independence and its stopping rule ``r_k <= tol`` over the last ``window``
    iterations are those of :func:`lbfgs` (see the module docstring). Around it, this records what the caller
    passes in a closure: ``objective(x)`` returns the ``(B,)`` values the descent minimises together with their
    named parts (e.g. the unweighted loss terms of a weighted sum), and every part is kept per iterate. When the
    descent ends, each sample's last iterate ``x_T`` is mapped by ``finish`` (e.g. clipped to a box: the descent
    itself may run unconstrained) and the objective is evaluated once more there, without gradient; that value
    closes the record of the sample.

    Args:
        objective: ``objective(x) -> (values, parts)`` with ``values`` ``(B,)`` and ``parts`` ``{name: (B,)}``,
            separable over the batch (see :func:`lbfgs`'s ``energy``). Called for iterates ``0, 1, 2, …`` in
            order, once each, then once at the finished point.
        x0: ``(B, …)`` start (not modified).
        max_iter, tol, window, history_size, lr, stop_early, project, curvature_eps: as in :func:`lbfgs`.
        finish: ``finish(x) -> x`` applied to the last iterate (and to the iterates shown in ``frames``);
            ``None`` keeps it.
        frames: ``F >= 0`` snapshots: ``snapshot(finish(x_k))`` at the planned iterations
            ``k = round(i · max_iter / (F − 1))`` for ``i < F − 1``, then ``snapshot(solution)``; a run that ends
            before a planned iteration repeats its last snapshot in the frames it did not reach.
        snapshot: ``snapshot(x) -> image`` of a finished point for ``frames`` (``None``: the point itself).
        on_iterate: ``on_iterate(k, values)`` after iterate ``k >= 1`` is evaluated (``values`` ``(B,)``, detached);
            for progress reporting.

    Returns:
        :class:`LBFGSStageResult`.

    Example:
        >>> target = torch.tensor([[0.5, 2.0], [-1.0, 0.25]], dtype=torch.float64)
        >>> def objective(x):
        ...     fit = ((x - target) ** 2).sum(1)
        ...     return 1 + fit, {"fit": fit}
        >>> run = lbfgs_stage(objective, torch.zeros(2, 2, dtype=torch.float64), max_iter=50, tol=1e-12,
        ...                   finish=lambda x: x.clamp(0, 1))
        >>> run.solution.tolist(), bool(run.solver.converged.all())
        ([[0.5, 1.0], [0.0, 0.25]], True)
        >>> run.terms["fit"][-1].tolist()  # at the clipped points
        [1.0, 1.0]
    """
    settings = _check_settings(x0, max_iter, tol, window, history_size, lr, stop_early, curvature_eps)
    frames = check_int(frames, "frames", minimum=0)
    done = finish if finish is not None else _same
    show = snapshot if snapshot is not None else _same
    planned = {round(i * max_iter / (frames - 1)) for i in range(frames)} if frames > 1 else set()
    rows: list[dict[str, torch.Tensor]] = []
    shots: dict[int, torch.Tensor] = {}

    def energy(x: torch.Tensor) -> torch.Tensor:
        k = len(rows)  # the optimiser evaluates iterates 0, 1, 2, ... in order, once each
        values, parts = objective(x)
        rows.append({name: part.detach() for name, part in parts.items()})
        if k in planned:
            shots[k] = show(done(x.detach()))
        if on_iterate is not None and k > 0:
            on_iterate(k, values.detach())
        return values

    solver = _minimise(energy, x0, project=project, **settings)
    steps, last = solver.info["iterations"], solver.iterations
    with torch.no_grad():
        x = done(solver.solution)
        values, parts = objective(x)
    after = torch.arange(last + 1, device=steps.device)[:, None] >= steps[None, :]  # (T + 1, B)
    history = torch.where(after, values, solver.history.to(values.dtype))
    terms = {
        name: torch.where(after, part, torch.stack([row[name] for row in rows[: last + 1]]))
        for name, part in parts.items()
    }
    stacked = None
    if frames:
        kept = [shots[k] for k in sorted(shots) if k < last][: frames - 1]
        stacked = torch.stack(kept + [show(x)] * (frames - len(kept)))
    return LBFGSStageResult(solution=x, solver=solver, history=history, terms=terms, frames=stacked)


def _same(x: torch.Tensor) -> torch.Tensor:
    return x
