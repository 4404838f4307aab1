import numpy as np
import pytest
import scipy.ndimage as nd
import torch

from fusion.ops.filters import gaussian_blur_dct, gaussian_pyramid, pyramid_sizes, resize
from tests.reference import antialiased_resize, gaussian_pyramid_levels


@pytest.mark.parametrize("sigma", [0.5, 1.0, 2.5])
@pytest.mark.parametrize("shape", [(7, 9), (4, 3), (16, 5)])
def test_dct_gaussian_matches_scipy_reflect(sigma, shape, gen):
    x = torch.randn(1, 1, *shape, generator=gen, dtype=torch.float64)
    ref = nd.gaussian_filter(x[0, 0].numpy(), sigma, mode="reflect", truncate=4.0)
    np.testing.assert_allclose(gaussian_blur_dct(x, sigma)[0, 0].numpy(), ref, atol=1e-14)


def test_pyramid_keeps_aspect_ratio(device, dtype):
    sizes = pyramid_sizes(300, 170, 4)
    assert sizes == [(300, 170), (150, 85), (75, 42), (37, 21)]
    x = torch.rand(2, 3, 300, 170, dtype=dtype, device=device)
    levels = gaussian_pyramid(x, sizes)
    assert [tuple(level.shape[-2:]) for level in levels] == sizes
    # a constant image stays constant at every level
    c = torch.full((1, 1, 300, 170), 0.3, dtype=dtype, device=device)
    assert all((lv - 0.3).abs().max() < 1e-5 for lv in gaussian_pyramid(c, sizes))


@pytest.mark.parametrize("shape, levels", [((31, 20), 3), ((16, 45), 4), ((7, 7), 2)])
def test_pyramid_matches_numpy_reference(shape, levels, gen):
    """Each level: a 5×5 Gaussian (σ = 1, mirrored borders) then bilinear halving on pixel centres."""
    x = torch.rand(1, 1, *shape, generator=gen, dtype=torch.float64)
    got = gaussian_pyramid(x, pyramid_sizes(*shape, levels))
    ref = gaussian_pyramid_levels(x[0, 0].numpy(), levels)
    assert len(got) == len(ref) == levels
    for a, b in zip(got, ref):
        np.testing.assert_allclose(a[0, 0].numpy(), b, atol=1e-13, rtol=0)


@pytest.mark.parametrize("size", [(30, 47), (12, 20), (64, 64), (15, 80), (9, 5)])
def test_resize_matches_numpy_reference(size, gen):
    """Enlarging: bilinear on pixel centres; shrinking: a Gaussian pre-filter of width (factor − 1)/2 first."""
    x = torch.rand(1, 1, 30, 47, generator=gen, dtype=torch.float64)
    np.testing.assert_allclose(resize(x, size)[0, 0].numpy(), antialiased_resize(x[0, 0].numpy(), size), atol=1e-13)


def test_pyramid_and_resize_keep_float32_under_autocast() -> None:
    # the spectral solves downstream stay in float32; a bf16 blur would cost them three significant digits
    from fusion.methods import gaussian_poisson_blend
    from fusion.ops.filters import gaussian_pyramid, resize

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 24, 32, generator=g)
    mask = torch.zeros(2, 1, 24, 32)
    mask[..., 6:18, 8:24] = 1
    full = gaussian_pyramid(x, [(24, 32), (12, 16), (6, 8)])
    blend = gaussian_poisson_blend(x, x.flip(-1), mask, levels=2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = gaussian_pyramid(x, [(24, 32), (12, 16), (6, 8)])
        small = resize(x, (10, 13))
        blend_half = gaussian_poisson_blend(x, x.flip(-1), mask, levels=2)
    assert all(h.dtype == torch.float32 for h in half) and small.dtype == torch.float32
    for a, b in zip(full, half):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert blend_half.dtype == torch.float32
    torch.testing.assert_close(blend_half, blend, rtol=0, atol=1e-5)
