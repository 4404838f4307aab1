"""The GPU check's rehearsal: ``benchmarks/gpu_check.py`` at tiny sizes on the CPU, and its table.

One full rehearsal runs with a failure injected into one row and a sleep past a 2-second budget into the next,
so the same run shows that every row is recorded, that the Markdown and JSON tables agree, that a failing row is a
row of the table while the rows after it still run, and that a budget stops a row. A second, shorter run beside it
ignores the alarm in its only row, as a call stuck in native code does in effect, and must be ended by the hard stop.
"""

from __future__ import annotations

import importlib.util
import json
import math
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
# written out here, not read from the script: a row dropped from the script must fail this test
EXPECTED_ROWS = [
    "tests",
    "poisson_spectral",
    "poisson_exact",
    "gpgan_blend",
    "gpgan_train",
    "deep_blend_fp32",
    "deep_blend_bf16",
    "osmosis",
    "ot",
    "fusionvae_train",
]
FAILING, SLEEPING, SLEEP_BUDGET = "poisson_spectral", "poisson_exact", 2.0
EIGHT_MINUTES = 480.0


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gpu_check():
    return _load(SCRIPT, "gpu_check_under_test")


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), "--rehearse", "--device", "cpu", "--out", str(out), *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The full rehearsal and, at the same time, the hard-stop run; their exit codes, wall times and tables."""
    full_out, hang_out = tmp_path_factory.mktemp("rehearsal"), tmp_path_factory.mktemp("hang")
    hang_cmd = _command(hang_out, "--only", "ot", "--inject", "ot=hang", "--budget", "ot=1", "--hard-stop-grace", "1")
    full_cmd = _command(
        full_out, "--inject", f"{FAILING}=raise", "--inject", f"{SLEEPING}=sleep", "--budget", f"{SLEEPING}=2"
    )
    start = time.monotonic()
    hang = subprocess.Popen(hang_cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    full = subprocess.run(full_cmd, cwd=ROOT, capture_output=True, text=True, timeout=180)
    full_s = time.monotonic() - start
    try:
        hang_log, _ = hang.communicate(timeout=120)
    finally:
        hang.kill()
    hang_s = time.monotonic() - start
    return {
        "full": (full, full_s, full_out),
        "hang": (hang.returncode, hang_log, hang_s, hang_out),
    }


def _tables(out: Path) -> tuple[dict, str]:
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


def _markdown_rows(text: str) -> tuple[list[str], list[list[str]]]:
    """Header and rows of the table in ``text``, cells unescaped."""
    lines = [line for line in text.splitlines() if line.startswith("|")]
    split = lambda line: [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]]  # noqa: E731
    return split(lines[0]), [split(line) for line in lines[2:]]


def test_the_rehearsal_runs_every_row_in_well_under_a_minute(runs):
    proc, seconds, out = runs["full"]
    data, _ = _tables(out)
    assert [row["id"] for row in data["rows"]] == EXPECTED_ROWS, proc.stdout + proc.stderr
    assert data["mode"] == "rehearsal" and data["finished"] is True
    assert proc.returncode == 1  # the two injected rows did not finish, and the exit status says so
    ok = [row for row in data["rows"] if row["id"] not in (FAILING, SLEEPING)]
    for row in ok:
        assert row["status"] == "ok", (row["id"], row["error"], row["traceback"])
        assert row["met"] == "—"  # a rehearsal judges no target
        assert row["figure"] is not None and math.isfinite(row["figure"]), row
    assert seconds < 55, f"the rehearsal took {seconds:.0f} s"


def test_every_figure_has_a_target_and_memory_is_labelled(runs):
    data, _ = _tables(runs["full"][2])
    rows = {row["id"]: row for row in data["rows"]}
    for row in rows.values():
        assert row["target"] and row["target"] != "—", row["id"]
        assert row["budget_s"] > 0
    for name, row in rows.items():
        if name == "tests":  # a subprocess: this process's memory says nothing about it
            assert row["peak_memory_bytes"] is None
            continue
        assert row["peak_memory_bytes"] is not None and row["peak_memory_bytes"] >= 0, name
        assert row["memory_kind"].startswith("RSS peak above row start"), row["memory_kind"]
    for name in ("poisson_exact", "deep_blend_fp32", "fusionvae_train"):
        assert rows[name]["input_bytes"] is None or rows[name]["input_bytes"] > 0
    assert rows["gpgan_blend"]["input_bytes"] > 0 and rows["gpgan_blend"]["memory_per_input"] is not None
    assert "extrapolated" in rows["deep_blend_fp32"]["figure_text"]
    assert "extrapolated to the paper's 1000 + 1000" in rows["deep_blend_bf16"]["note"]
    assert "synthetic 32×32" in rows["fusionvae_train"]["note"]
    if not torch.cuda.is_available():
        assert "skipped" in rows["tests"]["figure_text"]  # no CUDA: every gpu-marked test skips


def test_markdown_and_json_agree(runs):
    data, text = _tables(runs["full"][2])
    header, rows = _markdown_rows(text)
    assert header[:7] == ["row", "what", "size", "figure", "target", "met", "status"]
    assert len(rows) == len(data["rows"])
    for cells, row in zip(rows, data["rows"]):
        md = dict(zip(header, cells))
        assert md["row"] == row["id"] and md["what"] == row["title"] and md["size"] == row["size"]
        assert md["figure"] == row["figure_text"] and md["target"] == row["target"]
        assert md["met"] == row["met"] and md["status"] == row["status"]
        seconds = "—" if row["seconds"] is None else f"{row['seconds']:.1f}"
        assert md["s / budget"] == f"{seconds} / {row['budget_s']:g}"
        if row["error"]:
            assert row["error"] in md["note"]
    env = data["environment"]
    assert env["torch"] == torch.__version__ and env["device_type"] == "cpu"
    assert f"torch {env['torch']}" in text and env["device"] in text and "rehearsal" in text


def test_a_failing_row_is_recorded_and_the_rest_still_run(runs):
    data, _ = _tables(runs["full"][2])
    rows = {row["id"]: row for row in data["rows"]}
    failed = rows[FAILING]
    assert failed["status"] == "failed"
    assert failed["error"] == f"RuntimeError: injected failure (--inject {FAILING}=raise)"
    assert "\n" not in failed["error"] and failed["traceback"]
    after = EXPECTED_ROWS[EXPECTED_ROWS.index(SLEEPING) + 1 :]
    assert after and all(rows[name]["status"] == "ok" for name in after)


def test_a_row_past_its_budget_is_stopped(runs):
    data, _ = _tables(runs["full"][2])
    row = {row["id"]: row for row in data["rows"]}[SLEEPING]
    assert row["status"] == "timed out" and row["budget_s"] == SLEEP_BUDGET
    assert row["error"] == f"RowTimeout: stopped at its budget of {SLEEP_BUDGET:g} s"
    assert SLEEP_BUDGET <= row["seconds"] < SLEEP_BUDGET + 1.5  # the injected sleep would last an hour


def test_a_row_that_never_returns_ends_the_process_with_the_table_written(runs):
    code, log, seconds, out = runs["hang"]
    assert code == 3, log
    assert seconds < 60
    data, text = _tables(out)
    rows = {row["id"]: row for row in data["rows"]}
    assert rows["ot"]["status"] == "timed out" and "hard stop" in rows["ot"]["error"]
    before, after = EXPECTED_ROWS[: EXPECTED_ROWS.index("ot")], EXPECTED_ROWS[EXPECTED_ROWS.index("ot") + 1 :]
    assert all(rows[name]["status"] == "skipped" for name in before)  # not selected
    assert all(rows[name]["status"] == "not run" for name in after)
    assert data["finished"] is False and "hard stop" in text


def test_files_are_complete_and_no_temporary_file_is_left(runs):
    out = runs["full"][2]
    assert sorted(p.name for p in out.iterdir() if p.is_file()) == ["gpu_check.json", "gpu_check.md", "pytest.log"]
    assert re.search(r"\d+ (passed|skipped)", (out / "pytest.log").read_text())


def test_the_budgets_fit_in_eight_minutes(gpu_check):
    rows = {spec.id: spec for spec in gpu_check.ROWS}
    assert list(rows) == EXPECTED_ROWS
    assert gpu_check.TOTAL_BUDGET_S < EIGHT_MINUTES
    assert sum(spec.budget_s for spec in rows.values()) <= gpu_check.TOTAL_BUDGET_S
    for spec in rows.values():
        assert spec.target is not None and spec.target.text, spec.id


def test_bad_options_end_with_one_error(gpu_check, capsys):
    with pytest.raises(SystemExit, match="--inject takes ROW=VALUE"):
        gpu_check.main(["--inject", "nosuch=raise"])
    with pytest.raises(SystemExit, match="bad value in --budget"):
        gpu_check.main(["--budget", "ot=-1"])


def test_targets_are_judged_in_the_right_direction(gpu_check):
    faster = gpu_check.Target("<", 5.0, "< 5 ms")
    assert faster.met(4.9) and not faster.met(5.0)
    more = gpu_check.Target(">=", 4200.0, "≥ 4,200 images/s")
    assert more.met(4200.0) and not more.met(4199.0)


def test_the_device_fixture_has_a_gpu_marked_cuda_variant_only_with_cuda():
    conftest = _load(ROOT / "tests" / "conftest.py", "conftest_under_test")
    assert [p.id for p in conftest.device_params(False)] == ["cpu"]
    cpu, cuda = conftest.device_params(True)
    assert (cpu.id, cuda.id) == ("cpu", "cuda") and not cpu.marks
    assert [m.name for m in cuda.marks] == ["gpu"]


def test_pytest_m_gpu_selects_the_cuda_variants_of_device_tests():
    # collection only, with torch told there is a CUDA device: `-m gpu` must reach the `device` tests' CUDA side
    code = (
        "import sys, torch; torch.cuda.is_available = lambda: True; import pytest; "
        "sys.exit(pytest.main(['--collect-only', '-q', '-m', 'gpu', '-p', 'no:cacheprovider', "
        "'tests/ops/test_transforms.py']))"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    selected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert selected and all("cuda" in line for line in selected), proc.stdout


def test_make_gpu_check_runs_this_script() -> None:
    # the make target is the documented entry point; without CUDA the script picks the rehearsal itself
    import shutil

    if shutil.which("make") is None:
        pytest.fail("make is needed for the README's commands")
    dry = subprocess.run(
        ["make", "--no-print-directory", "-n", "gpu-check", "GPU_CHECK_PYTHON=python3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "python3 benchmarks/gpu_check.py" in dry.stdout.strip().splitlines()
