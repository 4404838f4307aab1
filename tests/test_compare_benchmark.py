"""``python -m fusion.compare benchmark=builtin`` at a tiny size: the invariances the papers claim, reproduced."""

from __future__ import annotations

import csv

import pytest
import torch

from fusion.compare import compare, compose_config
from fusion.compare_benchmark import MASKS, benchmark_mask, benchmark_photo, ring


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cfg = compose_config(["benchmark=builtin", "size=32", "photos=[astronaut,coffee]", "methods=[poisson,osmosis]",
                          "dtype=float64", "device=cpu", f"out_dir={out}"])  # fmt: skip
    written = compare(cfg)
    with open(written["benchmark_csv"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    return out, written, rows


def _values(rows, transform, method, key):
    return [float(r[key]) for r in rows if r["transform"] == transform and r["method"] == method]


def test_files_and_rows(bench) -> None:
    out, written, rows = bench
    names = sorted(p.name for p in out.iterdir())
    galleries = [f"gallery_{t}.png" for t in ("cast", "gain", "gamma", "offset")]
    assert names == ["benchmark.csv", "benchmark.md", *galleries]
    # 2 photos x 3 masks x 4 transforms x (composite + 2 methods)
    assert len(rows) == 2 * 3 * 4 * 3
    assert all(r["status"] == "ok" for r in rows)
    text = (out / "benchmark.md").read_text()
    assert "| offset | poisson |" in text and "| gamma | osmosis |" in text


def test_the_composite_shows_the_known_change(bench) -> None:
    _, _, rows = bench
    # every pixel inside the mask is off by exactly 0.1: PSNR = -20 log10(0.1) = 20 dB
    assert _values(rows, "offset", "composite", "psnr_mask") == pytest.approx([20.0] * 6, abs=1e-6)


def test_poisson_removes_an_additive_offset_to_float_precision(bench) -> None:
    _, _, rows = bench
    psnr = _values(rows, "offset", "poisson", "psnr_mask")
    assert len(psnr) == 6 and min(psnr) > 100  # RMS error below 1e-5 on every photo and mask
    assert min(_values(rows, "offset", "poisson", "ssim_mask")) > 0.999999
    # but not a gain: the gradients inside are scaled
    assert max(_values(rows, "gain", "poisson", "psnr_mask")) < 45


def test_osmosis_undoes_a_brightness_gain_up_to_one_constant_far_better_than_poisson(bench) -> None:
    _, _, rows = bench
    osmosis = _values(rows, "gain", "osmosis", "psnr_mask_gain_matched")
    poisson = _values(rows, "gain", "poisson", "psnr_mask_gain_matched")
    # measured at size 32 (astronaut, coffee; 3 masks): osmosis 73-80 dB, Poisson 26.6-31 dB, a margin >= 42 dB
    assert min(o - p for o, p in zip(osmosis, poisson)) > 20
    # without the gain match osmosis keeps fg's brightness for the whole image (the constant is fg's)
    assert max(_values(rows, "gain", "osmosis", "psnr_mask")) < 30


def test_masks_and_ring() -> None:
    for kind in MASKS:
        mask = benchmark_mask(kind, 64)
        assert 0 < float(mask.mean()) < 0.5
    assert float(benchmark_mask("border", 64)[..., :, 0].sum()) > 0  # touches the border
    assert float(benchmark_mask("ellipse", 64)[..., :, 0].sum()) == 0
    band = ring(benchmark_mask("ellipse", 64), 2)
    inside = benchmark_mask("ellipse", 64) > 0.5
    assert not bool((band & inside).any()) and bool(band.any())
    photo = benchmark_photo("chelsea", 40)
    assert photo.shape == (1, 3, 40, 40) and photo.dtype == torch.float64
    assert 0.05 - 1e-12 <= float(photo.min()) and float(photo.max()) <= 0.85 + 1e-12


def test_bad_benchmark_names_are_refused(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown photos 'lena'"):
        compare(compose_config(["benchmark=builtin", "photos=[lena]", f"out_dir={tmp_path / 'x'}"]))
    with pytest.raises(ValueError, match="benchmark must be builtin"):
        compare(compose_config(["benchmark=other", f"out_dir={tmp_path / 'x'}"]))
    assert not (tmp_path / "x").exists()
