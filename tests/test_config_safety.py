"""A config, or a run config saved next to a checkpoint, can build only fusion's own classes and the torch / Lightning
pieces its configs name: nothing else is ever called."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fusion.runs import check_targets, load_network

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_shipped_experiment_is_allowed(experiment: str) -> None:
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}"])
    check_targets(cfg, "cfg")  # raises on a target outside the allowlist


@pytest.mark.parametrize(
    "target",
    [
        "pathlib.Path.touch",
        "os.system",
        "builtins.exec",
        "subprocess.run",
        "torch.save",
        "fusion.data.synthetic_layouts.write_synthetic_transient",  # fusion's, but a function that writes files
        "fusion.pipeline.train",
        "${oc.env:HOME}",
    ],
)
def test_targets_outside_the_allowlist_are_refused(target: str) -> None:
    node = OmegaConf.create({"model": {"generator": {"_target_": "fusion.nn.gpgan.BlendingGenerator"}}})
    check_targets(node, "run")
    bad = OmegaConf.create({"model": {"opt": [{"x": {"_target_": target, "_args_": ["/tmp/never"]}}]}})
    with pytest.raises(ValueError, match=r"run\.model\.opt\[0\]\.x\._target_ .* is not allowed"):
        check_targets(bad, "run")


def _poisoned_run(tmp_path: Path, victim: Path, key: str) -> Path:
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    node = {"_target_": "pathlib.Path.touch", "_args_": [str(victim)]}
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"model": {key: node}, "data": node}))
    ckpt = run / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": {f"{key}.w": torch.zeros(1)}, "global_step": 1}, ckpt)
    return ckpt


def test_load_generator_refuses_a_poisoned_run_config(tmp_path: Path) -> None:
    victim = tmp_path / "created_by_config"
    ckpt = _poisoned_run(tmp_path, victim, "generator")
    with pytest.raises(ValueError, match="model.generator._target_ 'pathlib.Path.touch' is not allowed"):
        load_network(ckpt)
    assert not victim.exists()


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_infer_gpgan_with_a_poisoned_run_config(tmp_path: Path) -> None:
    victim = tmp_path / "created_by_config"
    ckpt = _poisoned_run(tmp_path, victim, "generator")
    out = tmp_path / "out.png"
    proc = _run(str(ROOT / "infer.py"), "method=gpgan", f"method.ckpt={ckpt}", f"out={out}", "device=cpu", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "is not allowed" in lines[0], proc.stderr
    assert not victim.exists() and not out.exists()


def test_evaluate_with_a_poisoned_run_config(tmp_path: Path) -> None:
    victim = tmp_path / "created_by_config"
    ckpt = _poisoned_run(tmp_path, victim, "network")
    proc = _run("-m", "fusion.evaluate", str(ckpt), "--device", "cpu", cwd=ROOT)
    assert proc.returncode == 2, proc.stderr
    assert "is not allowed" in proc.stderr.strip().splitlines()[-1], proc.stderr
    assert not victim.exists()
