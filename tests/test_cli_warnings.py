"""Non-convergence on the command line: one ``warning:`` line on stderr, exit status 0, a record in the run log."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest
import torch

import fusion
from fusion.cli import convergence_warnings_as_lines, run_cli
from fusion.ops.result import SolverResult, warn_unconverged


def _unconverged(method: str) -> None:
    res = SolverResult(
        torch.zeros(1),
        4,
        torch.zeros(5, 1),
        torch.tensor([False]),
        criterion="relative residual",
        tol=1e-6,
        reached=torch.tensor([0.25]),
    )
    warn_unconverged(res, method)


def test_run_cli_prints_one_warning_line_and_logs_it(tmp_path: Path, capsys) -> None:
    log_file = tmp_path / "run.log"
    handler = logging.FileHandler(log_file)
    root = logging.getLogger()
    root.addHandler(handler)
    try:

        def job(cfg):
            _unconverged("demo (exact)")
            _unconverged("demo (exact)")  # the same warning twice is reported twice
            return {"result": tmp_path / "r.png"}

        run_cli(job, None)
    finally:
        root.removeHandler(handler)
        handler.close()
    err = capsys.readouterr().err.strip().splitlines()
    expected = (
        "warning: demo (exact) did not converge for 1 of 1 sample (sample 0) after 4 iterations: "
        "relative residual 0.25 > tol 1e-06"
    )
    assert err == [expected, expected]
    logged = log_file.read_text().strip().splitlines()
    assert logged == [expected, expected]


def test_other_warnings_are_left_alone(capsys) -> None:
    with convergence_warnings_as_lines(), pytest.warns(DeprecationWarning):
        warnings.warn("old", DeprecationWarning)
    assert "warning: old" not in capsys.readouterr().err


def test_filters_are_restored_after_the_run() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error", fusion.ConvergenceWarning)
        with convergence_warnings_as_lines():
            _unconverged("inside")  # printed, not raised
        with pytest.raises(fusion.ConvergenceWarning):
            _unconverged("outside")
