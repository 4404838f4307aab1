"""The README's two commands: exactly `make demo` and `make test`, and `make demo` really produces a blend."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from fusion.data.io import read_image

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quick_start_has_the_two_commands() -> None:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Quick start\s*```\s*\n(.*?)```", text, flags=re.S)
    assert block is not None, "README needs a Quick start code block"
    assert [line.strip() for line in block.group(1).strip().splitlines()] == ["make demo", "make test"]


def test_make_demo_writes_a_blend(tmp_path: Path) -> None:
    inherited = {"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"}
    env = {k: v for k, v in os.environ.items() if k not in inherited}
    run_dir = tmp_path / "demo"
    proc = subprocess.run(
        ["make", "--no-print-directory", "demo", f"ARGS=hydra.run.dir={run_dir}"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = run_dir / "result.png"
    assert f"wrote result: {result}" in proc.stdout
    blended = read_image(result)
    bg = read_image(ROOT / "datasets" / "samples" / "bg.png")
    assert blended.shape == bg.shape
    assert (blended - bg).abs().amax() > 0.1  # something was blended in
    assert (run_dir / "result_side_by_side.png").is_file()
