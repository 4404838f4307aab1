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


def test_diagonal_metric_removes_bad_scaling(gen):
    """A separable quadratic with curvatures over six decades: the scalar step crawls, the metric step does not."""
    target = torch.randn(2, 12, generator=gen, dtype=torch.float64)
    scale = torch.logspace(0, 6, 12, dtype=torch.float64)

    def energy(x):
        return 0.5 * (scale * (x - target) ** 2).sum(1)

    x0 = torch.zeros(2, 12, dtype=torch.float64)
    plain = ipiano(energy, x0, beta=0.4, tol=1e-14, max_iter=300)
    scaled = ipiano(energy, x0, beta=0.4, tol=1e-14, max_iter=300, metric=lambda x: [scale])
    assert scaled.all_converged and not plain.all_converged
    torch.testing.assert_close(scaled.solution, target, atol=1e-6, rtol=0)
    assert scaled.iterations < 100
    # relative to the metric the Lipschitz estimate stays of order one
    assert bool((scaled.info["lipschitz"][0] < 4).all())


def test_metric_prox_gets_elementwise_steps_and_joint_test_is_monotone(gen):
    """Two blocks, an ℓ1 prox on one of them, a diagonal metric per block, β = 0: the objective never increases
    and the solution solves the prox-gradient fixed point (soft threshold of the coupled minimiser)."""
    y = torch.randn(3, 8, generator=gen, dtype=torch.float64)
    su = torch.linspace(1, 100, 8, dtype=torch.float64)
    sv = torch.linspace(100, 1, 8, dtype=torch.float64)
    lam = 0.3
    seen = []

    def smooth(u, v):
        return 0.5 * (su * (u - y) ** 2).sum(1) + 0.5 * (sv * (v - u) ** 2).sum(1)

    def prox(z, step):
        seen.append(step.shape)
        return torch.sign(z) * torch.clamp(z.abs() - step * lam, min=0)

    res = ipiano(
        smooth,
        (torch.zeros_like(y), torch.zeros_like(y)),
        prox=(None, prox),
        beta=0.0,
        tol=1e-15,
        max_iter=3000,
        objective=lambda u, v: smooth(u, v) + lam * v.abs().sum(1),
        metric=lambda u, v: [su + sv, sv],
        descent_test="joint",
    )
    assert seen and all(s == y.shape for s in seen)
    steps = res.history[1:] - res.history[:-1]
    assert bool((steps <= 1e-12 * res.history[1:].abs()).all())
    u, v = res.solution
    # optimality: u minimises the smooth part given v, and v = soft(u, λ / sv)
    torch.testing.assert_close(u, (su * y + sv * v) / (su + sv), atol=1e-7, rtol=0)
    torch.testing.assert_close(v, torch.sign(u) * torch.clamp(u.abs() - lam / sv, min=0), atol=1e-7, rtol=0)


def test_bad_descent_test():
    with pytest.raises(ValueError, match="descent_test"):
        ipiano(lambda x: x.sum(1), torch.zeros(1, 2), descent_test="both-ways")
