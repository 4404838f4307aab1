"""OT primal–dual: the prox/projection solves against dense solves, the minimiser against an independent dense
model of the discrete problem minimised by SciPy, and the iteration's invariants (feasibility, per-sample stopping,
the stopping criterion, float32 round-off)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import scipy.linalg as sla
import torch
from scipy.optimize import minimize
from skimage import data

from fusion.ops.staggered import Staggered, StaggeredGrid, continuity, continuity_rhs, interpolate
from fusion.optim.ot_primal_dual import CRITERION, ConstrainedProjection, PenalizedProx, ot_primal_dual

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


@pytest.mark.parametrize("refine", [False, True])
@pytest.mark.parametrize("name", list(GRIDS))
def test_projection_matches_dense_least_squares(name, refine, gen):
    grid = GRIDS[name]
    a, z = _dense_a(grid)
    f0 = torch.rand(1, grid.channels, grid.height, grid.width, generator=gen, dtype=torch.float64)
    f1 = torch.rand(1, grid.channels, grid.height, grid.width, generator=gen, dtype=torch.float64)
    f1 = f1 * f0.sum() / f1.sum()
    b = continuity_rhs(f0, f1, grid)
    v = torch.randn(_flat(z).numel(), generator=gen, dtype=torch.float64)
    # dense reference: v − Aᵀ (AAᵀ)⁺ (Av − b)
    ref = v - a.T @ torch.linalg.lstsq(a @ a.T, a @ v - b.reshape(-1), driver="gelsd").solution
    proj = ConstrainedProjection(grid, dtype=torch.float64, refine=refine)
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


def _photos(h, w, channels=3, dtype=torch.float64):
    """Two real crops (astronaut, coffee) + 0.2 of equal mass, ``(1, C, h, w)``."""
    a = torch.from_numpy(np.ascontiguousarray(data.astronaut()[100 : 100 + h, 200 : 200 + w])).permute(2, 0, 1)
    c = torch.from_numpy(np.ascontiguousarray(data.coffee()[150 : 150 + h, 300 : 300 + w])).permute(2, 0, 1)
    a, c = a[None, :channels].to(dtype) / 255 + 0.2, c[None, :channels].to(dtype) / 255 + 0.2
    return a, c * a.sum() / c.sum()


# ------------------------------------------------------------------------------------------------------------
# An independent dense model of the discrete problem (Fitschen et al., appendix: tensor products), minimised
# by L-BFGS: the staggered unknowns (m_x, m_y, m_c, f) on (P, C, H, W) arrays flattened in C order.
# ------------------------------------------------------------------------------------------------------------


def _face_diff(n, h, periodic=False):
    """Cells × faces: ``(m_i − m_{i−1})/h``; faces between neighbouring cells (periodic: face i joins i, i+1)."""
    if periodic:
        return (np.eye(n) - np.roll(np.eye(n), 1, axis=0)) / h
    d = np.zeros((n, n - 1))
    d[np.arange(n - 1), np.arange(n - 1)] = 1
    d[np.arange(1, n), np.arange(n - 1)] = -1
    return d / h


def _face_mean(n, periodic=False):
    if periodic:
        return 0.5 * (np.eye(n) + np.roll(np.eye(n), 1, axis=0))
    a = np.zeros((n, n - 1))
    a[np.arange(n - 1), np.arange(n - 1)] = 0.5
    a[np.arange(1, n), np.arange(n - 1)] = 0.5
    return a


def _kron(*ms):
    out = ms[0]
    for m in ms[1:]:
        out = np.kron(out, m)
    return out


def _dense_model(p, c, h, w, color_bc):
    """``A`` (continuity, cells × unknowns) and ``S`` (centring) as dense Kronecker products."""
    hs, eye = 1 / max(h, w), np.eye
    a_blocks = [_kron(eye(p), eye(c), _face_diff(h, hs), eye(w)), _kron(eye(p), eye(c), eye(h), _face_diff(w, hs))]
    s_blocks = [_kron(eye(p), eye(c), _face_mean(h), eye(w)), _kron(eye(p), eye(c), eye(h), _face_mean(w))]
    if c > 1:
        per = color_bc == "periodic"
        a_blocks.append(_kron(eye(p), _face_diff(c, 1 / c, per), eye(h), eye(w)))
        s_blocks.append(_kron(eye(p), _face_mean(c, per), eye(h), eye(w)))
    a_blocks.append(_kron(_face_diff(p, 1 / p), eye(c * h * w)))  # time: interior nodes are the "faces"
    s_blocks.append(_kron(_face_mean(p), eye(c * h * w)))
    return np.hstack(a_blocks), sla.block_diag(*s_blocks)


def _reference_minimiser(f0, f1, p, color_bc, model, lam=None):
    """Minimise ``Σ J(S u + s₀)`` s.t. ``Au = b`` (constrained, over the null space of A) or ``+ (λ/2)‖Au − b‖²``."""
    f0, f1 = f0[0].numpy(), f1[0].numpy()
    c, h, w = f0.shape
    a, s = _dense_model(p, c, h, w, color_bc)
    ncell = p * c * h * w
    b, s0 = np.zeros((p, c * h * w)), np.zeros((p, c * h * w))
    b[0], b[-1] = f0.ravel() * p, -f1.ravel() * p
    s0[0], s0[-1] = 0.5 * f0.ravel(), 0.5 * f1.ravel()
    b, s0 = b.ravel(), s0.ravel()
    k = 3 if c > 1 else 2

    def energy(x):
        v = s @ x
        m, f = v[: k * ncell].reshape(k, ncell), v[k * ncell :] + s0
        if (f <= 0).any():
            return np.inf, np.zeros_like(x)
        g = s.T @ np.concatenate([(m / f).ravel(), -(m * m).sum(0) / (2 * f * f)])
        return ((m * m).sum(0) / (2 * f)).sum(), g

    nf = (p - 1) * c * h * w
    t = (np.arange(1, p) / p)[:, None]
    x0 = np.concatenate([np.zeros(a.shape[1] - nf), ((1 - t) * f0.ravel() + t * f1.ravel()).ravel()])
    opts = dict(maxiter=20000, ftol=1e-15, gtol=1e-12, maxcor=50)
    if model == "constrained":
        null = sla.null_space(a)
        xp = x0 - np.linalg.lstsq(a, a @ x0 - b, rcond=None)[0]

        def fun(z):
            e, g = energy(xp + null @ z)
            return e, null.T @ g

        x = xp + null @ minimize(fun, np.zeros(null.shape[1]), jac=True, method="L-BFGS-B", options=opts).x
    else:

        def fun(x):
            e, g = energy(x)
            r = a @ x - b
            return e + 0.5 * lam * r @ r, g + lam * a.T @ r

        x = minimize(fun, x0, jac=True, method="L-BFGS-B", options=opts).x
    v = s @ x
    m, f = v[: k * ncell].reshape(k, ncell), v[k * ncell :] + s0
    cost = ((m * m).sum(0) / (2 * f)).sum() / (p * max(h, w) ** 2 * (c if c > 1 else 1))
    return x[-nf:].reshape(p - 1, c, h, w), m.reshape(k, p, c, h, w), cost


@pytest.mark.parametrize(
    "channels,color_bc,model,relaxation",
    [
        (3, "periodic", "constrained", 1.9),
        (3, "mirror", "constrained", 1.9),
        (1, "periodic", "constrained", 1.9),
        (3, "periodic", "constrained", 1.0),
        (3, "periodic", "penalized", 1.9),
        (3, "mirror", "penalized", 1.0),
    ],
)
def test_minimiser_matches_independent_dense_model(channels, color_bc, model, relaxation):
    f0, f1 = _photos(3, 4, channels)
    lam = 2.0
    if model == "penalized":
        f1 = 1.5 * f1
    p = 3
    ref_f, ref_m, ref_cost = _reference_minimiser(f0, f1, p, color_bc, model, lam)
    grid = StaggeredGrid(p, channels, 3, 4, color_bc)
    res = ot_primal_dual(f0, f1, grid, model=model, lam=lam, tau=1.0, relaxation=relaxation, max_iter=20000, tol=1e-10)
    assert bool(res.converged.all())
    atol = 1e-6 if model == "constrained" else 2e-5  # the penalised reference solves an unconstrained L-BFGS
    assert np.abs(res.solution.f[0].numpy() - ref_f).max() < atol
    v = interpolate(res.solution, grid)
    m = torch.stack([x for x in (v.mx, v.my, v.mc) if x is not None])[:, 0].numpy()
    assert np.abs(m - ref_m).max() < 10 * atol
    assert res.info["cost"].item() == pytest.approx(ref_cost, rel=1e-6)


# ------------------------------------------------------------------------------------------------------------
# The iteration
# ------------------------------------------------------------------------------------------------------------


def test_constrained_iteration_stays_feasible_and_converges(dtype):
    f0, f1 = (f.to(dtype) for f in _bumps(12))
    grid = StaggeredGrid(6, 1, 12, 12)
    res = ot_primal_dual(f0, f1, grid, tau=0.5, max_iter=2000, tol=1e-6)
    assert bool(res.converged.all()) and res.iterations < 2000
    assert res.history.shape == (res.iterations + 1, 1)
    assert res.info["cost_history"].shape == res.history.shape
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    assert res.info["residual_history"].max() < tol  # every iterate satisfies A u = b
    h = res.history[:, 0]
    assert h[-1] < 1e-2 * h[2:20].max()  # the iterates settle
    c = res.info["cost_history"][:, 0]
    assert abs(c[-1] - c[-50]) < 1e-4 * c[-1]
    assert res.converged.shape == (1,) and res.converged.dtype == torch.bool
    assert res.criterion == CRITERION["constrained"] and res.tol == 1e-6 and res.reached.shape == (1,)


@pytest.mark.parametrize("model", ["constrained", "penalized"])
def test_samples_stop_independently(model, dtype):
    """A sample stops at the same iteration with the same iterate alone as in a batch with others."""
    f0, f1 = _bumps(8, dtype)
    g0, g1 = f1.flip(-1), f0.flip(-2)
    h0, h1 = _photos(8, 8, 1, dtype)
    if model == "penalized":
        g1 = 2 * g1
    grid = StaggeredGrid(4, 1, 8, 8)
    kw = dict(model=model, lam=5.0, tau=0.5, max_iter=3000, tol=1e-5)
    both = ot_primal_dual(torch.cat([f0, g0, h0]), torch.cat([f1, g1, h1]), grid, **kw)
    its = both.info["iterations"].tolist()
    assert len(set(its)) == 3 and bool(both.converged.all()) and both.iterations == max(its)
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for i, (a, b) in enumerate([(f0, f1), (g0, g1), (h0, h1)]):
        one = ot_primal_dual(a, b, grid, **kw)
        assert one.iterations == its[i] and one.info["iterations"].tolist() == [its[i]]
        for x, y in zip(both.solution, one.solution):
            if x is not None:
                assert torch.allclose(x[i : i + 1], y, atol=tol, rtol=0)
        assert torch.allclose(both.info["dual"].f[i : i + 1], one.info["dual"].f, atol=tol, rtol=0)
        assert both.info["cost"][i].item() == pytest.approx(one.info["cost"].item(), rel=tol)


def test_stopping_test_is_the_windowed_change_and_the_residual():
    """``reached`` at a check is ‖u_k − u_j‖/((k − j)‖u_k‖) (max with the relative residual when constrained)."""
    f0, f1 = _photos(5, 6)
    grid = StaggeredGrid(4, 3, 5, 6)
    for model in ("constrained", "penalized"):
        kw = dict(model=model, lam=3.0, tau=2.0, tol=1e-30, check_every=7)
        a = ot_primal_dual(f0, f1, grid, max_iter=14, **kw)
        b = ot_primal_dual(f0, f1, grid, max_iter=21, **kw)
        c = ot_primal_dual(f0, f1, grid, max_iter=25, **kw)  # last window shorter: 4 iterations
        for u0, u1, n in ((a.solution, b.solution, 7), (b.solution, c.solution, 4)):
            d = sum(((x - y) ** 2).sum() for x, y in zip(u1, u0) if x is not None).sqrt()
            norm = sum((x**2).sum() for x in u1 if x is not None).sqrt()
            assert (b if n == 7 else c).reached.item() == pytest.approx((d / norm / n).item(), rel=1e-9)
        assert c.info["residual_iterations"] == [0, 7, 14, 21, 25]
        assert not bool(c.converged.any())


def test_constrained_criterion_includes_the_residual(monkeypatch):
    """A small change of an infeasible iterate is not convergence: with the projection replaced by the identity
    and a tiny step the iterates hardly move, yet the constrained model must not report convergence."""
    mod = sys.modules[ot_primal_dual.__module__]  # the module (the package re-exports the function's name)

    class Identity:
        def __init__(self, *args, **kwargs):
            pass

        def __call__(self, u, b):
            return u

    monkeypatch.setattr(mod, "ConstrainedProjection", Identity)
    f0, f1 = _photos(4, 5)
    grid = StaggeredGrid(3, 3, 4, 5)
    res = ot_primal_dual(f0, f1, grid, tau=1e-9, sigma=1e-9, max_iter=20, tol=1e-3)
    assert res.history[-1, 0] < 1e-6  # the iterate does not move
    assert not bool(res.converged.any())
    assert res.reached[0] == res.info["residual_history"][-1, 0] > 1e-3
    pen = ot_primal_dual(f0, f1, grid, model="penalized", tau=1e-9, sigma=1e-9, max_iter=20, tol=1e-3)
    assert bool(pen.converged.all())  # the penalised model tests the change only (it stopped at the first check)
    assert pen.iterations == 10


def test_float32_refinement_removes_the_change_floor():
    """float32 with refined solves tracks float64: the windowed change reaches 1e-5 at (about) the same check."""
    f0, f1 = _photos(16, 16, 3, torch.float64)
    grid = StaggeredGrid(8, 3, 16, 16)
    mean = 0.5 * (f0.mean() + f1.mean()).item()
    kw = dict(tau=20 * mean, max_iter=3000, tol=1e-5)
    r64 = ot_primal_dual(f0, f1, grid, **kw)
    r32 = ot_primal_dual(f0.float(), f1.float(), grid, **kw)
    assert bool(r64.converged.all()) and bool(r32.converged.all())
    assert abs(r32.iterations - r64.iterations) <= 20
    assert (r32.solution.f.double() - r64.solution.f).abs().max() < 1e-4


def test_float32_solves_are_refined():
    """A float32 projection of a far-from-feasible point errs in the range of Aᵀ by ~1e-5·‖b‖; projecting twice
    brings the residual to ~1e-7. The penalised prox of the same point (τλ = 800, as in the default of a
    64-pixel image) stays within ~1e-5 of float64 (its constant mode is left out)."""
    grid = StaggeredGrid(8, 3, 20, 24)
    gen = torch.Generator().manual_seed(2)
    f0, f1 = _photos(20, 24, 3, torch.float64)
    b = continuity_rhs(f0, f1, grid)
    z = grid.zeros(1, dtype=torch.float64)
    v = Staggered(*(None if x is None else 0.5 * torch.randn(x.shape, generator=gen, dtype=torch.float64) for x in z))
    v32 = Staggered(*(None if x is None else x.float() for x in v))
    assert ((continuity(v, grid) - b).norm() / b.norm()) > 1  # far from feasible, as in the iteration
    resid = {}
    for refine in (False, True):
        out = ConstrainedProjection(grid, dtype=torch.float32, refine=refine)(v32, b.float())
        out = Staggered(*(None if x is None else x.double() for x in out))
        resid[refine] = ((continuity(out, grid) - b).norm() / b.norm()).item()
    assert resid[True] < 1e-6 < 5e-6 < resid[False]
    assert ConstrainedProjection(grid, dtype=torch.float32).refine
    assert not ConstrainedProjection(grid, dtype=torch.float64).refine
    ref = PenalizedProx(grid, 20.0, 40.0, batch=1, dtype=torch.float64)(v, b)
    out = PenalizedProx(grid, 20.0, 40.0, batch=1, dtype=torch.float32)(v32, b.float())
    err = max((x.double() - y).abs().max().item() for x, y in zip(out, ref) if x is not None)
    assert err < 1e-5 * max(y.abs().max().item() for y in ref if y is not None)


def test_default_start_is_the_linear_interpolation():
    """Without ``u0`` the iteration starts from f_k = (1 − k/P) f0 + (k/P) f1 with zero momentum."""
    f0, f1 = _photos(4, 5)
    grid = StaggeredGrid(4, 3, 4, 5)
    t = torch.arange(1, 4, dtype=torch.float64).view(1, -1, 1, 1, 1) / 4
    start = grid.zeros(1, dtype=torch.float64)._replace(f=(1 - t) * f0.unsqueeze(1) + t * f1.unsqueeze(1))
    for model in ("constrained", "penalized"):
        a = ot_primal_dual(f0, f1, grid, model=model, lam=2.0, tau=1.0, max_iter=7, tol=1e-30)
        b = ot_primal_dual(f0, f1, grid, model=model, lam=2.0, tau=1.0, max_iter=7, tol=1e-30, u0=start)
        assert all(torch.equal(x, y) for x, y in zip(a.solution, b.solution) if x is not None)


def test_stops_at_tolerance():
    f0, f1 = _bumps(8)
    res = ot_primal_dual(f0, f1, StaggeredGrid(4, 1, 8, 8), tau=0.5, max_iter=2000, tol=1e-3, check_every=5)
    assert res.iterations < 2000 and bool(res.converged.all())
    assert res.reached[0] < 1e-3 and res.iterations % 5 == 0
    assert res.info["iterations"].tolist() == [res.iterations]


def _penalized_gradients(u, f0, f1, lam, color_bc="periodic"):
    """Gradients of the kinetic term and of the penalty ``(λ/2)‖Au − b‖²`` at a staggered ``u`` (batch 1), from
    the dense model above (not from the package's operators)."""
    c, h, w = f0.shape[1:]
    p = u.mx.shape[1]
    a, s = _dense_model(p, c, h, w, color_bc)
    x = np.concatenate([t[0].numpy().ravel() for t in u if t is not None])
    ncell, k = p * c * h * w, 3 if c > 1 else 2
    b, s0 = np.zeros((p, c * h * w)), np.zeros((p, c * h * w))
    b[0], b[-1] = f0[0].numpy().ravel() * p, -f1[0].numpy().ravel() * p
    s0[0], s0[-1] = 0.5 * f0[0].numpy().ravel(), 0.5 * f1[0].numpy().ravel()
    v = s @ x
    m, f = v[: k * ncell].reshape(k, ncell), v[k * ncell :] + s0.ravel()
    assert (f > 0).all()
    kinetic = s.T @ np.concatenate([(m / f).ravel(), -(m * m).sum(0) / (2 * f * f)])
    return kinetic, lam * a.T @ (a @ x - b.ravel())


def test_penalized_with_unequal_mass_converges():
    f0, f1 = _bumps(8)
    lam = 10.0
    res = ot_primal_dual(
        f0, 2 * f1, StaggeredGrid(4, 1, 8, 8), model="penalized", lam=lam, tau=0.5, max_iter=3000, tol=1e-6
    )
    assert bool(res.converged.all())
    assert res.criterion == CRITERION["penalized"]
    assert res.info["residual_history"][-1, 0] > 1e-3  # the penalised minimiser is not feasible, and need not be
    # and it is the minimiser for this λ: the gradients of the cost and of the penalty cancel (first-order
    # optimality, E smooth where f > 0): measured 7e-6 of either at tol 1e-6, while a solve with λ/2 or 2λ leaves
    # 0.5 or 1
    kinetic, penalty = _penalized_gradients(res.solution, f0, 2 * f1, lam)
    assert np.linalg.norm(kinetic + penalty) < 1e-3 * np.linalg.norm(penalty)
    # the recorded cost is the kinetic energy of the final iterate, Σ |m|²/(2f) · h_t h²
    v = interpolate(res.solution, StaggeredGrid(4, 1, 8, 8))
    f = v.f.clone()
    f[:, 0] += 0.5 * f0
    f[:, -1] += 0.5 * 2 * f1
    cost = ((v.mx**2 + v.my**2) / (2 * f)).sum() / (4 * 8**2)
    assert res.info["cost_history"][-1, 0].item() == pytest.approx(cost.item(), rel=1e-12)


def test_gradcheck_through_the_iterations():
    f0, f1 = _photos(3, 4)
    grid = StaggeredGrid(3, 3, 3, 4)
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(1, 2, 3, 3, 4, generator=gen, dtype=torch.float64)
    for model in ("constrained", "penalized"):

        def fn(a, b):
            r = ot_primal_dual(a, b, grid, model=model, lam=2.0, tau=1.0, max_iter=10, tol=1e-30)
            return (r.solution.f * w).sum() + r.info["cost"].sum()

        assert torch.autograd.gradcheck(fn, (f0.clone().requires_grad_(), f1.clone().requires_grad_()))


def test_rejects_bad_arguments():
    f0, f1 = _bumps(8)
    grid = StaggeredGrid(4, 1, 8, 8)
    with pytest.raises(ValueError, match="model"):
        ot_primal_dual(f0, f1, grid, model="free")
    with pytest.raises(ValueError, match="f0 and f1"):
        ot_primal_dual(f0, f1, StaggeredGrid(4, 3, 8, 8))
    for kw, match in [
        (dict(max_iter=0), "max_iter"),
        (dict(max_iter=1.5), "max_iter"),
        (dict(tol=0.0), "tol"),
        (dict(check_every=0), "check_every"),
        (dict(relaxation=0.0), "relaxation"),
        (dict(relaxation=2.0), "relaxation"),
    ]:
        with pytest.raises(ValueError, match=match):
            ot_primal_dual(f0, f1, grid, **kw)
