"""OT primal–dual: the two prox/projection solves against dense solves, and the iteration's invariants."""

from __future__ import annotations

import pytest
import torch

from fusion.ops.staggered import Staggered, StaggeredGrid, continuity, continuity_rhs
from fusion.optim.ot_primal_dual import ConstrainedProjection, PenalizedProx, ot_primal_dual

GRIDS = {
    "gray": StaggeredGrid(4, 1, 4, 5),
    "rgb-periodic": StaggeredGrid(3, 3, 3, 4, "periodic"),
    "rgb-mirror": StaggeredGrid(3, 3, 3, 4, "mirror"),
}


pytestmark = pytest.mark.usefixtures("single_thread")


def _flat(u):
    return torch.cat([x.reshape(-1) for x in u if x is not None])


def _unflat(vec, like):
    out, i = [], 0
    for x in like:
        if x is None:
            out.append(None)
            continue
        out.append(vec[i : i + x.numel()].reshape(x.shape))
        i += x.numel()
    return Staggered(*out)


def _dense_a(grid):
    z = grid.zeros(1, dtype=torch.float64)
    n = _flat(z).numel()
    eye = torch.eye(n, dtype=torch.float64)
    return torch.stack([continuity(_unflat(eye[j], z), grid).reshape(-1) for j in range(n)], 1), z


@pytest.mark.parametrize("name", list(GRIDS))
def test_projection_matches_dense_least_squares(name, gen):
    grid = GRIDS[name]
    a, z = _dense_a(grid)
    f0 = torch.rand(1, grid.channels, grid.height, grid.width, generator=gen, dtype=torch.float64)
    f1 = torch.rand(1, grid.channels, grid.height, grid.width, generator=gen, dtype=torch.float64)
    f1 = f1 * f0.sum() / f1.sum()
    b = continuity_rhs(f0, f1, grid)
    v = torch.randn(_flat(z).numel(), generator=gen, dtype=torch.float64)
    # dense reference: v − Aᵀ (AAᵀ)⁺ (Av − b)
    ref = v - a.T @ torch.linalg.lstsq(a @ a.T, a @ v - b.reshape(-1), driver="gelsd").solution
    proj = ConstrainedProjection(grid, dtype=torch.float64)
    out = proj(_unflat(v, z), b)
    assert torch.allclose(_flat(out), ref, atol=1e-9)
    assert torch.allclose(continuity(out, grid), b, atol=1e-9)  # equal masses: the constraint holds exactly
    assert torch.allclose(_flat(proj(out, b)), _flat(out), atol=1e-9)  # idempotent


@pytest.mark.parametrize("name", list(GRIDS))
@pytest.mark.parametrize("lam,tau", [(0.3, 2.0), (5.0, 0.1)])
def test_penalized_prox_matches_dense_solve(name, lam, tau, gen):
    grid = GRIDS[name]
    a, z = _dense_a(grid)
    n = a.shape[1]
    f0 = torch.rand(1, grid.channels, grid.height, grid.width, generator=gen, dtype=torch.float64)
    f1 = 2 * torch.rand(1, grid.channels, grid.height, grid.width, generator=gen, dtype=torch.float64)
    b = continuity_rhs(f0, f1, grid)
    v = torch.randn(n, generator=gen, dtype=torch.float64)
    ref = torch.linalg.solve(
        lam * a.T @ a + torch.eye(n, dtype=torch.float64) / tau, v / tau + lam * a.T @ b.reshape(-1)
    )
    out = PenalizedProx(grid, lam, tau, batch=1, dtype=torch.float64)(_unflat(v, z), b)
    assert torch.allclose(_flat(out), ref, atol=1e-9)


@pytest.mark.parametrize("name", list(GRIDS))
def test_schur_solve_matches_dense_solve(name, gen):
    grid = GRIDS[name]
    a, z = _dense_a(grid)
    n = a.shape[1]
    lam, tau = 2.5, 0.4
    rhs = torch.randn(n, generator=gen, dtype=torch.float64)
    ref = torch.linalg.solve(lam * a.T @ a + torch.eye(n, dtype=torch.float64) / tau, rhs)
    out = PenalizedProx(grid, lam, tau, batch=1, dtype=torch.float64).solve(_unflat(rhs, z))
    assert torch.allclose(_flat(out), ref, atol=1e-9)


def test_penalized_prox_float32_accuracy(gen):
    """Large residuals (an infeasible point, steps and weights as in ot_interpolate): float32 stays accurate."""
    grid = StaggeredGrid(16, 3, 26, 32, "mirror")
    lam, tau = 25.0, 4.0
    z = grid.zeros(1, dtype=torch.float64)
    v = Staggered(*(None if x is None else 0.4 * torch.rand(x.shape, generator=gen, dtype=torch.float64) for x in z))
    f0, f1 = (torch.rand(1, 3, 26, 32, generator=gen, dtype=torch.float64) for _ in range(2))
    b = continuity_rhs(f0, f1, grid)
    ref = PenalizedProx(grid, lam, tau, batch=1, dtype=torch.float64)(v, b)
    out = PenalizedProx(grid, lam, tau, batch=1, dtype=torch.float32)(
        Staggered(*(None if x is None else x.float() for x in v)), b.float()
    )
    assert (_flat(out).double() - _flat(ref)).abs().max() < 1e-4


def test_penalized_prox_per_sample_parameters(gen):
    grid = GRIDS["rgb-periodic"]
    a, z = _dense_a(grid)
    n = a.shape[1]
    lams, taus = torch.tensor([0.5, 3.0], dtype=torch.float64), torch.tensor([1.5, 0.2], dtype=torch.float64)
    v = torch.randn(2, n, generator=gen, dtype=torch.float64)
    b = torch.randn(2, *continuity(z, grid).shape[1:], generator=gen, dtype=torch.float64)
    zb = grid.zeros(2, dtype=torch.float64)
    batched = Staggered(
        *(None if x is None else torch.stack([_unflat(v[i], z)[k][0] for i in range(2)]) for k, x in enumerate(zb))
    )
    out = PenalizedProx(grid, lams, taus, batch=2, dtype=torch.float64)(batched, b)
    for i in range(2):
        m = lams[i] * a.T @ a + torch.eye(n, dtype=torch.float64) / taus[i]
        ref = torch.linalg.solve(m, v[i] / taus[i] + lams[i] * a.T @ b[i].reshape(-1))
        got = torch.cat([x[i].reshape(-1) for x in out if x is not None])
        assert torch.allclose(got, ref, atol=1e-9)


def _bumps(n, dtype=torch.float64):
    x = (torch.arange(n, dtype=dtype) + 0.5) / n
    xx, yy = torch.meshgrid(x, x, indexing="ij")
    f0 = torch.exp(-((xx - 0.35) ** 2 + (yy - 0.4) ** 2) / 0.02) + 0.01
    f1 = torch.exp(-((xx - 0.6) ** 2 + (yy - 0.55) ** 2) / 0.02) + 0.01
    return f0[None, None], (f1 * f0.sum() / f1.sum())[None, None]


def test_constrained_iteration_stays_feasible_and_converges(dtype):
    f0, f1 = (f.to(dtype) for f in _bumps(12))
    grid = StaggeredGrid(6, 1, 12, 12)
    res = ot_primal_dual(f0, f1, grid, tau=0.5, max_iter=400, tol=1e-6)
    assert res.history.shape == (res.iterations + 1, 1)
    assert res.info["cost_history"].shape == res.history.shape
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    assert res.info["residual_history"].max() < tol  # every iterate satisfies A u = b
    h = res.history[:, 0]
    assert h[-1] < 1e-2 * h[1:20].max()  # the iterates settle
    c = res.info["cost_history"][:, 0]
    assert abs(c[-1] - c[-50]) < 1e-3 * c[-1]
    assert res.converged.shape == (1,) and res.converged.dtype == torch.bool


def test_batch_matches_single_solves():
    f0, f1 = _bumps(8)
    g0, g1 = f1.flip(-1), 2 * f0.flip(-2) * f1.sum() / f0.sum() / 2
    grid = StaggeredGrid(4, 1, 8, 8)
    both = ot_primal_dual(torch.cat([f0, g0]), torch.cat([f1, g1]), grid, tau=0.5, max_iter=60, tol=1e-12)
    one = ot_primal_dual(g0, g1, grid, tau=0.5, max_iter=60, tol=1e-12)
    assert torch.allclose(both.solution.f[1:], one.solution.f, atol=1e-10)
    assert torch.allclose(both.info["cost"][1:], one.info["cost"], rtol=1e-10)


def test_stops_at_tolerance():
    f0, f1 = _bumps(8)
    res = ot_primal_dual(f0, f1, StaggeredGrid(4, 1, 8, 8), tau=0.5, max_iter=2000, tol=1e-3, check_every=5)
    assert res.iterations < 2000 and bool(res.converged.all())
    assert res.history[-1, 0] < 1e-3 and res.iterations % 5 == 0


def test_penalized_with_unequal_mass_runs():
    f0, f1 = _bumps(8)
    res = ot_primal_dual(
        f0, 2 * f1, StaggeredGrid(4, 1, 8, 8), model="penalized", lam=10.0, tau=0.5, max_iter=200, tol=1e-12
    )
    assert torch.isfinite(res.info["cost_history"]).all()
    assert res.history[-1, 0] < 1e-2 * res.history[1:10, 0].max()


def test_rejects_bad_arguments():
    f0, f1 = _bumps(8)
    grid = StaggeredGrid(4, 1, 8, 8)
    with pytest.raises(ValueError, match="model"):
        ot_primal_dual(f0, f1, grid, model="free")
    with pytest.raises(ValueError, match="f0 and f1"):
        ot_primal_dual(f0, f1, StaggeredGrid(4, 3, 8, 8))
    with pytest.raises(ValueError, match="max_iter"):
        ot_primal_dual(f0, f1, grid, max_iter=0)
