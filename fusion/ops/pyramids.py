"""Burt–Adelson image pyramids: REDUCE and EXPAND with the 5-tap binomial kernel, for any image size.

Grid and boundary: pixels are samples ``x_0 … x_{N-1}`` along each axis, extended by the half-sample mirror
``… x_1 x_0 | x_0 … x_{N-1} | x_{N-1} x_{N-2} …`` (SciPy's ``mode="reflect"``). The kernel is
``w = [1, 4, 6, 4, 1] / 16`` (Burt & Adelson 1983 with ``a = 0.375``), applied separably.

* :func:`pyramid_reduce` blurs with ``w`` and keeps the even samples: a side of ``N`` becomes ``⌈N/2⌉``.
* :func:`pyramid_expand` places the coarse samples at the even positions of a zero grid of the requested size,
  blurs with ``w`` and divides by the blurred indicator of those positions (a normalised convolution), so that a
  constant image expands to the same constant at every size, borders included. In the interior this is the
  classic ``4 Σ w_m w_n g((i − m)/2, (j − n)/2)``.

Both are linear, batched over every leading axis, differentiable, and run on the input's device and dtype.
"""

from __future__ import annotations

from typing import Sequence

import torch

#: The binomial generating kernel, unnormalised (divide by 16).
BINOMIAL = (1.0, 4.0, 6.0, 4.0, 1.0)


def _mirror_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices ``-pad … n + pad − 1`` folded into ``[0, n)`` by the half-sample mirror (any ``n >= 1``)."""
    i = torch.arange(-pad, n + pad, device=device)
    j = torch.remainder(i, 2 * n)
    return torch.where(j >= n, 2 * n - 1 - j, j)


def _blur_axis(x: torch.Tensor, dim: int) -> torch.Tensor:
    n = x.shape[dim]
    ext = x.index_select(dim, _mirror_index(n, 2, x.device))
    out = None
    for k, weight in enumerate(BINOMIAL):
        term = ext.narrow(dim, k, n) * (weight / 16.0)
        out = term if out is None else out + term
    return out


def binomial_blur(x: torch.Tensor) -> torch.Tensor:
    """Separable ``[1, 4, 6, 4, 1]/16`` filter of the last two axes with half-sample mirror boundaries.

    Equals ``scipy.ndimage.correlate1d(·, w, axis, mode="reflect")`` along both image axes.

    Example:
        >>> x = torch.ones(1, 1, 3, 5)
        >>> torch.equal(binomial_blur(x), x)
        True
    """
    return _blur_axis(_blur_axis(x, -2), -1)


def pyramid_reduce(x: torch.Tensor) -> torch.Tensor:
    """One REDUCE step: binomial blur, then the even rows and columns; ``(…, H, W)`` → ``(…, ⌈H/2⌉, ⌈W/2⌉)``.

    Example:
        >>> pyramid_reduce(torch.rand(2, 3, 7, 10)).shape
        torch.Size([2, 3, 4, 5])
    """
    return binomial_blur(x)[..., ::2, ::2]


def pyramid_expand(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """One EXPAND step to ``size = (H, W)`` with ``⌈H/2⌉, ⌈W/2⌉`` equal to ``x``'s last two sides.

    Normalised convolution of the zero-filled grid (see the module docstring): constants are kept exactly.

    Example:
        >>> y = pyramid_expand(torch.full((1, 1, 4, 5), 0.3), (7, 10))
        >>> y.shape, bool(torch.allclose(y, torch.full_like(y, 0.3)))
        (torch.Size([1, 1, 7, 10]), True)
    """
    h, w = size
    if ((h + 1) // 2, (w + 1) // 2) != tuple(x.shape[-2:]):
        raise ValueError(f"cannot expand a {tuple(x.shape[-2:])} level to {size}: the coarse side must be ceil(N/2)")
    grid = x.new_zeros(*x.shape[:-2], h, w)
    grid[..., ::2, ::2] = x
    marks = x.new_zeros(h, w)
    marks[::2, ::2] = 1
    return binomial_blur(grid) / binomial_blur(marks)


def reduce_sizes(height: int, width: int, levels: int) -> list[tuple[int, int]]:
    """Fine-to-coarse sizes of a ``levels``-level REDUCE pyramid (each side ``N → ⌈N/2⌉``).

    Example:
        >>> reduce_sizes(7, 10, 3)
        [(7, 10), (4, 5), (2, 3)]
    """
    sizes = [(height, width)]
    for _ in range(levels - 1):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


def gaussian_pyramid_ba(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Burt–Adelson Gaussian pyramid ``G_0 = x``, ``G_{k+1} = REDUCE(G_k)``, fine to coarse (``levels`` images)."""
    out = [x]
    for _ in range(levels - 1):
        out.append(pyramid_reduce(out[-1]))
    return out


def laplacian_pyramid(x: torch.Tensor, levels: int) -> list[torch.Tensor]:
    """Laplacian pyramid ``L_k = G_k − EXPAND(G_{k+1})`` for ``k < levels − 1`` and ``L_{levels−1} = G_{levels−1}``.

    :func:`collapse_laplacian` inverts it exactly (up to round-off), whatever the EXPAND filter.

    Example:
        >>> x = torch.rand(1, 3, 9, 14, dtype=torch.float64)
        >>> torch.allclose(collapse_laplacian(laplacian_pyramid(x, 4)), x)
        True
    """
    gauss = gaussian_pyramid_ba(x, levels)
    bands = [g - pyramid_expand(g_next, tuple(g.shape[-2:])) for g, g_next in zip(gauss[:-1], gauss[1:])]
    return [*bands, gauss[-1]]


def collapse_laplacian(bands: Sequence[torch.Tensor]) -> torch.Tensor:
    """Sum a Laplacian pyramid back into an image: ``x = L_0 + EXPAND(L_1 + EXPAND(L_2 + …))``."""
    x = bands[-1]
    for band in reversed(bands[:-1]):
        x = band + pyramid_expand(x, tuple(band.shape[-2:]))
    return x
