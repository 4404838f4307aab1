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
