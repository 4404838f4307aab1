"""Multi-spline blending against a dense least-squares solve (numpy.linalg.lstsq) of the same constraints."""

import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from skimage import data as skdata

from fusion.methods import MSBBlend, get_method, msb_blend, msb_solve, poisson_blend
from fusion.methods.msb import MEMBRANE

CONF = Path(__file__).resolve().parents[2] / "conf" / "method" / "msb.yaml"


def _hat(z):
    return np.maximum(0.0, 1.0 - np.abs(z))


def _basis(h, w, s):
    """``(H·W, n)`` matrix of tensor-product hat functions centred on the nodes ``(I s, J s)``."""
    ny, nx = (h - 1) // s + 2, (w - 1) // s + 2
    ys, xs = np.arange(h), np.arange(w)
    by = _hat((ys[:, None] - s * np.arange(ny)[None, :]) / s)  # (h, ny)
    bx = _hat((xs[:, None] - s * np.arange(nx)[None, :]) / s)  # (w, nx)
    return np.einsum("yi,xj->yxij", by, bx).reshape(h * w, ny * nx), ny, nx


def _lstsq_reference(fg, bg, mask, s):
    """Rows: (o_p − o_q) for neighbours inside Ω, (o_p − d_q) across the seam, √MEMBRANE (c_j − c_k) between
    neighbouring nodes that both touch Ω, c_k for nodes that do not; solved by numpy.linalg.lstsq."""
    _, _, h, w = fg.shape
    basis, ny, nx = _basis(h, w, s)
    out = np.empty(fg.shape)
    for n in range(fg.shape[0]):
        omega = mask[n, 0].numpy() > 0.5
        active = basis[omega.reshape(-1)].sum(0) > 0
        rows, targets = [], []  # targets: one column per channel
        d = (bg[n] - fg[n]).numpy()
        for y in range(h):
            for x in range(w):
                if not omega[y, x]:
                    continue
                for qy, qx in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                    if not (0 <= qy < h and 0 <= qx < w):
                        continue
                    if omega[qy, qx]:
                        if (qy, qx) > (y, x):  # each pair inside Ω once
                            rows.append(basis[y * w + x] - basis[qy * w + qx])
                            targets.append(np.zeros(fg.shape[1]))
                    else:
                        rows.append(basis[y * w + x])
                        targets.append(d[:, qy, qx])
        for k in range(ny * nx):
            i, j = divmod(k, nx)
            if not active[k]:
                rows.append(np.eye(ny * nx)[k])
                targets.append(np.zeros(fg.shape[1]))
                continue
            for k2 in ((i + 1) * nx + j if i + 1 < ny else None, k + 1 if j + 1 < nx else None):
                if k2 is not None and active[k2]:
                    rows.append(np.sqrt(MEMBRANE) * (np.eye(ny * nx)[k] - np.eye(ny * nx)[k2]))
                    targets.append(np.zeros(fg.shape[1]))
        c = np.linalg.lstsq(np.array(rows), np.array(targets), rcond=None)[0]  # (n, C)
        offset = (basis @ c).T.reshape(-1, h, w)
        out[n] = np.where(omega, fg[n].numpy() + offset, bg[n].numpy())
    return out


def _photos(size=(26, 34), dtype=torch.float64):
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


@pytest.mark.parametrize("size, spacing", [((12, 15), 4), ((11, 13), 3), ((8, 9), 1), ((9, 10), 16)])
def test_matches_dense_least_squares_on_random_inputs(gen, size, spacing):
    fg = torch.rand(2, 2, *size, generator=gen, dtype=torch.float64)
    bg = torch.rand(2, 2, *size, generator=gen, dtype=torch.float64)
    mask = (torch.rand(2, 1, *size, generator=gen, dtype=torch.float64) > 0.6).double()
    mask[:, :, 0, 0], mask[:, :, -1, -1] = 1.0, 0.0
    err = np.abs(msb_blend(fg, bg, mask, spacing=spacing).numpy() - _lstsq_reference(fg, bg, mask, spacing)).max()
    assert err < 1e-9, err


def test_matches_dense_least_squares_on_photographs():
    fg, bg, mask = _photos()
    err = np.abs(msb_blend(fg, bg, mask, spacing=5).numpy() - _lstsq_reference(fg, bg, mask, 5)).max()
    assert err < 1e-9, err


@pytest.mark.parametrize("spacing", [1, 4, 16])
def test_a_constant_offset_is_recovered_exactly(spacing):
    fg, bg, mask = _photos()
    res = msb_solve(bg - torch.tensor([0.2, -0.1, 0.05], dtype=torch.float64)[:, None, None], bg, mask, spacing=spacing)
    torch.testing.assert_close(res.image, bg, rtol=0, atol=1e-12)
    inside = mask.expand_as(bg) > 0.5
    expected = torch.tensor([0.2, -0.1, 0.05], dtype=torch.float64)[None, :, None, None].expand_as(bg)
    torch.testing.assert_close(res.offset[inside], expected[inside], rtol=0, atol=1e-12)


def test_spacing_one_is_poisson_blending_and_coarser_spacing_approaches_it():
    fg, bg, mask = _photos()
    poisson = poisson_blend(fg, bg, mask, solver="exact", tol=1e-13)
    gap = {s: float((msb_blend(fg, bg, mask, spacing=s) - poisson).abs().max()) for s in (1, 2, 4, 8)}
    assert gap[1] < 1e-5, gap  # the MEMBRANE = 1e-6 term is the only difference
    assert gap[1] < gap[2] < gap[8], gap


def test_batch_equals_single_calls():
    fg, bg, mask = _photos()
    batch = msb_blend(fg, bg, mask, spacing=4)
    for i in range(2):
        single = msb_blend(fg[i : i + 1], bg[i : i + 1], mask[i : i + 1], spacing=4)
        torch.testing.assert_close(batch[i : i + 1], single, rtol=0, atol=1e-12)
    assert float((batch[0] - batch[1]).abs().max()) > 0.1


def test_device_and_dtype(device, dtype):
    fg, bg, mask = (x.to(device=device, dtype=dtype) for x in _photos())
    res = msb_solve(fg, bg, mask, spacing=6)
    assert res.image.device.type == device.type and res.image.dtype == dtype
    assert res.control.shape == (2, 3, 6, 7) and res.offset.shape == fg.shape
    ref = _lstsq_reference(*(x.double().cpu() for x in (fg, bg, mask)), 6)
    assert np.abs(res.image.double().cpu().numpy() - ref).max() < (1e-4 if dtype == torch.float32 else 1e-9)


def test_gradcheck_fg_bg(gen):
    fg = torch.rand(2, 2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    bg = torch.rand(2, 2, 6, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(2, 1, 6, 7, dtype=torch.float64)
    mask[0, :, 1:4, 2:6] = 1
    mask[1, :, 2:, :3] = 1
    assert torch.autograd.gradcheck(lambda f, b: msb_blend(f, b, mask, spacing=2), (fg, bg))


def test_solve_module_and_cli_agree():
    fg, bg, mask = _photos()
    res = msb_solve(fg, bg, mask, spacing=8)
    assert res.solver is None and bool(res.converged.all())
    assert torch.equal(MSBBlend(spacing=8)(fg, bg, mask), res.image)
    out = get_method("msb")(fg, bg, mask, spacing=8)
    assert torch.equal(out.result, res.image) and out.images["offset"].shape == fg.shape


def test_yaml_mirrors_the_adapter():
    conf = OmegaConf.to_container(OmegaConf.load(CONF))
    params = inspect.signature(get_method("msb")).parameters
    assert conf.pop("name") == "msb"
    assert {k: params[k].default for k in conf} == conf and set(conf) == {"spacing"}


@pytest.mark.parametrize("spacing", [0, -3, 2.5, True, "abc"])
def test_bad_spacing(spacing):
    fg, bg, mask = _photos()
    with pytest.raises(ValueError, match="spacing must be an integer >= 1"):
        msb_blend(fg, bg, mask, spacing=spacing)
