"""The five losses of Deep Image Blending (Zhang, Wen & Shi 2020, eqs. 6–12), each usable on its own.

All losses return per-sample values of shape ``(B,)``; sum or average them as needed. The perceptual ones take
lists of feature maps (e.g. from :class:`fusion.nn.vgg.VGG16Features`), one ``(B, N_l, H_l, W_l)`` tensor per
layer ``l``, with ``N_l`` channels and ``M_l = H_l·W_l`` positions, and per-layer weights (``α_l``, ``β_l``,
``γ_l`` in the paper; all 1 by default). Targets that do not change during an optimisation are passed in
pre-digested form (Gram matrices, sorted activations), computed once with :func:`gram_matrix` and
:func:`sorted_features`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from fusion.ops.diff import BoundaryCondition, check_bc, laplacian

__all__ = [
    "ContentLoss",
    "HistogramLoss",
    "PoissonGradientLoss",
    "StyleLoss",
    "TVLoss",
    "gram_matrix",
    "match_histograms",
    "sorted_features",
]


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Normalised Gram matrix ``G = F Fᵀ / (N M)`` of ``(B, N, H, W)`` activations, computed in float32 or wider.

    ``F`` is the ``N × M`` matrix of the flattened activations (``M = H·W``). The paper's ``G = F Fᵀ`` is
    divided by ``N·M`` (as in the authors' public code, to which its style weights are tuned), which also makes
    the style loss independent of the image size.

    Returns:
        ``(B, N, N)``.

    Example:
        >>> gram_matrix(torch.ones(1, 2, 3, 3))
        tensor([[[0.5000, 0.5000],
                 [0.5000, 0.5000]]])
    """
    b, n, h, w = features.shape
    flat = features.reshape(b, n, h * w)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return torch.bmm(flat, flat.transpose(1, 2)) / (n * h * w)


def sorted_features(features: torch.Tensor) -> torch.Tensor:
    """Each channel's activations in ascending order: ``(B, N, H, W)`` → ``(B, N, H·W)`` (no gradient).

    This is the target's marginal distribution per channel, as :class:`HistogramLoss` uses it.
    """
    flat = features.detach().flatten(2)
    if flat.dtype in (torch.float16, torch.bfloat16):
        flat = flat.float()
    return flat.sort(dim=-1).values


def match_histograms(features: torch.Tensor, target_sorted: torch.Tensor) -> torch.Tensor:
    """Exact histogram specification of each channel of ``features`` to the target's distribution.

    Every activation is replaced by the target quantile at its rank: the ``k``-th smallest of ``M`` values gets
    the target's value at fractional position ``k (M_t − 1) / (M − 1)`` of its sorted ``M_t`` values (linear
    interpolation; when ``M = M_t`` that is the target's ``k``-th smallest value). The result has exactly the
    target's marginal distribution per channel (up to that interpolation) and keeps the ordering of ``features``.
    This is the remapping ``R(·)`` of eq. (11), done by sorting instead of with a binned histogram.

    Args:
        features: ``(B, N, H, W)``.
        target_sorted: ``(B or 1, N, M_t)`` from :func:`sorted_features`.

    Returns:
        ``(B, N, H, W)`` in float32 or wider, without gradient.

    Example:
        >>> match_histograms(torch.tensor([[[[3.0, 1.0, 2.0]]]]), torch.tensor([[[10.0, 20.0, 30.0]]]))
        tensor([[[[30., 10., 20.]]]])
    """
    b, n, h, w = features.shape
    flat = features.detach().flatten(2)
    m, m_t = flat.shape[-1], target_sorted.shape[-1]
    target = target_sorted.to(device=flat.device).expand(b, n, m_t)
    if m == m_t:
        values = target
    else:
        pos = torch.linspace(0, m_t - 1, m, device=flat.device, dtype=target.dtype)
        lo = pos.floor().long().clamp(max=m_t - 1)
        hi = (lo + 1).clamp(max=m_t - 1)
        frac = pos - lo.to(pos.dtype)
        values = target[..., lo] * (1 - frac) + target[..., hi] * frac
    order = flat.argsort(dim=-1)
    matched = torch.empty(b, n, m, dtype=target.dtype, device=flat.device)
    matched.scatter_(-1, order, values.contiguous())
    return matched.reshape(b, n, h, w)


def _weights(layer_weights: Sequence[float] | None, name: str) -> tuple[float, ...] | None:
    if layer_weights is None:
        return None
    weights = tuple(float(v) for v in layer_weights)
    if not weights or any(not (v >= 0) for v in weights):
        raise ValueError(f"{name} must be a non-empty sequence of non-negative numbers, got {layer_weights!r}")
    return weights


def _per_layer(weights: tuple[float, ...] | None, count: int) -> tuple[float, ...]:
    if weights is None:
        return (1.0,) * count
    if len(weights) != count:
        raise ValueError(f"{len(weights)} layer weights for {count} feature maps")
    return weights


def _wide(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class PoissonGradientLoss(nn.Module):
    """Poisson gradient (blending) loss, eq. (6): the blend's Laplacian against the guidance Laplacian.

    ``L = 1 / (2HW) · Σ_c Σ_{m,n} w ⊙ [Δ I_B − (M ⊙ Δ I_S + (1 − M) ⊙ Δ I_T)]²``

    with the 5-point Laplacian ``Δ`` (:func:`fusion.ops.diff.laplacian`, Neumann boundary by default: at the
    image border only in-image neighbours count, as in Pérez's equations), the blend ``I_B``, the source
    ``I_S`` placed on the canvas and the target ``I_T``. The paper writes the guidance as "the Laplacian of the
    source plus that of the target"; each counts on its own side of the mask ``M``. The weight ``w``:

    * ``region="mask"`` (default): ``w = M``. The loss is then zero exactly when ``Δ I_B = Δ I_S`` on the mask
      (for a binary mask) — Pérez's discrete Poisson equation, with the target's pixels next to the mask as
      the Dirichlet boundary. This is the paper's "essentially computed within the blending region".
    * ``region="image"``: ``w = 1``, eq. (6) taken literally over the whole image. It adds a penalty on the ring
      just outside the mask, whose Laplacian sees the blended pixels, so its minimum is not Poisson editing's.

    Args:
        region: ``"mask"`` or ``"image"``.
        bc: boundary condition of the Laplacian at the image border.

    Forward:
        ``blend, source, target``: ``(B, C, H, W)``; ``mask``: ``(B, 1, H, W)`` in [0, 1]. Returns ``(B,)``.

    Example:
        >>> target = torch.rand(1, 3, 8, 8); mask = torch.zeros(1, 1, 8, 8); mask[..., 2:6, 2:6] = 1
        >>> PoissonGradientLoss()(target, target, target, mask)
        tensor([0.])
    """

    def __init__(self, region: Literal["mask", "image"] = "mask", bc: BoundaryCondition = "neumann") -> None:
        super().__init__()
        if region not in ("mask", "image"):
            raise ValueError(f"region must be 'mask' or 'image', got {region!r}")
        check_bc(bc)
        self.region = region
        self.bc = bc

    def guidance(self, source: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The guidance Laplacian ``M ⊙ Δ I_S + (1 − M) ⊙ Δ I_T``, ``(B, C, H, W)``; constant during a blend."""
        return mask * laplacian(source, self.bc) + (1 - mask) * laplacian(target, self.bc)

    def forward(
        self,
        blend: torch.Tensor,
        source: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor,
        *,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``guidance`` (optional): :meth:`guidance` precomputed, to skip two Laplacians per call."""
        g = self.guidance(source, target, mask) if guidance is None else guidance
        residual = (laplacian(blend, self.bc) - g).square()
        if self.region == "mask":
            residual = mask * residual
        h, w = blend.shape[-2:]
        return residual.flatten(1).sum(1) / (2 * h * w)


class ContentLoss(nn.Module):
    """Content loss, eqs. (7) and (9): ``Σ_l α_l / (2 N_l M_l) · Σ_{i,k} (m_l ⊙ (F_l[x] − F_l[y]))²_{ik}``.

    Eq. (7) (stage 1) compares the input's activations inside the mask with the source's: pass ``mask`` (the
    paper's source is already cut out by the mask; here the mask, resized to each layer by area averaging,
    multiplies both activations). Eq. (9) (stage 2) compares whole images: leave ``mask`` out.

    Args:
        layer_weights: ``α_l`` per layer (default 1 each).

    Forward:
        ``input_features``, ``target_features``: lists of ``(B, N_l, H_l, W_l)`` (target batch may be 1);
        ``mask`` (optional): ``(B, 1, H, W)`` at image resolution. Returns ``(B,)``.

    Example:
        >>> x, y = torch.zeros(1, 2, 2, 2), torch.ones(1, 2, 2, 2)
        >>> ContentLoss()([x], [y])
        tensor([0.5000])
    """

    def __init__(self, layer_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.layer_weights = _weights(layer_weights, "layer_weights")

    def forward(
        self,
        input_features: Sequence[torch.Tensor],
        target_features: Sequence[torch.Tensor],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        weights = _per_layer(self.layer_weights, len(input_features))
        total = 0
        for alpha, x, y in zip(weights, input_features, target_features, strict=True):
            diff = _wide(x) - _wide(y)
            if mask is not None:
                diff = diff * F.adaptive_avg_pool2d(mask.to(diff.dtype), x.shape[-2:])
            n, m = x.shape[1], x.shape[2] * x.shape[3]
            total = total + alpha / (2 * n * m) * diff.square().flatten(1).sum(1)
        return total


class StyleLoss(nn.Module):
    """Style loss, eqs. (8) and (10): ``Σ_l β_l / (2 N_l²) · Σ_{i,j} (G_l[x] − G_l[target])²_{ij}``.

    ``G_l`` is the normalised Gram matrix of :func:`gram_matrix`.

    Args:
        layer_weights: ``β_l`` per layer (default 1 each).

    Forward:
        ``input_features``: list of ``(B, N_l, H_l, W_l)``; ``target_grams``: list of ``(B or 1, N_l, N_l)``
        from :func:`gram_matrix`. Returns ``(B,)``.

    Example:
        >>> x = torch.ones(1, 2, 3, 3)
        >>> StyleLoss()([x], [torch.zeros(1, 2, 2)])
        tensor([0.1250])
    """

    def __init__(self, layer_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.layer_weights = _weights(layer_weights, "layer_weights")

    def forward(self, input_features: Sequence[torch.Tensor], target_grams: Sequence[torch.Tensor]) -> torch.Tensor:
        weights = _per_layer(self.layer_weights, len(input_features))
        total = 0
        for beta, x, g_t in zip(weights, input_features, target_grams, strict=True):
            g = gram_matrix(x)
            n = x.shape[1]
            total = total + beta / (2 * n * n) * (g - g_t.to(g.dtype)).square().flatten(1).sum(1)
        return total


class HistogramLoss(nn.Module):
    """Histogram loss, eq. (11): ``Σ_l γ_l / (2 N_l M_l) · ‖F_l[x] − R_l(F_l[x])‖²_F``.

    ``R_l`` remaps every channel of the input's activations to the target's distribution
    (:func:`match_histograms`) and is held constant (no gradient flows through it), as in Risser et al. The
    paper's squared Frobenius norm is divided by ``2 N_l M_l`` like the content loss, so that its weight does
    not depend on the image size.

    Args:
        layer_weights: ``γ_l`` per layer (default 1 each).

    Forward:
        ``input_features``: list of ``(B, N_l, H_l, W_l)``; ``target_sorted``: list of ``(B or 1, N_l, M_t)``
        from :func:`sorted_features`. Returns ``(B,)``.

    Example:
        >>> x = torch.tensor([[[[0.0, 1.0]]]])
        >>> HistogramLoss()([x], [torch.tensor([[[1.0, 3.0]]])])
        tensor([1.2500])
    """

    def __init__(self, layer_weights: Sequence[float] | None = None) -> None:
        super().__init__()
        self.layer_weights = _weights(layer_weights, "layer_weights")

    def forward(self, input_features: Sequence[torch.Tensor], target_sorted: Sequence[torch.Tensor]) -> torch.Tensor:
        weights = _per_layer(self.layer_weights, len(input_features))
        total = 0
        for gamma, x, t in zip(weights, input_features, target_sorted, strict=True):
            x = _wide(x)
            remapped = match_histograms(x, t).to(x.dtype)
            n, m = x.shape[1], x.shape[2] * x.shape[3]
            total = total + gamma / (2 * n * m) * (x - remapped).square().flatten(1).sum(1)
        return total


class TVLoss(nn.Module):
    """Anisotropic total variation, eq. (12): ``Σ_c Σ_{m,n} |I_{m+1,n} − I_{m,n}| + |I_{m,n+1} − I_{m,n}|``.

    Differences across the image border are zero (no term leaves the image).

    Forward:
        ``image``: ``(B, C, H, W)``. Returns ``(B,)``.

    Example:
        >>> TVLoss()(torch.tensor([[[[0.0, 1.0], [3.0, 1.0]]]]))
        tensor([6.])
    """

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dy = (image[..., 1:, :] - image[..., :-1, :]).abs().flatten(1).sum(1)
        dx = (image[..., :, 1:] - image[..., :, :-1]).abs().flatten(1).sum(1)
        return dy + dx
