"""Batch inference (``infer.py manifest=... out_dir=...``): items, results.csv, stamps, resume, batched = single."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from fusion.batch import EXIT_ITEMS_FAILED, BatchIncomplete, read_manifest
from fusion.data.io import read_image
from fusion.methods import available_methods
from fusion.pipeline import infer

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
ENV = {**os.environ, "PYTHONWARNINGS": "ignore"}

#: Cheap options of every registered method (tiny iteration counts; random VGG weights).
CHEAP = {
    "poisson": [],
    "gaussian_poisson": [],
    "linear_osmosis": ["method.steps=2"],
    "osmosis": ["method.max_iter=5"],
    "ot": ["method.steps=2", "method.max_iter=5", "method.size=8"],
    "deep_blend": [
        "method.vgg_weights=random",
        "method.stage1.max_iter=2",
        "method.stage2.max_iter=2",
        "method.init=source",
        "method.progress=false",
    ],
    "gpgan": [],
    "paste": [],
    "feather": ["method.width=2"],
    "laplacian_pyramid": ["method.levels=3"],
    "mpb": [],
    "msb": ["method.spacing=4"],
}


def _image(path: Path, array: np.ndarray) -> Path:
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


def _triplet(folder: Path, name: str, size: int, seed: int) -> dict[str, Path]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    fg = np.stack([yy, xx, 0.5 + 0.3 * np.sin(6 * yy)], -1) * 0.8 + 0.2 * rng.random((size, size, 3))
    bg = np.stack([xx, 1 - yy, 0.5 + 0.3 * np.cos(5 * xx)], -1) * 0.8 + 0.2 * rng.random((size, size, 3))
    mask = np.zeros((size, size))
    mask[size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    return {
        "fg": _image(folder / f"{name}_fg.png", fg),
        "bg": _image(folder / f"{name}_bg.png", bg),
        "mask": _image(folder / f"{name}_mask.png", mask),
    }


def _manifest(folder: Path, rows: list[dict[str, str]], name: str = "items.csv") -> Path:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    with open(folder / name, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return folder / name


def _relative(paths: dict[str, Path], folder: Path, **extra: str) -> dict[str, str]:
    return {**{key: str(path.relative_to(folder)) for key, path in paths.items()}, **extra}


def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="infer", overrides=overrides)


def _results(out_dir: Path) -> dict[str, dict[str, str]]:
    with open(out_dir / "results.csv", newline="") as handle:
        return {row["id"]: row for row in csv.DictReader(handle)}


def _cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), *args],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def gpgan_ckpt(tmp_path_factory) -> Path:
    """A checkpoint of a tiny Blending GAN with random weights, in a run folder with its saved config."""
    from fusion.nn.gpgan import BlendingGenerator

    run = tmp_path_factory.mktemp("gpgan_run")
    node = {"_target_": "fusion.nn.gpgan.BlendingGenerator", "image_size": 16, "encoder_channels": 4,
            "decoder_channels": 4, "bottleneck": 8}  # fmt: skip
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"model": {"generator": node}}))
    torch.manual_seed(0)
    generator = BlendingGenerator(16, encoder_channels=4, decoder_channels=4, bottleneck=8)
    state = {f"generator.{k}": v for k, v in generator.state_dict().items()}
    (run / "checkpoints").mkdir()
    torch.save({"state_dict": state, "global_step": 1}, run / "checkpoints" / "last.ckpt")
    return run / "checkpoints" / "last.ckpt"


def _options(method: str, ckpt: Path) -> list[str]:
    return CHEAP[method] + ([f"method.ckpt={ckpt}"] if method == "gpgan" else [])


# ----------------------------------------------------------------------------------------------------
# Every method: batched results equal single-image results, extras written per item
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", available_methods())
def test_batch_equals_single_for_every_method(method: str, tmp_path: Path, gpgan_ckpt: Path) -> None:
    assert set(CHEAP) == set(available_methods())
    items = [_triplet(tmp_path, f"s{i}", 24, i) for i in range(3)]
    manifest = _manifest(tmp_path, [_relative(paths, tmp_path, id=f"item{i}") for i, paths in enumerate(items)])
    out_dir = tmp_path / "out"
    options = [f"method={method}", "device=cpu", *_options(method, gpgan_ckpt)]
    written = infer(_cfg([*options, f"manifest={manifest}", f"out_dir={out_dir}", "batch_size=3"]))
    assert written == {"results": out_dir / "results.csv"}
    rows = _results(out_dir)
    assert [rows[f"item{i}"]["status"] for i in range(3)] == ["ok"] * 3
    for i, paths in enumerate(items):
        single = tmp_path / f"single{i}.png"
        infer(_cfg([*options, f"fg={paths['fg']}", f"bg={paths['bg']}", f"mask={paths['mask']}", f"out={single}"]))
        batched = read_image(out_dir / f"item{i}.png")
        assert float((batched - read_image(single)).abs().max()) <= 1 / 255 + 1e-6, (method, i)
        assert (out_dir / f"item{i}_side_by_side.png").is_file()
        # the same extra images and frames as single mode, per item (curves only for an item computed alone)
        extras = {p.name.replace(f"single{i}", "") for p in tmp_path.glob(f"single{i}_*") if p.suffix != ".csv"}
        ours = {p.name.replace(f"item{i}", "") for p in out_dir.glob(f"item{i}_*")}
        curve_plots = {p.name.replace(f"single{i}", "") for p in tmp_path.glob(f"single{i}_*.csv")}
        curve_plots |= {name.replace(".csv", ".png") for name in curve_plots}
        assert extras - curve_plots <= ours, (method, extras, ours)
        assert (out_dir / ".stamps" / f"item{i}.json").is_file()


def test_batch_of_one_writes_the_curves_like_single_mode(tmp_path: Path) -> None:
    paths = _triplet(tmp_path, "a", 16, 0)
    manifest = _manifest(tmp_path, [_relative(paths, tmp_path)])
    out_dir = tmp_path / "out"
    infer(_cfg(["method=ot", *CHEAP["ot"], "device=cpu", f"manifest={manifest}", f"out_dir={out_dir}"]))
    stem = "a_fg"
    for suffix in ("_convergence.png", "_convergence.csv", "_frames.gif", "_frames_strip.png", "_frames"):
        assert (out_dir / f"{stem}{suffix}").exists(), suffix


# ----------------------------------------------------------------------------------------------------
# Items: ids, folders, bad rows, mixed sizes
# ----------------------------------------------------------------------------------------------------
def test_ids_from_fg_stems_are_made_unique(tmp_path: Path) -> None:
    a, b = _triplet(tmp_path, "a", 16, 0), _triplet(tmp_path, "b", 16, 1)
    rows = [_relative(a, tmp_path), _relative({**a, "bg": b["bg"]}, tmp_path), _relative(b, tmp_path)]
    manifest = _manifest(tmp_path, rows)
    items = read_manifest(manifest)
    assert [item.id for item in items] == ["a_fg", "a_fg-2", "b_fg"]
    assert items[0].inputs["fg"] == (tmp_path / "a_fg.png").resolve()  # relative to the manifest's folder
    out_dir = tmp_path / "out"
    infer(_cfg(["device=cpu", f"manifest={manifest}", f"out_dir={out_dir}", "batch_size=2"]))
    one, two = read_image(out_dir / "a_fg.png"), read_image(out_dir / "a_fg-2.png")
    assert float((one - two).abs().max()) > 0.01  # two different items, two different files


def test_folder_mode_matches_by_stem(tmp_path: Path) -> None:
    for key in ("fg", "bg", "mask"):
        (tmp_path / key).mkdir()
    for i in range(3):
        paths = _triplet(tmp_path, f"x{i}", 16, i)
        for key, path in paths.items():
            path.rename(tmp_path / key / f"p{i}.png")
    (tmp_path / "mask" / "p2.png").unlink()  # p2 has no mask: a failed row, the others go on
    out_dir = tmp_path / "out"
    cfg = _cfg(["device=cpu", *(f"{k}_dir={tmp_path / k}" for k in ("fg", "bg", "mask")), f"out_dir={out_dir}"])
    with pytest.raises(BatchIncomplete) as caught:
        infer(cfg)
    assert caught.value.code == EXIT_ITEMS_FAILED and caught.value.counts == {"ok": 2, "skipped": 0, "failed": 1}
    rows = _results(out_dir)
    assert rows["p0"]["status"] == rows["p1"]["status"] == "ok"
    assert rows["p2"]["status"] == "failed" and "mask_dir" in rows["p2"]["message"]
    assert (out_dir / "p0.png").is_file() and not (out_dir / "p2.png").exists()


def test_bad_rows_are_isolated_mixed_sizes_bucketed(tmp_path: Path) -> None:
    good = [_triplet(tmp_path, f"g{i}", 16 + 8 * (i % 2), i) for i in range(4)]
    small = _triplet(tmp_path, "small", 12, 9)
    rows = [_relative(paths, tmp_path) for paths in good]
    rows.insert(1, _relative({**good[0], "fg": tmp_path / "missing.png"}, tmp_path, id="missing"))
    rows.insert(3, _relative({**good[0], "mask": small["mask"]}, tmp_path, id="mismatch"))  # 12x12 mask, 16x16 fg
    rows.append(_relative({**small, "bg": good[0]["bg"]}, tmp_path, id="placed", offset_y="1", offset_x="2"))
    rows.append(_relative(good[0], tmp_path, id="badoffset", offset_y="one", offset_x="2"))
    for row in rows:
        row.setdefault("id", "")
        row.setdefault("offset_y", "")
        row.setdefault("offset_x", "")
    manifest = _manifest(tmp_path, rows)
    out_dir = tmp_path / "out"
    proc = _cli("device=cpu", f"manifest={manifest}", f"out_dir={out_dir}", "batch_size=3", cwd=tmp_path)
    assert proc.returncode == EXIT_ITEMS_FAILED, proc.stderr
    assert "8 item(s): 5 ok, 0 skipped, 3 failed" in proc.stderr
    results = _results(out_dir)
    assert results["missing"]["status"] == "failed" and "missing.png" in results["missing"]["message"]
    assert results["mismatch"]["status"] == "failed" and "must match the fg size" in results["mismatch"]["message"]
    assert results["badoffset"]["status"] == "failed" and "offset" in results["badoffset"]["message"]
    assert results["placed"]["status"] == "ok"
    assert sum(row["status"] == "ok" for row in results.values()) == 5
    assert all("\n" not in row["message"] for row in results.values())
    # the item placed at an offset equals single mode with that offset
    single = tmp_path / "single.png"
    infer(_cfg(["device=cpu", f"fg={small['fg']}", f"bg={good[0]['bg']}", f"mask={small['mask']}",
                f"out={single}", "offset=[1,2]"]))  # fmt: skip
    assert float((read_image(out_dir / "placed.png") - read_image(single)).abs().max()) <= 1 / 255 + 1e-6


def test_convergence_warning_is_one_line_and_recorded(tmp_path: Path) -> None:
    paths = [_triplet(tmp_path, f"c{i}", 16, i) for i in range(2)]
    manifest = _manifest(tmp_path, [_relative(p, tmp_path) for p in paths])
    out_dir = tmp_path / "out"
    args = [
        "device=cpu",
        "method.solver=inertial",
        "method.max_iter=2",
        f"manifest={manifest}",
        f"out_dir={out_dir}",
        "batch_size=2",
    ]
    proc = _cli(*args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    warning_lines = [line for line in proc.stderr.splitlines() if line.startswith("warning:")]
    assert len(warning_lines) == 2 and all("did not converge" in line for line in warning_lines)
    rows = _results(out_dir)
    assert [rows[k]["converged"] for k in ("c0_fg", "c1_fg")] == ["false", "false"]
    assert all("after 2 iterations" in rows[k]["message"] and "samples" not in rows[k]["message"] for k in rows)
    proc = _cli("device=cpu", f"manifest={manifest}", f"out_dir={tmp_path / 'out2'}", cwd=tmp_path)
    assert [row["converged"] for row in _results(tmp_path / "out2").values()] == ["true", "true"]


# ----------------------------------------------------------------------------------------------------
# Stamps: skip, redo on a changed option or input, overwrite
# ----------------------------------------------------------------------------------------------------
def test_rerun_skips_and_changed_options_redo(tmp_path: Path) -> None:
    paths = [_triplet(tmp_path, f"r{i}", 16, i) for i in range(3)]
    manifest = _manifest(tmp_path, [_relative(p, tmp_path) for p in paths])
    out_dir = tmp_path / "out"
    base = ["device=cpu", f"manifest={manifest}", f"out_dir={out_dir}", "batch_size=2"]
    infer(_cfg(base))
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != "results.csv")
    before = {p: p.stat().st_mtime_ns for p in files}
    time.sleep(0.01)
    infer(_cfg(base))
    assert {row["status"] for row in _results(out_dir).values()} == {"skipped"}
    assert {p: p.stat().st_mtime_ns for p in files} == before  # nothing rewritten
    plain = read_image(out_dir / "r0_fg.png")
    infer(_cfg([*base, "method.mixed=true"]))  # another option: every item is redone
    assert {row["status"] for row in _results(out_dir).values()} == {"ok"}
    assert float((read_image(out_dir / "r0_fg.png") - plain).abs().max()) > 0
    infer(_cfg([*base, "method.mixed=true"]))
    assert {row["status"] for row in _results(out_dir).values()} == {"skipped"}
    infer(_cfg([*base, "method.mixed=true", "overwrite=true"]))
    assert {row["status"] for row in _results(out_dir).values()} == {"ok"}
    # a changed input or a damaged output redoes only that item
    _image(paths[1]["fg"], np.full((16, 16, 3), 0.3))
    (out_dir / "r2_fg.png").write_bytes(b"broken")
    infer(_cfg([*base, "method.mixed=true"]))
    rows = _results(out_dir)
    assert [rows[k]["status"] for k in ("r0_fg", "r1_fg", "r2_fg")] == ["skipped", "ok", "ok"]
    assert read_image(out_dir / "r2_fg.png").shape[-2:] == (16, 16)


def test_resume_after_sigkill(tmp_path: Path) -> None:
    """SIGKILL a run mid-way, run the same command: every item ends ok once, the finished ones are not redone."""
    n = 30
    paths = [_triplet(tmp_path, f"k{i}", 48, i) for i in range(n)]
    manifest = _manifest(tmp_path, [_relative(p, tmp_path) for p in paths])
    out_dir = tmp_path / "out"
    args = ["device=cpu", f"manifest={manifest}", f"out_dir={out_dir}", "method.tol=1e-8"]
    command = [sys.executable, str(ROOT / "infer.py"), *args]
    proc = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    stamps = out_dir / ".stamps"
    deadline = time.monotonic() + 240
    try:
        while not (stamps.is_dir() and len(list(stamps.glob("*.json"))) >= 2):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = {p.stem for p in stamps.glob("*.json")}
    assert 2 <= len(done) < n, "the kill came too late to test resuming"
    finished = {item: (out_dir / f"{item}.png").stat().st_mtime_ns for item in done}
    rerun = _cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr
    rows = _results(out_dir)
    assert len(rows) == n
    assert {k for k, row in rows.items() if row["status"] == "skipped"} == done
    assert all(row["status"] in ("ok", "skipped") for row in rows.values())
    assert {item: (out_dir / f"{item}.png").stat().st_mtime_ns for item in done} == finished
    leftovers = [p for p in out_dir.rglob("*") if p.name.endswith(".part") or p.name.startswith(".") and p.is_file()]
    assert leftovers == []
    for row_id in rows:
        assert read_image(out_dir / f"{row_id}.png").shape[-2:] == (48, 48)
    again = _cli(*args, cwd=tmp_path)
    assert {row["status"] for row in _results(out_dir).values()} == {"skipped"}, again.stderr


# ----------------------------------------------------------------------------------------------------
# A manifest that cannot be read: one line, exit 2, nothing written
# ----------------------------------------------------------------------------------------------------
def _bad_manifests(folder: Path) -> dict[str, tuple[list[str], str]]:
    paths = _triplet(folder, "a", 16, 0)
    row = _relative(paths, folder)
    (folder / "empty.csv").write_text("")
    (folder / "header_only.csv").write_text("fg,bg,mask\n")
    (folder / "no_mask.csv").write_text(f"fg,bg\n{row['fg']},{row['bg']}\n")
    (folder / "repeated.csv").write_text(f"fg,fg,bg,mask\n{row['fg']},{row['fg']},{row['bg']},{row['mask']}\n")
    (folder / "ragged.csv").write_text(f"fg,bg,mask\n{row['fg']},{row['bg']},{row['mask']},extra\n")
    (folder / "dup.csv").write_text(f"id,fg,bg,mask\nx,{row['fg']},{row['bg']},{row['mask']}\n"
                                     f"x,{row['fg']},{row['bg']},{row['mask']}\n")  # fmt: skip
    (folder / "slash.csv").write_text(f"id,fg,bg,mask\n../x,{row['fg']},{row['bg']},{row['mask']}\n")
    (folder / "blank.csv").write_text(f"fg,bg,mask\n{row['fg']},,{row['mask']}\n")
    return {
        "missing file": (["manifest=nope.csv"], "nope.csv"),
        "empty": (["manifest=empty.csv"], "empty"),
        "header only": (["manifest=header_only.csv"], "no rows"),
        "missing column": (["manifest=no_mask.csv"], "lacks column(s) mask"),
        "repeated column": (["manifest=repeated.csv"], "repeated column"),
        "ragged row": (["manifest=ragged.csv"], "more fields"),
        "duplicate ids": (["manifest=dup.csv"], "repeats line 2"),
        "unusable id": (["manifest=slash.csv"], "cannot name a file"),
        "empty path": (["manifest=blank.csv"], "empty bg"),
        "manifest and fg": (["manifest=dup.csv", f"fg={paths['fg']}"], "for one image"),
        "no out_dir": (["manifest=dup.csv", "out_dir=null"], "out_dir"),
        "missing folder": (["fg_dir=nofolder", "bg_dir=.", "mask_dir=."], "nofolder"),
        "folder lacking": (["fg_dir=.", "bg_dir=."], "mask_dir"),
        "bad batch_size": (["manifest=dup.csv", "batch_size=0"], "batch_size"),
    }


def test_bad_manifests_exit_2_with_one_line(tmp_path: Path) -> None:
    cases = _bad_manifests(tmp_path)
    for name, (args, expected) in cases.items():
        out_dir = tmp_path / f"out_{name.replace(' ', '_')}"
        argv = [*args] if "out_dir=null" in args else [*args, f"out_dir={out_dir}"]
        proc = _cli("device=cpu", *argv, cwd=tmp_path, timeout=120)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode == 2, (name, proc.stderr[-2000:])
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (name, lines)
        assert not out_dir.exists(), name
    assert not (tmp_path / "outputs").exists()  # the claimed run folder is removed again


# ----------------------------------------------------------------------------------------------------
# Several processes: Lightning's predict loop
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_rank_batches_cover_every_item_once(world: int) -> None:
    from fusion.batch_lightning import RankBatches

    batches = [[0, 1], [2], [3, 4], [5, 6], [7]]
    dealt = [i for rank in range(world) for batch in RankBatches(batches, rank, world) for i in batch]
    assert sorted(dealt) == list(range(8))  # no item twice, none padded in, none left out
    assert all(len(RankBatches(batches[:1], rank, world)) == 1 for rank in range(world))  # idle ranks: one empty


def test_two_cpu_processes_compute_every_item_once(tmp_path: Path) -> None:
    paths = [_triplet(tmp_path, f"d{i}", 16 + 8 * (i % 2), i) for i in range(7)]
    manifest = _manifest(tmp_path, [_relative(p, tmp_path) for p in paths])
    out_dir = tmp_path / "out"
    args = ["device=cpu", f"manifest={manifest}", "batch_size=2"]
    proc = _cli(*args, f"out_dir={out_dir}", "devices=2", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "7 item(s): 7 ok, 0 skipped, 0 failed" in proc.stdout
    with open(out_dir / "results.csv", newline="") as handle:
        ids = [row["id"] for row in csv.DictReader(handle) if row["status"] == "ok"]
    assert sorted(ids) == sorted(f"d{i}_fg" for i in range(7))  # each item once, merged from both ranks
    assert not (out_dir / ".parts").exists()
    infer(_cfg([*args, f"out_dir={tmp_path / 'one'}"]))
    for i in range(7):
        two = read_image(out_dir / f"d{i}_fg.png")
        assert torch.equal(two, read_image(tmp_path / "one" / f"d{i}_fg.png"))
    again = _cli(*args, f"out_dir={out_dir}", "devices=2", cwd=tmp_path)
    assert again.returncode == 0 and "0 ok, 7 skipped" in again.stdout, again.stderr[-3000:]


def test_a_method_error_stays_with_its_item(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A batch whose method call fails is retried item by item: only the item that fails alone is failed."""
    from fusion.methods import poisson
    from fusion.methods.registry import _REGISTRY, MethodSpec

    def picky(fg, bg, mask, **options):  # noqa: ANN001, ANN202
        if bool((fg.flatten(1).amax(1) < 0.05).any()):
            raise ValueError("a black fg is refused")
        return poisson.poisson_cli(fg, bg, mask, **options)

    monkeypatch.setitem(_REGISTRY, "poisson", MethodSpec("poisson", picky, options_from=poisson.poisson_cli))
    paths = [_triplet(tmp_path, f"e{i}", 16, i) for i in range(3)]
    _image(paths[1]["fg"], np.zeros((16, 16, 3)))
    manifest = _manifest(tmp_path, [_relative(p, tmp_path) for p in paths])
    out_dir = tmp_path / "out"
    with pytest.raises(BatchIncomplete):
        infer(_cfg(["device=cpu", f"manifest={manifest}", f"out_dir={out_dir}", "batch_size=3"]))
    rows = _results(out_dir)
    assert [rows[f"e{i}_fg"]["status"] for i in range(3)] == ["ok", "failed", "ok"]
    assert rows["e1_fg"]["message"] == "a black fg is refused"


def test_resume_after_sigkill_of_two_processes(tmp_path: Path) -> None:
    """devices=2: SIGKILL every process of the run mid-way (as a crashed node), run it again: each item ends ok
    once, the finished ones are skipped with their files untouched, no temporary file is left."""
    n = 40
    paths = [_triplet(tmp_path, f"q{i}", 48, i) for i in range(n)]
    manifest = _manifest(tmp_path, [_relative(p, tmp_path) for p in paths])
    out_dir = tmp_path / "out"
    args = ["device=cpu", f"manifest={manifest}", f"out_dir={out_dir}", "method.tol=1e-8", "devices=2"]
    command = [sys.executable, str(ROOT / "infer.py"), *args]
    proc = subprocess.Popen(command, cwd=tmp_path, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    stamps = out_dir / ".stamps"
    deadline = time.monotonic() + 300
    try:
        while not (stamps.is_dir() and len(list(stamps.glob("*.json"))) >= 2):
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline
            time.sleep(0.005)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        proc.wait()
    done = {p.stem for p in stamps.glob("*.json")}
    assert 2 <= len(done) < n, "the kill came too late to test resuming"
    finished = {item: (out_dir / f"{item}.png").stat().st_mtime_ns for item in done}
    rerun = _cli(*args, cwd=tmp_path)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    rows = _results(out_dir)
    assert len(rows) == n
    assert {k for k, row in rows.items() if row["status"] == "skipped"} == done
    assert {row["status"] for row in rows.values()} <= {"ok", "skipped"}
    assert {item: (out_dir / f"{item}.png").stat().st_mtime_ns for item in done} == finished
    assert [p for p in out_dir.rglob("*.part")] == []
    assert not (out_dir / ".parts").exists()


def test_deep_blend_noise_start_batched_equals_single(tmp_path: Path) -> None:
    """The default noise start: every item of a batch starts from the noise its single call draws."""
    items = [_triplet(tmp_path, f"n{i}", 24, i) for i in range(3)]
    manifest = _manifest(tmp_path, [_relative(paths, tmp_path) for paths in items])
    options = ["method=deep_blend", "device=cpu", "method.vgg_weights=random", "method.stage1.max_iter=2",
               "method.stage2.max_iter=2", "method.progress=false", "method.init=noise", "method.seed=3"]  # fmt: skip
    infer(_cfg([*options, f"manifest={manifest}", f"out_dir={tmp_path / 'out'}", "batch_size=3"]))
    for i, paths in enumerate(items):
        single = tmp_path / f"single{i}.png"
        infer(_cfg([*options, f"fg={paths['fg']}", f"bg={paths['bg']}", f"mask={paths['mask']}", f"out={single}"]))
        batched = read_image(tmp_path / "out" / f"n{i}_fg.png")
        assert float((batched - read_image(single)).abs().max()) <= 1 / 255 + 1e-6, i
