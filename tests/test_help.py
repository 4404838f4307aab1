"""``--help`` of infer.py and train.py: a usage line, every method / experiment with a one-line summary, three
examples, and how to see one method's options."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from fusion.cli import config_summary
from fusion.methods import available_methods

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def _help(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / script), *args, "--help"], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    return proc.stdout


def _section(text: str, title: str) -> list[str]:
    block = re.search(rf"== {re.escape(title)} ==\n(.*?)\n\n", text, flags=re.S)
    assert block, f"no '{title}' section in:\n{text}"
    return block.group(1).splitlines()


@pytest.mark.parametrize("group", ["method", "experiment"])
def test_every_config_has_a_one_sentence_summary(group: str) -> None:
    for path in sorted((CONF / group).glob("*.yaml")):
        summary = config_summary(path)
        assert summary.endswith((".", ")")), f"{path.name}: the first comment line must be a whole summary: {summary!r}"


def test_infer_help() -> None:
    text = _help("infer.py")
    assert text.splitlines()[2].startswith("usage: python infer.py")
    listed = {line.split()[0]: line for line in _section(text, "Methods (method=NAME)")}
    assert sorted(listed) == available_methods()
    for name, line in listed.items():
        assert config_summary(CONF / "method" / f"{name}.yaml") in line
    examples = _section(text, "Examples")
    assert len(examples) == 3 and all(e.strip().startswith("python infer.py") for e in examples)
    assert "python infer.py method=ot --help" in text
    for training_group in ("experiment:", "trainer:", "fusionvae_digits", "callbacks:"):
        assert training_group not in text  # infer's help does not list the training groups


def test_infer_help_lists_one_methods_options() -> None:
    text = _help("infer.py", "method=ot")
    options = text.split("method:\n", 1)[1]
    for key in ("name: ot", "steps:", "model:", "max_iter:", "tol:"):
        assert key in options


def test_train_help() -> None:
    text = _help("train.py")
    assert text.splitlines()[2].startswith("usage: python train.py")
    listed = [line.split()[0] for line in _section(text, "Experiments (experiment=NAME)")]
    assert listed == sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    examples = _section(text, "Examples")
    assert len(examples) == 3 and all(e.strip().startswith("python train.py") for e in examples)
