import pytest
import torch

from fusion.optim import ipiano


def test_quadratic_reaches_minimiser_and_decreases(gen):
    a = torch.randn(2, 6, 6, generator=gen, dtype=torch.float64)
    a = a @ a.transpose(1, 2) + torch.eye(6, dtype=torch.float64)
    target = torch.randn(2, 6, generator=gen, dtype=torch.float64)

    def energy(x):
        d = (x - target).unsqueeze(-1)
        return 0.5 * (d.transpose(1, 2) @ a @ d).flatten()

    res = ipiano(energy, torch.zeros(2, 6, dtype=torch.float64), beta=0.5, tol=1e-15, max_iter=20000)
    torch.testing.assert_close(res.solution, target, atol=1e-6, rtol=0)
    # backtracking grew the Lipschitz estimate from 1 to at least half the largest eigenvalue
    lmax = torch.linalg.eigvalsh(a)[:, -1]
    assert bool((res.info["lipschitz"][0] >= 0.5 * lmax).all())


def test_energy_monotone_without_inertia(gen):
    target = torch.randn(3, 10, generator=gen, dtype=torch.float64)
    scale = torch.linspace(1, 50, 10, dtype=torch.float64)

    def energy(x):
        return 0.5 * (scale * (x - target) ** 2).sum(1) + 0.1 * (x**4).sum(1)

    res = ipiano(energy, torch.zeros(3, 10, dtype=torch.float64), beta=0.0, tol=1e-12, max_iter=3000)
    steps = res.history[1:] - res.history[:-1]
    assert bool((steps <= 1e-12).all())
    assert res.all_converged


def test_prox_l1_soft_threshold():
    """min ½‖x − y‖² + λ‖x‖₁ has the closed form soft(y, λ)."""
    y = torch.tensor([[2.0, -0.3, 0.7, -1.5]], dtype=torch.float64)
    lam = 0.5

    def prox(z, step):
        return torch.sign(z) * torch.clamp(z.abs() - step * lam, min=0)

    def full(x):
        return 0.5 * ((x - y) ** 2).sum(1) + lam * x.abs().sum(1)

    res = ipiano(
        lambda x: 0.5 * ((x - y) ** 2).sum(1),
        torch.zeros_like(y),
        prox=prox,
        beta=0.3,
        tol=1e-15,
        max_iter=2000,
        objective=full,
    )
    torch.testing.assert_close(res.solution, torch.sign(y) * torch.clamp(y.abs() - lam, min=0))


def test_two_blocks_coupled():
    """f(u, v) = ½(u − 1)² + ½(v + 2)² + ½(u − v)²/4 with both blocks updated per iteration."""

    def energy(u, v):
        return (0.5 * (u - 1) ** 2 + 0.5 * (v + 2) ** 2 + 0.125 * (u - v) ** 2).sum(1)

    u0 = torch.zeros(1, 1, dtype=torch.float64)
    res = ipiano(energy, (u0, u0.clone()), beta=(0.4, 0.2), tol=1e-15, max_iter=5000)
    u, v = res.solution
    # stationarity: (u − 1) + (u − v)/4 = 0 and (v + 2) − (u − v)/4 = 0
    torch.testing.assert_close(u, torch.tensor([[0.5]], dtype=torch.float64))
    torch.testing.assert_close(v, torch.tensor([[-1.5]], dtype=torch.float64))


def test_bad_parameters():
    with pytest.raises(ValueError, match="beta"):
        ipiano(lambda x: x.sum(1), torch.zeros(1, 2), beta=1.0)
    with pytest.raises(ValueError, match="one entry per block"):
        ipiano(lambda u, v: u.sum(1), (torch.zeros(1, 2), torch.zeros(1, 2)), beta=[0.1])
