"""Warps of the FusionVAE items: pasting an RGBA occluder and the random similarity map, against closed forms."""

from __future__ import annotations

import pytest
import torch

from fusion.data.geometry import paste_occluder, random_affine

pytestmark = pytest.mark.usefixtures("single_thread")


def test_paste_occluder_composites_alpha() -> None:
    canvas = torch.zeros(3, 16, 16)
    rgba = torch.ones(4, 4, 6)
    rgba[3, :, 3:] = 0.5  # right half semi-transparent
    out = paste_occluder(canvas, rgba, position=(7.5, 7.5))
    assert torch.allclose(out[:, 6:10, 5:8], torch.ones(3, 4, 3))
    assert torch.allclose(out[:, 6:10, 8:11], torch.full((3, 4, 3), 0.5))
    assert float(out[:, :5].abs().sum()) == 0 and float(out[:, :, 12:].abs().sum()) == 0
    mirrored = paste_occluder(canvas, rgba, position=(7.5, 7.5), flip=True)
    assert torch.allclose(mirrored, out.flip(-1), atol=1e-6)
    turned = paste_occluder(canvas, rgba, position=(7.5, 7.5), angle=90.0)
    rows, cols = torch.nonzero(turned[0] > 1e-4).unbind(1)
    assert (int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())) == (5, 10, 6, 9)  # 6 tall, 4 wide
    halves = sorted([float(turned[0, 5:8, 6:10].mean()), float(turned[0, 8:11, 6:10].mean())])
    assert halves == pytest.approx([0.5, 1.0], abs=1e-4)


def _ramp(size: int) -> torch.Tensor:
    """``(2, S, S)``: channel 0 is the column index x, channel 1 the row index y (bilinear warps keep them exact)."""
    y, x = torch.meshgrid(
        torch.arange(size, dtype=torch.float32), torch.arange(size, dtype=torch.float32), indexing="ij"
    )
    return torch.stack([x, y])


def test_random_affine_against_closed_forms() -> None:
    s, c = 15, 7.0
    ramp = _ramp(s) / 100  # in [0, 0.14]: clamping to [0, 1] leaves it alone
    identity = random_affine(ramp, torch.Generator().manual_seed(0), rotation=0.0, scale=(1.0, 1.0), shift=0.0)
    torch.testing.assert_close(identity, ramp, atol=1e-6, rtol=0)
    # A scaling by a about the centre samples the source at c + (p - c) / a.
    zoom = random_affine(ramp, torch.Generator().manual_seed(0), rotation=0.0, scale=(2.0, 2.0), shift=0.0)
    torch.testing.assert_close(zoom, (c + (_ramp(s) - c) / 2) / 100, atol=1e-6, rtol=0)
    # A shift moves the ramp by one constant per axis, within ±shift·S, and fills the uncovered border with 0.
    for seed in range(4):
        moved = random_affine(ramp, torch.Generator().manual_seed(seed), rotation=0.0, scale=(1.0, 1.0), shift=0.2)
        inner = moved[:, 4:-4, 4:-4] - ramp[:, 4:-4, 4:-4]
        offset = inner.flatten(1).mean(1)
        torch.testing.assert_close(inner, offset[:, None, None].expand_as(inner), atol=1e-6, rtol=0)
        assert bool((offset.abs() * 100 <= 0.2 * s + 1e-4).all()) and float(offset.abs().sum()) > 0
    # A rotation keeps the distance to the centre (sampled where the source covers the output).
    for seed in range(4):
        turned = random_affine(ramp, torch.Generator().manual_seed(seed), rotation=30.0, scale=(1.0, 1.0), shift=0.0)
        radius = ((_ramp(s) - c) ** 2).sum(0).sqrt()
        inside = radius <= 6
        torch.testing.assert_close(((turned * 100 - c) ** 2).sum(0).sqrt()[inside], radius[inside], atol=1e-3, rtol=0)
    # The same generator state gives the same map; a mirror with probability 1 flips x.
    draw = dict(rotation=10.0, scale=(0.9, 1.1), shift=0.1)
    a = random_affine(ramp, torch.Generator().manual_seed(5), **draw)
    assert torch.equal(a, random_affine(ramp, torch.Generator().manual_seed(5), **draw))
    flipped = random_affine(
        ramp, torch.Generator().manual_seed(0), rotation=0.0, scale=(1.0, 1.0), shift=0.0, flip_p=1.0
    )
    torch.testing.assert_close(flipped[0], ramp[0].flip(-1), atol=1e-6, rtol=0)
