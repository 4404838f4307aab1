"""Solvers and optimisers; every iterative solver returns a :class:`SolverResult`."""

from fusion.ops.result import SolverResult
from fusion.optim.ipiano import ipiano
from fusion.optim.lbfgs import lbfgs
from fusion.optim.ot_primal_dual import ot_primal_dual
from fusion.optim.primal_dual import chambolle_pock, prox_huber_tv

__all__ = ["SolverResult", "chambolle_pock", "ipiano", "lbfgs", "ot_primal_dual", "prox_huber_tv"]
