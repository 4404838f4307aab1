"""Pure differentiable operators: finite differences, trigonometric transforms, spectral and Krylov solvers."""

from fusion.ops.cg import conjugate_gradient
from fusion.ops.diff import (
    BOUNDARY_CONDITIONS,
    BoundaryCondition,
    backward_diff,
    div,
    forward_diff,
    grad,
    laplacian,
    second_diff,
)
from fusion.ops.masked import masked_poisson_operator, solve_masked_poisson
from fusion.ops.poisson import (
    laplacian_eigenvalues,
    laplacian_symbol,
    solve_poisson,
    spectral_forward,
    spectral_inverse,
)
from fusion.ops.result import SolverResult
from fusion.ops.staggered import Centred, Staggered, StaggeredGrid
from fusion.ops.transforms import dct, dst1, idct

__all__ = [
    "BOUNDARY_CONDITIONS",
    "BoundaryCondition",
    "Centred",
    "SolverResult",
    "Staggered",
    "StaggeredGrid",
    "backward_diff",
    "conjugate_gradient",
    "dct",
    "div",
    "dst1",
    "forward_diff",
    "grad",
    "idct",
    "laplacian",
    "laplacian_eigenvalues",
    "laplacian_symbol",
    "masked_poisson_operator",
    "second_diff",
    "solve_masked_poisson",
    "solve_poisson",
    "spectral_forward",
    "spectral_inverse",
]
