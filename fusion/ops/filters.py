"""Gaussian filtering diagonal in the DCT-II basis, and Gaussian pyramids (kornia)."""

from __future__ import annotations

import math
from typing import Sequence

import kornia
import torch

from fusion.ops.transforms import dct, idct


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, *, dtype=torch.float64, device=None) -> torch.Tensor:
    """Normalised samples ``g_j ∝ exp(−j²/(2σ²))`` for ``|j| ≤ r``, ``r = int(truncate·σ + 0.5)``.

    The radius rule is the one of ``scipy.ndimage.gaussian_filter``.

    Example:
        >>> gaussian_kernel1d(0.5).numel()
        5
    """
    if sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    radius = int(truncate * sigma + 0.5)
    j = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(j**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def gaussian_dct_symbol(
    n: int, sigma: float, truncate: float = 4.0, *, dtype=torch.float32, device=None
) -> torch.Tensor:
    """Eigenvalues, in the DCT-II basis, of the sampled Gaussian filter with half-sample mirror boundaries.

    Filtering with the mirror extension ``… x_1 x_0 | x_0 x_1 … x_{n-1} | x_{n-1} x_{n-2} …`` (scipy's
    ``mode="reflect"``) is diagonal in the DCT-II basis with eigenvalues ``ĝ_k = Σ_j g_j cos(πkj/n)``.
    """
    g = gaussian_kernel1d(sigma, truncate)
    radius = (g.numel() - 1) // 2
    j = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.arange(n, dtype=torch.float64)
    sym = (g[None, :] * torch.cos(math.pi * k[:, None] * j[None, :] / n)).sum(1)
    return sym.to(dtype=dtype, device=device)


def gaussian_blur_dct(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian filter of the image axes with half-sample mirror boundaries, applied in the DCT basis.

    Equals ``scipy.ndimage.gaussian_filter(x, sigma, mode="reflect", truncate=truncate)`` over the last two axes.

    Example:
        >>> x = torch.ones(1, 1, 6, 9)
        >>> torch.allclose(gaussian_blur_dct(x, 1.5), x, atol=1e-6)
        True
    """
    h, w = x.shape[-2:]
    gy = gaussian_dct_symbol(h, sigma, truncate, dtype=x.dtype, device=x.device)
    gx = gaussian_dct_symbol(w, sigma, truncate, dtype=x.dtype, device=x.device)
    return idct(dct(x, (-2, -1)) * gy[:, None] * gx[None, :], (-2, -1))


def pyramid_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Sizes of a ``levels``-level pyramid from fine to coarse, halving (rounding down, at least 1) each time."""
    sizes = [(height, width)]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append((max(h // 2, 1), max(w // 2, 1)))
    return sizes


def gaussian_pyramid(x: torch.Tensor, sizes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
    """Gaussian pyramid with the given fine-to-coarse ``sizes``: kornia's 5×5 Gaussian blur, then resampling.

    The aspect ratio is kept at every level (each level has its own height and width). Runs in the input's dtype
    even under ``torch.autocast``: the pyramid feeds the spectral solves, which stay in float32, and a bf16 blur
    would cost them three significant digits.
    """
    out = [x]
    with torch.autocast(x.device.type, enabled=False):
        for size in sizes[1:]:
            blurred = kornia.filters.gaussian_blur2d(out[-1], (5, 5), (1.0, 1.0), border_type="reflect")
            out.append(kornia.geometry.transform.resize(blurred, size, interpolation="bilinear", antialias=False))
    return out


def resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resampling of the image axes to ``size`` (kornia), in the input's dtype even under autocast."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    with torch.autocast(x.device.type, enabled=False):
        return kornia.geometry.transform.resize(x, size, interpolation="bilinear", antialias=True)
