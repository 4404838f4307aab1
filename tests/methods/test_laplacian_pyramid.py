"""Burt–Adelson multi-band blending against an independent NumPy/SciPy pyramid."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as nd
import torch
from omegaconf import OmegaConf
from skimage import data as skdata

from fusion.methods import (
    LaplacianPyramidBlend,
    get_method,
    laplacian_pyramid_blend,
    laplacian_pyramid_solve,
    paste_blend,
)
from fusion.methods.laplacian_pyramid import DEFAULT_LEVELS, max_levels

CONF = Path(__file__).resolve().parents[2] / "conf" / "method" / "laplacian_pyramid.yaml"
KERNEL = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16


def _smooth(a):
    """The binomial filter along both image axes, SciPy's half-sample mirror."""
    return nd.correlate1d(nd.correlate1d(a, KERNEL, axis=0, mode="reflect"), KERNEL, axis=1, mode="reflect")


def _np_reduce(a):
    return _smooth(a)[::2, ::2]


def _np_expand(a, shape):
    up = np.zeros(shape)
    hits = np.zeros(shape)
    up[::2, ::2] = a
    hits[::2, ::2] = 1.0
    return _smooth(up) / _smooth(hits)


def _np_blend(fg, bg, mask, levels):
    """One (H, W) channel: build the three pyramids with lists, blend, collapse from the top."""
    ga, gb, gm = [fg], [bg], [mask]
    for _ in range(levels - 1):
        ga.append(_np_reduce(ga[-1]))
        gb.append(_np_reduce(gb[-1]))
        gm.append(_np_reduce(gm[-1]))
    out = gm[-1] * ga[-1] + (1 - gm[-1]) * gb[-1]
    for k in range(levels - 2, -1, -1):
        la = ga[k] - _np_expand(ga[k + 1], ga[k].shape)
        lb = gb[k] - _np_expand(gb[k + 1], gb[k].shape)
        out = gm[k] * la + (1 - gm[k]) * lb + _np_expand(out, ga[k].shape)
    return out


def _reference(fg, bg, mask, levels):
    out = np.empty(fg.shape)
    for n in range(fg.shape[0]):
        for c in range(fg.shape[1]):
            out[n, c] = _np_blend(fg[n, c].numpy(), bg[n, c].numpy(), mask[n, 0].numpy(), levels)
    return out


def _photos(size=(37, 50), dtype=torch.float64):
    h, w = size
    crops = [skdata.astronaut()[100 : 100 + h, 150 : 150 + w], skdata.coffee()[50 : 50 + h, 200 : 200 + w]]
    fg = torch.from_numpy(np.stack(crops)).permute(0, 3, 1, 2).to(dtype) / 255
    bgs = [skdata.chelsea()[60 : 60 + h, 100 : 100 + w], skdata.astronaut()[300 : 300 + h, 50 : 50 + w]]
    bg = torch.from_numpy(np.stack(bgs)).permute(0, 3, 1, 2).to(dtype) / 255
    mask = torch.zeros(2, 1, h, w, dtype=dtype)
    mask[0, :, 5:30, 8:33] = 1
    mask[1, :, 12:, : w // 2] = 1  # runs to the bottom and left borders
    return fg, bg, mask


@pytest.mark.parametrize("size, levels", [((37, 50), 4), ((37, 50), 7), ((16, 16), 5), ((5, 23), 3), ((1, 9), 5)])
def test_matches_the_numpy_reference(gen, size, levels):
    fg = torch.rand(2, 3, *size, generator=gen, dtype=torch.float64)
    bg = torch.rand(2, 3, *size, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, 1, *size, generator=gen, dtype=torch.float64)
    mask[:, :, 0, 0], mask[:, :, -1, -1] = 1.0, 0.0
    err = np.abs(laplacian_pyramid_blend(fg, bg, mask, levels=levels).numpy() - _reference(fg, bg, mask, levels)).max()
    assert err < 1e-12, err


def test_matches_the_numpy_reference_on_photographs():
    fg, bg, mask = _photos()
    err = np.abs(laplacian_pyramid_blend(fg, bg, mask).numpy() - _reference(fg, bg, mask, DEFAULT_LEVELS)).max()
    assert err < 1e-12, err


def test_one_level_is_paste(gen):
    fg, bg, mask = _photos()
    soft = mask * 0.7 + 0.1
    assert torch.equal(laplacian_pyramid_blend(fg, bg, soft, levels=1), paste_blend(fg, bg, soft))


@pytest.mark.parametrize("levels", [1, 3, 6, 12])
def test_identical_images_come_back(levels):
    fg, _, mask = _photos()
    torch.testing.assert_close(laplacian_pyramid_blend(fg, fg, mask, levels=levels), fg, rtol=0, atol=1e-13)


def test_seam_is_smoother_than_paste():
    fg, bg, mask = _photos()
    fg = fg * 0 + 0.8  # a flat object, to see only the transition
    bg = bg * 0 + 0.2
    jump_paste = (paste_blend(fg, bg, mask).diff(dim=-1)).abs().amax()
    jump_lp = (laplacian_pyramid_blend(fg, bg, mask).diff(dim=-1)).abs().amax()
    assert float(jump_lp) < 0.5 * float(jump_paste)


def test_batch_equals_single_calls():
    fg, bg, mask = _photos()
    batch = laplacian_pyramid_blend(fg, bg, mask)
    for i in range(2):
        single = laplacian_pyramid_blend(fg[i : i + 1], bg[i : i + 1], mask[i : i + 1])
        torch.testing.assert_close(batch[i : i + 1], single, rtol=0, atol=1e-14)
    assert float((batch[0] - batch[1]).abs().max()) > 0.1


def test_device_and_dtype(device, dtype):
    fg, bg, mask = (x.to(device=device, dtype=dtype) for x in _photos())
    res = laplacian_pyramid_solve(fg, bg, mask, levels=4)
    assert res.image.device.type == device.type and res.image.dtype == dtype
    assert [tuple(b.shape[-2:]) for b in res.bands] == [(37, 50), (19, 25), (10, 13), (5, 7)]
    ref = _reference(*(x.double().cpu() for x in (fg, bg, mask)), 4)
    assert np.abs(res.image.double().cpu().numpy() - ref).max() < (1e-5 if dtype == torch.float32 else 1e-12)


def test_gradcheck_fg_bg_mask(gen):
    fg = torch.rand(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    bg = torch.rand(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 1, 5, 6, generator=gen, dtype=torch.float64).clamp(0.05, 0.95)
    mask[:, :, 0, 0], mask[:, :, 1, 1] = 0.9, 0.1
    mask.requires_grad_()
    assert torch.autograd.gradcheck(lambda f, b, m: laplacian_pyramid_blend(f, b, m, levels=3), (fg, bg, mask))


def test_solve_module_and_cli_agree():
    fg, bg, mask = _photos()
    res = laplacian_pyramid_solve(fg, bg, mask, levels=3)
    assert res.solver is None and len(res.bands) == len(res.masks) == 3
    assert torch.equal(LaplacianPyramidBlend(levels=3)(fg, bg, mask), res.image)
    assert torch.equal(get_method("laplacian_pyramid")(fg, bg, mask, levels=3).result, res.image)


def test_yaml_mirrors_the_adapter():
    conf = OmegaConf.to_container(OmegaConf.load(CONF))
    params = inspect.signature(get_method("laplacian_pyramid")).parameters
    assert conf.pop("name") == "laplacian_pyramid"
    assert {k: params[k].default for k in conf} == conf and set(conf) == {"levels"}


def test_levels_beyond_the_image_change_nothing():
    fg, bg, mask = _photos()
    assert max_levels(37, 50) == 7 and max_levels(5, 23) == 6
    deepest = laplacian_pyramid_solve(fg, bg, mask, levels=7)
    assert [tuple(b.shape[-2:]) for b in deepest.bands][-1] == (1, 1)
    assert np.abs(_reference(fg, bg, mask, 7) - _reference(fg, bg, mask, 10)).max() < 1e-13  # the reference agrees
    assert torch.equal(laplacian_pyramid_blend(fg, bg, mask, levels=30), deepest.image)


@pytest.mark.parametrize("levels", [0, -2, 2.0, True, None, "abc"])
def test_bad_levels(levels):
    fg, bg, mask = _photos()
    with pytest.raises(ValueError, match="levels must be an integer >= 1"):
        laplacian_pyramid_blend(fg, bg, mask, levels=levels)
