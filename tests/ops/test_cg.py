import numpy as np
import pytest
import torch

from fusion.ops import conjugate_gradient, solve_masked_poisson
from fusion.ops.cg import CG_CRITERION, bicgstab
from fusion.ops.masked import BoxGroups, masked_poisson_operator, masked_poisson_preconditioner, region_boxes
from tests.reference import masked_poisson, perez_system


def test_cg_matches_dense_solve(gen):
    a = torch.randn(3, 15, 15, generator=gen, dtype=torch.float64)
    a = a @ a.transpose(1, 2) + 15 * torch.eye(15, dtype=torch.float64)
    b = torch.randn(3, 15, generator=gen, dtype=torch.float64)
    res = conjugate_gradient(lambda x: (a @ x.unsqueeze(-1)).squeeze(-1), b, tol=1e-12, max_iter=100)
    assert res.all_converged
    torch.testing.assert_close(res.solution, torch.linalg.solve(a, b), atol=1e-10, rtol=0)
    assert res.history.shape == (res.iterations + 1, 3)


def test_cg_samples_stop_independently():
    d = torch.tensor([[1.0, 1.0, 1.0], [1.0, 10.0, 100.0]], dtype=torch.float64)
    b = torch.ones_like(d)
    res = conjugate_gradient(lambda x: d * x, b, tol=1e-12, check_every=1)
    assert res.all_converged
    # the first sample converges in one step and is frozen afterwards
    assert res.history[1, 0] < 1e-12 and bool((res.history[1:, 0] == res.history[1, 0]).all())
    torch.testing.assert_close(res.solution, 1 / d)


def test_cg_reports_non_convergence():
    d = torch.linspace(1, 1000, 50, dtype=torch.float64)[None]
    res = conjugate_gradient(lambda x: d * x, torch.ones_like(d), tol=1e-12, max_iter=3)
    assert res.iterations == 3 and not res.all_converged


@pytest.mark.parametrize("precondition", ["spectral", "jacobi", "none"])
def test_masked_poisson_matches_sparse_direct(precondition, gen):
    h, w = 19, 26
    region = torch.rand(2, 1, h, w, generator=gen) > 0.45
    region[0, 0, 0, :] = True  # touches the image border
    region[1, 0, :, -1] = True
    rhs = torch.randn(2, 2, h, w, generator=gen, dtype=torch.float64)
    boundary = torch.randn(2, 2, h, w, generator=gen, dtype=torch.float64)
    res = solve_masked_poisson(rhs, boundary, region.double(), precondition=precondition, tol=1e-13)
    assert res.all_converged
    for b in range(2):
        for c in range(2):
            ref = masked_poisson(rhs[b, c].numpy(), boundary[b, c].numpy(), region[b, 0].numpy())
            err = np.abs(res.solution[b, c].numpy() - ref).max() / np.abs(ref).max()
            assert err < 1e-10


def test_spectral_preconditioner_needs_fewer_iterations(gen):
    h, w = 96, 96
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    region = ((((yy - 48) / 40) ** 2 + ((xx - 45) / 35) ** 2) < 1).double()[None, None]
    rhs = torch.randn(1, 1, h, w, generator=gen, dtype=torch.float64)
    bnd = torch.rand(1, 1, h, w, generator=gen, dtype=torch.float64)
    spec = solve_masked_poisson(rhs, bnd, region, precondition="spectral", tol=1e-8)
    jac = solve_masked_poisson(rhs, bnd, region, precondition="jacobi", tol=1e-8)
    assert spec.all_converged and jac.all_converged
    assert spec.iterations * 3 < jac.iterations
    torch.testing.assert_close(spec.solution, jac.solution, atol=1e-6, rtol=0)


def test_masked_poisson_float32(device, gen):
    region = (torch.rand(1, 1, 30, 40, generator=gen) > 0.3).float().to(device)
    rhs = torch.randn(1, 3, 30, 40, generator=gen).to(device)
    bnd = torch.rand(1, 3, 30, 40, generator=gen).to(device)
    r32 = solve_masked_poisson(rhs, bnd, region, tol=1e-5)
    r64 = solve_masked_poisson(rhs.double(), bnd.double(), region.double(), tol=1e-12)
    assert r32.solution.dtype == torch.float32
    assert (r32.solution.double() - r64.solution).abs().max() < 1e-3


def _stencil_batch(n=60):
    """``x ↦ x + c_i (2x_j − x_{j−1} − x_{j+1})`` per sample with c = 0.1, 10, 1000 (condition about 1.4, 41,
    4000): element-wise, so its values do not depend on the batch it is applied in."""
    c = torch.tensor([[0.1], [10.0], [1000.0]], dtype=torch.float64)

    def apply(x, c):
        pad = torch.nn.functional.pad
        return x + c * (2 * x - pad(x[:, 1:], (0, 1)) - pad(x[:, :-1], (1, 0)))

    return c, apply


@pytest.mark.parametrize("check_every", [1, 10])
@pytest.mark.parametrize("true_residual", [False, True])
def test_cg_sample_alone_and_in_a_batch_stop_alike(check_every, true_residual, gen):
    """Each sample stops at the same iteration with the same iterate whatever else is in its batch."""
    c, apply = _stencil_batch()
    b = torch.randn(3, 60, generator=gen, dtype=torch.float64)

    def solve(idx):
        return conjugate_gradient(
            lambda x: apply(x, c[idx]),
            b[idx],
            tol=1e-10,
            max_iter=500,
            check_every=check_every,
            true_residual=true_residual,
        )

    together = solve(slice(None))
    counts = together.info["iterations"].tolist()
    assert len(set(counts)) > 1  # they really stop at different times
    for i in range(3):
        alone = solve(slice(i, i + 1))
        assert alone.info["iterations"].tolist() == [counts[i]]
        assert counts[i] % check_every == 0
        torch.testing.assert_close(together.solution[i : i + 1], alone.solution, rtol=0, atol=1e-15)
        torch.testing.assert_close(together.reached[i : i + 1], alone.reached, rtol=0, atol=1e-18)
    assert together.all_converged
    dense = torch.stack([apply(torch.eye(60, dtype=torch.float64), c[i]) for i in range(3)])  # symmetric
    torch.testing.assert_close(together.solution, torch.linalg.solve(dense, b), atol=1e-6, rtol=0)


def test_cg_true_residual_measures_b_minus_ax(gen):
    c, apply = _stencil_batch()
    b = torch.randn(3, 60, generator=gen, dtype=torch.float64)
    res = conjugate_gradient(lambda x: apply(x, c), b, tol=1e-9, true_residual=True)
    direct = torch.linalg.vector_norm(b - apply(res.solution, c), dim=1) / torch.linalg.vector_norm(b, dim=1)
    torch.testing.assert_close(res.reached, direct, rtol=1e-12, atol=0)
    assert res.all_converged and bool((direct <= 1e-9).all())
    assert res.criterion == "relative residual ‖b − A x‖/‖b‖" and res.tol == 1e-9


def test_cg_true_residual_stops_at_the_precision_floor(gen):
    """In float32 a tolerance of 1e-12 cannot be met: the carried residual would claim it, the direct one does
    not; the sample is stopped as stagnated long before max_iter and reported as not converged."""
    n = 200
    main = torch.full((1, n), 2.0)

    def apply_a(x):  # the 1-D Dirichlet Laplacian, condition number about 1.6e4
        return main * x - torch.nn.functional.pad(x[:, 1:], (0, 1)) - torch.nn.functional.pad(x[:, :-1], (1, 0))

    b = torch.randn(1, n, generator=gen)
    plain = conjugate_gradient(apply_a, b, tol=1e-12, max_iter=5000)
    checked = conjugate_gradient(apply_a, b, tol=1e-12, max_iter=5000, true_residual=True)
    direct = float(torch.linalg.vector_norm(b - apply_a(checked.solution)) / torch.linalg.vector_norm(b))
    assert not checked.all_converged and bool(checked.info["stagnated"][0])
    assert checked.iterations < 1000
    assert float(checked.reached[0]) == pytest.approx(direct, rel=1e-6) and direct > 1e-12
    # without the check the carried residual, which drifts from b − A x in float32, claims convergence
    assert plain.all_converged
    assert float(torch.linalg.vector_norm(b - apply_a(plain.solution)) / torch.linalg.vector_norm(b)) > 1e-12


@pytest.mark.parametrize(
    "kwargs, match", [(dict(max_iter=0), "max_iter"), (dict(tol=-1.0), "tol"), (dict(check_every=0), "check_every")]
)
def test_cg_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        conjugate_gradient(lambda x: x, torch.ones(1, 3), **kwargs)


@pytest.mark.parametrize("precondition", ["spectral", "jacobi"])
def test_preconditioner_is_per_sample(precondition, gen):
    """M⁻¹ of a batch equals M⁻¹ of each sample alone: boxes of different sizes and places, two of equal size."""
    h, w = 20, 26
    region = torch.zeros(4, 1, h, w, dtype=torch.float64)
    region[0, 0, 2:9, 3:12] = 1
    region[1, 0, 10:17, 12:21] = 1  # same box size as sample 0, another place: solved in the same call
    region[2, 0, 0:20, 20:26] = 1  # touches the border
    region[3, 0, 5:6, 5:6] = 1
    region[1, 0, 13, 16] = 0  # a hole
    r = torch.randn(4, 2, h, w, generator=gen, dtype=torch.float64) * region
    m_batch = masked_poisson_preconditioner(region, precondition)
    out = m_batch(r)
    for i in range(4):
        alone = masked_poisson_preconditioner(region[i : i + 1], precondition)(r[i : i + 1])
        torch.testing.assert_close(out[i : i + 1], alone, rtol=0, atol=1e-14)
    assert torch.equal(out * (1 - region), torch.zeros_like(out))


def test_spectral_preconditioner_on_a_rectangle_is_the_inverse(gen):
    """For a rectangular Ω away from the border, M⁻¹ = A⁻¹: PCG stops after one iteration (tested every one)."""
    region = torch.zeros(2, 1, 18, 22, dtype=torch.float64)
    region[0, 0, 3:12, 4:19] = 1
    region[1, 0, 6:15, 2:9] = 1
    rhs = torch.randn(2, 1, 18, 22, generator=gen, dtype=torch.float64)
    bnd = torch.randn(2, 1, 18, 22, generator=gen, dtype=torch.float64)
    res = solve_masked_poisson(rhs, bnd, region, tol=1e-12, check_every=1)
    assert res.info["iterations"].tolist() == [1, 1] and res.all_converged
    for i in range(2):
        ref = masked_poisson(rhs[i, 0].numpy(), bnd[i, 0].numpy(), region[i, 0].numpy() > 0.5)
        np.testing.assert_allclose(res.solution[i, 0].numpy(), ref, atol=1e-12, rtol=0)


def test_region_boxes_and_groups():
    region = torch.zeros(3, 1, 8, 9)
    region[0, 0, 2:4, 3:5] = 1
    region[1, 0, 0:2, 7:9] = 1
    region[2, 0, 5:7, 0:2] = 1
    assert region_boxes(region, grow=0) == [(2, 4, 3, 5), (0, 2, 7, 9), (5, 7, 0, 2)]
    assert region_boxes(region) == [(1, 5, 2, 6), (0, 3, 6, 9), (4, 8, 0, 3)]
    groups = BoxGroups(region_boxes(region, grow=0), region.device)
    assert len(groups.groups) == 1  # all three boxes are 2×2
    x = torch.arange(3 * 2 * 8 * 9.0).view(3, 2, 8, 9)
    (crops,) = groups.gather(x)
    for i, (y0, y1, x0, x1) in enumerate(region_boxes(region, grow=0)):
        assert torch.equal(crops[i], x[i, :, y0:y1, x0:x1])
    back = groups.scatter(torch.zeros_like(x), [crops])
    assert torch.equal(back, x * region)
    with pytest.raises(ValueError, match="empty"):
        region_boxes(torch.zeros(1, 1, 4, 4))


def test_masked_solve_gradcheck_and_adjoint_uses_the_operator(gen):
    region = torch.zeros(1, 1, 7, 8, dtype=torch.float64)
    region[..., 1:6, 2:7] = 1
    region[..., 3, 4] = 0
    rhs = torch.randn(1, 1, 7, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    bnd = torch.randn(1, 1, 7, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda r, b: solve_masked_poisson(r, b, region, tol=1e-13).solution, (rhs, bnd))


def test_masked_operator_is_perez_matrix_and_symmetric(gen):
    """``x ↦ Ω·(−Δ(Ω·x))`` equals SciPy's assembled A on Ω (for x non-zero off Ω too) and ⟨Kx, y⟩ = ⟨x, Ky⟩."""
    h, w = 9, 12
    region = (torch.rand(1, 1, h, w, generator=gen) > 0.4).double()
    region[0, 0, 0, :] = 1
    x = torch.randn(1, 2, h, w, generator=gen, dtype=torch.float64)
    y = torch.randn(1, 2, h, w, generator=gen, dtype=torch.float64)
    apply_a = masked_poisson_operator(region)
    inside = region[0, 0].numpy() > 0.5
    a, _ = perez_system(np.zeros((h, w)), np.zeros((h, w)), inside)
    for c in range(2):
        out = apply_a(x)[0, c].numpy()
        np.testing.assert_allclose(out[inside], a @ x[0, c].numpy()[inside], atol=1e-12, rtol=0)
        assert np.abs(out[~inside]).max() == 0
    assert abs(float((apply_a(x) * y).sum() - (x * apply_a(y)).sum())) < 1e-11


def test_jacobi_preconditioner_divides_by_the_neighbour_count(gen):
    region = torch.zeros(1, 1, 6, 7, dtype=torch.float64)
    region[..., :, 0:3] = 1  # border pixels (3 neighbours), a corner (2) and interior ones (4)
    r = torch.randn(1, 1, 6, 7, generator=gen, dtype=torch.float64)
    got = masked_poisson_preconditioner(region, "jacobi")(r)
    count = np.zeros((6, 7))
    for i in range(6):
        for j in range(7):
            count[i, j] = sum(0 <= i + di < 6 and 0 <= j + dj < 7 for di, dj in ((1, 0), (-1, 0), (0, 1), (0, -1)))
    np.testing.assert_allclose(got[0, 0].numpy(), r[0, 0].numpy() * region[0, 0].numpy() / count, atol=1e-15)


def test_bicgstab_matches_dense_solve(gen):
    n = 12
    a = torch.randn(3, n, n, generator=gen, dtype=torch.float64) + 6 * torch.eye(n, dtype=torch.float64)
    x_true = torch.randn(3, n, generator=gen, dtype=torch.float64)
    b = torch.einsum("bij,bj->bi", a, x_true)
    res = bicgstab(lambda x: torch.einsum("bij,bj->bi", a, x), b, tol=1e-12, max_iter=500)
    assert res.all_converged
    torch.testing.assert_close(res.solution, torch.linalg.solve(a, b), atol=1e-9, rtol=0)
    assert res.history.shape == (res.iterations + 1, 3)


def test_bicgstab_reports_its_criterion_and_reached_residual(gen):
    # a non-symmetric system stopped early: the reported residual is the one recomputed from the returned iterate
    n = 16
    a = torch.randn(2, n, n, generator=gen, dtype=torch.float64) + 5 * torch.eye(n, dtype=torch.float64)
    b = torch.randn(2, n, generator=gen, dtype=torch.float64)
    res = bicgstab(lambda x: torch.einsum("bij,bj->bi", a, x), b, tol=1e-14, max_iter=3)
    direct = (b - torch.einsum("bij,bj->bi", a, res.solution)).norm(dim=1) / b.norm(dim=1)
    assert res.criterion == CG_CRITERION and res.tol == 1e-14
    torch.testing.assert_close(res.reached, direct, rtol=1e-8, atol=0)
    assert not bool(res.converged.any()) and bool((res.reached > 1e-14).all())


@pytest.mark.parametrize("check_every", [7, 11, 1000])  # the last sample stops at 60: no multiple of 7 or 11
def test_bicgstab_result_does_not_depend_on_check_every(check_every, gen):
    """The host looks only every ``check_every`` iterations, but each sample stops (and is frozen) at the same
    iteration as with a look after every one; the idle iterations at the end are cut from the result."""
    c, apply = _stencil_batch()
    b = torch.randn(3, 60, generator=gen, dtype=torch.float64)
    every = bicgstab(lambda x: apply(x, c), b, tol=1e-10, max_iter=500, check_every=1)
    sparse = bicgstab(lambda x: apply(x, c), b, tol=1e-10, max_iter=500, check_every=check_every)
    counts = every.info["iterations"].tolist()
    assert len(set(counts)) > 1 and every.iterations == max(counts) == 60 and every.all_converged
    assert sparse.iterations == every.iterations and sparse.info["iterations"].tolist() == counts
    assert torch.equal(sparse.solution, every.solution) and torch.equal(sparse.history, every.history)
    assert torch.equal(sparse.reached, every.reached) and torch.equal(sparse.converged, every.converged)


def test_bicgstab_rejects_a_bad_check_every():
    with pytest.raises(ValueError, match="check_every"):
        bicgstab(lambda x: x, torch.ones(1, 3), check_every=0)
