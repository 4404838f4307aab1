"""fusion: GPU-first PyTorch operators, solvers and models for image fusion and blending.

Subpackages are imported on demand (``fusion.ops``, ``fusion.methods``, ...); importing ``fusion`` itself
is cheap (it holds only what every layer shares and needs no torch: :class:`ConvergenceWarning`).
"""

from __future__ import annotations

from typing import Sequence

__version__ = "0.1.0"


class ConvergenceWarning(UserWarning):
    """An iterative method stopped before its tolerance was met for some samples of a batch.

    Every iterative method of :mod:`fusion.methods` emits it (through
    :func:`fusion.ops.result.warn_unconverged`) instead of returning an unfinished result silently; the command
    line prints it as one ``warning: ...`` line. The attributes say what happened:

    Attributes:
        method: the method and solver, e.g. ``"poisson (exact)"``.
        samples: indices of the batch samples that did not converge.
        batch: the batch size.
        iterations: iterations performed.
        criterion: what the tolerance applies to, e.g. ``"relative residual"``.
        reached: the criterion's final value for each sample in ``samples``.
        tol: the tolerance.
    """

    def __init__(
        self,
        message: str,
        *,
        method: str = "",
        samples: Sequence[int] = (),
        batch: int = 0,
        iterations: int = 0,
        criterion: str = "",
        reached: Sequence[float] = (),
        tol: float | None = None,
    ) -> None:
        super().__init__(message)
        self.method = method
        self.samples = tuple(samples)
        self.batch = batch
        self.iterations = iterations
        self.criterion = criterion
        self.reached = tuple(reached)
        self.tol = tol


__all__ = ["ConvergenceWarning", "__version__"]
