"""First-order primal–dual algorithm for discrete dynamic optimal transport (Papadakis et al. 2014, §4;
Fitschen, Laus & Steidl 2016, §4 and appendix).

The problem on the staggered grid of :mod:`fusion.ops.staggered`, ``u = (m, f)``:

* constrained:  ``min_u Σ J(S u + s₀)``  subject to  ``A u = b``;
* penalised:    ``min_u Σ J(S u + s₀) + (λ/2)‖A u − b‖²``  (unbalanced transport; the squared norm is over
  cell centres, so in the continuum it is ``(λ/2)∫∫(∂_t f + div m)² dx dt`` up to the cell volume that also
  multiplies the cost).

Chambolle–Pock with ``K = S`` (``‖S‖ ≤ 1``), ``F = Σ J(· + s₀)`` and ``G`` the constraint (its indicator or the
penalty), ``θ = 1``, ``στ < 1``:

    y ← prox_{σF*}(y + σ(S ū + s₀)),   prox_{σF*}(z) = z − σ prox_{J/σ}(z/σ)          (Moreau)
    u⁺ ← prox_{τG}(u − τ Sᵀ y),        ū ← 2u⁺ − u

``prox_{τG}`` is a spectral solve:

* constrained: the projection ``u − Aᵀ(AAᵀ)⁻¹(Au − b)``; ``AAᵀ`` is the 4-D Laplacian, mirror in time and space,
  periodic (or mirror) in colour, diagonal in DCT-II ⊗ DFT ⊗ DCT-II ⊗ DCT-II (Prop. 3). Its zero eigenvalue (the
  constants) is the mass condition and is left out, so unequal masses leave the constant residual in place.
* penalised: ``(λAᵀA + I/τ) u = v/τ + λAᵀb``. :meth:`PenalizedProx.solve` solves it by the Schur complement on
  the density block (Prop. 4): ``X = λD_mᵀD_m + I/τ`` is eliminated through ``(I + τλL_s)⁻¹`` with
  ``L_s = D_mD_mᵀ`` the space–colour Laplacian (DCT-II in space, FFT in colour), and the Schur complement
  ``λ D_tᵀD_t ⊗ (I + τλL_s)⁻¹ + I/τ`` is diagonal in DST-I (time, zero conditions) ⊗ the same spatial basis.
  The iteration itself applies the same operator in residual form, ``u = v − τλAᵀ(I + τλAAᵀ)⁻¹(Av − b)``
  (one screened 4-D Poisson solve, DCT-II in time), because the Schur route loses about three digits in
  float32 when the residual is large; in float64 the two agree to round-off (tested against dense solves).
"""

from __future__ import annotations

import functools
from typing import Callable, Literal

import torch

from fusion.energies.transport import prox_kinetic, transport_cost
from fusion.ops.checks import check_max_iter, check_tol
from fusion.ops.poisson import laplacian_eigenvalues, laplacian_symbol, spectral_forward, spectral_inverse
from fusion.ops.result import SolverResult
from fusion.ops.staggered import (
    Centred,
    Staggered,
    StaggeredGrid,
    continuity,
    continuity_adjoint,
    continuity_rhs,
    divergence,
    divergence_adjoint,
    interpolate,
    interpolate_adjoint,
    interpolate_boundary,
    time_difference,
    time_difference_adjoint,
)

Model = Literal["constrained", "penalized"]


def _cell_axes(grid: StaggeredGrid) -> tuple[list[int], list[str], list[float]]:
    """Axes of a ``(B, P, C, H, W)`` cell tensor that the Laplacian acts on, their conditions and steps."""
    bcs = grid.poisson_bc
    dims, bc, hs = [1, 3, 4], [bcs[0], bcs[2], bcs[3]], [grid.ht, grid.h, grid.h]
    if grid.has_color:
        dims.insert(1, 2)
        bc.insert(1, bcs[1])
        hs.insert(1, grid.hc)
    return dims, bc, hs


def _per_sample(value: float | torch.Tensor, batch: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(batch)
    return t.reshape(batch, 1, 1, 1, 1)


def _refines(dtype: torch.dtype, refine: bool | None) -> bool:
    """Default: refine in every precision coarser than float64 (see :class:`ConstrainedProjection`)."""
    return torch.finfo(dtype).eps > 1e-10 if refine is None else bool(refine)


class ConstrainedProjection:
    """Orthogonal projection onto ``{u : A u = b}`` (up to the mass mode), by a 4-D spectral Poisson solve.

    The computed projection ``v − Aᵀw̃`` errs by ``Aᵀ(w̃ − w)``, which lies in the range of ``Aᵀ`` and is
    proportional to the residual ``Av − b`` of the input. In the iteration that residual is ``τ A Sᵀ y``, large
    next to ``b``, and in float32 the error (relative constraint residual ≈ 1e-4, changing from one iteration to
    the next) puts a floor of a few 1e-4 under the relative change of the iterates: the stopping test can never
    pass. A second projection removes exactly such range errors (the projection is idempotent and ``Aᵀ``-range
    components are what it removes), leaving the round-off of its own, far smaller, input residual; ``refine``
    (default: in precisions coarser than float64) applies it.

    Args:
        grid: the staggered grid.
        refine: project twice (see above); ``None``: only when ``dtype`` is coarser than float64.
    """

    def __init__(
        self,
        grid: StaggeredGrid,
        *,
        dtype: torch.dtype,
        device: torch.device | str | None = None,
        refine: bool | None = None,
    ):
        self.grid = grid
        self.refine = _refines(dtype, refine)
        self.dims, self.bc, hs = _cell_axes(grid)
        shape = (1, grid.steps, grid.channels, grid.height, grid.width)
        self.sizes = [shape[d] for d in self.dims]
        symbol = laplacian_symbol(shape, self.bc, self.dims, spacing=hs, dtype=dtype, device=device)
        inv = 1.0 / symbol.where(symbol > 0, torch.ones_like(symbol))
        self.inverse = inv.where(symbol > 0, torch.zeros_like(inv))
        # Only the constant mode is singular; guard against round-off making another eigenvalue vanish.
        self.inverse.view(-1)[0] = 0.0

    def solve(self, r: torch.Tensor) -> torch.Tensor:
        """Zero-mean solution of ``A Aᵀ w = r`` for ``r`` on the cells ``(B, P, C, H, W)``."""
        coeffs = spectral_forward(r, self.bc, self.dims) * self.inverse
        return spectral_inverse(coeffs, self.bc, self.dims, self.sizes)

    def _project(self, u: Staggered, b: torch.Tensor) -> Staggered:
        w = self.solve(continuity(u, self.grid) - b)
        corr = continuity_adjoint(w, self.grid)
        return Staggered(*(None if x is None else x - c for x, c in zip(u, corr)))

    def __call__(self, u: Staggered, b: torch.Tensor) -> Staggered:
        u = self._project(u, b)
        return self._project(u, b) if self.refine else u


class PenalizedProx:
    """``prox_{τG}`` for ``G(u) = (λ/2)‖A u − b‖²``: solves ``(λAᵀA + I/τ) u = v/τ + λAᵀb`` (Schur complement).

    Unlike the projection it needs no refinement in float32 once the constant mode is left out (see
    :meth:`correction`): measured on 64-pixel photographs with ``τλ = 800`` its error is ~4e-6 relative, and a
    step of iterative refinement on the normal equations only adds the cancellation of its own residual
    ``(v − u)/τ − λAᵀ(Au − b)``, whose two terms grow with ``τλ``.

    Args:
        grid: the staggered grid.
        lam, tau: ``λ > 0`` and ``τ > 0``; numbers or ``(B,)`` tensors (one per sample).
        batch: batch size (for per-sample ``λ``, ``τ``).
    """

    def __init__(self, grid: StaggeredGrid, lam, tau, *, batch: int, dtype: torch.dtype, device=None):
        self.grid = grid
        like = torch.empty((), dtype=dtype, device=device)
        self.lam = _per_sample(lam, batch, like)
        self.tau = _per_sample(tau, batch, like)
        dims, bc, hs = _cell_axes(grid)
        # Space–colour part: every axis but time.
        self.sdims, self.sbc, shs = dims[1:], bc[1:], hs[1:]
        cells = (1, grid.steps, grid.channels, grid.height, grid.width)
        self.ssizes = [cells[d] for d in self.sdims]
        mu_s = laplacian_symbol(cells, self.sbc, self.sdims, spacing=shs, dtype=dtype, device=device)
        tl = self.tau * self.lam
        self.x_filter = 1.0 / (1.0 + tl * mu_s)  # (I + τλ L_s)⁻¹, broadcast over time
        # Schur complement on the (P−1) interior nodes: DST-I in time.
        mu_t = laplacian_eigenvalues(grid.steps - 1, "dirichlet", spacing=grid.ht, dtype=dtype, device=device)
        mu_t = mu_t.view(1, -1, 1, 1, 1)
        self.fdims = [1] + self.sdims
        self.fbc = ["dirichlet"] + self.sbc
        self.fsizes = [grid.steps - 1] + self.ssizes
        self.schur_inverse = 1.0 / (self.lam * mu_t * self.x_filter + 1.0 / self.tau)
        # (I + τλAAᵀ)⁻¹ on the cells, for the residual form used by the iteration.
        self.cdims, self.cbc = dims, bc
        self.csizes = [cells[d] for d in dims]
        mu_c = laplacian_symbol(cells, bc, dims, spacing=hs, dtype=dtype, device=device)
        self.cell_filter = 1.0 / (1.0 + tl * mu_c)
        # Aᵀ annihilates the constants (the zero mode of AAᵀ), so the constant part of the residual contributes
        # nothing to the correction; dropping it here is exact and keeps its round-off, amplified by τλ through
        # Aᵀ, out of the result (float32 with τλ ~ 1e3 otherwise errs by ~1e-3).
        self.cell_filter[:, 0, 0, 0, 0] = 0.0

    def _space_filter(self, r: torch.Tensor) -> torch.Tensor:
        """``(I + τλL_s)⁻¹ r`` per time cell."""
        coeffs = spectral_forward(r, self.sbc, self.sdims) * self.x_filter
        return spectral_inverse(coeffs, self.sbc, self.sdims, self.ssizes)

    def solve(self, r: Staggered) -> Staggered:
        """Solve ``(λAᵀA + I/τ) u = r`` by block elimination of the momentum (Schur complement on ``f``).

        With ``X = λD_mᵀD_m + I/τ``, ``Y = λD_mᵀD_t`` and ``w = (I + τλL_s)⁻¹``, the identities
        ``D_m X⁻¹ = τ w D_m`` and ``X⁻¹ D_mᵀ = τ D_mᵀ w`` (from ``D_m D_mᵀ = L_s``) give

            f = S⁻¹(r_f − λτ D_tᵀ w D_m r_m),   m = τ r_m − τλ D_mᵀ w (τ D_m r_m + D_t f),

        so no step subtracts nearly equal large terms (float32 keeps its accuracy).
        """
        g, lam, tau = self.grid, self.lam, self.tau
        w_rm = self._space_filter(divergence(r.mx, r.my, r.mc, g))
        rf = r.f - lam * tau * time_difference_adjoint(w_rm, g)
        coeffs = spectral_forward(rf, self.fbc, self.fdims) * self.schur_inverse
        f = spectral_inverse(coeffs, self.fbc, self.fdims, self.fsizes)
        q = tau * w_rm + self._space_filter(time_difference(f, g))
        cx, cy, cc = divergence_adjoint(tau * lam * q, g)
        mc = None if r.mc is None else tau * r.mc - cc
        return Staggered(tau * r.mx - cx, tau * r.my - cy, mc, f)

    def correction(self, r: torch.Tensor) -> Staggered:
        """``δ = (λAᵀA + I/τ)⁻¹(−λAᵀ r) = −τλ Aᵀ(I + τλAAᵀ)⁻¹ r`` for a cell residual ``r`` (push-through identity).

        ``AAᵀ`` is the 4-D cell Laplacian (mirror in time and space, colour condition in colour), so this is one
        screened Poisson solve followed by ``Aᵀ``: every step damps, nothing cancels. The Schur route of
        :meth:`solve` computes the same ``δ`` but, fed the large residual of an infeasible point, loses about
        three digits in float32 (measured: 1e-2 against 1e-5 relative error), enough to stall the iteration.
        """
        coeffs = spectral_forward(r, self.cbc, self.cdims) * self.cell_filter
        w = spectral_inverse(coeffs, self.cbc, self.cdims, self.csizes)
        return continuity_adjoint(-(self.tau * self.lam) * w, self.grid)

    def __call__(self, v: Staggered, b: torch.Tensor) -> Staggered:
        # u = v + δ with (λAᵀA + I/τ) δ = −λAᵀ(Av − b): only the residual of v enters.
        step = self.correction(continuity(v, self.grid) - b)
        return Staggered(*(None if x is None else x + d for x, d in zip(v, step)))


def _norm_sq(u) -> torch.Tensor:
    return sum(x.flatten(1).pow(2).sum(1) for x in u if x is not None)


def _rel_change(new, old, tiny: float) -> torch.Tensor:
    """``‖new − old‖ / ‖new‖`` per sample, over all components of a :class:`Staggered` or :class:`Centred`."""
    diff = _norm_sq([None if a is None else a - c for a, c in zip(new, old)])
    return (diff / _norm_sq(new).clamp_min(tiny)).sqrt()


def _keep(active: torch.Tensor, new, old):
    """Per sample: ``new`` where ``active`` (``(B,)`` bool), else ``old`` (a stopped sample keeps its iterate)."""
    a = active.view(-1, 1, 1, 1, 1)
    return type(new)(*(None if x is None else torch.where(a, x, y) for x, y in zip(new, old)))


#: What ``converged`` measures, per model (see :func:`ot_primal_dual`).
CRITERION = {
    "constrained": "max of the mean relative change of the iterates per iteration and the relative constraint residual",
    "penalized": "mean relative change of the iterates per iteration",
}
#: Default over-relaxation of the primal–dual step (Condat 2013): 1 is plain Chambolle–Pock.
DEFAULT_RELAXATION = 1.9


def _ot_step(
    prox_g: ConstrainedProjection | PenalizedProx,
    grid: StaggeredGrid,
    u: Staggered,
    su: Centred,
    y: Centred,
    b: torch.Tensor,
    s0: torch.Tensor,
    tau_t: torch.Tensor,
    sigma_t: torch.Tensor,
    rho: float,
    active: torch.Tensor,
    all_active: bool,
    tiny: float,
    primal_last: torch.Tensor,
    dual_last: torch.Tensor,
) -> tuple[Staggered, Centred, Centred, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One over-relaxed primal–dual iteration of :func:`ot_primal_dual`, with its diagnostics.

    Args:
        prox_g: the projection or penalised prox; ``grid`` the staggered grid.
        u, su, y: the primal iterate, ``S u`` and the centred dual iterate.
        b, s0: the continuity right-hand side ``(B, P, C, H, W)`` and the interpolated boundary densities.
        tau_t, sigma_t: ``(B, 1, 1, 1, 1)`` steps; ``rho`` the relaxation.
        active: ``(B,)`` bool, the samples still iterating; ``all_active`` whether that is every sample (then
            nothing needs freezing).
        tiny: smallest positive number of the dtype.
        primal_last, dual_last: ``(B,)`` relative changes of the previous iteration (kept by stopped samples).

    Returns:
        The new ``u``, ``S u`` and ``y``, and the ``(B,)`` relative changes of ``u`` and ``y`` and the transport
        cost (these three off the autograd graph).
    """
    # Primal step: ũ = prox_{τG}(u − τ Sᵀ y).
    sty = interpolate_adjoint(y, grid)
    u_t = prox_g(Staggered(*(None if ui is None else ui - tau_t * si for ui, si in zip(u, sty))), b)
    su_t = interpolate(u_t, grid)
    # Dual step at the extrapolated point: ỹ = prox_{σF*}(y + σ(S(2ũ − u) + s₀)), by Moreau with prox_{J/σ}.
    z = [None if yi is None else yi + sigma_t * (2 * a - c) for yi, a, c in zip(y, su_t, su)]
    z[3] = z[3] + sigma_t * s0
    gamma = 1.0 / sigma_t
    pm, pf = prox_kinetic([None if zi is None else zi * gamma for zi in z[:3]], z[3] * gamma, gamma)
    y_t = Centred(*(None if zi is None else zi - sigma_t * pi for zi, pi in zip(z, (*pm, pf))))
    # Relaxation.
    if rho == 1.0:
        u_new, su_new, y_new = u_t, su_t, y_t
    else:
        u_new = Staggered(*(None if a is None else c + rho * (a - c) for a, c in zip(u_t, u)))
        su_new = Centred(*(None if a is None else c + rho * (a - c) for a, c in zip(su_t, su)))
        y_new = Centred(*(None if a is None else c + rho * (a - c) for a, c in zip(y_t, y)))
    if not all_active:
        u_new, su_new, y_new = _keep(active, u_new, u), _keep(active, su_new, su), _keep(active, y_new, y)
    with torch.no_grad():
        primal = torch.where(active, _rel_change(u_new, u, tiny), primal_last)
        dual = torch.where(active, _rel_change(y_new, y, tiny), dual_last)
        cost = transport_cost(su_new.mx, su_new.my, su_new.mc, su_new.f + s0, grid.cell_volume)
    return u_new, su_new, y_new, primal, dual, cost


@functools.cache
def _compiled_ot_step() -> Callable[..., tuple]:
    """:func:`_ot_step` under :func:`torch.compile`, built on first use."""
    return torch.compile(_ot_step)


def ot_primal_dual(
    f0: torch.Tensor,
    f1: torch.Tensor,
    grid: StaggeredGrid,
    *,
    model: Model = "constrained",
    lam: float | torch.Tensor = 1.0,
    tau: float | torch.Tensor = 1.0,
    sigma: float | torch.Tensor | None = None,
    relaxation: float = DEFAULT_RELAXATION,
    max_iter: int = 1000,
    tol: float = 1e-5,
    check_every: int = 10,
    u0: Staggered | None = None,
    compile: bool = False,
) -> SolverResult:
    """Over-relaxed Chambolle–Pock iteration for the constrained or penalised discrete transport problem.

    One iteration (primal step first, then the dual step at the extrapolated point; Condat 2013, Alg. 3.1 with
    the roles of primal and dual swapped), from ``u₀`` (projected onto ``A u = b`` in the constrained model) and
    ``y₀ = 0``::

        ũ = prox_{τG}(u − τ Sᵀ y)
        ỹ = prox_{σF*}(y + σ(S(2ũ − u) + s₀))
        (u, y) ← (u, y) + ρ((ũ, ỹ) − (u, y))

    ``ρ = 1`` is the plain Chambolle–Pock method (θ = 1); any ``ρ ∈ (0, 2)`` converges when ``στ‖S‖² < 1``
    (``‖S‖ ≤ 1``). In the constrained model every iterate satisfies ``A u = b`` (a combination of feasible points).
    In float32 the projection is applied twice (see :class:`ConstrainedProjection`): once, its round-off keeps the
    relative change of the iterates above a few 1e-4 on 64-pixel images.

    Stopping, per sample: at every ``check_every``-th iteration ``k`` (previous check ``j``) a sample has
    converged when

    * constrained: ``max(‖u_k − u_j‖ / ((k − j)‖u_k‖), ‖Au_k − b‖/‖b‖) < tol`` — the mean relative change of the
      primal iterate per iteration since the last check, and the relative residual of the continuity equation
      (the second guards the projection: a small change of an infeasible iterate is not a solution);
    * penalised: ``‖u_k − u_j‖ / ((k − j)‖u_k‖) < tol``. The penalised minimiser violates the continuity equation
      on purpose — with unequal masses ``‖Au − b‖/‖b‖`` is at least about ``|M₁ − M₀| / (√P ‖(f₀, f₁)‖_rms)`` —
      so its residual is recorded but not tested.

    The change is measured over the check interval rather than over one iteration because in float32 the
    iterates fluctuate around their limit by round-off (about 1e-5 relative per iteration on 32–64 pixel
    images): over one iteration that noise is all one sees, over ten the fluctuation averages out while a real
    drift adds up. Measured on a photograph pair in float32 the windowed change equals the float64 one to a few
    percent, while the per-iteration change stalls at ~1e-5 (``history`` keeps the per-iteration values).

    A converged sample stops: its iterate is frozen while the others go on, so a sample ends at the same
    iteration with the same iterate alone as in any batch. The loop ends when every sample has stopped or at
    ``max_iter``. The relative change is a fixed-point test of a slowly (sublinearly) converging method, not a
    distance to the minimiser: measured on photographs with the step of :func:`fusion.methods.ot.ot_interpolate`,
    the frames are within about ``300 · tol`` (relative) of the minimiser when it is met, and a too small ``τ``
    makes it pass earlier and further away (``info["dual_change"]`` then stays large).

    Host synchronisations: one per check (whether any sample, and whether every sample, is still iterating, in
    one transfer), ``⌈iterations / check_every⌉`` in all; between checks nothing comes back to the host.

    ``compile=True`` runs each iteration (both proximal steps, the relaxation, the freezing of stopped samples
    and the recorded changes and cost) as one :func:`torch.compile`-d function without graph breaks. The test at
    a check stays outside it: deciding to stop needs the data on the host, and there the compiled code ends.
    The code is compiled twice per problem size (while every sample is iterating, and after the first stops)
    and reused by later calls with the same sizes and settings. The results equal the eager ones up to
    rounding, and gradients flow through the compiled iterations as through the eager ones.

    Differentiable by unrolling: every iteration is recorded by autograd, so the graph (and the memory) grows
    linearly with the iterations — about 40 tensors of the size of the cell grid ``(B, P, C, H, W)`` per
    iteration (measured 36–45). Step sizes given as tensors that depend on the inputs are differentiated too;
    the diagnostics (histories, ``reached``) are computed without autograd.

    Args:
        f0, f1: ``(B, C, H, W)`` non-negative endpoint densities matching ``grid``.
        grid: the staggered grid.
        model: ``"constrained"`` or ``"penalized"``.
        lam: penalty weight ``λ`` (penalised model only), number or ``(B,)``.
        tau, sigma: step sizes, numbers or ``(B,)``; ``sigma=None`` takes ``0.99/τ`` (``στ < ‖S‖⁻² = 1``).
        relaxation: ``ρ ∈ (0, 2)``; default 1.9 (about twice as fast as ``ρ = 1`` on images).
        max_iter: iteration cap (``>= 1``).
        tol: tolerance of the stopping criterion above (``> 0``).
        check_every: the stopping test runs every ``check_every`` iterations (and at ``max_iter``).
        u0: starting point; default the linear interpolation of ``f0, f1`` with zero momentum.
        compile: compile the iteration with :func:`torch.compile` (see above).

    Example:
        >>> grid = StaggeredGrid(steps=4, channels=1, height=8, width=8)
        >>> f0 = torch.rand(1, 1, 8, 8) + 0.1
        >>> f1 = f0.flip(-1)
        >>> res = ot_primal_dual(f0, f1, grid, tau=2.0, max_iter=20)
        >>> res.solution.f.shape, res.history.shape, res.info["iterations"].shape
        (torch.Size([1, 3, 1, 8, 8]), torch.Size([21, 1]), torch.Size([1]))

    Returns:
        :class:`SolverResult`: ``solution`` the :class:`Staggered` ``u``; ``iterations`` the largest per-sample
        count; ``history`` ``(iterations+1, B)`` the relative change of the primal iterate per iteration (first
        row 1; a stopped sample repeats its last value); ``converged`` ``(B,)``; ``criterion``, ``tol`` and
        ``reached`` (the criterion's value at each sample's last check). ``info``: ``iterations`` ``(B,)`` per
        sample; ``cost`` (on the autograd graph) and ``cost_history`` (``Σ J · cell volume``); ``dual_change``
        ``(iterations+1, B)``, the relative change of the dual iterate (recorded, not tested);
        ``residual_history`` (``‖Au − b‖/‖b‖``, ``(n, B)`` at the iterations listed in ``residual_iterations``:
        0, every ``check_every``-th and the last); ``dual`` (centred dual variable); ``tau``, ``sigma``,
        ``relaxation``.

    Raises:
        ValueError: unknown ``model``, shapes that do not match ``grid``, ``max_iter < 1``, ``tol <= 0``,
            ``check_every < 1`` or ``relaxation`` outside ``(0, 2)``.
    """
    if model not in ("constrained", "penalized"):
        raise ValueError(f"model must be 'constrained' or 'penalized', got {model!r}")
    expected = (grid.channels, grid.height, grid.width)
    if f0.ndim != 4 or f0.shape != f1.shape or tuple(f0.shape[1:]) != expected:
        raise ValueError(
            f"f0 and f1 must both be (B, {', '.join(map(str, expected))}), got {tuple(f0.shape)} and {tuple(f1.shape)}"
        )
    if grid.steps < 2:
        raise ValueError(f"grid.steps must be >= 2, got {grid.steps}")
    max_iter = check_max_iter(max_iter, "max_iter")
    tol = check_tol(tol, "tol")
    check_every = check_max_iter(check_every, "check_every")
    if isinstance(relaxation, bool) or not isinstance(relaxation, (int, float)) or not 0 < relaxation < 2:
        raise ValueError(f"relaxation must be a number in (0, 2), got {relaxation!r}")
    rho = float(relaxation)
    batch = f0.shape[0]
    dtype, device = f0.dtype, f0.device
    tiny = torch.finfo(dtype).tiny
    tau_t = _per_sample(tau, batch, f0)
    sigma_t = 0.99 / tau_t if sigma is None else _per_sample(sigma, batch, f0)
    b = continuity_rhs(f0, f1, grid)
    s0 = interpolate_boundary(f0, f1, grid)
    b_norm = b.flatten(1).norm(dim=1).clamp_min(tiny)
    constrained = model == "constrained"
    if constrained:
        prox_g = ConstrainedProjection(grid, dtype=dtype, device=device)
    else:
        prox_g = PenalizedProx(grid, lam, tau_t.reshape(-1), batch=batch, dtype=dtype, device=device)

    def residual(u: Staggered) -> torch.Tensor:
        return (continuity(u, grid) - b).flatten(1).norm(dim=1) / b_norm

    if u0 is None:
        u = grid.zeros(batch, dtype=dtype, device=device)
        t = torch.arange(1, grid.steps, dtype=dtype, device=device).view(1, -1, 1, 1, 1) / grid.steps
        u = u._replace(f=(1 - t) * f0.unsqueeze(1) + t * f1.unsqueeze(1))
    else:
        u = u0
    if constrained:
        u = prox_g(u, b)
    su = interpolate(u, grid)  # S u, carried along: S(2ũ − u) = 2 S ũ − S u
    y = Centred(*(None if x is None else torch.zeros_like(x) for x in su))

    ones = torch.ones(max_iter + 1, batch, dtype=dtype, device=device)
    primal, dual = ones.clone(), ones.clone()
    costs = torch.zeros(max_iter + 1, batch, dtype=dtype, device=device)
    with torch.no_grad():  # diagnostics stay off the autograd graph
        costs[0] = transport_cost(su.mx, su.my, su.mc, su.f + s0, grid.cell_volume)
        resid = [residual(u)]
    checked = [0]
    u_check = u  # the iterate at the previous check
    active = torch.ones(batch, dtype=torch.bool, device=device)
    stopped_at = torch.full((batch,), max_iter, dtype=torch.long, device=device)
    reached = torch.full((batch,), float("inf"), dtype=dtype, device=device)
    all_active = True
    iters = 0
    step = _compiled_ot_step() if compile else _ot_step
    for k in range(1, max_iter + 1):
        u, su, y, primal[k], dual[k], costs[k] = step(
            prox_g, grid, u, su, y, b, s0, tau_t, sigma_t, rho, active, all_active, tiny, primal[k - 1], dual[k - 1]
        )
        iters = k
        if k % check_every == 0 or k == max_iter:
            checked.append(k)
            with torch.no_grad():
                res_k = residual(u)
                value = _rel_change(u, u_check, tiny) / (k - checked[-2])
                if constrained:
                    value = torch.maximum(value, res_k)
            resid.append(res_k)
            reached = torch.where(active, value, reached)
            done = active & (value < tol)
            stopped_at = torch.where(done, torch.full_like(stopped_at, k), stopped_at)
            active = active & ~done
            left = int(active.sum())  # the one transfer of a check
            all_active = left == batch
            u_check = u
            if left == 0:
                break

    return SolverResult(
        solution=u,
        iterations=iters,
        history=primal[: iters + 1],
        converged=~active,
        info={
            "iterations": stopped_at.clamp_max(iters),
            "cost": transport_cost(su.mx, su.my, su.mc, su.f + s0, grid.cell_volume),  # on the graph
            "cost_history": costs[: iters + 1],
            "dual_change": dual[: iters + 1],
            "residual_history": torch.stack(resid),
            "residual_iterations": checked,
            "dual": y,
            "tau": tau_t.reshape(-1),
            "sigma": sigma_t.reshape(-1),
            "relaxation": rho,
        },
        criterion=CRITERION[model],
        tol=tol,
        reached=reached,
    )
