import numpy as np
import pytest
import torch
from skimage import data as skdata

from fusion.methods import gaussian_poisson_blend, gaussian_poisson_level, get_method, place_source
from fusion.methods.gaussian_poisson import default_levels
from tests.reference import gaussian_poisson_dense, gaussian_poisson_pyramid_reference


def _photo(name: str, y: int, x: int, h: int, w: int, channels: int = 3) -> torch.Tensor:
    img = getattr(skdata, name)()[y : y + h, x : x + w, :channels]
    return torch.from_numpy(img.copy()).permute(2, 0, 1)[None].double() / 255


def _soft_ellipse(h: int, w: int) -> torch.Tensor:
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    r = (((yy - (h - 1) / 2) / (0.45 * h)) ** 2 + ((xx - (w - 1) / 2) / (0.45 * w)) ** 2).sqrt()
    return ((1.25 - r) / 0.5).clamp(0, 1)[None, None]


@pytest.mark.parametrize("beta, sigma", [(1.0, 0.5), (0.3, 1.2)])
def test_closed_form_matches_dense_least_squares(beta, sigma, gen):
    h, w = 7, 10
    fg, bg, color = (torch.rand(1, 1, h, w, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = (torch.rand(1, 1, h, w, generator=gen) > 0.5).double()
    got = gaussian_poisson_level(fg, bg, mask, color, beta=beta, sigma=sigma)
    ref = gaussian_poisson_dense(
        fg[0, 0].numpy(), bg[0, 0].numpy(), mask[0, 0].numpy(), color[0, 0].numpy(), beta, sigma
    )
    assert np.abs(got[0, 0].numpy() - ref).max() / np.abs(ref).max() < 1e-10


def test_gradcheck(gen):
    args = [torch.rand(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    mask = (torch.rand(1, 1, 5, 6, generator=gen) > 0.5).double()
    assert torch.autograd.gradcheck(
        lambda f, b, c: gaussian_poisson_level(f, b, mask, c, beta=1.0, sigma=0.5), tuple(args)
    )


@pytest.mark.parametrize(
    "shape, levels, color_shape",
    [((26, 34), 3, None), ((21, 30), 2, (7, 9)), ((30, 17), 3, (12, 12)), ((16, 16), 1, (16, 16))],
)
def test_pyramid_matches_dense_least_squares_at_every_level(shape, levels, color_shape):
    """Algorithm 1 against an independent NumPy pyramid (Gaussian 5×5 + bilinear halving) with eq. (9) solved by
    dense least squares at every level: odd sizes, both aspect ratios, with and without a colour constraint."""
    h, w = shape
    fg, bg = _photo("astronaut", 120, 160, h, w, 2), _photo("coffee", 80, 150, h, w, 2)
    mask = torch.zeros(1, 1, h, w, dtype=torch.float64)
    mask[..., h // 4 : 3 * h // 4 + 1, w // 5 : 3 * w // 4] = 1
    color = None if color_shape is None else _photo("chelsea", 50, 100, *color_shape, 2)
    out = gaussian_poisson_blend(fg, bg, mask, color=color, levels=levels, beta=0.6, sigma=0.7)
    for c in range(2):
        ref = gaussian_poisson_pyramid_reference(
            fg[0, c].numpy(),
            bg[0, c].numpy(),
            mask[0, 0].numpy(),
            None if color is None else color[0, c].numpy(),
            0.6,
            0.7,
            levels,
        )
        np.testing.assert_allclose(out[0, c].numpy(), ref, atol=1e-9, rtol=0)


def test_pyramid_any_aspect_ratio(device, dtype):
    g = torch.Generator().manual_seed(0)
    fg = torch.rand(2, 3, 200, 120, generator=g, dtype=torch.float64)
    bg = torch.rand(2, 3, 200, 120, generator=g, dtype=torch.float64)
    mask = torch.zeros(2, 1, 200, 120, dtype=torch.float64)
    mask[..., 50:150, 30:90] = 1
    out = gaussian_poisson_blend(fg.to(device, dtype), bg.to(device, dtype), mask.to(device, dtype))
    assert out.shape == fg.shape and out.dtype == dtype and out.device.type == device.type
    assert default_levels(200, 120) == 3
    ref = gaussian_poisson_blend(fg, bg, mask)  # float64 on the CPU
    assert float((out.double().cpu() - ref).abs().max()) < (1e-4 if dtype == torch.float32 else 1e-10)


def _three_samples(dtype):
    sources = [
        _photo("astronaut", 180, 200, 14, 16),
        _photo("chelsea", 60, 150, 12, 18),
        _photo("coffee", 150, 250, 16, 12),
    ]
    backgrounds = [
        _photo("coffee", 20, 40, 24, 30),
        _photo("astronaut", 300, 100, 24, 30),
        _photo("chelsea", 100, 50, 24, 30),
    ]
    masks = [_soft_ellipse(14, 16), torch.ones(1, 1, 12, 18, dtype=torch.float64), _soft_ellipse(16, 12)]
    offsets = [(3, 4), (-2, 14), (8, -2)]
    out = [place_source(s, m, b, offset=o) + (b,) for s, m, b, o in zip(sources, masks, backgrounds, offsets)]
    return [[x.to(dtype) for x in triple] for triple in zip(*out)]


@pytest.mark.parametrize("with_color", [False, True])
def test_batch_equals_single_calls(with_color, dtype):
    fgs, ms, bgs = _three_samples(dtype)
    colors = [_photo(n, 10, 20, 6, 8).to(dtype) for n in ("chelsea", "coffee", "astronaut")] if with_color else None
    kwargs = lambda i: {"color": None if colors is None else (torch.cat(colors) if i is None else colors[i])}  # noqa: E731
    batch = gaussian_poisson_blend(torch.cat(fgs), torch.cat(bgs), torch.cat(ms), levels=2, **kwargs(None))
    for i in range(3):
        single = gaussian_poisson_blend(fgs[i], bgs[i], ms[i], levels=2, **kwargs(i))
        assert float((batch[i : i + 1] - single).abs().max()) <= (1e-5 if dtype == torch.float32 else 1e-10)
    assert float((batch[0] - batch[1]).abs().max()) > 0.1


def test_gradcheck_blend_all_inputs():
    """Differentiable with respect to fg, bg, the soft mask and the colour constraint (real 12×14 crops)."""
    fg = _photo("astronaut", 200, 240, 12, 14, 1).requires_grad_()
    bg = _photo("coffee", 100, 200, 12, 14, 1).requires_grad_()
    mask = (0.1 + 0.8 * _soft_ellipse(12, 14)).requires_grad_()
    color = _photo("chelsea", 40, 60, 4, 5, 1).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda f, b, m, c: gaussian_poisson_blend(f, b, m, color=c, levels=2, beta=0.8), (fg, bg, mask, color)
    )


def test_colour_constraint_sets_low_frequencies():
    """Identical gradients everywhere (fg = bg): the colour target decides the mean colour of the result."""
    g = torch.Generator().manual_seed(1)
    img = torch.rand(1, 3, 64, 96, generator=g, dtype=torch.float64)
    mask = torch.zeros(1, 1, 64, 96, dtype=torch.float64)
    mask[..., 16:48, 24:72] = 1
    shifted = (img + 0.2).mean(dim=(-2, -1), keepdim=True).expand(1, 3, 8, 12)
    out = gaussian_poisson_blend(img, img, mask, color=shifted, levels=4)
    torch.testing.assert_close(out.mean(dim=(-2, -1)), (img + 0.2).mean(dim=(-2, -1)), atol=1e-6, rtol=0)
    # at the zero frequency L̂ = 0 and ĝ = 1, so the mean always equals the colour target's: without a colour
    # constraint that is the composite's (here the image itself)
    same = gaussian_poisson_blend(img, img, mask, levels=1)
    torch.testing.assert_close(same.mean(dim=(-2, -1)), img.mean(dim=(-2, -1)), atol=1e-12, rtol=0)
    assert (same - img).abs().mean() < 0.05


def test_blend_is_seamless_compared_with_cut_and_paste():
    """The gradient jump across the mask boundary shrinks well below the pasted composite's."""
    g = torch.Generator().manual_seed(2)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, 96), torch.linspace(0, 1, 128), indexing="ij")
    fg = (0.8 + 0.05 * torch.sin(20 * xx))[None, None].expand(1, 3, -1, -1).double()
    bg = (0.2 + 0.1 * yy + 0.02 * torch.rand(96, 128, generator=g))[None, None].expand(1, 3, -1, -1).double()
    mask = torch.zeros(1, 1, 96, 128, dtype=torch.float64)
    mask[..., 24:72, 32:96] = 1
    composite = mask * fg + (1 - mask) * bg
    out = gaussian_poisson_blend(fg, bg, mask)

    def seam(img):
        return (img[..., 24:72, 32] - img[..., 24:72, 31]).abs().mean()

    assert seam(out) < 0.25 * seam(composite)


def test_errors_and_registry():
    fg, bg = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 4:10] = 1
    with pytest.raises(ValueError, match="beta"):
        gaussian_poisson_blend(fg, bg, mask, beta=0.0)
    with pytest.raises(ValueError, match="levels"):
        gaussian_poisson_blend(fg, bg, mask, levels=6)
    with pytest.raises(ValueError, match="color must have 3"):
        gaussian_poisson_blend(fg, bg, mask, color=torch.rand(1, 1, 4, 4))
    cli = get_method("gaussian_poisson")
    assert cli.__name__ == "gaussian_poisson_cli"
    assert torch.equal(cli(fg, bg, mask, beta=0.5).result, gaussian_poisson_blend(fg, bg, mask, beta=0.5))


def test_thin_images_get_a_shallower_pyramid() -> None:
    # a 5x500 strip: halving once gives 2 rows, which a 5x5 blur cannot pad, so the default stops at 2 levels
    from fusion.methods.gaussian_poisson import check_levels, default_levels

    assert default_levels(5, 500) == 2 and default_levels(256, 320) == 4 and default_levels(2, 2) == 1
    assert check_levels(5, 500, 2) == [(5, 500), (2, 250)]
    with pytest.raises(ValueError, match=r"levels=3 is too deep for the 5x500 image .* use levels <= 2"):
        check_levels(5, 500, 3)
    with pytest.raises(ValueError, match="too small"):
        check_levels(1, 40, 1)
    g = torch.Generator().manual_seed(3)
    fg, bg = torch.rand(1, 3, 5, 500, generator=g), torch.rand(1, 3, 5, 500, generator=g)
    mask = torch.zeros(1, 1, 5, 500)
    mask[..., 1:4, 100:400] = 1
    out = gaussian_poisson_blend(fg, bg, mask)
    # outside the mask's reach the composite's colour is kept: far from the mask the result stays close to bg
    assert out.shape == fg.shape and torch.isfinite(out).all()
    assert (out - bg)[..., :, :50].abs().mean() < (out - fg)[..., :, :50].abs().mean()
