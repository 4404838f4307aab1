"""User-facing methods, one module per method, and the name registry ``infer.py`` selects from.

Importing this package imports every method module in it, so each registers itself by name.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from fusion.methods.deep_blend import (
    STAGE1_DEFAULTS,
    STAGE2_DEFAULTS,
    StageConfig,
    deep_blend_solve,
    deep_image_blend,
)
from fusion.methods.gaussian_poisson import gaussian_poisson_blend, gaussian_poisson_solve
from fusion.methods.gpgan import blending_gan_color, gpgan_blend
from fusion.methods.osmosis import alpha_map, linear_osmosis, osmosis_filter_fusion, osmosis_fusion, solve_u_block
from fusion.methods.ot import OTResult, ot_interpolate
from fusion.methods.poisson import (
    guidance_field,
    perez_residual,
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
    "STAGE1_DEFAULTS",
    "STAGE2_DEFAULTS",
    "MethodOutput",
    "OTResult",
    "StageConfig",
    "blending_gan_color",
    "deep_blend_solve",
    "deep_image_blend",
    "gpgan_blend",
    "osmosis_filter_fusion",
    "osmosis_fusion",
    "solve_u_block",
    "ot_interpolate",
    "MethodSpec",
    "alpha_map",
    "available_methods",
    "gaussian_poisson_blend",
    "gaussian_poisson_solve",
    "get_method",
    "guidance_field",
    "linear_osmosis",
    "method_spec",
    "place_source",
    "poisson_blend",
    "poisson_solve_exact",
    "perez_residual",
    "poisson_solve_inertial",
    "register",
]
