"""The one shape every method has.

A method registered as ``<m>`` (``infer.py method=<m>``) offers, in ``fusion/methods``:

* ``<m>_blend(fg, bg, mask, *, options...) -> Tensor``: the ``(B, C, H, W)`` image, batched, differentiable where
  its docstring says so. When ``<m>`` already ends in ``_blend`` the function is ``<m>`` itself
  (``deep_blend``). Optimal transport is a method of two images whose output is a path, so its image function is
  ``ot_interpolate(f0, f1, ...) -> Tensor`` (the frames).
* ``<m>_solve(...) -> MethodResult``: the same computation, returning what a researcher inspects besides the
  image: the :class:`~fusion.ops.result.SolverResult` of an iterative method (``None`` for a direct one) and, in a
  subclass of :class:`MethodResult`, the method's intermediate images (osmosis' ``v``, OT's momentum, ...).
  ``<m>_blend(...)`` equals ``<m>_solve(...).image`` for the same arguments.
* ``<Name>(nn.Module)`` (``PoissonBlend``, ``DeepBlend``, ``OTInterpolate``, ...): holds the options,
  ``forward(fg, bg, mask)`` calls ``<m>_blend``; a method can be a layer of a training graph.
* one command-line adapter ``<m>_cli(fg, bg, mask, **options) -> MethodOutput``, registered under ``<m>``.

An iterative ``_blend`` or ``_solve`` that stops before its tolerance emits one
:class:`fusion.ConvergenceWarning`; ``MethodResult.solver.converged`` says the same per sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fusion.ops.result import SolverResult


@dataclass
class MethodResult:
    """What ``<m>_solve`` returns.

    Attributes:
        image: what ``<m>_blend`` returns: the ``(B, C, H, W)`` result (for optimal transport, the
            ``(steps + 1, B, C, H, W)`` frames).
        solver: the iterative solve behind ``image`` (its ``converged``, ``history``, ``criterion``, ``reached``),
            or ``None`` for a method without iterations (a closed form, a network's forward pass).
    """

    image: torch.Tensor
    solver: SolverResult | None = None

    @property
    def converged(self) -> torch.Tensor:
        """``(B,)`` bool: whether each sample met its tolerance (all ``True`` for a direct method)."""
        if self.solver is None:
            batch = self.image.shape[-4] if self.image.dim() >= 4 else 1
            return torch.ones(batch, dtype=torch.bool, device=self.image.device)
        return self.solver.converged


__all__ = ["MethodResult"]
