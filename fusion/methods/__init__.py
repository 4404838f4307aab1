"""User-facing methods, one module per method, and the name registry ``infer.py`` selects from.

Importing this package imports every method module in it, so each registers itself by name.
"""

import importlib as _importlib
import pkgutil as _pkgutil

from fusion.methods.contract import MethodResult
from fusion.methods.deep_image_blending import (
    STAGE1_DEFAULTS,
    STAGE2_DEFAULTS,
    DeepBlend,
    DeepBlendResult,
    StageConfig,
    deep_blend,
    deep_blend_solve,
)
from fusion.methods.feather import FeatherBlend, FeatherResult, feather_alpha, feather_blend, feather_solve
from fusion.methods.gaussian_poisson import (
    GaussianPoissonBlend,
    GaussianPoissonResult,
    gaussian_poisson_blend,
    gaussian_poisson_level,
    gaussian_poisson_solve,
)
from fusion.methods.gpgan import GPGANBlend, GPGANResult, blending_gan_color, gpgan_blend, gpgan_solve
from fusion.methods.laplacian_pyramid import (
    LaplacianPyramidBlend,
    LaplacianPyramidResult,
    laplacian_pyramid_blend,
    laplacian_pyramid_solve,
)
from fusion.methods.linear_osmosis import (
    LinearOsmosisBlend,
    linear_osmosis_blend,
    linear_osmosis_solve,
    osmosis_filter,
    solve_u_block,
)
from fusion.methods.mpb import MPBBlend, MPBResult, mpb_blend, mpb_solve
from fusion.methods.msb import MSBBlend, MSBResult, msb_blend, msb_solve
from fusion.methods.osmosis import OsmosisBlend, OsmosisResult, alpha_map, osmosis_blend, osmosis_solve
from fusion.methods.ot import OTInterpolate, OTResult, ot_interpolate, ot_solve
from fusion.methods.paste import PasteBlend, paste_blend, paste_solve
from fusion.methods.poisson import (
    PoissonBlend,
    guidance_field,
    perez_residual,
    place_source,
    poisson_blend,
    poisson_solve,
)
from fusion.methods.registry import (
    MethodOutput,
    MethodSpec,
    available_methods,
    checked_result,
    get_method,
    method_spec,
    recorded_convergence,
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
    "DeepBlend",
    "DeepBlendResult",
    "deep_blend",
    "deep_blend_solve",
    "gpgan_blend",
    "gpgan_solve",
    "GPGANBlend",
    "GPGANResult",
    "LinearOsmosisBlend",
    "OsmosisBlend",
    "OsmosisResult",
    "linear_osmosis_blend",
    "linear_osmosis_solve",
    "osmosis_blend",
    "osmosis_filter",
    "osmosis_solve",
    "solve_u_block",
    "ot_interpolate",
    "ot_solve",
    "OTInterpolate",
    "MethodSpec",
    "alpha_map",
    "available_methods",
    "checked_result",
    "gaussian_poisson_blend",
    "gaussian_poisson_solve",
    "get_method",
    "guidance_field",
    "method_spec",
    "recorded_convergence",
    "place_source",
    "poisson_blend",
    "poisson_solve",
    "perez_residual",
    "PoissonBlend",
    "MethodResult",
    "GaussianPoissonBlend",
    "GaussianPoissonResult",
    "gaussian_poisson_level",
    "register",
    "FeatherBlend",
    "FeatherResult",
    "feather_alpha",
    "feather_blend",
    "feather_solve",
    "LaplacianPyramidBlend",
    "LaplacianPyramidResult",
    "laplacian_pyramid_blend",
    "laplacian_pyramid_solve",
    "MPBBlend",
    "MPBResult",
    "mpb_blend",
    "mpb_solve",
    "MSBBlend",
    "MSBResult",
    "msb_blend",
    "msb_solve",
    "PasteBlend",
    "paste_blend",
    "paste_solve",
]
