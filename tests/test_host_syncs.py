"""Host synchronisations per iteration of the iterative solvers, counted on the CPU (see ``tests/syncs.py``).

Each test runs a solver for ``N`` and for ``2N`` iterations with a tolerance no sample can meet, counts the calls
that would make the host wait for a GPU, and checks that the ``N`` extra iterations cost no more than the
solver's documented budget: one transfer per ``check_every`` iterations (iPiano: plus one per trial step of
its backtracking), whatever constant the set-up and the end add.
"""

from __future__ import annotations

import math

import pytest
import torch

from fusion.methods.linear_osmosis import osmosis_filter
from fusion.ops.cg import bicgstab, conjugate_gradient
from fusion.ops.diff import laplacian
from fusion.ops.masked import masked_poisson_operator, masked_poisson_preconditioner
from fusion.ops.result import SolverResult
from fusion.ops.staggered import StaggeredGrid
from fusion.optim.evolution import time_evolution
from fusion.optim.ipiano import ipiano
from fusion.optim.ot_primal_dual import ot_primal_dual
from fusion.optim.primal_dual import chambolle_pock, prox_huber_tv
from tests.syncs import SyncCounter, count_syncs

N = 20  # iterations of the shorter run; the longer one runs 2N
NEVER = 1e-300  # a tolerance no iteration meets, so that both runs go to max_iter


def _extra(run, n: int = N) -> int:
    """How many more synchronisations ``run(2n)`` makes than ``run(n)``; both must run all their iterations."""
    counts = []
    for iterations in (n, 2 * n):
        total, calls, res = count_syncs(run, iterations)
        assert res.iterations == iterations, "the run stopped early: the tolerance was met"
        counts.append(total)
    return counts[1] - counts[0]


def _diagonal_system(gen, batch: int = 2, n: int = 50):
    d = torch.linspace(1, 1000, n, dtype=torch.float64).expand(batch, n)
    b = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    return (lambda x: d * x), b


def test_the_counter_sees_what_waits_for_the_device():
    t = torch.rand(5)
    with SyncCounter() as syncs:
        _ = t.sum().item(), bool(t.any()), float(t[0]), int(t[1]), t.tolist(), t.cpu(), t.numpy()
        _ = f"{t.sum():.3g}", str(t), torch.nonzero(t > 0.5), t[t > 0.5], t.to("cpu")
    assert syncs.total == 12
    with SyncCounter() as none:
        _ = torch.where(t > 0.5, t, 0.0).sum(), t[torch.tensor([0, 2])], t.to(device=t.device, dtype=torch.float64)
    assert none.total == 0, none.calls


@pytest.mark.parametrize("true_residual", [False, True])
@pytest.mark.parametrize("check_every", [1, 5, 10])
def test_cg_syncs_once_per_check(check_every, true_residual, gen):
    """CG: one transfer per test, and with ``true_residual`` no second one at a test that no sample passes."""
    apply_a, b = _diagonal_system(gen)
    extra = _extra(
        lambda n: conjugate_gradient(
            apply_a, b, tol=NEVER, max_iter=n, check_every=check_every, true_residual=true_residual
        )
    )
    assert extra <= N // check_every


def test_masked_poisson_cg_syncs_once_per_check(gen):
    """The same with the masked Poisson operator and its spectral preconditioner (whose set-up syncs once)."""
    region = torch.zeros(2, 1, 16, 18, dtype=torch.float64)
    region[0, 0, 3:12, 2:9] = 1
    region[1, 0, 5:15, 6:17] = 1
    region[1, 0, 9, 9] = 0
    apply_a = masked_poisson_operator(region)
    b = torch.randn(2, 1, 16, 18, generator=gen, dtype=torch.float64) * region

    def run(n):
        m_inv = masked_poisson_preconditioner(region, "jacobi")
        return conjugate_gradient(apply_a, b, precondition=m_inv, tol=NEVER, max_iter=n)

    assert _extra(run) <= N // 10


@pytest.mark.parametrize("check_every", [1, 4, 10])
def test_bicgstab_syncs_once_per_check(check_every, gen):
    apply_a, b = _diagonal_system(gen)
    extra = _extra(lambda n: bicgstab(apply_a, b, tol=NEVER, max_iter=n, check_every=check_every))
    assert extra <= N // check_every


@pytest.mark.parametrize("check_every", [1, 5])
def test_chambolle_pock_syncs_once_per_check(check_every, gen):
    z = torch.randn(3, 30, generator=gen, dtype=torch.float64)

    def run(n):
        return chambolle_pock(
            lambda x: x,
            lambda y: y,
            lambda x, t: (x + t * z) / (1 + t),
            lambda y, s: y.clamp(-0.4, 0.4),
            torch.zeros_like(z),
            torch.zeros_like(z),
            op_norm=1.0,
            strong_convexity=1.0,
            max_iter=n,
            tol=NEVER,
            check_every=check_every,
        )

    assert _extra(run) <= N // check_every


@pytest.mark.parametrize("check_every", [1, 5])
def test_huber_tv_prox_syncs_once_per_check(check_every, gen):
    z = torch.rand(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    step = 0.05 + torch.rand(z.shape, generator=gen, dtype=torch.float64)
    extra = _extra(lambda n: prox_huber_tv(z, step, eta=0.2, tol=NEVER, max_iter=n, check_every=check_every))
    assert extra <= N // check_every


def _ipiano_problem(gen, lipschitz: float, shrink: float):
    """A separable quadratic with an ℓ1 term whose prox counts its calls: one call per trial step."""
    target = torch.randn(2, 12, generator=gen, dtype=torch.float64)
    scale = torch.logspace(0, 3, 12, dtype=torch.float64)
    trials = [0]

    def prox(z, step):
        trials[0] += 1
        return torch.sign(z) * torch.clamp(z.abs() - 0.01 * step, min=0)

    def run(n, check_every):
        return ipiano(
            lambda x: 0.5 * (scale * (x - target) ** 2).sum(1),
            torch.zeros_like(target),
            prox=prox,
            beta=0.4,
            lipschitz=lipschitz,
            lipschitz_shrink=shrink,
            tol=NEVER,
            max_iter=n,
            check_every=check_every,
        )

    return run, trials


@pytest.mark.parametrize("check_every", [1, 4])
@pytest.mark.parametrize(
    "lipschitz, shrink",
    # an estimate that keeps shrinking makes the line search backtrack again and again; one above the curvature
    # that never shrinks is accepted at the first trial of every iteration
    [(1.0, 0.9), (4000.0, 1.0)],
    ids=["backtracking", "first-trial"],
)
def test_ipiano_syncs_once_per_trial_and_once_per_check(lipschitz, shrink, check_every, gen):
    """iPiano: one transfer per trial of its line search (the decision to try again cannot wait), plus one per
    ``check_every`` iterations for the stopping test."""
    run, trials = _ipiano_problem(gen, lipschitz, shrink)
    spent = []
    for n in (N, 2 * N):
        trials[0] = 0
        total, _, res = count_syncs(run, n, check_every)
        assert res.iterations == n
        spent.append((total, trials[0]))
    extra, extra_trials = spent[1][0] - spent[0][0], spent[1][1] - spent[0][1]
    assert extra <= extra_trials + N // check_every
    if shrink == 1.0:
        assert extra_trials == N and extra == N + N // check_every
    else:
        assert extra_trials > N


@pytest.mark.parametrize("model", ["constrained", "penalized"])
@pytest.mark.parametrize("check_every", [5, 10])
def test_ot_primal_dual_syncs_once_per_check(model, check_every, gen):
    grid = StaggeredGrid(steps=4, channels=3, height=6, width=7)
    f0 = torch.rand(2, 3, 6, 7, generator=gen, dtype=torch.float64) + 0.1
    f1 = torch.rand(2, 3, 6, 7, generator=gen, dtype=torch.float64) + 0.1
    kw = dict(model=model, lam=2.0, tau=2.0, tol=NEVER, check_every=check_every)
    extra = _extra(lambda n: ot_primal_dual(f0, f1, grid, max_iter=n, **kw))
    assert extra <= N // check_every


def test_time_evolution_adds_no_sync_of_its_own(gen):
    """The evolution loop transfers nothing per step: an explicit step costs none, an implicit one what its
    linear solve costs."""
    u0 = torch.rand(2, 3, 8, 9, generator=gen, dtype=torch.float64) + 0.1

    def explicit(u):
        return 0.9 * u + 0.1 * u.mean((-2, -1), keepdim=True), None

    for steps in (N, 2 * N):
        total, calls, res = count_syncs(time_evolution, u0, explicit, steps=steps)
        assert total == 0 and res.iterations == steps, calls

    def implicit(u):  # (I − τΔ) x = u along the rows by BiCGSTAB, whose budget per solve is known
        res = bicgstab(lambda x: x - 2.0 * laplacian(x, bc="neumann"), u, tol=NEVER, max_iter=7, check_every=3)
        assert res.iterations == 7
        return res.solution, res

    per_solve = count_syncs(lambda: implicit(u0))[0]
    assert per_solve == math.ceil(7 / 3) + 1  # the checks before iterations 1, 4 and 7, and the count at the end
    extra = _extra(lambda n: time_evolution(u0, implicit, steps=n, tol=1e-8), n=5)
    assert extra == 5 * per_solve


def test_osmosis_filter_syncs_only_in_its_linear_solves(gen):
    """The implicit osmosis filter: per time step, the CG solve's checks and nothing else."""
    v = torch.rand(1, 2, 10, 12, generator=gen, dtype=torch.float64) + 0.2
    u0 = torch.rand(1, 2, 10, 12, generator=gen, dtype=torch.float64) + 0.2
    cg_iterations = 30

    def run(steps):
        with pytest.warns(Warning):  # no step's solve meets the tolerance
            res = osmosis_filter(u0, v, tau=5.0, steps=steps, max_iter=cg_iterations, tol=NEVER)
        return SolverResult(res.solution, steps, res.history, res.converged)

    assert _extra(run, n=4) <= 4 * math.ceil(cg_iterations / 10)
