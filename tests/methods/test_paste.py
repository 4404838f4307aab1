"""Cut-and-paste: the mask as an alpha, checked pixel by pixel against a NumPy loop."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fusion.methods import PasteBlend, get_method, paste_blend, paste_solve

CONF = Path(__file__).resolve().parents[2] / "conf" / "method" / "paste.yaml"


def _inputs(gen, batch=3, size=(9, 11), dtype=torch.float64, soft=True):
    fg = torch.rand(batch, 3, *size, generator=gen, dtype=dtype)
    bg = torch.rand(batch, 3, *size, generator=gen, dtype=dtype)
    mask = torch.rand(batch, 1, *size, generator=gen, dtype=dtype)
    if not soft:
        mask = (mask > 0.5).to(dtype)
    return fg, bg, mask


def _loop_reference(fg, bg, mask, hard=False):
    f, b, m = (x.detach().numpy() for x in (fg, bg, mask))
    out = np.empty_like(f)
    for n in range(f.shape[0]):
        for y in range(f.shape[2]):
            for x in range(f.shape[3]):
                a = m[n, 0, y, x]
                if hard:
                    a = 1.0 if a > 0.5 else 0.0
                for c in range(f.shape[1]):
                    out[n, c, y, x] = a * f[n, c, y, x] + (1.0 - a) * b[n, c, y, x]
    return out


@pytest.mark.parametrize("hard", [False, True])
def test_matches_a_pixel_loop(gen, hard):
    fg, bg, mask = _inputs(gen)
    out = paste_blend(fg, bg, mask, hard=hard).numpy()
    assert np.abs(out - _loop_reference(fg, bg, mask, hard)).max() < 1e-15


def test_binary_mask_copies_fg_inside_and_keeps_bg_outside(gen):
    fg, bg, mask = _inputs(gen, soft=False)
    out = paste_blend(fg, bg, mask)
    inside = mask.expand_as(fg) > 0.5
    assert torch.equal(out[inside], fg[inside]) and torch.equal(out[~inside], bg[~inside])


def test_batch_equals_single_calls_and_broadcast(gen):
    fg, bg, mask = _inputs(gen)
    batch = paste_blend(fg, bg, mask)
    for i in range(3):
        assert torch.equal(batch[i : i + 1], paste_blend(fg[i : i + 1], bg[i : i + 1], mask[i : i + 1]))
    one_bg = paste_blend(fg, bg[:1], mask)
    assert torch.equal(one_bg, paste_blend(fg, bg[:1].expand_as(fg), mask))


def test_device_and_dtype(device, dtype, gen):
    fg, bg, mask = (x.to(device) for x in _inputs(gen, dtype=dtype))
    out = paste_blend(fg, bg, mask)
    assert out.device.type == device.type and out.dtype == dtype and out.shape == fg.shape


def test_gradcheck_fg_bg_and_soft_mask(gen):
    fg, bg, mask = (x.clamp(0.05, 0.95).requires_grad_() for x in _inputs(gen, batch=2, size=(3, 4)))
    assert torch.autograd.gradcheck(lambda f, b, m: paste_blend(f, b, m), (fg, bg, mask))


def test_solve_module_and_cli_agree(gen):
    fg, bg, mask = _inputs(gen)
    res = paste_solve(fg, bg, mask, hard=True)
    assert res.solver is None and bool(res.converged.all())
    assert torch.equal(PasteBlend(hard=True)(fg, bg, mask), res.image)
    assert torch.equal(get_method("paste")(fg, bg, mask, hard=True).result, res.image)
    assert "hard=True" in repr(PasteBlend(hard=True))


def test_yaml_mirrors_the_adapter():
    conf = OmegaConf.to_container(OmegaConf.load(CONF))
    params = inspect.signature(get_method("paste")).parameters
    assert conf.pop("name") == "paste"
    assert {k: params[k].default for k in conf} == conf and set(conf) == {"hard"}


@pytest.mark.parametrize(
    "kwargs, match",
    [({"hard": "yes"}, "hard must be true or false"), ({"mask_shape": (1, 2, 9, 11)}, "mask must have 1 channel")],
)
def test_bad_inputs(gen, kwargs, match):
    fg, bg, mask = _inputs(gen, batch=1)
    if "mask_shape" in kwargs:
        mask = torch.rand(kwargs.pop("mask_shape"), dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        paste_blend(fg, bg, mask, **kwargs)
