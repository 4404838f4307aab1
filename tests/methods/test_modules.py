"""Each method's ``nn.Module`` equals its function and works as a layer of a training graph."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion.methods import (
    GaussianPoissonBlend,
    GPGANBlend,
    OTInterpolate,
    PoissonBlend,
    gaussian_poisson_blend,
    gaussian_poisson_solve,
    gpgan_blend,
    gpgan_solve,
    ot_interpolate,
    ot_solve,
    poisson_blend,
    poisson_solve,
)
from fusion.nn.gpgan import BlendingGenerator


def _inputs(dtype=torch.float64, batch=2, size=(14, 18)):
    g = torch.Generator().manual_seed(3)
    fg = torch.rand(batch, 3, *size, generator=g, dtype=dtype)
    bg = torch.rand(batch, 3, *size, generator=g, dtype=dtype)
    mask = torch.zeros(batch, 1, *size, dtype=dtype)
    mask[0, :, 3:10, 4:12] = 1
    mask[-1, :, 5:12, 2:9] = 1
    return fg, bg, mask


def _generator(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return BlendingGenerator(image_size=16, encoder_channels=4, decoder_channels=4, bottleneck=8).to(dtype).eval()


POISSON = [
    {"solver": "exact", "tol": 1e-10},
    {"solver": "spectral"},
    {"solver": "inertial", "tol": 1e-7, "max_iter": 4000},
    {"solver": "exact", "mixed": True, "precondition": "jacobi", "tol": 1e-10},
]


@pytest.mark.parametrize("options", POISSON, ids=lambda o: "-".join(str(v) for v in o.values()))
def test_poisson_module_blend_and_solve_agree(options) -> None:
    fg, bg, mask = _inputs()
    layer = PoissonBlend(**options)
    expected = poisson_blend(fg, bg, mask, **options)
    assert torch.equal(layer(fg, bg, mask), expected)
    result = poisson_solve(fg, bg, mask, **options)
    assert torch.equal(result.image, expected)
    if options["solver"] == "spectral":
        assert result.solver is None and bool(result.converged.all())
    else:
        assert torch.equal(result.solver.solution, expected) and result.solver.all_converged
    assert "solver=" in repr(layer)


def test_gaussian_poisson_module_blend_and_solve_agree() -> None:
    fg, bg, mask = _inputs()
    color = torch.rand(2, 3, 6, 6, dtype=torch.float64)
    options = {"beta": 0.7, "sigma": 0.8, "levels": 2}
    expected = gaussian_poisson_blend(fg, bg, mask, color=color, **options)
    assert torch.equal(GaussianPoissonBlend(**options)(fg, bg, mask, color), expected)
    result = gaussian_poisson_solve(fg, bg, mask, color=color, **options)
    assert torch.equal(result.image, expected) and result.solver is None
    assert [tuple(x.shape[-2:]) for x in result.levels] == [(7, 9), (14, 18)]
    assert torch.equal(result.levels[-1], expected)


def test_gpgan_module_blend_and_solve_agree() -> None:
    fg, bg, mask = _inputs()
    g = _generator()
    expected = gpgan_blend(fg, bg, mask, generator=g, levels=2, beta=0.8)
    layer = GPGANBlend(g, levels=2, beta=0.8)
    assert torch.equal(layer(fg, bg, mask), expected)
    assert set(dict(layer.named_parameters())) == {f"generator.{k}" for k, _ in g.named_parameters()}
    result = gpgan_solve(fg, bg, mask, generator=g, levels=2, beta=0.8)
    assert torch.equal(result.image, expected) and result.color.shape == (2, 3, 16, 16)
    with pytest.raises(TypeError, match="generator must be a torch.nn.Module"):
        GPGANBlend(lambda x: x)


def test_ot_module_interpolate_and_solve_agree() -> None:
    f0 = torch.ones(2, 3, 6, 7, dtype=torch.float64)
    f0[..., :3] = 2.0
    f1 = f0.flip(-1)
    options = {"steps": 4, "tol": 1e-4, "max_iter": 2000}
    expected = ot_interpolate(f0, f1, **options)
    assert torch.equal(OTInterpolate(**options)(f0, f1), expected)
    result = ot_solve(f0, f1, **options)
    assert torch.equal(result.image, expected) and result.frames is result.image
    assert result.cost.shape == (2,) and result.solver.all_converged


def _train(layer: nn.Module, inputs, steps: int = 4) -> tuple[torch.Tensor, list[float]]:
    """A per-channel gain on the first input, then ``layer``, then an MSE loss to a fixed target; Adam."""
    gain = nn.Parameter(torch.full((1, inputs[0].shape[1], 1, 1), 0.6, dtype=inputs[0].dtype))
    params = [gain, *layer.parameters()]
    opt = torch.optim.Adam(params, lr=0.05)
    target = inputs[0].detach()
    losses = []
    first_grad = None
    for _ in range(steps):
        opt.zero_grad()
        out = layer(inputs[0] * gain, *inputs[1:])
        ref = target if out.shape == target.shape else target.expand_as(out)
        loss = (out - ref).pow(2).mean()
        loss.backward()
        if first_grad is None:
            first_grad = gain.grad.detach().clone()
        opt.step()
        losses.append(float(loss.detach()))
    return first_grad, losses


@pytest.mark.parametrize(
    "make",
    [
        lambda: (PoissonBlend(solver="exact"), _inputs(torch.float32)),
        lambda: (PoissonBlend(solver="spectral"), _inputs(torch.float32)),
        lambda: (PoissonBlend(solver="inertial", max_iter=5000), _inputs(torch.float32)),
        lambda: (GaussianPoissonBlend(levels=2), _inputs(torch.float32)),
        lambda: (GPGANBlend(_generator(torch.float32), levels=2), _inputs(torch.float32)),
        lambda: (
            OTInterpolate(steps=2, model="penalized", max_iter=25, tol=1e-12),
            (torch.rand(1, 3, 5, 5, generator=torch.Generator().manual_seed(0)) + 0.5, torch.ones(1, 3, 5, 5)),
        ),
    ],
    ids=["poisson-exact", "poisson-spectral", "poisson-inertial", "gaussian_poisson", "gpgan", "ot"],
)
def test_module_trains_as_a_layer(make) -> None:
    layer, inputs = make()
    with pytest.warns() if isinstance(layer, OTInterpolate) else _no_warning():
        grad, losses = _train(layer, inputs)
    assert torch.isfinite(grad).all() and bool(grad.abs().sum() > 0)
    assert losses[-1] < losses[0], losses
    if isinstance(layer, GPGANBlend):
        assert all(p.grad is not None for p in layer.parameters())


class _no_warning:
    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings()
        self._ctx.__enter__()
        warnings.simplefilter("error")
        return self

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)
