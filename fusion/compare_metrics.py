"""The metrics table of ``python -m fusion.compare``: one row per method (and item), as CSV and Markdown.

Each number comes from a function of :mod:`fusion.metrics` (formulas in their docstrings):

* ``gradient_fidelity``: :func:`fusion.metrics.gradient_fidelity` of the result against fg inside the mask;
* ``seam``: :func:`fusion.metrics.seam_excess`, the result's steps across the mask boundary minus bg's;
* ``change_outside``: :func:`fusion.metrics.change_outside`, the mean |result − bg| where the mask is 0;
* ``chromaticity``: :func:`fusion.metrics.chromaticity_error` (eq. 21 of the variational osmosis paper) against
  fg, averaged inside the mask;
* ``psnr`` / ``ssim``: :func:`fusion.metrics.region_psnr` / :func:`fusion.metrics.region_ssim` of the whole result
  against a reference image, when one is given.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fusion.data.io import atomic_output
from fusion.metrics import change_outside, chromaticity_error, gradient_fidelity, region_psnr, region_ssim, seam_excess

__all__ = ["METRICS", "blend_metrics", "format_value", "markdown_table", "summary_rows", "write_csv"]

#: Metric columns, in table order.
METRICS = ("gradient_fidelity", "seam", "change_outside", "chromaticity", "psnr", "ssim")


def blend_metrics(
    result: torch.Tensor,
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    ref: torch.Tensor | None = None,
) -> list[dict[str, float]]:
    """Every metric of :data:`METRICS` for each sample of a batch (``psnr``/``ssim`` NaN without ``ref``).

    Args:
        result, fg, bg: ``(B, C, H, W)`` (fg on bg's grid); mask: ``(B, 1, H, W)``; ref: ``(B, C, H, W)`` or None.

    Returns:
        One ``{metric: value}`` per sample.
    """
    values = {
        "gradient_fidelity": gradient_fidelity(result, fg, mask),
        "seam": seam_excess(result, bg, mask),
        "change_outside": change_outside(result, bg, mask),
        "chromaticity": chromaticity_error(result.clamp_min(0), fg.clamp_min(0), mask=(mask > 0.5).to(result))[0],
    }
    if ref is not None:
        values["psnr"] = region_psnr(result, ref)
        values["ssim"] = region_ssim(result, ref)
    nan = float("nan")
    return [{m: float(values[m][i]) if m in values else nan for m in METRICS} for i in range(result.shape[0])]


def format_value(value: Any) -> str:
    """A table cell: floats with 4 significant digits, NaN and None empty, ``inf`` spelled out."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return f"{value:.4g}"
    return str(value)


def write_csv(path: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> Path:
    """Write ``rows`` (missing cells empty) atomically as CSV with ``columns``; return the path."""
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: format_value(row.get(c)) if c != "message" else row.get(c, "") for c in columns})
    return path


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A Markdown table of ``rows`` with ``columns`` (cells through :func:`format_value`, ``|`` escaped)."""
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        cells = [format_value(row.get(c)).replace("|", "\\|") for c in columns]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _mean_std(values: Sequence[float]) -> str:
    finite = [v for v in values if not math.isnan(v)]
    if not finite:
        return ""
    mean = sum(finite) / len(finite)
    if math.isinf(mean):
        return format_value(mean)
    std = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return f"{format_value(mean)} ± {format_value(std)}"


def summary_rows(rows: Sequence[Mapping[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Mean ± sample standard deviation of ``seconds`` and every metric per method, over its ``ok`` rows.

    Returns:
        One row per method: ``method``, ``items`` (ok rows / all rows of the method), ``converged`` (count of
        converged ok rows), ``seconds`` and each metric as ``"mean ± std"`` text.
    """
    out = []
    for method in methods:
        mine = [r for r in rows if r.get("method") == method]
        ok = [r for r in mine if r.get("status") == "ok"]
        row: dict[str, Any] = {
            "method": method,
            "items": f"{len(ok)}/{len(mine)}",
            "converged": f"{sum(1 for r in ok if r.get('converged'))}/{len(ok)}",
        }
        for key in ("seconds", *METRICS):
            row[key] = _mean_std([float(r[key]) for r in ok if isinstance(r.get(key), float)])
        out.append(row)
    return out
