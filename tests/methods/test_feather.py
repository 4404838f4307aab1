"""Feathered alpha blending against SciPy's exact Euclidean distance transform."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as nd
import torch
from omegaconf import OmegaConf

from fusion.methods import FeatherBlend, feather_blend, feather_solve, get_method, paste_blend
from fusion.ops.distance import distance_to_outside

CONF = Path(__file__).resolve().parents[2] / "conf" / "method" / "feather.yaml"


def _blobs(gen, batch=3, size=(23, 29), dtype=torch.float64):
    """Random smooth blobs (thresholded smoothed noise), one touching the image border, plus images."""
    masks = []
    for _ in range(batch):
        noise = nd.gaussian_filter(torch.rand(size, generator=gen, dtype=torch.float64).numpy(), 3.0)
        m = noise > np.quantile(noise, 0.6)
        masks.append(torch.from_numpy(m.astype(np.float64)))
    mask = torch.stack(masks)[:, None].to(dtype)
    fg = torch.rand(batch, 3, *size, generator=gen, dtype=dtype)
    bg = torch.rand(batch, 3, *size, generator=gen, dtype=dtype)
    return fg, bg, mask


def _scipy_reference(fg, bg, mask, width):
    out = np.empty(fg.shape)
    for n in range(fg.shape[0]):
        d = nd.distance_transform_edt(mask[n, 0].numpy() > 0.5)
        alpha = np.clip(d / (width + 1), 0, 1)
        out[n] = alpha * fg[n].numpy() + (1 - alpha) * bg[n].numpy()
    return out


@pytest.mark.parametrize("width", [1.0, 2.5, 6.0])
def test_matches_scipy_distance_transform(gen, width):
    fg, bg, mask = _blobs(gen)
    assert bool((mask[:, 0, 0, :] > 0).any()) or bool((mask[:, 0, :, 0] > 0).any())  # some blob meets the border
    err = np.abs(feather_blend(fg, bg, mask, width=width).numpy() - _scipy_reference(fg, bg, mask, width)).max()
    assert err < 1e-12, err


def test_distance_helper_is_exact_up_to_its_radius(gen):
    _, _, mask = _blobs(gen, batch=2)
    d = distance_to_outside(mask, 7.5).numpy()
    for n in range(2):
        ref = np.minimum(nd.distance_transform_edt(mask[n, 0].numpy() > 0), 7.5)
        assert np.abs(d[n, 0] - ref).max() < 1e-12


def test_ramp_across_a_straight_edge():
    mask = torch.zeros(1, 1, 5, 20, dtype=torch.float64)
    mask[..., 10:] = 1
    alpha = feather_solve(torch.ones(1, 1, 5, 20).double(), torch.zeros(1, 1, 5, 20).double(), mask, width=4).alpha
    row = alpha[0, 0, 2]
    assert torch.equal(row[:10], torch.zeros(10, dtype=torch.float64))  # 0 outside
    torch.testing.assert_close(row[10:15], torch.arange(1, 6, dtype=torch.float64) / 5)  # ramp of width 4
    assert torch.equal(row[14:], torch.ones(6, dtype=torch.float64))  # 1 deep inside


def test_width_zero_is_paste_also_for_a_soft_mask(gen):
    fg, bg, _ = _blobs(gen)
    soft = torch.rand(3, 1, 23, 29, generator=gen, dtype=torch.float64)
    assert torch.equal(feather_blend(fg, bg, soft, width=0), paste_blend(fg, bg, soft))


def test_batch_equals_single_calls(gen):
    fg, bg, mask = _blobs(gen)
    batch = feather_blend(fg, bg, mask, width=3)
    for i in range(3):
        single = feather_blend(fg[i : i + 1], bg[i : i + 1], mask[i : i + 1], width=3)
        assert torch.equal(batch[i : i + 1], single)
    assert float((batch[0] - batch[1]).abs().max()) > 0.1


def test_device_and_dtype(device, dtype, gen):
    fg, bg, mask = (x.to(device=device, dtype=dtype) for x in _blobs(gen, batch=2))
    res = feather_solve(fg, bg, mask, width=2.0)
    assert res.image.device.type == device.type and res.image.dtype == dtype and res.alpha.dtype == dtype
    ref = _scipy_reference(*(x.double().cpu() for x in (fg, bg, mask)), 2.0)
    assert np.abs(res.image.double().cpu().numpy() - ref).max() < (1e-6 if dtype == torch.float32 else 1e-12)


def test_gradcheck(gen):
    fg, bg, mask = _blobs(gen, batch=2, size=(6, 7))
    fg.requires_grad_(), bg.requires_grad_()
    assert torch.autograd.gradcheck(lambda f, b: feather_blend(f, b, mask, width=2), (fg, bg))
    soft = torch.rand(2, 1, 6, 7, generator=gen, dtype=torch.float64).clamp(0.05, 0.95).requires_grad_()
    assert torch.autograd.gradcheck(lambda m: feather_blend(fg.detach(), bg.detach(), m, width=0), (soft,))


def test_solve_module_and_cli_agree(gen):
    fg, bg, mask = _blobs(gen)
    res = feather_solve(fg, bg, mask, width=3)
    assert res.solver is None and torch.equal(FeatherBlend(width=3)(fg, bg, mask), res.image)
    out = get_method("feather")(fg, bg, mask, width=3)
    assert torch.equal(out.result, res.image) and out.images["alpha"].shape == fg.shape


def test_yaml_mirrors_the_adapter():
    conf = OmegaConf.to_container(OmegaConf.load(CONF))
    params = inspect.signature(get_method("feather")).parameters
    assert conf.pop("name") == "feather"
    assert {k: params[k].default for k in conf} == conf and set(conf) == {"width"}


@pytest.mark.parametrize("width", [-1.0, "abc", True, float("inf")])
def test_bad_width(gen, width):
    fg, bg, mask = _blobs(gen, batch=1)
    with pytest.raises(ValueError, match="width must be a finite number >= 0"):
        feather_blend(fg, bg, mask, width=width)
