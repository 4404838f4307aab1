"""Staggered-grid operators of dynamic optimal transport: adjoints, norms, and A Aᵀ against the spectral Laplacian."""

from __future__ import annotations

import pytest
import torch

from fusion.ops.poisson import solve_poisson
from fusion.ops.staggered import (
    Centred,
    Staggered,
    StaggeredGrid,
    continuity,
    continuity_adjoint,
    continuity_rhs,
    divergence,
    divergence_adjoint,
    full_density,
    interpolate,
    interpolate_adjoint,
    interpolate_boundary,
    time_difference,
    time_difference_adjoint,
)
from tests.conftest import tol_for

GRIDS = {
    "gray": StaggeredGrid(4, 1, 5, 6),
    "rgb-periodic": StaggeredGrid(3, 3, 4, 5, "periodic"),
    "rgb-mirror": StaggeredGrid(3, 3, 4, 5, "mirror"),
    "two-channel-periodic": StaggeredGrid(2, 2, 3, 2, "periodic"),
}


pytestmark = pytest.mark.usefixtures("single_thread")


def _random(grid, batch, dtype, device, gen):
    z = grid.zeros(batch, dtype=dtype)
    return Staggered(*(None if x is None else torch.randn(x.shape, generator=gen, dtype=dtype).to(device) for x in z))


def _dot(a, b):
    return sum((x * y).sum() for x, y in zip(a, b) if x is not None)


def _flat(u):
    return torch.cat([x.reshape(-1) for x in u if x is not None])


def _unflat(vec, like):
    out, i = [], 0
    for x in like:
        if x is None:
            out.append(None)
            continue
        out.append(vec[i : i + x.numel()].reshape(x.shape))
        i += x.numel()
    return type(like)(*out)


def dense_continuity(grid):
    """A as a dense matrix (cells × staggered unknowns), built column by column from :func:`continuity`."""
    z = grid.zeros(1, dtype=torch.float64)
    n = _flat(z).numel()
    cols = []
    for j in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[j] = 1
        cols.append(continuity(_unflat(e, z), grid).reshape(-1))
    return torch.stack(cols, 1)


def test_shapes_and_colour_faces():
    assert GRIDS["rgb-periodic"].zeros(2, dtype=torch.float32).mc.shape == (2, 3, 3, 4, 5)
    # mirror colour: no flux across the B|R wrap, so 3 channels have 2 interior faces
    assert GRIDS["rgb-mirror"].zeros(2, dtype=torch.float32).mc.shape == (2, 3, 2, 4, 5)
    gray = GRIDS["gray"].zeros(2, dtype=torch.float32)
    assert gray.mc is None and gray.mx.shape == (2, 4, 1, 4, 6) and gray.f.shape == (2, 3, 1, 5, 6)


@pytest.mark.parametrize("name", list(GRIDS))
def test_adjoints(name, device, dtype, gen):
    grid = GRIDS[name]
    u = _random(grid, 2, dtype, device, gen)
    v = interpolate(u, grid)
    w = Centred(*(None if x is None else torch.randn(x.shape, generator=gen, dtype=dtype).to(device) for x in v))
    tol = tol_for(dtype) * 10
    assert abs(_dot(interpolate(u, grid), w) - _dot(u, interpolate_adjoint(w, grid))) < tol
    r = torch.randn(v.f.shape, generator=gen, dtype=dtype).to(device)
    scale = 1 + _dot(u, u).sqrt() * r.norm() * 10  # the differences carry 1/h factors
    assert abs((continuity(u, grid) * r).sum() - _dot(u, continuity_adjoint(r, grid))) < tol * scale
    assert abs((divergence(u.mx, u.my, u.mc, grid) * r).sum() - _dot(u[:3], divergence_adjoint(r, grid))) < tol * scale
    assert abs((time_difference(u.f, grid) * r).sum() - (u.f * time_difference_adjoint(r, grid)).sum()) < tol * scale


@pytest.mark.parametrize(
    "grid", [StaggeredGrid(3, 1, 4, 3), StaggeredGrid(2, 3, 3, 2, "periodic"), StaggeredGrid(2, 3, 3, 2, "mirror")]
)
def test_interpolation_norm_at_most_one(grid):
    z = grid.zeros(1, dtype=torch.float64)
    n = _flat(z).numel()
    cols = []
    for j in range(n):
        e = torch.zeros(n, dtype=torch.float64)
        e[j] = 1
        cols.append(_flat(interpolate(_unflat(e, z), grid)))
    s = torch.stack(cols, 1)
    assert torch.linalg.eigvalsh(s.T @ s).max() <= 1 + 1e-12


@pytest.mark.parametrize("name", list(GRIDS))
def test_aat_is_the_spectral_laplacian(name, gen):
    """A Aᵀ built densely from A must be exactly the Laplacian that the DCT/FFT solver inverts."""
    grid = GRIDS[name]
    a = dense_continuity(grid)
    aat = a @ a.T
    shape = (1, grid.steps, grid.channels, grid.height, grid.width)
    rhs = torch.randn(shape, generator=gen, dtype=torch.float64)
    rhs = rhs - rhs.mean()
    w = solve_poisson(rhs, grid.poisson_bc, dims=(1, 2, 3, 4), spacing=grid.spacing)
    assert torch.allclose(aat @ w.reshape(-1), rhs.reshape(-1), atol=1e-9)
    # the kernel of A Aᵀ is exactly the constants (the mass condition)
    eig = torch.linalg.eigvalsh(aat)
    assert eig[0].abs() < 1e-8 and eig[1] > 1e-3


def test_time_part_is_the_dirichlet_laplacian():
    grid = GRIDS["gray"]
    p = grid.steps
    dt = torch.zeros(p, p - 1, dtype=torch.float64)
    for j in range(p - 1):
        e = torch.zeros(1, p - 1, 1, 1, 1, dtype=torch.float64)
        e[0, j] = 1
        dt[:, j] = time_difference(e, grid).reshape(-1)
    lap = (2 * torch.eye(p - 1) - torch.diag(torch.ones(p - 2), 1) - torch.diag(torch.ones(p - 2), -1)) * p**2
    assert torch.allclose(dt.T @ dt, lap.double())


def test_static_density_satisfies_continuity(gen):
    grid = GRIDS["rgb-periodic"]
    f0 = torch.rand(2, 3, 4, 5, generator=gen, dtype=torch.float64)
    u = grid.zeros(2, dtype=torch.float64)
    u = u._replace(f=f0.unsqueeze(1).expand(-1, grid.steps - 1, -1, -1, -1))
    assert torch.allclose(continuity(u, grid), continuity_rhs(f0, f0, grid), atol=1e-12)
    s = interpolate(u, grid).f + interpolate_boundary(f0, f0, grid)
    assert torch.allclose(s, f0.unsqueeze(1).expand_as(s))
    assert full_density(u.f, f0, f0).shape == (2, grid.steps + 1, 3, 4, 5)


def test_gradcheck():
    grid = GRIDS["rgb-periodic"]
    gen = torch.Generator().manual_seed(0)
    u = _random(grid, 1, torch.float64, "cpu", gen)
    leaves = [x.requires_grad_() for x in u]
    assert torch.autograd.gradcheck(lambda *xs: continuity(Staggered(*xs), grid), leaves)
    assert torch.autograd.gradcheck(lambda *xs: tuple(interpolate(Staggered(*xs), grid)), leaves)
