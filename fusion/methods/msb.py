"""Multi-spline blending (Szeliski, Uyttendaele & Steedly, ICCP 2011): Poisson blending with the offset field
restricted to a bilinear spline on a coarse grid, solved by least squares."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusion.methods.contract import MethodResult
from fusion.methods.registry import MethodOutput, register
from fusion.ops.checks import check_blend_inputs, check_int
from fusion.ops.splines import bilinear_weights, spline_adjoint, spline_evaluate, spline_gram, spline_grid

#: Default spline spacing in pixels.
DEFAULT_SPACING = 16

#: Weight of the membrane term ``Σ (c_j − c_k)²`` between grid neighbours that both touch Ω: it only removes the
#: null directions of splines that vanish on every pixel of Ω (a cell that Ω barely touches), and is zero for a
#: constant offset.
MEMBRANE = 1e-6


#: Largest spline system solved (nodes): its dense matrix holds ``MAX_NODES²`` numbers (2 GiB in float64).
MAX_NODES = 16384


@dataclass
class MSBResult(MethodResult):
    """What :func:`msb_solve` returns: ``image``; ``offset`` the ``(B, C, H, W)`` spline offset field ``o`` (added
    to ``fg`` on Ω); ``control`` its ``(B, C, n_y, n_x)`` node values. ``solver`` is ``None`` (a direct solve)."""

    offset: torch.Tensor | None = None
    control: torch.Tensor | None = None


#: The two neighbour directions (down, right) as slices of ``p`` and of ``q = p + e`` over the image axes.
_PAIRS = (
    ((slice(None, -1), slice(None)), (slice(1, None), slice(None))),
    ((slice(None), slice(None, -1)), (slice(None), slice(1, None))),
)


def msb_system(mask: torch.Tensor, spacing: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The spline-space matrix ``N = Wᵀ A W + MEMBRANE·L_active + I_inactive`` of :func:`msb_solve`, per sample.

    Returns:
        ``(N, index, weight, region)``: ``N`` ``(B, n, n)`` with ``n = n_y·n_x``, the ``(H, W, 4)`` spline nodes
        and weights of every pixel, and Ω as a ``(B, H, W)`` 0/1 tensor in the mask's dtype.
    """
    batch, _, h, w = mask.shape
    dtype, device = mask.dtype, mask.device
    ny, nx = spline_grid(h, w, spacing)
    nodes = ny * nx
    region = (mask[:, 0].detach() > 0.5).to(dtype)
    index, weight = bilinear_weights(h, w, spacing, dtype=dtype, device=device)
    # Pérez's matrix on Ω: |N_p| on the diagonal (in-image neighbours), −1 for each neighbour pair inside Ω
    degree = torch.full((h, w), 4.0, dtype=dtype, device=device)
    degree[0] -= 1
    degree[-1] -= 1
    degree[:, 0] -= 1
    degree[:, -1] -= 1
    idx, wgt = index.reshape(-1, 4), weight.reshape(-1, 4)
    matrix = spline_gram(idx, wgt, idx, wgt, (region * degree).reshape(batch, -1), nodes)
    for p, q in _PAIRS:
        both = (region[(slice(None), *p)] * region[(slice(None), *q)]).reshape(batch, -1)
        ip, wp = index[p].reshape(-1, 4), weight[p].reshape(-1, 4)
        iq, wq = index[q].reshape(-1, 4), weight[q].reshape(-1, 4)
        cross = spline_gram(ip, wp, iq, wq, both, nodes)
        matrix = matrix - cross - cross.transpose(1, 2)
    # nodes whose support holds no pixel of Ω do not enter the energy: pin them to 0 (decoupled identity rows)
    active = spline_adjoint(region, index, weight, nodes) > 0
    grid = active.reshape(batch, ny, nx).to(dtype)
    flat = torch.arange(nodes, device=device).reshape(ny, nx)
    membrane = torch.zeros(batch, nodes * nodes, dtype=dtype, device=device)
    for pa, pb in _PAIRS:
        a, b = flat[pa].reshape(-1), flat[pb].reshape(-1)
        link = (grid[(slice(None), *pa)] * grid[(slice(None), *pb)]).reshape(batch, -1)
        for i, j, sign in ((a, a, 1.0), (b, b, 1.0), (a, b, -1.0), (b, a, -1.0)):
            membrane = membrane.index_add(1, i * nodes + j, sign * link)
    pin = torch.diag_embed((~active).to(dtype))
    return matrix + MEMBRANE * membrane.reshape(batch, nodes, nodes) + pin, index, weight, region


def msb_solve(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, spacing: int = DEFAULT_SPACING) -> MSBResult:
    """Multi-spline Poisson blending: ``u = fg + o`` on Ω, ``bg`` elsewhere, with a bilinear-spline offset ``o``.

    Discrete problem. Ω = {mask > 0.5}; ``d = bg − fg``; ``o = W c`` a bilinear spline with node values ``c`` on a
    grid of spacing ``s`` (:mod:`fusion.ops.splines`; its weights sum to one). Pérez's energy of ``u`` with
    guidance ``∇fg`` and ``u = bg`` off Ω, written in the offset, is

        ``E(o) = Σ_{p~q, p,q ∈ Ω} (o_p − o_q)² + Σ_{p~q, p ∈ Ω, q ∉ Ω} (o_p − d_q)²``

    over the 4-neighbour pairs of the image: the offset is smooth inside Ω and, across the seam, lifts ``fg`` to
    meet ``bg``. ``c`` minimises ``E(W c) + MEMBRANE·Σ_{j~k active} (c_j − c_k)²`` (see :data:`MEMBRANE`; nodes
    whose support misses Ω are set to 0): the normal equations ``(Wᵀ A W + MEMBRANE·L) c = Wᵀ r``, where
    ``A u_Ω = b`` are Pérez's equations (``A_pp = |N_p|``, ``A_pq = −1`` for neighbours in Ω) and
    ``r_p = Σ_{q ∈ N_p \\ Ω} d_q``, solved per sample by a dense Cholesky factorisation of the
    ``n × n`` matrix, ``n = (⌊(H−1)/s⌋ + 2)(⌊(W−1)/s⌋ + 2)``, shared by the channels.

    A constant difference ``bg − fg = κ`` gives ``o = κ`` exactly (so ``u = bg``); ``spacing=1`` makes every pixel a
    node and solves Pérez's equations themselves (up to the ``MEMBRANE`` term): the result tends to
    :func:`fusion.methods.poisson_blend`. A coarser spacing costs far less (the system has ``s²`` times fewer
    unknowns) and smooths the correction, which Poisson's offset field nearly is.

    Direct (``solver`` is ``None``); each sample depends on that sample's inputs only. Linear in ``fg`` and ``bg``,
    differentiable in them; the mask is thresholded (no gradient to it).

    Args:
        fg: ``(B, C, H, W)`` source, already placed on the canvas.
        bg: ``(B, C, H, W)`` destination.
        mask: ``(B, 1, H, W)`` in [0, 1].
        spacing: node spacing ``s`` in pixels, an integer ``>= 1``; the grid may have at most :data:`MAX_NODES`
            nodes (memory grows like ``(HW/s²)²``).

    Returns:
        :class:`MSBResult`: ``image`` the ``(B, C, H, W)`` blend (not clipped), ``offset`` and ``control``.

    Example:
        >>> bg = torch.rand(1, 3, 20, 24, dtype=torch.float64)
        >>> mask = torch.zeros(1, 1, 20, 24, dtype=torch.float64); mask[..., 5:15, 6:18] = 1
        >>> r = msb_solve(bg - 0.2, bg, mask, spacing=4)
        >>> r.control.shape, bool(torch.allclose(r.image, bg))
        (torch.Size([1, 3, 6, 7]), True)
    """
    check_int(spacing, "spacing", minimum=1)
    fg, bg, mask = check_blend_inputs(fg, bg, mask)
    batch, channels, h, w = fg.shape
    if spline_grid(h, w, spacing)[0] * spline_grid(h, w, spacing)[1] > MAX_NODES:
        fits = next(
            s for s in range(spacing, max(h, w) + 2) if spline_grid(h, w, s)[0] * spline_grid(h, w, s)[1] <= MAX_NODES
        )
        raise ValueError(
            f"spacing={spacing} puts more than {MAX_NODES} spline nodes on the {h}x{w} image (a dense system of that "
            f"size does not fit in memory); use spacing >= {fits}"
        )
    matrix, index, weight, region = msb_system(mask, spacing)
    region = region[:, None]
    outside = (1 - region) * (bg - fg)
    # r_p: the differences d_q of p's neighbours outside Ω, summed, on Ω only
    r = torch.zeros_like(fg)
    r[..., :-1, :] += outside[..., 1:, :]
    r[..., 1:, :] += outside[..., :-1, :]
    r[..., :, :-1] += outside[..., :, 1:]
    r[..., :, 1:] += outside[..., :, :-1]
    r = r * region
    nodes = matrix.shape[-1]
    rhs = spline_adjoint(r, index, weight, nodes)  # (B, C, n)
    factor = torch.linalg.cholesky(matrix)
    control = torch.cholesky_solve(rhs.transpose(1, 2), factor).transpose(1, 2)
    offset = spline_evaluate(control, index, weight)
    image = region * (fg + offset) + (1 - region) * bg
    ny, nx = spline_grid(h, w, spacing)
    return MSBResult(image, None, offset, control.reshape(batch, channels, ny, nx))


def msb_blend(
    fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, spacing: int = DEFAULT_SPACING
) -> torch.Tensor:
    """Multi-spline blending: the image of :func:`msb_solve` (same arguments).

    Returns:
        ``(B, C, H, W)`` (not clipped).

    Example:
        >>> fg, bg = torch.rand(1, 3, 20, 24), torch.rand(1, 3, 20, 24)
        >>> mask = torch.zeros(1, 1, 20, 24); mask[..., 5:15, 6:18] = 1
        >>> msb_blend(fg, bg, mask, spacing=4).shape
        torch.Size([1, 3, 20, 24])
    """
    return msb_solve(fg, bg, mask, spacing=spacing).image


class MSBBlend(nn.Module):
    """:func:`msb_blend` as a layer: ``forward(fg, bg, mask)`` with ``spacing`` fixed at construction.

    Example:
        >>> fg, bg = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
        >>> mask = torch.zeros(2, 1, 16, 16); mask[..., 4:12, 4:12] = 1
        >>> MSBBlend(spacing=4)(fg, bg, mask).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, *, spacing: int = DEFAULT_SPACING) -> None:
        super().__init__()
        self.options = dict(spacing=spacing)

    def forward(self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return msb_blend(fg, bg, mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


@register("msb")
def msb_cli(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, spacing: int = DEFAULT_SPACING) -> MethodOutput:
    """Command-line adapter (``infer.py method=msb``): :func:`msb_solve`; writes the offset field, shifted by 0.5
    to fit [0, 1], as ``offset``."""
    res = msb_solve(fg, bg, mask, spacing=spacing)
    return MethodOutput(result=res.image, images={"offset": (res.offset + 0.5).clamp(0, 1)})
