"""Cut-and-paste compositing: the mask as an alpha, ``mask·fg + (1 − mask)·bg`` (the baseline of every method)."""

from __future__ import annotations

import torch
from torch import nn

from fusion.methods.contract import MethodResult
from fusion.methods.registry import MethodOutput, register
from fusion.ops.checks import check_blend_inputs, check_flag


def paste_solve(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, hard: bool = False) -> MethodResult:
    """Alpha compositing of ``fg`` over ``bg`` with the mask as the alpha: ``u = m·fg + (1 − m)·bg``.

    A binary mask gives the plain copy-and-paste composite; a soft mask blends linearly (``hard=True`` first
    thresholds it, ``m = [mask > 0.5]``). Direct (``solver`` is ``None``), per pixel, so each sample depends on
    that sample's inputs only; differentiable in ``fg``, ``bg`` and (unless ``hard``) ``mask``.

    Args:
        fg: ``(B, C, H, W)`` source, already placed on the canvas (see :func:`fusion.methods.place_source`).
        bg: ``(B, C, H, W)`` destination.
        mask: ``(B, 1, H, W)`` in [0, 1] (batch 1 of any input broadcasts).
        hard: threshold the mask at 0.5 (a hard cut) instead of using it as a soft alpha.

    Returns:
        :class:`~fusion.methods.contract.MethodResult` with ``image`` the ``(B, C, H, W)`` composite.

    Example:
        >>> fg, bg = torch.ones(1, 1, 2, 3), torch.zeros(1, 1, 2, 3)
        >>> mask = torch.tensor([[[[1.0, 0.5, 0.0], [0.0, 0.0, 0.0]]]])
        >>> paste_solve(fg, bg, mask).image[0, 0]
        tensor([[1.0000, 0.5000, 0.0000],
                [0.0000, 0.0000, 0.0000]])
    """
    check_flag(hard, "hard")
    fg, bg, mask = check_blend_inputs(fg, bg, mask)
    if hard:
        mask = (mask > 0.5).to(fg.dtype)
    return MethodResult(mask * fg + (1 - mask) * bg)


def paste_blend(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, hard: bool = False) -> torch.Tensor:
    """The composite ``mask·fg + (1 − mask)·bg``: the image of :func:`paste_solve` (same arguments).

    Returns:
        ``(B, C, H, W)``.

    Example:
        >>> fg, bg = torch.rand(2, 3, 8, 9), torch.rand(2, 3, 8, 9)
        >>> mask = torch.zeros(2, 1, 8, 9); mask[..., 2:6, 3:7] = 1
        >>> out = paste_blend(fg, bg, mask)
        >>> torch.equal(out[..., 2:6, 3:7], fg[..., 2:6, 3:7]), torch.equal(out[..., :2, :], bg[..., :2, :])
        (True, True)
    """
    return paste_solve(fg, bg, mask, hard=hard).image


class PasteBlend(nn.Module):
    """:func:`paste_blend` as a layer: ``forward(fg, bg, mask)`` composites with the option fixed at construction.

    Example:
        >>> fg, bg = torch.rand(1, 3, 4, 4), torch.rand(1, 3, 4, 4)
        >>> mask = torch.zeros(1, 1, 4, 4); mask[..., 1:3, 1:3] = 1
        >>> PasteBlend()(fg, bg, mask).shape
        torch.Size([1, 3, 4, 4])
    """

    def __init__(self, *, hard: bool = False) -> None:
        super().__init__()
        self.options = dict(hard=hard)

    def forward(self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return paste_blend(fg, bg, mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


@register("paste")
def paste_cli(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, hard: bool = False) -> MethodOutput:
    """Command-line adapter (``infer.py method=paste``): :func:`paste_solve`; no extra outputs."""
    return MethodOutput(result=paste_solve(fg, bg, mask, hard=hard).image)
