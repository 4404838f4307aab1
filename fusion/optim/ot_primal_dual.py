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

from typing import Literal

import torch

from fusion.energies.transport import prox_kinetic, transport_cost
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


class ConstrainedProjection:
    """Orthogonal projection onto ``{u : A u = b}`` (up to the mass mode), by one 4-D spectral Poisson solve."""

    def __init__(self, grid: StaggeredGrid, *, dtype: torch.dtype, device: torch.device | str | None = None):
        self.grid = grid
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

    def __call__(self, u: Staggered, b: torch.Tensor) -> Staggered:
        w = self.solve(continuity(u, self.grid) - b)
        corr = continuity_adjoint(w, self.grid)
        return Staggered(*(None if x is None else x - c for x, c in zip(u, corr)))


class PenalizedProx:
    """``prox_{τG}`` for ``G(u) = (λ/2)‖A u − b‖²``: solves ``(λAᵀA + I/τ) u = v/τ + λAᵀb`` (Schur complement).

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


def ot_primal_dual(
    f0: torch.Tensor,
    f1: torch.Tensor,
    grid: StaggeredGrid,
    *,
    model: Model = "constrained",
    lam: float | torch.Tensor = 1.0,
    tau: float | torch.Tensor = 1.0,
    sigma: float | torch.Tensor | None = None,
    max_iter: int = 1000,
    tol: float = 1e-5,
    check_every: int = 10,
    u0: Staggered | None = None,
) -> SolverResult:
    """Chambolle–Pock iteration for the constrained or penalised discrete transport problem.

    Args:
        f0, f1: ``(B, C, H, W)`` non-negative endpoint densities matching ``grid``.
        grid: the staggered grid.
        model: ``"constrained"`` or ``"penalized"``.
        lam: penalty weight ``λ`` (penalised model only), number or ``(B,)``.
        tau, sigma: step sizes, numbers or ``(B,)``; ``sigma=None`` takes ``0.99/τ`` (``στ < ‖S‖⁻² = 1``).
        max_iter: iteration cap.
        tol: stop when the relative change ``‖u_{k+1} − u_k‖/‖u_{k+1}‖`` of every sample is below ``tol``.
        check_every: how often (in iterations) the stopping test synchronises with the device.
        u0: starting point; default the linear interpolation of ``f0, f1`` with zero momentum.

    Example:
        >>> grid = StaggeredGrid(steps=4, channels=1, height=8, width=8)
        >>> f0 = torch.rand(1, 1, 8, 8) + 0.1
        >>> f1 = f0.flip(-1)
        >>> res = ot_primal_dual(f0, f1, grid, tau=2.0, max_iter=20)
        >>> res.solution.f.shape, res.history.shape
        (torch.Size([1, 3, 1, 8, 8]), torch.Size([21, 1]))

    Returns:
        :class:`SolverResult` with ``solution`` the :class:`Staggered` ``u``; ``history`` ``(iters+1, B)`` the
        relative change (first row 1); ``info``: ``cost`` and ``cost_history`` (``Σ J · cell volume``),
        ``residual_history`` (``‖Au − b‖/‖b‖``, ``(n, B)`` at the iterations listed in ``residual_iterations``:
        0, every ``check_every``-th and the last), ``dual`` (centred dual variable), ``tau``, ``sigma``.
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
    if max_iter < 1 or not tol > 0:
        raise ValueError(f"need max_iter >= 1 and tol > 0, got max_iter={max_iter}, tol={tol}")
    batch = f0.shape[0]
    dtype, device = f0.dtype, f0.device
    tau_t = _per_sample(tau, batch, f0)
    sigma_t = 0.99 / tau_t if sigma is None else _per_sample(sigma, batch, f0)
    b = continuity_rhs(f0, f1, grid)
    s0 = interpolate_boundary(f0, f1, grid)
    b_norm = b.flatten(1).norm(dim=1).clamp_min(torch.finfo(dtype).tiny)
    if model == "constrained":
        prox_g = ConstrainedProjection(grid, dtype=dtype, device=device)
    else:
        prox_g = PenalizedProx(grid, lam, tau_t.reshape(-1), batch=batch, dtype=dtype, device=device)

    if u0 is None:
        u = grid.zeros(batch, dtype=dtype, device=device)
        t = torch.arange(1, grid.steps, dtype=dtype, device=device).view(1, -1, 1, 1, 1) / grid.steps
        u = u._replace(f=(1 - t) * f0.unsqueeze(1) + t * f1.unsqueeze(1))
    else:
        u = u0
    if model == "constrained":
        u = prox_g(u, b)
    su = interpolate(u, grid)  # S u, kept from one iteration to the next: S ū = 2 S u⁺ − S u
    su_bar = su
    y = Centred(*(None if x is None else torch.zeros_like(x) for x in su))

    change = torch.ones(max_iter + 1, batch, dtype=dtype, device=device)
    costs = torch.zeros(max_iter + 1, batch, dtype=dtype, device=device)
    checked = [0]
    resid = [(continuity(u, grid) - b).flatten(1).norm(dim=1) / b_norm]
    costs[0] = transport_cost(su.mx, su.my, su.mc, su.f + s0, grid.cell_volume)
    gamma = 1.0 / sigma_t
    iters = 0
    for k in range(1, max_iter + 1):
        # Dual step: y ← prox_{σF*}(y + σ(S ū + s₀)) by Moreau with prox_{J/σ}.
        z = [None if yi is None else yi + sigma_t * si for yi, si in zip(y, su_bar)]
        z[3] = z[3] + sigma_t * s0
        pm, pf = prox_kinetic([None if zi is None else zi * gamma for zi in z[:3]], z[3] * gamma, gamma)
        y = Centred(*(None if zi is None else zi - sigma_t * pi for zi, pi in zip(z, (*pm, pf))))
        # Primal step: u⁺ ← prox_{τG}(u − τ Sᵀ y), extrapolation ū = 2u⁺ − u.
        sty = interpolate_adjoint(y, grid)
        u_new = prox_g(Staggered(*(None if ui is None else ui - tau_t * si for ui, si in zip(u, sty))), b)
        change[k] = (
            _norm_sq([None if a is None else a - c for a, c in zip(u_new, u)])
            / _norm_sq(u_new).clamp_min(torch.finfo(dtype).tiny)
        ).sqrt()
        su_new = interpolate(u_new, grid)
        su_bar = [None if a is None else 2 * a - c for a, c in zip(su_new, su)]
        u, su = u_new, su_new
        costs[k] = transport_cost(su.mx, su.my, su.mc, su.f + s0, grid.cell_volume)
        iters = k
        if k % check_every == 0 or k == max_iter:
            checked.append(k)
            resid.append((continuity(u, grid) - b).flatten(1).norm(dim=1) / b_norm)
            if bool((change[k] < tol).all()):
                break

    cost = costs[iters]
    return SolverResult(
        solution=u,
        iterations=iters,
        history=change[: iters + 1],
        converged=change[iters] < tol,
        info={
            "cost": cost,
            "cost_history": costs[: iters + 1],
            "residual_history": torch.stack(resid),
            "residual_iterations": checked,
            "dual": y,
            "tau": tau_t.reshape(-1),
            "sigma": sigma_t.reshape(-1),
        },
    )
