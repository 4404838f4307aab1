"""Dynamic optimal transport between images: the checks of the model (translation, mass, colour circle,
unbalanced transport), input validation, and the command-line adapter."""

from __future__ import annotations

import pytest
import torch
from skimage import data

from fusion.methods.ot import OTResult, ot, ot_interpolate
from fusion.methods.registry import MethodOutput, method_spec
from fusion.ops.filters import resize

pytestmark = pytest.mark.usefixtures("single_thread")


def _grid(n, dtype=torch.float64):
    x = (torch.arange(n, dtype=dtype) + 0.5) / n
    return torch.meshgrid(x, x, indexing="ij")


def _bump(xx, yy, cx, cy, s=0.08):
    return torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * s * s))


def _centroid(frames, xx, yy):
    mass = frames.sum((-2, -1))
    return (frames * xx).sum((-2, -1)) / mass, (frames * yy).sum((-2, -1)) / mass


def test_translated_bump_moves_linearly_with_cost_half_shift_squared():
    n, steps = 32, 8
    xx, yy = _grid(n)
    eps = 1e-3
    shift = (0.25, 0.15)
    f0 = _bump(xx, yy, 0.35, 0.4) + eps
    f1 = _bump(xx, yy, 0.35 + shift[0], 0.4 + shift[1]) + eps
    f1 = f1 * f0.sum() / f1.sum()
    r = ot_interpolate(f0[None, None], f1[None, None], steps=steps, max_iter=400)
    assert isinstance(r, OTResult) and r.frames.shape == (steps + 1, 1, 1, n, n)
    assert r.momentum.shape == (steps, 1, 2, 1, n, n)
    cx, cy = _centroid(r.frames[:, 0, 0], xx, yy)
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)
    assert torch.allclose(cx, cx[0] + t * (cx[-1] - cx[0]), atol=2e-3)
    assert torch.allclose(cy, cy[0] + t * (cy[-1] - cy[0]), atol=2e-3)
    # shape kept: the midpoint is the bump half-way (up to the numerical diffusion of the coarse grid)
    mid = _bump(xx, yy, 0.35 + shift[0] / 2, 0.4 + shift[1] / 2) + eps
    mid = mid * f0.sum() / mid.sum()
    assert (r.frames[steps // 2, 0, 0] - mid).abs().max() < 0.25 * mid.max()
    bump_mass = (f0 - eps).sum() / n**2  # the floor stays (almost) where it is
    expected = bump_mass * (shift[0] ** 2 + shift[1] ** 2) / 2
    assert r.cost.item() == pytest.approx(expected.item(), rel=0.04)


@pytest.mark.slow
def test_cost_tends_to_half_shift_squared_under_refinement():
    errors = []
    for n, steps in [(16, 4), (32, 8), (64, 16)]:
        xx, yy = _grid(n)
        f0 = _bump(xx, yy, 0.4, 0.4, 0.1)
        f1 = _bump(xx, yy, 0.6, 0.6, 0.1)
        f0, f1 = f0 + 1e-4, f1 * f0.sum() / f1.sum() + 1e-4
        r = ot_interpolate(f0[None, None], f1[None, None], steps=steps, max_iter=1500, tol=1e-7)
        expected = ((f0 - 1e-4).sum() / n**2) * 0.08 / 2
        errors.append(abs(r.cost.item() - expected.item()) / expected.item())
    assert errors[-1] < errors[0] and errors[-1] < 0.02


def test_constrained_keeps_mass_in_every_slice(dtype):
    img = torch.from_numpy(data.astronaut()).permute(2, 0, 1)[None].to(dtype) / 255
    img2 = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].to(dtype) / 255
    f0 = resize(img, (10, 12)).clamp_min(0) + 0.01
    f1 = resize(img2, (10, 12)).clamp_min(0) + 0.01
    f1 = f1 * f0.sum() / f1.sum()
    r = ot_interpolate(f0, f1, steps=6, max_iter=150)
    mass = r.frames.flatten(2).sum(2)
    rtol = 1e-4 if dtype == torch.float32 else 1e-9
    assert torch.allclose(mass, mass[0].expand_as(mass), rtol=rtol)
    assert torch.equal(r.frames[0], f0) and torch.equal(r.frames[-1], f1)
    assert r.frames.dtype == dtype and torch.isfinite(r.cost).all()


def _red_to_blue(color_bc):
    f0 = torch.full((1, 3, 4, 4), 0.01, dtype=torch.float64)
    f0[:, 0] = 1
    r = ot_interpolate(f0, f0.flip(1), steps=8, color_bc=color_bc, max_iter=300)
    return r.frames[:, 0].mean((-2, -1))  # (T, 3) mean colour per frame


def test_red_turns_blue_through_magenta_with_periodic_colour():
    colours = _red_to_blue("periodic")
    mid = colours[4]
    assert mid[0] > 0.3 and mid[2] > 0.3 and mid[1] < 0.15  # red + blue, little green
    assert (colours[:, 1] < 0.15).all()


def test_red_turns_blue_through_green_with_mirror_colour():
    colours = _red_to_blue("mirror")
    mid = colours[4]
    assert mid[1] > 0.5 and mid[1] > mid[0] and mid[1] > mid[2]


def test_penalized_handles_unequal_mass(dtype):
    xx, yy = _grid(12, dtype)
    f0 = _bump(xx, yy, 0.4, 0.4)[None, None] + 0.01
    f1 = 3 * _bump(xx, yy, 0.6, 0.6)[None, None] + 0.01
    with pytest.raises(ValueError, match="penalized"):
        ot_interpolate(f0, f1)
    r = ot_interpolate(f0, f1, steps=6, model="penalized", max_iter=300)
    assert torch.isfinite(r.frames).all() and torch.isfinite(r.cost).all()
    assert torch.equal(r.frames[0], f0) and torch.equal(r.frames[-1], f1)
    mass = r.frames.flatten(1).sum(1)
    assert (mass.diff() > 0).all()  # mass grows from f0's to f1's
    assert (r.frames > -0.05).all()
    assert r.solver.history[-1, 0] < 1e-3  # converging in float32 too


def test_penalized_tends_to_constrained_for_large_lambda():
    xx, yy = _grid(16)
    f0 = _bump(xx, yy, 0.35, 0.4, 0.1)[None, None] + 0.01
    f1 = _bump(xx, yy, 0.6, 0.6, 0.1)[None, None] + 0.01
    f1 = f1 * f0.sum() / f1.sum()
    c = ot_interpolate(f0, f1, steps=6, max_iter=600)
    weak = ot_interpolate(f0, f1, steps=6, model="penalized", lam=10.0, max_iter=600)
    strong = ot_interpolate(f0, f1, steps=6, model="penalized", lam=1000.0, max_iter=600)
    assert strong.cost.item() == pytest.approx(c.cost.item(), rel=5e-3)
    assert (strong.frames - c.frames).abs().max() < 0.03 * f0.max()
    # a weak penalty lets the continuity equation slip: cheaper transport, frames further from the constrained ones
    assert weak.cost.item() < strong.cost.item()
    assert (weak.frames - c.frames).abs().max() > (strong.frames - c.frames).abs().max()


def test_rgb_batch_on_real_images():
    a = torch.from_numpy(data.coffee()).permute(2, 0, 1)[None].float() / 255
    b = torch.from_numpy(data.chelsea()).permute(2, 0, 1)[None].float() / 255
    a, b = resize(a, (8, 10)).clamp_min(0) + 0.01, resize(b, (8, 10)).clamp_min(0) + 0.01
    f0, f1 = torch.cat([a, b]), torch.cat([b, a])
    f1 = f1 * f0.flatten(1).sum(1).view(-1, 1, 1, 1) / f1.flatten(1).sum(1).view(-1, 1, 1, 1)
    r = ot_interpolate(f0, f1, steps=4, max_iter=80)
    single = ot_interpolate(f0[1:], f1[1:], steps=4, max_iter=80)
    assert r.frames.shape == (5, 2, 3, 8, 10) and r.momentum.shape == (4, 2, 3, 3, 8, 10)
    assert torch.allclose(r.frames[:, 1:], single.frames, atol=1e-4)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(steps=1), "steps"),
        (dict(model="balanced"), "model"),
        (dict(color_bc="neumann"), "color_bc"),
        (dict(lam=-1.0, model="penalized"), "lam"),
        (dict(max_iter=0), "max_iter"),
        (dict(tol=0), "tol"),
    ],
)
def test_bad_parameters(kwargs, match):
    f = torch.rand(1, 3, 4, 4) + 0.1
    with pytest.raises(ValueError, match=match):
        ot_interpolate(f, f, **kwargs)


def test_bad_inputs():
    f = torch.rand(1, 3, 4, 4) + 0.1
    with pytest.raises(ValueError, match="non-negative"):
        ot_interpolate(f - 1, f)
    with pytest.raises(ValueError, match="zero total mass"):
        ot_interpolate(torch.zeros_like(f), f, model="penalized")
    with pytest.raises(ValueError, match="f0"):
        ot_interpolate(f, f[:, :1])
    with pytest.raises(TypeError):
        ot_interpolate(f.int(), f)


def test_cli_adapter_shapes_and_registration():
    assert method_spec("ot").needs_mask is False
    fg = torch.rand(1, 3, 20, 30)
    bg = torch.rand(1, 3, 20, 30) * 0.5
    out = ot(fg, bg, None, steps=4, max_iter=30, size=12)
    assert isinstance(out, MethodOutput)
    assert out.result.shape == fg.shape
    frames = out.frames["frames"]
    assert frames.shape == (5, 1, 3, 8, 12)
    # end frames are the downscaled inputs (normalisation and floor undone)
    assert torch.allclose(frames[0], resize(fg, (8, 12)).clamp(0, 1), atol=1e-5)
    assert torch.allclose(frames[-1], resize(bg, (8, 12)).clamp(0, 1), atol=1e-5)
    curves = out.curves["convergence"]
    assert set(curves) == {"relative change", "constraint residual", "cost"}
    assert all(len(v) == 31 for v in curves.values())
    assert torch.isfinite(curves["constraint residual"]).all()


def test_infer_writes_gif_strip_and_plot(tmp_path):
    from omegaconf import OmegaConf

    from fusion.pipeline import infer

    cfg = OmegaConf.create(
        {
            "fg": None,
            "bg": None,
            "mask": None,
            "out": str(tmp_path / "ot.png"),
            "offset": None,
            "device": "cpu",
            "side_by_side": False,
            "method": {"name": "ot", "steps": 4, "max_iter": 20, "size": 16},
        }
    )
    written = infer(cfg)
    for key in ("result", "frames_gif", "frames_strip", "convergence_plot"):
        assert written[key].exists(), key


@pytest.mark.gpu
def test_gpu_matches_cpu():
    f0 = torch.rand(2, 3, 16, 16, dtype=torch.float64) + 0.05
    f1 = torch.rand(2, 3, 16, 16, dtype=torch.float64) + 0.05
    f1 = f1 * f0.flatten(1).sum(1).view(-1, 1, 1, 1) / f1.flatten(1).sum(1).view(-1, 1, 1, 1)
    cpu = ot_interpolate(f0, f1, steps=4, max_iter=50)
    gpu = ot_interpolate(f0.cuda(), f1.cuda(), steps=4, max_iter=50)
    assert gpu.frames.device.type == "cuda"
    assert torch.allclose(gpu.frames.cpu(), cpu.frames, atol=1e-8)
