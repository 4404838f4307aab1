import numpy as np
import pytest
import torch

from fusion.methods.osmosis import (
    alpha_map,
    fusion_drift,
    linear_osmosis,
    max_explicit_step,
    osmosis_filter_fusion,
    osmosis_fusion,
    solve_u_block,
)
from fusion.methods.poisson import poisson_blend
from fusion.methods.registry import MethodOutput, get_method
from fusion.metrics import chromaticity_error
from fusion.ops.osmosis import canonical_drift, osmosis_operator


def _photo(which: str, h: int, w: int, dtype=torch.float64) -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(getattr(data, which)().copy()).permute(2, 0, 1)[None].to(dtype) / 255
    return torch.nn.functional.interpolate(img, size=(h, w), mode="area")


def _box_mask(h, w, dtype=torch.float64):
    m = torch.zeros(1, 1, h, w, dtype=dtype)
    m[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    return m


def _dense_operator(drift, h, w):
    cols = []
    for k in range(h * w):
        e = torch.zeros(1, 1, h, w, dtype=torch.float64)
        e.view(-1)[k] = 1
        cols.append(osmosis_operator(e, drift).flatten())
    return torch.stack(cols, 1).numpy()


# ----------------------------------------------------------------------------------------------- linear filter


def test_implicit_reaches_steady_state_and_conserves_mass_on_photos():
    u0 = _photo("chelsea", 32, 40)
    v = _photo("coffee", 32, 40)
    res = linear_osmosis(u0, v, tau=1e4, steps=8, offset=0.02, tol=1e-12, max_iter=5000)
    assert res.all_converged
    steady = res.info["steady_state"]
    # steady state u* = (µ_u0 / µ_v) v, for the offset images
    expected = (u0 + 0.02).mean((-2, -1), keepdim=True) / (v + 0.02).mean((-2, -1), keepdim=True) * (v + 0.02) - 0.02
    torch.testing.assert_close(steady, expected)
    assert (res.solution - steady).abs().max() < 1e-6
    mass = res.info["mass"]
    assert ((mass - mass[0]).abs() / mass[0]).max() < 1e-10
    assert float(res.solution.min()) + 0.02 > 0  # positivity


def test_implicit_step_matches_sparse_solve_and_is_positive():
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    u0 = _photo("astronaut", 10, 12)[:, :1]
    v = _photo("coffee", 10, 12)[:, :1]
    tau = 3.0
    res = linear_osmosis(u0, v, tau=tau, steps=1, offset=0.01, tol=1e-13, max_iter=1000)
    a = _dense_operator(canonical_drift(v + 0.01), 10, 12)
    ref = spla.spsolve(sp.csc_matrix(np.eye(120) - tau * a), (u0 + 0.01).flatten().numpy()) - 0.01
    np.testing.assert_allclose(res.solution.flatten().numpy(), ref, atol=1e-10)
    # I − τA is an M-matrix: its inverse is non-negative (positivity for any τ)
    assert np.linalg.inv(np.eye(120) - 100 * a).min() > -1e-12


def test_explicit_scheme_limit_positivity_and_mass(gen):
    u0 = _photo("chelsea", 16, 20)
    v = _photo("coffee", 16, 20)
    limit = max_explicit_step(canonical_drift(v + 0.05))
    a = _dense_operator(canonical_drift(v + 0.05)[:, :1], 16, 20)
    # at the limit the explicit matrix I + τA is non-negative; slightly beyond it is not
    assert (np.eye(320) + limit * a).min() > -1e-12
    assert (np.eye(320) + 1.05 * limit * a).min() < 0
    res = linear_osmosis(u0, v, tau=limit, steps=300, scheme="explicit", offset=0.05)
    mass = res.info["mass"]
    assert ((mass - mass[0]).abs() / mass[0]).max() < 1e-12
    assert float(res.solution.min()) + 0.05 >= 0
    d0 = (u0 - res.info["steady_state"]).norm()
    assert (res.solution - res.info["steady_state"]).norm() < 0.5 * d0  # on its way to the steady state
    with pytest.raises(ValueError, match="stability limit"):
        linear_osmosis(u0, v, tau=2 * limit, steps=1, scheme="explicit", offset=0.05)


def test_both_schemes_converge_to_the_exact_evolution_at_first_order():
    """u(T) = exp(T A) u0 (SciPy expm); halving τ roughly halves the error of either scheme."""
    from scipy.linalg import expm

    u0 = _photo("chelsea", 8, 10)[:, :1]
    v = _photo("coffee", 8, 10)[:, :1]
    a = _dense_operator(canonical_drift(v + 0.1), 8, 10)
    t_end = 0.5
    exact = expm(t_end * a) @ (u0 + 0.1).flatten().numpy() - 0.1
    for scheme in ("explicit", "implicit"):
        errs = []
        for steps in (20, 40, 80):
            res = linear_osmosis(u0, v, tau=t_end / steps, steps=steps, scheme=scheme, offset=0.1, tol=1e-13)
            errs.append(np.abs(res.solution.flatten().numpy() - exact).max())
        assert errs[-1] < 1e-2
        for coarse, fine in zip(errs, errs[1:]):
            assert 1.6 < coarse / fine < 2.4


def test_filter_fusion_reaches_the_null_space_of_the_mixed_drift():
    fg = _photo("chelsea", 16, 20)
    bg = _photo("coffee", 16, 20)
    mask = _box_mask(16, 20)
    res = osmosis_filter_fusion(fg, bg, mask, tau=1e3, steps=20, offset=0.05, tol=1e-12, max_iter=5000)
    assert res.all_converged
    drift = fusion_drift(fg + 0.05, bg + 0.05, mask)
    u = res.solution + 0.05
    assert osmosis_operator(u, drift).abs().max() < 1e-6 * u.abs().max()
    mass = res.info["mass"]
    assert ((mass - mass[0]).abs() / mass[0]).max() < 1e-9
    # the steady state is the positive null vector of A with the mass of u0 (dense eigen-decomposition)
    a = _dense_operator(drift[:, :1], 16, 20)
    w, vecs = np.linalg.eig(a)
    null = np.real(vecs[:, np.argmin(np.abs(w))])
    null = null / null.sum() * float(mass[0, 0, 0])
    np.testing.assert_allclose(u[0, 0].flatten().numpy(), null, atol=1e-6)


# ----------------------------------------------------------------------------------------------- variational model


def _fusion_pair(h=24, w=30):
    fg = _photo("astronaut", h, w)
    bg = _photo("coffee", h, w)
    return fg, bg, alpha_map(_box_mask(h, w), kind="gaussian", sigma=2.0)


@pytest.mark.parametrize("metric", ["newton_u", "curvature"])
@pytest.mark.parametrize("beta", [0.0, 0.4])
def test_energy_decreases_monotonically_under_ipiano(beta, metric):
    fg, bg, alpha = _fusion_pair()
    _, _, res = osmosis_fusion(fg, bg, alpha, beta=beta, max_iter=150, metric=metric)
    e = res.history[:, 0]
    assert bool((e[1:] <= e[:-1] * (1 + 1e-12)).all())
    assert e[-1] < 0.9 * e[0]


def test_curvature_metric_bounds_both_hessian_blocks():
    """diag(d) − ∇²O is positive semi-definite for the u and the v block (Gershgorin), checked with autograd."""
    from fusion.energies.osmosis import osmosis_curvature, osmosis_fusion_term

    g = torch.Generator().manual_seed(3)
    u = 1 + 254 * torch.rand(1, 2, 3, 4, generator=g, dtype=torch.float64)
    v = 1 + 254 * torch.rand(1, 2, 3, 4, generator=g, dtype=torch.float64)
    target = 1 + 254 * torch.rand(1, 2, 3, 4, generator=g, dtype=torch.float64)
    d_u, d_v = osmosis_curvature(u, v, 5.0)
    h_u = torch.autograd.functional.hessian(
        lambda x: osmosis_fusion_term(x.view_as(u), v, target, 5.0).sum(), u.flatten()
    )
    h_v = torch.autograd.functional.hessian(
        lambda x: osmosis_fusion_term(u, x.view_as(v), target, 5.0).sum(), v.flatten()
    )
    for d, h in ((d_u, h_u), (d_v, h_v)):
        assert torch.linalg.eigvalsh(torch.diag(d.flatten()) - h).min() > -1e-9 * d.max()
        assert bool((d.flatten() >= h.abs().sum(1) * (1 - 1e-12)).all())
    # the u block bound is exact Gershgorin: 2 (number of neighbours) / v
    torch.testing.assert_close(d_u.flatten(), h_u.abs().sum(1))


def test_curvature_metric_reaches_the_minimiser_of_the_scalar_step_method():
    """Same model, same minimiser: the default (diagonal curvature metric) and the original scalar-step iPiano,
    both run to a tight tolerance in float64, agree — and the metric gets there in far fewer iterations."""
    fg, bg, alpha = _fusion_pair(10, 12)
    u_new, v_new, r_new = osmosis_fusion(fg, bg, alpha, tol=1e-12, max_iter=2000, metric="curvature")
    u_old, v_old, r_old = osmosis_fusion(fg, bg, alpha, tol=1e-12, max_iter=20000, metric="identity")
    assert r_new.all_converged
    e_new, e_old = float(r_new.history[-1, 0]), float(r_old.history[-1, 0])
    assert e_new <= e_old * (1 + 1e-9)
    assert abs(e_new - e_old) < 1e-3 * abs(e_old)
    assert (u_new - u_old).abs().max() < 2e-3 and (v_new - v_old).abs().max() < 2e-4
    assert r_new.iterations * 5 < r_old.iterations
    # with β = 0 every accepted step lowers the energy (joint descent test), up to the accuracy of the inner
    # primal–dual prox (relative gap 1e-8)
    _, _, r0 = osmosis_fusion(fg, bg, alpha, beta=0.0, tol=1e-12, max_iter=300, metric="curvature")
    e = r0.history[:, 0]
    assert bool((e[1:] <= e[:-1] * (1 + 1e-8)).all())
    assert abs(float(e[-1]) - e_new) < 1e-6 * abs(e_new)


def _u_block_matrix(v: torch.Tensor, alpha: torch.Tensor, gamma: float):
    """SciPy sparse ``V⁻¹ S_h V⁻¹ + γ diag(α)`` for a ``(1, 1, H, W)`` image, assembled edge by edge."""
    import scipy.sparse as sp

    h, w = v.shape[-2:]
    vn = v[0, 0].numpy()
    rows, cols, vals = [], [], []
    for y in range(h):
        for x in range(w):
            for dy, dx in ((1, 0), (0, 1)):
                y2, x2 = y + dy, x + dx
                if y2 >= h or x2 >= w:
                    continue
                i, j = y * w + x, y2 * w + x2
                weight = 2 * vn[y, x] * vn[y2, x2] / (vn[y, x] + vn[y2, x2])
                # ½ h (w_j − w_i)² with w = u / v: Hessian entries h/(v_a v_b) with signs
                for a, b, sign in ((i, i, 1), (j, j, 1), (i, j, -1), (j, i, -1)):
                    rows.append(a)
                    cols.append(b)
                    vals.append(sign * weight / (vn.flat[a] * vn.flat[b]))
    n = h * w
    lap = sp.csr_matrix((vals, (rows, cols)), shape=(n, n))
    return lap + sp.diags(gamma * alpha[0, 0].numpy().ravel())


def test_u_block_solve_matches_a_sparse_direct_solve(gen):
    """The exact u-block minimiser (PCG) equals SciPy's sparse LU solve of the same quadratic, in float64."""
    import scipy.sparse.linalg as spla

    v = 1 + 254 * torch.rand(1, 1, 9, 11, generator=gen, dtype=torch.float64)
    f = 1 + 254 * torch.rand(1, 1, 9, 11, generator=gen, dtype=torch.float64)
    alpha = torch.rand(1, 1, 9, 11, generator=gen, dtype=torch.float64)
    alpha[..., :, 6:] = 0  # the fidelity acts on part of the image only
    res = solve_u_block(v, f, alpha, gamma=0.7, tol=1e-13, max_iter=2000)
    assert res.all_converged
    mat = _u_block_matrix(v, alpha, 0.7)
    ref = spla.spsolve(mat.tocsc(), (0.7 * alpha * f)[0, 0].numpy().ravel())
    np.testing.assert_allclose(res.solution[0, 0].numpy().ravel(), ref, rtol=1e-9, atol=1e-9 * np.abs(ref).max())
    # the minimiser zeroes ∂_u (O + γD) (eqs. 14 and 16's optimality)
    from fusion.energies.osmosis import osmosis_grad_u

    g = osmosis_grad_u(res.solution, v) + 0.7 * alpha * (res.solution - f)
    assert g.abs().max() < 1e-9 * (0.7 * alpha * f).abs().max()


def test_newton_u_reaches_the_minimiser_of_the_curvature_method_in_fewer_iterations():
    """Same model, same minimiser, float64, on a real photograph pair: the exact-u-block solver and the diagonal
    curvature metric, both run to a tight tolerance, agree; the exact u-block needs far fewer iterations. At the
    default stopping rule it stops at an energy no higher than the curvature run's."""
    fg, bg, alpha = _fusion_pair(24, 30)
    u_new, v_new, r_new = osmosis_fusion(fg, bg, alpha, tol=1e-12, max_iter=500, metric="newton_u")
    u_ref, v_ref, r_ref = osmosis_fusion(fg, bg, alpha, tol=1e-12, max_iter=3000, metric="curvature")
    assert r_new.all_converged and r_ref.all_converged
    e_new, e_ref = float(r_new.history[-1, 0]), float(r_ref.history[-1, 0])
    print(f"E newton_u {e_new:.12g} ({r_new.iterations} it), curvature {e_ref:.12g} ({r_ref.iterations} it)")
    print(f"max |du| {float((u_new - u_ref).abs().max()):.3g}, max |dv| {float((v_new - v_ref).abs().max()):.3g}")
    assert e_new <= e_ref * (1 + 1e-12)
    assert abs(e_new - e_ref) < 1e-6 * abs(e_ref)
    assert (u_new - u_ref).abs().max() < 5e-4 and (v_new - v_ref).abs().max() < 1e-5  # images in [0, 1]
    assert r_new.iterations * 5 < r_ref.iterations
    # at the paper's stopping rule (relative energy change 1e-6)
    _, _, s_new = osmosis_fusion(fg, bg, alpha, metric="newton_u")
    _, _, s_ref = osmosis_fusion(fg, bg, alpha, metric="curvature")
    assert float(s_new.history[-1, 0]) <= float(s_ref.history[-1, 0])
    assert s_new.iterations < s_ref.iterations


def test_newton_u_batch_samples_are_independent():
    """Two different pairs in one batch reach the energies they reach alone; η = 0 (no prox) runs too."""
    fg1, bg1, alpha = _fusion_pair(12, 14)
    fg2, bg2 = _photo("chelsea", 12, 14), _photo("coffee", 12, 14)
    fg, bg = torch.cat([fg1, fg2]), torch.cat([bg1, bg2])
    _, _, both = osmosis_fusion(fg, bg, alpha.expand(2, -1, -1, -1), tol=1e-10, max_iter=500)
    for k, (f_k, b_k) in enumerate(((fg1, bg1), (fg2, bg2))):
        _, _, alone = osmosis_fusion(f_k, b_k, alpha, tol=1e-10, max_iter=500)
        e_alone = float(alone.history[-1, 0])
        assert abs(float(both.history[-1, k]) - e_alone) < 1e-8 * e_alone
    _, _, flat = osmosis_fusion(fg1, bg1, alpha, eta=0.0, max_iter=200)
    assert flat.all_converged and flat.info["prox_iterations"] == 0
    e = flat.history[:, 0]
    assert bool((e[1:] <= e[:-1] * (1 + 1e-12)).all())


@pytest.mark.slow
def test_osmosis_fusion_matches_float32_and_converges():
    fg, bg, _ = _fusion_pair(12, 16)
    alpha = alpha_map(_box_mask(12, 16), kind="binary")
    u64, v64, r64 = osmosis_fusion(fg, bg, alpha, max_iter=5000, tol=1e-6)
    assert r64.all_converged
    u32, _, _ = osmosis_fusion(fg.float(), bg.float(), alpha.float(), max_iter=5000, tol=1e-6)
    assert (u32.double() - u64).abs().max() < 2e-2
    # where α = 1 (deep inside the region) the fidelity keeps u at f; v stays close to f^α b^(1−α)
    inside = alpha[0, 0] > 0.999
    assert (u64[0][:, inside] - fg[0][:, inside]).abs().mean() < 0.05
    assert (v64 - (fg + 1 / 255) ** alpha * (bg + 1 / 255) ** (1 - alpha) + 1 / 255).abs().mean() < 0.05


def test_brightness_invariance_beats_poisson_editing():
    """Fuse f with b = c·f: osmosis keeps the chromaticity of f, Poisson editing shifts it additively."""
    f = _photo("chelsea", 20, 24)
    c = 0.5
    b = c * f
    mask = _box_mask(20, 24)
    alpha = alpha_map(mask, kind="binary")
    u, _, res = osmosis_fusion(f, b, alpha, max_iter=1000, tol=1e-7)
    poisson = poisson_blend(f, b, mask, tol=1e-10)
    err_osmosis, _ = chromaticity_error(u.clamp_min(0), f)
    err_poisson, _ = chromaticity_error(poisson.clamp_min(0), f)
    print(f"chromaticity error vs f: osmosis {float(err_osmosis):.4g}, Poisson {float(err_poisson):.4g}")
    assert float(err_osmosis) <= float(err_poisson)
    assert float(err_osmosis) < 0.5 * float(err_poisson)


@pytest.mark.parametrize("init", ["f", "alpha", "average"])
def test_initialisations_run_and_lower_the_energy(init):
    fg, bg, alpha = _fusion_pair(12, 16)
    _, _, res = osmosis_fusion(fg, bg, alpha, init=init, max_iter=30)
    assert res.history[-1, 0] < res.history[0, 0]


def test_alpha_maps():
    mask = _box_mask(20, 24)
    binary = alpha_map(mask, kind="binary")
    assert set(binary.unique().tolist()) == {0.0, 1.0}
    blurred = alpha_map(mask, kind="gaussian", sigma=3.0)
    assert 0 < float(blurred[0, 0, 10, 6]) < 1 and blurred.min() >= 0 and blurred.max() <= 1
    const = alpha_map(kind="constant", value=0.3, like=torch.zeros(2, 3, 5, 7))
    assert const.shape == (2, 1, 5, 7) and bool((const == 0.3).all())


def test_bad_inputs_raise_clear_errors():
    fg, bg, alpha = _fusion_pair(12, 16)
    with pytest.raises(ValueError, match="positive after adding offset"):
        osmosis_fusion(fg - 0.5, bg, alpha, max_iter=1)
    with pytest.raises(ValueError, match="positive after adding offset"):
        black = fg.clone()
        black[..., 0, 0] = 0.0
        linear_osmosis(black, bg, tau=1.0, steps=1, offset=0.0)  # a black pixel is not positive without offset
    with pytest.raises(ValueError, match=r"alpha values must lie in \[0, 1\]"):
        osmosis_fusion(fg, bg, alpha * 1.5, max_iter=1)
    with pytest.raises(ValueError, match="sizes differ"):
        osmosis_fusion(fg, bg[..., :-1], alpha, max_iter=1)
    with pytest.raises(ValueError, match="sizes differ"):
        osmosis_fusion(fg, bg, alpha[..., :-1, :], max_iter=1)
    with pytest.raises(ValueError, match="init"):
        osmosis_fusion(fg, bg, alpha, init="zeros", max_iter=1)
    with pytest.raises(ValueError, match=r"metric must be 'newton_u', 'curvature' or 'identity', got 'newton'"):
        osmosis_fusion(fg, bg, alpha, metric="newton", max_iter=1)
    with pytest.raises(ValueError, match="beta must lie in"):
        osmosis_fusion(fg, bg, alpha, beta=1.0, max_iter=1)
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        solve_u_block(bg, fg, alpha, gamma=-1.0)


# ----------------------------------------------------------------------------------------------- CLI and alignment


def test_cli_adapters_return_extras():
    fg, bg, _ = _fusion_pair(12, 16)
    mask = _box_mask(12, 16)
    out = get_method("osmosis")(fg.float(), bg.float(), mask.float(), max_iter=5)
    assert isinstance(out, MethodOutput)
    assert out.result.shape == fg.shape
    assert {"v", "alpha", "chroma_error_fg", "chroma_error_bg"} <= set(out.images)
    assert len(out.curves["energy"]["E(u, v)"]) == 6
    out = get_method("linear_osmosis")(fg.float(), bg.float(), mask.float(), tau=10.0, steps=2, tol=1e-5)
    assert out.result.shape == fg.shape and "chroma_error_fg" in out.images


def test_alignment_recovers_a_known_homography():
    from kornia.geometry.transform import warp_perspective

    from fusion.ops.align import align_to

    img = _photo("astronaut", 192, 192, torch.float32)
    h0 = torch.tensor([[[1.02, 0.03, -5.0], [-0.02, 0.98, 4.0], [1e-5, 2e-5, 1.0]]])
    moved = warp_perspective(img, h0, (192, 192), align_corners=True)
    aligned, h = align_to(moved, img)
    # the estimate maps moved → img, i.e. inverts h0: compare where both send the interior corners
    corners = torch.tensor([[40.0, 40.0, 1.0], [150.0, 40.0, 1.0], [40.0, 150.0, 1.0], [150.0, 150.0, 1.0]]).T
    est = h[0] @ corners
    ref = torch.linalg.inv(h0[0]) @ corners
    assert ((est[:2] / est[2:]) - (ref[:2] / ref[2:])).abs().max() < 1.0
    inner = (slice(30, 160), slice(30, 160))
    assert (aligned[0][:, inner[0], inner[1]] - img[0][:, inner[0], inner[1]]).abs().mean() < 0.03


@pytest.mark.gpu
def test_cuda_matches_cpu():
    fg, bg, alpha = _fusion_pair(12, 16)
    u_cpu, v_cpu, r_cpu = osmosis_fusion(fg, bg, alpha, max_iter=50)
    dev = torch.device("cuda")
    u_gpu, v_gpu, r_gpu = osmosis_fusion(fg.to(dev), bg.to(dev), alpha.to(dev), max_iter=50)
    assert u_gpu.device.type == "cuda" and r_gpu.iterations == r_cpu.iterations
    torch.testing.assert_close(u_gpu.cpu(), u_cpu, atol=1e-8, rtol=0)
    res = linear_osmosis(fg.to(dev), bg.to(dev), tau=100.0, steps=3, offset=0.05, tol=1e-12)
    ref = linear_osmosis(fg, bg, tau=100.0, steps=3, offset=0.05, tol=1e-12)
    torch.testing.assert_close(res.solution.cpu(), ref.solution, atol=1e-8, rtol=0)
