"""Dynamic optimal transport between images: the model against closed forms (translation, 1-D monotone
rearrangement), mass, the colour circle, unbalanced transport; batch independence, convergence reporting,
gradients, input validation, and the command-line adapter's values."""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from fusion import ConvergenceWarning
from fusion.methods.ot import OTResult, ot_cli, ot_solve
from fusion.methods.registry import MethodOutput, method_spec
from fusion.ops.filters import resize
from fusion.ops.staggered import (
    Staggered,
    StaggeredGrid,
    continuity,
    continuity_rhs,
    interpolate,
    interpolate_boundary,
)
from fusion.optim.ot_primal_dual import CRITERION, ot_primal_dual

pytestmark = pytest.mark.usefixtures("single_thread")


def _grid(n, dtype=torch.float64):
    x = (torch.arange(n, dtype=dtype) + 0.5) / n
    return torch.meshgrid(x, x, indexing="ij")


def _bump(xx, yy, cx, cy, s=0.08):
    return torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))


#: Primal step for the bump tests: concentrated mass moving far wants a smaller step than the photograph default
#: (measured on the 32×32 translated bump: 1110 iterations to tol 1e-5 with 0.3, 3400 with the default 1.25).
BUMP_TAU = 0.3


def _centroid(frames, xx, yy):
    mass = frames.sum((-2, -1))
    return (frames * xx).sum((-2, -1)) / mass, (frames * yy).sum((-2, -1)) / mass


def _photo(name, y, x, h, w, dtype=torch.float64):
    """A real ``(1, 3, h, w)`` crop of a scikit-image photograph in [0, 1]."""
    img = getattr(data, name)()[y : y + h, x : x + w]
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].to(dtype) / 255


@contextlib.contextmanager
def _quiet():
    """Ignore the convergence warnings of deliberately short runs."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def _monotone_rearrangement_cdf(p0, p1, t, edges):
    """CDF at ``edges`` of the displacement interpolation of two 1-D cell densities (masses 1) on [0, 1].

    In 1-D the optimal map is the monotone rearrangement: the quantile functions interpolate linearly,
    ``Q_t = (1 − t) Q_0 + t Q_1`` (Villani, Thm. 2.18); the CDF is the inverse of ``Q_t``.
    """
    x = np.linspace(0, 1, len(p0) + 1)
    c0, c1 = np.concatenate([[0], np.cumsum(p0)]), np.concatenate([[0], np.cumsum(p1)])
    q = np.linspace(0, 1, 40001)
    qt = (1 - t) * np.interp(q, c0, x) + t * np.interp(q, c1, x)
    return np.interp(edges, qt, q)


def _w2_squared(p0, p1):
    x = np.linspace(0, 1, len(p0) + 1)
    q = np.linspace(0, 1, 40001)
    d = np.interp(q, np.concatenate([[0], np.cumsum(p0)]), x) - np.interp(q, np.concatenate([[0], np.cumsum(p1)]), x)
    return np.trapezoid(d * d, q)


def _cost_from_frames(r):
    """``Σ |m|²/(2f) · cell volume`` recomputed from the returned frames and centred momentum (float64): the
    density at a time cell is the mean of the two frames around it, the cell volume ``1/(P · max(H, W)² · C)``
    (colour weighted ``1/C`` only for colour images)."""
    frames, mom = r.frames.double(), r.momentum.double()
    steps, _, c, h, w = frames.shape
    steps -= 1
    centre = 0.5 * (frames[1:] + frames[:-1])
    volume = 1.0 / (steps * max(h, w) ** 2 * (c if c > 1 else 1))
    return ((mom * mom).sum(2) / (2 * centre)).sum((0, 2, 3, 4)) * volume


def _penalized_stationarity(r, f0, f1, lam):
    """``‖∇E(u)‖ / ‖∇P(u)‖`` at the returned staggered ``u`` for the penalised objective
    ``E = Σ |m|²/(2f) + P``, ``P = (λ/2)‖Au − b‖²`` (f, m centred), differentiated by autograd in float64.

    At the minimiser the gradients of the two terms cancel (f > 0 everywhere, so E is smooth there); a solve with a
    different λ leaves ``∇E`` of the size of ``∇P`` itself."""
    f0, f1 = f0.double(), f1.double()
    _, c, h, w = f0.shape
    grid = StaggeredGrid(r.frames.shape[0] - 1, c, h, w)
    u = Staggered(*(None if x is None else x.detach().double().requires_grad_() for x in r.solver.solution))
    v = interpolate(u, grid)
    f = v.f + interpolate_boundary(f0, f1, grid)
    assert (f > 0).all()
    kinetic = (sum(x * x for x in (v.mx, v.my, v.mc) if x is not None) / (2 * f)).sum()
    penalty = 0.5 * lam * ((continuity(u, grid) - continuity_rhs(f0, f1, grid)) ** 2).sum()
    leaves = [x for x in u if x is not None]
    gk = torch.autograd.grad(kinetic, leaves)
    gp = torch.autograd.grad(penalty, leaves)
    total = sum(((a + b) ** 2).sum() for a, b in zip(gk, gp)).sqrt()
    return (total / sum((b * b).sum() for b in gp).sqrt()).item()


def _profiles(n):
    """Two 1-D densities of equal mass with different widths (the optimal map is not a translation)."""
    x = (np.arange(n) + 0.5) / n
    a = 0.8 * np.exp(-((x - 0.3) ** 2) / (2 * 0.06**2)) + 0.05
    b = 0.45 * np.exp(-((x - 0.65) ** 2) / (2 * 0.12**2)) + 0.05
    return a, b * a.sum() / b.sum()


# ------------------------------------------------------------------------------------------------------------
# The model against closed forms
# ------------------------------------------------------------------------------------------------------------


def test_translated_bump_moves_linearly_with_cost_half_shift_squared():
    n, steps = 32, 8
    xx, yy = _grid(n)
    eps = 1e-3
    shift = (0.25, 0.15)
    f0 = _bump(xx, yy, 0.35, 0.4) + eps
    f1 = _bump(xx, yy, 0.35 + shift[0], 0.4 + shift[1]) + eps
    f1 = f1 * f0.sum() / f1.sum()
    r = ot_solve(f0[None, None], f1[None, None], steps=steps, tau=BUMP_TAU, max_iter=2000)
    assert bool(r.solver.converged.all())
    assert isinstance(r, OTResult) and r.frames.shape == (steps + 1, 1, 1, n, n)
    assert r.momentum.shape == (steps, 1, 2, 1, n, n)
    cx, cy = _centroid(r.frames[:, 0, 0], xx, yy)
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    assert torch.allclose(cx, cx[0] + t * (cx[-1] - cx[0]), atol=2e-3)
    assert torch.allclose(cy, cy[0] + t * (cy[-1] - cy[0]), atol=2e-3)
    # shape kept: the midpoint is the bump half-way (up to the numerical diffusion of the coarse grid)
    mid = _bump(xx, yy, 0.35 + shift[0] / 2, 0.4 + shift[1] / 2) + eps
    mid = mid * f0.sum() / mid.sum()
    assert (r.frames[steps // 2, 0, 0] - mid).abs().max() < 0.25 * mid.max()
    bump_mass = (f0 - eps).sum() / n**2  # the floor stays (almost) where it is
    expected = bump_mass * (shift[0] ** 2 + shift[1] ** 2) / 2
    assert r.cost.item() == pytest.approx(expected.item(), rel=0.04)
    # the momentum at the cell centres is (mass density) × (the constant velocity s) where the bump is
    vel = r.momentum[:, 0, :, 0] / (0.5 * (r.frames[1:, 0, 0] + r.frames[:-1, 0, 0])).unsqueeze(1)
    core = (0.5 * (r.frames[1:, 0, 0] + r.frames[:-1, 0, 0])) > 0.5
    assert torch.allclose(vel[:, 0][core], torch.full_like(vel[:, 0][core], shift[0]), atol=0.02)
    assert torch.allclose(vel[:, 1][core], torch.full_like(vel[:, 1][core], shift[1]), atol=0.02)


@pytest.mark.slow
def test_converged_cost_is_half_mass_times_shift_squared_at_each_resolution():
    # a Gaussian bump translated by s = (0.2, 0.2): the continuous cost is M|s|²/2. The converged discrete cost
    # stays within 0.15 % of it from 16×16 (4 steps) to 64×64 (16 steps), measured; the floor's own cost and the
    # discretisation of the time averages keep it from shrinking further, so the test bounds it at each size.
    for n, steps in [(16, 4), (32, 8)]:
        xx, yy = _grid(n)
        f0 = _bump(xx, yy, 0.4, 0.4, 0.1)
        f1 = _bump(xx, yy, 0.6, 0.6, 0.1)
        f0, f1 = f0 + 1e-4, f1 * f0.sum() / f1.sum() + 1e-4
        r = ot_solve(f0[None, None], f1[None, None], steps=steps, tau=BUMP_TAU, max_iter=8000, tol=1e-6)
        assert bool(r.solver.converged.all()), n
        expected = ((f0 - 1e-4).sum() / n**2) * 0.08 / 2
        assert r.cost.item() == pytest.approx(expected.item(), rel=5e-3), n


@pytest.mark.parametrize("n,steps,cdf_tol", [(32, 8, 8e-3), pytest.param(48, 12, 4e-3, marks=pytest.mark.slow)])
def test_one_dimensional_transport_is_the_monotone_rearrangement(n, steps, cdf_tol):
    """Rows that are all equal: transport along x only, the 1-D displacement interpolation in closed form."""
    a, b = _profiles(n)
    f0 = torch.tensor(a).view(1, 1, 1, n).expand(1, 1, 2, n).contiguous()
    f1 = torch.tensor(b).view(1, 1, 1, n).expand(1, 1, 2, n).contiguous()
    r = ot_solve(f0, f1, steps=steps, tol=1e-6, max_iter=4000)
    assert bool(r.solver.converged.all())
    edges = np.linspace(0, 1, n + 1)
    for k in range(steps + 1):
        frame = r.frames[k, 0, 0]
        assert torch.allclose(frame[0], frame[1], atol=1e-9)  # no transport across rows
        p = frame[0].numpy() / frame[0].numpy().sum()
        cdf = np.concatenate([[0], np.cumsum(p)])
        exact = _monotone_rearrangement_cdf(a / a.sum(), b / b.sum(), k / steps, edges)
        assert np.abs(cdf - exact).max() < cdf_tol, k
    assert torch.allclose(r.momentum[:, 0, 0], torch.zeros_like(r.momentum[:, 0, 0]), atol=1e-9)  # no flow across rows
    # cost = mass · W₂²/2 with the mass Σ f h² (h = 1/n; the image is 2 rows high)
    mass = f0.sum().item() / n**2
    assert r.cost.item() == pytest.approx(mass * _w2_squared(a / a.sum(), b / b.sum()) / 2, rel=0.01)


def test_time_reversal_reverses_the_frames():
    """Swapping f0 and f1 reverses the discrete geodesic (the scheme is symmetric in time) and negates m."""
    f0 = _photo("astronaut", 100, 200, 6, 7) + 0.05
    f1 = _photo("coffee", 150, 300, 6, 7) + 0.05
    f1 = f1 * f0.sum() / f1.sum()
    for kw in (dict(), dict(model="penalized", color_bc="mirror")):
        with _quiet():
            fwd = ot_solve(f0, f1, steps=5, max_iter=120, tol=1e-14, **kw)
            bwd = ot_solve(f1, f0, steps=5, max_iter=120, tol=1e-14, **kw)
        assert torch.allclose(bwd.frames, fwd.frames.flip(0), atol=1e-10)
        assert torch.allclose(bwd.momentum, -fwd.momentum.flip(0), atol=1e-10)
        assert bwd.cost.item() == pytest.approx(fwd.cost.item(), rel=1e-10)


def test_constrained_keeps_mass_in_every_slice(dtype):
    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].to(dtype) / 255
    img2 = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].to(dtype) / 255
    f0 = resize(img, (10, 12)).clamp_min(0) + 0.01
    f1 = resize(img2, (10, 12)).clamp_min(0) + 0.01
    f1 = f1 * f0.sum() / f1.sum()
    with _quiet():
        r = ot_solve(f0, f1, steps=6, max_iter=150)
    mass = r.frames.flatten(2).sum(2)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(mass, mass[0].expand_as(mass), rtol=rtol)
    assert torch.equal(r.frames[0], f0) and torch.equal(r.frames[-1], f1)
    assert r.frames.dtype == dtype
    # the reported cost is the kinetic energy of the returned frames and momentum (any iterate, converged or not)
    rel = 1e-5 if dtype == torch.float32 else 1e-10
    assert torch.allclose(r.cost.double(), _cost_from_frames(r), rtol=rel, atol=0)


def _red_to_blue(color_bc):
    f0 = torch.full((1, 3, 4, 4), 0.01, dtype=torch.float64)
    f0[:, 0] = 1
    r = ot_solve(f0, f0.flip(1), steps=8, color_bc=color_bc, max_iter=3000)
    assert bool(r.solver.converged.all())
    return r.frames[:, 0].mean((-2, -1))  # (T, 3) mean colour per frame


def test_red_turns_blue_through_magenta_with_periodic_colour():
    colours = _red_to_blue("periodic")
    mid = colours[4]
    assert mid[0] > 0.3 and mid[2] > 0.3 and mid[1] < 0.15  # red + blue, little green
    assert (colours[:, 1] < 0.15).all()
    # on the colour circle red → blue is one step backwards (B|R face): red falls and blue rises monotonically
    assert (colours[:, 0].diff() < 0).all() and (colours[:, 2].diff() > 0).all()


def test_red_turns_blue_through_green_with_mirror_colour():
    colours = _red_to_blue("mirror")
    mid = colours[4]
    assert mid[1] > 0.5 and mid[1] > mid[0] and mid[1] > mid[2]


def test_penalized_handles_unequal_mass(dtype):
    xx, yy = _grid(12, dtype)
    f0 = _bump(xx, yy, 0.4, 0.4)[None, None] + 0.01
    f1 = 3 * _bump(xx, yy, 0.6, 0.6)[None, None] + 0.01
    with pytest.raises(ValueError, match="penalized"):
        ot_solve(f0, f1)
    r = ot_solve(f0, f1, steps=6, model="penalized", max_iter=3000)
    assert bool(r.solver.converged.all())
    # the frames minimise the penalised objective with the documented default λ = 10 / mean density: its gradient
    # vanishes (up to the convergence at tol, ~1e-2 relative; float32 round-off in the iterate adds ~0.1), while a
    # λ off by a factor 2 leaves 0.5 or more
    lam = 10 / (0.5 * (f0.double().mean() + f1.double().mean()))
    assert _penalized_stationarity(r, f0, f1, lam) < (0.25 if dtype == torch.float32 else 0.05)
    assert torch.allclose(r.cost.double(), _cost_from_frames(r), rtol=1e-5 if dtype == torch.float32 else 1e-10)
    assert torch.equal(r.frames[0], f0) and torch.equal(r.frames[-1], f1)
    mass = r.frames.flatten(1).sum(1)
    assert (mass.diff() > 0).all()  # mass grows from f0's to f1's
    assert (r.frames > -0.05).all()
    # the continuity equation is violated by at least the mass difference (so the residual is not tested):
    # Σ_cells (Au − b) = (M₁ − M₀)/h_t whatever u, hence ‖Au − b‖ ≥ |M₁ − M₀| / (h_t √cells) (Cauchy–Schwarz)
    cells = 6 * f0.numel()
    b_norm = (torch.cat([f0, f1]) * 6).norm()  # b holds f0/h_t and −f1/h_t in the first and last time cells
    bound = ((f1.sum() - f0.sum()).abs() * 6 / cells**0.5 / b_norm).item()
    assert bound > 0.05
    assert r.solver.info["residual_history"][-1, 0].item() >= bound * (1 - 1e-4)


def test_penalized_tends_to_constrained_for_large_lambda():
    xx, yy = _grid(16)
    f0 = _bump(xx, yy, 0.35, 0.4, 0.1)[None, None] + 0.01
    f1 = _bump(xx, yy, 0.6, 0.6, 0.1)[None, None] + 0.01
    f1 = f1 * f0.sum() / f1.sum()
    c = ot_solve(f0, f1, steps=6, tau=BUMP_TAU, max_iter=3000)
    weak = ot_solve(f0, f1, steps=6, model="penalized", lam=10.0, max_iter=3000)
    strong = ot_solve(f0, f1, steps=6, model="penalized", lam=1000.0, max_iter=3000)
    assert all(bool(r.solver.converged.all()) for r in (c, weak, strong))
    assert strong.cost.item() == pytest.approx(c.cost.item(), rel=5e-3)
    assert (strong.frames - c.frames).abs().max() < 0.03 * f0.max()
    # a weak penalty lets the continuity equation slip: cheaper transport, frames further from the constrained ones
    assert weak.cost.item() < strong.cost.item()
    assert (weak.frames - c.frames).abs().max() > (strong.frames - c.frames).abs().max()


# ------------------------------------------------------------------------------------------------------------
# Batch independence
# ------------------------------------------------------------------------------------------------------------


def _pairs(channels, dtype, equal_mass):
    crops = [
        (_photo("astronaut", 90, 190, 6, 7, dtype), _photo("coffee", 150, 300, 6, 7, dtype)),
        (_photo("chelsea", 60, 120, 6, 7, dtype), _photo("astronaut", 300, 250, 6, 7, dtype)),
        (_photo("coffee", 40, 60, 6, 7, dtype), _photo("chelsea", 200, 240, 6, 7, dtype) * 0.6),
    ]
    f0s, f1s = [], []
    for a, b in crops:
        if channels == 1:
            a, b = a.mean(1, keepdim=True), b.mean(1, keepdim=True)
        a, b = a + 0.03, b + 0.03
        if equal_mass:
            b = b * a.sum() / b.sum()
        f0s.append(a)
        f1s.append(b)
    return torch.cat(f0s), torch.cat(f1s)


@pytest.mark.parametrize(
    "channels,model,color_bc",
    [
        (3, "constrained", "periodic"),
        (3, "constrained", "mirror"),
        (3, "penalized", "periodic"),
        (3, "penalized", "mirror"),
        (1, "constrained", "periodic"),
        (1, "penalized", "periodic"),
    ],
)
def test_batch_equals_single_calls(channels, model, color_bc, dtype):
    f0, f1 = _pairs(channels, dtype, equal_mass=model == "constrained")
    kw = dict(steps=4, model=model, color_bc=color_bc, tol=2e-5, max_iter=3000)
    batch = ot_solve(f0, f1, **kw)
    singles = [ot_solve(f0[i : i + 1], f1[i : i + 1], **kw) for i in range(3)]
    its = batch.solver.info["iterations"]
    # the samples stop at different iterations, each at its own (and as it would alone)
    assert len(set(its.tolist())) > 1
    assert its.tolist() == [s.solver.iterations for s in singles]
    assert bool(batch.solver.converged.all())
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    for i, s in enumerate(singles):
        assert torch.allclose(batch.frames[:, i : i + 1], s.frames, atol=tol, rtol=0)
        assert torch.allclose(batch.momentum[:, i : i + 1], s.momentum, atol=tol, rtol=0)
        # the cost is a sum over ~500 cells: float32 reduction order alone moves it by ~1e-5 relative
        assert batch.cost[i].item() == pytest.approx(s.cost.item(), rel=10 * tol if dtype == torch.float32 else tol)
        n = s.solver.iterations
        assert torch.allclose(batch.solver.history[: n + 1, i], s.solver.history[:, 0], rtol=0, atol=tol)
        assert (batch.solver.history[n:, i] == batch.solver.history[n, i]).all()  # frozen after its stop
        assert batch.solver.reached[i].item() == pytest.approx(s.solver.reached.item(), rel=0, abs=tol)


@pytest.mark.parametrize("dtype_name,tol", [("float64", 1e-10), ("float32", 3e-5)])
def test_cli_adapter_batch_equals_single_calls(dtype_name, tol):
    """float32: the batch and single runs stop at the same iterations, and their iterates differ only by the
    order of floating-point reductions (batched transforms), amplified over ~150 iterations to at most ~1.2e-5;
    hence 3e-5 there and the 1e-10 check in float64."""
    dt = getattr(torch, dtype_name)
    fg = torch.cat([_photo("astronaut", 60, 150, 20, 30, dt), _photo("coffee", 100, 200, 20, 30, dt)])
    bg = torch.cat([_photo("chelsea", 50, 100, 20, 30, dt), _photo("astronaut", 250, 200, 20, 30, dt)])
    fg = torch.cat([fg, fg[:1].flip(-1)])
    bg = torch.cat([bg, bg[1:].flip(-2) * 0.5])
    for model in ("constrained", "penalized"):
        kw = dict(steps=4, size=12, model=model, tol=3e-5, max_iter=3000)
        out = ot_cli(fg, bg, None, **kw)
        lengths = set()
        for i in range(3):
            one = ot_cli(fg[i : i + 1], bg[i : i + 1], None, **kw)
            assert torch.allclose(out.result[i : i + 1], one.result, atol=tol, rtol=0)
            assert torch.allclose(out.frames["frames"][:, i : i + 1], one.frames["frames"], atol=tol, rtol=0)
            lengths.add(len(one.curves["convergence"]["cost"]))
        assert len(lengths) > 1  # the samples stop at different iterations


# ------------------------------------------------------------------------------------------------------------
# Convergence reporting
# ------------------------------------------------------------------------------------------------------------


def test_stopping_at_the_cap_warns_with_criterion_and_tolerance():
    f0, f1 = _pairs(3, torch.float64, equal_mass=True)
    with pytest.warns(ConvergenceWarning) as caught:
        r = ot_solve(f0, f1, steps=4, max_iter=30, tol=1e-6)
    assert len(caught) == 1
    w = caught[0].message
    assert w.method == "ot (constrained)" and w.samples == (0, 1, 2) and w.batch == 3 and w.iterations == 30
    assert w.criterion == CRITERION["constrained"] and w.tol == 1e-6
    assert all(v > 1e-6 for v in w.reached)
    assert not bool(r.solver.converged.any()) and r.solver.tol == 1e-6
    assert torch.allclose(r.solver.reached, torch.tensor(w.reached, dtype=torch.float64))
    # the reached value is the windowed change over the last check interval, recomputed here from two runs
    with _quiet():
        before = ot_solve(f0, f1, steps=4, max_iter=20, tol=1e-6)
    pairs = zip(r.solver.solution, before.solver.solution)
    step = torch.cat([(a - b).flatten(1) for a, b in pairs if a is not None], 1)
    norm = torch.cat([a.flatten(1) for a in r.solver.solution if a is not None], 1)
    assert torch.allclose(r.solver.reached, step.norm(dim=1) / norm.norm(dim=1) / 10, rtol=1e-9)


def test_only_the_unconverged_sample_is_named():
    f0, f1 = _pairs(3, torch.float64, equal_mass=False)
    hard = torch.full((3, 6, 7), 0.01, dtype=torch.float64)  # a hard pair among easy ones: a block moves across
    hard[:, :, :2] = 1
    f0[1], f1[1] = hard, hard.flip(-1) * 3
    with pytest.warns(ConvergenceWarning) as caught:
        r = ot_solve(f0, f1, steps=4, model="penalized", max_iter=400, tol=3e-5)
    assert caught[0].message.samples == (1,) and caught[0].message.method == "ot (penalized)"
    assert r.solver.converged.tolist() == [True, False, True]
    assert r.solver.info["iterations"][1].item() == 400 > max(r.solver.info["iterations"][[0, 2]].tolist())


def test_converged_run_is_silent_and_meets_both_tests():
    f0, f1 = _pairs(3, torch.float64, equal_mass=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        r = ot_solve(f0, f1, steps=4, tol=1e-5, max_iter=3000)
    assert bool(r.solver.converged.all()) and (r.solver.reached < 1e-5).all()
    assert (r.solver.info["residual_history"][-1] < 1e-12).all()


def test_float32_reaches_the_tolerance_of_float64():
    """Round-off must not hold float32 above the tolerance (refined solves, windowed change)."""
    a = resize(torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].float() / 255, (24, 24)) + 0.01
    b = resize(torch.from_numpy(data.rocket()).permute(2, 0, 1)[None].float() / 255, (24, 24)).clamp_min(0) + 0.01
    b = b * a.sum() / b.sum()
    r32 = ot_solve(a, b, steps=8, tol=1e-5, max_iter=3000)
    r64 = ot_solve(a.double(), b.double(), steps=8, tol=1e-5, max_iter=3000)
    assert bool(r32.solver.converged.all()) and bool(r64.solver.converged.all())
    assert abs(r32.solver.iterations - r64.solver.iterations) <= 50
    assert (r32.frames.double() - r64.frames).abs().max() < 1e-4


@pytest.mark.parametrize("max_iter", [0, -3, 2.5, True, "100"])
def test_bad_max_iter(max_iter):
    f = torch.rand(1, 3, 4, 4) + 0.1
    with pytest.raises(ValueError, match="max_iter"):
        ot_solve(f, f, max_iter=max_iter)
    with pytest.raises(ValueError, match="max_iter"):
        ot_cli(f, f, None, max_iter=max_iter)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=1), "steps"),
        (dict(model="balanced"), "model"),
        (dict(color_bc="neumann"), "color_bc"),
        (dict(lam=-1.0, model="penalized"), "lam"),
        (dict(tol=0), "tol"),
        (dict(tol=float("nan")), "tol"),
        (dict(tau=0.0), "tau"),
        (dict(relaxation=2.0), "relaxation"),
    ],
)
def test_bad_parameters(kwargs, match):
    f = torch.rand(1, 3, 4, 4) + 0.1
    with pytest.raises(ValueError, match=match):
        ot_solve(f, f, **kwargs)


def test_bad_inputs():
    f = torch.rand(1, 3, 4, 4) + 0.1
    with pytest.raises(ValueError, match="non-negative"):
        ot_solve(f - 1, f)
    with pytest.raises(ValueError, match="zero total mass"):
        ot_solve(torch.zeros_like(f), f, model="penalized")
    with pytest.raises(ValueError, match="f0"):
        ot_solve(f, f[:, :1])
    with pytest.raises(TypeError):
        ot_solve(f.int(), f)
    for kw, match in ((dict(size=1), "size"), (dict(floor=-0.1), "floor"), (dict(tau=-1.0), "tau")):
        with pytest.raises(ValueError, match=match):
            ot_cli(f, f, None, **kw)


def test_constrained_mass_check_is_at_one_in_a_thousand():
    """The constrained model rejects masses that differ by more than 1e-3 (relative) and accepts less."""
    f0 = _photo("astronaut", 100, 200, 4, 5) + 0.05
    f1 = _photo("coffee", 150, 300, 4, 5) + 0.05
    f1 = f1 * f0.sum() / f1.sum()
    with pytest.raises(ValueError, match="different total mass"):
        ot_solve(f0, f1 * 1.003, steps=2, max_iter=1)
    with _quiet():
        r = ot_solve(f0, f1 * 1.0003, steps=2, max_iter=1)
    assert r.frames.shape[0] == 3


@pytest.mark.parametrize("model", ["constrained", "penalized"])
def test_step_penalty_and_relaxation_have_the_documented_units(model):
    """``tau`` is relative to the mean density of both images (times max(H, W) when constrained), the default λ is
    ``10 / mean density`` and ``relaxation`` reaches the solver: ``ot_interpolate`` runs exactly the primal–dual
    iteration with those absolute parameters (a non-square image, so that max(H, W) is not min(H, W))."""
    f0, f1 = _pairs(3, torch.float64, equal_mass=False)
    f0, f1 = f0[:2, :, :4], f1[:2, :, :4]  # (2, 3, 4, 7)
    if model == "constrained":
        f1 = f1 * (f0.flatten(1).sum(1) / f1.flatten(1).sum(1)).view(-1, 1, 1, 1)
    mean = 0.5 * (f0.flatten(1).mean(1) + f1.flatten(1).mean(1))
    step = 0.7 * mean * (7 if model == "constrained" else 1)
    kw = dict(max_iter=25, tol=1e-14, relaxation=1.3)
    with _quiet():
        r = ot_solve(f0, f1, steps=3, model=model, tau=0.7, **kw)
    ref = ot_primal_dual(f0, f1, StaggeredGrid(3, 3, 4, 7), model=model, lam=10 / mean, tau=step, **kw)
    assert torch.allclose(r.frames[1:-1].transpose(0, 1), ref.solution.f, rtol=0, atol=1e-12)
    with _quiet():
        r = ot_solve(f0, f1, steps=3, model=model, tau=0.7, lam=4.0, **kw)
    ref = ot_primal_dual(f0, f1, StaggeredGrid(3, 3, 4, 7), model=model, lam=4.0, tau=step, **kw)
    assert torch.allclose(r.frames[1:-1].transpose(0, 1), ref.solution.f, rtol=0, atol=1e-12)


# ------------------------------------------------------------------------------------------------------------
# Gradients (unrolled iterations)
# ------------------------------------------------------------------------------------------------------------


def _gradcheck(fn, inputs):
    """gradcheck of a random linear functional of ``fn``'s outputs (all input derivatives, one backward pass)."""
    gen = torch.Generator().manual_seed(5)
    outs = fn(*inputs)
    weights = [torch.randn(o.shape, generator=gen, dtype=o.dtype) for o in outs]

    def scalar(*xs):
        return sum((o * w).sum() for o, w in zip(fn(*xs), weights))

    with _quiet():
        assert torch.autograd.gradcheck(scalar, inputs, eps=1e-6, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize(
    "channels,kw",
    [(3, dict()), (3, dict(model="penalized", color_bc="mirror")), (1, dict()), (3, dict(model="penalized"))],
)
def test_ot_interpolate_gradcheck(channels, kw):
    f0 = _photo("astronaut", 100, 200, 4, 5) + 0.05
    f1 = _photo("coffee", 150, 300, 4, 5) + 0.05
    if channels == 1:
        f0, f1 = f0.mean(1, keepdim=True), f1.mean(1, keepdim=True)
    f1 = f1 * f0.sum() / f1.sum()
    inputs = (f0.requires_grad_(), f1.requires_grad_())

    def fn(a, b):
        r = ot_solve(a, b, steps=2, max_iter=8, tol=1e-12, **kw)
        return r.frames[1:-1], r.momentum, r.cost

    _gradcheck(fn, inputs)


def test_cli_adapter_gradcheck():
    fg = (0.9 * _photo("astronaut", 100, 200, 4, 5)).requires_grad_()
    bg = (0.9 * _photo("coffee", 150, 300, 4, 5)).requires_grad_()

    def fn(a, b):
        out = ot_cli(a, b, None, steps=2, max_iter=8, tol=1e-12, size=None)
        return out.result, out.frames["frames"][1:-1]

    _gradcheck(fn, (fg, bg))


def test_gradient_reaches_inputs_through_a_loss():
    """A transport loss: its gradient in f1 points from f1 towards f0 (moving f1 closer lowers the cost)."""
    xx, yy = _grid(10)
    f0 = (_bump(xx, yy, 0.35, 0.5, 0.12) + 0.05)[None, None]
    f1 = (_bump(xx, yy, 0.65, 0.5, 0.12) + 0.05)[None, None]
    f1 = (f1 * f0.sum() / f1.sum()).requires_grad_()
    with _quiet():
        r = ot_solve(f0, f1, steps=4, max_iter=200)
    (g,) = torch.autograd.grad(r.cost.sum(), f1)
    step = 1e-2 / g.abs().max()
    moved = (f1 - step * (g - g.mean())).detach()
    with _quiet():
        lower = ot_solve(f0, moved, steps=4, max_iter=200)
    assert lower.cost.item() < r.cost.item()


# ------------------------------------------------------------------------------------------------------------
# The command-line adapter
# ------------------------------------------------------------------------------------------------------------


def test_cli_adapter_is_registered_without_mask():
    assert method_spec("ot").needs_mask is False
    assert method_spec("ot").fn is ot_cli


def test_cli_adapter_midpoint_is_the_monotone_rearrangement():
    """No floor, bg with 0.7 of fg's mass: the adapter transports both normalised to their mean mass, so its
    midpoint is the 1-D displacement interpolation at t = 1/2 (scaled by the mass profile), and its cost is
    that of the mean mass, ``((M₀ + M₁)/2) · W₂²/2``."""
    n = 32
    a, b = _profiles(n)
    fg = torch.tensor(a).view(1, 1, 1, n).expand(1, 3, 2, n).contiguous()
    bg = 0.7 * torch.tensor(b).view(1, 1, 1, n).expand(1, 3, 2, n).contiguous()
    out = ot_cli(fg, bg, None, steps=8, size=None, floor=0.0, tol=1e-6, max_iter=4000)
    assert isinstance(out, MethodOutput) and out.result.shape == fg.shape
    mid = out.result[0]
    assert torch.allclose(mid, mid[:1].expand_as(mid), atol=1e-9)  # equal channels stay equal (no colour flow)
    p = mid[0, 0].numpy() / mid[0, 0].numpy().sum()
    exact = _monotone_rearrangement_cdf(a / a.sum(), b / b.sum(), 0.5, np.linspace(0, 1, n + 1))
    assert np.abs(np.concatenate([[0], np.cumsum(p)]) - exact).max() < 8e-3
    assert mid.sum().item() == pytest.approx(0.5 * (fg.sum() + bg.sum()).item(), rel=1e-10)  # mass profile
    mean_mass = 0.5 * (fg.sum() + bg.sum()).item() / n**2 / 3  # Σ f h², colour weighted 1/C
    expected = mean_mass * _w2_squared(a / a.sum(), b / b.sum()) / 2
    assert out.curves["convergence"]["cost"][-1].item() == pytest.approx(expected, rel=0.01)


@pytest.mark.parametrize("model", ["constrained", "penalized"])
def test_scaling_both_images_scales_the_frames(model):
    """The cost is 1-homogeneous and the default step and penalty follow the mean density (λ = 10/mean), so
    scaling both images by k scales every iterate by k: the same frames × k at the same iteration."""
    f0, f1 = _pairs(3, torch.float64, equal_mass=model == "constrained")
    kw = dict(steps=4, model=model, max_iter=60, tol=1e-14)
    with _quiet():
        base = ot_solve(f0, f1, **kw)
        scaled = ot_solve(4.0 * f0, 4.0 * f1, **kw)
    assert torch.allclose(scaled.frames, 4.0 * base.frames, rtol=1e-9, atol=1e-12)
    assert torch.allclose(scaled.cost, 4.0 * base.cost, rtol=1e-9)


def test_cli_adapter_values():
    fg = _photo("astronaut", 60, 150, 20, 30)
    bg = 0.5 * _photo("coffee", 100, 200, 20, 30)
    steps, floor = 4, 1e-3
    with _quiet():
        out = ot_cli(fg, bg, None, steps=steps, max_iter=60, size=12, floor=floor, tol=1e-14)
        rev = ot_cli(bg, fg, None, steps=steps, max_iter=60, size=12, floor=floor, tol=1e-14)
    frames = out.frames["frames"]
    assert frames.shape == (steps + 1, 1, 3, 8, 12)
    # end frames are the downscaled inputs (normalisation and floor undone)
    small_fg, small_bg = resize(fg, (8, 12)).clamp(0, 1), resize(bg, (8, 12)).clamp(0, 1)
    assert torch.allclose(frames[0], small_fg, atol=1e-12) and torch.allclose(frames[-1], small_bg, atol=1e-12)
    # the result is frame steps // 2 resized back to the input size
    assert torch.allclose(out.result, resize(frames[steps // 2], (20, 30)).clamp(0, 1), atol=1e-12)
    # time reversal: fg ↔ bg reverses the frames
    assert torch.allclose(rev.frames["frames"], frames.flip(0), atol=1e-9)
    # mass profile: the normalised transport keeps mass, scaling back makes it linear from M0 to M1
    assert (frames > 0).all() and (frames < 1).all()  # no clamping: the identity below is exact
    m0, m1 = (small_fg + floor).sum(), (small_bg + floor).sum()
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    assert torch.allclose((frames + floor).flatten(1).sum(1), (1 - t) * m0 + t * m1, rtol=1e-10)
    curves = out.curves["convergence"]
    assert set(curves) == {"relative change", "constraint residual", "cost"}
    assert all(len(v) == 61 for v in curves.values())
    assert (curves["constraint residual"] < 1e-12).all()  # the constrained iterates are feasible
    assert curves["relative change"][-1] < 0.1 * curves["relative change"][2:12].max()


def test_cli_adapter_penalized_transports_the_images_as_they_are():
    """The penalised model handles unequal mass itself: the adapter does not rescale the images, so its frames are
    the penalised interpolation of the inputs plus the floor, with the floor taken off again."""
    fg = _photo("astronaut", 60, 150, 6, 7)
    bg = 0.4 * _photo("coffee", 100, 200, 6, 7)
    floor, kw = 0.02, dict(steps=3, model="penalized", max_iter=30, tol=1e-14)
    with _quiet():
        out = ot_cli(fg, bg, None, size=None, floor=floor, **kw)
        ref = ot_solve(fg + floor, bg + floor, **kw)
    assert torch.allclose(out.frames["frames"], (ref.frames - floor).clamp(0, 1), rtol=0, atol=1e-12)
    assert torch.allclose(out.curves["convergence"]["cost"][-1], ref.cost[0], rtol=1e-12)


def test_cli_adapter_residual_curve_holds_the_last_evaluation():
    """The residual ‖Au − b‖/‖b‖ is evaluated at iteration 0 and every 10th; the curve holds each value until the
    next evaluation. Penalised (its residual changes), the values recomputed from runs stopped at 10 and 20."""
    fg = _photo("astronaut", 60, 150, 6, 7)
    bg = 0.4 * _photo("coffee", 100, 200, 6, 7)
    floor, kw = 0.02, dict(steps=3, model="penalized", tol=1e-14)
    f0, f1 = fg + floor, bg + floor
    grid = StaggeredGrid(3, 3, 6, 7)
    b = continuity_rhs(f0, f1, grid)

    def rel_residual(u):
        return ((continuity(u, grid) - b).norm() / b.norm()).item()

    t = torch.arange(1, 3, dtype=torch.float64).view(1, -1, 1, 1, 1) / 3
    start = grid.zeros(1, dtype=torch.float64)._replace(f=(1 - t) * f0.unsqueeze(1) + t * f1.unsqueeze(1))
    expected = [rel_residual(start)]
    with _quiet():
        curve = ot_cli(fg, bg, None, size=None, floor=floor, max_iter=25, **kw).curves["convergence"][
            "constraint residual"
        ]
        for j in (10, 20, 25):
            expected.append(rel_residual(ot_solve(f0, f1, max_iter=j, **kw).solver.solution))
    assert len(curve) == 26 and len(set(expected)) == 4
    for (lo, hi), value in zip([(0, 10), (10, 20), (20, 25), (25, 26)], expected):
        assert torch.allclose(curve[lo:hi], torch.full((hi - lo,), value, dtype=torch.float64), rtol=1e-10), lo


def test_infer_writes_gif_strip_and_plot_with_the_adapters_values(tmp_path):
    from omegaconf import OmegaConf

    from fusion.data import read_image
    from fusion.pipeline import SAMPLES_DIR, infer

    steps = 4
    cfg = OmegaConf.create(
        {
            "fg": None,
            "bg": None,
            "mask": None,
            "out": str(tmp_path / "ot.png"),
            "offset": None,
            "device": "cpu",
            "side_by_side": False,
            "method": {"name": "ot", "steps": steps, "max_iter": 20, "size": 16},
        }
    )
    with pytest.warns(ConvergenceWarning, match="ot \\(constrained\\) did not converge"):
        written = infer(cfg)
    for key in ("result", "frames_gif", "frames_strip", "convergence_plot", "convergence_csv"):
        assert written[key].exists(), key
    fg, bg = read_image(SAMPLES_DIR / "fg.png"), read_image(SAMPLES_DIR / "bg.png")
    with _quiet():
        expected = ot_cli(fg, bg, None, steps=steps, max_iter=20, size=16)
    result = read_image(written["result"])
    assert result.shape == fg.shape
    assert (result - expected.result).abs().max() <= 0.5 / 255 + 1e-6  # 8-bit rounding only
    frames = expected.frames["frames"]
    for k in range(steps + 1):
        png = read_image(written["frames_frames"] / f"{k:03d}.png")
        assert (png - frames[k]).abs().max() <= 0.5 / 255 + 1e-6
    with Image.open(written["frames_gif"]) as gif:
        assert gif.n_frames == 2 * steps  # forward, then back
    strip = read_image(written["frames_strip"])
    assert strip.shape[-1] == (steps + 1) * frames.shape[-1] + steps * 2
    rows = written["convergence_csv"].read_text().splitlines()
    assert rows[0] == "iteration,relative change,constraint residual,cost" and len(rows) == 22
    last = [float(v) for v in rows[-1].split(",")]
    assert last[1] == pytest.approx(expected.curves["convergence"]["relative change"][-1].item(), rel=1e-6)


@pytest.mark.gpu
def test_gpu_matches_cpu():
    f0 = torch.rand(2, 3, 16, 16, dtype=torch.float64) + 0.05
    f1 = torch.rand(2, 3, 16, 16, dtype=torch.float64) + 0.05
    f1 = f1 * f0.flatten(1).sum(1).view(-1, 1, 1, 1) / f1.flatten(1).sum(1).view(-1, 1, 1, 1)
    with _quiet():
        cpu = ot_solve(f0, f1, steps=4, max_iter=50)
        gpu = ot_solve(f0.cuda(), f1.cuda(), steps=4, max_iter=50)
    assert gpu.frames.device.type == "cuda"
    assert torch.allclose(gpu.frames.cpu(), cpu.frames, atol=1e-8)
