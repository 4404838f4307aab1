import numpy as np
import pytest
import torch

from fusion.ops import BOUNDARY_CONDITIONS, backward_diff, div, forward_diff, grad, laplacian, second_diff
from tests.conftest import tol_for


def _dense(fn, shape):
    n = int(np.prod(shape))
    eye = torch.eye(n, dtype=torch.float64)
    return torch.stack([fn(eye[i].reshape(shape)).reshape(-1) for i in range(n)], 1)


@pytest.mark.parametrize("bc", BOUNDARY_CONDITIONS)
def test_grad_div_adjoint(bc, device, dtype, gen):
    u = torch.randn(2, 3, 7, 10, generator=gen, dtype=dtype).to(device)
    p = torch.randn(2, 3, 2, 7, 10, generator=gen, dtype=dtype).to(device)
    lhs = (grad(u, bc) * p).sum()
    rhs = -(u * div(p, bc)).sum()
    assert torch.allclose(lhs, rhs, rtol=1e-5 if dtype == torch.float32 else 1e-12)


@pytest.mark.parametrize("bc", BOUNDARY_CONDITIONS)
@pytest.mark.parametrize("dim", [0, 1, -1])
def test_forward_backward_adjoint_dense(bc, dim):
    shape = (4, 5, 3)
    fd = _dense(lambda x: forward_diff(x, dim, bc), shape)
    bd = _dense(lambda x: backward_diff(x, dim, bc), shape)
    assert torch.allclose(fd.T, -bd, atol=1e-14)


@pytest.mark.parametrize("bc", ["neumann", "periodic"])
def test_laplacian_is_div_grad(bc, device, dtype, gen):
    u = torch.randn(1, 2, 6, 9, generator=gen, dtype=dtype).to(device)
    assert torch.allclose(laplacian(u, bc), div(grad(u, bc), bc), atol=tol_for(dtype))


def test_laplacian_stencils_match_dense_reference():
    n = 6
    neumann = np.diag(-2.0 * np.ones(n)) + np.diag(np.ones(n - 1), 1) + np.diag(np.ones(n - 1), -1)
    dirichlet = neumann.copy()
    periodic = neumann.copy()
    neumann[0, 0] = neumann[-1, -1] = -1.0
    periodic[0, -1] = periodic[-1, 0] = 1.0
    for bc, ref in [("neumann", neumann), ("dirichlet", dirichlet), ("periodic", periodic)]:
        got = _dense(lambda x: second_diff(x, 0, bc), (n,)).numpy()
        np.testing.assert_allclose(got, ref, atol=1e-15)


def test_laplacian_symmetric_negative(gen):
    for bc in BOUNDARY_CONDITIONS:
        mat = _dense(lambda x: laplacian(x, bc), (1, 1, 4, 5))
        assert torch.allclose(mat, mat.T)
        assert torch.linalg.eigvalsh(mat).max() < 1e-12


def test_mixed_bc_per_axis(gen):
    u = torch.randn(1, 1, 5, 6, generator=gen, dtype=torch.float64)
    g = grad(u, ("dirichlet", "periodic"))
    assert torch.allclose(g[:, :, 0], forward_diff(u, -2, "dirichlet"))
    assert torch.allclose(g[:, :, 1], forward_diff(u, -1, "periodic"))


@pytest.mark.parametrize("bc", BOUNDARY_CONDITIONS)
def test_gradcheck(bc, gen):
    u = torch.randn(1, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    p = torch.randn(1, 2, 2, 4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: grad(x, bc), (u,))
    assert torch.autograd.gradcheck(lambda x: div(x, bc), (p,))
    assert torch.autograd.gradcheck(lambda x: laplacian(x, bc), (u,))


def test_bad_bc_and_field_shape():
    with pytest.raises(ValueError, match="boundary condition"):
        grad(torch.zeros(1, 1, 3, 3), "mirror")
    with pytest.raises(ValueError, match=r"\(\.\.\., 2, H, W\)"):
        div(torch.zeros(1, 3, 3, 3))


@pytest.mark.parametrize("bc", BOUNDARY_CONDITIONS)
@pytest.mark.parametrize("shape", [(2, 6, 7), (1, 2, 6, 7), (1, 2, 3, 6, 7)])
def test_image_laplacian_equals_sum_of_second_differences(bc, shape, gen):
    u = torch.randn(*shape, generator=gen, dtype=torch.float64)
    ref = second_diff(u, -2, bc) + second_diff(u, -1, bc)
    torch.testing.assert_close(laplacian(u, bc), ref, atol=1e-13, rtol=0)
    mixed = laplacian(u, (bc, "periodic"))
    torch.testing.assert_close(mixed, second_diff(u, -2, bc) + second_diff(u, -1, "periodic"), atol=1e-13, rtol=0)
