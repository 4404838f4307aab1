"""Linear osmosis: the filter, its use as a fusion baseline (variational osmosis paper, Section II, Fig. 4d), and
the linear system of the variational model's ``u``-block.

* :func:`osmosis_filter` — the isotropic osmosis evolution ``u_t = div(∇u − d u)``, ``d = ∇ log v`` (eqs. 6–8),
  by implicit steps (conjugate gradients on a symmetrised system, unconditionally stable) or explicit steps
  (step limit enforced). Mass is conserved, positivity preserved, and the steady state is ``(µ_{u0}/µ_v) v``.
* :func:`linear_osmosis_solve` / :func:`linear_osmosis_blend` / :class:`LinearOsmosisBlend` — the method
  ``linear_osmosis``: the filter used for fusion (after Weickert et al. 2013), with the drift ``∇ log f`` inside
  the region, ``∇ log b`` outside and the average of the two on the edges that cross.
* :func:`solve_u_block` — for a fixed ``v`` the minimiser in ``u`` of the variational model (1) of
  :mod:`fusion.methods.osmosis` solves the linear system ``(V⁻¹ S_h V⁻¹ + γ diag(α)) u = γαf`` (eqs. 11–14), whose
  ``γα = 0`` solutions are the steady states ``c·v`` of the filter.

Positivity. Osmosis needs strictly positive images (it works with ``log v`` and ``u / v``). The functions here
take images in [0, 1], add a constant ``offset`` before the evolution and subtract it from what they return. The
offset must leave every pixel positive; a larger one improves the conditioning near black pixels at the price of
weakening the invariance to multiplicative brightness changes (``c f + o ≠ c (f + o)``).

Gradients. Everything here backpropagates to its image inputs: each implicit step's linear solve by implicit
differentiation (:func:`fusion.optim.linear_solve.differentiable_solve`, one adjoint solve per step), the explicit
steps by autograd. The mask is thresholded and carries no gradient.

Convergence. A sample whose implicit steps' linear solves stop before their tolerance is reported by one
:class:`fusion.ConvergenceWarning` and is not ``converged`` in the :class:`SolverResult` (``criterion``, ``tol``,
``reached``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from fusion.energies.osmosis import u_block_hessian
from fusion.methods.contract import MethodResult
from fusion.methods.registry import MethodOutput, register
from fusion.metrics import chromaticity_error
from fusion.ops.cg import bicgstab, conjugate_gradient
from fusion.ops.checks import (
    check_alpha,
    check_batch,
    check_images,
    check_int,
    check_keywords,
    check_max_iter,
    check_positive,
    check_positive_image,
    check_same_size,
    check_tol,
)
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
from fusion.optim.evolution import time_evolution
from fusion.optim.linear_solve import differentiable_solve

Scheme = Literal["implicit", "explicit"]

#: The positivity offset of the [0, 1] images: one grey level.
DEFAULT_OFFSET = 1.0 / 255.0


def _check_time_stepping(tau: float, steps: int, scheme: str, max_iter: int, tol: float) -> None:
    check_positive(tau, "tau")
    check_int(steps, "steps", minimum=0)
    if scheme not in ("implicit", "explicit"):
        raise ValueError(f"scheme must be 'implicit' or 'explicit', got {scheme!r}")
    check_max_iter(max_iter, "max_iter")
    check_tol(tol, "tol")


def max_explicit_step(drift: torch.Tensor) -> float:
    """Largest explicit time step ``τ = 1 / max |diag A|`` that keeps ``u + τ A u`` non-negative.

    Args:
        drift: ``(B, C, 2, H, W)`` drift on the forward-difference edges.

    Example:
        >>> max_explicit_step(canonical_drift(torch.ones(1, 1, 4, 4)))  # constant v: diag A = −(neighbours)
        0.25
    """
    return 1.0 / float(osmosis_operator_diagonal(drift.detach()).abs().max())


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


def _evolve(u0, *, tau, steps, scheme, drift, v, max_iter, tol, method, scaling=None) -> SolverResult:
    """Time-step ``u_t = A u`` from positive ``u0`` (eq. 8): ``v`` given → the symmetrised system by CG; otherwise
    BiCGSTAB on the drift, in the variable ``u⁺ / scaling``. Differentiable (implicit solves, autograd)."""
    if drift is None:
        drift = canonical_drift(v)
    if scheme == "explicit":
        limit = max_explicit_step(drift)
        if tau > limit:
            raise ValueError(f"explicit osmosis step tau={tau:g} exceeds the stability limit {limit:g}")

        def step(u):
            return u + tau * osmosis_operator(u, drift), None

    elif v is not None:
        # (I − τA) u⁺ = u with A u = −S(u/v): solve the SPD system (V + τS) w = u, then u⁺ = v w (warm start: the
        # previous step's w)
        weights, operator, warm = harmonic_edge_weights(v), _spd_step_operator(tau), [(u0 / v).detach()]

        def step(u):
            w, res = differentiable_solve(
                operator, u, warm[0].detach(), v, weights, solver=conjugate_gradient, max_iter=max_iter, tol=tol,
                method=method,
            )  # fmt: skip
            warm[0] = w
            return v * w, res

    else:
        # (I − τA) u⁺ = u in the variable w = u⁺ / s: (I − τA) S w = u is nearly symmetric positive definite when
        # the drift is close to the canonical drift of s (exactly so where it equals it)
        scaling = torch.ones_like(u0) if scaling is None else scaling
        operator, transpose = _mixed_step_operator(tau)

        def step(u):
            x, res = differentiable_solve(
                operator, u, (u / scaling).detach(), drift, scaling, solver=bicgstab, max_iter=max_iter, tol=tol,
                method=method, transpose=transpose,
            )  # fmt: skip
            return scaling * x, res

    res = time_evolution(u0, step, steps=steps, tol=tol if scheme == "implicit" else None)
    res.info["drift"] = drift.detach()
    return res


def osmosis_filter(
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
    The filter runs exactly ``steps`` steps (:func:`fusion.optim.evolution.time_evolution`); ``converged`` says
    whether every implicit step's linear solve met ``tol`` (relative residual), and a sample whose solves did not
    emits :class:`fusion.ConvergenceWarning`.

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
        >>> res = osmosis_filter(u0, v, tau=1e4, steps=5)
        >>> torch.allclose(res.solution, res.info["steady_state"], atol=1e-6)
        True
    """
    batch = check_images(u0=u0, v=v)
    check_positive_image(u0, "u0", offset=offset)
    check_positive_image(v, "v", offset=offset)
    _check_time_stepping(tau, steps, scheme, max_iter, tol)
    shape = (batch, u0.shape[1], *u0.shape[-2:])
    u0p, vp = (u0 + offset).expand(shape), (v + offset).expand(shape)
    res = _evolve(
        u0p, tau=tau, steps=steps, scheme=scheme, drift=None, v=vp, max_iter=max_iter, tol=tol, method="osmosis_filter"
    )
    steady = u0p.mean((-2, -1), keepdim=True) / vp.mean((-2, -1), keepdim=True) * vp
    res.solution = res.solution - offset
    res.info["steady_state"] = steady - offset
    return warn_unconverged(res, "osmosis_filter")


def fusion_drift(fg: torch.Tensor, bg: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """Drift of the osmosis fusion baseline: ``∇ log fg`` on edges inside the region, ``∇ log bg`` outside and
    the average of the two on the edges that cross its boundary (the transition zone).

    Args:
        fg, bg: ``(B, C, H, W)`` positive images.
        region: ``(B, 1, H, W)`` in [0, 1]; pixels ``> 0.5`` are inside.

    Returns:
        ``(B, C, 2, H, W)`` drift on the forward-difference edges.

    Example:
        >>> fg, bg = torch.rand(1, 3, 6, 7) + 0.1, torch.rand(1, 3, 6, 7) + 0.1
        >>> fusion_drift(fg, bg, torch.ones(1, 1, 6, 7)).equal(canonical_drift(fg))  # all inside: fg's drift
        True
    """
    r = (region > 0.5).to(fg.dtype)
    # fraction of the two ends of each edge that lie inside: 1, 0 or ½ (crossing edge)
    inside_y = torch.cat([0.5 * (r[..., :-1, :] + r[..., 1:, :]), r[..., -1:, :]], dim=-2)
    inside_x = torch.cat([0.5 * (r[..., :, :-1] + r[..., :, 1:]), r[..., :, -1:]], dim=-1)
    weight = torch.stack([inside_y, inside_x], dim=-3)
    return weight * canonical_drift(fg) + (1 - weight) * canonical_drift(bg)


def linear_osmosis_solve(
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
) -> MethodResult:
    """Osmosis filter fusion (the paper's Fig. 4d baseline, after Weickert et al. 2013), with its solver record.

    Evolves ``u0`` (default: the composite ``mask·fg + (1 − mask)·bg``) under ``u_t = div(∇u − d u)`` (eqs. 6–8)
    with the drift of :func:`fusion_drift`. The drift is not the gradient of one log-image, so the implicit system
    is not symmetric; it is solved by BiCGSTAB. The steady state glues ``fg`` multiplicatively into ``bg``: it is
    the positive null vector of the mixed-drift operator with the mass of ``u0`` (per channel). The mixed drift
    is not curl-free across the seam, so that state carries a circulating flux there and is not exactly a
    multiple of ``fg`` inside and of ``bg`` outside.

    ``solver.converged`` says whether every implicit step's BiCGSTAB solve met ``tol``; a sample whose solves did
    not emits :class:`fusion.ConvergenceWarning`. Differentiable in ``fg``, ``bg`` and ``u0`` (implicit
    differentiation of each step, one adjoint BiCGSTAB solve with ``Aᵀ``); not in ``mask`` (thresholded).

    Args:
        fg, bg: ``(B, C, H, W)`` images in [0, 1] (``fg`` already placed on the canvas).
        mask: ``(B, 1, H, W)`` region of ``fg``, in [0, 1].
        u0: ``(B, C, H, W)`` initial image (default: the composite).
        tau, steps, scheme: time stepping as in :func:`osmosis_filter`.
        offset: positivity offset (see the module docstring).
        max_iter, tol: BiCGSTAB limits per implicit step (``max_iter ≥ 1``, relative residual).

    Returns:
        :class:`~fusion.methods.contract.MethodResult`: ``image`` the ``(B, C, H, W)`` result in the input scale,
        ``solver`` the :class:`SolverResult` of the evolution as in :func:`osmosis_filter` (its ``solution`` is
        ``image``).

    Example:
        >>> fg, bg = torch.rand(1, 3, 24, 32) + 0.1, torch.rand(1, 3, 24, 32) + 0.1
        >>> m = torch.zeros(1, 1, 24, 32); m[..., 6:18, 8:24] = 1
        >>> out = linear_osmosis_solve(fg, bg, m, steps=2)
        >>> out.image.shape, out.solver.history.shape
        (torch.Size([1, 3, 24, 32]), torch.Size([3, 1]))
    """
    images = {"fg": fg, "bg": bg} if u0 is None else {"fg": fg, "bg": bg, "u0": u0}
    check_images(**images)
    mask = check_alpha(mask, "mask")
    check_same_size(fg=fg, mask=mask)
    batch = check_batch(**images, mask=mask)
    for name, x in images.items():
        check_positive_image(x, name, offset=offset)
    _check_time_stepping(tau, steps, scheme, max_iter, tol)
    shape = (batch, fg.shape[1], *fg.shape[-2:])
    f, b = (fg + offset).expand(shape), (bg + offset).expand(shape)
    mask = mask.detach().to(fg.dtype)
    composite = mask * f + (1 - mask) * b
    start = composite if u0 is None else (u0 + offset).expand(shape)
    res = _evolve(
        start, tau=tau, steps=steps, scheme=scheme, drift=fusion_drift(f, b, mask), v=None, max_iter=max_iter,
        tol=tol, scaling=composite, method="linear_osmosis",
    )  # fmt: skip
    res.solution = res.solution - offset
    return MethodResult(image=res.solution, solver=warn_unconverged(res, "linear_osmosis"))


def linear_osmosis_blend(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, **options) -> torch.Tensor:
    """The image of :func:`linear_osmosis_solve` (same arguments and options, same warnings, same gradients).

    Returns:
        ``(B, C, H, W)`` fused image in the input scale (not clipped).

    Example:
        >>> fg, bg = torch.rand(1, 3, 12, 16) + 0.1, torch.rand(1, 3, 12, 16) + 0.1
        >>> m = torch.zeros(1, 1, 12, 16); m[..., 3:9, 4:12] = 1
        >>> linear_osmosis_blend(fg, bg, m, steps=2).shape
        torch.Size([1, 3, 12, 16])
    """
    return linear_osmosis_solve(fg, bg, mask, **options).image


class LinearOsmosisBlend(nn.Module):
    """:func:`linear_osmosis_blend` as a layer: the options (those of :func:`linear_osmosis_solve`) are fixed at
    construction and checked by name, ``forward(fg, bg, mask)`` fuses. Differentiable in ``fg`` and ``bg``.

    Example:
        >>> layer = LinearOsmosisBlend(tau=10.0, steps=2)
        >>> fg, bg = torch.rand(2, 3, 12, 16) + 0.1, torch.rand(2, 3, 12, 16) + 0.1
        >>> m = torch.zeros(2, 1, 12, 16); m[..., 3:9, 4:12] = 1
        >>> layer(fg, bg, m).shape
        torch.Size([2, 3, 12, 16])
    """

    def __init__(self, **options) -> None:
        super().__init__()
        self.options = check_keywords(linear_osmosis_solve, options, inputs=("fg", "bg", "mask"))

    def forward(self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return linear_osmosis_blend(fg, bg, mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


def u_block_operator(gamma: float):
    """``factory(v, alpha) -> (u ↦ H u, r ↦ r / diag H)``: the Hessian ``H = V⁻¹ S_h V⁻¹ + γ diag(α)`` of the
    ``u``-block of the variational model (eqs. 11, 12, 14;
    :func:`fusion.energies.osmosis.u_block_hessian`) with its Jacobi preconditioner, for
    :func:`solve_u_block` and for unchecked solves inside an outer iteration.

    Example:
        >>> v = torch.rand(1, 1, 4, 5, dtype=torch.float64) + 1
        >>> apply, precondition = u_block_operator(1.0)(v, torch.zeros(1, 1, 4, 5, dtype=torch.float64))
        >>> bool(apply(3 * v).abs().max() < 1e-12)  # without fidelity the multiples of v cost nothing
        True
    """

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
    decreases ``E``. The images are in the units of the model (scaled and offset, see
    :func:`fusion.methods.osmosis.osmosis_solve`).
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
    images = {"v": v, "f": f} if u0 is None else {"v": v, "f": f, "u0": u0}
    check_images(**images)
    alpha = check_alpha(alpha)
    check_same_size(v=v, alpha=alpha)
    batch = check_batch(**images, alpha=alpha)
    check_positive_image(v, "v")
    shape = (batch, v.shape[1], *v.shape[-2:])
    start = (f if u0 is None else u0).detach().expand(shape)
    rhs = (gamma * alpha * f).expand(shape)
    operator = u_block_operator(gamma)
    u, res = differentiable_solve(
        operator, rhs, start, v.expand(shape), alpha.expand(batch, 1, -1, -1), solver=conjugate_gradient,
        max_iter=max_iter, tol=tol, method="solve_u_block",
    )  # fmt: skip
    res.solution = u
    res.criterion, res.tol, res.reached = "relative residual ‖γαf − H u‖/‖γαf‖", float(tol), res.history[-1]
    return warn_unconverged(res, "solve_u_block")


@register("linear_osmosis", options_from=linear_osmosis_solve)
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
    """Command-line adapter (``infer.py method=linear_osmosis``): :func:`linear_osmosis_solve` from the composite
    ``mask·fg + (1 − mask)·bg``, with the drift of ``fg`` inside the mask and of ``bg`` outside (averaged across
    the boundary). Extras: the α-map (the mask), the composite, the chromaticity error maps (eq. 21) against ``fg``
    and ``bg`` and the per-step relative change."""
    out = linear_osmosis_solve(
        fg, bg, mask, tau=tau, steps=steps, scheme=scheme, offset=offset, max_iter=max_iter, tol=tol
    )
    u = out.image.clamp(0, 1)
    _, err_f = chromaticity_error(u, fg)
    _, err_b = chromaticity_error(u, bg)
    m = mask.to(fg.dtype)
    return MethodOutput(
        result=u,
        images={
            "alpha": m,
            "composite": m * fg + (1 - m) * bg,
            "chroma_error_fg": err_f.clamp(0, 1),
            "chroma_error_bg": err_b.clamp(0, 1),
        },
        curves={"change": {"relative change per step": out.solver.history[1:, 0].tolist()}},
    )


__all__ = [
    "DEFAULT_OFFSET",
    "LinearOsmosisBlend",
    "fusion_drift",
    "linear_osmosis_blend",
    "linear_osmosis_cli",
    "linear_osmosis_solve",
    "max_explicit_step",
    "osmosis_filter",
    "solve_u_block",
    "u_block_operator",
]
