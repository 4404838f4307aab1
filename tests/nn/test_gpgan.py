"""Blending GAN networks: the layer layout of the paper's Figs. 3 and 4, shapes, ranges and initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion.nn.gpgan import BlendingCritic, BlendingGenerator


def _convs(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]


@pytest.fixture(scope="module")
def paper_generator() -> BlendingGenerator:
    torch.manual_seed(0)
    return BlendingGenerator()  # 64×64, bottleneck 4000


def test_generator_paper_layout(paper_generator: BlendingGenerator) -> None:
    g = paper_generator
    enc = _convs(g.encoder)
    assert [c.out_channels for c in enc] == [64, 128, 256, 512, 4000]
    assert [c.stride for c in enc] == [(2, 2)] * 4 + [(1, 1)]
    assert all(c.kernel_size == (4, 4) for c in enc)
    dec = _convs(g.decoder)
    assert [c.out_channels for c in dec] == [512, 256, 128, 64, 3]
    assert isinstance(g.decoder[-1], nn.Tanh)
    # the 4×4 valid convolution maps the 4×4×512 features to a 1×1×4000 code: a fully connected layer
    with torch.no_grad():
        code = g.encode(torch.rand(2, 3, 64, 64))
    assert code.shape == (2, 4000, 1, 1)
    assert enc[-1].weight.shape == (4000, 512, 4, 4)


def test_critic_matches_figure_4() -> None:
    d = BlendingCritic()
    layers = list(d.net)
    convs = [i for i, m in enumerate(layers) if isinstance(m, nn.Conv2d)]
    assert [layers[i].out_channels for i in convs] == [64, 128, 256, 512, 1]
    # first conv: LeakyReLU only; middle convs: BN then LeakyReLU; last conv: nothing after it
    assert isinstance(layers[convs[0] + 1], nn.LeakyReLU)
    for i in convs[1:-1]:
        assert isinstance(layers[i + 1], nn.BatchNorm2d) and isinstance(layers[i + 2], nn.LeakyReLU)
    assert convs[-1] == len(layers) - 1
    assert sum(isinstance(m, nn.BatchNorm2d) for m in layers) == 3
    assert not any(isinstance(m, nn.BatchNorm2d) for m in BlendingCritic(norm="none").modules())


@pytest.mark.parametrize("size", [16, 32, 64])
def test_shapes_and_range(size: int, gen: torch.Generator) -> None:
    g = BlendingGenerator(size, encoder_channels=8, decoder_channels=8, bottleneck=16)
    d = BlendingCritic(size, base_channels=8)
    x = torch.rand(3, 3, size, size, generator=gen)
    y = g(x).detach()
    assert y.shape == x.shape
    assert float(y.min()) >= 0 and float(y.max()) <= 1
    s = d(x)
    assert s.shape == (3,)
    # the score is per image: changing one image changes only its score (eval mode: no batch coupling)
    d.eval()
    s1 = d(x)
    x2 = x.clone()
    x2[1] = torch.rand(3, size, size, generator=gen)
    s2 = d(x2)
    assert torch.allclose(s1[[0, 2]], s2[[0, 2]], atol=1e-6) and not torch.allclose(s1[1], s2[1])


def test_dcgan_initialisation(paper_generator: BlendingGenerator) -> None:
    g = paper_generator
    weights = torch.cat([c.weight.flatten() for c in _convs(g)])
    assert abs(float(weights.mean())) < 1e-3 and abs(float(weights.std()) - 0.02) < 1e-3
    scales = torch.cat([m.weight for m in g.modules() if isinstance(m, nn.BatchNorm2d)])
    assert abs(float(scales.mean()) - 1) < 5e-3 and abs(float(scales.std()) - 0.02) < 5e-3


def test_gradients_reach_every_parameter(gen: torch.Generator) -> None:
    g = BlendingGenerator(32, encoder_channels=4, decoder_channels=4, bottleneck=8).double()
    d = BlendingCritic(32, base_channels=4).double()
    x = torch.rand(2, 3, 32, 32, generator=gen, dtype=torch.float64)
    d(g(x)).sum().backward()
    assert all(p.grad is not None and bool(p.grad.abs().sum() > 0) for p in g.parameters())


def test_gradcheck_critic_input() -> None:
    d = BlendingCritic(8, base_channels=2, norm="none").double()
    x = torch.rand(1, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(d, (x,))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"image_size": 48}, "power of two"), ({"image_size": 4}, "power of two"), ({"bottleneck": 0}, "bottleneck")],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        BlendingGenerator(**kwargs)


def test_bad_critic_norm() -> None:
    with pytest.raises(ValueError, match="norm"):
        BlendingCritic(norm="layer")
