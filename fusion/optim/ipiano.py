"""iPiano: inertial proximal gradient with Lipschitz backtracking (Ochs et al.), block-coordinate.

For ``min_x f(x) + Σ_i g_i(x_i)`` with ``f`` smooth (gradient by autograd) and ``g_i`` with a cheap prox, each
iteration takes, for every block ``i`` at once (as in Algorithm 1 of the variational osmosis paper),

    x_i⁺ = prox^{D_i}_{ζ_i g_i}( x_i − ζ_i D_i⁻¹ ∇_i f(x) + β_i (x_i − x_i^{prev}) ),   ζ_i = c · 2(1 − β_i) / L_i,

and accepts the step for a batch sample when, for every block, the descent lemma holds in the metric ``D_i``
with the other blocks held at their current values:

    f(x with x_i ← x_i⁺) ≤ f(x) + ⟨∇_i f(x), x_i⁺ − x_i⟩ + L_i/2 ‖x_i⁺ − x_i‖²_{D_i}.

Otherwise ``L_i`` of that sample grows by ``lipschitz_growth`` and the step is recomputed (``L_{i,k}`` is the
smallest of ``L_{i,k-1}, λL_{i,k-1}, λ²L_{i,k-1}, …`` that passes). Every quantity is per batch sample: samples
backtrack and stop independently, and a stopped sample is frozen.

Metric. By default ``D_i = I`` (the classical iPiano with one scalar step per block). A ``metric`` callable may
supply a positive diagonal ``D_i`` per block, recomputed at every iterate (variable-metric iPiano): the gradient
step becomes ``ζ_i D_i⁻¹ ∇_i f`` and the prox is taken in the norm ``‖·‖_{D_i}``,
``prox^{D}_{ζg}(z) = argmin_x g(x) + ‖x − z‖²_D / (2ζ)``, which for a diagonal ``D`` is the ordinary prox with
the per-element step ``ζ / D`` — so the ``prox`` callables are simply handed an element-wise step tensor. With a
metric that follows the local curvature of ``f``, ``L_i`` stays near 1 and the steps are as long as each element
allows, instead of being limited everywhere by the stiffest element. With ``β = 0`` every accepted step decreases
``f + Σ g_i`` for any positive metric: the prox inequality gives
``g(x⁺) + ⟨∇f, x⁺ − x⟩ + ‖x⁺ − x‖²_D / ζ ≤ g(x)`` and the descent test adds ``f(x⁺) − f(x) ≤ … + L/2 ‖·‖²_D``
with ``1/ζ > L/2`` (for several blocks moved at once this needs ``descent_test="joint"`` or ``"both"``).

Exact blocks. A block may instead be minimised exactly (``block_solve``): at the start of every iteration its
solver replaces it by the minimiser of ``f + g_i`` over that block with the others held (Gauss–Seidel), before the
other blocks take their proximal gradient step. That is the metric step of a block whose smooth part is quadratic,
with the block's Hessian as metric and step 1, so no Lipschitz estimate, inertia or descent test is needed for it.

Safeguards. The inertial term does not shrink with the step; when it carries a trial out of the domain of ``f``
(non-finite energy) the iteration is retried without it. With ``monotone=True`` a trial must also lower
``f + Σ g_i`` itself (the descent test guarantees that only up to the accuracy of an inexact prox, and not at all
with inertia): an inertial trial that passes the descent test but does not lower it is retried without inertia,
a plain one with a larger ``L``, so the objective never increases.

Sums. The inner products and squared norms of the descent test are accumulated in float64 and rounded once to
the working dtype. The test compares values to a few ulps; the energies on its two sides are accumulated in
float64 too (:mod:`fusion.energies.osmosis`), and a float32 accumulation of the bound over a large image would let
rounding decide the verdict. In float64 this is the plain sum.
"""

from __future__ import annotations

from typing import Callable, Literal, Sequence

import torch

from fusion.ops.result import SolverResult

SmoothEnergy = Callable[..., torch.Tensor]
#: ``prox(z, step) -> x``; with a ``prox_state`` for its block ``prox(z, step, state) -> (x, state)``.
Prox = Callable[..., object]
Metric = Callable[..., Sequence[torch.Tensor | None]]
#: ``gradient(x_1, …, x_n) -> (f(x), [∇_1 f, …, ∇_n f])`` (entries of exact blocks may be ``None``).
Gradient = Callable[..., tuple[torch.Tensor, Sequence[torch.Tensor | None]]]
#: ``solve(blocks, active, progress) -> block``: the exact minimiser of ``f + g_i`` over block ``i``.
BlockSolve = Callable[[list[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]
State = tuple[torch.Tensor, ...]


def _bshape(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.ndim - 1)))


def _bsum(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1, dtype=torch.float64).to(x.dtype)


def _stack_or_empty(values: list[torch.Tensor], batch: int, like: torch.Tensor) -> torch.Tensor:
    return torch.stack(values) if values else like.new_zeros(0, batch)


def _as_list(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} needs one entry per block ({n}), got {len(value)}")
        return list(value)
    return [value] * n


def _select(keep: torch.Tensor, new: State, old: State) -> State:
    return tuple(torch.where(_bshape(a, keep), a, b) for a, b in zip(new, old))


def ipiano(
    energy: SmoothEnergy,
    x0: torch.Tensor | Sequence[torch.Tensor],
    *,
    prox: Prox | Sequence[Prox | None] | None = None,
    beta: float | Sequence[float] = 0.4,
    lipschitz: float | Sequence[float] = 1.0,
    lipschitz_growth: float = 2.0,
    lipschitz_shrink: float = 1.0,
    step_fraction: float = 0.99,
    max_iter: int = 10000,
    tol: float = 1e-6,
    min_iter: int = 5,
    max_backtracks: int = 60,
    objective: SmoothEnergy | None = None,
    metric: Metric | None = None,
    descent_test: Literal["blocks", "joint", "both"] = "blocks",
    criterion: SmoothEnergy | None = None,
    criterion_name: str | None = None,
    gradient: Gradient | None = None,
    block_solve: BlockSolve | Sequence[BlockSolve | None] | None = None,
    prox_state: Sequence[State | None] | None = None,
    monotone: bool = False,
    nonsmooth: SmoothEnergy | Sequence[SmoothEnergy | None] | None = None,
    check_every: int = 1,
) -> SolverResult:
    """Minimise ``energy(*blocks) + Σ g_i`` by iPiano with backtracking.

    Host synchronisations: one per trial step (whether some sample must backtrack), one before the first
    iteration and one after every ``check_every``-th (whether some sample goes on: at most
    ``⌈iterations / check_every⌉ + 1``), and one at the end when ``check_every > 1``; the callables may add their
    own. The backtracking decision has to be taken on the host at every trial: the next trial costs a
    prox and an energy evaluation per block, too much to spend on speculation, and the number of trials depends
    on the data. With ``lipschitz_shrink = 1`` the estimates only grow, so after the first iterations most
    iterations accept their first trial: about one synchronisation per iteration.

    Args:
        energy: smooth part; called as ``energy(x_1, …, x_n)`` with ``(B, …)`` tensors, returns ``(B,)``
            per-sample energies. Its gradient comes from autograd unless ``gradient`` is given.
        x0: initial block(s), each ``(B, …)``.
        prox: per block, ``prox(z, step) -> x`` for the non-smooth part, or ``None`` for the identity (no
            non-smooth part). ``step`` is ``(B, 1, …)`` without a metric for that block, else the element-wise
            step ``ζ / D`` shaped like the block (the prox must accept both when a metric is used).
        beta: inertia ``β_i ∈ [0, 1)``.
        lipschitz: initial estimate ``L_{i,0} > 0``.
        lipschitz_growth: backtracking factor ``λ > 1``.
        lipschitz_shrink: factor ``≤ 1`` applied to ``L`` before each iteration (1 keeps the classical
            non-decreasing sequence; e.g. 0.9 lets the step recover after a hard region).
        step_fraction: ``c ∈ (0, 1)``, the step is ``c·2(1−β)/L`` (iPiano needs ``ζ < 2(1−β)/L``).
        max_iter: iteration limit.
        tol: stop a sample when ``|E_{k+1} − E_k| / |E_{k+1}| < tol`` (after ``min_iter`` iterations), or, with a
            ``criterion``, when ``criterion(x_{k+1}) ≤ tol``.
        min_iter: iterations always performed, so that the inertial term acts.
        max_backtracks: limit on the backtracking loop per iteration.
        objective: full per-sample objective used for the stopping rule and the history (default: ``energy``;
            pass ``f + Σ g_i`` when there is a non-smooth part).
        metric: optional ``metric(x_1, …, x_n) -> [D_1, …, D_n]`` called once at every iterate: per block a
            positive diagonal metric broadcastable to the block's shape, or ``None`` for the identity.
            ``lipschitz`` is then relative to the metric (for ``D`` a curvature bound, ``L ≈ 1``).
        descent_test: which descent inequalities decide acceptance. ``"blocks"`` (Algorithm 1 of the osmosis
            paper): one per block, ``f(x with x_i ← x_i⁺) ≤ f(x) + ⟨∇_i f, x_i⁺ − x_i⟩ + L_i/2 ‖x_i⁺ − x_i‖²_{D_i}``,
            growing ``L_i`` of the blocks that fail. ``"joint"``: one test with all blocks moved together,
            ``f(x⁺) ≤ f(x) + Σ_i ⟨∇_i f, x_i⁺ − x_i⟩ + L_i/2 ‖x_i⁺ − x_i‖²_{D_i}``, growing every ``L_i`` on failure
            — iPiano on the product space with the block-diagonal metric ``diag(L_i D_i)``, which makes the
            simultaneous update provably monotone for ``β = 0`` and costs one energy evaluation per trial instead
            of one per block. ``"both"``: both kinds.
        criterion: optional stopping criterion ``criterion(x_1, …, x_n) -> (B,)`` evaluated (without autograd) at
            every new iterate, replacing the relative energy change: a problem-specific measure such as the
            relative residual of the optimality equations, so that ``converged`` means what the caller's other
            solvers mean by it. ``None`` keeps the relative energy change.
        criterion_name: what ``criterion`` measures, in words, for :attr:`SolverResult.criterion`.
        gradient: optional ``gradient(x_1, …, x_n) -> (f(x), grads)`` with a closed-form gradient, called without
            autograd once per iteration; ``grads`` has one entry per block (``None`` allowed for exact blocks).
        block_solve: per block, ``None`` (a proximal gradient step) or ``solve(blocks, active, progress)``
            returning the exact minimiser of ``f + g_i`` over that block for the other blocks in ``blocks``:
            ``active`` is the ``(B,)`` mask of the samples still iterating (the others are not updated),
            ``progress`` the ``(B,)`` stopping quantity of the previous iteration (``inf`` before the first), from
            which the solver may set its own tolerance. Called without autograd at the start of every iteration,
            in block order; at least one block must take steps. An exact block has no ``prox``, inertia or
            Lipschitz estimate (``info["lipschitz"]`` holds ``None`` for it).
        prox_state: per block, ``None`` or the initial state of its prox, a tuple of ``(B, …)`` tensors (e.g. the
            dual of an inner primal–dual solve, to warm-start it). The prox is then called as
            ``prox(z, step, state) -> (x, new_state)`` with the state of the current iterate, and each sample keeps
            the state of the trial it accepts; the final states are ``info["prox_state"]``.
        monotone: also require every accepted trial to lower ``f + Σ g_i`` (see the module docstring).
        nonsmooth: per block, ``g_i(x_i) -> (B,)`` (or ``None`` for ``g_i = 0``): the values ``monotone`` compares.
        check_every: how often (in iterations) the host checks whether some sample is still iterating, ``>= 1``.
            Each sample's stopping test runs at every iteration regardless, on the device, so the result does
            not depend on it; with ``check_every > 1`` up to ``check_every − 1`` iterations may run after the
            last sample stopped, every sample frozen (``block_solve`` then sees an all-false ``active`` and the
            callables are evaluated for nothing), and they are cut from the result. The default, 1, runs no
            iteration in vain: an iteration costs at least one transfer for its first trial anyway.

    Returns:
        :class:`SolverResult`: ``solution`` (a tensor for one block, else a tuple), ``history`` the
        ``(iterations + 1, B)`` objective values, ``converged`` per sample, ``criterion``/``tol``/``reached``
        the stopping quantity in words, the tolerance and its last value per sample while it was iterating,
        ``info["iterations"]`` the ``(B,)`` iterations of each sample, ``info["criterion_history"]`` the
        ``(iterations, B)`` values of ``criterion`` (only when one is given), ``info["lipschitz"]`` the final
        estimates per block, ``info["evaluations"]`` the number of trial steps (prox + energy evaluations) per
        sample, ``info["inertia_resets"]`` how many iterations per sample dropped the inertial term (a trial left
        the domain of ``f``, or, with ``monotone``, did not lower the objective), ``info["prox_state"]`` the
        final prox states per block (only when ``prox_state`` is given).

    Example:
        >>> target = torch.tensor([[3.0, -1.0]], dtype=torch.float64)
        >>> res = ipiano(lambda x: 0.5 * ((x - target) ** 2).sum(1), torch.zeros(1, 2, dtype=torch.float64),
        ...              tol=1e-14, max_iter=500)
        >>> torch.allclose(res.solution, target)
        True
    """
    single = isinstance(x0, torch.Tensor)
    xs = [x0] if single else list(x0)
    n = len(xs)
    proxes = _as_list(prox, n, "prox")
    solves = _as_list(block_solve, n, "block_solve")
    states = _as_list(prox_state, n, "prox_state") if prox_state is not None else [None] * n
    values = _as_list(nonsmooth, n, "nonsmooth")
    betas = [float(b) for b in _as_list(beta, n, "beta")]
    l0 = [float(v) for v in _as_list(lipschitz, n, "lipschitz")]
    stepped = [i for i in range(n) if solves[i] is None]
    if any(not 0 <= b < 1 for b in betas):
        raise ValueError(f"beta must lie in [0, 1), got {betas}")
    if any(v <= 0 for v in l0):
        raise ValueError(f"lipschitz must be > 0, got {l0}")
    if lipschitz_growth <= 1:
        raise ValueError(f"lipschitz_growth must be > 1, got {lipschitz_growth}")
    if not 0 < lipschitz_shrink <= 1:
        raise ValueError(f"lipschitz_shrink must lie in (0, 1], got {lipschitz_shrink}")
    if not 0 < step_fraction < 1:
        raise ValueError(f"step_fraction must lie in (0, 1), got {step_fraction}")
    if max_iter < 0 or tol <= 0:
        raise ValueError(f"need max_iter >= 0 and tol > 0, got max_iter={max_iter}, tol={tol}")
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
    if descent_test not in ("blocks", "joint", "both"):
        raise ValueError(f"descent_test must be 'blocks', 'joint' or 'both', got {descent_test!r}")
    if not stepped:
        raise ValueError("block_solve is set for every block; at least one block must take proximal gradient steps")
    for i in range(n):
        if solves[i] is not None and proxes[i] is not None:
            raise ValueError(f"block {i} is solved exactly (block_solve) and cannot have a prox as well")
        if states[i] is not None and proxes[i] is None:
            raise ValueError(f"block {i} has a prox_state but no prox")
    blockwise = descent_test != "joint" or len(stepped) == 1
    jointly = descent_test != "blocks" and len(stepped) > 1
    objective = objective if objective is not None else energy

    xs = [x.detach().clone() for x in xs]
    prev = [x.clone() for x in xs]
    batch = xs[0].shape[0]
    dev, real = xs[0].device, xs[0].dtype
    lips: list[torch.Tensor | None] = [
        torch.full((batch,), l0[i], device=dev, dtype=real) if solves[i] is None else None for i in range(n)
    ]
    states = [None if s is None else tuple(s) for s in states]
    # Relative rounding allowance in the descent test: 1e-12 in float64; in float32 a few ulps, since energies
    # summed over a large image cannot resolve finer differences and the test would otherwise backtrack forever.
    rounding = max(1e-12, 4 * torch.finfo(real).eps)
    identity: Prox = lambda z, step: z  # noqa: E731
    proxes = [p if p is not None else identity for p in proxes]
    with_inertia = any(betas[i] > 0 for i in stepped)

    def _within(lhs: torch.Tensor, bound: torch.Tensor) -> torch.Tensor:
        slack = rounding * bound.abs().clamp_min(1.0)  # rounding tolerance of the energy values
        return torch.isfinite(lhs) & (lhs <= bound + slack)

    def value_and_grad(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor | None]]:
        if gradient is not None:
            with torch.no_grad():
                e, found = gradient(*blocks)
            return e.detach(), list(found)
        with torch.enable_grad():
            leaves = [b.detach().requires_grad_(solves[i] is None) for i, b in enumerate(blocks)]
            e = energy(*leaves)
            found = iter(torch.autograd.grad(e.sum(), [leaves[i] for i in stepped]))
        return e.detach(), [next(found).detach() if solves[i] is None else None for i in range(n)]

    def g_sum(e: torch.Tensor, blocks: list[torch.Tensor]) -> torch.Tensor:
        for i in stepped:
            if values[i] is not None:
                e = e + values[i](blocks[i])
        return e

    with torch.no_grad():
        history = [objective(*xs).detach()]
    active = torch.ones(batch, dtype=torch.bool, device=dev)
    converged = torch.zeros(batch, dtype=torch.bool, device=dev)
    evaluations = torch.zeros(batch, dtype=torch.long, device=dev)
    resets = torch.zeros(batch, dtype=torch.long, device=dev)
    sample_iterations = torch.zeros(batch, dtype=torch.long, device=dev)
    reached = torch.full((batch,), float("inf"), device=dev, dtype=real)
    criterion_history = []
    it = 0
    running = max_iter > 0 and bool(active.any())
    while running:
        for i in range(n):
            if solves[i] is not None:
                with torch.no_grad():
                    solved = solves[i](list(xs), active.clone(), reached.clone())
                xs[i] = torch.where(_bshape(xs[i], active), solved, xs[i])
        e0, grads = value_and_grad(xs)
        lips = [None if lip is None else torch.where(active, lip * lipschitz_shrink, lip) for lip in lips]
        with torch.no_grad():
            metrics = list(metric(*xs)) if metric is not None else [None] * n
            e_start = g_sum(e0, xs) if monotone else None
            pending = active.clone()
            candidate = [x.clone() for x in xs]
            chosen = [None if s is None else tuple(t.clone() for t in s) for s in states]
            inertial = torch.full_like(active, with_inertia)  # per sample: inertia still on in this iteration
            left_domain = torch.zeros_like(active)
            for _ in range(max_backtracks):
                ok_all = torch.ones_like(pending)
                trial, trial_states = list(xs), list(states)
                for i in stepped:
                    b_i = torch.where(inertial, betas[i], 0.0).to(real)
                    step = _bshape(xs[i], step_fraction * 2 * (1 - b_i) / lips[i])
                    if metrics[i] is not None:
                        step = step / metrics[i]
                    z = xs[i] - step * grads[i] + _bshape(xs[i], b_i) * (xs[i] - prev[i])
                    if states[i] is None:
                        trial[i] = proxes[i](z, step)
                    else:
                        trial[i], trial_states[i] = proxes[i](z, step, states[i])
                evaluations += pending.to(evaluations.dtype)
                joint_bound = e0.clone()
                lhs = e0
                for i in stepped:
                    d = trial[i] - xs[i]
                    dd = d * d if metrics[i] is None else metrics[i] * d * d
                    linear, quad = _bsum(grads[i] * d), 0.5 * lips[i] * _bsum(dd)
                    joint_bound = joint_bound + linear + quad
                    if blockwise:
                        lhs = energy(*(xs[:i] + [trial[i]] + xs[i + 1 :]))
                        left_domain |= ~torch.isfinite(lhs)
                        ok = _within(lhs, e0 + linear + quad)
                        lips[i] = torch.where(pending & ~ok, lips[i] * lipschitz_growth, lips[i])
                        ok_all &= ok
                if jointly:
                    lhs = energy(*trial)
                    left_domain |= ~torch.isfinite(lhs)
                    ok = _within(lhs, joint_bound)
                    grow = pending & ok_all & ~ok  # the blocks that passed alone (all, for "joint") fail together
                    lips = [None if lip is None else torch.where(grow, lip * lipschitz_growth, lip) for lip in lips]
                    ok_all &= ok
                retry_plain = torch.zeros_like(pending)
                if monotone:
                    if len(stepped) > 1 and not jointly:  # f with every stepped block moved
                        lhs = energy(*trial)
                        left_domain |= ~torch.isfinite(lhs)
                    lower = g_sum(lhs, trial) <= e_start + rounding * e_start.abs().clamp_min(1.0)
                    flat = pending & ok_all & ~lower  # passed the descent test but did not lower the objective
                    retry_plain = flat & inertial
                    grow = flat & ~inertial
                    lips = [None if lip is None else torch.where(grow, lip * lipschitz_growth, lip) for lip in lips]
                    ok_all &= lower
                accept = pending & ok_all
                for i in stepped:
                    candidate[i] = torch.where(_bshape(xs[i], accept), trial[i], candidate[i])
                    if chosen[i] is not None:
                        chosen[i] = _select(accept, trial_states[i], chosen[i])
                pending &= ~accept
                if not bool(pending.any()):
                    break
                # the inertial term does not shrink with the step: if it carried a trial out of the domain of f (or,
                # with monotone, up the objective), retry this iteration without it (β = 0 is an admissible iPiano
                # choice), so that backtracking can always succeed
                dropped = pending & inertial & (left_domain | retry_plain)
                resets += dropped.to(resets.dtype)
                inertial &= ~dropped
            failed = pending  # no acceptable step within max_backtracks: stop this sample, not converged
            moved = active & ~pending
            for i in stepped:
                keep = _bshape(xs[i], moved)
                prev[i] = torch.where(keep, xs[i], prev[i])
                xs[i] = torch.where(keep, candidate[i], xs[i])
                if states[i] is not None:
                    states[i] = _select(moved, chosen[i], states[i])
            e_new = objective(*xs).detach()
            it += 1
            sample_iterations += active.to(sample_iterations.dtype)
            if criterion is None:
                rel = (e_new - history[-1]).abs() / e_new.abs().clamp_min(torch.finfo(real).tiny)
                done = moved & (rel < tol) & (it >= min_iter)
            else:
                rel = criterion(*xs).detach().to(real).reshape(batch)
                criterion_history.append(rel)
                done = moved & (rel <= tol) & (it >= min_iter)
            reached = torch.where(active, rel, reached)
            converged |= done
            active &= ~(done | failed)
            history.append(e_new)
            running = it < max_iter and (it % check_every != 0 or bool(active.any()))
    if check_every > 1 and it > 0:
        # the iterations after the last sample stopped changed nothing: cut them (one transfer)
        it = int(sample_iterations.max())
        del history[it + 1 :], criterion_history[it:]
    info = {
        "lipschitz": [None if lip is None else lip.clone() for lip in lips],
        "evaluations": evaluations,
        "inertia_resets": resets,
        "iterations": sample_iterations,
    }
    if criterion is not None:
        info["criterion_history"] = _stack_or_empty(criterion_history, batch, reached)
    if prox_state is not None:
        info["prox_state"] = states
    return SolverResult(
        solution=xs[0] if single else tuple(xs),
        iterations=it,
        history=torch.stack(history),
        converged=converged,
        info=info,
        criterion=criterion_name or ("relative energy change" if criterion is None else "stopping criterion"),
        tol=float(tol),
        reached=reached,
    )
