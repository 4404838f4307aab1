"""Modified Poisson blending against a SciPy sparse solve of the same least-squares problem."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import scipy.ndimage as nd
import scipy.sparse as sp
import scipy.sparse.linalg as spl
import torch
from omegaconf import OmegaConf
from skimage import data as skdata

from fusion.methods import MPBBlend, get_method, mpb_blend, mpb_solve, poisson_blend
from fusion.methods.mpb import DEFAULT_EPS

CONF = Path(__file__).resolve().parents[2] / "conf" / "method" / "mpb.yaml"


def _forward_difference(n):
    """``n × n`` sparse forward difference with a zero last row (no edge leaves the image)."""
    main = -np.ones(n)
    main[-1] = 0.0
    return sp.diags([main, np.ones(n - 1)], [0, 1], shape=(n, n), format="csr")


def _sparse_reference(fg, bg, mask, eps):
    """Per sample and channel: minimise ‖G u − v‖² + ε‖u − bg‖² through its normal equations, by sparse LU.

    G stacks the row and column forward differences of the row-major flattened image; v takes fg's difference on
    an edge whose first pixel has mask m and bg's with weight 1 − m."""
    b_, c_, h, w = fg.shape
    gy = sp.kron(_forward_difference(h), sp.identity(w))
    gx = sp.kron(sp.identity(h), _forward_difference(w))
    g = sp.vstack([gy, gx]).tocsr()
    normal = (g.T @ g + eps * sp.identity(h * w)).tocsc()
    out = np.empty(fg.shape)
    for n in range(b_):
        m = np.tile(mask[n, 0].numpy().reshape(-1), 2)
        for c in range(c_):
            f, b = fg[n, c].numpy().reshape(-1), bg[n, c].numpy().reshape(-1)
            v = m * (g @ f) + (1 - m) * (g @ b)
            out[n, c] = spl.spsolve(normal, g.T @ v + eps * b).reshape(h, w)
    return out


def _photos(size=(30, 41), dtype=torch.float64):
    h, w = size
    fg = torch.from_numpy(
        np.stack([skdata.astronaut()[150 : 150 + h, 180 : 180 + w], skdata.coffee()[120 : 120 + h, 240 : 240 + w]])
    )
    bg = torch.from_numpy(
        np.stack([skdata.chelsea()[80 : 80 + h, 60 : 60 + w], skdata.astronaut()[320 : 320 + h, 90 : 90 + w]])
    )
    fg, bg = (x.permute(0, 3, 1, 2).to(dtype) / 255 for x in (fg, bg))
    yy, xx = torch.meshgrid(torch.arange(h, dtype=dtype), torch.arange(w, dtype=dtype), indexing="ij")
    ellipse = ((((yy - h / 2) / (0.35 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2) < 1).to(dtype)
    mask = torch.stack([ellipse, torch.zeros_like(ellipse)])[:, None]
    mask[1, :, 8:, 20:] = 1  # the second touches the bottom and right borders
    return fg, bg, mask


@pytest.mark.parametrize("eps", [1e-3, 0.05, 1.0])
def test_matches_sparse_solve_on_random_inputs(gen, eps):
    fg = torch.rand(2, 2, 13, 17, generator=gen, dtype=torch.float64)
    bg = torch.rand(2, 2, 13, 17, generator=gen, dtype=torch.float64)
    mask = torch.rand(2, 1, 13, 17, generator=gen, dtype=torch.float64)  # soft, blends the two fields
    mask[:, :, 0, 0], mask[:, :, -1, -1] = 1.0, 0.0
    err = np.abs(mpb_blend(fg, bg, mask, eps=eps).numpy() - _sparse_reference(fg, bg, mask, eps)).max()
    assert err < 1e-10, err


def test_matches_sparse_solve_on_photographs():
    fg, bg, mask = _photos()
    err = np.abs(mpb_blend(fg, bg, mask).numpy() - _sparse_reference(fg, bg, mask, DEFAULT_EPS)).max()
    assert err < 1e-10, err


def test_large_eps_gives_bg_and_mean_is_kept():
    fg, bg, mask = _photos()
    assert float((mpb_blend(fg, bg, mask, eps=1e8) - bg).abs().max()) < 1e-6
    out = mpb_blend(fg, bg, mask, eps=1e-2)
    torch.testing.assert_close(out.mean((-2, -1)), bg.mean((-2, -1)), rtol=0, atol=1e-12)


def _seam_jump(u, mask):
    """Mean |u_p − u_q| over the horizontal and vertical pixel pairs that straddle the mask's boundary."""
    inside = mask > 0.5
    cross_x = inside[..., :, 1:] != inside[..., :, :-1]
    cross_y = inside[..., 1:, :] != inside[..., :-1, :]
    jumps = torch.cat(
        [
            u.diff(dim=-1).abs()[cross_x.expand(-1, u.shape[1], -1, -1)],
            u.diff(dim=-2).abs()[cross_y.expand(-1, u.shape[1], -1, -1)],
        ]
    )
    return float(jumps.mean())


def test_seam_is_smaller_than_paste_and_far_background_is_kept():
    fg, bg, mask = _photos()
    fg = (fg + 0.35).clamp(0, 1)  # a strong colour mismatch
    pasted = mask * fg + (1 - mask) * bg
    out = mpb_blend(fg, bg, mask, eps=0.05)
    assert _seam_jump(out, mask) < 0.5 * _seam_jump(pasted, mask)
    # outside, the change of bg decays with the distance r to the object (like exp(-sqrt(eps) r))
    r = torch.from_numpy(nd.distance_transform_edt(mask[0, 0].numpy() < 0.5))
    change = (out[0] - bg[0]).abs().mean(0)
    near, far = float(change[r == 1].mean()), float(change[r >= 6].mean())
    assert far < 0.25 * near, (near, far)


def test_constant_difference_is_absorbed_like_poisson():
    fg, bg, mask = _photos()
    shifted = bg + 0.3
    out = mpb_blend(shifted, bg, mask)  # identical gradients: the whole field is bg's, and u = bg
    torch.testing.assert_close(out, bg, rtol=0, atol=1e-12)
    ref = poisson_blend(shifted, bg, mask, tol=1e-12)
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-9)


def test_batch_equals_single_calls():
    fg, bg, mask = _photos()
    batch = mpb_blend(fg, bg, mask, eps=0.01)
    for i in range(2):
        single = mpb_blend(fg[i : i + 1], bg[i : i + 1], mask[i : i + 1], eps=0.01)
        torch.testing.assert_close(batch[i : i + 1], single, rtol=0, atol=1e-13)
    assert float((batch[0] - batch[1]).abs().max()) > 0.1


def test_device_and_dtype(device, dtype):
    fg, bg, mask = (x.to(device=device, dtype=dtype) for x in _photos())
    res = mpb_solve(fg, bg, mask)
    assert res.image.device.type == device.type and res.image.dtype == dtype and res.field.shape == (2, 3, 2, 30, 41)
    ref = _sparse_reference(*(x.double().cpu() for x in (fg, bg, mask)), DEFAULT_EPS)
    assert np.abs(res.image.double().cpu().numpy() - ref).max() < (1e-4 if dtype == torch.float32 else 1e-10)


def test_gradcheck_fg_bg_mask(gen):
    fg = torch.rand(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    bg = torch.rand(2, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 1, 5, 6, generator=gen, dtype=torch.float64).clamp(0.05, 0.95)
    mask[:, :, 0, 0], mask[:, :, 1, 1] = 0.9, 0.1
    mask.requires_grad_()
    assert torch.autograd.gradcheck(lambda f, b, m: mpb_blend(f, b, m, eps=0.1), (fg, bg, mask))


def test_solve_module_and_cli_agree():
    fg, bg, mask = _photos()
    res = mpb_solve(fg, bg, mask, eps=0.02)
    assert res.solver is None and bool(res.converged.all())
    assert torch.equal(MPBBlend(eps=0.02)(fg, bg, mask), res.image)
    assert torch.equal(get_method("mpb")(fg, bg, mask, eps=0.02).result, res.image)


def test_yaml_mirrors_the_adapter():
    conf = OmegaConf.to_container(OmegaConf.load(CONF))
    params = inspect.signature(get_method("mpb")).parameters
    assert conf.pop("name") == "mpb"
    assert {k: params[k].default for k in conf} == conf and set(conf) == {"eps"}


@pytest.mark.parametrize("eps", [0.0, -1.0, "abc", True, float("nan")])
def test_bad_eps(eps):
    fg, bg, mask = _photos()
    with pytest.raises(ValueError, match="eps must be a finite number > 0"):
        mpb_blend(fg, bg, mask, eps=eps)
