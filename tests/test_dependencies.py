"""Every third-party module the package imports at run time is a runtime dependency of pyproject.toml, so a plain
``pip install .`` (what the Dockerfile does) runs every method and experiment, FusionDigits included."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parents[1]
#: import name → distribution name, where they differ
DISTRIBUTION = {
    "cv2": "opencv-python-headless",
    "sklearn": "scikit-learn",
    "skimage": "scikit-image",
    "PIL": "pillow",
    "hydra": "hydra-core",
    "yaml": "pyyaml",
}
#: imported, and installed as a dependency of a listed distribution (numpy by torch, omegaconf by hydra-core)
TRANSITIVE = {"numpy": "torch", "omegaconf": "hydra-core", "pytorch_lightning": "lightning"}


def _third_party_imports() -> set[str]:
    names = set()
    for path in (ROOT / "fusion").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ("fusion", "__future__")}


def _runtime_dependencies() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = set()
    for spec in project["dependencies"]:
        name = spec.split(";")[0]
        for sep in "<>=!~[ ":
            name = name.split(sep)[0]
        names.add(name.strip().lower())
    return names


def test_runtime_imports_are_runtime_dependencies() -> None:
    deps = _runtime_dependencies()
    missing = []
    for module in sorted(_third_party_imports()):
        if module in TRANSITIVE:
            assert TRANSITIVE[module] in deps, (module, TRANSITIVE[module])
            continue
        if DISTRIBUTION.get(module, module).lower() not in deps:
            missing.append(f"{module} ({DISTRIBUTION.get(module, module)})")
    assert not missing, f"imported by fusion/ but not a runtime dependency: {missing}"


def test_dockerfile_installs_the_runtime_dependencies() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert "pip install" in text and " -e ." in text  # the project itself, hence [project.dependencies]


def test_the_configuration_stack_is_a_release() -> None:
    """A pre-release specifier in a plugin's requirements lets pip pick a release candidate of hydra-core (and of
    omegaconf with it); pyproject's bound keeps the tested release series."""
    from importlib.metadata import version

    from packaging.version import Version

    for package in ("hydra-core", "omegaconf"):
        assert not Version(version(package)).is_prerelease, (package, version(package))
    assert Version(version("hydra-core")) < Version("1.4")
