import itertools

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spl
import torch

from fusion.ops import laplacian, laplacian_eigenvalues, second_diff, solve_poisson
from tests.conftest import tol_for

BCS = ["neumann", "dirichlet", "periodic"]


def _zero_mean(x, dims):
    return x - x.mean(dim=dims, keepdim=True)


@pytest.mark.parametrize("bc", list(itertools.product(BCS, BCS)))
def test_laplacian_of_solution_is_rhs(bc, device, dtype, gen):
    rhs = torch.randn(2, 3, 13, 20, generator=gen, dtype=dtype).to(device)
    if "dirichlet" not in bc:
        rhs = _zero_mean(rhs, (-2, -1))
    u = solve_poisson(rhs, bc)
    assert u.dtype == dtype and u.device == rhs.device
    assert (-laplacian(u, bc) - rhs).abs().max() < tol_for(dtype) * 10


@pytest.mark.parametrize("bc", BCS)
def test_screened(bc, gen):
    rhs = torch.randn(1, 2, 9, 11, generator=gen, dtype=torch.float64)
    u = solve_poisson(rhs, bc, screening=0.25)
    assert (-laplacian(u, bc) + 0.25 * u - rhs).abs().max() < 1e-12


def test_neumann_mean_and_compatibility(gen):
    rhs = torch.randn(1, 1, 8, 10, generator=gen, dtype=torch.float64) + 3.0
    u = solve_poisson(rhs, "neumann")
    assert abs(u.mean().item()) < 1e-13  # the mean is fixed to zero
    # the mean of rhs is discarded: the result solves the compatible (zero-mean) problem
    assert (-laplacian(u, "neumann") - _zero_mean(rhs, (-2, -1))).abs().max() < 1e-12


def test_four_dimensional_mixed_against_sparse(gen):
    """A 4-D solve with mirror axes and periodic axes and anisotropic spacing, against SciPy's sparse solver."""
    shape = (4, 5, 3, 6)
    bcs = ("neumann", "dirichlet", "periodic", "neumann")
    hs = (1.0, 0.5, 2.0, 1.5)
    rhs = torch.randn(2, *shape, generator=gen, dtype=torch.float64)
    u = solve_poisson(rhs, bcs, screening=0.1, dims=(1, 2, 3, 4), spacing=hs)
    # independent operator: Kronecker sums of 1-D second-difference matrices
    mats = []
    for n, bc, h in zip(shape, bcs, hs):
        d = sp.diags([np.ones(n - 1), -2 * np.ones(n), np.ones(n - 1)], [-1, 0, 1]).tolil()
        if bc == "neumann":
            d[0, 0] = d[n - 1, n - 1] = -1
        if bc == "periodic":
            d[0, n - 1] += 1
            d[n - 1, 0] += 1
        mats.append(d.tocsr() / h**2)
    lap = sp.csr_matrix((int(np.prod(shape)),) * 2)
    for i, m in enumerate(mats):
        left = sp.identity(int(np.prod(shape[:i])))
        right = sp.identity(int(np.prod(shape[i + 1 :])))
        lap = lap + sp.kron(sp.kron(left, m), right)
    op = (-lap + 0.1 * sp.identity(lap.shape[0])).tocsc()
    for b in range(2):
        ref = spl.spsolve(op, rhs[b].numpy().ravel())
        np.testing.assert_allclose(u[b].numpy().ravel(), ref, rtol=0, atol=1e-11)


def test_eigenvalues_match_stencil():
    for bc in BCS:
        n = 7
        eye = torch.eye(n, dtype=torch.float64)
        mat = -torch.stack([second_diff(eye[i], 0, bc) for i in range(n)], 1)
        ref = torch.linalg.eigvalsh(mat)
        got = torch.sort(laplacian_eigenvalues(n, bc, dtype=torch.float64)).values
        torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)


def test_gradcheck(gen):
    rhs = torch.randn(1, 1, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    for bc in BCS:
        assert torch.autograd.gradcheck(lambda r: solve_poisson(r, bc, screening=0.5), (rhs,))


def test_errors():
    with pytest.raises(ValueError, match="one boundary condition per axis"):
        solve_poisson(torch.zeros(1, 1, 4, 4), ("neumann",))
    with pytest.raises(ValueError, match="screening"):
        solve_poisson(torch.zeros(1, 1, 4, 4), screening=-1.0)
    with pytest.raises(TypeError, match="floating-point"):
        solve_poisson(torch.zeros(1, 1, 4, 4, dtype=torch.long))
