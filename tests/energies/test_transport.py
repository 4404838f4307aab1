"""The Benamou–Brenier cost J and its prox: cubic roots against NumPy, prox against brute-force minimisation."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from fusion.energies.transport import cubic_largest_root, kinetic_energy, prox_kinetic, transport_cost

pytestmark = pytest.mark.usefixtures("single_thread")


def _cases(gen, n=200):
    f = torch.randn(n, generator=gen, dtype=torch.float64) * 2
    m = torch.randn(n, 3, generator=gen, dtype=torch.float64) * torch.rand(n, 1, generator=gen, dtype=torch.float64) * 3
    gamma = torch.rand(n, generator=gen, dtype=torch.float64) * 2 + 0.01
    return f, m, gamma


def test_cubic_root_matches_numpy(gen):
    f, m, gamma = _cases(gen, 300)
    m_sq = (m * m).sum(1)
    # include the regime with three real roots (f̃ well below −γ, small momentum) and m = 0
    f[:50] = -3 - torch.rand(50, generator=gen, dtype=torch.float64)
    m_sq[:50] = 1e-3 * torch.rand(50, generator=gen, dtype=torch.float64)
    m_sq[50:60] = 0
    root = cubic_largest_root(f, m_sq, gamma)
    for a, c2, g, r in zip(f.tolist(), m_sq.tolist(), gamma.tolist(), root.tolist()):
        coeffs = [1, 2 * g - a, g * g - 2 * a * g, -a * g * g - 0.5 * g * c2]
        ref = max(z.real for z in np.roots(coeffs) if abs(z.imag) < 1e-6 * (1 + abs(z.real)))
        assert r == pytest.approx(ref, abs=1e-8 * (1 + abs(ref)))


def test_cubic_root_float32(gen):
    f, m, gamma = _cases(gen)
    m_sq = (m * m).sum(1)
    r64 = cubic_largest_root(f, m_sq, gamma)
    r32 = cubic_largest_root(f.float(), m_sq.float(), gamma.float())
    assert torch.allclose(r32.double(), r64, rtol=1e-4, atol=1e-5)


def _brute_prox(m, f, gamma):
    """Minimise γ J(m, f) + ½|m − m̃|² + ½(f − f̃)² numerically over f > 0; compare with the point (0, 0)."""
    m = np.asarray(m)

    def obj(z):
        mm, ff = z[:-1], z[-1]
        return gamma * (mm @ mm) / (2 * ff) + 0.5 * ((mm - m) ** 2).sum() + 0.5 * (ff - f) ** 2

    x0 = np.concatenate([m * 0.5, [max(f, 0) + 1.0]])
    res = minimize(
        obj,
        x0,
        method="L-BFGS-B",
        bounds=[(None, None)] * m.size + [(1e-12, None)],
        options={"ftol": 1e-15, "gtol": 1e-12, "maxiter": 5000},
    )
    zero = 0.5 * (m @ m) + 0.5 * f * f
    if zero <= res.fun:
        return np.zeros_like(m), 0.0, zero
    return res.x[:-1], res.x[-1], res.fun


def test_prox_matches_brute_force(gen):
    f, m, gamma = _cases(gen, 40)
    (mx, my, mc), fs = prox_kinetic((m[:, 0], m[:, 1], m[:, 2]), f, gamma)
    ms = torch.stack([mx, my, mc], 1)
    for i in range(40):
        g = gamma[i].item()
        bm, bf, bval = _brute_prox(m[i].numpy(), f[i].item(), g)
        ours = g * kinetic_energy((ms[i] ** 2).sum(), fs[i]).item() + 0.5 * ((ms[i] - m[i]) ** 2).sum().item()
        ours += 0.5 * (fs[i].item() - f[i].item()) ** 2
        assert ours <= bval + 1e-9  # never worse than the numerical minimiser
        assert fs[i].item() == pytest.approx(bf, abs=1e-4)
        assert np.allclose(ms[i].numpy(), bm, atol=1e-4)


def test_prox_gray_and_zero_branch():
    (m,), f = prox_kinetic((torch.tensor([0.0, 0.1]),), torch.tensor([-1.0, -5.0]), 0.5)
    assert torch.equal(f, torch.zeros(2)) and torch.equal(m, torch.zeros(2))
    (m,), f = prox_kinetic((torch.tensor([0.0]),), torch.tensor([2.0]), 0.5)  # no momentum: f unchanged
    assert f.item() == pytest.approx(2.0) and m.item() == 0.0
    out_m, _ = prox_kinetic((torch.ones(2), None), torch.ones(2), 1.0)
    assert out_m[1] is None


def test_moreau_dual_lies_in_parabola(gen):
    """prox_{σJ*}(z) = z − σ prox_{J/σ}(z/σ) must land in dom J* = {(a, b): b + |a|²/2 ≤ 0}."""
    f, m, _ = _cases(gen, 500)
    sigma = 0.7
    (mx, my, mc), pf = prox_kinetic((m[:, 0] / sigma, m[:, 1] / sigma, m[:, 2] / sigma), f / sigma, 1 / sigma)
    a = m - sigma * torch.stack([mx, my, mc], 1)
    b = f - sigma * pf
    assert (b + 0.5 * (a * a).sum(1)).max() < 1e-9


def test_kinetic_energy_and_cost():
    assert kinetic_energy(torch.tensor(4.0), torch.tensor(2.0)).item() == 1.0
    assert kinetic_energy(torch.tensor(0.0), torch.tensor(0.0)).item() == 0.0
    assert math.isinf(kinetic_energy(torch.tensor(1.0), torch.tensor(0.0)).item())
    assert math.isinf(kinetic_energy(torch.tensor(0.0), torch.tensor(-1.0)).item())
    f = torch.full((2, 3, 4), 2.0)
    mx = torch.ones_like(f)
    cost = transport_cost(mx, mx, None, f, 0.5)
    assert torch.allclose(cost, torch.full((2,), 12 * (2 / 4) * 0.5))


def test_prox_gradcheck():
    gen = torch.Generator().manual_seed(3)
    m = torch.randn(6, generator=gen, dtype=torch.float64).requires_grad_()
    f = (torch.rand(6, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()

    def fn(m, f):
        (mo,), fo = prox_kinetic((m,), f, 0.7)
        return mo, fo

    assert torch.autograd.gradcheck(fn, (m, f))
