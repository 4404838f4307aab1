"""The Poisson-type energies against Pérez's equations assembled by SciPy and GP-GAN's dense eq. (9)."""

import numpy as np
import scipy.ndimage as nd
import torch

from fusion.energies import gaussian_poisson_energy, poisson_energy, region_edges
from fusion.methods import gaussian_poisson_level, guidance_field
from fusion.ops.diff import div, grad
from fusion.ops.filters import gaussian_blur_dct
from tests.reference import perez_reference


def test_region_edges_are_the_edges_touching_the_region():
    region = torch.zeros(1, 1, 4, 5)
    region[0, 0, 1, 1] = 1
    region[0, 0, 3, 4] = 1
    edges = region_edges(region)[0, 0]
    down = {(i, j) for i in range(3) for j in range(5) if region[0, 0, i, j] or region[0, 0, i + 1, j]}
    right = {(i, j) for i in range(4) for j in range(4) if region[0, 0, i, j] or region[0, 0, i, j + 1]}
    assert {tuple(p) for p in torch.nonzero(edges[0]).tolist()} == down
    assert {tuple(p) for p in torch.nonzero(edges[1]).tolist()} == right
    # a soft region counts where it is above one half
    soft = 0.45 * torch.ones(1, 1, 4, 5)
    soft[0, 0, 1, 1] = 0.55
    soft[0, 0, 3, 4] = 0.9
    assert torch.equal(region_edges(soft), edges[None, None])


def test_poisson_energy_value_and_its_minimiser_is_perez(gen):
    """Stationary on Ω exactly at the SciPy solution of Pérez's equations; its value by an explicit edge sum."""
    h, w = 9, 11
    fg = torch.rand(1, 1, h, w, generator=gen, dtype=torch.float64)
    bg = torch.rand(1, 1, h, w, generator=gen, dtype=torch.float64)
    region = (torch.rand(1, 1, h, w, generator=gen) > 0.5).double()
    field = guidance_field(fg, bg)
    edges = region_edges(region)
    u = torch.from_numpy(perez_reference(fg[0, 0].numpy(), bg[0, 0].numpy(), region[0, 0].numpy() > 0.5))
    u = u[None, None].clone().requires_grad_()
    (g,) = torch.autograd.grad(poisson_energy(u, field, edges).sum(), u)
    assert float((g * region).abs().max()) < 1e-12
    # value: ½ Σ over edges touching Ω of ((u_q − u_p) − (fg_q − fg_p))²
    un, fn, rn = u.detach()[0, 0].numpy(), fg[0, 0].numpy(), region[0, 0].numpy() > 0.5
    total = 0.0
    for i in range(h):
        for j in range(w):
            for y, x in ((i + 1, j), (i, j + 1)):
                if y < h and x < w and (rn[i, j] or rn[y, x]):
                    total += 0.5 * ((un[y, x] - un[i, j]) - (fn[y, x] - fn[i, j])) ** 2
    assert abs(float(poisson_energy(u.detach(), field, edges)[0]) - total) < 1e-12
    # a perturbation on Ω raises the energy (a minimum, not only a stationary point)
    bump = u.detach() + 1e-3 * region * torch.rand(1, 1, h, w, generator=gen, dtype=torch.float64)
    assert float(poisson_energy(bump, field, edges)[0]) > total


def test_gaussian_poisson_energy_is_minimised_by_the_closed_form(gen):
    h, w = 8, 10
    fg, bg, color = (torch.rand(2, 1, h, w, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = (torch.rand(2, 1, h, w, generator=gen) > 0.5).double()
    beta, sigma = 0.7, 0.9
    x = gaussian_poisson_level(fg, bg, mask, color, beta=beta, sigma=sigma).requires_grad_()
    m = mask.unsqueeze(-3)
    divergence = div(m * grad(fg) + (1 - m) * grad(bg))

    def energy(z):
        return gaussian_poisson_energy(z, divergence, color, lambda t: gaussian_blur_dct(t, sigma), beta)

    (g,) = torch.autograd.grad(energy(x).sum(), x)
    assert float(g.abs().max()) < 1e-10
    e0 = energy(x.detach())
    assert e0.shape == (2,)
    for _ in range(3):
        other = x.detach() + 1e-2 * torch.randn(2, 1, h, w, generator=gen, dtype=torch.float64)
        assert bool((energy(other) > e0).all())
    # value: ‖u − L x‖² + β‖G x − x̃‖² with L, G applied as NumPy arrays
    lap = x.detach()[0, 0].numpy()
    lap = np.pad(lap, 1, mode="edge")
    lx = lap[:-2, 1:-1] + lap[2:, 1:-1] + lap[1:-1, :-2] + lap[1:-1, 2:] - 4 * lap[1:-1, 1:-1]
    gx = nd.gaussian_filter(x.detach()[0, 0].numpy(), sigma, mode="reflect")
    ref = ((divergence[0, 0].numpy() - lx) ** 2).sum() + beta * ((gx - color[0, 0].numpy()) ** 2).sum()
    assert abs(float(e0[0]) - ref) < 1e-10 * max(1.0, ref)
