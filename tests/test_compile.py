"""The inner iterations of CG, of the Huber-TV prox and of the transport primal–dual solver compile in one piece.

``torch._dynamo.explain`` traces the iteration a solver runs (captured from a real call, with its real
operators) and reports every graph break; a break would split the compiled iteration and bring data back to the
host in the middle of it. The ``compile=True`` option of each solver must give the eager results up to
rounding. The stopping tests stay outside the compiled iteration on purpose (they decide on the host).
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from fusion.ops import cg
from fusion.ops.masked import masked_poisson_operator, masked_poisson_preconditioner
from fusion.ops.staggered import StaggeredGrid
from fusion.optim import primal_dual as pd

ot = importlib.import_module("fusion.optim.ot_primal_dual")  # the package exports a function of that name


@pytest.fixture(autouse=True)
def _fresh_compiler():
    torch._dynamo.reset()
    counters.clear()
    yield
    torch._dynamo.reset()


def _graphs_compiled() -> int:
    """Graphs compiled since the test began (0 unless something ran under ``torch.compile``)."""
    return counters["stats"]["unique_graphs"]


def _captured_calls(monkeypatch, module, name: str, run) -> list[tuple]:
    """Run ``run()`` with ``module.name`` wrapped to record its arguments; return them, one tuple per call."""
    real = getattr(module, name)
    seen = []

    def spy(*args):
        seen.append(args)
        return real(*args)

    with monkeypatch.context() as m:
        m.setattr(module, name, spy)
        run()
    return seen


def _graph_breaks(fn, args) -> tuple[int, int, list]:
    out = torch._dynamo.explain(fn)(*args)
    return out.graph_count, out.graph_break_count, [str(r) for r in out.break_reasons]


def _masked_system(gen, dtype=torch.float64, size=(18, 22)):
    h, w = size
    region = torch.zeros(2, 1, h, w, dtype=dtype)
    region[0, 0, 2:12, 3:15] = 1
    region[1, 0, 6 : h - 1, 8 : w - 2] = 1
    region[1, 0, 9, 12] = 0  # a hole: not a rectangle, so PCG needs more than one iteration
    b = torch.randn(2, 3, h, w, generator=gen, dtype=dtype) * region
    return region, b


@pytest.mark.parametrize("precondition", ["spectral", "jacobi", "none"])
def test_cg_iteration_has_no_graph_break(precondition, monkeypatch, gen):
    region, b = _masked_system(gen)
    apply_a = masked_poisson_operator(region)
    m_inv = masked_poisson_preconditioner(region, precondition)
    calls = _captured_calls(
        monkeypatch, cg, "_cg_step", lambda: cg.conjugate_gradient(apply_a, b, precondition=m_inv, max_iter=3)
    )
    assert len(calls) == 3
    graphs, breaks, reasons = _graph_breaks(cg._cg_step, calls[-1])
    assert (graphs, breaks) == (1, 0), reasons


@pytest.mark.parametrize("check", [False, True])
@pytest.mark.parametrize("elementwise", [False, True])
def test_huber_tv_prox_iteration_has_no_graph_break(check, elementwise, monkeypatch, gen):
    z = torch.rand(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    step = 0.05 + torch.rand(z.shape, generator=gen, dtype=torch.float64) if elementwise else 0.4
    calls = _captured_calls(monkeypatch, pd, "_cp_step", lambda: pd.prox_huber_tv(z, step, eta=0.2, max_iter=6))
    args = next(a for a in calls if a[-1] is check)  # the last argument says whether this iteration is a check
    graphs, breaks, reasons = _graph_breaks(pd._cp_step, args)
    assert (graphs, breaks) == (1, 0), reasons


@pytest.mark.parametrize("all_active", [True, False])
@pytest.mark.parametrize(
    "model, channels, relaxation",
    [("constrained", 3, 1.9), ("penalized", 3, 1.9), ("constrained", 1, 1.0), ("penalized", 1, 1.5)],
)
def test_ot_iteration_has_no_graph_break(model, channels, relaxation, all_active, monkeypatch, gen):
    grid = StaggeredGrid(steps=4, channels=channels, height=6, width=7)
    f0 = torch.rand(2, channels, 6, 7, generator=gen, dtype=torch.float64) + 0.1
    f1 = torch.rand(2, channels, 6, 7, generator=gen, dtype=torch.float64) + 0.1

    def run():
        ot.ot_primal_dual(f0, f1, grid, model=model, lam=2.0, tau=2.0, relaxation=relaxation, max_iter=2)

    args = list(_captured_calls(monkeypatch, ot, "_ot_step", run)[-1])
    if not all_active:  # a stopped sample: the iteration freezes it
        args[10], args[11] = torch.tensor([True, False]), False
    graphs, breaks, reasons = _graph_breaks(ot._ot_step, args)
    assert (graphs, breaks) == (1, 0), reasons


# ----------------------------------------------------------------------------- compile=True against eager


def test_compiled_cg_equals_eager(gen):
    region, b = _masked_system(gen)
    apply_a = masked_poisson_operator(region)
    m_inv = masked_poisson_preconditioner(region, "spectral")
    kw = dict(precondition=m_inv, tol=1e-10, max_iter=200, true_residual=True)
    eager = cg.conjugate_gradient(apply_a, b, **kw)
    assert _graphs_compiled() == 0
    compiled = cg.conjugate_gradient(apply_a, b, compile=True, **kw)
    assert _graphs_compiled() == 1
    assert eager.all_converged and compiled.all_converged
    assert compiled.info["iterations"].tolist() == eager.info["iterations"].tolist()
    torch.testing.assert_close(compiled.solution, eager.solution, rtol=0, atol=1e-12)
    torch.testing.assert_close(compiled.history, eager.history, rtol=1e-6, atol=1e-14)
    # a new operator of the same code and sizes reuses the compiled iteration
    region2, b2 = _masked_system(gen)
    again = cg.conjugate_gradient(masked_poisson_operator(region2), b2, compile=True, tol=1e-10, max_iter=200)
    alone = cg.conjugate_gradient(masked_poisson_operator(region2), b2, tol=1e-10, max_iter=200)
    torch.testing.assert_close(again.solution, alone.solution, rtol=0, atol=1e-12)
    assert _graphs_compiled() == 2  # one more for the identity preconditioner, none for the new region


def test_compiled_huber_tv_prox_equals_eager(gen):
    z = torch.rand(2, 3, 9, 11, generator=gen, dtype=torch.float64)
    step = 0.05 + torch.rand(z.shape, generator=gen, dtype=torch.float64)
    eager = pd.prox_huber_tv(z, step, eta=0.2, tol=1e-10, max_iter=3000)
    compiled = pd.prox_huber_tv(z, step, eta=0.2, tol=1e-10, max_iter=3000, compile=True)
    assert _graphs_compiled() == 2  # iterations with and without the gap
    assert eager.all_converged and compiled.all_converged and compiled.iterations == eager.iterations
    torch.testing.assert_close(compiled.solution, eager.solution, rtol=0, atol=1e-12)
    torch.testing.assert_close(compiled.info["dual"], eager.info["dual"], rtol=0, atol=1e-12)


@pytest.mark.slow  # about 40 s here: two compilations of a large iteration (every sample active, one frozen)
@pytest.mark.parametrize("model", ["constrained", "penalized"])
def test_compiled_ot_equals_eager(model, gen):
    grid = StaggeredGrid(steps=4, channels=3, height=6, width=7)
    f0 = torch.rand(2, 3, 6, 7, generator=gen, dtype=torch.float64) + 0.5
    f1 = f0.flip(-1).clone()
    f1[1] = f0[1].flip(-2)  # the second sample stops first, and the first goes on with it frozen
    kw = dict(model=model, lam=2.0, tau=4.0, max_iter=400, tol=1e-4)
    eager = ot.ot_primal_dual(f0, f1, grid, **kw)
    compiled = ot.ot_primal_dual(f0, f1, grid, compile=True, **kw)
    assert _graphs_compiled() == 2  # every sample iterating, then one frozen
    its = eager.info["iterations"].tolist()
    assert its[0] != its[1] and compiled.info["iterations"].tolist() == its
    for a, b in zip(compiled.solution, eager.solution):
        if a is not None:
            torch.testing.assert_close(a, b, rtol=0, atol=1e-11)
    torch.testing.assert_close(compiled.info["cost_history"], eager.info["cost_history"], rtol=1e-9, atol=0)


@pytest.mark.slow  # about 70 s here: the compiled iteration with its backward
def test_compiled_ot_gradients_equal_eager(gen):
    grid = StaggeredGrid(steps=3, channels=1, height=5, width=6)
    f0 = (torch.rand(1, 1, 5, 6, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()
    f1 = (torch.rand(1, 1, 5, 6, generator=gen, dtype=torch.float64) + 0.5).requires_grad_()

    def gradients(compile: bool):
        res = ot.ot_primal_dual(f0, f1, grid, tau=2.0, max_iter=6, compile=compile)
        assert not res.history.requires_grad and not res.info["cost_history"].requires_grad
        return torch.autograd.grad(res.info["cost"].sum(), (f0, f1))

    for compiled, eager in zip(gradients(True), gradients(False)):
        torch.testing.assert_close(compiled, eager, rtol=0, atol=1e-12)
