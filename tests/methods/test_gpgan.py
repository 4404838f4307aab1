"""GP-GAN blending (Algorithm 1): the Blending GAN's colour carried up the Gaussian–Poisson pyramid."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.transform import resize as sk_resize
from torch import nn

from fusion.methods import place_source
from fusion.methods.gpgan import blending_gan_color, gpgan_blend
from fusion.nn.gpgan import BlendingGenerator
from fusion.ops.filters import gaussian_pyramid, pyramid_sizes, resize
from tests.reference import (
    antialiased_resize,
    gaussian_poisson_dense,
    gaussian_poisson_pyramid_reference,
    gaussian_pyramid_levels,
)


class Recorder(nn.Module):
    """A stand-in generator: records its input and returns ``a·x + b``."""

    def __init__(self, size: int, a: float = 1.0, b: float = 0.0) -> None:
        super().__init__()
        self.image_size, self.a, self.b = size, a, b
        self.scale = nn.Parameter(torch.ones(()))  # gives the module a dtype/device
        self.seen: list[torch.Size] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.shape)
        return self.scale * (self.a * x + self.b)


def _inputs(h, w, gen, dtype=torch.float64):
    fg = torch.rand(1, 3, h, w, generator=gen, dtype=dtype)
    bg = torch.rand(1, 3, h, w, generator=gen, dtype=dtype)
    mask = torch.zeros(1, 1, h, w, dtype=dtype)
    mask[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
    return fg, bg, mask


def test_single_level_matches_dense_least_squares(gen: torch.Generator) -> None:
    fg, bg, mask = _inputs(10, 14, gen)
    g = Recorder(8, a=0.5, b=0.2).double()
    with torch.no_grad():
        out = gpgan_blend(fg, bg, mask, generator=g, levels=1, beta=0.7, sigma=0.8)
    # independent colour: composite → 8×8 → generator → back to 10×14
    color = resize(0.5 * resize(mask * fg + (1 - mask) * bg, (8, 8)) + 0.2, (10, 14))
    for c in range(3):
        ref = gaussian_poisson_dense(
            fg[0, c].numpy(), bg[0, c].numpy(), mask[0, 0].numpy(), color[0, c].numpy(), 0.7, 0.8
        )
        np.testing.assert_allclose(out[0, c].numpy(), ref, atol=1e-8)
    assert g.seen == [torch.Size([1, 3, 8, 8])]


def _gpgan_reference(fg, bg, mask, generator, size, levels, beta, sigma):
    """Algorithm 1 in NumPy for one image: the composite's coarsest pyramid level resampled to the generator's
    square input, the generator's output as x̃_l, then eq. (9) by dense least squares up the pyramid."""
    f, b, m = fg[0].numpy(), bg[0].numpy(), mask[0, 0].numpy()
    coarse = [gaussian_pyramid_levels(m * f[c] + (1 - m) * b[c], levels)[-1] for c in range(f.shape[0])]
    small = torch.from_numpy(np.stack([antialiased_resize(x, (size, size)) for x in coarse]))[None]
    with torch.no_grad():
        color = generator(small.to(next(generator.parameters()).dtype)).double()[0].numpy()
    return np.stack(
        [gaussian_poisson_pyramid_reference(f[c], b[c], m, color[c], beta, sigma, levels) for c in range(f.shape[0])]
    )


def test_generator_sees_a_square_for_any_aspect_ratio(gen: torch.Generator) -> None:
    fg, bg, mask = _inputs(60, 200, gen, torch.float32)
    g = Recorder(64)
    out = gpgan_blend(fg, bg, mask, generator=g)
    assert g.seen == [torch.Size([1, 3, 64, 64])]
    assert out.shape == fg.shape and out.dtype == torch.float32
    # the generator's input is the composite's coarsest pyramid level (here 2 levels: 30×100), made square
    composite = mask * fg + (1 - mask) * bg
    coarse = gaussian_pyramid(composite, pyramid_sizes(60, 200, 2))[-1]
    assert coarse.shape[-2:] == (30, 100)
    g.seen.clear()
    color = blending_gan_color(fg, bg, mask, generator=g, levels=2)
    torch.testing.assert_close(color, resize(coarse, (64, 64)))


@pytest.mark.parametrize("shape, size", [((20, 44), 8), ((34, 18), 16), ((32, 32), 16)])
def test_matches_numpy_algorithm_1(shape, size) -> None:
    """Against the NumPy pyramid + dense least-squares reference, with a real generator (random weights, eval),
    for wide, tall and square images (the coarsest level 10×22 shrunk to 8×8, 17×9 shrunk and enlarged to
    16×16, 16×16 kept)."""
    h, w = shape
    fg = torch.from_numpy(sk_resize(skdata.astronaut(), shape, anti_aliasing=True)).permute(2, 0, 1)[None]
    bg = torch.from_numpy(sk_resize(skdata.coffee(), shape, anti_aliasing=True)).permute(2, 0, 1)[None]
    mask = torch.zeros(1, 1, h, w, dtype=torch.float64)
    mask[..., h // 4 : 3 * h // 4, w // 5 : 4 * w // 5] = 1
    torch.manual_seed(0)
    g = BlendingGenerator(size, encoder_channels=4, decoder_channels=4, bottleneck=8).double().eval()
    with torch.no_grad():
        out = gpgan_blend(fg, bg, mask, generator=g, levels=2, beta=0.8, sigma=0.6)
    ref = _gpgan_reference(fg, bg, mask, g, size, 2, 0.8, 0.6)
    np.testing.assert_allclose(out[0].numpy(), ref, atol=1e-9, rtol=0)


def _three_samples(dtype):
    def photo(name, y, x, h, w):
        return torch.from_numpy(getattr(skdata, name)()[y : y + h, x : x + w].copy()).permute(2, 0, 1)[None] / 255.0

    sources = [
        photo("astronaut", 180, 200, 14, 16),
        photo("chelsea", 60, 150, 12, 18),
        photo("coffee", 150, 250, 16, 12),
    ]
    backgrounds = [
        photo("coffee", 20, 40, 24, 30),
        photo("astronaut", 300, 100, 24, 30),
        photo("chelsea", 100, 50, 24, 30),
    ]
    masks = [torch.ones(1, 1, 14, 16), torch.zeros(1, 1, 12, 18), torch.ones(1, 1, 16, 12)]
    masks[1][..., 2:10, 3:16] = 1
    masks[0][..., :3, :] = 0.3
    offsets = [(3, 4), (-2, 14), (8, -2)]
    out = [place_source(s, m, b, offset=o) + (b,) for s, m, b, o in zip(sources, masks, backgrounds, offsets)]
    return [[x.to(dtype) for x in triple] for triple in zip(*out)]


def test_batch_equals_single_calls(dtype) -> None:
    """With the generator in eval mode, a sample's result does not depend on its batch."""
    fgs, ms, bgs = _three_samples(dtype)
    torch.manual_seed(1)
    g = BlendingGenerator(16, encoder_channels=8, decoder_channels=8, bottleneck=16).to(dtype).eval()
    with torch.no_grad():
        batch = gpgan_blend(torch.cat(fgs), torch.cat(bgs), torch.cat(ms), generator=g, levels=2)
        for i in range(3):
            single = gpgan_blend(fgs[i], bgs[i], ms[i], generator=g, levels=2)
            assert float((batch[i : i + 1] - single).abs().max()) <= (1e-5 if dtype == torch.float32 else 1e-10)
    assert float((batch[0] - batch[1]).abs().max()) > 0.1


def test_gradcheck_fg_bg_mask() -> None:
    """Differentiable with respect to fg, bg and the soft mask (through the generator and the pyramid)."""
    crop = (slice(200, 212), slice(240, 254))
    fg = torch.from_numpy(skdata.astronaut()[crop].copy()).permute(2, 0, 1)[None, :1].double().div(255)
    bg = torch.from_numpy(skdata.coffee()[crop].copy()).permute(2, 0, 1)[None, :1].double().div(255)
    mask = torch.full((1, 1, 12, 14), 0.1, dtype=torch.float64)
    mask[..., 3:9, 4:11] = 0.9
    torch.manual_seed(2)
    g = BlendingGenerator(8, in_channels=1, out_channels=1, encoder_channels=4, decoder_channels=4, bottleneck=8)
    g = g.double().eval()
    inputs = (fg.requires_grad_(), bg.requires_grad_(), mask.requires_grad_())
    assert torch.autograd.gradcheck(lambda f, b, m: gpgan_blend(f, b, m, generator=g, levels=2), inputs)
    # a generator whose output follows its input closely: the path through the composite must be in the gradient
    affine = Recorder(8, a=3.0, b=0.1).double()
    assert torch.autograd.gradcheck(lambda f, b, m: gpgan_blend(f, b, m, generator=affine, levels=2), inputs)


@pytest.mark.parametrize("shape", [(96, 96), (70, 230), (257, 129)])
def test_constant_colour_sets_the_mean(shape, gen: torch.Generator) -> None:
    # The DC coefficient of eq. (9) is fixed by the colour term alone (the Laplacian has no DC): a generator that
    # outputs a constant colour c therefore fixes the mean of the result at every level, whatever the gradients
    # (up to the resampling between levels, which keeps the mean only approximately for odd sizes).
    fg, bg, mask = _inputs(*shape, gen)
    c = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    g = Recorder(32, a=0.0, b=0.0).double()
    g.b = c.view(1, 3, 1, 1)
    with torch.no_grad():
        out = gpgan_blend(fg, bg, mask, generator=g)
    torch.testing.assert_close(out.mean((0, 2, 3)), c, atol=1e-4, rtol=0)
    assert float((fg * mask + bg * (1 - mask)).mean((0, 2, 3)).sub(c).abs().max()) > 0.1  # not true by chance


def test_real_photographs_with_a_blending_generator(dtype, device) -> None:
    fg = torch.from_numpy(sk_resize(skdata.astronaut(), (120, 180), anti_aliasing=True)).permute(2, 0, 1)[None]
    bg = torch.from_numpy(sk_resize(skdata.coffee(), (120, 180), anti_aliasing=True)).permute(2, 0, 1)[None]
    fg, bg = fg.to(device, dtype), bg.to(device, dtype)
    mask = torch.zeros(1, 1, 120, 180, dtype=dtype, device=device)
    mask[..., 20:100, 50:130] = 1
    g = BlendingGenerator(32, encoder_channels=8, decoder_channels=8, bottleneck=16).to(device).eval()
    with torch.no_grad():
        out = gpgan_blend(fg, bg, mask, generator=g)
    assert out.shape == bg.shape and out.dtype == dtype and out.device == fg.device
    assert bool(torch.isfinite(out).all())
    # far from the mask, the result keeps the destination's details: its gradients correlate with bg's
    gy_out, gy_bg = out[..., 100:, :].diff(dim=-2), bg[..., 100:, :].diff(dim=-2)
    corr = torch.nn.functional.cosine_similarity(gy_out.flatten(), gy_bg.flatten(), dim=0)
    assert float(corr) > 0.9


def test_batch_and_gradients(gen: torch.Generator) -> None:
    fg, bg, mask = _inputs(24, 40, gen)
    fg = fg.expand(2, -1, -1, -1).clone().requires_grad_(True)
    g = Recorder(16).double()
    out = gpgan_blend(fg, bg, mask, generator=g)
    out.sum().backward()
    assert out.shape == (2, 3, 24, 40) and fg.grad is not None and g.scale.grad is not None


def test_errors(gen: torch.Generator) -> None:
    fg, bg, mask = _inputs(16, 16, gen)
    with pytest.raises(TypeError, match="nn.Module"):
        gpgan_blend(fg, bg, mask, generator=lambda x: x)

    class Wrong(Recorder):
        def forward(self, x):
            return x[..., :4, :4]

    with pytest.raises(ValueError, match="generator returned"):
        gpgan_blend(fg, bg, mask, generator=Wrong(8).double())
    with pytest.raises(ValueError, match="size"):
        gpgan_blend(fg, bg, mask, generator=nn.Identity())
    with pytest.raises(ValueError, match="channels"):
        gpgan_blend(fg[:, :1], bg[:, :1], mask, generator=BlendingGenerator(16, bottleneck=8))


def test_gpgan_blends_a_thin_strip() -> None:
    from fusion.nn.gpgan import BlendingGenerator

    generator = BlendingGenerator(image_size=32, encoder_channels=8, decoder_channels=8, bottleneck=16).eval()
    g = torch.Generator().manual_seed(5)
    fg, bg = torch.rand(1, 3, 5, 500, generator=g), torch.rand(1, 3, 5, 500, generator=g)
    mask = torch.zeros(1, 1, 5, 500)
    mask[..., 1:4, 100:400] = 1
    with torch.no_grad():
        out = gpgan_blend(fg, bg, mask, generator=generator)
    assert out.shape == fg.shape and torch.isfinite(out).all()
    with pytest.raises(ValueError, match="too deep"):
        gpgan_blend(fg, bg, mask, generator=generator, levels=4)
