"""The record every iterative solver in fusion returns, and the one place that reports non-convergence."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import torch

from fusion import ConvergenceWarning


@dataclass
class SolverResult:
    """Outcome of an iterative solve.

    Attributes:
        solution: the solution (a tensor, or a tuple of tensors for block solvers).
        iterations: iterations performed.
        history: ``(iterations + 1, B)`` per-sample values of the monitored quantity (relative residual for
            Krylov solvers, energy for descent methods), starting with the initial value.
        converged: ``(B,)`` bool, whether each batch sample met the tolerance.
        info: solver-specific extras (e.g. final Lipschitz estimates); never needed to use the solution.
        criterion: what ``converged`` measures, in words (e.g. ``"relative residual"``): the quantity compared
            with ``tol``. Empty for a solver that does not say.
        tol: the tolerance ``converged`` was decided with (``None``: not said).
        reached: ``(B,)`` the criterion's value for each sample when it stopped (``None``: not said).
    """

    solution: Any
    iterations: int
    history: torch.Tensor
    converged: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)
    criterion: str = ""
    tol: float | None = None
    reached: torch.Tensor | None = None

    @property
    def all_converged(self) -> bool:
        """True when every sample of the batch met the tolerance."""
        return bool(self.converged.all())


def warn_unconverged(result: SolverResult, method: str, *, stacklevel: int = 2) -> SolverResult:
    """Emit one :class:`fusion.ConvergenceWarning` if some sample of ``result`` did not converge; return ``result``.

    The message names ``method``, the samples that did not converge, the iterations, the criterion with its
    reached values and the tolerance. Every iterative method calls this once, on its outermost result (inner
    solves with loose tolerances are the method's business). One device synchronisation.

    Example:
        >>> import warnings
        >>> r = SolverResult(torch.zeros(2), 5, torch.zeros(6, 2), torch.tensor([True, False]),
        ...                  criterion="relative residual", tol=1e-6, reached=torch.tensor([1e-7, 3e-3]))
        >>> with warnings.catch_warnings(record=True) as caught:
        ...     warnings.simplefilter("always")
        ...     _ = warn_unconverged(r, "demo")
        >>> print(caught[0].message)
        demo did not converge for 1 of 2 samples (sample 1) after 5 iterations: relative residual 0.003 > tol 1e-06
    """
    converged = result.converged.reshape(-1).cpu()
    if bool(converged.all()):
        return result
    samples = [int(i) for i in torch.nonzero(~converged).flatten()]
    batch = converged.numel()
    reached: list[float] = []
    if result.reached is not None:
        values = result.reached.detach().reshape(-1).cpu()
        reached = [float(values[i]) for i in samples] if values.numel() == batch else [float(v) for v in values]
    shown = samples[:8]
    which = ("sample " if len(samples) == 1 else "samples ") + ", ".join(str(i) for i in shown)
    if len(samples) > len(shown):
        which += ", ..."
    message = f"{method} did not converge for {len(samples)} of {batch} sample{'s' if batch > 1 else ''} ({which})"
    message += f" after {result.iterations} iteration{'s' if result.iterations != 1 else ''}"
    criterion = result.criterion or "stopping criterion"
    if reached:
        values_text = ", ".join(f"{v:.3g}" for v in reached[: len(shown)])
        if len(reached) > len(shown):
            values_text += ", ..."
        message += f": {criterion} {values_text}"
        if result.tol is not None:
            message += f" > tol {result.tol:g}"
    elif result.tol is not None:
        message += f": {criterion} above tol {result.tol:g}"
    warnings.warn(
        ConvergenceWarning(
            message,
            method=method,
            samples=samples,
            batch=batch,
            iterations=result.iterations,
            criterion=criterion,
            reached=reached,
            tol=result.tol,
        ),
        stacklevel=stacklevel + 1,
    )
    return result
