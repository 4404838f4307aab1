"""The README's table of gradients is true: each row's function backpropagates to exactly the inputs it names
(a finite, non-zero gradient), or refuses inputs that require grad. The gradient values themselves are checked
by the gradchecks next to each method's tests; this test keeps the table and the code in step."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch

from fusion.methods import (
    deep_blend,
    feather_blend,
    gaussian_poisson_blend,
    gpgan_blend,
    laplacian_pyramid_blend,
    linear_osmosis_blend,
    mpb_blend,
    msb_blend,
    ot_interpolate,
    paste_blend,
    poisson_blend,
)
from fusion.methods.linear_osmosis import osmosis_filter
from fusion.methods.osmosis import osmosis_solve
from fusion.nn.gpgan import BlendingGenerator

ROOT = Path(__file__).resolve().parents[1]
H, W = 12, 14


def _table() -> dict[str, str]:
    """``first column → second column`` of the README's gradient table."""
    text = (ROOT / "README.md").read_text()
    start = text.index("Gradients, per method")
    rows = {}
    for line in text[start:].splitlines()[1:]:
        if not line.strip():
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].startswith("`"):
            rows[cells[0]] = cells[1]
    return rows


def _inputs():
    gen = torch.Generator().manual_seed(0)
    fg = (0.2 + 0.6 * torch.rand(1, 3, H, W, generator=gen, dtype=torch.float64)).requires_grad_()
    bg = (0.2 + 0.6 * torch.rand(1, 3, H, W, generator=gen, dtype=torch.float64)).requires_grad_()
    mask = torch.zeros(1, 1, H, W, dtype=torch.float64)
    mask[..., 3:9, 4:10] = 1
    mask = mask.requires_grad_()
    return fg, bg, mask


def _generator():
    torch.manual_seed(0)
    return BlendingGenerator(image_size=32, encoder_channels=4, decoder_channels=4, bottleneck=8).double().eval()


def _named_grads(loss, named):
    grads = torch.autograd.grad(loss, list(named.values()), allow_unused=True)
    return {name: g for name, g in zip(named, grads)}


def _poisson(solver):
    def run():
        fg, bg, mask = _inputs()
        named = {"fg": fg, "bg": bg}
        if solver == "spectral":
            named["mask"] = mask
            out = poisson_blend(fg, bg, mask, solver=solver)
        else:
            out = poisson_blend(fg, bg, mask.detach(), solver=solver, max_iter=20000, tol=1e-8)
        return _named_grads((out * torch.linspace(0, 1, W, dtype=out.dtype)).sum(), named)

    return run


def _gp():
    fg, bg, mask = _inputs()
    a = gaussian_poisson_blend(fg, bg, mask, levels=2)
    b = gpgan_blend(fg, bg, mask, generator=_generator(), levels=2)
    return _named_grads((a + b).square().sum(), {"fg": fg, "bg": bg, "mask": mask})


def _osmosis():
    fg, bg, mask = _inputs()
    alpha = (mask.detach() * 0.9 + 0.05).requires_grad_()
    out = osmosis_solve(fg, bg, alpha, tol=1e-10, max_iter=200)
    u, v = out.image, out.v
    filt = linear_osmosis_blend(fg, bg, mask.detach(), tau=10.0, steps=2)
    grads = _named_grads((u.square() + v + filt.square()).sum(), {"fg": fg, "bg": bg, "alpha": alpha})
    u0, v0, _ = _inputs()
    lin = osmosis_filter(u0, v0, tau=10.0, steps=2).solution
    return {
        **grads,
        **_named_grads((lin.square() * torch.linspace(0, 1, W, dtype=lin.dtype)).sum(), {"u0": u0, "v": v0}),
    }


def _ot():
    fg, bg, _ = _inputs()
    frames = ot_interpolate(fg, bg * fg.sum().detach() / bg.sum().detach(), steps=3, max_iter=30)
    return _named_grads(frames[1].square().sum() + frames[2].sum(), {"f0": fg, "f1": bg})


def _baselines(which):
    def run():
        fg, bg, mask = _inputs()
        if which == "soft":
            out = paste_blend(fg, bg, mask) + laplacian_pyramid_blend(fg, bg, mask, levels=3) + mpb_blend(fg, bg, mask)
            named = {"fg": fg, "bg": bg, "mask": mask}
        elif which == "feather":
            out = feather_blend(fg, bg, mask.detach(), width=2)
            named = {"fg": fg, "bg": bg}
            wide = _named_grads(feather_blend(fg, bg, mask, width=0).square().sum(), {"mask (width=0)": mask})
        else:
            out = msb_blend(fg, bg, mask.detach(), spacing=4)
            named = {"fg": fg, "bg": bg}
        grads = _named_grads((out * torch.linspace(0, 1, W, dtype=out.dtype)).square().sum(), named)
        return {**grads, **wide} if which == "feather" else grads

    return run


RUNS = {
    '`poisson_blend`, `solver="spectral"`': _poisson("spectral"),
    '`poisson_blend`, `"exact"` / `"inertial"`': lambda: {
        **_poisson("exact")(),
        **{k + " (inertial)": g for k, g in _poisson("inertial")().items()},
    },
    "`gaussian_poisson_blend`, `gpgan_blend`": _gp,
    "`osmosis_blend`, `osmosis_filter`, `linear_osmosis_blend`": _osmosis,
    "`ot_interpolate`": _ot,
    "`paste_blend`, `laplacian_pyramid_blend`, `mpb_blend`": _baselines("soft"),
    "`feather_blend`": _baselines("feather"),
    "`msb_blend`": _baselines("msb"),
}


def test_the_table_has_one_row_per_checked_function() -> None:
    assert set(_table()) == set(RUNS) | {"`deep_blend`"}


@pytest.mark.parametrize("row", sorted(RUNS))
def test_each_row_backpropagates_to_the_inputs_it_names(row: str) -> None:
    named = re.findall(r"`([^`]+)`", _table()[row])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the short runs here may stop at their caps
        grads = RUNS[row]()
    for name in named:
        found = [g for key, g in grads.items() if key.split(" ")[0] == name]
        assert found, f"{row}: no gradient checked for {name}"
        for g in found:
            assert g is not None and bool(torch.isfinite(g).all()) and float(g.abs().max()) > 0, (row, name)
    assert set(key.split(" ")[0] for key in grads) == set(named), row


def test_deep_blend_refuses_inputs_that_require_grad() -> None:
    assert _table()["`deep_blend`"] == "nothing"
    fg, bg, mask = _inputs()
    few = {"max_iter": 1}
    with pytest.raises(ValueError, match="not differentiable"):
        deep_blend(fg.float(), bg.float(), mask.float(), vgg_weights="random", stage1=few, stage2=few)
