"""First-order primal–dual algorithm of Chambolle & Pock, with its accelerated variants, and the Huber-TV prox.

For ``min_x G(x) + F(K x)``, equivalently the saddle point ``min_x max_y ⟨K x, y⟩ − F*(y) + G(x)``, one iteration
reads (eq. 19 of the variational osmosis paper)::

    y⁺ = prox_{σF*}(y + σ K x̄)
    x⁺ = prox_{τG}(x − τ Kᵀ y⁺)
    x̄  = x⁺ + θ (x⁺ − x)

Three step rules, chosen from the strong convexity moduli that are given:

* none: fixed ``τσL² ≤ 1``, ``θ = 1`` (Chambolle–Pock Algorithm 1, O(1/N));
* ``G`` is ``γ``-strongly convex: ``θ = (1 + 2γτ)^{-1/2}``, ``τ ← θτ``, ``σ ← σ/θ`` (Algorithm 2, O(1/N²)) —
  the scheme written in eq. (19);
* ``G`` is ``γ``- and ``F*`` is ``δ``-strongly convex: fixed ``τ = √(δ/γ)/L``, ``σ = √(γ/δ)/L`` and
  ``θ = 1 / (1 + 2√(γδ)/L)`` (Algorithm 3, linear convergence).

All step quantities are per batch sample; samples stop independently and a stopped sample is frozen.

Host synchronisations: the stopping quantity is evaluated every ``check_every`` iterations and the host learns
whether a sample is still iterating only then, once per check (see :func:`chambolle_pock`).
"""

from __future__ import annotations

import functools
import math
from typing import Callable

import torch

from fusion.energies.osmosis import huber_tv
from fusion.ops.diff import div, grad
from fusion.ops.result import SolverResult

Operator = Callable[[torch.Tensor], torch.Tensor]
ProxMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _per_sample(value, batch: int, ref: torch.Tensor) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.to(device=ref.device, dtype=ref.dtype).reshape(-1).expand(batch).clone()
    return torch.full((batch,), float(value), device=ref.device, dtype=ref.dtype)


def _b(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (x.ndim - 1)))


def chambolle_pock(
    apply_k: Operator,
    apply_kt: Operator,
    prox_g: ProxMap,
    prox_fstar: ProxMap,
    x0: torch.Tensor,
    y0: torch.Tensor,
    *,
    op_norm: float,
    strong_convexity: float | torch.Tensor = 0.0,
    dual_strong_convexity: float | torch.Tensor = 0.0,
    tau: float | torch.Tensor | None = None,
    gap: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    max_iter: int = 1000,
    tol: float = 1e-4,
    check_every: int = 1,
    compile: bool = False,
) -> SolverResult:
    """Solve ``min_x max_y ⟨K x, y⟩ − F*(y) + G(x)`` for every batch sample.

    Host synchronisations: two to validate the moduli and one before the first iteration, then one at each
    evaluation of the stopping quantity (after iteration 1 and every ``check_every``-th) but the last
    iteration's: at most ``iterations / check_every + 4`` in all, besides any that the callables make.

    ``compile=True`` runs each iteration (both proximal steps, the extrapolation, the step-size update and, at a
    check, the stopping quantity) as one :func:`torch.compile`-d function, without graph breaks when the callables
    have none. Whether to go on is decided outside it, on the host: that decision needs the data, so it is where
    the compiled code ends. The compiled code is keyed on the code of the callables (and on shapes and dtypes),
    so new closures of the same functions reuse it. The results equal the eager ones up to rounding.

    Args:
        apply_k: ``x ↦ K x``; ``apply_kt``: ``y ↦ Kᵀ y`` (the exact adjoint).
        prox_g: ``(x, τ) ↦ prox_{τG}(x)`` with ``τ`` shaped ``(B, 1, …)``.
        prox_fstar: ``(y, σ) ↦ prox_{σF*}(y)`` with ``σ`` shaped ``(B, 1, …)``.
        x0, y0: ``(B, …)`` primal and dual starting points (warm starts welcome).
        op_norm: an upper bound ``L ≥ ‖K‖``.
        strong_convexity: modulus ``γ ≥ 0`` of ``G`` (float or ``(B,)``); ``> 0`` turns on acceleration.
        dual_strong_convexity: modulus ``δ ≥ 0`` of ``F*``; with ``γ > 0`` too, the linearly convergent rule.
        tau: initial primal step for Algorithms 1–2 (default ``1/L``; then ``σ = 1/(τL²)``).
        gap: ``(x, y) ↦ (B,)`` stopping quantity, e.g. the relative primal–dual gap; default: the relative change
            ``‖x⁺ − x‖ / ‖x⁺‖`` (a weak test for the accelerated rule, whose steps shrink: prefer a gap).
        max_iter: iteration limit.
        tol: a sample stops when its stopping quantity is ``< tol``.
        check_every: evaluate ``gap`` after the first iteration and then every this many iterations (the history
            repeats the last value between); it is also evaluated at the start, so a good warm start costs nothing.
        compile: compile the iteration with :func:`torch.compile` (see above).

    Returns:
        :class:`SolverResult` with ``solution`` the primal ``x``, ``info["dual"]`` the dual ``y``, ``history`` the
        ``(iterations + 1, B)`` stopping quantities.

    Example:
        >>> z = torch.tensor([[3.0, -0.2, 1.0]], dtype=torch.float64)
        >>> # min ½‖x − z‖² + ‖x‖₁ = soft threshold of z at 1; K = I, F = ‖·‖₁, F* = indicator of the ∞-ball
        >>> res = chambolle_pock(lambda x: x, lambda y: y, lambda x, t: (x + t * z) / (1 + t),
        ...                      lambda y, s: y.clamp(-1, 1), torch.zeros_like(z), torch.zeros_like(z),
        ...                      op_norm=1.0, max_iter=2000, tol=1e-12)
        >>> torch.allclose(res.solution, torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64), atol=1e-6)
        True
    """
    if op_norm <= 0:
        raise ValueError(f"op_norm must be > 0, got {op_norm}")
    if max_iter < 0 or tol <= 0 or check_every < 1:
        raise ValueError(f"need max_iter >= 0, tol > 0, check_every >= 1; got {max_iter}, {tol}, {check_every}")
    x = x0.detach().clone()
    y = y0.detach().clone()
    batch = x.shape[0]
    gam = _per_sample(strong_convexity, batch, x)
    dlt = _per_sample(dual_strong_convexity, batch, x)
    if bool((gam < 0).any()) or bool((dlt < 0).any()):
        raise ValueError("strong convexity moduli must be >= 0")
    linear = (gam > 0) & (dlt > 0)
    t0 = _per_sample(tau if tau is not None else 1.0 / op_norm, batch, x)
    sq = torch.sqrt(torch.where(linear, dlt / gam.clamp_min(1e-300), torch.ones_like(gam)))
    tau_t = torch.where(linear, sq / op_norm, t0)
    sigma_t = torch.where(linear, 1.0 / (sq * op_norm), 1.0 / (t0 * op_norm**2))
    theta_fixed = torch.where(linear, 1.0 / (1.0 + 2.0 * torch.sqrt(gam * dlt) / op_norm), torch.ones_like(gam))
    x_bar = x.clone()
    accel = (gam > 0) & ~linear
    last = gap(x, y) if gap is not None else torch.full((batch,), math.inf, dtype=x.dtype, device=x.device)
    history = [last]
    converged = last < tol  # a warm start may already be good enough
    active = ~converged
    step = _compiled_cp_step() if compile else _cp_step
    ops = (apply_k, apply_kt, prox_g, prox_fstar, gap)
    it = 0
    running = max_iter > 0 and bool(active.any())
    while running:
        it += 1
        check = it % check_every == 0 or it == 1 or it == max_iter
        x, y, x_bar, tau_t, sigma_t, last, done = step(
            ops, x, y, x_bar, tau_t, sigma_t, theta_fixed, gam, accel, active, last, tol, check
        )
        history.append(last.clone())
        converged |= done
        active &= ~done
        # the active samples change only at a check, so only then does the host need to look
        running = it < max_iter and (not check or bool(active.any()))
    return SolverResult(
        solution=x,
        iterations=it,
        history=torch.stack(history),
        converged=converged,
        info={"dual": y},
    )


def _cp_step(
    ops: tuple[Operator, Operator, ProxMap, ProxMap, Callable | None],
    x: torch.Tensor,
    y: torch.Tensor,
    x_bar: torch.Tensor,
    tau_t: torch.Tensor,
    sigma_t: torch.Tensor,
    theta_fixed: torch.Tensor,
    gam: torch.Tensor,
    accel: torch.Tensor,
    active: torch.Tensor,
    last: torch.Tensor,
    tol: float,
    check: bool,
) -> tuple[torch.Tensor, ...]:
    """One primal–dual iteration for the samples in ``active`` (the others keep their values).

    Args:
        ops: ``(apply_k, apply_kt, prox_g, prox_fstar, gap)`` as in :func:`chambolle_pock`.
        x, y, x_bar: ``(B, …)`` primal, dual and extrapolated primal iterates.
        tau_t, sigma_t: ``(B,)`` current steps; ``theta_fixed`` ``(B,)`` the extrapolation of the fixed rules.
        gam: ``(B,)`` strong convexity of ``G``; ``accel`` ``(B,)`` the samples on the accelerated rule.
        active: ``(B,)`` bool; ``last`` ``(B,)`` the last value of the stopping quantity.
        tol: tolerance; ``check``: evaluate the stopping quantity at this iteration.

    Returns:
        The new ``x, y, x_bar, tau_t, sigma_t, last`` and the ``(B,)`` samples that stop here.
    """
    apply_k, apply_kt, prox_g, prox_fstar, gap = ops
    y_new = prox_fstar(y + _b(y, sigma_t) * apply_k(x_bar), _b(y, sigma_t))
    x_new = prox_g(x - _b(x, tau_t) * apply_kt(y_new), _b(x, tau_t))
    theta = torch.where(accel, 1.0 / torch.sqrt(1.0 + 2.0 * gam * tau_t), theta_fixed)
    x_bar_new = x_new + _b(x, theta) * (x_new - x)
    if check:
        if gap is not None:
            value = gap(x_new, y_new)
        else:
            num = (x_new - x).flatten(1).norm(dim=1)
            value = num / x_new.flatten(1).norm(dim=1).clamp_min(torch.finfo(x.dtype).tiny)
        last = torch.where(active, value, last)
        done = active & (last < tol)
    else:
        done = torch.zeros_like(active)
    keep_x, keep_y = _b(x, active), _b(y, active)
    x = torch.where(keep_x, x_new, x)
    y = torch.where(keep_y, y_new, y)
    x_bar = torch.where(keep_x, x_bar_new, x_bar)
    moving = active & accel
    tau_t = torch.where(moving, tau_t * theta, tau_t)
    sigma_t = torch.where(moving, sigma_t / theta, sigma_t)
    return x, y, x_bar, tau_t, sigma_t, last, done


@functools.cache
def _compiled_cp_step() -> Callable[..., tuple[torch.Tensor, ...]]:
    """:func:`_cp_step` under :func:`torch.compile`, built on first use."""
    return torch.compile(_cp_step)


def _project_ball(y: torch.Tensor, radius: float) -> torch.Tensor:
    """Project each pixel's 2-vector (axis -3) of a ``(B, C, 2, H, W)`` field onto the ball of ``radius``."""
    norm = torch.sqrt((y * y).sum(-3, keepdim=True))
    return y / torch.clamp(norm / radius, min=1.0)


def huber_tv_dual_prox(y: torch.Tensor, sigma: torch.Tensor, eta: float, epsilon: float) -> torch.Tensor:
    """``prox_{σ(ηH_ε)*}`` of eq. (20): scale by ``1/(1 + σε/η)``, then project onto the ``η``-ball.

    ``(ηH_ε)*(y) = ε/(2η) |y|² + ι_{|y| ≤ η}`` pixelwise (eq. 18's footnote; eq. 20 prints the scaling as
    ``1 + σε``, which is the case ``η = 1``).
    """
    return _project_ball(y / (1 + sigma * epsilon / eta), eta)


def huber_tv_gap(p: torch.Tensor, y: torch.Tensor, z: torch.Tensor, step: torch.Tensor, eta: float, epsilon: float):
    """Primal value, dual value and relative gap of the Huber-TV prox problem (17)–(18), each ``(B,)``.

    Primal ``P(p) = η Σ H_ε(|∇p|) + Σ (p − z)² / (2ζ)``; dual
    ``D(y) = −ε/(2η) ‖y‖² − Σ ζ/2 (div y)² − ⟨z, div y⟩`` for ``|y| ≤ η``. ``P(p) − D(y) ≥ 0``, with equality at
    the saddle point. ``step`` (``ζ``) is ``(B, 1, 1, 1)`` or element-wise ``(B, C, H, W)``.
    """
    s = step.reshape(p.shape[0], *([1] * (p.ndim - 1))) if step.numel() == p.shape[0] else step
    r = p - z
    primal = eta * huber_tv(p, epsilon) + (r * r / (2 * s)).flatten(1).sum(1)
    dv = div(y, bc="neumann")
    dual = -epsilon / (2 * eta) * (y * y).flatten(1).sum(1) - 0.5 * (s * dv * dv).flatten(1).sum(1)
    dual = dual - (z * dv).flatten(1).sum(1)
    rel = (primal - dual) / torch.maximum(primal.abs(), dual.abs()).clamp_min(torch.finfo(p.dtype).tiny)
    return primal, dual, rel


def prox_huber_tv(
    z: torch.Tensor,
    step: torch.Tensor | float,
    *,
    eta: float,
    epsilon: float = 0.05,
    y0: torch.Tensor | None = None,
    max_iter: int = 10000,
    tol: float = 1e-4,
    check_every: int = 5,
    compile: bool = False,
) -> SolverResult:
    """``prox_{ζηH_ε}(z) = argmin_p η H_ε(∇p) + Σ (p − z)² / (2ζ)`` by the primal–dual algorithm, eqs. (17)–(20).

    Both ``G(p) = Σ (p − z)²/(2ζ)`` (modulus ``1/max ζ``) and ``(ηH_ε)*`` (modulus ``ε/η``) are strongly convex,
    so the linearly convergent step rule is used, with ``‖∇‖² ≤ 8``. The stopping quantity is the relative
    primal–dual gap of :func:`huber_tv_gap` (the paper stops at ``1e-4``).

    The step may vary per pixel (``ζ`` element-wise): that is the prox of ``ηH_ε`` in the diagonal metric
    ``diag(1/ζ)``, as needed by a variable-metric iPiano; ``prox_{τG}`` stays closed-form pixel by pixel.

    Args:
        z: ``(B, C, H, W)`` point to map.
        step: ``ζ > 0``, a float, one per sample (``(B,)`` or ``(B, 1, 1, 1)``) or one per element
            (``(B, C, H, W)``, or broadcastable to it).
        eta: weight ``η > 0``.
        epsilon: Huber smoothing ``ε > 0``.
        y0: ``(B, C, 2, H, W)`` dual warm start (default zeros).
        max_iter, tol, check_every, compile: see :func:`chambolle_pock` (one more host synchronisation here, to
            check the step).

    Returns:
        :class:`SolverResult`: ``solution`` the prox ``(B, C, H, W)``, ``info["dual"]`` the dual field,
        ``history`` the relative gaps.

    Example:
        >>> z = torch.rand(1, 3, 16, 20, dtype=torch.float64)
        >>> res = prox_huber_tv(z, 0.5, eta=0.1, tol=1e-8)
        >>> bool(res.converged.all()) and res.solution.shape == z.shape
        True
    """
    if eta <= 0 or epsilon <= 0:
        raise ValueError(f"eta and epsilon must be > 0, got eta={eta}, epsilon={epsilon}")
    batch = z.shape[0]
    elementwise = isinstance(step, torch.Tensor) and step.numel() > batch
    if elementwise:
        try:
            sb = torch.broadcast_to(step.to(device=z.device, dtype=z.dtype), z.shape)
        except RuntimeError as err:
            raise ValueError(f"step of shape {tuple(step.shape)} does not broadcast to z {tuple(z.shape)}") from err
        s_max = sb.flatten(1).amax(1)
    else:
        s_max = _per_sample(step, batch, z)
        sb = _b(z, s_max)
    if bool((sb <= 0).any()):
        raise ValueError(f"step must be > 0, got min {sb.min().item():g}")
    y_init = torch.zeros(*z.shape[:2], 2, *z.shape[2:], dtype=z.dtype, device=z.device) if y0 is None else y0

    def prox_g(p, t):
        return (p / t + z / sb) / (1 / t + 1 / sb)

    def prox_fs(y, sig):
        return huber_tv_dual_prox(y, sig, eta, epsilon)

    def gap(p, y):
        return huber_tv_gap(p, y, z, sb, eta, epsilon)[2]

    return chambolle_pock(
        lambda p: grad(p, bc="neumann"),
        lambda y: -div(y, bc="neumann"),
        prox_g,
        prox_fs,
        z,
        y_init,
        op_norm=math.sqrt(8.0),
        strong_convexity=1 / s_max,
        dual_strong_convexity=epsilon / eta,
        gap=gap,
        max_iter=max_iter,
        tol=tol,
        check_every=check_every,
        compile=compile,
    )


__all__ = ["chambolle_pock", "huber_tv_dual_prox", "huber_tv_gap", "prox_huber_tv"]
