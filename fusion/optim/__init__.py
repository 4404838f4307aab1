"""Solvers and optimisers; every iterative solver returns a :class:`SolverResult`."""

from fusion.ops.result import SolverResult
from fusion.optim.ipiano import ipiano
from fusion.optim.ot_primal_dual import ot_primal_dual

__all__ = ["SolverResult", "ipiano", "ot_primal_dual"]
