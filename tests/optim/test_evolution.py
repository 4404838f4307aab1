"""The time-evolution loop: what it records for explicit and implicit step operators."""

import pytest
import torch

from fusion.ops.result import SolverResult
from fusion.optim.evolution import STEP_CRITERION, time_evolution


def _diffusion(u: torch.Tensor) -> torch.Tensor:
    """``A u`` of 1-D diffusion along W with no flux across the ends (conservative: columns of A sum to 0)."""
    flux = u[..., 1:] - u[..., :-1]
    out = torch.zeros_like(u)
    out[..., :-1] += flux
    out[..., 1:] -= flux
    return out


def test_explicit_steps_equal_the_matrix_power_and_conserve_mass(gen):
    u0 = torch.rand(2, 3, 1, 7, generator=gen, dtype=torch.float64) + 0.1
    tau, steps = 0.3, 5
    res = time_evolution(u0, lambda u: (u + tau * _diffusion(u), None), steps=steps)
    n = u0.shape[-1]
    a = torch.stack([_diffusion(torch.eye(n, dtype=torch.float64)[i].view(1, 1, 1, n)).flatten() for i in range(n)], 1)
    expected = torch.linalg.matrix_power(torch.eye(n, dtype=torch.float64) + tau * a, steps) @ u0.reshape(-1, n).T
    torch.testing.assert_close(res.solution.reshape(-1, n), expected.T, rtol=1e-13, atol=1e-14)
    assert res.iterations == steps and res.history.shape == (steps + 1, 2) and float(res.history[0].abs().max()) == 0
    mass = res.info["mass"]
    assert mass.shape == (steps + 1, 2, 3) and float(((mass - mass[0]).abs() / mass[0]).max()) < 1e-14
    assert res.all_converged and res.tol is None and res.reached is None and "explicit" in res.criterion
    # the recorded change of step k is ‖u_k − u_{k−1}‖ / ‖u_k‖ per sample
    one = time_evolution(u0, lambda u: (u + tau * _diffusion(u), None), steps=1)
    change = (one.solution - u0).flatten(1).norm(dim=1) / one.solution.flatten(1).norm(dim=1)
    torch.testing.assert_close(res.history[1], change, rtol=1e-14, atol=0)


def test_implicit_steps_report_their_linear_solves():
    """Each step's solve: ``converged`` is the and of all its flags, ``reached`` the largest final residual (a
    non-finite one counts as inf), ``krylov_iterations`` the total, ``criterion``/``tol`` those of the solves."""
    finals = iter([[1e-9, 2e-9], [3e-9, float("nan")], [5e-10, 1e-9]])
    oks = iter([[True, True], [True, False], [True, True]])

    def step(u):
        final = torch.tensor(next(finals), dtype=torch.float64)
        solve = SolverResult(u, 4, torch.stack([torch.ones(2, dtype=torch.float64), final]), torch.tensor(next(oks)))
        return 0.5 * u, solve

    u0 = torch.ones(2, 1, 2, 2, dtype=torch.float64)
    res = time_evolution(u0, step, steps=3, tol=1e-8)
    assert res.converged.tolist() == [True, False] and res.criterion == STEP_CRITERION and res.tol == 1e-8
    assert res.reached.tolist() == [3e-9, float("inf")] and res.info["krylov_iterations"] == 12
    torch.testing.assert_close(res.solution, u0 / 8)
    torch.testing.assert_close(res.history[1:], torch.ones(3, 2, dtype=torch.float64))
    halves = torch.tensor([4.0, 2.0, 1.0, 0.5], dtype=torch.float64)  # the mass after each step (not conserved here)
    torch.testing.assert_close(res.info["mass"], halves.view(4, 1, 1).expand(4, 2, 1))


@pytest.mark.parametrize("tol", [None, 1e-6])
def test_no_steps_returns_the_start(tol):
    u0 = torch.rand(1, 2, 3, 4, dtype=torch.float64)
    res = time_evolution(u0, lambda u: pytest.fail("no step expected"), steps=0, tol=tol)
    assert res.solution is u0 and res.iterations == 0 and res.history.shape == (1, 1) and res.all_converged
    assert (res.reached is None) == (tol is None)
