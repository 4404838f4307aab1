"""Modified Poisson blending (Tanaka, Kamio & Okutomi, SIGGRAPH Asia 2012 posters): a screened Poisson problem
over the whole image, solved in closed form by one DCT."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusion.methods.contract import MethodResult
from fusion.methods.registry import MethodOutput, register
from fusion.ops.checks import check_blend_inputs, check_positive_number
from fusion.ops.diff import div, grad
from fusion.ops.poisson import solve_poisson

#: Default weight ``ε`` of the data term (per pixel, against unit-weight squared gradient differences): colour
#: differences are corrected over about ``1/√ε ≈ 30`` pixels on either side of the seam.
DEFAULT_EPS = 1e-3


@dataclass
class MPBResult(MethodResult):
    """What :func:`mpb_solve` returns: ``image`` and the ``(B, C, 2, H, W)`` composite guidance ``field`` ``v``."""

    field: torch.Tensor | None = None


def mpb_solve(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, eps: float = DEFAULT_EPS) -> MPBResult:
    """Seamless cloning by the modified Poisson problem: ``u = argmin ‖∇u − v‖² + ε ‖u − bg‖²`` over the whole image.

    The guidance is ``v = m ∇fg + (1 − m) ∇bg`` on the forward-difference edges (an edge ``(p, p + e)`` takes the
    mask value at ``p``; a soft mask blends the two fields), so no edge carries the jump between ``fg`` and
    ``bg``. The minimiser solves the screened Poisson equation

        ``(ε − Δ) u = ε·bg − div v``

    with ``Δ = div ∇`` the Neumann (half-sample mirror) Laplacian of :mod:`fusion.ops.diff`, diagonal in the
    DCT-II basis: ``û_k = (ε b̂g_k − (div v)^_k) / (ε + λ_k)`` with ``λ_k = 4 sin²(πk_y/2H) + 4 sin²(πk_x/2W)``.
    One DCT pair per sample and channel, closed form (``solver`` is ``None``).

    What it is for: unlike Pérez's problem, nothing is fixed at the seam. The colour mismatch between ``fg`` and
    ``bg`` is spread over a band of about ``1/√ε`` pixels on both sides of the boundary (the background near the
    object shifts too, far from it it is unchanged), the mean of ``u`` equals the mean of ``bg``, and deep inside the
    object the result keeps ``fg``'s detail with ``bg``'s colour at scales above ``1/√ε``. Small ``ε`` tends to
    the integration of the composite gradient field (Poisson-like); large ``ε`` returns ``bg``.

    Each sample depends on that sample's inputs only. Linear in ``fg`` and ``bg`` and in the soft ``mask``:
    differentiable in all three.

    Args:
        fg: ``(B, C, H, W)`` source, already placed on the canvas.
        bg: ``(B, C, H, W)`` destination.
        mask: ``(B, 1, H, W)`` in [0, 1].
        eps: weight ``ε > 0`` of the closeness to ``bg`` (default :data:`DEFAULT_EPS`).

    Returns:
        :class:`MPBResult`: ``image`` the ``(B, C, H, W)`` blend (not clipped), ``field`` the guidance ``v``.

    Example:
        >>> fg, bg = torch.rand(1, 3, 24, 32, dtype=torch.float64), torch.rand(1, 3, 24, 32, dtype=torch.float64)
        >>> mask = torch.zeros(1, 1, 24, 32, dtype=torch.float64); mask[..., 6:18, 8:24] = 1
        >>> r = mpb_solve(fg, bg, mask)
        >>> r.image.shape, bool(torch.allclose(r.image.mean((-2, -1)), bg.mean((-2, -1))))
        (torch.Size([1, 3, 24, 32]), True)
    """
    eps = check_positive_number(eps, "eps")
    fg, bg, mask = check_blend_inputs(fg, bg, mask)
    m = mask.unsqueeze(-3)
    field = m * grad(fg, bc="neumann") + (1 - m) * grad(bg, bc="neumann")
    rhs = eps * bg - div(field, bc="neumann")
    return MPBResult(solve_poisson(rhs, "neumann", eps), None, field)


def mpb_blend(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, eps: float = DEFAULT_EPS) -> torch.Tensor:
    """Modified Poisson blending: the image of :func:`mpb_solve` (same arguments).

    Returns:
        ``(B, C, H, W)`` (not clipped).

    Example:
        >>> fg, bg = torch.rand(1, 3, 20, 24), torch.rand(1, 3, 20, 24)
        >>> mask = torch.zeros(1, 1, 20, 24); mask[..., 5:15, 6:18] = 1
        >>> mpb_blend(fg, bg, mask, eps=0.01).shape
        torch.Size([1, 3, 20, 24])
    """
    return mpb_solve(fg, bg, mask, eps=eps).image


class MPBBlend(nn.Module):
    """:func:`mpb_blend` as a layer: ``forward(fg, bg, mask)`` with ``eps`` fixed at construction.

    Example:
        >>> fg, bg = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
        >>> mask = torch.zeros(2, 1, 16, 16); mask[..., 4:12, 4:12] = 1
        >>> MPBBlend(eps=0.01)(fg, bg, mask).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, *, eps: float = DEFAULT_EPS) -> None:
        super().__init__()
        self.options = dict(eps=eps)

    def forward(self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mpb_blend(fg, bg, mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


@register("mpb")
def mpb_cli(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, eps: float = DEFAULT_EPS) -> MethodOutput:
    """Command-line adapter (``infer.py method=mpb``): :func:`mpb_solve`; no extra outputs."""
    return MethodOutput(result=mpb_solve(fg, bg, mask, eps=eps).image)
