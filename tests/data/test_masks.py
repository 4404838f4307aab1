"""Ellipse-union masks and the masking/noise corruption of FusionMNIST and FusionCelebA views."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import ndimage

from fusion.data.masks import corrupt, ellipse_masks


def test_masks_are_binary_nonempty_and_sized(device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    m = ellipse_masks(50, 24, 40, generator=g, device=device)
    assert m.shape == (50, 1, 24, 40) and m.device.type == device.type and m.dtype == torch.float32
    assert torch.all((m == 0) | (m == 1))
    area = m.sum(dim=(1, 2, 3))
    assert bool((area > 0).all())
    assert bool((area < 24 * 40).any())  # not everything is visible
    assert 0.05 < float(m.mean()) < 0.9


def test_masks_differ_and_are_reproducible() -> None:
    a = ellipse_masks(3, 32, 32, generator=torch.Generator().manual_seed(5))
    b = ellipse_masks(3, 32, 32, generator=torch.Generator().manual_seed(5))
    c = ellipse_masks(3, 32, 32, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[0], a[1]) and not torch.equal(a[1], a[2]) and not torch.equal(a[0], a[2])


def test_single_ellipses_have_ellipse_moments() -> None:
    """With one ellipse per mask, the pixel set is convex and its second moments are those of an ellipse."""
    size, lo, hi = 96, 0.08, 0.2
    m = ellipse_masks(80, size, size, generator=torch.Generator().manual_seed(1), min_ellipses=1, max_ellipses=1,
                      min_axis=lo, max_axis=hi)[:, 0].numpy() > 0  # fmt: skip
    checked = 0
    for mask in m:
        rows, cols = np.nonzero(mask)
        if rows.min() == 0 or cols.min() == 0 or rows.max() == size - 1 or cols.max() == size - 1:
            continue  # cut at the border: not a whole ellipse
        checked += 1
        for line in list(mask) + list(mask.T):  # convex: every row and column is one run of pixels
            idx = np.nonzero(line)[0]
            assert idx.size == 0 or idx[-1] - idx[0] + 1 == idx.size
        eig = np.linalg.eigvalsh(np.cov(np.stack([rows, cols]).astype(float)))
        a, b = 2 * np.sqrt(eig)  # semi-axes of a filled ellipse from its covariance
        assert lo * size - 1.0 <= a <= hi * size + 1.0 and lo * size - 1.0 <= b <= hi * size + 1.0
        assert abs(mask.sum() / (math.pi * a * b) - 1) < 0.02  # a rectangle would give -0.045
        assert ndimage.label(mask)[1] == 1
    assert checked >= 25


def test_unions_have_at_most_max_ellipses_components() -> None:
    m = ellipse_masks(200, 48, 48, generator=torch.Generator().manual_seed(2), min_ellipses=1, max_ellipses=4)
    counts = [ndimage.label(mask.numpy() > 0)[1] for mask in m[:, 0]]
    assert max(counts) <= 4 and min(counts) >= 1
    assert max(counts) >= 3  # several ellipses do occur


def test_bad_mask_arguments() -> None:
    g = torch.Generator()
    with pytest.raises(ValueError, match="min_ellipses <= max_ellipses"):
        ellipse_masks(1, 8, 8, generator=g, min_ellipses=3, max_ellipses=2)
    with pytest.raises(ValueError, match="min_axis"):
        ellipse_masks(1, 8, 8, generator=g, min_axis=0.0)
    with pytest.raises(ValueError, match="n must be >= 0"):
        ellipse_masks(-1, 8, 8, generator=g)
    with pytest.raises(TypeError, match="height"):
        ellipse_masks(1, 8.0, 8, generator=g)  # type: ignore[arg-type]
    assert ellipse_masks(0, 8, 8, generator=g).shape == (0, 1, 8, 8)


def test_corrupt_blackens_outside_and_keeps_inside() -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.rand(3, 1, 16, 16, generator=g)
    mask = ellipse_masks(3, 16, 16, generator=g)
    view = corrupt(image, mask, noise_std=0.0)
    assert torch.equal(view[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert torch.equal(view[mask == 1], image[mask == 1])


def test_corrupt_noise_has_its_std_and_is_clipped(device: torch.device) -> None:
    g = torch.Generator().manual_seed(0)
    image = torch.full((1, 1, 64, 64), 0.5, device=device)
    view = corrupt(image, torch.ones_like(image), noise_std=0.1, generator=g)
    assert view.device.type == device.type
    assert abs(float(view.std()) - 0.1) < 0.01 and abs(float(view.mean()) - 0.5) < 0.01
    loud = corrupt(image, torch.zeros_like(image), noise_std=1.0, generator=g)
    assert float(loud.min()) == 0.0 and float(loud.max()) == 1.0  # clipped, not rescaled
    assert 0.3 < float((loud == 0).float().mean()) < 0.7  # half the noise of a blackened pixel is negative
    with pytest.raises(ValueError, match="noise_std"):
        corrupt(image, image, noise_std=-0.1)
    with pytest.raises(ValueError, match="does not broadcast"):
        corrupt(image, torch.ones(1, 1, 8, 8, device=device), noise_std=0.0)


def test_single_ellipses_on_a_non_square_grid_have_the_drawn_sizes_shapes_angles_and_places() -> None:
    """On a 120×60 grid (Section 5.1: random size, shape, position; here also rotation): semi-axes within
    [min_axis, max_axis]·min(H, W) and of unequal lengths, principal axes at every angle, centres spread over the
    whole height and width."""
    h, w, lo, hi = 120, 60, 0.1, 0.25
    m = ellipse_masks(300, h, w, generator=torch.Generator().manual_seed(4), min_ellipses=1, max_ellipses=1,
                      min_axis=lo, max_axis=hi)[:, 0].numpy() > 0  # fmt: skip
    ratios, angles, rows_c, cols_c = [], [], [], []
    for mask in m:
        rows, cols = np.nonzero(mask)
        rows_c.append(rows.mean())
        cols_c.append(cols.mean())
        if rows.min() == 0 or cols.min() == 0 or rows.max() == h - 1 or cols.max() == w - 1:
            continue  # cut at the border
        eig, vec = np.linalg.eigh(np.cov(np.stack([rows, cols]).astype(float)))
        b, a = 2 * np.sqrt(eig)  # minor and major semi-axes of a filled ellipse
        assert lo * w - 1.0 <= b <= a <= hi * w + 1.0
        ratios.append(a / b)
        if a / b > 1.3:  # the major axis direction, in [0°, 180°)
            angles.append(np.degrees(np.arctan2(vec[0, 1], vec[1, 1])) % 180)
    ratios = np.array(ratios)
    assert len(ratios) >= 100 and ratios.max() > 1.6 and (ratios > 1.3).mean() > 0.3
    quarter = np.bincount((np.array(angles) // 45).astype(int), minlength=4) / len(angles)
    assert quarter.min() > 0.1, quarter
    assert 0.35 < np.mean(np.array(rows_c) < h / 2) < 0.65 and 0.35 < np.mean(np.array(cols_c) < w / 2) < 0.65


def test_number_of_ellipses_is_uniform_between_min_and_max() -> None:
    """Tiny ellipses rarely touch, so a mask's connected components count its ellipses: 1, 2, 3 and 4 each about
    a quarter of the masks, never more than max_ellipses."""
    counts = []
    for seed in range(4):
        m = ellipse_masks(100, 80, 80, generator=torch.Generator().manual_seed(seed), min_ellipses=1, max_ellipses=4,
                          min_axis=0.025, max_axis=0.025)  # fmt: skip
        counts += [ndimage.label(mask.numpy() > 0)[1] for mask in m[:, 0]]
    share = np.bincount(counts, minlength=6) / len(counts)
    assert share[0] == 0 and share[5:].sum() == 0
    assert all(0.15 < share[k] < 0.35 for k in (1, 2, 3, 4)), share
    two = ellipse_masks(50, 80, 80, generator=torch.Generator().manual_seed(9), min_ellipses=2, max_ellipses=2,
                        min_axis=0.025, max_axis=0.025)  # fmt: skip
    assert max(ndimage.label(mask.numpy() > 0)[1] for mask in two[:, 0]) == 2
