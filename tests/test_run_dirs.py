"""Where a command-line run writes: a new folder of its own, or only its outputs when ``out=`` is given, and
nothing at all when it fails."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fusion.runs import claim_run_dir

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "datasets" / "samples"


def _run(script: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_claimed_folders_are_never_shared(tmp_path: Path) -> None:
    base = tmp_path / "outputs" / "infer" / "2026-01-01_00-00-00-000000"
    with ThreadPoolExecutor(8) as pool:
        claimed = list(pool.map(lambda _: claim_run_dir(base), range(16)))
    assert len(set(claimed)) == 16
    assert claimed[0].parent == base.parent and all(p.is_dir() and not any(p.iterdir()) for p in claimed)
    names = sorted(p.name for p in base.parent.iterdir())
    assert names == sorted([base.name] + [f"{base.name}-{n}" for n in range(2, 17)])


def test_out_writes_only_the_outputs(tmp_path: Path) -> None:
    proc = _run("infer.py", f"out={tmp_path / 'r.png'}", "method.max_iter=20000", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _tree(tmp_path) == ["r.png", "r_side_by_side.png"]


def test_a_run_without_out_gets_its_own_folder(tmp_path: Path) -> None:
    with ThreadPoolExecutor(2) as pool:  # two runs started together
        procs = list(pool.map(lambda _: _run("infer.py", "side_by_side=false", cwd=tmp_path), range(2)))
    assert all(p.returncode == 0 for p in procs), [p.stderr for p in procs]
    runs = sorted((tmp_path / "outputs" / "infer").iterdir())
    assert len(runs) == 2
    for run in runs:
        saved = [".hydra", ".hydra/config.yaml", ".hydra/hydra.yaml", ".hydra/overrides.yaml"]
        assert _tree(run) == [*saved, "result.png"]  # no empty log file either
    lines = [line for p in procs for line in p.stdout.splitlines()]
    written = sorted(line.split(": ", 1)[1] for line in lines if line.startswith("wrote"))
    assert written == sorted(str(run / "result.png") for run in runs)


def test_a_failed_run_leaves_nothing(tmp_path: Path) -> None:
    bad = ["fg=" + str(SAMPLES / "fg.png"), "bg=" + str(SAMPLES / "bg.png"), "mask=" + str(tmp_path / "nope.png")]
    proc = _run("infer.py", *bad, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stderr.startswith("error: mask not found")
    proc = _run("infer.py", *bad, f"out={tmp_path / 'sub' / 'r.png'}", cwd=tmp_path)
    assert proc.returncode == 2
    proc = _run("train.py", "experiment=gpgan_smoke", f"data.root={tmp_path / 'no_data'}", cwd=tmp_path)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert _tree(tmp_path) == []


def test_a_warning_goes_to_the_run_log(tmp_path: Path) -> None:
    proc = _run("infer.py", "method.max_iter=1", "side_by_side=false", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("warning: poisson") and "did not converge" in line
    (run,) = (tmp_path / "outputs" / "infer").iterdir()
    log = (run / "infer.log").read_text()
    assert line in log and "[WARNING]" in log
