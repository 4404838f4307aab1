"""User-facing methods, one module per method, and the name registry ``infer.py`` selects from."""

from fusion.methods.gaussian_poisson import gaussian_poisson_blend, gaussian_poisson_solve
from fusion.methods.poisson import (
    guidance_field,
    place_source,
    poisson_blend,
    poisson_solve_exact,
    poisson_solve_inertial,
)
from fusion.methods.registry import MethodOutput, MethodSpec, available_methods, get_method, method_spec, register

__all__ = [
    "MethodOutput",
    "MethodSpec",
    "method_spec",
    "available_methods",
    "gaussian_poisson_blend",
    "gaussian_poisson_solve",
    "get_method",
    "guidance_field",
    "place_source",
    "poisson_blend",
    "poisson_solve_exact",
    "poisson_solve_inertial",
    "register",
]
