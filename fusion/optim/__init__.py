"""Solvers and optimisers; every iterative solver returns a :class:`SolverResult`."""

from fusion.ops.result import SolverResult
from fusion.optim.ipiano import ipiano

__all__ = ["SolverResult", "ipiano"]
