"""Every method on CUDA against the CPU, in float32, on small real photographs (skipped without a CUDA device).

Each comparison runs the same call three times: on the CPU in float64 (the reference), on the CPU in float32 and on
CUDA in float32. CUDA passes when its distance to the reference is within a small factor of the CPU's float32
distance plus a floor sized to the method (direct solves: round-off; iterative ones: their stopping tolerance), so
the check measures CUDA against what float32 itself allows rather than against a guessed constant. TF32 is turned
off for these comparisons: with it CUDA's float32 convolutions and matrix products round to 10-bit mantissas.

Methods that turn on bfloat16 autocast themselves (Deep Image Blending on CUDA) are also compared in that mode, and
every FFT-based path is run under ``torch.autocast("cuda", dtype=torch.bfloat16)`` to check that it keeps float32
(cuFFT has no bfloat16 transforms, and a transform of rounded data would lose the solve's accuracy).
"""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import pytest
import torch
import torch.nn.functional as F

from fusion import ConvergenceWarning
from fusion.methods import (
    alpha_map,
    gaussian_poisson_blend,
    gpgan_blend,
    linear_osmosis_blend,
    osmosis_solve,
    ot_interpolate,
    poisson_blend,
    poisson_solve,
)
from fusion.nn.gpgan import BlendingGenerator

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

CUDA = torch.device("cuda")
FACTOR = 10.0  # CUDA may be this many times further from the float64 reference than the CPU's float32


@pytest.fixture(autouse=True)
def full_float32():
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _photo(name: str, h: int, w: int) -> torch.Tensor:
    from skimage import data

    image = torch.from_numpy(getattr(data, name)().copy()).permute(2, 0, 1)[None].double() / 255
    return F.interpolate(image, size=(h, w), mode="area")


def _ellipse(h: int, w: int) -> torch.Tensor:
    yy = torch.arange(h, dtype=torch.float64)[:, None]
    xx = torch.arange(w, dtype=torch.float64)[None, :]
    return ((((yy - h / 2) / (0.3 * h)) ** 2 + ((xx - w / 2) / (0.3 * w)) ** 2) < 1).double()[None, None]


def _pair(h: int = 24, w: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of two float64 samples (the second mirrored), so that CUDA's batching is compared too."""
    fg, bg, mask = _photo("astronaut", h, w), _photo("coffee", h, w), _ellipse(h, w)
    both = lambda x: torch.cat([x, x.flip(-1)])  # noqa: E731
    return both(fg), both(bg), both(mask)


def _quiet(fn: Callable[[], torch.Tensor]) -> torch.Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # fixed, short iteration counts on purpose
        with torch.no_grad():
            return fn()


def _compare(run: Callable[..., torch.Tensor], inputs: tuple[torch.Tensor, ...], floor: float) -> torch.Tensor:
    """``run(*inputs)`` on CPU float64, CPU float32 and CUDA float32; asserts CUDA's float32 is as close to the
    float64 result as the CPU's float32 allows (:data:`FACTOR`, plus ``floor``); returns the CUDA result."""
    ref = _quiet(lambda: run(*(t.double() for t in inputs)))
    cpu = _quiet(lambda: run(*(t.float() for t in inputs)))
    gpu = _quiet(lambda: run(*(t.float().to(CUDA) for t in inputs)))
    assert gpu.device.type == "cuda" and gpu.dtype == torch.float32 and gpu.shape == ref.shape
    assert bool(torch.isfinite(gpu).all())
    err_cpu = float((cpu.double() - ref).abs().max())
    err_gpu = float((gpu.cpu().double() - ref).abs().max())
    assert err_gpu <= FACTOR * err_cpu + floor, f"CUDA float32 {err_gpu:.3g} from float64, CPU float32 {err_cpu:.3g}"
    return gpu


class _PerDevice:
    """One copy of a module per (device, dtype), all with the same weights."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.copies = module.double().eval(), {}

    def __call__(self, like: torch.Tensor) -> torch.nn.Module:
        key = (like.device.type, like.dtype)
        if key not in self.copies:
            self.copies[key] = copy.deepcopy(self.module).to(device=like.device, dtype=like.dtype)
        return self.copies[key]


def _generator() -> _PerDevice:
    torch.manual_seed(0)
    return _PerDevice(BlendingGenerator(image_size=32, encoder_channels=8, decoder_channels=8, bottleneck=16))


# ----------------------------------------------------------------------------------------------------------------
# float32: CUDA against the CPU, every method
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("solver", "floor"),
    [("spectral", 1e-5), ("exact", 1e-4), ("inertial", 1e-4)],
    ids=["spectral", "exact", "inertial"],
)
def test_poisson(solver, floor):
    _compare(lambda fg, bg, m: poisson_blend(fg, bg, m, solver=solver), _pair(), floor)


def test_poisson_record_on_cuda():
    fg, bg, mask = (t.float() for t in _pair())
    cpu = poisson_solve(fg, bg, mask, solver="exact").solver
    gpu = poisson_solve(fg.to(CUDA), bg.to(CUDA), mask.to(CUDA), solver="exact").solver
    assert bool(gpu.converged.all()) and abs(gpu.iterations - cpu.iterations) <= 2


def test_gaussian_poisson():
    _compare(lambda fg, bg, m: gaussian_poisson_blend(fg, bg, m, levels=2), _pair(), 1e-5)


def test_gpgan_with_a_random_generator():
    g = _generator()
    _compare(lambda fg, bg, m: gpgan_blend(fg, bg, m, generator=g(fg)), _pair(48, 64), 1e-5)


def test_deep_blend_float32():
    from fusion.methods import deep_blend  # imported here: its API is the one most likely to move
    from fusion.nn.vgg import VGG16Features

    vgg = _PerDevice(VGG16Features("random"))
    fg, bg, mask = _pair(32, 32)
    init = torch.rand(fg.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def run(fg, bg, m, init):
        return deep_blend(
            fg, bg, m, vgg_weights=vgg(fg), init=init, stage1={"max_iter": 2}, stage2={"max_iter": 2},
            stop_early=False, mixed_precision=False,
        )  # fmt: skip

    _compare(run, (fg, bg, mask, init), 1e-3)


def test_osmosis():
    fg, bg, mask = _pair()
    alpha = alpha_map(mask, kind="gaussian", sigma=2.0)
    _compare(lambda f, b, a: osmosis_solve(f, b, a, max_iter=200).image, (fg, bg, alpha), 1e-3)


def test_linear_osmosis():
    _compare(lambda fg, bg, m: linear_osmosis_blend(fg, bg, m, steps=3), _pair(), 1e-4)


def _densities(h: int = 8, w: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    f0, f1 = _photo("astronaut", h, w) + 0.01, _photo("coffee", h, w) + 0.01
    return f0, f1 * f0.sum() / f1.sum()


def test_ot():
    _compare(lambda a, b: ot_interpolate(a, b, steps=4, max_iter=40), _densities(), 1e-4)


# ----------------------------------------------------------------------------------------------------------------
# reduced precision: the method's own bf16 autocast, and FFT paths that must stay float32 under autocast
# ----------------------------------------------------------------------------------------------------------------


def test_deep_blend_bf16_autocast_is_close_to_float32():
    from fusion.methods import deep_blend_solve
    from fusion.nn.vgg import VGG16Features

    vgg = VGG16Features("random").to(CUDA)
    fg, bg, mask = (t.float().to(CUDA) for t in _pair(32, 32))
    init = torch.rand(fg.shape, generator=torch.Generator().manual_seed(0)).to(CUDA)

    def run(amp: bool):
        return deep_blend_solve(
            fg, bg, mask, vgg_weights=vgg, init=init, stage1={"max_iter": 3}, stage2={"max_iter": 3},
            stop_early=False, mixed_precision=amp,
        )  # fmt: skip

    runs = {amp: _quiet(lambda: run(amp)) for amp in (False, True)}
    full, half = runs[False].image, runs[True].image
    assert half.dtype == torch.float32 and bool(torch.isfinite(half).all())
    assert float((half - full).abs().mean()) < 0.03  # bf16 features: about 3 significant digits per pass
    e_full, e_half = runs[False].solver.history[-1], runs[True].solver.history[-1]
    assert bool(torch.isfinite(e_half).all())
    torch.testing.assert_close(e_half, e_full, rtol=0.1, atol=0.0)


_AUTOCAST_CASES = {
    "poisson_spectral": (lambda fg, bg, m: poisson_blend(fg, bg, m, solver="spectral"), 1e-5),
    "poisson_exact": (lambda fg, bg, m: poisson_blend(fg, bg, m, solver="exact"), 1e-4),
    "gaussian_poisson": (lambda fg, bg, m: gaussian_poisson_blend(fg, bg, m, levels=2), 1e-5),
}


@pytest.mark.parametrize("name", list(_AUTOCAST_CASES))
def test_fft_paths_stay_float32_under_autocast(name):
    run, atol = _AUTOCAST_CASES[name]
    fg, bg, mask = (t.float().to(CUDA) for t in _pair())
    full = _quiet(lambda: run(fg, bg, mask))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = _quiet(lambda: run(fg, bg, mask))
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, full, atol=atol, rtol=0.0)


def test_gpgan_under_autocast_keeps_float32_solves():
    # the generator's convolutions run in bf16 under autocast; the pyramid's DCT solves must not
    g = _generator()
    fg, bg, mask = (t.float().to(CUDA) for t in _pair(48, 64))
    gen = g(fg)
    full = _quiet(lambda: gpgan_blend(fg, bg, mask, generator=gen))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = _quiet(lambda: gpgan_blend(fg, bg, mask, generator=gen))
    assert mixed.dtype == torch.float32 and bool(torch.isfinite(mixed).all())
    assert float((mixed - full).abs().max()) < 0.05


def test_ot_stays_float32_under_autocast():
    f0, f1 = (t.float().to(CUDA) for t in _densities())
    full = _quiet(lambda: ot_interpolate(f0, f1, steps=4, max_iter=40))
    with torch.autocast("cuda", dtype=torch.bfloat16):
        mixed = _quiet(lambda: ot_interpolate(f0, f1, steps=4, max_iter=40))
    assert mixed.dtype == torch.float32
    torch.testing.assert_close(mixed, full, atol=1e-5, rtol=0.0)


# ----------------------------------------------------------------------------------------------------------------
# gradients on CUDA
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["spectral", "exact"])
def test_poisson_gradients_match_the_cpu(solver):
    fg, bg, mask = (t.float() for t in _pair())
    weight = torch.rand(fg.shape, generator=torch.Generator().manual_seed(1))
    grads = {}
    for device in ("cpu", "cuda"):
        x = fg.to(device).requires_grad_(True)
        out = poisson_blend(x, bg.to(device), mask.to(device), solver=solver)
        (out * weight.to(device)).sum().backward()
        grads[device] = x.grad.cpu()
    torch.testing.assert_close(grads["cuda"], grads["cpu"], atol=1e-4, rtol=1e-3)
