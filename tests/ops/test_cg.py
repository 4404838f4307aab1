import numpy as np
import pytest
import torch

from fusion.ops import conjugate_gradient, solve_masked_poisson
from tests.reference import masked_poisson


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
