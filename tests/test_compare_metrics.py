"""The blending metrics of fusion.metrics (used by ``python -m fusion.compare``) against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fusion.compare_gallery import MIN_PANEL_WIDTH, boundary_point, crop_box, save_gallery
from fusion.compare_metrics import blend_metrics, summary_rows
from fusion.metrics import (
    change_outside,
    chromaticity_error,
    gain_matched_psnr,
    gradient_fidelity,
    region_psnr,
    region_ssim,
    seam_excess,
)


def _square_mask(size: int = 8, lo: int = 2, hi: int = 6) -> torch.Tensor:
    mask = torch.zeros(1, 1, size, size, dtype=torch.float64)
    mask[..., lo:hi, lo:hi] = 1
    return mask


def _pairs(mask: np.ndarray):
    """Every vertical and horizontal neighbour pair ((y, x), (y2, x2)) with its inside flags, by loops."""
    h, w = mask.shape
    for y in range(h):
        for x in range(w):
            for y2, x2 in ((y + 1, x), (y, x + 1)):
                if y2 < h and x2 < w:
                    yield (y, x), (y2, x2), mask[y, x] > 0.5, mask[y2, x2] > 0.5


def _loop_gradient_fidelity(u: np.ndarray, f: np.ndarray, m: np.ndarray) -> float:
    total, count = 0.0, 0
    for p, q, a, b in _pairs(m):
        if a and b:
            for c in range(u.shape[0]):
                total += abs((u[c][q] - u[c][p]) - (f[c][q] - f[c][p]))
                count += 1
    return total / count


def _loop_seam(u: np.ndarray, b: np.ndarray, m: np.ndarray) -> float:
    total, count = 0.0, 0
    for p, q, x, y in _pairs(m):
        if x != y:
            for c in range(u.shape[0]):
                total += abs(u[c][q] - u[c][p]) - abs(b[c][q] - b[c][p])
                count += 1
    return total / count


@pytest.fixture
def triplet():
    gen = torch.Generator().manual_seed(7)
    fg = torch.rand(1, 3, 9, 11, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    bg = torch.rand(1, 3, 9, 11, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    mask = torch.zeros(1, 1, 9, 11, dtype=torch.float64)
    mask[..., 2:7, 3:9] = 1
    mask[..., 4, 2] = 1  # an irregular boundary
    return fg, bg, mask


def test_identical_images_give_zero_and_infinite_psnr(triplet) -> None:
    fg, bg, mask = triplet
    assert float(gradient_fidelity(fg, fg, mask)) == 0.0
    assert float(seam_excess(bg, bg, mask)) == 0.0
    assert float(change_outside(bg, bg, mask)) == 0.0
    assert float(chromaticity_error(fg, fg, mask=mask)[0]) == 0.0
    assert math.isinf(float(region_psnr(bg, bg))) and float(region_psnr(bg, bg)) > 0
    assert math.isinf(float(region_psnr(bg, bg, mask)))
    assert float(region_ssim(bg, bg)) == pytest.approx(1.0, abs=1e-12)
    assert float(region_ssim(bg, bg, mask)) == pytest.approx(1.0, abs=1e-12)


def test_gradient_fidelity_matches_loops_and_ignores_an_offset(triplet) -> None:
    fg, bg, mask = triplet
    u = 0.5 * fg + 0.5 * bg
    expected = _loop_gradient_fidelity(u[0].numpy(), fg[0].numpy(), mask[0, 0].numpy())
    assert float(gradient_fidelity(u, fg, mask)) == pytest.approx(expected, rel=1e-12)
    assert float(gradient_fidelity(fg + 0.3, fg, mask)) == pytest.approx(0.0, abs=1e-12)


def test_gradient_fidelity_of_a_gain_is_its_deviation_times_the_mean_step(triplet) -> None:
    fg, _, mask = triplet
    zero = torch.zeros_like(fg)
    mean_step = float(gradient_fidelity(zero, fg, mask))  # mean |∂f| over the inside pairs
    assert float(gradient_fidelity(0.6 * fg, fg, mask)) == pytest.approx(0.4 * mean_step, rel=1e-12)


def test_seam_excess_matches_loops_and_a_pasted_step() -> None:
    bg = torch.zeros(1, 1, 6, 6, dtype=torch.float64)
    mask = _square_mask(6, 2, 4)
    assert float(seam_excess(bg + 0.25 * mask, bg, mask)) == pytest.approx(0.25, abs=1e-12)
    gen = torch.Generator().manual_seed(3)
    u, b = torch.rand(2, 2, 6, 6, generator=gen, dtype=torch.float64).unbind(0)
    u, b = u[None], b[None]
    expected = _loop_seam(u[0].numpy(), b[0].numpy(), mask[0, 0].numpy())
    assert float(seam_excess(u, b, mask)) == pytest.approx(expected, rel=1e-12)
    # the result's own texture across the boundary, not bg's: smoother than bg gives a negative value
    assert float(seam_excess(torch.full_like(b, 0.5), b, mask)) < 0


def test_change_outside_counts_only_the_outside(triplet) -> None:
    fg, bg, mask = triplet
    inside_changed = bg + 0.7 * mask  # change inside only: nothing outside
    assert float(change_outside(inside_changed, bg, mask)) == pytest.approx(0.0, abs=1e-15)
    assert float(change_outside(bg + 0.05, bg, mask)) == pytest.approx(0.05, rel=1e-12)
    assert float(change_outside(bg * 1.5, bg, mask)) == pytest.approx(
        float((0.5 * bg)[(mask <= 0.5).expand_as(bg)].mean()), rel=1e-12
    )


def test_psnr_of_known_offset_and_gain(triplet) -> None:
    _, bg, mask = triplet
    assert float(region_psnr(bg + 0.1, bg)) == pytest.approx(20.0, abs=1e-5)  # torchmetrics: float32 inside
    assert float(region_psnr(bg + 0.01 * mask, bg, mask)) == pytest.approx(40.0, abs=1e-9)
    # gain k: MSE = (1 - k)² mean(bg²) over the region
    region = (mask > 0.5).expand_as(bg)
    mse = float((0.2 * bg)[region].pow(2).mean())
    assert float(region_psnr(0.8 * bg, bg, mask)) == pytest.approx(-10 * math.log10(mse), abs=1e-9)
    # one gain for the whole image is undone by the gain-matched PSNR, a gain inside the mask only is not
    assert float(gain_matched_psnr(0.8 * bg, bg, mask)) > 200
    assert float(gain_matched_psnr(bg * (1 - 0.2 * mask), bg, mask)) < 40


def test_region_ssim_is_the_masked_mean_of_the_map(triplet) -> None:
    from torchmetrics.functional.image import structural_similarity_index_measure

    _, bg, mask = triplet
    x = (bg + 0.1 * torch.sin(torch.arange(11.0, dtype=torch.float64))).clamp(0, 1)
    _, full = structural_similarity_index_measure(x, bg, data_range=1.0, reduction="none", return_full_image=True)
    expected = float(full[(mask > 0.5).expand_as(full)].mean())
    assert float(region_ssim(x, bg, mask)) == pytest.approx(expected, rel=1e-12)
    assert float(region_ssim(x, bg)) < 1.0


def test_batched_metrics_equal_per_sample() -> None:
    gen = torch.Generator().manual_seed(11)
    fg = torch.rand(3, 3, 12, 10, generator=gen, dtype=torch.float64) + 0.05
    bg = torch.rand(3, 3, 12, 10, generator=gen, dtype=torch.float64) + 0.05
    result = 0.3 * fg + 0.7 * bg
    mask = torch.zeros(3, 1, 12, 10, dtype=torch.float64)
    mask[0, :, 2:8, 2:8] = 1
    mask[1, :, 5:11, 1:4] = 1
    mask[2, :, 0:6, 0:10] = 1  # touches the border
    ref = bg.flip(-1)
    batched = blend_metrics(result, fg, bg, mask, ref)
    for i in range(3):
        single = blend_metrics(result[i : i + 1], fg[i : i + 1], bg[i : i + 1], mask[i : i + 1], ref[i : i + 1])[0]
        assert batched[i] == pytest.approx(single, rel=1e-12)
    assert len({round(r["seam"], 12) for r in batched}) == 3  # the samples do differ
    for fn in (gain_matched_psnr, region_psnr, region_ssim):
        together = fn(result, ref, mask)
        alone = torch.cat([fn(result[i : i + 1], ref[i : i + 1], mask[i : i + 1]) for i in range(3)])
        torch.testing.assert_close(together, alone, rtol=1e-12, atol=0)


def test_metrics_refuse_mismatched_inputs() -> None:
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="batch size"):
        gradient_fidelity(x, x[:1], torch.ones(1, 1, 8, 8))
    with pytest.raises(ValueError, match="mask"):
        change_outside(x, x, torch.ones(1, 3, 8, 8))


def test_summary_is_mean_and_sample_std() -> None:
    rows = [
        {"method": "a", "status": "ok", "seconds": 1.0, "converged": True, "seam": 1.0},
        {"method": "a", "status": "ok", "seconds": 3.0, "converged": False, "seam": 3.0},
        {"method": "a", "status": "failed", "seconds": 9.0},
    ]
    (row,) = summary_rows(rows, ["a"])
    assert row["items"] == "2/3" and row["converged"] == "1/2"
    assert row["seconds"] == "2 ± 1.414" and row["seam"] == "2 ± 1.414"


# ----------------------------------------------------------------------------------------------------- gallery
def test_boundary_point_is_where_fg_and_bg_differ_most() -> None:
    mask = _square_mask(8, 2, 6)
    score = torch.zeros(1, 3, 8, 8)
    score[0, 1, 5, 3] = 1.0  # on the boundary (row 5 is the last inside row)
    score[0, 1, 3, 3] = 5.0  # inside, not on the boundary: ignored
    assert boundary_point(mask, score) == (5, 3)
    assert boundary_point(mask) == (2, 2)
    assert crop_box((0, 7), (8, 8), 4) == (0, 4, 4)


def test_gallery_has_one_labelled_column_per_panel(tmp_path) -> None:
    from PIL import Image

    from fusion.data.io import LABEL_HEIGHT

    mask = torch.zeros(1, 1, 20, 30)
    mask[..., 5:15, 8:20] = 1
    panels = [torch.rand(1, 3, 20, 30), None, torch.rand(1, 1, 20, 30)]
    labels = ["composite (cut and paste)", "a failed", "b 0.10 s"]
    got = save_gallery(tmp_path / "g.png", panels, labels, mask, crop=10)
    assert got == labels
    scale = math.ceil(MIN_PANEL_WIDTH / 30)
    width = 30 * scale
    zoom = width // 10
    image = Image.open(tmp_path / "g.png")
    assert image.size == (3 * width + 2 * 4, LABEL_HEIGHT + 20 * scale + 4 + 10 * zoom)
    pixels = np.asarray(image.convert("RGB"))
    middle = pixels[LABEL_HEIGHT + 1 : LABEL_HEIGHT + 20 * scale - 1, width + 4 + 1 : 2 * width + 4 - 1]
    assert (np.abs(middle.astype(int) - 128) <= 1).mean() > 0.9  # the failed method's panel is gray
    with pytest.raises(ValueError, match="one label per panel"):
        save_gallery(tmp_path / "h.png", panels, labels[:2], mask)
