"""Osmosis image fusion: the linear osmosis filter and the variational osmosis model (Parisotto et al.).

* :func:`linear_osmosis` — the isotropic osmosis evolution ``u_t = div(∇u − d u)``, ``d = ∇ log v`` (eqs. 6–8),
  by implicit steps (conjugate gradients on a symmetrised system, unconditionally stable) or explicit steps
  (step limit enforced). Mass is conserved, positivity preserved, and the steady state is ``(µ_{u0}/µ_v) v``.
* :func:`osmosis_filter_fusion` — the osmosis filter used as a fusion baseline (paper Fig. 4d): the drift is
  ``∇ log f`` inside the region, ``∇ log b`` outside and the average of the two on the edges that cross.
* :func:`osmosis_fusion` — the joint model (1), ``min_{u,v} O(u, v) + γ D(u) + η R(v)``, by block-coordinate
  iPiano (Algorithm 1) with the closed-form prox (16) for ``u`` and the primal–dual prox (17)–(20) for ``v``;
  by default the ``u``-block is minimised exactly (:func:`solve_u_block`, preconditioned conjugate gradients).

What the variational model does where ``α = 0``. Nothing in model (1) ties ``u`` to the background ``b``: ``b``
enters only through ``v ≈ f^α b^{1−α}``, and the osmosis term fixes ``u`` only up to ``u = w·v`` with ``w``
``h``-harmonic there (for fixed ``v`` it is ``½ Σ h(v) |∇(u/v)|²``). Per channel and connected part, ``w`` is a
free constant if ``γα`` vanishes on the whole part (the minimisers form a ray ``{c·v}``, so the start ``u0`` picks
the scale: this is the paper's Fig. 3 with ``γ = 0``); otherwise ``w`` is the harmonic extension of the ratio
``u/v`` where ``γα`` pins ``u`` to ``f``, which across the seam is about ``(f/b)^{1−α}``. So the minimiser
paints the structure of ``b`` with the colours of ``f``: the background comes out multiplied, per channel and
smoothly in space, by the foreground-to-background ratio along the seam. That is what the model is for — two
images of the same scene under different light or in different modalities (visible and infrared, paper Figs.
1, 6, 7; see ``datasets/samples/osmosis``), where that ratio is the change of light and the result keeps the
colours of ``f``. For an object cut from one photograph and pasted into an unrelated one it re-colours the whole
background (even a one-pixel region does), and Poisson editing (:mod:`fusion.methods.poisson`) is the right tool.
The scale direction is also the flattest of the energy (the lowest eigenvector of the ``u``-block Hessian is
``φ·v`` with ``φ`` smooth, about 0 in the ``α``-region and growing away from it): solvers with diagonal steps
(``metric="curvature"``, ``"identity"``) creep along it and meet the relative-energy stopping rule long before
reaching the minimiser, keeping much of the colours of their start; ``metric="newton_u"`` reaches it.

Positivity. Osmosis needs strictly positive images (it works with ``log v`` and ``u / v``). All functions here
take images in [0, 1] and add a constant ``offset`` before solving, then subtract it from what they return
(:func:`osmosis_fusion` also rescales to [0, 255], see there).
The offset must leave every pixel positive; a larger offset improves the conditioning near black pixels at
the price of weakening the invariance to multiplicative brightness changes (``c f + o ≠ c (f + o)``).

Gradients. Every function here backpropagates to its image inputs: the linear solves of the implicit time steps
by implicit differentiation (one adjoint solve per step), the explicit steps by autograd, and the variational
minimiser by the implicit function theorem (:func:`fusion.optim.implicit.implicit_minimiser`). The α-map is
thresholded from the mask and carries no gradient to it (:func:`alpha_map` refuses a mask that requires grad).

Convergence. Each iterative function reports a sample that stops before its tolerance with one
:class:`fusion.ConvergenceWarning` and says so in its :class:`SolverResult` (``criterion``, ``tol``, ``reached``).
"""

from __future__ import annotations

import warnings
from typing import Callable, Literal

import torch

from fusion import ConvergenceWarning
from fusion.energies.osmosis import (
    fidelity_energy,
    geometric_blend,
    huber_tv,
    osmosis_curvature,
    osmosis_fusion_term,
    osmosis_grad_v,
    prox_fidelity,
    u_block_hessian,
    variational_osmosis_energy,
)
from fusion.methods.registry import MethodOutput, register
from fusion.metrics import chromaticity_error
from fusion.ops.cg import bicgstab, conjugate_gradient
from fusion.ops.checks import check_batch, check_image, check_max_iter, check_same_size, check_tol
from fusion.ops.filters import gaussian_blur_dct
from fusion.ops.osmosis import (
    canonical_drift,
    harmonic_edge_weights,
    osmosis_operator,
    osmosis_operator_adjoint,
    osmosis_operator_diagonal,
    osmosis_stiffness,
    stiffness_diagonal,
)
from fusion.ops.result import SolverResult, warn_unconverged
from fusion.optim.implicit import implicit_minimiser
from fusion.optim.ipiano import ipiano
from fusion.optim.primal_dual import prox_huber_tv

Scheme = Literal["implicit", "explicit"]
Init = Literal["f", "alpha", "average"]
AlphaKind = Literal["binary", "gaussian", "constant"]
MetricKind = Literal["newton_u", "curvature", "identity"]

DEFAULT_OFFSET = 1.0 / 255.0
#: What ``converged`` of :func:`osmosis_fusion` measures, for every ``metric``.
ENERGY_CRITERION = "relative change of E(u, v) in the last iteration"
#: What ``converged`` of the implicit time steps measures.
STEP_CRITERION = "largest relative residual of the implicit steps' linear solves"


# ----------------------------------------------------------------------------------------------- validation


def _check_positive_after_offset(x: torch.Tensor, name: str, offset: float) -> None:
    low = float(x.detach().min()) + offset
    if not low > 0:
        raise ValueError(
            f"{name} must be positive after adding offset={offset:g}; its minimum is {float(x.detach().min()):g} "
            "(raise offset or shift the image)"
        )


def _check_alpha(alpha: object, name: str = "alpha") -> torch.Tensor:
    alpha = check_image(alpha, name, channels=1)
    lo, hi = float(alpha.detach().min()), float(alpha.detach().max())
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} values must lie in [0, 1], got range [{lo:g}, {hi:g}]")
    return alpha


def _check_pair(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> int:
    check_image(a, name_a)
    check_image(b, name_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} channel counts differ: {a.shape[1]} vs {b.shape[1]}")
    check_same_size(**{name_a: a, name_b: b})
    if a.dtype != b.dtype or a.device != b.device:
        raise TypeError(
            f"{name_a} and {name_b} must share dtype and device, got {a.dtype}/{a.device} and {b.dtype}/{b.device}"
        )
    return check_batch(**{name_a: a, name_b: b})


def _check_count(value: object, name: str) -> int:
    """A number of steps or iterations that may be 0 (``steps``, ``min_iter``)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
    return value


def _check_time_stepping(tau: float, steps: int, scheme: str, max_iter: int, tol: float) -> None:
    if not tau > 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    _check_count(steps, "steps")
    if scheme not in ("implicit", "explicit"):
        raise ValueError(f"scheme must be 'implicit' or 'explicit', got {scheme!r}")
    check_max_iter(max_iter, "max_iter")
    check_tol(tol, "tol")


# ----------------------------------------------------------------------------------------------- α-maps


def alpha_map(
    mask: torch.Tensor | None = None,
    *,
    kind: AlphaKind = "binary",
    sigma: float = 5.0,
    value: float = 0.5,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """α-map for the fusion models (paper Section III, eq. 9, and Fig. 2).

    Not differentiable in ``mask`` (it is thresholded at ½): a mask that requires grad is refused.

    Args:
        mask: ``(B, 1, H, W)`` region of the foreground, in [0, 1] (not needed for ``"constant"``).
        kind: ``"binary"`` — 1 where ``mask > 0.5`` and 0 elsewhere; ``"gaussian"`` — the binary map blurred
            by a Gaussian of standard deviation ``sigma`` pixels (half-sample mirror boundaries, kernel radius
            ``int(4σ + ½)``: ``scipy.ndimage.gaussian_filter(..., mode="reflect")``), eq. (9);
            ``"constant"`` — ``value`` everywhere.
        sigma: blur width for ``"gaussian"`` (the paper's face fusion uses 5).
        value: the constant for ``"constant"``, in [0, 1].
        like: ``(B, C, H, W)`` image giving the size, dtype and device for ``"constant"`` without a mask.

    Returns:
        ``(B, 1, H, W)`` α-map in [0, 1].

    Example:
        >>> m = torch.zeros(1, 1, 8, 8); m[..., 2:6, 2:6] = 1
        >>> a = alpha_map(m, kind="gaussian", sigma=1.0)
        >>> bool(a.min() >= 0) and bool(a.max() <= 1) and a.shape == m.shape
        True
    """
    if isinstance(mask, torch.Tensor) and mask.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "alpha_map thresholds the mask at 0.5 and has no gradient with respect to it; pass mask.detach()"
        )
    if kind == "constant":
        if not 0 <= value <= 1:
            raise ValueError(f"constant alpha value must lie in [0, 1], got {value}")
        ref = mask if mask is not None else like
        if ref is None:
            raise ValueError("alpha_map(kind='constant') needs mask or like to know the image size")
        check_image(ref, "mask" if mask is not None else "like")
        return torch.full((ref.shape[0], 1, *ref.shape[-2:]), float(value), dtype=ref.dtype, device=ref.device)
    if kind not in ("binary", "gaussian"):
        raise ValueError(f"alpha kind must be 'binary', 'gaussian' or 'constant', got {kind!r}")
    if mask is None:
        raise ValueError(f"alpha_map(kind={kind!r}) needs a mask")
    mask = _check_alpha(mask, "mask")
    binary = (mask > 0.5).to(mask.dtype)
    if kind == "binary":
        return binary
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return gaussian_blur_dct(binary, sigma).clamp(0, 1)


# ----------------------------------------------------------------------------------------------- linear solves


Operator = Callable[[torch.Tensor], torch.Tensor]
Solver = Callable[..., SolverResult]


class _SolveSpec:
    """What :class:`_LinearSolve` needs besides tensors: operator factories, the Krylov solver and its limits."""

    def __init__(self, operator, transpose, solver: Solver, max_iter: int, tol: float, method: str) -> None:
        self.operator = operator  # (*params) -> (x ↦ M x, r ↦ P⁻¹ r)
        self.transpose = transpose  # (*params) -> (y ↦ Mᵀ y, r ↦ P⁻ᵀ r)
        self.solver = solver
        self.max_iter = max_iter
        self.tol = tol
        self.method = method
        self.result: SolverResult | None = None


class _LinearSolve(torch.autograd.Function):
    """``x = M(θ)⁻¹ r`` by a Krylov solver, differentiated implicitly: for a cotangent ``g`` of ``x``,
    ``λ = M⁻ᵀ g`` (one adjoint solve), ``∂r = λ`` and ``∂θ = −∂_θ ⟨λ, M(θ) x⟩``."""

    @staticmethod
    def forward(ctx, spec: _SolveSpec, rhs: torch.Tensor, x0: torch.Tensor, *params: torch.Tensor):  # noqa: ANN205
        apply, precondition = spec.operator(*params)
        res = spec.solver(apply, rhs, x0, precondition=precondition, max_iter=spec.max_iter, tol=spec.tol)
        spec.result = res
        ctx.spec = spec
        ctx.save_for_backward(res.solution, *params)
        return res.solution.clone()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: ANN205
        spec: _SolveSpec = ctx.spec
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


def _solve(
    spec: _SolveSpec, rhs: torch.Tensor, x0: torch.Tensor, *params: torch.Tensor
) -> tuple[torch.Tensor, SolverResult]:
    x = _LinearSolve.apply(spec, rhs, x0, *params)
    assert spec.result is not None
    return x, spec.result


def _spd_step_operator(tau: float):
    """``(V + τ S_h) w`` of an implicit osmosis step in the symmetric variable ``w = u⁺ / v``, Jacobi-preconditioned."""

    def operator(v: torch.Tensor, weights: torch.Tensor):
        diag = v + tau * stiffness_diagonal(weights)
        return (lambda x: v * x + tau * osmosis_stiffness(x, weights)), (lambda r: r / diag)

    return operator


def _mixed_step_operator(tau: float):
    """``(I − τA) S w`` of an implicit step with a drift of no single image (``S = diag(scaling)``), and its
    transpose ``S (I − τAᵀ)``; both Jacobi-preconditioned by ``diag(S (I − τA))``."""

    def operator(drift: torch.Tensor, scaling: torch.Tensor):
        diag = scaling * (1 - tau * osmosis_operator_diagonal(drift))
        return (lambda x: scaling * x - tau * osmosis_operator(scaling * x, drift)), (lambda r: r / diag)

    def transpose(drift: torch.Tensor, scaling: torch.Tensor):
        diag = scaling * (1 - tau * osmosis_operator_diagonal(drift))
        return (lambda y: scaling * (y - tau * osmosis_operator_adjoint(y, drift))), (lambda r: r / diag)

    return operator, transpose


# ----------------------------------------------------------------------------------------------- linear filter


def max_explicit_step(drift: torch.Tensor) -> float:
    """Largest explicit time step ``τ = 1 / max |diag A|`` that keeps ``u + τ A u`` non-negative."""
    return 1.0 / float(osmosis_operator_diagonal(drift.detach()).abs().max())


def _osmosis_evolution(
    u0: torch.Tensor,
    *,
    tau: float,
    steps: int,
    scheme: Scheme,
    drift: torch.Tensor | None,
    v: torch.Tensor | None,
    max_iter: int,
    tol: float,
    scaling: torch.Tensor | None = None,
    method: str,
) -> SolverResult:
    """Time-step ``u_t = A u`` from positive ``u0``: ``v`` given → symmetrised CG; otherwise BiCGSTAB on the drift.

    Differentiable: every linear solve is a :class:`_LinearSolve`, the explicit steps plain autograd.
    """
    if drift is None:
        drift = canonical_drift(v)
    if scheme == "explicit":
        limit = max_explicit_step(drift)
        if tau > limit:
            raise ValueError(f"explicit osmosis step tau={tau:g} exceeds the stability limit {limit:g}")
    batch = u0.shape[0]
    u = u0
    masses = [u.detach().sum((-2, -1))]
    changes = [torch.zeros(batch, dtype=u.dtype, device=u.device)]
    ok = torch.ones(batch, dtype=torch.bool, device=u.device)
    worst = torch.zeros(batch, dtype=u.dtype, device=u.device)
    krylov = 0
    if scheme == "implicit" and v is not None:
        weights = harmonic_edge_weights(v)
        w = (u / v).detach()
        operator = _spd_step_operator(tau)
    elif scheme == "implicit":
        scaling = torch.ones_like(u) if scaling is None else scaling
        operator, transpose = _mixed_step_operator(tau)
    for _ in range(steps):
        if scheme == "explicit":
            new = u + tau * osmosis_operator(u, drift)
        elif v is not None:
            # (I − τA) u⁺ = u with A u = −S(u/v): solve the SPD system (V + τS) w = u, then u⁺ = v w.
            spec = _SolveSpec(operator, operator, conjugate_gradient, max_iter, tol, method)
            w, res = _solve(spec, u, w.detach(), v, weights)
            new = v * w
        else:
            # (I − τA) u⁺ = u in the variable w = u⁺ / s: (I − τA) S w = u is nearly symmetric positive definite
            # when the drift is close to the canonical drift of s (exactly so where it equals it).
            spec = _SolveSpec(operator, transpose, bicgstab, max_iter, tol, method)
            x, res = _solve(spec, u, (u / scaling).detach(), drift, scaling)
            new = scaling * x
        if scheme == "implicit":
            final = res.history[-1]
            ok &= res.converged
            worst = torch.maximum(worst, torch.where(torch.isfinite(final), final, torch.full_like(final, torch.inf)))
            krylov += res.iterations
        d = new.detach()
        changes.append((d - u.detach()).flatten(1).norm(dim=1) / d.flatten(1).norm(dim=1))
        u = new
        masses.append(d.sum((-2, -1)))
    implicit = scheme == "implicit"
    return SolverResult(
        solution=u,
        iterations=steps,
        history=torch.stack(changes),
        converged=ok,
        info={"mass": torch.stack(masses), "krylov_iterations": krylov, "drift": drift.detach()},
        criterion=STEP_CRITERION if implicit else "explicit steps (no linear solve)",
        tol=float(tol) if implicit else None,
        reached=worst if implicit else None,
    )


def linear_osmosis(
    u0: torch.Tensor,
    v: torch.Tensor,
    *,
    tau: float,
    steps: int,
    scheme: Scheme = "implicit",
    offset: float = 0.0,
    max_iter: int = 2000,
    tol: float = 1e-8,
) -> SolverResult:
    """Linear isotropic osmosis filter, eqs. (6)–(8) with ``W = I``: evolve ``u0`` towards ``(µ_{u0}/µ_v) v``.

    Discretisation: conservative fluxes ``(u_{i+1} − u_i) − d_{i+1/2} (u_i + u_{i+1})/2`` with the drift
    ``d_{i+1/2} = 2 (v_{i+1} − v_i)/(v_{i+1} + v_i)`` at half-grid points and no flux across the image border
    (:mod:`fusion.ops.osmosis`). Schemes, ``u^{k+1} = P u^k`` (eq. 8):

    * ``"implicit"``: ``(I − τA) u^{k+1} = u^k``. Since ``A u = −S(u/v)`` with ``S`` symmetric, this is the
      SPD system ``(V + τS) w = u^k``, ``u^{k+1} = V w``, solved by Jacobi-preconditioned conjugate gradients.
      Stable for every ``τ > 0``; ``I − τA`` is an M-matrix, so positivity is preserved.
    * ``"explicit"``: ``u^{k+1} = u^k + τ A u^k``, requiring ``τ ≤ 1 / max |diag A|`` (checked; < 1/4 in
      general, at most 1/8 when ``v`` is nearly constant). Positivity holds under that limit.

    Both schemes conserve the mass ``Σ u`` of every channel and have the steady state ``(µ_{u0}/µ_v) v``.
    The filter runs exactly ``steps`` steps; ``converged`` says whether every implicit step's linear solve met
    ``tol`` (relative residual), and a sample whose solves did not emits :class:`fusion.ConvergenceWarning`.

    Differentiable in ``u0`` and ``v``: each implicit step is differentiated implicitly (one adjoint CG solve
    with the same ``max_iter``/``tol``), the explicit steps by autograd.

    Args:
        u0: ``(B, C, H, W)`` initial image, positive after ``offset``.
        v: ``(B, C, H, W)`` image whose structure is imposed, positive after ``offset``.
        tau: time step ``τ > 0``.
        steps: number of time steps (``≥ 0``).
        scheme: ``"implicit"`` or ``"explicit"``.
        offset: constant added to both images before the evolution and removed from the result.
        max_iter, tol: conjugate-gradient limits for each implicit step (``max_iter ≥ 1``, relative residual).

    Returns:
        :class:`SolverResult`: ``solution`` the ``(B, C, H, W)`` image after ``steps`` steps; ``history`` the
        ``(steps + 1, B)`` relative change ``‖u^{k+1} − u^k‖ / ‖u^{k+1}‖`` of each step (0 first);
        ``converged`` whether every linear solve met ``tol`` (``criterion``, ``tol`` and ``reached``, the
        ``(B,)`` largest final relative residual over the steps; always true for ``"explicit"``);
        ``info["mass"]`` the ``(steps + 1, B, C)`` channel masses, ``info["steady_state"]`` the predicted limit
        ``(µ_{u0}/µ_v) v``.

    Example:
        >>> v = torch.rand(1, 3, 16, 16, dtype=torch.float64) + 0.1
        >>> u0 = torch.rand(1, 3, 16, 16, dtype=torch.float64) + 0.1
        >>> res = linear_osmosis(u0, v, tau=1e4, steps=5)
        >>> torch.allclose(res.solution, res.info["steady_state"], atol=1e-6)
        True
    """
    batch = _check_pair(u0, v, "u0", "v")
    _check_positive_after_offset(u0, "u0", offset)
    _check_positive_after_offset(v, "v", offset)
    _check_time_stepping(tau, steps, scheme, max_iter, tol)
    shape = (batch, u0.shape[1], *u0.shape[-2:])
    u0p = (u0 + offset).expand(shape)
    vp = (v + offset).expand(shape)
    res = _osmosis_evolution(
        u0p, tau=tau, steps=steps, scheme=scheme, drift=None, v=vp, max_iter=max_iter, tol=tol, method="linear_osmosis"
    )
    steady = u0p.mean((-2, -1), keepdim=True) / vp.mean((-2, -1), keepdim=True) * vp
    res.solution = res.solution - offset
    res.info["steady_state"] = steady - offset
    return warn_unconverged(res, "linear_osmosis")


def fusion_drift(fg: torch.Tensor, bg: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Drift of the osmosis fusion baseline: ``∇ log fg`` on edges inside the region, ``∇ log bg`` outside and
    the average of the two on the edges that cross its boundary (the transition zone).

    Args:
        fg, bg: ``(B, C, H, W)`` positive images.
        region: ``(B, 1, H, W)`` in [0, 1]; pixels ``> 0.5`` are inside.

    Returns:
        ``(B, C, 2, H, W)`` drift on the forward-difference edges.
    """
    r = (region > 0.5).to(fg.dtype)
    # fraction of the two ends of each edge that lie inside: 1, 0 or ½ (crossing edge)
    inside_y = torch.cat([0.5 * (r[..., :-1, :] + r[..., 1:, :]), r[..., -1:, :]], dim=-2)
    inside_x = torch.cat([0.5 * (r[..., :, :-1] + r[..., :, 1:]), r[..., :, -1:]], dim=-1)
    weight = torch.stack([inside_y, inside_x], dim=-3)
    return weight * canonical_drift(fg) + (1 - weight) * canonical_drift(bg)


def osmosis_filter_fusion(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    u0: torch.Tensor | None = None,
    tau: float = 1000.0,
    steps: int = 10,
    scheme: Scheme = "implicit",
    offset: float = DEFAULT_OFFSET,
    max_iter: int = 2000,
    tol: float = 1e-8,
) -> SolverResult:
    """Osmosis filter fusion (the paper's Fig. 4d baseline, after Weickert et al. 2013).

    Evolves ``u0`` (default: the composite ``mask·fg + (1 − mask)·bg``) under ``u_t = div(∇u − d u)`` with the
    drift of :func:`fusion_drift`. The drift is not the gradient of one log-image, so the implicit system is
    not symmetric; it is solved by BiCGSTAB. The steady state glues ``fg`` multiplicatively into ``bg``: it is
    the positive null vector of the mixed-drift operator with the mass of ``u0`` (per channel). The mixed drift
    is not curl-free across the seam, so that state carries a circulating flux there and is not exactly a
    multiple of ``fg`` inside and of ``bg`` outside.

    ``converged`` says whether every implicit step's BiCGSTAB solve met ``tol``; a sample whose solves did not
    emits :class:`fusion.ConvergenceWarning`. Differentiable in ``fg``, ``bg`` and ``u0`` (implicit
    differentiation of each step, one adjoint BiCGSTAB solve with ``Aᵀ``); not in ``mask`` (thresholded).

    Args:
        fg, bg: ``(B, C, H, W)`` images in [0, 1] (``fg`` already placed on the canvas).
        mask: ``(B, 1, H, W)`` region of ``fg``, in [0, 1].
        u0: initial image (default: the composite).
        tau, steps, scheme: time stepping as in :func:`linear_osmosis`.
        offset: positivity offset (see the module docstring).
        max_iter, tol: BiCGSTAB limits per implicit step (``max_iter ≥ 1``, relative residual).

    Returns:
        :class:`SolverResult` as in :func:`linear_osmosis` (``solution`` in the input scale).

    Example:
        >>> fg, bg = torch.rand(1, 3, 24, 32) + 0.1, torch.rand(1, 3, 24, 32) + 0.1
        >>> m = torch.zeros(1, 1, 24, 32); m[..., 6:18, 8:24] = 1
        >>> osmosis_filter_fusion(fg, bg, m, steps=2).solution.shape
        torch.Size([1, 3, 24, 32])
    """
    batch = _check_pair(fg, bg, "fg", "bg")
    mask = _check_alpha(mask, "mask")
    check_same_size(fg=fg, mask=mask)
    batch = check_batch(fg=fg, bg=bg, mask=mask)
    _check_positive_after_offset(fg, "fg", offset)
    _check_positive_after_offset(bg, "bg", offset)
    _check_time_stepping(tau, steps, scheme, max_iter, tol)
    shape = (batch, fg.shape[1], *fg.shape[-2:])
    f, b = (fg + offset).expand(shape), (bg + offset).expand(shape)
    mask = mask.detach().to(fg.dtype)
    composite = mask * f + (1 - mask) * b
    if u0 is None:
        start = composite
    else:
        _check_pair(u0, fg, "u0", "fg")
        check_batch(u0=u0, fg=fg, bg=bg, mask=mask)
        _check_positive_after_offset(u0, "u0", offset)
        start = (u0 + offset).expand(shape)
    drift = fusion_drift(f, b, mask)
    res = _osmosis_evolution(
        start,
        tau=tau,
        steps=steps,
        scheme=scheme,
        drift=drift,
        v=None,
        max_iter=max_iter,
        tol=tol,
        scaling=composite,
        method="osmosis_filter_fusion",
    )
    res.solution = res.solution - offset
    return warn_unconverged(res, "osmosis_filter_fusion")


# ----------------------------------------------------------------------------------------------- variational model


def initial_image(f: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, init: Init) -> torch.Tensor:
    """Initialisations of the paper's Fig. 3: ``"f"``, ``"alpha"`` (``α f + (1 − α) b``) or ``"average"``."""
    if init == "f":
        return f.clone()
    if init == "alpha":
        return alpha * f + (1 - alpha) * b
    if init == "average":
        return 0.5 * (f + b)
    raise ValueError(f"init must be 'f', 'alpha' or 'average', got {init!r}")


def _u_block_operator(gamma: float):
    def operator(v: torch.Tensor, alpha: torch.Tensor):
        apply, diag = u_block_hessian(v, alpha, gamma)
        # a 1×1 image with α = 0 has a zero diagonal; keep the preconditioner finite
        diag = diag.clamp_min(torch.finfo(v.dtype).tiny)
        return apply, (lambda r: r / diag)

    return operator


def solve_u_block(
    v: torch.Tensor,
    f: torch.Tensor,
    alpha: torch.Tensor,
    *,
    gamma: float,
    u0: torch.Tensor | None = None,
    max_iter: int = 5000,
    tol: float = 1e-8,
) -> SolverResult:
    """Exact minimiser in ``u`` of ``O(u, v) + γ D(u)`` (eqs. 11–12) for a fixed ``v``.

    For fixed ``v`` this part of model (1) is a convex quadratic in ``u`` (eq. 14 is linear in ``u``); its
    minimiser solves the symmetric positive definite system
    ``(V⁻¹ S_h V⁻¹ + γ diag(α)) u = γ α f`` (:func:`fusion.energies.osmosis.u_block_hessian`), here by
    Jacobi-preconditioned conjugate gradients. Every CG iterate started from ``u0`` has a lower block energy than
    ``u0`` (CG minimises the quadratic over a growing affine subspace through ``u0``), so an inexact solve still
    decreases ``E``. The images are in the units of the model (scaled and offset, see :func:`osmosis_fusion`).
    Where ``γα = 0`` the solution is ``u = w·v`` with ``w`` harmonic for the edge weights of ``v`` (the module
    docstring explains what that does to a background).

    A sample whose solve stops before ``tol`` emits :class:`fusion.ConvergenceWarning`. Differentiable in ``v``,
    ``f`` and ``alpha`` (implicit differentiation: one adjoint CG solve with the same limits); not in ``u0``.

    Args:
        v: ``(B, C, H, W)`` positive structure image.
        f: ``(B, C, H, W)`` foreground.
        alpha: ``(B, 1, H, W)`` α-map in [0, 1].
        gamma: weight ``γ ≥ 0``; with ``γ α = 0`` on a whole channel the minimisers are the multiples of ``v``
            (CG then keeps the component of ``u0`` along ``v``).
        u0: ``(B, C, H, W)`` warm start (default ``f``).
        max_iter, tol: CG limits (``max_iter ≥ 1``; relative residual ``‖γαf − H u‖ ≤ tol ‖γαf‖``).

    Returns:
        :class:`SolverResult` of the CG solve: ``solution`` the ``(B, C, H, W)`` minimiser, ``history`` the relative
        residuals, ``criterion``/``tol``/``reached`` the final relative residual per sample.

    Example:
        >>> v = 200 * torch.rand(1, 3, 12, 14, dtype=torch.float64) + 10
        >>> f = 200 * torch.rand(1, 3, 12, 14, dtype=torch.float64) + 10
        >>> alpha = torch.zeros(1, 1, 12, 14, dtype=torch.float64); alpha[..., 3:9, 4:10] = 1
        >>> res = solve_u_block(v, f, alpha, gamma=1.0, tol=1e-12)
        >>> from fusion.energies.osmosis import osmosis_grad_u
        >>> grad = osmosis_grad_u(res.solution, v) + alpha * (res.solution - f)  # ∂_u (O + γD) vanishes
        >>> bool(grad.abs().max() < 1e-8) and bool(res.converged.all())
        True
    """
    if not gamma >= 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    check_max_iter(max_iter, "max_iter")
    check_tol(tol, "tol")
    _check_pair(v, f, "v", "f")
    alpha = _check_alpha(alpha)
    check_same_size(v=v, alpha=alpha)
    batch = check_batch(v=v, f=f, alpha=alpha)
    if not float(v.detach().min()) > 0:
        raise ValueError(f"v must be positive, its minimum is {float(v.detach().min()):g}")
    if u0 is not None:
        _check_pair(u0, v, "u0", "v")
        check_batch(u0=u0, v=v)
    shape = (batch, v.shape[1], *v.shape[-2:])
    start = (f if u0 is None else u0).detach().expand(shape)
    spec = _SolveSpec(
        _u_block_operator(gamma), _u_block_operator(gamma), conjugate_gradient, max_iter, tol, "solve_u_block"
    )
    u, res = _solve(spec, (gamma * alpha * f).expand(shape), start, v.expand(shape), alpha.expand(batch, 1, -1, -1))
    res.solution = u
    res.criterion, res.tol, res.reached = "relative residual ‖γαf − H u‖/‖γαf‖", float(tol), res.history[-1]
    return warn_unconverged(res, "solve_u_block")


def _u_block_cg(
    v: torch.Tensor, f: torch.Tensor, alpha: torch.Tensor, gamma: float, u0: torch.Tensor, *, tol: float, max_iter: int
) -> SolverResult:
    """:func:`solve_u_block` without the checks and without autograd (it runs inside the outer iteration)."""
    apply, precondition = _u_block_operator(gamma)(v, alpha)
    shape = torch.broadcast_shapes(v.shape, f.shape)
    rhs = (gamma * alpha * f).expand(shape)
    return conjugate_gradient(apply, rhs, u0.expand(shape), precondition=precondition, max_iter=max_iter, tol=tol)


def _b(x: torch.Tensor, per_sample: torch.Tensor) -> torch.Tensor:
    return per_sample.view(-1, *([1] * (x.ndim - 1)))


def _bsum(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1, dtype=torch.float64).to(x.dtype)


def _energy_stop(history: torch.Tensor, converged: torch.Tensor, tol: float, min_iter: int) -> torch.Tensor:
    """``(B,)`` relative energy change at which each sample stopped, from the ``(K + 1, B)`` energy history.

    A stopped sample is frozen (its energy repeats exactly), so a converged sample stopped at its first iteration
    ``k ≥ min_iter`` whose change is below ``tol``, and any other sample at its last iteration that moved.
    """
    if history.shape[0] < 2:
        return torch.full_like(history[0], torch.inf)
    e = history.double()
    rel = (e[1:] - e[:-1]).abs() / e[1:].abs().clamp_min(torch.finfo(torch.float64).tiny)
    k = torch.arange(1, rel.shape[0] + 1, device=rel.device).unsqueeze(1)
    last = torch.where(rel > 0, k, torch.zeros_like(k)).amax(0).clamp_min(1)
    passed = (rel < tol) & (k >= min_iter)
    first = torch.where(passed, k, torch.full_like(k, rel.shape[0] + 1)).amin(0)
    stop = torch.where(converged & (first <= rel.shape[0]), first, last)
    return rel.gather(0, (stop - 1).unsqueeze(0)).squeeze(0).to(history.dtype)


def _newton_u_ipiano(
    f: torch.Tensor,
    alpha: torch.Tensor,
    target: torch.Tensor,
    u0: torch.Tensor,
    v0: torch.Tensor,
    *,
    eta: float,
    mu: float,
    gamma: float,
    epsilon: float,
    beta: float,
    max_iter: int,
    tol: float,
    min_iter: int,
    prox_max_iter: int,
    prox_tol: float,
    smooth,
    objective,
    step_fraction: float = 0.99,
    lipschitz_growth: float = 2.0,
    max_backtracks: int = 60,
    cg_max_iter: int = 2000,
) -> SolverResult:
    """Block-coordinate minimisation of model (1): exact ``u``-block, then one inertial curvature-metric step in ``v``.

    One iteration (Gauss–Seidel order):

    1. ``u ← argmin_u O(u, v) + γ D(u)`` by :func:`solve_u_block`, warm-started from the current ``u``, to the
       relative residual ``clip(ρ, eps, 1e-2)`` where ``ρ`` is that sample's relative energy change in the previous
       iteration (the solve is as accurate as the outer progress needs, and never increases ``E``).
    2. ``v ← prox^{D}_{ζ ηR}(v − ζ D⁻¹ ∇_v O(u, v) + β (v − v_prev))`` with the per-pixel curvature metric ``D``
       of :func:`fusion.energies.osmosis.osmosis_curvature`, ``ζ = c·2(1−β)/L``, ``L`` backtracked per sample from 1
       (non-decreasing) until the descent inequality of ``O(u, ·)`` holds in the metric ``D`` and ``E`` decreases.
       A trial that leaves ``v > 0``, or an inertial trial that passes the descent test but does not lower ``E``, is
       retried without the inertial term in that iteration; hence ``E`` is non-increasing.

    Per sample: stops when the relative change of ``E`` is below ``tol`` (after ``min_iter`` iterations); a stopped
    sample is frozen. Every quantity (tolerances, steps, Lipschitz estimates, prox warm starts) is per sample, so a
    sample follows the same path alone as in any batch. Images are in the model's units (scaled and offset).
    """
    batch = f.shape[0]
    real, dev = f.dtype, f.device
    eps = torch.finfo(real).eps
    rounding = max(1e-12, 4 * eps)
    u, v = u0.clone(), v0.clone()
    v_prev = v.clone()
    dual = torch.zeros(*v.shape[:2], 2, *v.shape[2:], dtype=real, device=dev)
    lip = torch.ones(batch, dtype=real, device=dev)
    history = [objective(u, v)]
    active = torch.ones(batch, dtype=torch.bool, device=dev)
    converged = torch.zeros_like(active)
    evaluations = torch.zeros(batch, dtype=torch.long, device=dev)
    resets = torch.zeros_like(evaluations)
    rel = torch.ones(batch, dtype=real, device=dev)
    prox_ok = torch.ones_like(active)  # whether the prox that gave the current v met its tolerance
    cg_iterations, prox_iterations, it = 0, 0, 0
    while it < max_iter and bool(active.any()):
        # u block: the exact minimiser for the current v, each sample to its own tolerance (one solve per sample,
        # so that a sample's path never depends on the others of its batch)
        cg_tol = rel.clamp(eps, 1e-2)
        u = u.clone()
        for i in torch.nonzero(active).flatten().tolist():
            one = slice(i, i + 1)
            res_u = _u_block_cg(v[one], f[one], alpha[one], gamma, u[one], tol=float(cg_tol[i]), max_iter=cg_max_iter)
            u[one] = res_u.solution
            cg_iterations += res_u.iterations
        # v block: forward-backward step of O(u, ·) + ηR in the diagonal curvature metric, with backtracking
        o0 = smooth(u, v)
        grad_v = osmosis_grad_v(u, v, target, mu)
        d_u, d_v = osmosis_curvature(u, v, mu)
        floor = eps * torch.maximum(d_u.flatten(1).amax(1), d_v.flatten(1).amax(1))
        d_v = torch.maximum(d_v, _b(d_v, floor))
        e_v = o0 + eta * huber_tv(v, epsilon) if eta > 0 else o0  # the v-dependent part of E
        pending = active.clone()
        inertial = torch.full_like(active, beta > 0)
        candidate, cand_dual, cand_ok = v.clone(), dual.clone(), prox_ok.clone()
        for _ in range(max_backtracks):
            b_i = torch.where(inertial, beta, 0.0).to(real)
            step = _b(v, step_fraction * 2 * (1 - b_i) / lip) / d_v
            z = v - step * grad_v + _b(v, b_i) * (v - v_prev)
            if eta > 0:
                prox = prox_huber_tv(z, step, eta=eta, epsilon=epsilon, y0=dual, max_iter=prox_max_iter, tol=prox_tol)
                trial, trial_dual, trial_ok = prox.solution, prox.info["dual"], prox.converged.reshape(-1)
                prox_iterations += prox.iterations
            else:
                trial, trial_dual, trial_ok = z, dual, torch.ones_like(active)
            evaluations += pending.to(evaluations.dtype)
            d = trial - v
            lhs = smooth(u, trial)
            bound = o0 + _bsum(grad_v * d) + 0.5 * lip * _bsum(d_v * d * d)
            ok = torch.isfinite(lhs) & (lhs <= bound + rounding * bound.abs().clamp_min(1.0))
            # monotone safeguard: the step must also lower E itself. An inertial step that does not is retried with
            # β = 0; a plain one (which the descent test guarantees only up to the accuracy of the inner prox, and
            # barely for β = 0, whose step is close to 2/L) is retried with a larger L
            e_trial = lhs + eta * huber_tv(trial, epsilon) if eta > 0 else lhs
            lower = e_trial <= e_v + rounding * e_v.abs().clamp_min(1.0)
            accept = pending & ok & lower
            candidate = torch.where(_b(v, accept), trial, candidate)
            cand_dual = torch.where(_b(dual, accept), trial_dual, cand_dual)
            cand_ok = torch.where(accept, trial_ok, cand_ok)
            pending &= ~accept
            if not bool(pending.any()):
                break
            dropped = pending & inertial & (~torch.isfinite(lhs) | (ok & ~lower))
            lip = torch.where(pending & (~ok | ~(lower | inertial)), lip * lipschitz_growth, lip)
            resets += dropped.to(resets.dtype)
            inertial &= ~dropped
        failed = pending  # no acceptable v step: stop this sample, not converged
        moved = active & ~pending
        keep = _b(v, moved)
        v_prev = torch.where(keep, v, v_prev)
        v = torch.where(keep, candidate, v)
        dual = torch.where(_b(dual, moved), cand_dual, dual)
        prox_ok = torch.where(moved, cand_ok, prox_ok)
        e_new = objective(u, v)
        it += 1
        rel = (e_new - history[-1]).abs() / e_new.abs().clamp_min(torch.finfo(real).tiny)
        done = moved & (rel < tol) & (it >= min_iter)
        converged |= done
        active &= ~(done | failed)
        history.append(e_new)
    return SolverResult(
        solution=(u, v),
        iterations=it,
        history=torch.stack(history),
        converged=converged,
        info={
            "lipschitz": [None, lip],
            "evaluations": evaluations,
            "inertia_resets": resets,
            "cg_iterations": cg_iterations,
            "prox_iterations": prox_iterations,
            "prox_converged": prox_ok,
        },
    )


def osmosis_fusion(
    fg: torch.Tensor,
    bg: torch.Tensor,
    alpha: torch.Tensor,
    *,
    eta: float = 0.5,
    mu: float = 100.0,
    gamma: float = 1.0,
    init: Init = "f",
    max_iter: int = 10000,
    tol: float = 1e-6,
    epsilon: float = 0.05,
    beta: float = 0.4,
    offset: float = DEFAULT_OFFSET,
    scale: float = 255.0,
    min_iter: int = 10,
    prox_max_iter: int = 10000,
    prox_tol: float | None = None,
    metric: MetricKind = "newton_u",
) -> tuple[torch.Tensor, torch.Tensor, SolverResult]:
    """Variational osmosis fusion, model (1): ``min_{u,v} O(u, v) + γ D(u) + η R(v)``.

    ``O`` is eq. (11) (osmosis energy of ``u`` with respect to ``v`` plus ``µ/2 ‖v − f^α b^{1−α}‖²``), ``D`` the
    foreground fidelity (12) and ``R`` the Huber total variation with ``ε`` (0.05 in the paper). Solved by
    block-coordinate iPiano (Algorithm 1; with ``metric="newton_u"`` the ``u``-block step is exact, see
    below): gradient steps on ``O`` (autograd) with per-sample Lipschitz
    backtracking, inertia ``β`` on both blocks, then the prox of ``γD`` in closed form (16) and the prox of ``ηR``
    by the accelerated primal–dual algorithm (17)–(20), warm-started from its previous dual. Starts from
    ``u = f`` (or ``init``) and ``v = f^α b^{1−α}``; stops when the relative change of ``E`` falls below ``tol``
    (after ``min_iter`` iterations) or after ``max_iter``.

    What the minimiser is. ``u`` is tied to ``f`` where ``γα > 0``; elsewhere only the osmosis term acts, whose
    minimisers are ``u = w·v`` with ``w`` harmonic. So the result keeps ``f`` in the ``α``-region and, outside,
    takes the structure of ``b`` multiplied per channel by the ratio ``f/b`` along the seam (the harmonic
    extension of ``u/v``): fusion of two images of one scene under different light or modalities, as in the
    paper, not cut-and-paste between unrelated photographs (which re-colours the whole background; use Poisson
    editing there). With ``γ = 0`` (or ``α = 0``) the scale of ``u`` on each channel is free (the minimisers form
    a ray ``{c·v}``) and the start ``init`` decides it. With ``γα > 0`` somewhere the minimiser, hence the
    ``"newton_u"`` result, does not depend on ``init``; the diagonal-step solvers stop, by the same rule, at
    points that still depend on it, because the energy is flat along the scale direction (measured in
    BENCHMARKS.md, "Osmosis: why the background changes colour").

    Metric (solver variant; all three minimise the same ``E`` with the same stopping rule). ``O`` is very unevenly
    stiff: its curvature in ``v`` grows like ``u²/v³`` (dark pixels of ``v`` under bright ``u``) and in ``u`` like
    ``1/v``, so one scalar step per block (``metric="identity"``, the paper's scheme) is set by the stiffest pixel
    and crawls everywhere else.

    * ``"curvature"`` runs variable-metric iPiano with a per-pixel diagonal metric ``D`` per block, the Gershgorin
      row sums of the two Hessian blocks of ``O`` at the current iterate
      (:func:`fusion.energies.osmosis.osmosis_curvature`; ``diag(D) ⪰ ∇²O`` blockwise there, so the backtracked
      Lipschitz estimate, relative to ``D``, stays near 1). The gradient step becomes ``ζ D⁻¹ ∇O`` and both proxes
      are taken in the metric ``D``: the closed form (16) with the per-pixel step ``ζ/D``, and the Huber-TV prox
      with a per-pixel weighted data term. Acceptance uses the joint descent test of both blocks (monotone
      decrease of ``E`` for ``β = 0``, up to the accuracy of the inner prox), the Lipschitz estimates start at 1,
      and the inner prox is solved more accurately (``prox_tol``), since the long steps make its error visible in
      ``E``. Its iteration count still grows with the image size: for fixed ``v`` the ``u``-block is a global,
      diffusion-like quadratic problem that no diagonal metric preconditions.
    * ``"newton_u"`` (default) takes the exact Hessian of the ``u``-block as its metric. For fixed ``v``,
      ``O(·, v) + γD`` is the convex quadratic ``½ uᵀ(V⁻¹ S_h V⁻¹ + γ diag(α))u − γ⟨αf, u⟩`` (eqs. 11, 12, 14),
      so the metric step with the prox (16) is the block minimiser itself, computed by Jacobi-preconditioned
      conjugate gradients warm-started from the current ``u`` (:func:`solve_u_block`) to a relative residual that
      follows the sample's outer progress (its previous relative change of ``E``, between machine epsilon and
      1e-2). Then ``v`` takes one inertial forward–backward step in the curvature metric as above, with the
      Huber-TV prox in that metric, backtracked until both the descent inequality of ``O(u, ·)`` and a decrease of
      ``E`` hold (an inertial step that does not lower ``E`` is retried without inertia), so ``E`` is
      non-increasing. Iterations are Gauss–Seidel (``u`` then ``v``). On the benchmark pair this takes tens of
      iterations at every size where ``"curvature"`` takes hundreds to thousands, and stops at a lower energy.

    Batches: every sample is solved independently (own steps, tolerances, prox warm starts, stopping), so a
    sample's result does not depend on the others of its batch.

    Convergence: for every ``metric``, ``converged`` means that the relative change of ``E`` in the sample's last
    iteration was below ``tol`` (``result.criterion``; ``result.reached`` holds the value per sample). A sample that
    reaches ``max_iter``, or finds no acceptable step, emits one :class:`fusion.ConvergenceWarning`. The rule
    measures progress, not distance to the minimiser: along the flat scale direction above the diagonal-step
    solvers meet it far from the minimiser.

    Gradients: differentiable in ``fg``, ``bg`` and ``alpha`` by implicit differentiation of the minimiser of the
    full smooth energy ``O + γD + ηR`` (Huber TV is C¹ and piecewise C²;
    :func:`fusion.optim.implicit.implicit_minimiser`, one adjoint conjugate-gradient solve with the Hessian), for
    every ``metric`` and ``init``; the gradient is as accurate as the forward solve converged. When the
    minimiser is not isolated (``γ = 0``, or ``α = 0`` on a whole sample) it has no derivative, and inputs that
    require grad are refused with a ``ValueError``.

    Scale and positivity: images are in [0, 1]. The model is solved for ``scale · (image + offset)``: with the
    default ``scale = 255`` the intensities are those of the authors' Algorithm 1 ([0, 255]), to which the weights
    µ, γ, η refer (the terms are not homogeneous of the same degree, so the scale matters), and the default offset
    1/255 is one grey level, which keeps ``log v`` and ``u / v`` finite on black pixels (a larger offset hardly
    changes the result: see BENCHMARKS.md). Both images must be positive after the offset. The returned ``u`` and
    ``v`` are mapped back (``x / scale − offset``); the energies in ``result.history`` refer to the scaled, offset
    images.

    Args:
        fg: ``(B, C, H, W)`` foreground ``f``.
        bg: ``(B, C, H, W)`` background ``b`` (register it to ``fg`` first when needed, see
            :func:`fusion.ops.align.align_to`).
        alpha: ``(B, 1, H, W)`` α-map in [0, 1] (see :func:`alpha_map`).
        eta, mu, gamma: model weights ``η`` (TV on ``v``), ``µ`` (``v`` fidelity), ``γ`` (``u`` fidelity).
        init: ``"f"`` (the paper's Algorithm 1), ``"alpha"`` or ``"average"`` (paper Fig. 3).
        max_iter, tol: iPiano limits (``max_iter ≥ 1``).
        epsilon: Huber parameter ``ε``.
        beta: iPiano inertia for both blocks.
        offset: positivity offset, in [0, 1] units.
        scale: intensity scale of the model (255 follows the authors).
        min_iter: iterations always performed.
        prox_max_iter, prox_tol: limits of the inner primal–dual solve (relative gap); ``prox_tol`` defaults to
            1e-4 (the paper's) for ``metric="identity"`` and to ``max(1e-8, 64 eps)`` of the dtype otherwise.
        metric: ``"newton_u"`` (default: exact ``u``-block by PCG, diagonal curvature metric for ``v``),
            ``"curvature"`` (per-pixel diagonal metric for both blocks) or ``"identity"`` (one scalar step per
            block, the original scheme): same model and minimiser, in decreasing order of speed.

    Returns:
        ``(u, v, result)``: the fused image and the structure image, ``(B, C, H, W)`` each in the input scale,
        and the solver's :class:`SolverResult` (``history``: the ``(iterations + 1, B)`` energies ``E(u, v)``;
        ``criterion``/``tol``/``reached``: the stopping rule and each sample's final relative change of ``E``;
        ``info``: ``"lipschitz"`` per block (``None`` for the exact ``u``-block of ``"newton_u"``),
        ``"evaluations"`` and ``"inertia_resets"`` per sample, and for ``"newton_u"`` the total
        ``"cg_iterations"`` of the ``u``-solves and ``"prox_iterations"`` of the Huber-TV proxes).

    Example:
        >>> f, b = torch.rand(1, 3, 16, 16) + 0.1, torch.rand(1, 3, 16, 16) + 0.1
        >>> a = torch.zeros(1, 1, 16, 16); a[..., 4:12, 4:12] = 1
        >>> u, v, res = osmosis_fusion(f, b, a, max_iter=200)
        >>> bool(res.history[-1, 0] < res.history[0, 0])
        True
    """
    batch = _check_pair(fg, bg, "fg", "bg")
    alpha = _check_alpha(alpha)
    check_same_size(fg=fg, alpha=alpha)
    batch = check_batch(fg=fg, bg=bg, alpha=alpha)
    if alpha.dtype != fg.dtype or alpha.device != fg.device:
        raise TypeError(f"alpha must share dtype and device with fg, got {alpha.dtype}/{alpha.device}")
    _check_positive_after_offset(fg, "fg", offset)
    _check_positive_after_offset(bg, "bg", offset)
    for name, val in (("eta", eta), ("mu", mu), ("gamma", gamma)):
        if not val >= 0:
            raise ValueError(f"{name} must be >= 0, got {val}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if not 0 <= beta < 1:
        raise ValueError(f"beta must lie in [0, 1), got {beta}")
    check_max_iter(max_iter, "max_iter")
    check_tol(tol, "tol")
    _check_count(min_iter, "min_iter")
    check_max_iter(prox_max_iter, "prox_max_iter")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if metric not in ("newton_u", "curvature", "identity"):
        raise ValueError(f"metric must be 'newton_u', 'curvature' or 'identity', got {metric!r}")
    if init not in ("f", "alpha", "average"):
        raise ValueError(f"init must be 'f', 'alpha' or 'average', got {init!r}")
    if prox_tol is None:
        # long metric steps need an accurate prox for the energy to decrease; the gap cannot be resolved much below
        # a few dozen ulps of the working precision
        prox_tol = max(1e-8, 64 * torch.finfo(fg.dtype).eps) if metric != "identity" else 1e-4
    check_tol(prox_tol, "prox_tol")
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (fg, bg, alpha))
    if wants_grad and (gamma == 0 or bool((alpha.detach().flatten(1).amax(1) == 0).any())):
        raise ValueError(
            "osmosis_fusion has no gradient with gamma=0 or an all-zero alpha: the scale of u is then free (the "
            "minimisers form a ray c·v), so the minimiser is not a differentiable function of the inputs"
        )
    with torch.no_grad():
        u, v, result = _osmosis_fusion_solve(
            fg.detach(),
            bg.detach(),
            alpha.detach(),
            batch=batch,
            eta=eta,
            mu=mu,
            gamma=gamma,
            init=init,
            max_iter=max_iter,
            tol=tol,
            epsilon=epsilon,
            beta=beta,
            offset=offset,
            scale=scale,
            min_iter=min_iter,
            prox_max_iter=prox_max_iter,
            prox_tol=prox_tol,
            metric=metric,
        )
    result.criterion, result.tol = ENERGY_CRITERION, float(tol)
    result.reached = _energy_stop(result.history, result.converged, tol, min_iter)
    warn_unconverged(result, f"osmosis_fusion (metric={metric})")
    result.converged = _check_final_prox(result, f"osmosis_fusion (metric={metric})", prox_max_iter, prox_tol)
    if wants_grad:
        u, v = _attach_implicit_gradient(
            u, v, fg, bg, alpha, batch=batch, eta=eta, mu=mu, gamma=gamma, epsilon=epsilon, offset=offset, scale=scale
        )
    return u / scale - offset, v / scale - offset, result


def _check_final_prox(result: SolverResult, method: str, prox_max_iter: int, prox_tol: float) -> torch.Tensor:
    """``converged`` and-ed with whether the Huber-TV prox that produced the final ``v`` met its tolerance.

    The energy rule alone would accept an iterate whose inner prox stopped at ``prox_max_iter``: with a cap too
    low for the problem the energy still stops changing, far from the minimiser. Such samples are reported by one
    :class:`fusion.ConvergenceWarning` and are not ``converged``."""
    ok = result.info.get("prox_converged")
    if ok is None:
        return result.converged
    ok = ok.reshape(-1).to(result.converged.device)
    capped = result.converged & ~ok
    if bool(capped.any()):
        samples = [int(i) for i in torch.nonzero(capped).flatten()]
        which = ("sample " if len(samples) == 1 else "samples ") + ", ".join(str(i) for i in samples[:8])
        batch = ok.numel()
        warnings.warn(
            ConvergenceWarning(
                f"{method} did not converge for {len(samples)} of {batch} sample{'s' if batch > 1 else ''} ({which})"
                f": the energy stopped changing after {result.iterations} iterations, but the inner Huber-TV prox "
                f"of the final iterate stopped at prox_max_iter={prox_max_iter} above prox_tol {prox_tol:g}; "
                "raise prox_max_iter",
                method=method,
                samples=samples,
                batch=batch,
                iterations=result.iterations,
                criterion="inner prox reached its tolerance",
                tol=prox_tol,
            ),
            stacklevel=3,
        )
    return result.converged & ok


def _model_inputs(fg, bg, alpha, *, batch: int, offset: float, scale: float):
    """``(f, b, α, f^α b^{1−α})`` of model (1) in its units (scaled, offset), expanded to the batch."""
    shape = (batch, fg.shape[1], *fg.shape[-2:])
    f, b = (scale * (fg + offset)).expand(shape), (scale * (bg + offset)).expand(shape)
    a = alpha.to(fg.dtype).expand(batch, 1, -1, -1)
    return f, b, a, geometric_blend(f, b, a)


def _attach_implicit_gradient(u, v, fg, bg, alpha, *, batch, eta, mu, gamma, epsilon, offset, scale):
    """Connect the minimiser ``(u, v)`` (model units) to ``fg``, ``bg``, ``alpha`` by the implicit function theorem."""

    def energy(u_, v_, fg_, bg_, alpha_):
        f, _, a, target = _model_inputs(fg_, bg_, alpha_, batch=batch, offset=offset, scale=scale)
        return variational_osmosis_energy(u_, v_, f, a, target, mu=mu, gamma=gamma, eta=eta, epsilon=epsilon)

    # Jacobi preconditioner of the joint Hessian: the exact diagonal of the u-block and a bound for the v-block
    _, diag_u = u_block_hessian(v, alpha.detach().expand(batch, 1, -1, -1), gamma)
    _, diag_v = osmosis_curvature(u, v, mu)
    diag_u = diag_u.clamp_min(torch.finfo(u.dtype).tiny)
    diag_v = diag_v + (4 * eta / epsilon if eta > 0 else 0.0)

    def precondition(blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        return [blocks[0] / diag_u, blocks[1] / diag_v]

    tol = max(1e-10, 64 * torch.finfo(u.dtype).eps)
    out = implicit_minimiser(
        energy, (u, v), [fg, bg, alpha], precondition=precondition, tol=tol, max_iter=20000, method="osmosis_fusion"
    )
    return out[0], out[1]


def _osmosis_fusion_solve(
    fg,
    bg,
    alpha,
    *,
    batch,
    eta,
    mu,
    gamma,
    init,
    max_iter,
    tol,
    epsilon,
    beta,
    offset,
    scale,
    min_iter,
    prox_max_iter,
    prox_tol,
    metric,
) -> tuple[torch.Tensor, torch.Tensor, SolverResult]:
    """The solve of :func:`osmosis_fusion` on checked, detached inputs; ``(u, v)`` in model units."""
    f, b, alpha, target = _model_inputs(fg, bg, alpha, batch=batch, offset=offset, scale=scale)
    u0 = initial_image(f, b, alpha, init)
    v0 = target.clone()

    def smooth(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # O is defined for v > 0 only: +inf outside makes the line search reject steps that leave the domain
        e = osmosis_fusion_term(u, v, target, mu)
        return torch.where(v.flatten(1).amin(1) > 0, e, torch.full_like(e, torch.inf))

    def objective(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        e = smooth(u, v) + gamma * fidelity_energy(u, f, alpha)
        return e + eta * huber_tv(v, epsilon) if eta > 0 else e

    if metric == "newton_u":
        result = _newton_u_ipiano(
            f,
            alpha,
            target,
            u0,
            v0,
            eta=eta,
            mu=mu,
            gamma=gamma,
            epsilon=epsilon,
            beta=beta,
            max_iter=max_iter,
            tol=tol,
            min_iter=min_iter,
            prox_max_iter=prox_max_iter,
            prox_tol=prox_tol,
            smooth=smooth,
            objective=objective,
        )
        u, v = result.solution
        return u, v, result

    def prox_u(z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return prox_fidelity(z, f, alpha, gamma, step)

    # Warm start of the Huber-TV prox, per sample: the dual of the trial that became the sample's current v. The
    # trials of one iteration all start from it (a sample's later trials, made while others still backtrack, must
    # not leak into its next iteration), and the bookkeeping runs at the start of each iteration (in ``metric``).
    warm: dict[str, object] = {"dual": torch.zeros(*v0.shape[:2], 2, *v0.shape[2:], dtype=v0.dtype, device=v0.device)}
    warm["ok"] = torch.ones(v0.shape[0], dtype=torch.bool, device=v0.device)  # the current v's prox met its tol
    trials: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def prox_v(z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        res = prox_huber_tv(z, step, eta=eta, epsilon=epsilon, y0=warm["dual"], max_iter=prox_max_iter, tol=prox_tol)
        trials.append((res.solution, res.info["dual"], res.converged.reshape(-1)))
        return res.solution

    def adopt_dual(v: torch.Tensor) -> None:
        dual, ok = warm["dual"], warm["ok"]
        found = torch.zeros(v.shape[0], dtype=torch.bool, device=v.device)
        for solution, trial_dual, trial_ok in trials:
            same = (solution == v).flatten(1).all(1) & ~found
            dual = torch.where(_b(dual, same), trial_dual, dual)
            ok = torch.where(same, trial_ok, ok)
            found |= same
        warm["dual"], warm["ok"] = dual, ok
        trials.clear()

    scaled = metric == "curvature"

    def metric_fn(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        adopt_dual(v)
        if not scaled:
            return None, None
        d_u, d_v = osmosis_curvature(u, v, mu)
        # keep the metric bounded below (µ = 0, flat regions): relative floor per sample
        floor = torch.finfo(u.dtype).eps * torch.maximum(d_u.flatten(1).amax(1), d_v.flatten(1).amax(1))
        floor = floor.view(-1, 1, 1, 1)
        return torch.maximum(d_u, floor), torch.maximum(d_v, floor)

    result = ipiano(
        smooth,
        (u0, v0),
        prox=(prox_u, prox_v if eta > 0 else None),
        beta=beta,
        # relative to a Gershgorin metric the curvature is at most 1 (exactly for u, at the current point for v);
        # the estimate is non-decreasing (letting it shrink again made long inertial steps leave v > 0 and stall)
        lipschitz=(1.0, 1.0) if scaled else (1.0, max(mu, 1.0)),
        max_iter=max_iter,
        tol=tol,
        min_iter=min_iter,
        objective=objective,
        metric=metric_fn,
        descent_test="joint" if scaled else "blocks",
    )
    adopt_dual(result.solution[1])  # which prox gave the final v, and whether it met its tolerance
    result.info["prox_converged"] = warm["ok"]
    u, v = result.solution
    return u, v, result


# ----------------------------------------------------------------------------------------------- command line


def _as_display(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0, 1)


@register("osmosis", samples="osmosis", options_from=osmosis_fusion)
def osmosis_cli(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: AlphaKind = "gaussian",
    sigma: float = 5.0,
    alpha_value: float = 0.5,
    align: bool = False,
    **params,
) -> MethodOutput:
    """Command-line adapter: α-map from ``mask``, optional SIFT pre-alignment of ``bg``, then
    :func:`osmosis_fusion`. Extras: ``v``, ``alpha``, the chromaticity error maps of ``u`` against ``fg`` and
    ``bg`` (eq. 21, clipped to [0, 1] for display) and the energy curve.

    The mask marks where ``fg`` is kept (``α = 1``); outside it the result takes the structure of ``bg`` with the
    colours of ``fg`` (see :func:`osmosis_fusion`). Without inputs the command line uses the built-in osmosis
    pair ``datasets/samples/osmosis`` (one scene under two lights). Reports non-convergence only through the
    :class:`fusion.ConvergenceWarning` of :func:`osmosis_fusion`."""
    if align:
        from fusion.ops.align import align_to

        bg, _ = align_to(bg, fg)
    a = alpha_map(mask, kind=alpha, sigma=sigma, value=alpha_value, like=fg)
    u, v, res = osmosis_fusion(fg, bg, a, **params)
    u = _as_display(u)
    _, err_f = chromaticity_error(u, fg)
    _, err_b = chromaticity_error(u, bg)
    return MethodOutput(
        result=u,
        images={
            "v": _as_display(v),
            "alpha": a,
            "chroma_error_fg": _as_display(err_f),
            "chroma_error_bg": _as_display(err_b),
        },
        curves={"energy": {"E(u, v)": res.history[:, 0].tolist()}},
    )


@register("linear_osmosis")
def linear_osmosis_cli(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    tau: float = 100.0,
    steps: int = 5,
    scheme: Scheme = "implicit",
    offset: float = DEFAULT_OFFSET,
    max_iter: int = 2000,
    tol: float = 1e-6,
) -> MethodOutput:
    """Command-line adapter for the linear osmosis filter used for fusion: ``u0`` is the composite
    ``mask·fg + (1 − mask)·bg`` and the imposed structure is the drift of ``fg`` inside the mask and of ``bg``
    outside (averaged across the boundary), see :func:`osmosis_filter_fusion`. Extras: the α-map (the mask),
    the composite, the chromaticity error maps against ``fg`` and ``bg`` and the per-step relative change."""
    res = osmosis_filter_fusion(
        fg, bg, mask, tau=tau, steps=steps, scheme=scheme, offset=offset, max_iter=max_iter, tol=tol
    )
    u = _as_display(res.solution)
    _, err_f = chromaticity_error(u, fg)
    _, err_b = chromaticity_error(u, bg)
    m = mask.to(fg.dtype)
    return MethodOutput(
        result=u,
        images={
            "alpha": m,
            "composite": m * fg + (1 - m) * bg,
            "chroma_error_fg": _as_display(err_f),
            "chroma_error_bg": _as_display(err_b),
        },
        curves={"change": {"relative change per step": res.history[1:, 0].tolist()}},
    )


__all__ = [
    "alpha_map",
    "fusion_drift",
    "initial_image",
    "linear_osmosis",
    "linear_osmosis_cli",
    "max_explicit_step",
    "osmosis_filter_fusion",
    "osmosis_fusion",
    "osmosis_cli",
    "solve_u_block",
]
