"""Images at full depth: 16-bit colour PNGs read exactly, EXIF orientation, outputs that keep the inputs' depth,
and output sets written all-or-nothing."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from fusion.data.io import image_depth, output_set, read_image, read_mask, write_image

ROOT = Path(__file__).resolve().parents[2]


def test_16_bit_rgb_png_values_of_the_issue(tmp_path: Path) -> None:
    # values 7 / 1007 / 2007: Pillow alone reads them as 0 / 771 / 1799 (its 8-bit high byte, times 257)
    pixels = np.zeros((3, 4, 3), np.uint16)
    pixels[..., 0], pixels[..., 1], pixels[..., 2] = 7, 1007, 2007
    assert cv2.imwrite(str(tmp_path / "deep.png"), pixels[..., ::-1])  # OpenCV's order is BGR
    got = (read_image(tmp_path / "deep.png")[0] * 65535).round().to(torch.int64)
    assert got[:, 0, 0].tolist() == [7, 1007, 2007]
    assert image_depth(tmp_path / "deep.png") == 16


def test_16_bit_rgba_png_drops_alpha(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 65536, (5, 6, 4), dtype=np.uint16)
    assert cv2.imwrite(str(tmp_path / "rgba.png"), pixels[..., [2, 1, 0, 3]])
    got = read_image(tmp_path / "rgba.png")[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(got, pixels[..., :3] / 65535, rtol=0, atol=1e-7)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_as_pillow_does(tmp_path: Path, orientation: int) -> None:
    from PIL import ImageOps

    codes = (np.arange(4 * 6 * 3).reshape(4, 6, 3) * 11 % 256).astype(np.uint8)
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(codes).save(tmp_path / "photo.png", exif=exif.tobytes())  # lossless, unlike JPEG
    with Image.open(tmp_path / "photo.png") as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"), dtype=np.float32) / 255
    got = read_image(tmp_path / "photo.png")[0].numpy().transpose(1, 2, 0)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-7)
    assert got.shape[:2] == ((6, 4) if orientation >= 5 else (4, 6))
    assert read_mask(tmp_path / "photo.png").shape[-2:] == got.shape[:2]


def test_exif_orientation_of_a_jpeg(tmp_path: Path) -> None:
    codes = np.zeros((8, 16, 3), np.uint8)
    codes[:, :8] = 255  # white left half
    exif = Image.Exif()
    exif[0x0112] = 6  # stored on its side: displayed rotated by 90° clockwise
    Image.fromarray(codes).save(tmp_path / "photo.jpg", exif=exif.tobytes(), quality=100)
    got = read_image(tmp_path / "photo.jpg")[0]
    assert got.shape == (3, 16, 8)
    assert float(got[:, :8].mean()) > 0.9 and float(got[:, 8:].mean()) < 0.1  # the white half is now on top


@pytest.mark.parametrize(
    ("name", "depth", "stored"),
    [
        ("a.png", 8, (np.uint8, 255)),
        ("a.png", 16, (np.uint16, 65535)),
        ("a.tif", 16, (np.uint16, 65535)),
        ("a.tif", 32, (np.float32, 1)),
        ("a.jpg", 16, (np.uint8, 255)),  # JPEG stores 8 bits: the nearest depth it has
        ("a.png", 32, (np.uint16, 65535)),  # PNG has no floats: 16 bits
    ],
)
def test_write_image_depths(tmp_path: Path, name: str, depth: int, stored) -> None:
    values = torch.rand(1, 3, 5, 7, generator=torch.Generator().manual_seed(0))
    path = write_image(tmp_path / name, values, depth=depth)
    dtype, scale = stored
    if path.suffix == ".tif":
        raw = tifffile.imread(path)
    else:
        raw = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)[..., ::-1]
    assert raw.dtype == dtype and raw.shape == (5, 7, 3)
    if path.suffix != ".jpg":
        expected = values[0].numpy().transpose(1, 2, 0)
        step = 0.5 / scale if dtype != np.float32 else 0
        np.testing.assert_allclose(raw / scale, expected, rtol=0, atol=step + 1e-7)
        got = read_image(path)[0].numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(got, raw / scale, rtol=0, atol=1e-7)
    assert image_depth(path) == (32 if dtype == np.float32 else 16 if dtype == np.uint16 else 8)


def test_output_set_is_all_or_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError):
        with output_set():
            write_image(tmp_path / "a.png", torch.zeros(1, 1, 2, 2))
            write_image(tmp_path / "new" / "deeper" / "b.png", torch.zeros(1, 1, 2, 2))
            assert not (tmp_path / "a.png").exists()  # staged, not yet in place
            raise RuntimeError("a later file fails")
    assert list(tmp_path.iterdir()) == []  # neither the files nor the folders made for them
    with output_set():
        write_image(tmp_path / "a.png", torch.zeros(1, 1, 2, 2))
        write_image(tmp_path / "sub" / "b.png", torch.ones(1, 1, 2, 2))
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["a.png", "sub", "sub/b.png"]


def _infer(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), *args, "side_by_side=false"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def deep_inputs(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:24, 0:32] / 32.0
    fg = (np.stack([yy, xx, 0.5 + 0.3 * yy * xx], -1) * 60000 + rng.integers(0, 50, (24, 32, 3))).astype(np.uint16)
    bg = (np.stack([xx, 0.4 + 0 * yy, 1 - yy], -1) * 50000 + 1000).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "fg.png"), fg[..., ::-1])
    cv2.imwrite(str(tmp_path / "bg.png"), bg[..., ::-1])
    mask = np.zeros((24, 32), np.uint8)
    mask[6:18, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return {k: tmp_path / f"{k}.png" for k in ("fg", "bg", "mask")}


def test_cli_keeps_16_bits_by_default_and_out_depth_chooses(tmp_path: Path, deep_inputs) -> None:
    paths = [f"{k}={v}" for k, v in deep_inputs.items()]
    proc = _infer(tmp_path, *paths, f"out={tmp_path / 'r16.png'}")
    assert proc.returncode == 0, proc.stderr
    r16 = cv2.imread(str(tmp_path / "r16.png"), cv2.IMREAD_UNCHANGED)
    assert r16.dtype == np.uint16
    bg = cv2.imread(str(deep_inputs["bg"]), cv2.IMREAD_UNCHANGED)
    outside = np.ones((24, 32), bool)
    outside[5:19, 7:25] = False
    np.testing.assert_array_equal(r16[outside], bg[outside])  # untouched bg pixels keep all 16 bits
    proc = _infer(tmp_path, *paths, f"out={tmp_path / 'r8.png'}", "out_depth=8")
    assert proc.returncode == 0, proc.stderr
    assert cv2.imread(str(tmp_path / "r8.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint8
    proc = _infer(tmp_path, *paths, f"out={tmp_path / 'rf.tif'}", "out_depth=32")
    assert proc.returncode == 0, proc.stderr
    assert tifffile.imread(tmp_path / "rf.tif").dtype == np.float32
    proc = _infer(tmp_path, *paths, f"out={tmp_path / 'bad.png'}", "out_depth=12")
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: out_depth must be 8, 16, 32 (float TIFF or .npy) or null, got 12"
    assert not (tmp_path / "bad.png").exists()
