import numpy as np
import pytest
import scipy.ndimage as nd
import torch

from fusion.ops.filters import gaussian_blur_dct, gaussian_pyramid, pyramid_sizes


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
