"""The README's example inference commands run on the built-in samples and converge with their defaults — or the
README says, on the command's own line, that it stops at its iteration cap (and then it must say so when run)."""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "datasets" / "samples"
#: README commands that need what this machine does not have: trained GP-GAN weights and VGG16 ImageNet weights.
NEEDS_WEIGHTS = {"gpgan": "a trained checkpoint (ckpt=)", "deep_blend": "VGG16 ImageNet weights"}
CAP_NOTE = "stops at its cap"


def _readme_commands() -> list[tuple[str, str]]:
    """``(arguments, comment)`` of every ``python infer.py`` line in the README's code blocks."""
    found, fenced = [], False
    for line in (ROOT / "README.md").read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif fenced and line.startswith("python infer.py"):
            command, _, comment = line.partition("#")
            found.append((command[len("python infer.py") :].strip(), comment.strip()))
    return found


COMMANDS = _readme_commands()


def _method(args: str) -> str:
    return next((a.split("=", 1)[1] for a in shlex.split(args) if a.startswith("method=")), "poisson")


def test_readme_has_the_examples() -> None:
    methods = {_method(args) for args, _ in COMMANDS}
    assert {"poisson", "osmosis", "linear_osmosis", "ot"} <= methods, methods


RUNNABLE = [(a, c) for a, c in COMMANDS if _method(a) not in NEEDS_WEIGHTS]


@pytest.mark.slow
@pytest.mark.parametrize(("args", "comment"), RUNNABLE, ids=[a for a, _ in RUNNABLE])
def test_readme_example_converges_or_says_it_stops_at_its_cap(args: str, comment: str, tmp_path: Path) -> None:
    argv = []
    for arg in shlex.split(args):
        key, _, value = arg.partition("=")
        if key in ("fg", "bg", "mask"):  # the README's placeholder files are the built-in samples here
            arg = f"{key}={SAMPLES / f'{key}.png'}"
        if key == "out":
            continue
        argv.append(arg)
    out = tmp_path / "result.png"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), *argv, f"out={out}", f"hydra.run.dir={tmp_path / 'run'}"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    warnings_ = [line for line in proc.stderr.splitlines() if line.startswith("warning: ")]
    if CAP_NOTE in comment:
        assert warnings_, f"the README says {args!r} stops at its cap, but it printed no warning"
    else:
        assert not warnings_, f"{args!r} did not converge with its defaults: {warnings_}"
