import pytest
import scipy.fft as sfft
import torch

from fusion.ops import dct, dst1, idct


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8, 17, 64, 101])
def test_against_scipy(n, gen):
    x = torch.randn(3, n, generator=gen, dtype=torch.float64)
    xn = x.numpy()
    torch.testing.assert_close(dct(x), torch.from_numpy(sfft.dct(xn, type=2, norm="ortho")), atol=1e-13, rtol=0)
    torch.testing.assert_close(idct(x), torch.from_numpy(sfft.idct(xn, type=2, norm="ortho")), atol=1e-13, rtol=0)
    torch.testing.assert_close(dst1(x), torch.from_numpy(sfft.dst(xn, type=1, norm="ortho")), atol=1e-13, rtol=0)


def test_multi_axis_against_scipy(gen):
    x = torch.randn(2, 5, 6, 7, generator=gen, dtype=torch.float64)
    ref = sfft.dctn(x.numpy(), type=2, norm="ortho", axes=(1, 3))
    torch.testing.assert_close(dct(x, (1, 3)), torch.from_numpy(ref), atol=1e-13, rtol=0)
    ref = sfft.dstn(x.numpy(), type=1, norm="ortho", axes=(0, 2))
    torch.testing.assert_close(dst1(x, (0, 2)), torch.from_numpy(ref), atol=1e-13, rtol=0)


def test_round_trips(device, dtype, gen):
    x = torch.randn(2, 3, 31, 48, generator=gen, dtype=dtype).to(device)
    eps = 2e-6 if dtype == torch.float32 else 1e-13
    assert (idct(dct(x, (-2, -1)), (-2, -1)) - x).abs().max() < eps
    assert (dct(idct(x, -1), -1) - x).abs().max() < eps
    assert (dst1(dst1(x, (-2, -1)), (-2, -1)) - x).abs().max() < eps
    assert dct(x).dtype == dtype and dct(x).device == x.device


def test_orthonormal_preserves_norm(gen):
    x = torch.randn(4, 20, generator=gen, dtype=torch.float64)
    for fn in (dct, idct, dst1):
        torch.testing.assert_close(fn(x).norm(dim=-1), x.norm(dim=-1))


def test_gradcheck(gen):
    x = torch.randn(2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    for fn in (dct, idct, dst1):
        assert torch.autograd.gradcheck(lambda t: fn(t, (1, 2)), (x,))
