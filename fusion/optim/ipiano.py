"""iPiano: inertial proximal gradient with Lipschitz backtracking (Ochs et al.), block-coordinate.

For ``min_x f(x) + Σ_i g_i(x_i)`` with ``f`` smooth (gradient by autograd) and ``g_i`` with a cheap prox, each
iteration takes, for every block ``i`` at once (as in Algorithm 1 of the variational osmosis paper),

    x_i⁺ = prox_{ζ_i g_i}( x_i − ζ_i ∇_i f(x) + β_i (x_i − x_i^{prev}) ),   ζ_i = c · 2(1 − β_i) / L_i,

and accepts the step for a batch sample when, for every block, the descent lemma holds with the other blocks
held at their current values:

    f(x with x_i ← x_i⁺) ≤ f(x) + ⟨∇_i f(x), x_i⁺ − x_i⟩ + L_i/2 ‖x_i⁺ − x_i‖².

Otherwise ``L_i`` of that sample grows by ``lipschitz_growth`` and the step is recomputed (``L_{i,k}`` is the
smallest of ``L_{i,k-1}, λL_{i,k-1}, λ²L_{i,k-1}, …`` that passes). Every quantity is per batch sample: samples
backtrack and stop independently, and a stopped sample is frozen.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from fusion.ops.result import SolverResult

SmoothEnergy = Callable[..., torch.Tensor]
Prox = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _bshape(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.ndim - 1)))


def _bsum(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


def _as_list(value, n: int, name: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{name} needs one entry per block ({n}), got {len(value)}")
        return list(value)
    return [value] * n


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
) -> SolverResult:
    """Minimise ``energy(*blocks) + Σ g_i`` by iPiano with backtracking.

    Args:
        energy: smooth part; called as ``energy(x_1, …, x_n)`` with ``(B, …)`` tensors, returns ``(B,)``
            per-sample energies. Its gradient comes from autograd.
        x0: initial block(s), each ``(B, …)``.
        prox: per block, ``prox(z, step) -> x`` for the non-smooth part (``step`` is ``(B, 1, …)``), or ``None``
            for the identity (no non-smooth part).
        beta: inertia ``β_i ∈ [0, 1)``.
        lipschitz: initial estimate ``L_{i,0} > 0``.
        lipschitz_growth: backtracking factor ``λ > 1``.
        lipschitz_shrink: factor ``≤ 1`` applied to ``L`` before each iteration (1 keeps the classical
            non-decreasing sequence; e.g. 0.9 lets the step recover after a hard region).
        step_fraction: ``c ∈ (0, 1)``, the step is ``c·2(1−β)/L`` (iPiano needs ``ζ < 2(1−β)/L``).
        max_iter: iteration limit.
        tol: stop a sample when ``|E_{k+1} − E_k| / |E_{k+1}| < tol`` (after ``min_iter`` iterations).
        min_iter: iterations always performed, so that the inertial term acts.
        max_backtracks: limit on the backtracking loop per iteration.
        objective: full per-sample objective used for the stopping rule and the history (default: ``energy``;
            pass ``f + Σ g_i`` when there is a non-smooth part).

    Returns:
        :class:`SolverResult`: ``solution`` (a tensor for one block, else a tuple), ``history`` the
        ``(iterations + 1, B)`` objective values, ``converged`` per sample, ``info["lipschitz"]`` the final
        estimates per block.

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
    betas = [float(b) for b in _as_list(beta, n, "beta")]
    l0 = [float(v) for v in _as_list(lipschitz, n, "lipschitz")]
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
    objective = objective if objective is not None else energy

    xs = [x.detach().clone() for x in xs]
    prev = [x.clone() for x in xs]
    batch = xs[0].shape[0]
    dev, real = xs[0].device, xs[0].dtype
    lips = [torch.full((batch,), v, device=dev, dtype=real) for v in l0]
    # Relative rounding allowance in the descent test: 1e-12 in float64; in float32 a few ulps, since energies
    # summed over a large image cannot resolve finer differences and the test would otherwise backtrack forever.
    rounding = max(1e-12, 4 * torch.finfo(real).eps)
    identity: Prox = lambda z, step: z  # noqa: E731
    proxes = [p if p is not None else identity for p in proxes]

    def value_and_grad(blocks: list[torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        with torch.enable_grad():
            leaves = [b.detach().requires_grad_(True) for b in blocks]
            e = energy(*leaves)
            grads = torch.autograd.grad(e.sum(), leaves)
        return e.detach(), [g.detach() for g in grads]

    with torch.no_grad():
        history = [objective(*xs).detach()]
    active = torch.ones(batch, dtype=torch.bool, device=dev)
    converged = torch.zeros(batch, dtype=torch.bool, device=dev)
    it = 0
    while it < max_iter and bool(active.any()):
        e0, grads = value_and_grad(xs)
        lips = [torch.where(active, lip * lipschitz_shrink, lip) for lip in lips]
        with torch.no_grad():
            pending = active.clone()
            candidate = [x.clone() for x in xs]
            for _ in range(max_backtracks):
                ok_all = torch.ones_like(pending)
                trial = []
                for i in range(n):
                    step = _bshape(xs[i], step_fraction * 2 * (1 - betas[i]) / lips[i])
                    z = xs[i] - step * grads[i] + betas[i] * (xs[i] - prev[i])
                    trial.append(proxes[i](z, step))
                for i in range(n):
                    d = trial[i] - xs[i]
                    swapped = xs[:i] + [trial[i]] + xs[i + 1 :]
                    bound = e0 + _bsum(grads[i] * d) + 0.5 * lips[i] * _bsum(d * d)
                    lhs = energy(*swapped)
                    slack = rounding * bound.abs().clamp_min(1.0)  # rounding tolerance of the energy values
                    ok = torch.isfinite(lhs) & (lhs <= bound + slack)
                    lips[i] = torch.where(pending & ~ok, lips[i] * lipschitz_growth, lips[i])
                    ok_all &= ok
                accept = pending & ok_all
                for i in range(n):
                    candidate[i] = torch.where(_bshape(xs[i], accept), trial[i], candidate[i])
                pending &= ~accept
                if not bool(pending.any()):
                    break
            failed = pending  # no acceptable step within max_backtracks: stop this sample, not converged
            moved = active & ~pending
            for i in range(n):
                keep = _bshape(xs[i], moved)
                prev[i] = torch.where(keep, xs[i], prev[i])
                xs[i] = torch.where(keep, candidate[i], xs[i])
            e_new = objective(*xs).detach()
            it += 1
            rel = (e_new - history[-1]).abs() / e_new.abs().clamp_min(torch.finfo(real).tiny)
            done = moved & (rel < tol) & (it >= min_iter)
            converged |= done
            active &= ~(done | failed)
            history.append(e_new)
    return SolverResult(
        solution=xs[0] if single else tuple(xs),
        iterations=it,
        history=torch.stack(history),
        converged=converged,
        info={"lipschitz": [lip.clone() for lip in lips]},
    )
