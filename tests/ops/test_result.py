"""The one non-convergence report: fusion.ConvergenceWarning from warn_unconverged, and the iteration-cap checks."""

from __future__ import annotations

import warnings

import pytest
import torch

import fusion
from fusion.ops.checks import check_max_iter, check_tol
from fusion.ops.result import SolverResult, warn_unconverged


def _result(converged, reached, *, iterations=7, tol=1e-6, criterion="relative residual"):
    b = len(converged)
    return SolverResult(
        solution=torch.zeros(b, 1),
        iterations=iterations,
        history=torch.zeros(iterations + 1, b),
        converged=torch.tensor(converged),
        criterion=criterion,
        tol=tol,
        reached=torch.tensor(reached),
    )


def test_converged_result_is_silent() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = _result([True, True], [1e-7, 2e-7])
        assert warn_unconverged(res, "demo") is res


def test_warning_names_method_samples_iterations_criterion_and_tol() -> None:
    res = _result([True, False, False], [1e-7, 2.5e-3, 4e-2], iterations=20)
    with pytest.warns(fusion.ConvergenceWarning) as caught:
        warn_unconverged(res, "poisson (exact)")
    assert len(caught) == 1
    w = caught[0].message
    assert isinstance(w, UserWarning)
    text = str(w)
    assert text.startswith("poisson (exact) did not converge for 2 of 3 samples (samples 1, 2) after 20 iterations")
    assert "relative residual 0.0025, 0.04 > tol 1e-06" in text
    assert (w.method, w.samples, w.batch, w.iterations, w.tol) == ("poisson (exact)", (1, 2), 3, 20, 1e-6)
    assert w.reached == pytest.approx((2.5e-3, 4e-2))
    assert "\n" not in text


def test_warning_points_at_the_caller() -> None:
    def method():
        warn_unconverged(_result([False], [1.0]), "m", stacklevel=2)

    with pytest.warns(fusion.ConvergenceWarning) as caught:
        method()  # the warning is attributed to this line, not to fusion internals
    assert caught[0].filename == __file__


def test_without_reached_values_the_tolerance_is_still_named() -> None:
    res = SolverResult(torch.zeros(1), 3, torch.zeros(4, 1), torch.tensor([False]), criterion="gap", tol=1e-4)
    with pytest.warns(fusion.ConvergenceWarning, match=r"gap above tol 0\.0001"):
        warn_unconverged(res, "m")


@pytest.mark.parametrize("bad", [0, -3, 2.5, "10", True, None])
def test_check_max_iter_rejects(bad) -> None:
    with pytest.raises(ValueError, match="my_cap"):
        check_max_iter(bad, "my_cap")


def test_check_max_iter_accepts_positive_integers() -> None:
    assert check_max_iter(1) == 1 and check_max_iter(20000) == 20000


@pytest.mark.parametrize("bad", [0, -1e-3, float("nan"), float("inf"), "1e-6", False])
def test_check_tol_rejects(bad) -> None:
    with pytest.raises(ValueError, match="tol"):
        check_tol(bad)
