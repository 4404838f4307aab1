"""The README's paragraph on host checks and ``compile=True`` names the solvers' real defaults."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from fusion.ops.cg import bicgstab, conjugate_gradient
from fusion.optim.ipiano import ipiano
from fusion.optim.ot_primal_dual import ot_primal_dual
from fusion.optim.primal_dual import chambolle_pock, prox_huber_tv

ROOT = Path(__file__).resolve().parents[1]
SOLVERS = {f.__name__: f for f in (conjugate_gradient, bicgstab, ot_primal_dual, prox_huber_tv, chambolle_pock, ipiano)}


def _paragraph() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("The iterative solvers keep each sample's stopping state")
    return " ".join(text[start : text.index("\n\n", start)].split())


def test_check_every_defaults_are_the_readme_s() -> None:
    said = {}
    for group, value in re.findall(r"((?:`\w+`(?:, | and )?)+): (\d+)", _paragraph()):
        for name in re.findall(r"`(\w+)`", group):
            said[name] = int(value)
    assert set(said) == set(SOLVERS)
    for name, value in said.items():
        assert inspect.signature(SOLVERS[name]).parameters["check_every"].default == value, name


def test_the_solvers_said_to_compile_take_compile() -> None:
    sentence = _paragraph()[_paragraph().index("`compile=True` on") :].split(" runs ")[0]
    names = re.findall(r"`(\w+)`", sentence)
    assert names == ["conjugate_gradient", "chambolle_pock", "prox_huber_tv", "ot_primal_dual"]
    for name in names:
        assert inspect.signature(SOLVERS[name]).parameters["compile"].default is False
