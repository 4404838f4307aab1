"""Architecture checks: package layers import only downwards, and the Makefile wires the venv stamp."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fusion"

# Rank of each top-level part of the package; a module may import parts of equal or lower rank only.
# ops → energies → optim → nn → methods → models → pipeline → evaluate (the evaluation command). metrics sits just
# above ops (usable by everything above it); data sits just below models (usable by models and pipeline only).
RANK = {
    "ops": 0,
    "metrics": 1,
    "energies": 2,
    "optim": 3,
    "nn": 4,
    "methods": 4.5,  # methods build on the networks (VGG features, the Blending GAN), never the reverse
    "data": 5,
    "models": 6,
    "options": 6,  # checks config values against signatures: plain Python, used by the pipeline
    "errors": 6,  # the command line's error vocabulary: plain Python
    "runs": 7,  # run folders, safe config instantiation, checkpoints
    "infer_files": 7,  # the inputs and outputs of one inference run
    "batch_items": 7,  # the items of a batch run: a manifest or three folders
    "batch_writer": 7.2,  # writing a batch run's outputs in threads; its progress bar
    "batch_lightning": 7.4,  # several processes of a batch run (Lightning's predict loop)
    "batch": 7.5,  # batch inference over a manifest or folders
    "cli": 8,  # the command-line contract, on top of runs
    "pipeline": 8,  # infer and train
    "evaluate": 9,  # the evaluation command sits on top of the pipeline and the command-line contract
    "compare_metrics": 9.1,  # the comparison's metrics, table and mean ± std
    "compare_gallery": 9.1,  # the comparison's labelled gallery
    "compare_benchmark": 9.2,  # the ground-truth benchmark built from photographs
    "compare": 9.3,  # python -m fusion.compare: many methods on the same inputs
}
# What each part may import from inside the package, beyond itself.
ALLOWED = {part: {other for other, rank in RANK.items() if rank < RANK[part]} for part in RANK}
ALLOWED["data"] = {"ops", "metrics"}  # data helpers need no solvers or methods

# Frameworks reserved for the upper layers: training (models, plus data modules) and configuration (pipeline).
FRAMEWORKS = {"lightning", "pytorch_lightning", "hydra", "omegaconf"}
FRAMEWORK_ALLOWED = {
    "models": FRAMEWORKS,
    "pipeline": FRAMEWORKS,
    "cli": FRAMEWORKS,
    "runs": FRAMEWORKS,
    "infer_files": FRAMEWORKS,
    "batch": FRAMEWORKS,
    "batch_lightning": FRAMEWORKS,
    "evaluate": FRAMEWORKS,
    "compare": FRAMEWORKS,
    "data": {"lightning", "pytorch_lightning"},  # the one exception: the DataModules sit beside their data sets
}


def _modules() -> list[tuple[str, Path]]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found.append((".".join(parts), path))
    return found


def _imports(module: str, path: Path) -> list[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved against ``module``)."""
    is_package = path.name == "__init__.py"
    package = module.split(".") if is_package else module.split(".")[:-1]
    names = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            names.append(prefix)
            names += [f"{prefix}.{alias.name}" for alias in node.names if prefix == "fusion"]
    return names


def _part(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "fusion" else None


MODULES = _modules()


def _root_names() -> set[str]:
    """Names defined in ``fusion/__init__.py`` itself (torch-free, below every layer, importable by all)."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    names = {node.name for node in tree.body if isinstance(node, (ast.ClassDef, ast.FunctionDef))}
    for node in tree.body:
        if isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


ROOT_NAMES = _root_names()


def test_every_module_has_a_layer() -> None:
    unknown = sorted({_part(m) for m, _ in MODULES if _part(m) is not None and _part(m) not in RANK})
    assert not unknown, f"fusion.{unknown} not assigned a layer; add it to RANK in tests/test_layering.py"


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_imports_go_downwards(module: str, path: Path) -> None:
    part = _part(module)
    imported = _imports(module, path)
    if part is None:  # fusion/__init__.py stays light: no subpackage imports at all
        assert not [n for n in imported if n.startswith("fusion.")], imported
        return
    bad = []
    for name in imported:
        target = _part(name)
        if name.split(".")[0] != "fusion" or target is None or target == part or target in ROOT_NAMES:
            continue
        if target not in ALLOWED.get(part, set()):
            bad.append(name)
    assert not bad, f"{module} imports upward or sideways: {bad}"


@pytest.mark.parametrize(("module", "path"), MODULES, ids=[m for m, _ in MODULES])
def test_frameworks_only_in_upper_layers(module: str, path: Path) -> None:
    allowed = FRAMEWORK_ALLOWED.get(_part(module) or "", set())
    used = {name.split(".")[0] for name in _imports(module, path)} & FRAMEWORKS
    assert used <= allowed, f"{module} imports {sorted(used - allowed)}"


def test_import_fusion_is_light() -> None:
    code = "import sys, fusion; print(fusion.__version__); assert 'torch' not in sys.modules, 'torch imported'"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0.1.0"


@pytest.mark.parametrize(("target", "command"), [("test", "pytest"), ("demo", "infer.py")])
def test_makefile_targets_depend_on_venv_stamp(target: str, command: str) -> None:
    # -B treats every prerequisite as out of date, so the dry run lists the install recipe too.
    # The environment of an enclosing make (as under `make test`) is dropped so the output is plain.
    inherited = {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"}
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    command_line = ["make", "--no-print-directory", "-n", "-B", target]
    proc = subprocess.run(command_line, capture_output=True, text=True, cwd=ROOT, env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    stamp = next(i for i, line in enumerate(lines) if line.startswith("touch .venv/.installed"))
    assert any("pip install" in line and " -e " in line for line in lines[:stamp])
    run = [i for i, line in enumerate(lines) if line.startswith(".venv/bin/python") and command in line]
    assert run and run[-1] > stamp, lines  # the target runs after the environment is installed


#: The modules allowed to import by name at run time, and why: method discovery imports the modules of its own
#: package, and config instantiation resolves a ``_target_`` only after checking it against the allowlist.
DYNAMIC_IMPORTS = {"fusion.methods", "fusion.runs"}


def _dynamic_imports(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__"):
                return True
    return False


def test_dynamic_imports_only_where_allowed() -> None:
    found = {module for module, path in MODULES if _dynamic_imports(path)}
    assert found == DYNAMIC_IMPORTS, (
        f"run-time imports in {sorted(found - DYNAMIC_IMPORTS)}; gone from {sorted(DYNAMIC_IMPORTS - found)}"
    )


def test_no_import_cycles() -> None:
    # module-level imports between fusion's modules form no cycle, within a layer or across layers
    names = {module for module, _ in MODULES}
    graph = {}
    for module, path in MODULES:
        targets = set()
        for name in _imports(module, path):
            while name and name not in names:
                name = name.rpartition(".")[0]
            if name and name != module and name != "fusion":
                targets.add(name)
        graph[module] = targets
    state: dict[str, int] = {}
    cycle: list[str] = []

    def visit(node: str, stack: list[str]) -> bool:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle.extend(stack[stack.index(nxt) :] + [node, nxt] if nxt in stack else [node, nxt])
                return True
            if nxt not in state and visit(nxt, stack + [node]):
                return True
        state[node] = 2
        return False

    for module in sorted(graph):
        if module not in state and visit(module, []):
            break
    assert not cycle, f"import cycle: {' -> '.join(cycle)}"
