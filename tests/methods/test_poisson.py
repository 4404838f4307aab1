import inspect
import warnings
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse.linalg as spl
import torch
from omegaconf import OmegaConf
from skimage import data as skdata

import fusion
from fusion.methods import PoissonBlend, get_method, place_source, poisson_blend, poisson_solve
from fusion.methods.poisson import DEFAULT_TOL, PEREZ_CRITERION, perez_residual
from tests.reference import (
    perez_reference,
    perez_relative_residual,
    perez_system,
    spectral_clone_reference,
)

CONF = Path(__file__).resolve().parents[2] / "conf" / "method" / "poisson.yaml"


def poisson_solve_exact(fg, bg, mask, **options):
    """The SolverResult of ``poisson_solve(..., solver="exact")``."""
    return poisson_solve(fg, bg, mask, solver="exact", **options).solver


def poisson_solve_inertial(fg, bg, mask, **options):
    """The SolverResult of ``poisson_solve(..., solver="inertial")``."""
    return poisson_solve(fg, bg, mask, solver="inertial", **options).solver


def _photo(name: str, y: int, x: int, h: int, w: int, channels: int = 3) -> torch.Tensor:
    """A ``(1, C, h, w)`` float64 crop of a scikit-image photograph."""
    img = getattr(skdata, name)()[y : y + h, x : x + w, :channels]
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].double() / 255


def _ellipse(h: int, w: int, soft: bool = False) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    r = (((yy - (h - 1) / 2) / (0.45 * h)) ** 2 + ((xx - (w - 1) / 2) / (0.45 * w)) ** 2).sqrt()
    if soft:  # 1 inside, 0 outside, a linear ramp across the rim
        return ((1.25 - r) / 0.5).clamp(0, 1)[None, None]
    return (r < 1).double()[None, None]


def _three_samples(dtype: torch.dtype, soft: bool = False):
    """Three different blends: real sources with their own masks pasted at different offsets (one cropped by the
    image border) into different real backgrounds of one canvas size."""
    sources = [
        _photo("astronaut", 180, 200, 14, 16),
        _photo("chelsea", 60, 150, 12, 18),
        _photo("coffee", 150, 250, 16, 12),
    ]
    backgrounds = [
        _photo("coffee", 20, 40, 24, 30),
        _photo("astronaut", 300, 100, 24, 30),
        _photo("chelsea", 100, 50, 24, 30),
    ]
    square = torch.zeros(1, 1, 12, 18, dtype=torch.float64)
    square[..., 2:10, 3:16] = 1
    blob = (_photo("coffee", 150, 250, 16, 12).mean(1, keepdim=True) > 0.45).double() * _ellipse(16, 12)
    masks = [_ellipse(14, 16, soft), square, blob]
    offsets = [(3, 4), (-2, 14), (8, -2)]  # the second runs past the top and right borders, the third the left
    fgs, bgs, ms = [], [], []
    for src, bg, m, off in zip(sources, backgrounds, masks, offsets):
        f, mc = place_source(src, m, bg, offset=off)
        fgs.append(f.to(dtype)), bgs.append(bg.to(dtype)), ms.append(mc.to(dtype))
    return fgs, bgs, ms


@pytest.mark.parametrize("solver", ["exact", "spectral", "inertial"])
@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mixed"])
def test_batch_equals_single_calls(solver, mixed, dtype):
    """A sample's result does not depend on the other samples of its batch (masks, offsets and images differ)."""
    fgs, bgs, ms = _three_samples(dtype, soft=solver == "spectral")
    tol = 1e-5 if dtype == torch.float32 else 1e-10
    batch = poisson_blend(torch.cat(fgs), torch.cat(bgs), torch.cat(ms), solver=solver, mixed=mixed, tol=tol)
    for i in range(3):
        single = poisson_blend(fgs[i], bgs[i], ms[i], solver=solver, mixed=mixed, tol=tol)
        gap = float((batch[i : i + 1] - single).abs().max())
        assert gap <= (1e-5 if dtype == torch.float32 else 1e-10), (i, gap)
    # the samples are different problems: equality above is not a coincidence of identical samples
    assert float((batch[0] - batch[1]).abs().max()) > 0.1


@pytest.mark.parametrize(
    "solve, options",
    [(poisson_solve_exact, {}), (poisson_solve_exact, {"precondition": "jacobi"}), (poisson_solve_inertial, {})],
    ids=["exact", "exact-jacobi", "inertial"],
)
def test_iterative_samples_stop_at_their_own_iteration(solve, options):
    fgs, bgs, ms = _three_samples(torch.float64)
    batch = solve(torch.cat(fgs), torch.cat(bgs), torch.cat(ms), tol=1e-9, **options)
    alone = [solve(f, b, m, tol=1e-9, **options) for f, b, m in zip(fgs, bgs, ms)]
    assert batch.info["iterations"].tolist() == [int(r.info["iterations"][0]) for r in alone]
    assert batch.all_converged
    torch.testing.assert_close(batch.reached, torch.cat([r.reached for r in alone]), rtol=0, atol=1e-15)
    if solve is poisson_solve_inertial:  # (PCG, tested every 10 iterations, stops these three at the same test)
        assert len(set(batch.info["iterations"].tolist())) > 1


def test_issue_example_spectral_batch_of_two_masks():
    """The reported case: one image with two masks in a batch used to share one bounding box."""
    fg, bg = _photo("astronaut", 100, 150, 40, 48), _photo("coffee", 100, 200, 40, 48)
    m1 = torch.zeros(1, 1, 40, 48, dtype=torch.float64)
    m1[..., 5:15, 6:20] = 1
    m2 = torch.zeros_like(m1)
    m2[..., 22:36, 25:44] = 1
    both = poisson_blend(torch.cat([fg, fg]), torch.cat([bg, bg]), torch.cat([m1, m2]), solver="spectral")
    torch.testing.assert_close(both[:1], poisson_blend(fg, bg, m1, solver="spectral"), rtol=0, atol=1e-12)
    torch.testing.assert_close(both[1:], poisson_blend(fg, bg, m2, solver="spectral"), rtol=0, atol=1e-12)
    # outside its own grown box a sample keeps the background exactly
    assert torch.equal(both[0, :, 17:, :], bg[0, :, 17:, :])


@pytest.mark.parametrize("mixed", [False, True])
def test_exact_matches_sparse_direct_on_random_masks(mixed, gen):
    h, w = 21, 30
    fg = torch.rand(2, 3, h, w, generator=gen, dtype=torch.float64)
    bg = torch.rand(2, 3, h, w, generator=gen, dtype=torch.float64)
    mask = (torch.rand(2, 1, h, w, generator=gen) > 0.5).double()
    mask[0, 0, :, 0] = 1  # a mask touching the image border
    mask[1, 0, -1, :] = 1
    out = poisson_blend(fg, bg, mask, mixed=mixed, tol=1e-13)
    for b in range(2):
        region = mask[b, 0].numpy() > 0.5
        for c in range(3):
            ref = perez_reference(fg[b, c].numpy(), bg[b, c].numpy(), region, mixed)
            err = np.linalg.norm(out[b, c].numpy() - ref) / np.linalg.norm(ref)
            assert err < 1e-8


def test_mixed_exact_on_real_photographs_matches_sparse_direct():
    """Mixed gradients on real images (where the choice between ∇fg and ∇bg matters) against SciPy."""
    fg, bg = _photo("astronaut", 150, 180, 30, 36), _photo("coffee", 60, 80, 30, 36)
    mask = _ellipse(30, 36)
    out = poisson_blend(fg, bg, mask, mixed=True, tol=1e-12)
    plain = poisson_blend(fg, bg, mask, mixed=False, tol=1e-12)
    region = mask[0, 0].numpy() > 0.5
    for c in range(3):
        ref = perez_reference(fg[0, c].numpy(), bg[0, c].numpy(), region, mixed=True)
        np.testing.assert_allclose(out[0, c].numpy(), ref, atol=1e-9, rtol=0)
    assert float((out - plain).abs().max()) > 0.05  # the mixed choice changes the result


def test_exact_on_real_photo_float32_vs_float64():
    img = _photo("astronaut", 100, 150, 96, 120)
    bg = _photo("coffee", 100, 200, 96, 120)
    mask = _ellipse(96, 120)
    ref = perez_reference(img[0, 1].numpy(), bg[0, 1].numpy(), mask[0, 0].numpy() > 0.5)
    res = poisson_solve_exact(img, bg, mask, tol=1e-12)
    assert res.all_converged
    assert np.linalg.norm(res.solution[0, 1].numpy() - ref) / np.linalg.norm(ref) < 1e-8
    with warnings.catch_warnings():
        warnings.simplefilter("error", fusion.ConvergenceWarning)  # the default tolerance is reachable in float32
        out32 = poisson_blend(img.float(), bg.float(), mask.float())
    assert (out32.double() - res.solution).abs().max() < 1e-3


def test_outside_mask_is_background_and_identity_when_fg_is_bg(device, dtype, gen):
    fg = torch.rand(1, 3, 24, 33, generator=gen, dtype=dtype).to(device)
    bg = torch.rand(1, 3, 24, 33, generator=gen, dtype=dtype).to(device)
    mask = torch.zeros(1, 1, 24, 33, dtype=dtype, device=device)
    mask[..., 5:18, 4:25] = 1
    tol = 1e-5 if dtype == torch.float32 else 1e-13
    for solver in ("exact", "spectral"):
        out = poisson_blend(fg, bg, mask, solver=solver, tol=tol)
        assert torch.equal(out[..., :, :3], bg[..., :, :3]) and torch.equal(out[..., 19:, :], bg[..., 19:, :])
        same = poisson_blend(bg, bg, mask, solver=solver, tol=tol)
        assert (same - bg).abs().max() < (1e-4 if dtype == torch.float32 else 1e-10)


def _soft_masks(h, w, gen):
    """Soft masks in [0, 1]: inside the box, on the image border, and in a corner."""
    out = []
    for box in [(5, 20, 8, 28), (0, 12, 15, w), (10, h, 0, 9)]:
        m = 0.4 * torch.rand(1, 1, h, w, generator=gen, dtype=torch.float64)
        y0, y1, x0, x1 = box
        m[..., y0:y1, x0:x1] = 0.3 + 0.7 * torch.rand(1, 1, y1 - y0, x1 - x0, generator=gen, dtype=torch.float64)
        m[..., (y0 + y1) // 2, (x0 + x1) // 2] = 1
        out.append(m)
    return out


@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mixed"])
def test_spectral_matches_the_assembled_box_solve(mixed, gen):
    """The spectral solver against the single-solve equations assembled pixel by pixel and solved by SciPy:
    soft masks, boxes on the image border, real images (whose gradients make the mixed choice matter)."""
    h, w = 22, 31
    fg, bg = _photo("astronaut", 160, 190, h, w), _photo("chelsea", 40, 120, h, w)
    for mask in _soft_masks(h, w, gen):
        out = poisson_blend(fg, bg, mask, solver="spectral", mixed=mixed)
        for c in range(3):
            ref = spectral_clone_reference(fg[0, c].numpy(), bg[0, c].numpy(), mask[0, 0].numpy(), mixed)
            np.testing.assert_allclose(out[0, c].numpy(), ref, atol=1e-11, rtol=0)
    other = poisson_blend(fg, bg, mask, solver="spectral", mixed=not mixed)
    assert float((out - other).abs().max()) > 0.05


def test_spectral_close_to_exact_for_smooth_sources():
    """With a smooth source both formulations agree closely away from the mask boundary."""
    h, w = 64, 80
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    fg = torch.stack([torch.sin(3 * yy + xx), torch.cos(2 * xx), yy * xx])[None].double()
    bg = torch.stack([xx, yy, 0.5 + 0 * xx])[None].double()
    mask = torch.zeros(1, 1, h, w, dtype=torch.float64)
    mask[..., 16:48, 20:60] = 1
    exact = poisson_blend(fg, bg, mask, tol=1e-12)
    spectral = poisson_blend(fg, bg, mask, solver="spectral")
    gap = (exact - spectral)[..., 20:44, 24:56].abs()
    assert gap.max() < 0.05 and gap.mean() < 0.01


# ----------------------------------------------------------------------------------------------------------------
# convergence: one criterion, never silent
# ----------------------------------------------------------------------------------------------------------------
def test_inertial_reaches_direct_solution(gen):
    fg = torch.rand(1, 3, 14, 17, generator=gen, dtype=torch.float64)
    bg = torch.rand(1, 3, 14, 17, generator=gen, dtype=torch.float64)
    mask = (torch.rand(1, 1, 14, 17, generator=gen) > 0.4).double()
    exact = poisson_blend(fg, bg, mask, tol=1e-13)
    inertial = poisson_blend(fg, bg, mask, solver="inertial", tol=1e-13, max_iter=30000)
    assert (exact - inertial).abs().max() < 1e-9


@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mixed"])
@pytest.mark.parametrize("solve", [poisson_solve_exact, poisson_solve_inertial], ids=["exact", "inertial"])
def test_converged_means_the_relative_residual_of_perez_equations(solve, mixed):
    """``reached`` is ‖b − A u‖/‖b‖ of Pérez's equations assembled by SciPy, and converged implies it is ≤ tol;
    the error to the direct solution then obeys ‖u − u*‖ ≤ ‖b‖·tol / λ_min(A)."""
    fg, bg = _photo("astronaut", 150, 180, 20, 26), _photo("coffee", 60, 80, 20, 26)
    mask = _ellipse(20, 26)
    region = mask[0, 0].numpy() > 0.5
    tol = 1e-6
    res = solve(fg, bg, mask, mixed=mixed, tol=tol)
    assert res.all_converged and res.criterion == PEREZ_CRITERION and res.tol == tol
    u = res.solution[0].numpy()
    direct = perez_relative_residual(u, fg[0].numpy(), bg[0].numpy(), region, mixed)
    # equal up to the rounding of the two evaluations (the exact solver may land far below tol)
    assert abs(float(res.reached[0]) - direct) <= 1e-9 * direct + 1e-13
    assert direct <= tol
    assert abs(float(perez_residual(res.solution, fg, bg, mask, mixed=mixed)[0]) - direct) <= 1e-9 * direct + 1e-13
    b_norm, err = 0.0, 0.0
    for c in range(3):
        a, b = perez_system(fg[0, c].numpy(), bg[0, c].numpy(), region, mixed)
        err += float(((u[c][region] - spl.spsolve(a, b)) ** 2).sum())
        b_norm += float(b @ b)
    lam_min = float(spl.eigsh(a, k=1, sigma=0, which="LM", return_eigenvectors=False)[0])
    assert np.sqrt(err) <= np.sqrt(b_norm) * tol / lam_min


@pytest.mark.parametrize("solver", ["exact", "inertial"])
def test_soft_mask_is_thresholded_at_one_half(solver, gen):
    """Ω = {mask > 0.5}: pixels at 0.3 or exactly 0.5 are background, at 0.51 unknowns (SciPy on that Ω)."""
    fg, bg = _photo("astronaut", 150, 180, 16, 20), _photo("coffee", 60, 80, 16, 20)
    mask = 0.3 * torch.ones(1, 1, 16, 20, dtype=torch.float64)
    mask[..., 3:13, 4:16] = 0.51
    mask[..., 6:9, 7:12] = 0.5
    out = poisson_blend(fg, bg, mask, solver=solver, tol=1e-12, max_iter=50000)
    region = mask[0, 0].numpy() > 0.5
    for c in range(3):
        ref = perez_reference(fg[0, c].numpy(), bg[0, c].numpy(), region)
        np.testing.assert_allclose(out[0, c].numpy(), ref, atol=1e-9, rtol=0)


def test_inertial_converged_flag_is_the_criterion_at_tol(gen):
    """Stopped at a cap where the residual lies between tol and 10·tol: reported as not converged, with a warning;
    the same cap with tol just above that residual: converged."""
    fgs, bgs, ms = _three_samples(torch.float64)
    with pytest.warns(fusion.ConvergenceWarning):
        probe = poisson_solve_inertial(fgs[0], bgs[0], ms[0], tol=1e-14, max_iter=400)
    trace = probe.info["criterion_history"][:, 0]
    running_min = torch.cummin(trace, 0).values
    k = int(torch.nonzero(trace[100:] <= running_min[100:])[0]) + 100  # a new minimum after 100 iterations
    reached = float(trace[k])
    with pytest.warns(fusion.ConvergenceWarning):
        below = poisson_solve_inertial(fgs[0], bgs[0], ms[0], tol=reached / 3, max_iter=k + 1)
    assert below.iterations == k + 1 and float(below.reached[0]) == pytest.approx(reached, rel=1e-12)
    assert not bool(below.converged[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error", fusion.ConvergenceWarning)
        above = poisson_solve_inertial(fgs[0], bgs[0], ms[0], tol=reached * 1.0001, max_iter=k + 1)
    assert bool(above.converged[0]) and above.iterations <= k + 1


def test_exact_converged_flag_is_the_criterion_at_tol():
    """At the cap with the residual between tol and 2·tol the exact solver reports no convergence, and warns."""
    fgs, bgs, ms = _three_samples(torch.float64)
    with pytest.warns(fusion.ConvergenceWarning):
        first = poisson_solve_exact(fgs[0], bgs[0], ms[0], tol=1e-15, max_iter=10, precondition="jacobi")
    reached = float(first.reached[0])
    with pytest.warns(fusion.ConvergenceWarning):
        below = poisson_solve_exact(fgs[0], bgs[0], ms[0], tol=reached / 1.5, max_iter=10, precondition="jacobi")
    assert float(below.reached[0]) == reached and not bool(below.converged[0])
    above = poisson_solve_exact(fgs[0], bgs[0], ms[0], tol=reached * 1.5, max_iter=10, precondition="jacobi")
    assert bool(above.converged[0])


def test_default_tolerances_mean_the_same_for_every_solver():
    defaults = {
        f.__name__: inspect.signature(f).parameters["tol"].default
        for f in (poisson_blend, poisson_solve, PoissonBlend.__init__)
    }
    assert set(defaults.values()) == {DEFAULT_TOL}, defaults
    assert float(OmegaConf.load(CONF).tol) == DEFAULT_TOL


@pytest.mark.parametrize("solver", ["exact", "inertial"])
def test_stopping_at_the_cap_warns(solver):
    fgs, bgs, ms = _three_samples(torch.float64)
    fg, bg, mask = torch.cat(fgs), torch.cat(bgs), torch.cat(ms)
    cap = 1 if solver == "exact" else 3
    with pytest.warns(fusion.ConvergenceWarning) as caught:
        out = poisson_blend(fg, bg, mask, solver=solver, max_iter=cap)
    assert len(caught) == 1
    w = caught[0].message
    assert w.method == f"poisson ({solver})" and w.samples == (0, 1, 2) and w.iterations == cap
    assert w.tol == DEFAULT_TOL and w.criterion == PEREZ_CRITERION
    # the reported residuals are the true ones of the returned images
    for i in range(3):
        region = ms[i][0, 0].numpy() > 0.5
        direct = perez_relative_residual(out[i].numpy(), fg[i].numpy(), bg[i].numpy(), region)
        assert direct > DEFAULT_TOL and abs(w.reached[i] - direct) <= 1e-9 * direct
    # the public solve functions report it too, in their result as well
    solve = poisson_solve_exact if solver == "exact" else poisson_solve_inertial
    with pytest.warns(fusion.ConvergenceWarning, match=f"poisson \\({solver}\\) did not converge"):
        res = solve(fg, bg, mask, max_iter=cap)
    assert not bool(res.converged.any()) and res.iterations == cap


@pytest.mark.parametrize("solver", ["exact", "spectral", "inertial"])
def test_no_warning_when_converged(solver):
    fgs, bgs, ms = _three_samples(torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        poisson_blend(torch.cat(fgs), torch.cat(bgs), torch.cat(ms), solver=solver)


def test_exact_stops_at_the_float32_floor_instead_of_spinning():
    """A tolerance below what float32 can represent is reported as not reached, after few iterations."""
    fg, bg = _photo("astronaut", 100, 150, 64, 80).float(), _photo("coffee", 100, 200, 64, 80).float()
    mask = _ellipse(64, 80).float()
    with pytest.warns(fusion.ConvergenceWarning, match="poisson \\(exact\\)"):
        res = poisson_solve_exact(fg, bg, mask, tol=1e-9)
    assert not res.all_converged and bool(res.info["stagnated"][0]) and res.iterations < 200
    assert 1e-9 < float(res.reached[0]) < 1e-5


@pytest.mark.parametrize("fn", ["blend", "blend-spectral", "blend-inertial", "exact", "inertial"])
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(max_iter=0), "max_iter must be >= 1"),
        (dict(max_iter=-3), "max_iter must be >= 1"),
        (dict(max_iter=2.5), "max_iter must be an integer"),
        (dict(tol=0.0), "tol must be a finite number > 0"),
        (dict(tol=float("nan")), "tol must be a finite number > 0"),
    ],
)
def test_bad_iteration_settings(fn, kwargs, match):
    fg, bg = torch.rand(1, 3, 10, 12), torch.rand(1, 3, 10, 12)
    mask = torch.zeros(1, 1, 10, 12)
    mask[..., 3:7, 3:8] = 1
    call = {"exact": poisson_solve_exact, "inertial": poisson_solve_inertial}.get(fn, poisson_blend)
    if fn.startswith("blend-"):
        kwargs = {**kwargs, "solver": fn.split("-")[1]}
    with pytest.raises(ValueError, match=match):
        call(fg, bg, mask, **kwargs)


# ----------------------------------------------------------------------------------------------------------------
# gradients
# ----------------------------------------------------------------------------------------------------------------
def _grad_inputs(channels: int = 3, h: int = 12, w: int = 14):
    """Real float64 crops; a small fixed dither breaks the ties |∇fg| = |∇bg| that 8-bit values make common and
    at which the mixed choice has no derivative."""
    g = torch.Generator().manual_seed(7)
    fg = _photo("astronaut", 200, 240, h, w, channels) + 2e-3 * torch.rand(1, channels, h, w, generator=g).double()
    bg = _photo("coffee", 100, 200, h, w, channels) + 2e-3 * torch.rand(1, channels, h, w, generator=g).double()
    mask = torch.full((1, 1, h, w), 0.1, dtype=torch.float64)
    mask[..., 3 : h - 3, 4 : w - 3] = 0.9
    mask[..., h // 2, w - 3] = 0.7
    return fg.requires_grad_(), bg.requires_grad_(), mask.requires_grad_()


@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mixed"])
def test_gradcheck_spectral_fg_bg_and_soft_mask(mixed):
    fg, bg, mask = _grad_inputs(channels=1)
    assert torch.autograd.gradcheck(
        lambda f, b, m: poisson_blend(f, b, m, solver="spectral", mixed=mixed), (fg, bg, mask)
    )


@pytest.mark.parametrize("mixed", [False, True], ids=["plain", "mixed"])
@pytest.mark.parametrize("solver", ["exact", "inertial"])
def test_gradcheck_iterative_solvers(solver, mixed):
    """Implicit differentiation of the converged solve. Fast mode (the Jacobian projected on random vectors)
    on the 3-channel crop: the full Jacobian would need one forward solve per input element."""
    fg, bg, mask = _grad_inputs()

    def blend(f, b):
        return poisson_blend(f, b, mask.detach(), solver=solver, mixed=mixed, tol=1e-13, max_iter=100000)

    assert torch.autograd.gradcheck(blend, (fg, bg), fast_mode=True)
    out = poisson_blend(fg, bg, mask, solver=solver, mixed=mixed, tol=1e-10)
    assert out.grad_fn is not None
    # the mask is thresholded: no gradient reaches it
    assert torch.autograd.grad(out.sum(), mask, allow_unused=True)[0] is None


def test_gradcheck_exact_full_jacobian():
    fg, bg, mask = _grad_inputs(channels=1, h=7, w=8)
    mask = mask.detach()
    assert torch.autograd.gradcheck(lambda f, b: poisson_blend(f, b, mask, tol=1e-13), (fg, bg))


@pytest.mark.parametrize("solver", ["exact", "inertial"])
def test_gradient_matches_sparse_adjoint(solver):
    """d⟨w, u⟩/d(fg, bg) from SciPy: λ = A⁻¹w on Ω, then the transposed right-hand side map — an independent
    adjoint, to 1e-9 (so the backward solve must meet the forward tolerance, not a loose one of its own)."""
    h, w = 24, 30
    fg = _photo("astronaut", 150, 180, h, w, 1).requires_grad_()
    bg = _photo("coffee", 60, 80, h, w, 1).requires_grad_()
    mask = _ellipse(h, w)
    wt = torch.rand(1, 1, h, w, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    out = poisson_blend(fg, bg, mask, solver=solver, tol=1e-12, max_iter=100000)
    g_fg, g_bg = torch.autograd.grad((out * wt).sum(), (fg, bg))
    region = mask[0, 0].numpy() > 0.5
    a, _ = perez_system(fg[0, 0].detach().numpy(), bg[0, 0].detach().numpy(), region)
    lam = np.zeros((h, w))
    lam[region] = spl.spsolve(a, wt[0, 0].numpy()[region])
    # u = bg off Ω; b = Σ_q (fg_p − fg_q) + Σ_{q ∉ Ω} bg_q, so ∂⟨λ, b⟩/∂fg_k = |N_k| λ_k − Σ_{p ∈ N_k} λ_p and
    # ∂⟨λ, b⟩/∂bg_q = Σ_{p ∈ Ω ∩ N_q} λ_p for q ∉ Ω
    ref_bg = np.where(region, 0.0, wt[0, 0].numpy())
    ref_fg = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)):
                y, x = i + di, j + dj
                if 0 <= y < h and 0 <= x < w:
                    ref_fg[i, j] += lam[i, j] - lam[y, x]
                    if region[i, j] and not region[y, x]:
                        ref_bg[y, x] += lam[i, j]
    np.testing.assert_allclose(g_fg[0, 0].numpy(), ref_fg, atol=1e-9, rtol=0)
    np.testing.assert_allclose(g_bg[0, 0].numpy(), ref_bg, atol=1e-9, rtol=0)


@pytest.mark.parametrize("solver", ["exact", "inertial"])
def test_backward_solve_uses_the_spectral_preconditioner(solver, monkeypatch):
    """The adjoint PCG of the backward pass is preconditioned like the forward one (same per-sample M⁻¹)."""
    import fusion.methods.poisson as poisson_module
    import fusion.ops.masked as masked_module

    calls = {"backward": 0, "phase": "forward"}
    original = masked_module.masked_poisson_preconditioner

    def counting(region, kind="spectral"):
        m_inv = original(region, kind)
        if m_inv is None:
            return None

        def wrapped(r):
            calls["backward"] += calls["phase"] == "backward"
            return m_inv(r)

        return wrapped

    monkeypatch.setattr(masked_module, "masked_poisson_preconditioner", counting)
    monkeypatch.setattr(poisson_module, "masked_poisson_preconditioner", counting)
    fg, bg, mask = _grad_inputs()
    out = poisson_blend(fg, bg, mask.detach(), solver=solver, tol=1e-10)
    calls["phase"] = "backward"
    out.sum().backward()
    assert calls["backward"] > 0 and fg.grad is not None


def test_blend_inertial_is_solve_inertial_with_its_defaults():
    fgs, bgs, ms = _three_samples(torch.float64)
    res = poisson_solve_inertial(fgs[0], bgs[0], ms[0])
    assert torch.equal(poisson_blend(fgs[0], bgs[0], ms[0], solver="inertial"), res.solution)
    assert inspect.signature(poisson_solve).parameters["beta"].default == 0.9


# ----------------------------------------------------------------------------------------------------------------
# placing, errors, registry
# ----------------------------------------------------------------------------------------------------------------
def test_place_source_offsets_and_cropping():
    fg = torch.arange(6.0).view(1, 1, 2, 3)
    mask = torch.ones(1, 1, 2, 3)
    bg = torch.full((1, 1, 4, 5), -1.0)
    fc, mc = place_source(fg, mask, bg, offset=(-1, 3))
    assert mc.sum() == 2  # one row dropped above, one column dropped on the right
    assert fc[0, 0, 0, 3:].tolist() == [3.0, 4.0]
    fc, mc = place_source(fg, mask, bg)  # centred
    assert fc[0, 0, 1:3, 1:4].tolist() == fg[0, 0].tolist()
    with pytest.raises(ValueError, match="entirely outside"):
        place_source(fg, mask, bg, offset=(10, 0))


@pytest.mark.parametrize(
    "case, match",
    [
        ("size", "image sizes differ"),
        ("empty", "mask is empty"),
        ("full", "covers the whole image"),
        ("nan", "NaN or Inf"),
        ("channels", "channel counts differ"),
        ("mask_channels", "1 channel"),
        ("solver", "solver must be"),
    ],
)
def test_bad_input_errors(case, match):
    fg, bg = torch.rand(1, 3, 10, 12), torch.rand(1, 3, 10, 12)
    mask = torch.zeros(1, 1, 10, 12)
    mask[..., 3:7, 3:8] = 1
    kwargs = {}
    if case == "size":
        bg = torch.rand(1, 3, 11, 12)
    elif case == "empty":
        mask = torch.zeros_like(mask)
    elif case == "full":
        mask = torch.ones_like(mask)
    elif case == "nan":
        fg[0, 0, 0, 0] = float("nan")
    elif case == "channels":
        bg = torch.rand(1, 1, 10, 12)
    elif case == "mask_channels":
        mask = mask.expand(1, 3, -1, -1)
    elif case == "solver":
        kwargs["solver"] = "multigrid"
    with pytest.raises(ValueError, match=match):
        poisson_blend(fg, bg, mask, **kwargs)


def test_registry(gen):
    cli = get_method("poisson")
    assert cli.__name__ == "poisson_cli"
    fg, bg = (torch.rand(1, 3, 12, 14, generator=gen, dtype=torch.float64) for _ in range(2))
    mask = torch.zeros(1, 1, 12, 14, dtype=torch.float64)
    mask[..., 3:9, 4:10] = 1
    for solver in ("exact", "spectral"):
        out = cli(fg, bg, mask, solver=solver, tol=1e-9)
        assert torch.equal(out.result, poisson_blend(fg, bg, mask, solver=solver, tol=1e-9))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")


def test_spectral_with_mask_on_the_image_border(gen):
    bg = torch.rand(1, 3, 20, 25, generator=gen, dtype=torch.float64)
    fg = torch.rand(1, 3, 20, 25, generator=gen, dtype=torch.float64)
    mask = torch.zeros(1, 1, 20, 25, dtype=torch.float64)
    mask[..., 0:12, 15:25] = 1
    torch.testing.assert_close(poisson_blend(bg, bg, mask, solver="spectral"), bg, atol=1e-12, rtol=0)
    out = poisson_blend(fg, bg, mask, solver="spectral")
    assert torch.isfinite(out).all() and torch.equal(out[..., 14:, :], bg[..., 14:, :])
