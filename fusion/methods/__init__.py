"""User-facing methods, one module per method, and the name registry ``infer.py`` selects from.

Importing this package imports every method module in it, so each registers itself by name.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from fusion.methods.gaussian_poisson import gaussian_poisson_blend, gaussian_poisson_solve
from fusion.methods.poisson import (
    guidance_field,
    place_source,
    poisson_blend,
    poisson_solve_exact,
    poisson_solve_inertial,
)
from fusion.methods.registry import (
    MethodOutput,
    MethodSpec,
    available_methods,
    get_method,
    method_spec,
    register,
)

for _module in _pkgutil.iter_modules(__path__):
    _importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "MethodOutput",
    "MethodSpec",
    "available_methods",
    "gaussian_poisson_blend",
    "gaussian_poisson_solve",
    "get_method",
    "guidance_field",
    "method_spec",
    "place_source",
    "poisson_blend",
    "poisson_solve_exact",
    "poisson_solve_inertial",
    "register",
]
