"""Every registered method follows the one contract of :mod:`fusion.methods.contract`: the same names, the same
return shapes, a Module, and a ``<m>_cli`` adapter returning ``MethodOutput``."""

from __future__ import annotations

import typing

import pytest
import torch
from torch import nn

import fusion.methods
from fusion.methods import MethodOutput, MethodResult, available_methods, method_spec

#: The Module of each method (names with acronyms are not derivable from the method's name).
MODULES = {
    "deep_blend": "DeepBlend",
    "gaussian_poisson": "GaussianPoissonBlend",
    "gpgan": "GPGANBlend",
    "linear_osmosis": "LinearOsmosisBlend",
    "osmosis": "OsmosisBlend",
    "ot": "OTInterpolate",
    "poisson": "PoissonBlend",
    "paste": "PasteBlend",
    "feather": "FeatherBlend",
    "laplacian_pyramid": "LaplacianPyramidBlend",
    "mpb": "MPBBlend",
    "msb": "MSBBlend",
}


def _image_function(name: str) -> str:
    if name == "ot":  # a method of two images whose output is the path between them
        return "ot_interpolate"
    return name if name.endswith("_blend") else f"{name}_blend"


def test_every_method_is_in_the_table() -> None:
    assert sorted(MODULES) == available_methods()


@pytest.mark.parametrize("name", sorted(MODULES))
def test_names_and_return_shapes(name: str) -> None:
    blend = getattr(fusion.methods, _image_function(name))
    solve = getattr(fusion.methods, f"{name}_solve")
    module = getattr(fusion.methods, MODULES[name])
    assert typing.get_type_hints(blend)["return"] is torch.Tensor
    returned = typing.get_type_hints(solve)["return"]
    assert isinstance(returned, type) and issubclass(returned, MethodResult), returned
    assert isinstance(module, type) and issubclass(module, nn.Module)
    spec = method_spec(name)
    assert spec.fn.__name__ == f"{name}_cli"
    assert typing.get_type_hints(spec.fn)["return"] is MethodOutput
    # the Python names are exported at the package level
    for obj in (blend, solve, module):
        assert obj.__name__ in fusion.methods.__all__


def test_direct_result_reports_converged() -> None:
    r = MethodResult(torch.zeros(3, 1, 2, 2))
    assert r.converged.tolist() == [True, True, True]


def _readme_table() -> dict[str, list[str]]:
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = text[text.index("Every method has the same four faces") :]
    rows = {}
    lines = section.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|---"))
    for line in lines[start + 1 :]:
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[0].startswith("`"):
            rows[cells[0].strip("`")] = [c.split("`")[1] for c in cells[1:]]
    return rows


def test_the_readme_table_names_each_method_s_faces() -> None:
    table = _readme_table()
    assert sorted(table) == available_methods()
    for name, (blend, solve, module) in table.items():
        assert blend == _image_function(name) and solve == f"{name}_solve" and module == MODULES[name]


def test_no_package_name_hides_a_method_module() -> None:
    # ``fusion.methods.deep_blend`` is the function; a module of that name would be unreachable as an attribute
    import importlib
    import pkgutil

    for info in pkgutil.iter_modules(fusion.methods.__path__):
        module = importlib.import_module(f"fusion.methods.{info.name}")
        assert getattr(fusion.methods, info.name) is module, info.name
