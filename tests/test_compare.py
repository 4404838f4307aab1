"""``python -m fusion.compare``: methods from the registry, the files of one triplet and of a manifest, bad input."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fusion.compare import compare, compose_config, default_methods, resolve_methods
from fusion.data.io import write_image
from fusion.methods import available_methods, method_spec

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-m", "fusion.compare", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120
    )


def _triplet(folder: Path, name: str = "", size: int = 24) -> dict[str, Path]:
    gen = torch.Generator().manual_seed(len(name) + size)
    y = torch.linspace(0, 1, size).view(1, 1, size, 1)
    bg = (0.2 + 0.5 * y * torch.linspace(0.5, 1, size).view(1, 1, 1, size)).expand(1, 3, size, size).contiguous()
    fg = (0.6 + 0.2 * torch.rand(1, 3, size, size, generator=gen)).clamp(0, 1)
    mask = torch.zeros(1, 1, size, size)
    mask[..., size // 4 : 3 * size // 4, size // 4 : 3 * size // 4] = 1
    paths = {k: folder / f"{name}{k}.png" for k in ("fg", "bg", "mask", "ref")}
    for key, image in (("fg", fg), ("bg", bg), ("mask", mask), ("ref", bg)):
        write_image(paths[key], image)
    return paths


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ---------------------------------------------------------------------------------------------- methods
def test_default_methods_are_the_registered_blending_methods_without_weights() -> None:
    names = default_methods(compose_config())
    expected = [n for n in available_methods() if method_spec(n).needs_mask and n not in ("gpgan", "deep_blend")]
    assert names == expected
    assert {"poisson", "gaussian_poisson", "linear_osmosis", "osmosis"} <= set(names)
    assert "ot" not in names  # two whole images, no mask
    assert "gpgan" in default_methods(compose_config(["ckpt=run/last.ckpt"]))
    assert "deep_blend" in default_methods(compose_config(["vgg_weights=vgg16.pth"]))
    assert "deep_blend" in default_methods(compose_config(["deep_blend.vgg_weights=vgg16.pth"]))


def test_method_options_come_from_their_yaml_and_are_checked() -> None:
    (run,) = resolve_methods(compose_config(["methods=[poisson]", "poisson.mixed=true"]))
    assert run.params["mixed"] is True and run.params["solver"] == "exact"  # the rest from conf/method/poisson.yaml
    with pytest.raises(ValueError, match="poisson.max_iter must be an integer"):
        resolve_methods(compose_config(["methods=[poisson]", "poisson.max_iter=abc"]))
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        resolve_methods(compose_config(["methods=[poisson,nope]"]))
    with pytest.raises(ValueError, match="needs ckpt=PATH"):
        resolve_methods(compose_config(["methods=[gpgan]"]))


def test_a_failing_method_gets_its_row_and_the_others_run(tmp_path, capsys) -> None:
    paths = _triplet(tmp_path)
    out = tmp_path / "out"
    cfg = compose_config([f"fg={paths['fg']}", f"bg={paths['bg']}", f"mask={paths['mask']}", f"out_dir={out}",
                          "methods=[poisson,gaussian_poisson,linear_osmosis]", "poisson.tol=-1.0",
                          "linear_osmosis.max_iter=1", "device=cpu"])  # fmt: skip
    written = compare(cfg)
    rows = {r["method"]: r for r in _rows(written["metrics_csv"])}
    assert rows["poisson"]["status"] == "failed" and "tol" in rows["poisson"]["message"]
    assert rows["poisson"]["gradient_fidelity"] == ""
    assert rows["gaussian_poisson"]["status"] == "ok" and rows["gaussian_poisson"]["converged"] == "true"
    assert float(rows["gaussian_poisson"]["gradient_fidelity"]) > 0
    assert rows["linear_osmosis"]["status"] == "ok" and rows["linear_osmosis"]["converged"] == "false"
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "linear_osmosis" in warnings[0]


# ---------------------------------------------------------------------------------------------- command line
def test_cli_one_triplet_writes_gallery_and_metrics(tmp_path) -> None:
    from PIL import Image

    paths = _triplet(tmp_path)
    out = tmp_path / "cmp"
    proc = _cli(f"fg={paths['fg']}", f"bg={paths['bg']}", f"mask={paths['mask']}", f"ref={paths['ref']}",
                "methods=[poisson,gaussian_poisson]", "poisson.mixed=true", f"out_dir={out}", "device=cpu",
                cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["gallery.png", "metrics.csv", "metrics.md"]
    assert "wrote gallery" in proc.stdout
    rows = _rows(out / "metrics.csv")
    assert [r["method"] for r in rows] == ["poisson", "gaussian_poisson"]
    poisson = rows[0]
    assert poisson["status"] == "ok" and poisson["converged"] == "true"
    assert float(poisson["change_outside"]) == 0.0  # Poisson leaves bg untouched
    assert float(poisson["psnr"]) > 10 and 0 < float(poisson["ssim"]) <= 1  # against ref
    text = (out / "metrics.md").read_text()
    assert "| poisson | ok |" in text and "gradient_fidelity" in text
    width = Image.open(out / "gallery.png").size[0]
    assert width == 3 * 24 * 7 + 2 * 4  # composite + two methods, 24 px panels enlarged 7 times
    assert not list(tmp_path.glob("outputs"))  # out_dir given: no run folder


BAD = {
    "unknown method": (["methods=[poisson,nope]"], "unknown method 'nope'"),
    "missing file": (["fg=missing.png"], "missing.png"),
    "unknown option": (["poisson.nope=1"], "nope"),
    "bad option value": (["poisson.mixed=maybe"], "poisson.mixed must be true or false"),
    "unknown key": (["nope=1"], "nope"),
    "bad manifest": (["manifest=bad.csv"], "lacks column(s) mask"),
}


@pytest.mark.parametrize("case", list(BAD), ids=list(BAD))
def test_cli_bad_input_is_one_line_exit_2_nothing_written(tmp_path, case) -> None:
    paths = _triplet(tmp_path)
    (tmp_path / "bad.csv").write_text("fg,bg\nfg.png,bg.png\n")
    args, expected = BAD[case]
    given = {a.split("=", 1)[0] for a in args}
    inputs = [f"{k}={paths[k]}" for k in ("fg", "bg", "mask") if k not in given and "manifest" not in given]
    out = tmp_path / "out"
    proc = _cli(*inputs, *args, f"out_dir={out}", "device=cpu", cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and expected in lines[0], proc.stderr
    assert not out.exists()
    assert not list(tmp_path.glob("outputs"))


def test_cli_manifest_two_items_and_a_bad_row(tmp_path) -> None:
    a, b = _triplet(tmp_path, "a_"), _triplet(tmp_path, "b_", size=20)
    (tmp_path / "items.csv").write_text(
        "id,fg,bg,mask,ref\n"
        f"one,{a['fg'].name},{a['bg'].name},{a['mask'].name},{a['ref'].name}\n"
        f"two,{b['fg'].name},{b['bg'].name},{b['mask'].name},\n"
        f"bad,{a['fg'].name},missing.png,{a['mask'].name},\n"
    )
    out = tmp_path / "cmp"
    proc = _cli("manifest=items.csv", f"out_dir={out}", "methods=[poisson,gaussian_poisson]", "device=cpu",
                cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 3, proc.stderr  # some items failed: as batch inference
    assert "failed: bad:" in proc.stderr and "missing.png" in proc.stderr
    assert (out / "one" / "gallery.png").is_file() and (out / "two" / "gallery.png").is_file()
    assert not (out / "bad").exists()
    rows = _rows(out / "metrics.csv")
    assert [(r["id"], r["method"], r["status"]) for r in rows] == [
        ("one", "poisson", "ok"), ("one", "gaussian_poisson", "ok"),
        ("two", "poisson", "ok"), ("two", "gaussian_poisson", "ok"),
        ("bad", "", "failed"),
    ]  # fmt: skip
    assert rows[0]["psnr"] != "" and rows[2]["psnr"] == ""  # only item one has a ref
    text = (out / "metrics.md").read_text()
    summary = next(line for line in text.splitlines() if line.startswith("| poisson | 2/2 |"))
    assert "±" in summary
