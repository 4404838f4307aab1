import numpy as np
import pytest
import torch

from fusion.metrics import chromaticity_error, geometric_chromaticity


def test_chromaticity_by_hand():
    u = torch.tensor([0.2, 0.4, 0.8], dtype=torch.float64).view(1, 3, 1, 1)
    u0 = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    gcm = (0.2 * 0.4 * 0.8) ** (1 / 3)
    expected = np.abs(np.array([0.2, 0.4, 0.8]) / gcm - 1.0)
    mean, err = chromaticity_error(u, u0)
    np.testing.assert_allclose(err.flatten().numpy(), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(mean.item(), expected.mean(), rtol=1e-12)
    np.testing.assert_allclose(geometric_chromaticity(u).prod(1).item(), 1.0, rtol=1e-12)


def test_invariant_to_per_pixel_brightness(gen):
    u0 = torch.rand(2, 3, 9, 11, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    gain = torch.rand(2, 1, 9, 11, generator=gen, dtype=torch.float64) + 0.5
    mean, err = chromaticity_error(u0 * gain, u0)
    assert err.max() < 1e-12 and mean.shape == (2,)
    # an additive shift changes the chromaticity
    shifted, _ = chromaticity_error(u0 + 0.2, u0)
    assert bool((shifted > 1e-3).all())


def test_mask_weighted_mean(gen):
    u = torch.rand(1, 3, 4, 4, generator=gen, dtype=torch.float64) + 0.1
    u0 = torch.rand(1, 3, 4, 4, generator=gen, dtype=torch.float64) + 0.1
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2, :] = 1
    mean, err = chromaticity_error(u, u0, mask=mask)
    np.testing.assert_allclose(mean.item(), err[..., :2, :].mean().item(), rtol=1e-12)


def test_rejects_bad_input():
    u = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="non-negative"):
        chromaticity_error(u - 1, u)
    with pytest.raises(ValueError, match="sizes differ"):
        chromaticity_error(u, u[..., :3])
    with pytest.raises(ValueError, match="channel"):
        chromaticity_error(u, u[:, :1])
