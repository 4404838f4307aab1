import numpy as np
import pytest
import torch

from fusion.energies.osmosis import (
    fidelity_energy,
    geometric_blend,
    huber_tv,
    osmosis_energy,
    osmosis_fusion_term,
    osmosis_grad_u,
    osmosis_grad_v,
    prox_fidelity,
    variational_osmosis_energy,
)
from fusion.ops.osmosis import canonical_drift, osmosis_operator
from tests.conftest import tol_for


def _photo(which: str, h: int, w: int, dtype=torch.float64) -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(getattr(data, which)().copy()).permute(2, 0, 1)[None].to(dtype) / 255
    return torch.nn.functional.interpolate(img, size=(h, w), mode="area")


def _autograd(u, v, target, mu):
    u = u.detach().requires_grad_(True)
    v = v.detach().requires_grad_(True)
    gu, gv = torch.autograd.grad(osmosis_fusion_term(u, v, target, mu).sum(), (u, v))
    return gu, gv


@pytest.mark.parametrize("source", ["random", "photo"])
def test_autograd_matches_analytic_gradients(source, device, dtype, gen):
    """Autograd of O (eq. 11) against the hand-derived eqs. (14) and (15)."""
    if source == "random":
        u = torch.rand(2, 3, 9, 13, generator=gen, dtype=dtype) + 0.1
        v = torch.rand(2, 3, 9, 13, generator=gen, dtype=dtype) + 0.1
    else:
        u = _photo("astronaut", 24, 30, dtype) * 255 + 1
        v = _photo("coffee", 24, 30, dtype) * 255 + 1
    target = v * 0.9 + 0.05
    u, v, target = u.to(device), v.to(device), target.to(device)
    gu, gv = _autograd(u, v, target, 7.0)
    scale = max(1.0, float(gv.abs().max()), float(gu.abs().max()))
    tol = tol_for(dtype) * 100 * scale
    torch.testing.assert_close(gu, osmosis_grad_u(u, v), atol=tol, rtol=0)
    torch.testing.assert_close(gv, osmosis_grad_v(u, v, target, 7.0), atol=tol, rtol=0)


def test_grad_u_is_eq14_with_the_osmosis_operator(gen):
    u = torch.rand(1, 3, 10, 12, generator=gen, dtype=torch.float64) + 0.1
    v = torch.rand(1, 3, 10, 12, generator=gen, dtype=torch.float64) + 0.1
    torch.testing.assert_close(osmosis_grad_u(u, v), -osmosis_operator(u, canonical_drift(v)) / v)


def test_grad_v_tends_to_the_continuum_formula():
    """On a smooth field the discrete ∂_v O₁ approaches ½|∇(u/v)|² + (u/v²) div(v ∇(u/v)) (the paper's (15))."""
    errs = []
    for n in (64, 256):
        h = 1.0 / n
        t = (torch.arange(n, dtype=torch.float64) + 0.5) * h
        y, x = torch.meshgrid(t, t, indexing="ij")
        u = (2 + torch.sin(2 * np.pi * x) * torch.cos(2 * np.pi * y))[None, None]
        v = (2 + torch.cos(2 * np.pi * x) * torch.cos(2 * np.pi * y))[None, None]
        # grid spacing h: the discrete energy with unit spacing equals ∫ … dx · h⁰, so divide the gradient by h²
        g = osmosis_grad_v(u, v, v, 0.0) / h**2
        # continuum, by central differences of the analytic fields on a finer stencil (interior points only)
        w = u / v
        w_y, w_x = np.gradient(w[0, 0].numpy(), h)
        v_np = v[0, 0].numpy()
        flux_y, flux_x = v_np * w_y, v_np * w_x
        dv = np.gradient(flux_y, h, axis=0) + np.gradient(flux_x, h, axis=1)
        cont = 0.5 * (w_y**2 + w_x**2) + (u[0, 0].numpy() / v_np**2) * dv
        inner = (slice(4, -4), slice(4, -4))
        errs.append(np.abs(g[0, 0].numpy()[inner] - cont[inner]).max() / np.abs(cont[inner]).max())
    assert errs[1] < 2e-3
    assert errs[1] < errs[0] / 4  # second order


def test_osmosis_energy_zero_exactly_on_multiples_of_v(gen):
    v = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64) + 0.2
    assert osmosis_energy(4.2 * v, v).abs().max() < 1e-12
    u = torch.rand(2, 3, 8, 8, generator=gen, dtype=torch.float64) + 0.2
    assert bool((osmosis_energy(u, v) > 0).all())


def test_energy_terms_against_numpy(gen):
    f = torch.rand(1, 3, 6, 7, generator=gen, dtype=torch.float64) + 0.1
    b = torch.rand(1, 3, 6, 7, generator=gen, dtype=torch.float64) + 0.1
    a = torch.rand(1, 1, 6, 7, generator=gen, dtype=torch.float64)
    u = torch.rand(1, 3, 6, 7, generator=gen, dtype=torch.float64) + 0.1
    np.testing.assert_allclose(geometric_blend(f, b, a).numpy(), (f**a * b ** (1 - a)).numpy(), rtol=1e-12)
    np.testing.assert_allclose(fidelity_energy(u, f, a).item(), 0.5 * float((a * (u - f) ** 2).sum()), rtol=1e-12)
    # Huber TV written out pixel by pixel
    vn = u[0].numpy()
    ref = 0.0
    for c in range(3):
        for y in range(6):
            for x in range(7):
                gy = vn[c, y + 1, x] - vn[c, y, x] if y < 5 else 0.0
                gx = vn[c, y, x + 1] - vn[c, y, x] if x < 6 else 0.0
                t = np.hypot(gy, gx)
                ref += t * t / 0.1 if t <= 0.05 else t - 0.025
    np.testing.assert_allclose(huber_tv(u, 0.05).item(), ref, rtol=1e-12)
    full = variational_osmosis_energy(u, b, f, a, geometric_blend(f, b, a), mu=3.0, gamma=2.0, eta=0.5)
    parts = osmosis_fusion_term(u, b, geometric_blend(f, b, a), 3.0) + 2 * fidelity_energy(u, f, a)
    np.testing.assert_allclose(full.item(), (parts + 0.5 * huber_tv(b, 0.05)).item(), rtol=1e-12)


def test_huber_tv_gradcheck_and_finite_at_zero():
    g = torch.Generator().manual_seed(5)
    v = torch.rand(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: huber_tv(x, 0.3), (v,))
    flat = torch.ones(1, 1, 4, 4, dtype=torch.float64, requires_grad=True)
    (gr,) = torch.autograd.grad(huber_tv(flat, 0.05).sum(), flat)
    assert bool(torch.isfinite(gr).all()) and gr.abs().max() == 0


def test_prox_fidelity_is_the_minimiser(gen):
    """Eq. (16): the closed form zeroes the gradient of γ/2 ‖√α (u − f)‖² + ‖u − z‖²/(2ζ)."""
    z = torch.randn(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    f = torch.rand(2, 3, 5, 6, generator=gen, dtype=torch.float64)
    a = torch.rand(2, 1, 5, 6, generator=gen, dtype=torch.float64)
    step = torch.tensor([0.3, 2.0], dtype=torch.float64).view(2, 1, 1, 1)
    p = prox_fidelity(z, f, a, 1.7, step)
    residual = 1.7 * a * (p - f) + (p - z) / step
    assert residual.abs().max() < 1e-12


def test_u_block_hessian_matches_autograd_double_backward(gen):
    """``u_block_hessian`` is the exact Hessian of ``O(·, v) + γ D(·)`` in u: Hessian-vector products by double
    backward agree, and so does its diagonal (the Jacobi preconditioner)."""
    from fusion.energies.osmosis import u_block_hessian

    shape = (2, 3, 7, 9)
    u = 1 + 254 * torch.rand(shape, generator=gen, dtype=torch.float64)
    v = 1 + 254 * torch.rand(shape, generator=gen, dtype=torch.float64)
    f = 1 + 254 * torch.rand(shape, generator=gen, dtype=torch.float64)
    target = 1 + 254 * torch.rand(shape, generator=gen, dtype=torch.float64)
    alpha = torch.rand(2, 1, 7, 9, generator=gen, dtype=torch.float64)
    x = torch.randn(shape, generator=gen, dtype=torch.float64)
    gamma = 1.3

    def block_energy(u_):
        return (osmosis_fusion_term(u_, v, target, 100.0) + gamma * fidelity_energy(u_, f, alpha)).sum()

    leaf = u.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(block_energy(leaf), leaf, create_graph=True)
    (hx,) = torch.autograd.grad((g * x).sum(), leaf)
    apply, _ = u_block_hessian(v, alpha, gamma)
    torch.testing.assert_close(apply(x), hx, rtol=1e-10, atol=1e-12 * float(hx.abs().max()))
    # the diagonal, column by column on one small sample
    small = (slice(0, 1), slice(0, 1), slice(0, 3), slice(0, 4))
    vs, fs, ts, as_ = v[small], f[small], target[small], alpha[small]
    full = torch.autograd.functional.hessian(
        lambda z: (
            osmosis_fusion_term(z.view_as(vs), vs, ts, 100.0) + gamma * fidelity_energy(z.view_as(vs), fs, as_)
        ).sum(),
        u[small].flatten(),
    )
    torch.testing.assert_close(u_block_hessian(vs, as_, gamma)[1].flatten(), torch.diagonal(full))
    # symmetric positive semi-definite, and the multiples of v are its kernel when α = 0
    assert torch.linalg.eigvalsh(full).min() > -1e-12 * full.abs().max()
    zero, _ = u_block_hessian(v, torch.zeros_like(alpha), gamma)
    assert zero(3.0 * v).abs().max() < 1e-10
