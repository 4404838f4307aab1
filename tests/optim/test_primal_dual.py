import math

import numpy as np
import pytest
import torch

from fusion.energies.osmosis import huber_tv
from fusion.optim.primal_dual import chambolle_pock, huber_tv_dual_prox, huber_tv_gap, prox_huber_tv


def _reference_prox(z: torch.Tensor, step: float, eta: float, eps: float) -> np.ndarray:
    """Minimise the smooth strongly convex Huber-TV prox objective with SciPy's L-BFGS (float64)."""
    import scipy.optimize as so

    def fun(x):
        p = torch.tensor(x, dtype=torch.float64).view_as(z).requires_grad_(True)
        e = (eta * huber_tv(p, eps) + ((p - z) ** 2).flatten(1).sum(1) / (2 * step)).sum()
        (g,) = torch.autograd.grad(e, p)
        return e.item(), g.numpy().ravel()

    res = so.minimize(
        fun, z.numpy().ravel(), jac=True, method="L-BFGS-B", options={"maxiter": 50000, "ftol": 1e-16, "gtol": 1e-12}
    )
    return res.x.reshape(z.shape)


@pytest.mark.parametrize("step,eta", [(0.5, 0.3), (0.02, 0.5), (2.0, 1.0)])
def test_huber_tv_prox_gap_to_zero_and_matches_reference(step, eta, gen):
    z = torch.rand(2, 2, 9, 11, generator=gen, dtype=torch.float64)
    res = prox_huber_tv(z, step, eta=eta, epsilon=0.05, tol=1e-12, max_iter=20000, check_every=1)
    assert res.all_converged
    gaps = res.history[:, 0]
    assert gaps[-1] < 1e-12 and gaps[0] > 1e-6  # the gap went from large to ~0
    primal, dual, rel = huber_tv_gap(
        res.solution, res.info["dual"], z, torch.full((2,), step, dtype=torch.float64), eta, 0.05
    )
    assert bool((primal - dual >= -1e-9).all())  # weak duality
    ref = _reference_prox(z, step, eta, 0.05)
    np.testing.assert_allclose(res.solution.numpy(), ref, atol=5e-6)


def test_huber_tv_prox_known_step_solution():
    """Rows of a step edge of height J with k columns per side. At the optimum the dual is saturated (= η) on
    the jump edge and quadratic (η/ε ∇p) inside each side, which leaves a k×k linear system per side; its
    solution (with the regime checked afterwards) is the exact prox."""
    k, jump, step, eta, eps = 4, 1.0, 0.4, 0.5, 0.05
    z = torch.zeros(1, 1, 3, 2 * k, dtype=torch.float64)
    z[..., k:] = jump
    res = prox_huber_tv(z, step, eta=eta, epsilon=eps, tol=1e-13, max_iter=20000, check_every=1)
    # left side, nodes 0..k-1: p_i/ζ = y_i − y_{i−1}, y_{−1} = 0, y_{k−1} = η, y_j = (η/ε)(p_{j+1} − p_j)
    a = np.zeros((k, k))
    rhs = np.zeros(k)
    c = eta / eps
    for i in range(k):
        a[i, i] += 1 / step
        if i < k - 1:  # − y_i
            a[i, i + 1] -= c
            a[i, i] += c
        else:
            rhs[i] += eta
        if i > 0:  # + y_{i−1}
            a[i, i] += c
            a[i, i - 1] -= c
    left = np.linalg.solve(a, rhs)
    assert np.abs(np.diff(left)).max() <= eps and jump - 2 * left[-1] > eps  # the assumed regimes hold
    expected = np.concatenate([left, jump - left[::-1]])
    np.testing.assert_allclose(res.solution[0, 0].numpy(), np.tile(expected, (3, 1)), atol=1e-6)


def test_constant_image_is_fixed_and_batches_are_independent(gen):
    z = torch.rand(3, 3, 6, 7, generator=gen, dtype=torch.float64)
    z[1] = 0.42
    steps = torch.tensor([0.1, 1.0, 3.0], dtype=torch.float64)
    res = prox_huber_tv(z, steps, eta=0.7, tol=1e-12, max_iter=20000)
    torch.testing.assert_close(res.solution[1], z[1], atol=1e-10, rtol=0)
    for i in (0, 2):
        single = prox_huber_tv(z[i : i + 1], float(steps[i]), eta=0.7, tol=1e-12, max_iter=20000)
        torch.testing.assert_close(res.solution[i], single.solution[0], atol=1e-8, rtol=0)


def test_dual_prox_scales_then_projects(gen):
    y = torch.randn(2, 1, 2, 5, 5, generator=gen, dtype=torch.float64) * 3
    sigma = torch.full((2, 1, 1, 1, 1), 0.7, dtype=torch.float64)
    out = huber_tv_dual_prox(y, sigma, 0.5, 0.05)
    norms = out.norm(dim=2)
    assert norms.max() <= 0.5 + 1e-12
    # brute force: minimise ε/(2η)|x|² + |x − y|²/(2σ) over the disc by a fine polar grid at one pixel
    yy = y[0, 0, :, 2, 2].numpy()
    r = np.linspace(0, 0.5, 2001)[:, None]
    th = np.linspace(0, 2 * np.pi, 4001)[None, :]
    xs = np.stack([r * np.cos(th), r * np.sin(th)], -1)
    obj = 0.05 / (2 * 0.5) * (xs**2).sum(-1) + ((xs - yy) ** 2).sum(-1) / (2 * 0.7)
    best = xs.reshape(-1, 2)[obj.argmin()]
    np.testing.assert_allclose(out[0, 0, :, 2, 2].numpy(), best, atol=1e-3)


@pytest.mark.parametrize("accelerated", [False, True])
def test_generic_chambolle_pock_l1_denoising_closed_form(accelerated, gen):
    """min_x ½‖x − z‖² + λ‖x‖₁: soft thresholding, with K = I (Algorithm 1 and the accelerated Algorithm 2)."""
    z = torch.randn(4, 30, generator=gen, dtype=torch.float64)
    lam = 0.4
    tol = 1e-8 if accelerated else 1e-12  # the O(1/N²) rule is slow on this easy problem
    res = chambolle_pock(
        lambda x: x,
        lambda y: y,
        lambda x, t: (x + t * z) / (1 + t),
        lambda y, s: y.clamp(-lam, lam),
        torch.zeros_like(z),
        torch.zeros_like(z),
        op_norm=1.0,
        strong_convexity=1.0 if accelerated else 0.0,
        gap=lambda x, y: (0.5 * ((x - z) ** 2).sum(1) + lam * x.abs().sum(1)) - ((z * y).sum(1) - 0.5 * (y * y).sum(1)),
        max_iter=20000,
        tol=tol,
    )
    assert res.all_converged
    expected = torch.sign(z) * (z.abs() - lam).clamp_min(0)
    # the primal is 1-strongly convex, so ‖x − x*‖² ≤ 2 · gap
    torch.testing.assert_close(res.solution, expected, atol=(2 * tol) ** 0.5, rtol=0)
    assert res.history.shape == (res.iterations + 1, 4)


def test_rejects_bad_parameters():
    z = torch.rand(1, 1, 4, 4)
    with pytest.raises(ValueError, match="eta"):
        prox_huber_tv(z, 0.1, eta=0.0)
    with pytest.raises(ValueError, match="step"):
        prox_huber_tv(z, -1.0, eta=0.5)


def test_huber_tv_prox_elementwise_step(gen):
    """A per-pixel step (the prox in a diagonal metric): uniform steps reproduce the scalar prox; varying steps
    drive the primal–dual gap, which bounds the distance to optimality, to zero."""
    z = torch.rand(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    uniform = prox_huber_tv(z, torch.full_like(z, 0.3), eta=0.2, tol=1e-12)
    scalar = prox_huber_tv(z, 0.3, eta=0.2, tol=1e-12)
    torch.testing.assert_close(uniform.solution, scalar.solution, atol=1e-9, rtol=0)
    step = 0.01 + torch.rand(z.shape, generator=gen, dtype=torch.float64)
    res = prox_huber_tv(z, step, eta=0.2, tol=1e-12)
    assert res.all_converged
    primal, dual, rel = huber_tv_gap(res.solution, res.info["dual"], z, step, 0.2, 0.05)
    assert bool((rel < 1e-12).all()) and bool((primal >= dual - 1e-12).all())
    # where the step is tiny the prox hardly moves the point
    small = step < 0.02
    assert (res.solution - z)[small].abs().max() < (res.solution - z)[~small].abs().max()
    with pytest.raises(ValueError, match="broadcast"):
        prox_huber_tv(z, step[..., :-1], eta=0.2)


@pytest.mark.parametrize("accelerated", [False, True])
def test_chambolle_pock_with_a_non_unit_operator_norm_matches_a_box_constrained_dual(accelerated, gen):
    """Anisotropic TV denoising min_x ½‖x − z‖² + λ‖∇x‖₁ (K = ∇, ‖K‖² ≤ 8) by Algorithm 1 and the accelerated
    Algorithm 2, against SciPy's L-BFGS-B on the dual max_{|y| ≤ λ} −½‖z − Kᵀy‖² (then x = z − Kᵀy): the step
    rule must respect τσL² ≤ 1 for L ≠ 1."""
    import scipy.optimize as so

    from fusion.ops.diff import div, grad

    z = torch.rand(1, 1, 6, 7, generator=gen, dtype=torch.float64)
    lam = 0.15
    tol = 1e-6 if accelerated else 1e-10  # the O(1/N²) rule is slow to a tight gap

    def kt(y):
        return -div(y, bc="neumann")

    shape = (1, 1, 2, 6, 7)

    def dual(yflat):
        y = torch.tensor(yflat, dtype=torch.float64).view(shape).requires_grad_(True)
        val = 0.5 * ((z - kt(y)) ** 2).sum()
        (g,) = torch.autograd.grad(val, y)
        return val.item(), g.numpy().ravel()

    valid = np.ones(shape)
    valid[..., 0, -1, :] = 0
    valid[..., 1, :, -1] = 0  # the boundary edges carry no dual variable
    bounds = [(-lam, lam) if m else (0.0, 0.0) for m in valid.ravel()]
    ref = so.minimize(dual, np.zeros(valid.size), jac=True, method="L-BFGS-B", bounds=bounds,
                      options={"maxiter": 20000, "ftol": 1e-16, "gtol": 1e-13})  # fmt: skip
    x_ref = (z - kt(torch.from_numpy(ref.x).view(shape))).numpy()

    def gap(x, y):
        primal = 0.5 * ((x - z) ** 2).flatten(1).sum(1) + lam * grad(x, bc="neumann").abs().flatten(1).sum(1)
        return primal - (0.5 * (z * z).flatten(1).sum(1) - 0.5 * ((z - kt(y)) ** 2).flatten(1).sum(1))

    res = chambolle_pock(
        lambda x: grad(x, bc="neumann"),
        kt,
        lambda x, t: (x + t * z) / (1 + t),
        lambda y, s: y.clamp(-lam, lam),
        torch.zeros_like(z),
        torch.zeros(shape, dtype=torch.float64),
        op_norm=math.sqrt(8.0),
        strong_convexity=1.0 if accelerated else 0.0,
        gap=gap,
        max_iter=50000,
        tol=tol,
    )
    assert res.all_converged
    # the primal is 1-strongly convex: ‖x − x*‖² ≤ 2 · gap
    np.testing.assert_allclose(res.solution.numpy(), x_ref, atol=(2 * tol) ** 0.5 + 1e-7)


def test_gap_is_measured_after_the_first_iteration_then_every_check_every(gen):
    """``check_every``: the stopping quantity is evaluated at the start, after iteration 1 and then at multiples of
    ``check_every`` (the history repeats the last value in between)."""
    z = torch.rand(1, 1, 6, 7, generator=gen, dtype=torch.float64)
    res = prox_huber_tv(z, 0.5, eta=0.2, tol=1e-14, max_iter=12, check_every=5)
    h = res.history[:, 0]
    assert res.iterations == 12 and h.shape == (13,)
    assert h[1] != h[0] and h[2] == h[1] and h[4] == h[1] and h[5] != h[4] and h[6] == h[5] and h[10] != h[9]
    assert h[12] != h[11]  # and at the last iteration
