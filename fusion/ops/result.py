"""The record every iterative solver in fusion returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


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
    """

    solution: Any
    iterations: int
    history: torch.Tensor
    converged: torch.Tensor
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def all_converged(self) -> bool:
        """True when every sample of the batch met the tolerance."""
        return bool(self.converged.all())
