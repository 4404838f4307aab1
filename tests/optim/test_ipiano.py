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


def test_default_stopping_rule_is_the_relative_energy_change(gen):
    """Without a criterion a sample stops at the first iteration (after min_iter) whose relative energy change is
    below tol; ``reached`` reports that change, computed here from the energy history."""
    target = torch.randn(1, 5, generator=gen, dtype=torch.float64)
    scale = torch.linspace(1, 20, 5, dtype=torch.float64)

    def energy(x):
        return 0.5 * (scale * (x - target) ** 2).sum(1) + 1.0

    res = ipiano(energy, torch.zeros(1, 5, dtype=torch.float64), beta=0.3, tol=1e-9, max_iter=5000, min_iter=5)
    e = res.history[:, 0]
    rel = (e[1:] - e[:-1]).abs() / e[1:].abs()
    assert res.all_converged and res.criterion == "relative energy change" and res.tol == 1e-9
    assert float(rel[-1]) < 1e-9 and bool((rel[4:-1] >= 1e-9).all())
    torch.testing.assert_close(res.reached, rel[-1:], rtol=1e-12, atol=0)
    assert res.info["iterations"].tolist() == [res.iterations] and "criterion_history" not in res.info


def test_criterion_replaces_the_stopping_rule(gen):
    """A caller-supplied criterion (here the gradient norm of a quadratic) decides convergence, per sample."""
    target = torch.randn(3, 6, generator=gen, dtype=torch.float64)
    scale = torch.stack([torch.linspace(1, s, 6, dtype=torch.float64) for s in (2.0, 20.0, 200.0)])

    def energy(x):
        return 0.5 * (scale * (x - target) ** 2).sum(1)

    def gradient_norm(x):
        return torch.linalg.vector_norm(scale * (x - target), dim=1)

    def run(idx):
        return ipiano(
            lambda x: 0.5 * (scale[idx] * (x - target[idx]) ** 2).sum(1),
            torch.zeros_like(target[idx]),
            beta=0.5,
            tol=1e-8,
            max_iter=20000,
            min_iter=1,
            criterion=lambda x: torch.linalg.vector_norm(scale[idx] * (x - target[idx]), dim=1),
            criterion_name="gradient norm",
        )

    res = run(slice(None))
    assert res.all_converged and res.criterion == "gradient norm"
    final = gradient_norm(res.solution)
    assert bool((final <= 1e-8).all())
    torch.testing.assert_close(res.reached, final, rtol=0, atol=0)
    counts = res.info["iterations"]
    assert len(set(counts.tolist())) == 3
    hist = res.info["criterion_history"]
    assert hist.shape == (res.iterations, 3)
    for i in range(3):
        k = int(counts[i])
        assert float(hist[k - 1, i]) <= 1e-8 and bool((hist[: k - 1, i] > 1e-8).all())
        alone = run(slice(i, i + 1))
        assert alone.info["iterations"].tolist() == [k]
        torch.testing.assert_close(alone.solution, res.solution[i : i + 1], rtol=0, atol=1e-15)
    assert energy(res.solution).max() < 1e-12


def test_criterion_not_met_at_the_cap():
    target = torch.ones(1, 4, dtype=torch.float64)
    res = ipiano(
        lambda x: 0.5 * ((x - target) ** 2).sum(1),
        torch.zeros(1, 4, dtype=torch.float64),
        max_iter=3,
        tol=1e-12,
        criterion=lambda x: (x - target).abs().amax(1),
    )
    assert res.iterations == 3 and not res.all_converged
    assert float(res.reached[0]) == pytest.approx(float((res.solution - target).abs().max()))


def test_default_rule_reached_is_each_samples_own_stopping_value(gen):
    """In a batch, a sample that stops early keeps its own final relative change (not the frozen zeros after)."""
    target = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    scale = torch.stack([torch.linspace(1, 2, 5), torch.linspace(1, 200, 5)]).double()
    res = ipiano(
        lambda x: 0.5 * (scale * (x - target) ** 2).sum(1) + 1.0, torch.zeros_like(target), tol=1e-10, max_iter=20000
    )
    counts = res.info["iterations"]
    assert int(counts[0]) < int(counts[1]) == res.iterations
    e = res.history[:, 0]
    k = int(counts[0])
    torch.testing.assert_close(res.reached[:1], ((e[k] - e[k - 1]).abs() / e[k].abs())[None], rtol=1e-12, atol=0)
    assert float(res.reached[0]) > 0


def test_min_iter_iterations_exactly_when_already_at_the_minimum():
    target = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    res = ipiano(lambda x: 0.5 * ((x - target) ** 2).sum(1) + 1.0, target.clone(), min_iter=7, tol=1e-8)
    assert res.iterations == 7 and res.all_converged


# ------------------------------------------------------------------ exact blocks, closed-form gradients, prox state


def _coupled(gen, batch=3):
    """``f(u, v) = ½ Σ a (u − y)² + ½ Σ s (v − u)²`` with ``g(v) = λ‖v‖₁``: for fixed v the exact u-block is
    ``(a y + s v)/(a + s)``; at the minimiser ``v = soft(u, λ/s)``."""
    y = torch.randn(batch, 8, generator=gen, dtype=torch.float64)
    a = torch.linspace(1, 100, 8, dtype=torch.float64)
    s = torch.stack([torch.linspace(100 / k, 1, 8, dtype=torch.float64) for k in range(1, batch + 1)])
    lam = 0.3

    def smooth(u, v):
        return 0.5 * (a * (u - y) ** 2).sum(1) + 0.5 * (s[: u.shape[0]] * (v - u) ** 2).sum(1) + 1.0

    def soft(z, step):
        return torch.sign(z) * torch.clamp(z.abs() - step * lam, min=0)

    return y, a, s, lam, smooth, soft


def test_exact_block_with_a_prox_block_reaches_the_coupled_minimiser(gen):
    """Gauss–Seidel iPiano with an exact u-block and an inertial ℓ1-prox step in v (``monotone``): the objective
    never increases, the result is the fixed point of both blocks, the block solver sees only the active samples
    and the previous stopping value (inf before the first iteration), and each sample follows its own path."""
    y, a, s, lam, smooth, soft = _coupled(gen)
    calls = []

    def run(idx):
        yy, ss = y[idx], s[idx]

        def solve_u(blocks, active, progress):
            calls.append((active.clone(), progress.clone()))
            return (a * yy + ss * blocks[1]) / (a + ss)

        return ipiano(
            lambda u, v: 0.5 * (a * (u - yy) ** 2).sum(1) + 0.5 * (ss * (v - u) ** 2).sum(1) + 1.0,
            (torch.zeros_like(yy), torch.zeros_like(yy)),
            prox=(None, soft),
            block_solve=(solve_u, None),
            beta=(0.0, 0.5),
            monotone=True,
            nonsmooth=(None, lambda v: lam * v.abs().sum(1)),
            objective=lambda u, v: (
                0.5 * (a * (u - yy) ** 2).sum(1) + 0.5 * (ss * (v - u) ** 2).sum(1) + 1.0 + lam * v.abs().sum(1)
            ),
            tol=1e-14,
            max_iter=5000,
        )

    res = run(slice(None))
    u, v = res.solution
    assert res.all_converged and res.info["lipschitz"][0] is None
    # the minimiser in closed form: eliminating u leaves ½ Σ w (v − y)² + λ‖v‖₁ with w = a s / (a + s)
    v_star = soft(y, (a + s) / (a * s))
    u_star = (a * y + s * v_star) / (a + s)
    torch.testing.assert_close(v, v_star, atol=1e-5, rtol=0)
    torch.testing.assert_close(u, u_star, atol=1e-5, rtol=0)
    steps = res.history[1:] - res.history[:-1]
    assert bool((steps <= 1e-12 * res.history[1:].abs()).all())
    assert bool(torch.isinf(calls[0][1]).all()) and bool(calls[0][0].all())
    counts = res.info["iterations"]
    assert len(set(counts.tolist())) > 1  # the samples stop at different iterations
    last = calls[-1][0]
    assert last.tolist() == (counts == res.iterations).tolist()  # stopped samples are no longer solved
    for i in range(3):
        alone = run(slice(i, i + 1))
        assert alone.iterations == int(counts[i])
        for block, single in zip(res.solution, alone.solution):
            assert torch.equal(block[i : i + 1], single)


def test_closed_form_gradient_replaces_autograd(gen):
    y, a, s, lam, smooth, soft = _coupled(gen, batch=2)

    def gradient(u, v):
        return smooth(u, v), (a * (u - y) - s[:2] * (v - u), s[:2] * (v - u))

    kw = dict(prox=(None, soft), beta=0.3, tol=1e-13, max_iter=3000, descent_test="joint")
    by_hand = ipiano(smooth, (torch.zeros_like(y), torch.zeros_like(y)), gradient=gradient, **kw)
    auto = ipiano(smooth, (torch.zeros_like(y), torch.zeros_like(y)), **kw)
    assert by_hand.all_converged and by_hand.iterations == auto.iterations
    for x, z in zip(by_hand.solution, auto.solution):
        torch.testing.assert_close(x, z, atol=1e-12, rtol=0)


def test_prox_state_is_that_of_the_accepted_trial(gen):
    """A stateful prox records its step: every trial of an iteration gets the current state, and a sample keeps the
    state of the trial it accepted, i.e. the step c·2/L of the final Lipschitz estimate (backtracking grew L from 1,
    so the first trial of an iteration would give another value)."""
    target = torch.randn(2, 6, generator=gen, dtype=torch.float64)
    scale = torch.stack([torch.linspace(1, 40, 6), torch.linspace(1, 90, 6)]).double()
    seen = []

    def prox(z, step, state):
        seen.append(state[0].clone())
        return z, (step.flatten(1)[:, 0].clone(),)

    res = ipiano(
        lambda x: 0.5 * (scale * (x - target) ** 2).sum(1) + 1.0,
        torch.zeros_like(target),
        prox=prox,
        prox_state=[(torch.full((2,), -1.0, dtype=torch.float64),)],
        beta=0.0,
        tol=1e-12,
        max_iter=5000,
    )
    lip = res.info["lipschitz"][0]
    assert bool((lip > 1).all()) and res.all_converged
    (final,) = res.info["prox_state"][0]
    torch.testing.assert_close(final, 0.99 * 2 / lip, rtol=1e-15, atol=0)
    assert seen[0].tolist() == [-1.0, -1.0]


def test_monotone_keeps_heavy_inertia_from_raising_the_objective(gen):
    target = torch.randn(2, 10, generator=gen, dtype=torch.float64)
    scale = torch.logspace(0, 2, 10, dtype=torch.float64)

    def energy(x):
        return 0.5 * (scale * (x - target) ** 2).sum(1) + 1.0

    x0 = torch.zeros(2, 10, dtype=torch.float64)
    plain = ipiano(energy, x0, beta=0.9, tol=1e-13, max_iter=5000)
    safe = ipiano(energy, x0, beta=0.9, tol=1e-13, max_iter=5000, monotone=True)
    rise = lambda r: float((r.history[1:] - r.history[:-1]).max())  # noqa: E731
    assert rise(plain) > 1e-3 and rise(safe) <= 1e-12
    assert bool((safe.info["inertia_resets"] > 0).all())
    assert safe.all_converged
    torch.testing.assert_close(safe.solution, target, atol=1e-5, rtol=0)


def test_block_options_are_checked():
    x = (torch.zeros(1, 2), torch.zeros(1, 2))
    solve = lambda blocks, active, progress: blocks[0]  # noqa: E731
    with pytest.raises(ValueError, match="at least one block"):
        ipiano(lambda u, v: u.sum(1), x, block_solve=(solve, solve))
    with pytest.raises(ValueError, match="cannot have a prox"):
        ipiano(lambda u, v: u.sum(1), x, block_solve=(solve, None), prox=(lambda z, s: z, None))
    with pytest.raises(ValueError, match="no prox"):
        ipiano(lambda u, v: u.sum(1), x, prox_state=((torch.zeros(1),), None))


def test_descent_sums_are_accumulated_in_float64():
    """The inner products of the descent test are summed in float64 and rounded once: a float32 sum of this row
    loses the small terms next to the large ones."""
    from fusion.optim.ipiano import _bsum

    x = torch.tensor([[2.0**24, 1, 1, 1, 1, -(2.0**24)]], dtype=torch.float32)
    assert float(_bsum(x)[0]) == 4.0 and _bsum(x).dtype == torch.float32


def test_monotone_retries_a_plain_step_that_raises_the_objective_with_a_larger_lipschitz_estimate():
    """``f = ½(x − 3)²`` with a term ``g = 0.1|x|`` that has no prox here (an inexact prox, in the extreme): from
    x = 1 the step 1.98 of L = 1 passes the descent test of f but raises f + g; with ``monotone`` the step is retried
    with L = 2 (step 0.99), which lowers it, and accepted."""
    x0 = torch.ones(1, 1, dtype=torch.float64)
    res = ipiano(
        lambda x: 0.5 * ((x - 3) ** 2).sum(1),
        x0,
        beta=0.0,
        monotone=True,
        nonsmooth=lambda x: 0.1 * x.abs().sum(1),
        objective=lambda x: 0.5 * ((x - 3) ** 2).sum(1) + 0.1 * x.abs().sum(1),
        max_iter=1,
    )
    assert res.info["lipschitz"][0].tolist() == [2.0] and res.info["evaluations"].tolist() == [2]
    torch.testing.assert_close(res.solution, torch.tensor([[1 + 0.99 * 2]], dtype=torch.float64))
    assert float(res.history[1, 0]) < float(res.history[0, 0]) and res.info["inertia_resets"].tolist() == [0]


def _two_runs(gen, with_criterion: bool, check_every: int):
    """The coupled two-block problem, stopped by the default rule or by a criterion (the norm of the smooth part's
    gradient in u), once with the host checking after every iteration and once every few."""
    y, a, s, lam, smooth, soft = _coupled(gen)
    kw = dict(prox=(None, soft), beta=0.3, tol=1e-11, max_iter=3000, descent_test="both")
    if with_criterion:
        kw.update(criterion=lambda u, v: torch.linalg.vector_norm(a * (u - y) - s * (v - u), dim=1), tol=1e-6)
    x0 = (torch.zeros_like(y), torch.zeros_like(y))
    return ipiano(smooth, x0, **kw), ipiano(smooth, x0, check_every=check_every, **kw)


@pytest.mark.parametrize("with_criterion", [False, True], ids=["energy-change", "criterion"])
@pytest.mark.parametrize("check_every", [2, 7])
def test_check_every_changes_nothing_but_when_the_host_looks(check_every, with_criterion, gen):
    """Samples stop at the same iterations with the same iterates, histories and estimates whether the host
    checks for a running sample after every iteration or every few (the idle iterations at the end are cut)."""
    every, sparse = _two_runs(gen, with_criterion, check_every)
    counts = every.info["iterations"]
    assert len(set(counts.tolist())) > 1 and every.iterations == int(counts.max()) and every.all_converged
    assert sparse.iterations == every.iterations and torch.equal(sparse.info["iterations"], counts)
    for x, z in zip(sparse.solution, every.solution):
        assert torch.equal(x, z)
    assert torch.equal(sparse.history, every.history) and torch.equal(sparse.reached, every.reached)
    if with_criterion:
        assert torch.equal(sparse.info["criterion_history"], every.info["criterion_history"])
    assert torch.equal(sparse.info["evaluations"], every.info["evaluations"])
    assert all(torch.equal(p, q) for p, q in zip(sparse.info["lipschitz"], every.info["lipschitz"]))
    assert torch.equal(sparse.converged, every.converged)


def test_bad_check_every():
    with pytest.raises(ValueError, match="check_every"):
        ipiano(lambda x: x.sum(1), torch.zeros(1, 2), check_every=0)
