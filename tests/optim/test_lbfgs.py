"""Batched fixed-step L-BFGS: torch.optim.LBFGS's iterates for one sample, closed-form minimisers, per-sample
memory and stopping, divergence; the recorded stage runner (its finish map, terms, frames and progress calls)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fusion.optim.lbfgs import criterion, lbfgs, lbfgs_stage

DT = torch.float64


def _problem(gen: torch.Generator, n: int, cond: float):
    """A smooth non-quadratic objective ``c + ½ xᵀAx − bᵀx + ¼ Σ w x⁴`` with an SPD ``A`` of condition ``cond``."""
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DT))
    a = q @ torch.diag(torch.logspace(0, np.log10(cond), n, dtype=DT)) @ q.T
    b = torch.randn(n, generator=gen, dtype=DT)
    w = torch.rand(n, generator=gen, dtype=DT)
    return a, b, w


def _energy(a, b, w, c=3.0):
    def f(x):  # x: (B, n), one problem for all samples
        return c + 0.5 * ((x @ a) * x).sum(1) - x @ b + 0.25 * (w * x**4).sum(1)

    return f


def _torch_lbfgs_trajectory(f, x0, steps, history_size, lr=1.0, project=None):
    """Iterates of ``torch.optim.LBFGS`` as the method used it: one iteration per ``step``, no line search, the
    gradient and change tolerances disabled, an optional projection after each step."""
    p = x0.clone().requires_grad_(True)
    opt = torch.optim.LBFGS([p], lr=lr, max_iter=1, history_size=history_size, tolerance_grad=-1.0,
                            tolerance_change=-1.0)  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = f(p).sum()
        loss.backward()
        return loss

    out = [p.detach().clone()]
    for _ in range(steps):
        opt.step(closure)
        if project is not None:
            with torch.no_grad():
                p.copy_(project(p))
        out.append(p.detach().clone())
    return out


@pytest.mark.parametrize("history_size", [3, 50])
@pytest.mark.parametrize("box", [False, True])
def test_one_sample_reproduces_torch_lbfgs_iterates(gen, history_size, box):
    a, b, w = _problem(gen, 15, 30.0)
    f = _energy(a, b, w)
    x0 = torch.randn(1, 15, generator=gen, dtype=DT)
    project = (lambda t: t.clamp(-0.3, 0.4)) if box else None
    steps = 30
    expected = _torch_lbfgs_trajectory(f, x0, steps, history_size, project=project)
    for k in (1, 2, 3, 7, 15, steps):  # every prefix: a run capped at k steps ends at torch's k-th iterate
        res = lbfgs(f, x0, max_iter=k, tol=1e-300, history_size=history_size, stop_early=False, project=project)
        assert res.iterations == k
        torch.testing.assert_close(res.solution, expected[k], atol=1e-12, rtol=0)
    # the history holds the objective at each of those iterates
    torch.testing.assert_close(res.history[:, 0], torch.stack([f(x)[0] for x in expected]), atol=1e-12, rtol=1e-12)
    # the memory was really exercised: pairs were evicted (history 3) and the iterates moved far
    assert (expected[-1] - expected[0]).abs().max() > 0.1


def test_one_sample_reproduces_torch_lbfgs_in_float32(gen):
    a, b, w = _problem(gen, 12, 10.0)
    a32, b32, w32 = a.float(), b.float(), w.float()
    f = _energy(a32, b32, w32)
    x0 = torch.randn(1, 12, generator=gen)
    expected = _torch_lbfgs_trajectory(f, x0, 12, 5)
    res = lbfgs(f, x0, max_iter=12, tol=1e-30, history_size=5, stop_early=False)
    torch.testing.assert_close(res.solution, expected[-1], atol=1e-5, rtol=1e-5)


def test_quadratic_reaches_the_closed_form_minimiser(gen):
    # three different SPD quadratics in one batch: x* = A_b⁻¹ c_b
    n = 20
    mats, rhs = [], []
    for cond in (2.0, 50.0, 400.0):
        a, c, _ = _problem(gen, n, cond)
        mats.append(a), rhs.append(c)
    a, c = torch.stack(mats), torch.stack(rhs)

    def f(x):
        return 1.0 + 0.5 * torch.einsum("bi,bij,bj->b", x, a, x) - (c * x).sum(1)

    res = lbfgs(f, torch.zeros(3, n, dtype=DT), max_iter=500, tol=1e-15, history_size=10)
    expected = torch.linalg.solve(a, c)
    torch.testing.assert_close(res.solution, expected, atol=1e-6, rtol=0)
    assert res.all_converged and res.criterion == criterion(1) and res.tol == 1e-15
    # the samples stopped on their own: the harder problems took more iterations, frozen once done
    its = res.info["iterations"]
    assert its[0] < its[1] < its[2] and res.iterations == int(its.max())
    for s in range(3):
        tail = res.history[int(its[s]) :, s]
        assert torch.equal(tail, tail[:1].expand_as(tail))


def test_batch_equals_the_single_calls(gen):
    problems = [_problem(gen, 10, cond) for cond in (5.0, 80.0, 20.0)]
    starts = [torch.randn(1, 10, generator=gen, dtype=DT) for _ in problems]
    a = torch.stack([p[0] for p in problems])
    b = torch.stack([p[1] for p in problems])
    w = torch.stack([p[2] for p in problems])

    def batched(x):
        return 3.0 + 0.5 * torch.einsum("bi,bij,bj->b", x, a, x) - (b * x).sum(1) + 0.25 * (w * x**4).sum(1)

    for stop_early in (True, False):
        kw = dict(max_iter=60, tol=1e-9, history_size=4, stop_early=stop_early)
        res = lbfgs(batched, torch.cat(starts), **kw)
        singles = [lbfgs(_energy(*p), x0, **kw) for p, x0 in zip(problems, starts)]
        for s, one in enumerate(singles):
            torch.testing.assert_close(res.solution[s : s + 1], one.solution, atol=1e-10, rtol=0)
            assert int(res.info["iterations"][s]) == one.iterations
            assert bool(res.converged[s]) == bool(one.converged[0])
            torch.testing.assert_close(res.history[: one.iterations + 1, s], one.history[:, 0], atol=1e-10, rtol=0)
        if stop_early:  # the samples stopped at different iterations
            assert len({one.iterations for one in singles}) == 3


def test_torch_lbfgs_on_a_batch_tensor_couples_the_samples(gen):
    # what the batched optimiser replaces: one torch.optim.LBFGS over the summed objective mixes the samples'
    # curvature pairs and inner products, so a sample's iterates change with its batch companions
    a, b, w = _problem(gen, 8, 20.0)
    f = _energy(a, b, w)
    x0 = torch.randn(2, 8, generator=gen, dtype=DT)
    joint = _torch_lbfgs_trajectory(f, x0, 15, 5)[-1]
    alone = _torch_lbfgs_trajectory(f, x0[:1], 15, 5)[-1]
    assert (joint[:1] - alone).abs().max() > 1e-3
    ours = lbfgs(f, x0, max_iter=15, tol=1e-300, history_size=5, stop_early=False).solution
    torch.testing.assert_close(ours[:1], alone, atol=1e-12, rtol=0)


def _windowed_change(h: torch.Tensor, k: int, w: int) -> float:
    """The documented criterion at iterate k from a history column: range of f over [k − w, k] / (w |f_k|)."""
    window = h[k - w : k + 1]
    return float((window.max() - window.min()) / (w * h[k].abs()))


@pytest.mark.parametrize("window", [1, 4])
def test_stopping_rule_is_the_documented_relative_change(gen, window):
    a, b, w = _problem(gen, 12, 100.0)
    f = _energy(a, b, w)
    x0 = torch.randn(2, 12, generator=gen, dtype=DT) * torch.tensor([[1.0], [3.0]], dtype=DT)
    tol = 1e-6
    res = lbfgs(f, x0, max_iter=200, tol=tol, history_size=5, window=window)
    assert res.all_converged and res.criterion == criterion(window)
    for s in range(2):
        t = int(res.info["iterations"][s])
        h = res.history[: t + 1, s]
        changes = [_windowed_change(h, k, window) for k in range(window + 1, t + 1)]
        # stopped at the first iterate where the criterion held; the first step is never inside the window
        assert changes[-1] <= tol and all(c > tol for c in changes[:-1])
        assert float(res.reached[s]) == pytest.approx(changes[-1], rel=1e-12)
    # a tighter tolerance goes further and ends lower
    tight = lbfgs(f, x0, max_iter=200, tol=1e-12, history_size=5, window=window)
    assert bool((tight.info["iterations"] > res.info["iterations"]).all())
    assert bool((tight.history[-1] <= res.history[-1]).all())


def test_a_window_is_not_fooled_by_one_lucky_iteration():
    # a stand-in energy returns preset values in call order: the objective goes down, up, and then changes by
    # 1e-7 (relative) over one iteration while the descent is far from over
    sequence = [10.0, 5.0, 6.0, 5.5, 5.5000005, 4.0, 3.0, 2.5, 2.2, 2.0, 1.9]
    x0 = torch.zeros(1, 2, dtype=DT)

    def run(window):
        values = iter(sequence)
        return lbfgs(lambda x: (x * 0).sum(1) + next(values), x0, max_iter=10, tol=1e-6, history_size=3,
                     window=window)  # fmt: skip

    single = run(1)
    assert single.iterations == 4 and bool(single.converged[0])  # stops on the lucky iteration
    windowed = run(3)
    assert windowed.iterations == 10 and not bool(windowed.converged[0])
    assert float(windowed.reached[0]) == pytest.approx((2.5 - 1.9) / (3 * 1.9), rel=1e-12)


def test_a_change_of_exactly_tol_meets_the_criterion():
    # the rule is "at most tol": preset values (exact in binary) whose relative change at iterate 4 is exactly
    # |1.25 − 1| / 1 = 0.25; iterate 3 changes by 0.75 / 1.25 = 0.6
    sequence = [8.0, 4.0, 2.0, 1.25, 1.0, 0.5, 0.25]
    x0 = torch.zeros(1, 2, dtype=DT)
    for run in (lbfgs, lambda f, x, **kw: lbfgs_stage(lambda z: (f(z), {}), x, **kw).solver):
        values = iter(sequence)
        res = run(lambda x: (x * 0).sum(1) + next(values), x0, max_iter=6, tol=0.25, history_size=3)
        assert res.iterations == 4 and bool(res.converged[0]) and float(res.reached[0]) == 0.25


def test_cap_reached_above_tol_is_not_converged(gen):
    a, b, w = _problem(gen, 12, 1000.0)
    f = _energy(a, b, w)
    x0 = torch.randn(1, 12, generator=gen, dtype=DT)
    res = lbfgs(f, x0, max_iter=4, tol=1e-12, history_size=5)
    assert res.iterations == 4 and not bool(res.converged[0])
    assert float(res.reached[0]) == pytest.approx(_windowed_change(res.history[:, 0], 4, 1), rel=1e-12)
    assert float(res.reached[0]) > 1e-12
    # fixed count: all iterations run, and the last one decides (here it meets a loose tolerance)
    fixed = lbfgs(f, x0, max_iter=25, tol=0.5, history_size=5, stop_early=False)
    assert fixed.iterations == 25 and bool(fixed.converged[0])
    early = lbfgs(f, x0, max_iter=25, tol=0.5, history_size=5)
    assert early.iterations < 25 and bool(early.converged[0])


def test_a_short_first_step_does_not_count_as_convergence():
    # a large gradient makes the first step lr / ‖∇f‖₁ tiny: its relative change is far below tol, yet the start
    # is far from the minimiser. Only quasi-Newton steps are tested.
    n = 4000
    target = torch.linspace(-1, 1, n, dtype=DT)[None]

    def f(x):
        return 1.0 + 50.0 * ((x - target) ** 2).sum(1)

    x0 = torch.zeros(1, n, dtype=DT)
    first = lbfgs(f, x0, max_iter=1, tol=1e-3, history_size=5)
    h = first.history[:, 0]
    assert (h[0] - h[1]).abs() / h[0] < 1e-3  # the first step alone would have passed the test
    assert not bool(first.converged[0]) and float(first.reached[0]) == float("inf")
    assert first.criterion.endswith("(inf: not measured, it needs 2 iterations)")
    res = lbfgs(f, x0, max_iter=50, tol=1e-3, history_size=5)
    assert res.iterations > 1 and res.all_converged
    torch.testing.assert_close(res.solution, target, atol=1e-6, rtol=0)


def test_a_diverging_sample_keeps_its_last_finite_iterate_and_the_others_go_on(gen):
    a, b, w = _problem(gen, 6, 10.0)
    b = b.abs() + 1.0  # the minimiser lies beyond 0.2 in some coordinate
    base = _energy(a, b, w)

    def f(x):
        # sample 1 leaves the domain (NaN, like an overflow) once a coordinate exceeds 0.2; its value and gradient
        # are unchanged inside the domain, and sample 0 is computed on its own
        guard = 0 * torch.sqrt(0.2 - x[1:]).sum(1)
        return torch.cat([base(x[:1]), base(x[1:]) + guard])

    x0 = torch.zeros(2, 6, dtype=DT)
    alone = lbfgs(base, x0[:1], max_iter=100, tol=1e-10, history_size=5)
    assert alone.all_converged and float(alone.solution.max()) > 0.2
    res = lbfgs(f, x0, max_iter=100, tol=1e-10, history_size=5)
    assert res.info["diverged"].tolist() == [False, True]
    assert res.converged.tolist() == [True, False]
    assert torch.isnan(res.reached[1]) and torch.isfinite(res.history).all()
    assert "non-finite" in res.criterion and "non-finite" not in alone.criterion
    assert bool((res.solution[1] <= 0.2).all())  # the last iterate inside the domain
    t1 = int(res.info["iterations"][1])
    expected = _torch_lbfgs_trajectory(base, x0[1:], t1, 5)[-1]  # the unguarded path up to there
    torch.testing.assert_close(res.solution[1:], expected, atol=1e-12, rtol=0)
    torch.testing.assert_close(res.history[t1:, 1], base(expected).expand(res.history.shape[0] - t1))
    torch.testing.assert_close(res.solution[:1], alone.solution, atol=1e-12, rtol=0)
    assert int(res.info["iterations"][0]) == alone.iterations
    # on its own, the diverging sample's record ends at its last finite iterate
    only = lbfgs(lambda x: base(x) + 0 * torch.sqrt(0.2 - x).sum(1), x0[1:], max_iter=100, tol=1e-10, history_size=5)
    assert only.iterations == t1 and only.history.shape == (t1 + 1, 1)
    torch.testing.assert_close(only.solution, res.solution[1:], atol=0, rtol=0)


def test_a_stationary_start_converges_without_moving():
    x0 = torch.ones(2, 4, dtype=DT)
    res = lbfgs(lambda x: 2.0 + ((x - 1) ** 2).sum(1), x0, max_iter=10, tol=1e-12)
    assert res.all_converged and res.iterations == 2  # the first (untested) step and one tested step of zero
    assert torch.equal(res.solution, x0) and bool((res.reached == 0).all())


def test_pairs_without_positive_curvature_are_skipped():
    # a linear objective: y = 0 for every step, so no curvature pair is ever stored and every step is −lr ∇f
    c = torch.tensor([[1.0, -2.0, 0.5]], dtype=DT)
    res = lbfgs(lambda x: 10.0 + (c * x).sum(1), torch.zeros(1, 3, dtype=DT), max_iter=5, tol=1e-300,
                history_size=3, stop_early=False)  # fmt: skip
    assert int(res.info["pairs_skipped"][0]) == 4
    first = min(1.0, 1 / 3.5)
    torch.testing.assert_close(res.solution, -(first + 4) * c, atol=1e-12, rtol=0)


def test_does_not_modify_the_start_and_keeps_shape_and_dtype(gen):
    x0 = torch.rand(2, 3, 4, generator=gen)
    copy = x0.clone()
    res = lbfgs(lambda x: 1 + ((x - 0.5) ** 2).flatten(1).sum(1), x0, max_iter=3, tol=1e-3)
    assert torch.equal(x0, copy)
    assert res.solution.shape == x0.shape and res.solution.dtype == torch.float32
    assert res.history.shape == (res.iterations + 1, 2)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"max_iter": 0}, "max_iter must be >= 1"),
        ({"max_iter": 2.5}, "max_iter must be an integer"),
        ({"tol": 0.0}, "tol must be a finite number > 0"),
        ({"history_size": 0}, "history_size must be >= 1"),
        ({"lr": -1.0}, "lr must be"),
        ({"curvature_eps": -1.0}, "curvature_eps"),
        ({"window": 0}, "window must be >= 1"),
    ],
)
def test_bad_arguments(kwargs, fragment):
    args = {"max_iter": 5, "tol": 1e-6, **kwargs}
    with pytest.raises(ValueError, match=fragment):
        lbfgs(lambda x: (x**2).sum(1), torch.ones(1, 2), **args)


def test_bad_energy_and_start():
    with pytest.raises(ValueError, match=r"one value per sample, shape \(2,\)"):
        lbfgs(lambda x: (x**2).sum(), torch.ones(2, 3), max_iter=2, tol=1e-6)
    with pytest.raises(TypeError, match="x0"):
        lbfgs(lambda x: x.sum(1), torch.ones(2, 3, dtype=torch.long), max_iter=2, tol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# lbfgs_stage: one recorded stage
# ----------------------------------------------------------------------------------------------------------
def _quadratics(gen, conds=(2.0, 50.0, 400.0), n=12):
    """Per-sample objectives ``1 + ½ xᵀA_b x − c_bᵀx`` with their parts and minimisers ``A_b⁻¹ c_b``."""
    mats, rhs = [], []
    for cond in conds:
        a, c, _ = _problem(gen, n, cond)
        mats.append(a), rhs.append(3 * c)
    a, c = torch.stack(mats), torch.stack(rhs)

    def objective(x):
        quad = 0.5 * torch.einsum("bi,bij,bj->b", x, a, x)
        lin = -(c * x).sum(1)
        return 1.0 + quad + lin, {"quad": quad, "lin": lin}

    return objective, a, c, torch.linalg.solve(a, c)


def _box(x):
    return x.clamp(-0.5, 0.5)


def test_stage_reaches_the_minimiser_and_closes_its_record_at_the_finished_point(gen):
    objective, a, c, minimiser = _quadratics(gen)
    assert float(minimiser.abs().max()) > 0.5  # the box cuts the minimiser
    x0 = torch.zeros(3, 12, dtype=DT)
    run = lbfgs_stage(objective, x0, max_iter=500, tol=1e-15, history_size=10, finish=_box)
    torch.testing.assert_close(run.solver.solution, minimiser, atol=1e-6, rtol=0)  # the descent is unconstrained
    assert torch.equal(run.solution, _box(run.solver.solution)) and torch.equal(x0, torch.zeros(3, 12, dtype=DT))
    assert run.solver.all_converged and run.solver.criterion == criterion(1) and run.frames is None
    its = run.solver.info["iterations"]
    assert its[0] < its[1] < its[2] and run.history.shape == (int(its.max()) + 1, 3)
    finished, parts = objective(run.solution)
    for s in range(3):
        t = int(its[s])
        # up to its last iteration a sample's record is the optimiser's; from there on, the finished point's
        torch.testing.assert_close(run.history[:t, s], run.solver.history[:t, s], atol=0, rtol=0)
        assert bool((run.history[t:, s] == finished[s]).all()) and finished[s] > run.solver.history[t, s]
        for name in ("quad", "lin"):
            assert bool((run.terms[name][t:, s] == parts[name][s]).all()), name
        # every row of the parts adds up to the recorded objective
        torch.testing.assert_close(1.0 + run.terms["quad"][:, s] + run.terms["lin"][:, s], run.history[:, s])


def test_stage_keeps_every_sample_apart(gen):
    objective, a, c, _ = _quadratics(gen, conds=(5.0, 80.0, 20.0))
    x0 = torch.randn(3, 12, generator=gen, dtype=DT)
    kw = dict(max_iter=80, tol=1e-10, window=3, history_size=4, finish=_box, frames=4)
    batch = lbfgs_stage(objective, x0, **kw)
    for s in range(3):

        def alone(x, s=s):
            value, parts = objective(torch.cat([x if k == s else torch.zeros_like(x) for k in range(3)]))
            return value[s : s + 1], {name: part[s : s + 1] for name, part in parts.items()}

        one = lbfgs_stage(alone, x0[s : s + 1], **kw)
        t = one.solver.iterations
        assert int(batch.solver.info["iterations"][s]) == t and bool(batch.solver.converged[s])
        torch.testing.assert_close(batch.solution[s : s + 1], one.solution, atol=1e-12, rtol=0)
        torch.testing.assert_close(batch.history[: t + 1, s], one.history[:, 0], atol=1e-12, rtol=0)
        for name in ("quad", "lin"):
            torch.testing.assert_close(batch.terms[name][: t + 1, s], one.terms[name][:, 0], atol=1e-12, rtol=0)
    assert len({int(t) for t in batch.solver.info["iterations"]}) == 3  # each stopped on its own


@pytest.mark.parametrize("window", [1, 3])
def test_stage_stops_on_the_documented_rule_like_lbfgs(gen, window):
    a, b, w = _problem(gen, 12, 100.0)
    f = _energy(a, b, w)
    x0 = torch.randn(2, 12, generator=gen, dtype=DT) * torch.tensor([[1.0], [3.0]], dtype=DT)
    tol = 1e-6
    run = lbfgs_stage(lambda x: (f(x), {}), x0, max_iter=200, tol=tol, history_size=5, window=window)
    plain = lbfgs(f, x0, max_iter=200, tol=tol, history_size=5, window=window)
    assert torch.equal(run.solution, plain.solution) and torch.equal(run.history, plain.history)
    assert run.terms == {} and run.solver.criterion == criterion(window)
    for s in range(2):
        t = int(run.solver.info["iterations"][s])
        changes = [_windowed_change(run.history[: t + 1, s], k, window) for k in range(window + 1, t + 1)]
        assert changes[-1] <= tol and all(c > tol for c in changes[:-1])  # the first iterate that meets it
    # the fixed count runs every iteration and judges the last
    fixed = lbfgs_stage(lambda x: (f(x), {}), x0, max_iter=60, tol=tol, history_size=5, window=window, stop_early=False)
    assert fixed.solver.info["iterations"].tolist() == [60, 60]


def test_stage_frames_and_progress_calls(gen):
    objective, *_ = _quadratics(gen, conds=(3.0, 30.0))
    x0 = torch.randn(2, 12, generator=gen, dtype=DT)
    calls = []
    kw = dict(tol=1e-300, history_size=5, stop_early=False, finish=_box)
    run = lbfgs_stage(objective, x0, max_iter=6, frames=3, snapshot=lambda x: 2 * x,
                      on_iterate=lambda k, values: calls.append((k, values.clone())), **kw)  # fmt: skip
    assert [k for k, _ in calls] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(torch.stack([v for _, v in calls]), run.solver.history[1:], atol=0, rtol=0)
    # planned iterations 0, 3 and the result, each the snapshot of the finished iterate
    third = lbfgs(lambda x: objective(x)[0], x0, max_iter=3, tol=1e-300, history_size=5, stop_early=False)
    assert run.frames.shape == (3, 2, 12)
    torch.testing.assert_close(run.frames[0], 2 * _box(x0), atol=0, rtol=0)
    torch.testing.assert_close(run.frames[1], 2 * _box(third.solution), atol=1e-12, rtol=0)
    torch.testing.assert_close(run.frames[2], 2 * run.solution, atol=0, rtol=0)
    # a run that stops before the planned iterations repeats its result
    early = lbfgs_stage(objective, x0, max_iter=200, tol=1e-6, history_size=5, frames=5, finish=_box)
    assert early.solver.iterations < 50
    torch.testing.assert_close(early.frames[0], _box(x0), atol=0, rtol=0)
    for k in range(1, 5):
        torch.testing.assert_close(early.frames[k], early.solution, atol=0, rtol=0)


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"frames": -1}, "frames must be an integer >= 0"),
        ({"stop_early": "yes"}, "stop_early must be true or false"),
        ({"window": 0}, "window must be >= 1"),
        ({"lr": float("nan")}, "lr must be a finite number > 0"),
    ],
)
def test_stage_bad_arguments(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        lbfgs_stage(lambda x: ((x**2).sum(1), {}), torch.ones(1, 2), max_iter=3, tol=1e-6, **kwargs)
