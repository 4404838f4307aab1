import numpy as np
import pytest
import torch

from fusion.methods import get_method, place_source, poisson_blend, poisson_solve_exact
from fusion.ops import solve_masked_poisson
from fusion.ops.diff import div, grad
from tests.reference import perez_reference


@pytest.mark.parametrize("mixed", [False, True])
def test_exact_matches_sparse_direct_on_random_masks(mixed, gen):
    h, w = 21, 30
    fg = torch.rand(2, 3, h, w, generator=gen, dtype=torch.float64)
    bg = torch.rand(2, 3, h, w, generator=gen, dtype=torch.float64)
    mask = (torch.rand(2, 1, h, w, generator=gen) > 0.5).double()
    mask[0, 0, :, 0] = 1  # a mask touching the image border
    mask[1, 0, -1, :] = 1
    out = poisson_blend(fg, bg, mask, mixed=mixed, tol=1e-13)
    for b in range(2):
        region = mask[b, 0].numpy() > 0.5
        for c in range(3):
            ref = perez_reference(fg[b, c].numpy(), bg[b, c].numpy(), region, mixed)
            err = np.linalg.norm(out[b, c].numpy() - ref) / np.linalg.norm(ref)
            assert err < 1e-8


def test_exact_on_real_photo_float32_vs_float64():
    from skimage import data

    img = torch.from_numpy(data.astronaut()[100:196, 150:270].copy()).permute(2, 0, 1)[None].double() / 255
    bg = torch.from_numpy(data.coffee()[100:196, 200:320].copy()).permute(2, 0, 1)[None].double() / 255
    yy, xx = torch.meshgrid(torch.arange(96), torch.arange(120), indexing="ij")
    mask = ((((yy - 48) / 35) ** 2 + ((xx - 60) / 45) ** 2) < 1).double()[None, None]
    ref = perez_reference(img[0, 1].numpy(), bg[0, 1].numpy(), mask[0, 0].numpy() > 0.5)
    res = poisson_solve_exact(img, bg, mask, tol=1e-12)
    assert res.all_converged
    assert np.linalg.norm(res.solution[0, 1].numpy() - ref) / np.linalg.norm(ref) < 1e-8
    out32 = poisson_blend(img.float(), bg.float(), mask.float(), tol=1e-6)
    assert (out32.double() - res.solution).abs().max() < 1e-3


def test_outside_mask_is_background_and_identity_when_fg_is_bg(device, dtype, gen):
    fg = torch.rand(1, 3, 24, 33, generator=gen, dtype=dtype).to(device)
    bg = torch.rand(1, 3, 24, 33, generator=gen, dtype=dtype).to(device)
    mask = torch.zeros(1, 1, 24, 33, dtype=dtype, device=device)
    mask[..., 5:18, 4:25] = 1
    tol = 1e-6 if dtype == torch.float32 else 1e-13
    for solver in ("exact", "spectral"):
        out = poisson_blend(fg, bg, mask, solver=solver, tol=tol)
        assert torch.equal(out[..., :, :3], bg[..., :, :3]) and torch.equal(out[..., 19:, :], bg[..., 19:, :])
        same = poisson_blend(bg, bg, mask, solver=solver, tol=tol)
        assert (same - bg).abs().max() < (1e-4 if dtype == torch.float32 else 1e-10)


def test_spectral_is_the_single_box_solve(gen):
    """The spectral solver equals a masked solve over the grown box with the mixed-by-mask guidance (eq. 8)."""
    h, w = 30, 41
    fg = torch.rand(1, 3, h, w, generator=gen, dtype=torch.float64)
    bg = torch.rand(1, 3, h, w, generator=gen, dtype=torch.float64)
    mask = torch.zeros(1, 1, h, w, dtype=torch.float64)
    mask[..., 6:20, 8:28] = 1
    mask[..., 14:24, 20:33] = 1
    out = poisson_blend(fg, bg, mask, solver="spectral")
    box = torch.zeros_like(mask)
    box[..., 5:25, 7:34] = 1
    m = mask.unsqueeze(-3)
    rhs = -div(m * grad(fg) + (1 - m) * grad(bg))
    ref = solve_masked_poisson(rhs, bg, box, tol=1e-13).solution
    torch.testing.assert_close(out, ref, atol=1e-11, rtol=0)


def test_spectral_close_to_exact_for_smooth_sources():
    """With a smooth source both formulations agree closely away from the mask boundary."""
    h, w = 64, 80
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    fg = torch.stack([torch.sin(3 * yy + xx), torch.cos(2 * xx), yy * xx])[None].double()
    bg = torch.stack([xx, yy, 0.5 + 0 * xx])[None].double()
    mask = torch.zeros(1, 1, h, w, dtype=torch.float64)
    mask[..., 16:48, 20:60] = 1
    exact = poisson_blend(fg, bg, mask, tol=1e-12)
    spectral = poisson_blend(fg, bg, mask, solver="spectral")
    gap = (exact - spectral)[..., 20:44, 24:56].abs()
    assert gap.max() < 0.05 and gap.mean() < 0.01


def test_inertial_reaches_direct_solution(gen):
    fg = torch.rand(1, 3, 14, 17, generator=gen, dtype=torch.float64)
    bg = torch.rand(1, 3, 14, 17, generator=gen, dtype=torch.float64)
    mask = (torch.rand(1, 1, 14, 17, generator=gen) > 0.4).double()
    exact = poisson_blend(fg, bg, mask, tol=1e-13)
    inertial = poisson_blend(fg, bg, mask, solver="inertial", tol=1e-14, max_iter=30000)
    assert (exact - inertial).abs().max() < 1e-5


def test_gradients_flow(gen):
    fg = torch.rand(1, 1, 8, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    bg = torch.rand(1, 1, 8, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    mask = torch.zeros(1, 1, 8, 9, dtype=torch.float64)
    mask[..., 2:6, 3:7] = 0.8
    assert torch.autograd.gradcheck(lambda f, b: poisson_blend(f, b, mask, solver="spectral"), (fg, bg))
    out = poisson_blend(fg, bg, mask, solver="exact", tol=1e-12)
    out.sum().backward()
    assert fg.grad is not None and torch.isfinite(fg.grad).all()


def test_place_source_offsets_and_cropping():
    fg = torch.arange(6.0).view(1, 1, 2, 3)
    mask = torch.ones(1, 1, 2, 3)
    bg = torch.full((1, 1, 4, 5), -1.0)
    fc, mc = place_source(fg, mask, bg, offset=(-1, 3))
    assert mc.sum() == 2  # one row dropped above, one column dropped on the right
    assert fc[0, 0, 0, 3:].tolist() == [3.0, 4.0]
    fc, mc = place_source(fg, mask, bg)  # centred
    assert fc[0, 0, 1:3, 1:4].tolist() == fg[0, 0].tolist()
    with pytest.raises(ValueError, match="entirely outside"):
        place_source(fg, mask, bg, offset=(10, 0))


@pytest.mark.parametrize(
    "case, match",
    [
        ("size", "image sizes differ"),
        ("empty", "mask is empty"),
        ("full", "covers the whole image"),
        ("nan", "NaN or Inf"),
        ("channels", "channel counts differ"),
        ("mask_channels", "1 channel"),
        ("solver", "solver must be"),
    ],
)
def test_bad_input_errors(case, match):
    fg, bg = torch.rand(1, 3, 10, 12), torch.rand(1, 3, 10, 12)
    mask = torch.zeros(1, 1, 10, 12)
    mask[..., 3:7, 3:8] = 1
    kwargs = {}
    if case == "size":
        bg = torch.rand(1, 3, 11, 12)
    elif case == "empty":
        mask = torch.zeros_like(mask)
    elif case == "full":
        mask = torch.ones_like(mask)
    elif case == "nan":
        fg[0, 0, 0, 0] = float("nan")
    elif case == "channels":
        bg = torch.rand(1, 1, 10, 12)
    elif case == "mask_channels":
        mask = mask.expand(1, 3, -1, -1)
    elif case == "solver":
        kwargs["solver"] = "multigrid"
    with pytest.raises(ValueError, match=match):
        poisson_blend(fg, bg, mask, **kwargs)


def test_registry():
    assert get_method("poisson") is poisson_blend
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        get_method("nope")


def test_spectral_with_mask_on_the_image_border(gen):
    bg = torch.rand(1, 3, 20, 25, generator=gen, dtype=torch.float64)
    fg = torch.rand(1, 3, 20, 25, generator=gen, dtype=torch.float64)
    mask = torch.zeros(1, 1, 20, 25, dtype=torch.float64)
    mask[..., 0:12, 15:25] = 1
    torch.testing.assert_close(poisson_blend(bg, bg, mask, solver="spectral"), bg, atol=1e-12, rtol=0)
    out = poisson_blend(fg, bg, mask, solver="spectral")
    assert torch.isfinite(out).all() and torch.equal(out[..., 14:, :], bg[..., 14:, :])
