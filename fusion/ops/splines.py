"""Bilinear splines on a coarse grid over an image, and Gram matrices of pixel constraints in their basis.

Grid: control nodes at rows ``0, s, 2s, …`` and columns ``0, s, 2s, …`` (``s`` the spacing in pixels), with
``n_y = ⌊(H − 1)/s⌋ + 2`` rows and ``n_x = ⌊(W − 1)/s⌋ + 2`` columns so that every pixel lies in a cell with four
nodes. Pixel ``(y, x)`` lies in cell ``(i, j) = (⌊y/s⌋, ⌊x/s⌋)`` with fractions ``t = y/s − i``, ``r = x/s − j``;
its value is ``(1−t)(1−r) c_{i,j} + t(1−r) c_{i+1,j} + (1−t) r c_{i,j+1} + t r c_{i+1,j+1}``. The weights are
non-negative and sum to one, so a constant spline is that constant at every pixel. With ``s = 1`` every pixel is
a node (the last node row and column carry no weight).
"""

from __future__ import annotations

import torch


def spline_grid(height: int, width: int, spacing: int) -> tuple[int, int]:
    """``(n_y, n_x)``, the node counts of the grid (see the module docstring).

    Example:
        >>> spline_grid(33, 20, 16)
        (4, 3)
    """
    return (height - 1) // spacing + 2, (width - 1) // spacing + 2


def bilinear_weights(
    height: int, width: int, spacing: int, *, dtype: torch.dtype, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The four nodes and weights of every pixel: ``(index, weight)``, each ``(H, W, 4)``.

    ``index`` is the flat node number ``i·n_x + j`` of the corners ``(i, j), (i+1, j), (i, j+1), (i+1, j+1)``.

    Example:
        >>> idx, wgt = bilinear_weights(3, 3, 2, dtype=torch.float64)
        >>> idx[1, 1].tolist(), wgt[1, 1].tolist()
        ([0, 3, 1, 4], [0.25, 0.25, 0.25, 0.25])
    """
    _, nx = spline_grid(height, width, spacing)
    ys = torch.arange(height, device=device)
    xs = torch.arange(width, device=device)
    iy, ix = ys // spacing, xs // spacing
    ty = ((ys - iy * spacing).to(dtype) / spacing)[:, None]
    tx = ((xs - ix * spacing).to(dtype) / spacing)[None, :]
    base = iy[:, None] * nx + ix[None, :]
    index = torch.stack([base, base + nx, base + 1, base + nx + 1], dim=-1)
    weight = torch.stack([(1 - ty) * (1 - tx), ty * (1 - tx), (1 - ty) * tx, ty * tx], dim=-1)
    return index, weight


def spline_evaluate(control: torch.Tensor, index: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Pixel values ``Σ_k weight[..., k] · control[..., index[..., k]]`` of splines with ``control`` ``(..., n)``.

    Returns:
        ``(..., H, W)``.
    """
    h, w, _ = index.shape
    picked = control[..., index.reshape(-1)].reshape(*control.shape[:-1], h, w, 4)
    return (picked * weight).sum(-1)


def spline_adjoint(values: torch.Tensor, index: torch.Tensor, weight: torch.Tensor, nodes: int) -> torch.Tensor:
    """The transpose of :func:`spline_evaluate`: ``(..., H, W)`` pixel values to ``(..., nodes)`` node sums."""
    lead = values.shape[:-2]
    contrib = (values[..., None] * weight).reshape(*lead, -1)
    out = values.new_zeros(*lead, nodes)
    return out.index_add(-1, index.reshape(-1), contrib)


def spline_gram(
    index_a: torch.Tensor,
    weight_a: torch.Tensor,
    index_b: torch.Tensor,
    weight_b: torch.Tensor,
    scale: torch.Tensor,
    nodes: int,
) -> torch.Tensor:
    """``Σ_p scale_p · w_a(p) w_b(p)ᵀ``: a ``(B, nodes, nodes)`` matrix from the spline weight vectors of two pixel
    sets (``(P, 4)`` index/weight rows) and per-pixel scales ``(B, P)``."""
    batch = scale.shape[0]
    pair = (index_a[:, :, None] * nodes + index_b[:, None, :]).reshape(-1)
    value = (weight_a[:, :, None] * weight_b[:, None, :]).reshape(1, -1, 16)
    contrib = (scale[:, :, None] * value).reshape(batch, -1)
    out = scale.new_zeros(batch, nodes * nodes)
    return out.index_add(1, pair, contrib).reshape(batch, nodes, nodes)
