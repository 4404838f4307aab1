"""The README's Python API examples run as written (on the CPU, on the built-in samples)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def _api_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Python API") : text.index("## Development")]
    return re.findall(r"```python\n(.*?)```", section, flags=re.S)


def test_the_python_api_examples_run(tmp_path: Path, monkeypatch) -> None:
    blocks = _api_blocks()
    assert len(blocks) >= 3, "the README's Python API section lost its examples"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "datasets").symlink_to(ROOT / "datasets")
    namespace: dict = {}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md (Python API, block {i + 1})", "exec"), namespace)  # noqa: S102
    assert os.path.getsize(tmp_path / "seamless.png") > 0
    assert namespace["seamless"].shape == namespace["bg"].shape
    result = namespace["result"]
    assert torch.equal(result.image, namespace["seamless"]) and result.solver.all_converged
    gain = namespace["gain"]
    assert gain.grad is not None and bool(torch.isfinite(gain.grad).all()) and bool(gain.grad.abs().sum() > 0)
    assert namespace["w"].shape == namespace["r4"].shape
