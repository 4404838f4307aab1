"""A ground-truth benchmark of the blending methods: ``python -m fusion.compare benchmark=builtin out_dir=DIR``.

For each photograph shipped with scikit-image (``skimage.data``; no download), a centred square crop scaled to
``size × size`` and mapped to [0.05, 0.85] (so every transformation below stays inside [0, 1]) is the ground truth
``g``. A known transformation ``T`` changes the whole photo into ``fg = T(g)``; each method blends ``fg`` back into
``bg = g`` inside a mask. A method that undoes ``T`` returns ``g``, so PSNR and SSIM of its result against ``g``,
inside the mask and in a ring of ``ring`` pixels around it, measure how well it does.

Transformations (:data:`TRANSFORMS`): an additive offset (Poisson editing keeps only gradients, so it removes it
exactly), a multiplicative gain (osmosis keeps ``∇ log u``, so it is blind to it up to one constant for the whole
image: also reported, as the PSNR after one least-squares gain for the whole image,
:func:`fusion.metrics.gain_matched_psnr`), a colour cast (per-channel gains) and a gamma curve (neither method is
invariant to it). Masks (:data:`MASKS`): an interior ellipse, a disc touching the left border, a thin band.

Outputs: ``DIR/benchmark.csv`` (one row per photo, mask, transformation and method, and the untouched cut-and-paste
``composite``), ``DIR/benchmark.md`` (the means per transformation and method), ``DIR/gallery_<transform>.png``
(the first photo with the first mask).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from fusion.compare_gallery import save_gallery
from fusion.compare_metrics import markdown_table, write_csv
from fusion.metrics import gain_matched_psnr, region_psnr, region_ssim

__all__ = [
    "COLUMNS",
    "MASKS",
    "PHOTOS",
    "TRANSFORMS",
    "benchmark_mask",
    "benchmark_photo",
    "check_names",
    "ring",
    "run_benchmark",
]

#: Photographs of ``skimage.data`` that load without a download.
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
#: The known changes of the masked region, ``fg = T(g)`` with ``g`` in [0.05, 0.85].
TRANSFORMS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "offset": lambda g: g + 0.1,
    "gain": lambda g: 0.75 * g,
    "cast": lambda g: g * torch.tensor([1.15, 1.0, 0.8], dtype=g.dtype, device=g.device).view(1, 3, 1, 1),
    "gamma": lambda g: g.pow(1.5),
}
MASKS = ("ellipse", "border", "thin")
#: Columns of ``benchmark.csv``.
COLUMNS = (
    "photo", "mask", "transform", "method", "status", "seconds", "converged",
    "psnr_mask", "ssim_mask", "psnr_ring", "ssim_ring", "psnr_mask_gain_matched", "message",
)  # fmt: skip
_MEANS = ("psnr_mask", "ssim_mask", "psnr_ring", "ssim_ring", "psnr_mask_gain_matched", "seconds")


def benchmark_photo(name: str, size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(1, 3, size, size)`` ground truth: the centred square crop of ``skimage.data.<name>()``, scaled with
    antialiasing to ``size`` and mapped linearly from [0, 1] to [0.05, 0.85]."""
    import numpy as np
    import skimage.data

    if name not in PHOTOS:
        raise ValueError(f"unknown photo {name!r}; expected some of: {', '.join(PHOTOS)}")
    array = np.asarray(getattr(skimage.data, name)(), dtype=np.float64) / 255.0
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    height, width = array.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    image = torch.from_numpy(array[top : top + side, left : left + side, :3].copy()).permute(2, 0, 1)[None]
    image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return (0.05 + 0.8 * image.clamp(0, 1)).to(dtype)


def benchmark_mask(kind: str, size: int, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``(1, 1, size, size)`` binary mask: ``ellipse`` (centred, semi-axes 0.22 and 0.3 of the side), ``border``
    (a disc of radius 0.3 of the side centred on the left edge) or ``thin`` (a band of half-width
    ``max(1, size / 64)`` along a slanted line, from 0.15 to 0.85 of the width)."""
    axis = torch.arange(size, dtype=torch.float64)
    y, x = torch.meshgrid(axis, axis, indexing="ij")
    c = (size - 1) / 2
    if kind == "ellipse":
        inside = ((y - c) / (0.22 * size)) ** 2 + ((x - c) / (0.3 * size)) ** 2 <= 1
    elif kind == "border":
        inside = (y - c) ** 2 + x**2 <= (0.3 * size) ** 2
    elif kind == "thin":
        half = max(1.0, size / 64)
        inside = ((y - (0.3 * size + 0.4 * x)).abs() <= half) & (x >= 0.15 * size) & (x <= 0.85 * size)
    else:
        raise ValueError(f"unknown mask {kind!r}; expected some of: {', '.join(MASKS)}")
    return inside.to(dtype)[None, None]


def ring(mask: torch.Tensor, width: int) -> torch.Tensor:
    """``(B, 1, H, W)`` bool: the pixels outside the mask within ``width`` pixels of it (Chebyshev distance)."""
    inside = (mask > 0.5).to(torch.float32)
    grown = F.max_pool2d(inside, 2 * width + 1, stride=1, padding=width) > 0.5
    return grown & ~(inside > 0.5)


def check_names(value: Any, key: str, known: Sequence[str]) -> list[str]:
    """``value`` (a name or a list of names) as a list, each one of ``known``; ``ValueError`` naming ``key``."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, Sequence) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{key} must be a non-empty list of names from: {', '.join(known)}; got {value!r}")
    unknown = [v for v in value if v not in known]
    if unknown:
        raise ValueError(f"unknown {key} {', '.join(map(repr, unknown))}; expected some of: {', '.join(known)}")
    return list(value)


def _case_rows(result: torch.Tensor, truth, mask, band, meta, outcome) -> list[dict[str, Any]]:  # noqa: ANN001
    values = {
        "psnr_mask": region_psnr(result, truth, mask),
        "ssim_mask": region_ssim(result, truth, mask),
        "psnr_ring": region_psnr(result, truth, band.to(result)),
        "ssim_ring": region_ssim(result, truth, band.to(result)),
        "psnr_mask_gain_matched": gain_matched_psnr(result, truth, mask),
    }
    rows = []
    for i, info in enumerate(meta):
        row = {**info, **{k: float(v[i]) for k, v in values.items()}}
        row.update(outcome(i))
        rows.append(row)
    return rows


def _means(rows: Sequence[dict[str, Any]], transforms: Sequence[str], methods: Sequence[str]) -> list[dict]:
    table = []
    for transform in transforms:
        for method in methods:
            mine = [r for r in rows if r["transform"] == transform and r["method"] == method]
            ok = [r for r in mine if r["status"] == "ok"]
            row: dict[str, Any] = {"transform": transform, "method": method, "cases": f"{len(ok)}/{len(mine)}"}
            for key in _MEANS:
                finite = [float(r[key]) for r in ok if not math.isnan(float(r[key]))]
                row[key] = sum(finite) / len(finite) if finite else float("nan")
            if method != "composite":
                row["converged"] = f"{sum(1 for r in ok if r.get('converged'))}/{len(ok)}"
            table.append(row)
    return table


def run_benchmark(
    blend: Callable[..., Sequence[Any]],
    names: Sequence[str],
    out_dir: Path,
    *,
    size: int = 256,
    photos: Sequence[str] = PHOTOS,
    masks: Sequence[str] = MASKS,
    transforms: Sequence[str] = tuple(TRANSFORMS),
    ring_width: int | None = None,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
    crop: int = 32,
) -> dict[str, Path]:
    """Run the benchmark; write ``benchmark.csv``, ``benchmark.md`` and ``gallery_<transform>.png`` to ``out_dir``.

    Args:
        blend: ``blend(fg, bg, mask, where=...)`` runs every compared method on a batch and returns one outcome per
            method, in the order of ``names``, with ``name``, ``result`` (``None`` when it failed), ``seconds`` (per
            sample), ``converged`` (per sample), ``error`` and ``warning`` (:func:`fusion.compare.run_methods`).
        names: the methods' names.
        out_dir: where the files go.
        size: side of the photo crops; photos, masks, transforms: names from :data:`PHOTOS`, :data:`MASKS`,
            :data:`TRANSFORMS`; ring_width: the ring's width (``None``: ``max(2, size / 32)``).
        device, dtype: of the computation; crop: side of the galleries' boundary crop.

    Returns:
        ``{"benchmark_csv", "benchmark_md", "gallery_<transform>"...}`` paths.

    Raises:
        ValueError: bad sizes or names (before anything runs).
    """
    if not isinstance(size, int) or isinstance(size, bool) or size < 16:
        raise ValueError(f"size must be an integer >= 16 pixels, got {size!r}")
    width = max(2, round(size / 32)) if ring_width is None else ring_width
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"ring must be an integer >= 1 pixel or null, got {ring_width!r}")
    photos, masks = check_names(photos, "photos", PHOTOS), check_names(masks, "masks", MASKS)
    transforms = check_names(transforms, "transforms", list(TRANSFORMS))

    truth = torch.cat([benchmark_photo(p, size, dtype) for p in photos for _ in masks]).to(device)
    mask = torch.cat([benchmark_mask(m, size, dtype) for _ in photos for m in masks]).to(device)
    band = ring(mask, width)
    rows: list[dict[str, Any]] = []
    galleries: dict[str, tuple] = {}
    for transform in transforms:
        fg = TRANSFORMS[transform](truth)
        meta = [{"photo": p, "mask": m, "transform": transform} for p in photos for m in masks]
        composite = mask * fg + (1 - mask) * truth
        rows += _case_rows(composite, truth, mask, band, [{**x, "method": "composite"} for x in meta],
                           lambda i: {"status": "ok", "seconds": 0.0, "converged": True})  # fmt: skip
        began = time.perf_counter()
        outcomes = blend(fg, truth, mask, where=f"{transform}: ")
        for outcome in outcomes:
            info = [{**x, "method": outcome.name} for x in meta]
            if outcome.result is None:
                rows += [{**x, "status": "failed", "seconds": outcome.seconds, "message": outcome.error} for x in info]
                continue
            rows += _case_rows(outcome.result, truth, mask, band, info,
                               lambda i, o=outcome: {"status": "ok", "seconds": o.seconds, "converged": o.converged[i],
                                                     "message": o.warning})  # fmt: skip
        galleries[transform] = (fg[:1], composite[:1], outcomes)
        print(f"benchmark: {transform} done in {time.perf_counter() - began:.1f} s", flush=True)

    methods = ["composite", *names]
    table = _means(rows, transforms, methods)
    columns = ("transform", "method", "cases", "converged", *_MEANS)
    text = "\n\n".join(
        [
            "# Ground-truth benchmark",
            f"Photos {', '.join(photos)} (skimage.data), {size}×{size}, mapped to [0.05, 0.85]; masks "
            f"{', '.join(masks)}; ring {width} px; {str(dtype).removeprefix('torch.')}. Each transformation changes "
            "the photo into fg, each method blends fg back into the unchanged photo (bg = ground truth). "
            "Means over photos and masks of PSNR (dB) / SSIM against the ground truth inside the mask and in the "
            "ring around it; psnr_mask_gain_matched: PSNR inside the mask after one least-squares gain for the "
            "whole image; seconds per case. `composite`: the cut-and-paste before any blending.",
            markdown_table(table, columns),
        ]
    )
    from fusion.data.io import atomic_output, output_set

    written: dict[str, Path] = {}
    with output_set():
        written["benchmark_csv"] = write_csv(out_dir / "benchmark.csv", rows, COLUMNS)
        md = out_dir / "benchmark.md"
        with atomic_output(md) as tmp:
            tmp.write_text(text + "\n")
        written["benchmark_md"] = md
        for transform, (fg1, composite1, outcomes) in galleries.items():
            path = out_dir / f"gallery_{transform}.png"
            panels = [truth[:1], composite1] + [o.result[:1] if o.result is not None else None for o in outcomes]
            labels = ["ground truth", "changed (cut and paste)"] + [
                f"{o.name} {o.seconds:.2f} s" if o.result is not None else f"{o.name} failed" for o in outcomes
            ]
            save_gallery(path, panels, labels, mask[:1], score=(fg1 - truth[:1]).abs(), crop=crop)
            written[f"gallery_{transform}"] = path
    print(markdown_table(table, columns))
    return written
