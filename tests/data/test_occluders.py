"""Offline occluder cutting for FusionT-LESS: Canny outline, closing, hole filling, largest component, RGBA crops."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusion.data.occluders import cut_occluder, cut_occluders, fill_holes, largest_component, object_mask
from fusion.data.synthetic_layouts import write_synthetic_tless

SCRIPT = Path(__file__).resolve().parents[2] / "datasets" / "tless_occluders.py"


# tiny images: extra torch threads only contend on a shared machine
pytestmark = pytest.mark.usefixtures("single_thread")


def _script():
    spec = importlib.util.spec_from_file_location("tless_occluders", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _scene(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A shaded, non-convex object (with a dark window inside) and a small speck on a dark, noisy background."""
    g = torch.Generator().manual_seed(seed)
    h, w = 120, 140
    yy, xx = torch.meshgrid(torch.arange(h).float(), torch.arange(w).float(), indexing="ij")
    angle = torch.atan2(yy - 60, xx - 72)
    radius = torch.hypot(yy - 60, xx - 72)
    truth = radius <= 38 * (1 + 0.15 * torch.cos(5 * angle))
    shade = 0.35 + 0.35 * (xx - 30) / 90
    image = torch.where(truth, shade, torch.tensor(0.03)).expand(3, h, w).clone()
    image[:, 52:68, 64:80] = 0.06  # a dark window inside the object: a hole in the edges, not in the object
    image[:, 8:11, 8:11] = 0.8  # a speck the largest-component step must drop
    image = (image + 0.01 * torch.randn(image.shape, generator=g)).clamp(0, 1)
    return image, truth


def test_object_mask_recovers_a_synthetic_object(device: torch.device) -> None:
    image, truth = _scene()
    mask = object_mask(image[None].to(device))[0, 0].cpu()
    iou = float((mask & truth).sum() / (mask | truth).sum())
    assert iou > 0.9, iou
    assert bool(mask[60, 72]) and not bool(mask[9, 9])  # window filled, speck dropped


def test_fill_holes_and_largest_component() -> None:
    ring = torch.zeros(2, 1, 9, 9, dtype=torch.bool)
    ring[0, 0, 2:7, 2:7] = True
    ring[0, 0, 3:6, 3:6] = False  # closed ring: its 3x3 hole gets filled
    ring[1, 0, 2:7, 2:7] = True
    ring[1, 0, 3:6, 3:7] = False  # ring open to the right: nothing to fill
    filled = fill_holes(ring)
    assert int(filled[0].sum()) == 25 and torch.equal(filled[1], ring[1])
    blobs = torch.zeros(1, 1, 8, 8, dtype=torch.bool)
    blobs[0, 0, 0, :3] = True
    blobs[0, 0, 4:8, 4:8] = True
    blobs[0, 0, 3, 3] = True  # touches the square diagonally only: a separate 4-connected component
    kept = largest_component(blobs)
    assert int(kept.sum()) == 16 and not bool(kept[0, 0, 3, 3])
    assert not bool(largest_component(torch.zeros(1, 1, 4, 4, dtype=torch.bool)).any())
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        fill_holes(torch.zeros(4, 4, dtype=torch.bool))


def test_cut_occluder_crops_to_the_mask() -> None:
    image = torch.rand(3, 10, 12)
    mask = torch.zeros(1, 10, 12, dtype=torch.bool)
    mask[0, 2:6, 3:9] = True
    mask[0, 5, 3] = False
    rgba = cut_occluder(image, mask)
    assert rgba.shape == (4, 4, 6)
    assert torch.equal(rgba[:3], image[:, 2:6, 3:9]) and torch.equal(rgba[3], mask[0, 2:6, 3:9].float())
    assert cut_occluder(image, torch.zeros(1, 10, 12, dtype=torch.bool)) is None
    with pytest.raises(ValueError, match="close must be an odd int"):
        object_mask(image[None], close=4)


def test_cut_occluders_writes_rgba_crops(tmp_path: Path) -> None:
    root = write_synthetic_tless(tmp_path / "tless", 2, classes=(3, 19), size=64)
    out = tmp_path / "occ"
    lines: list[str] = []
    assert cut_occluders(root, out, classes=(3,), log=lines.append) == {3: 2}
    files = sorted((out / "03").glob("*.png"))
    assert [f.name for f in files] == ["0000.png", "0001.png"] and len(lines) == 1
    with Image.open(files[0]) as image:
        assert image.mode == "RGBA"
        rgba = np.asarray(image)
    alpha = rgba[..., 3]
    assert set(np.unique(alpha).tolist()) <= {0, 255} and alpha.mean() > 128
    assert rgba.shape[0] < 64 and rgba.shape[1] < 64  # cropped to the object
    assert not list(out.rglob("*.part"))
    stamp = files[0].stat().st_mtime_ns
    assert cut_occluders(root, out, classes=(3,)) == {3: 0} and files[0].stat().st_mtime_ns == stamp  # resumes
    with pytest.raises(ValueError, match="refusing to write"):
        cut_occluders(root, root, classes=(3,))
    with pytest.raises(ValueError, match="refusing to write"):
        cut_occluders(root, root / "train_primesense" / "x", classes=(3,))
    with pytest.raises(FileNotFoundError, match=r"class\(es\) \[4\]"):
        cut_occluders(root, out, classes=(4,))


def test_command_line(tmp_path: Path, capsys) -> None:
    script = _script()
    assert script.main(["--root", str(tmp_path / "nope"), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "train_primesense/<obj>/rgb" in err and "\n" not in err
    root = write_synthetic_tless(tmp_path / "tless", 1, classes=(1, 2), size=48)
    code = script.main(["--root", str(root), "--out", str(tmp_path / "out"), "--classes", "1", "2", "--device", "cpu"])
    assert code == 0 and "wrote 2 occluders of 2 classes" in capsys.readouterr().out
    assert (tmp_path / "out" / "01" / "0000.png").is_file() and (tmp_path / "out" / "02" / "0000.png").is_file()
    assert script.main(["--root", str(root), "--out", str(root), "--classes", "1"]) == 2
    assert "refusing" in capsys.readouterr().err
    assert not (SCRIPT.parent / "__init__.py").exists()
