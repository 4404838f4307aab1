import numpy as np
import pytest
import torch

from fusion.methods import gaussian_poisson_blend, gaussian_poisson_solve, get_method
from fusion.methods.gaussian_poisson import default_levels
from tests.reference import gaussian_poisson_dense


@pytest.mark.parametrize("beta, sigma", [(1.0, 0.5), (0.3, 1.2)])
def test_closed_form_matches_dense_least_squares(beta, sigma, gen):
    h, w = 7, 10
    fg, bg, color = (torch.rand(1, 1, h, w, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = (torch.rand(1, 1, h, w, generator=gen) > 0.5).double()
    got = gaussian_poisson_solve(fg, bg, mask, color, beta=beta, sigma=sigma)
    ref = gaussian_poisson_dense(
        fg[0, 0].numpy(), bg[0, 0].numpy(), mask[0, 0].numpy(), color[0, 0].numpy(), beta, sigma
    )
    assert np.abs(got[0, 0].numpy() - ref).max() / np.abs(ref).max() < 1e-10


def test_gradcheck(gen):
    args = [torch.rand(1, 2, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    mask = (torch.rand(1, 1, 5, 6, generator=gen) > 0.5).double()
    assert torch.autograd.gradcheck(
        lambda f, b, c: gaussian_poisson_solve(f, b, mask, c, beta=1.0, sigma=0.5), tuple(args)
    )


def test_pyramid_any_aspect_ratio(device, dtype):
    g = torch.Generator().manual_seed(0)
    fg = torch.rand(2, 3, 200, 120, generator=g, dtype=dtype).to(device)
    bg = torch.rand(2, 3, 200, 120, generator=g, dtype=dtype).to(device)
    mask = torch.zeros(2, 1, 200, 120, dtype=dtype, device=device)
    mask[..., 50:150, 30:90] = 1
    out = gaussian_poisson_blend(fg, bg, mask)
    assert out.shape == fg.shape and out.dtype == dtype and torch.isfinite(out).all()
    assert default_levels(200, 120) == 3


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
    assert get_method("gaussian_poisson") is gaussian_poisson_blend
