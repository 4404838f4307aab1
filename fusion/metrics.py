"""Image-quality metrics shared by the methods and benchmarks.

Chromaticity error (variational osmosis paper, eq. 21): with the geometric chromaticity mean
``GCM(z) = (z_R · z_G · z_B)^{1/3}`` (Finlayson et al.), the pixelwise error between a result ``u`` and a
reference ``u0`` is ``| u / GCM(u) − u0 / GCM(u0) |`` per channel. It ignores any per-pixel multiplicative
change of brightness (``u = c(x) u0`` gives zero error) and measures changes of colour and structure only.

Generative fusion metrics (FusionVAE paper, §5.5): the negative log-likelihood ``−log p(y | x)`` of a conditional
latent-variable model estimated by importance sampling with the approximate posterior as proposal (Burda et al.'s
bound, which tightens as the number of samples grows), reported in bits per dimension, and ``MSE_min``, the
smallest mean squared error among several samples of the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch

from fusion.ops.checks import check_image, check_same_size


def geometric_chromaticity(z: torch.Tensor, *, eps: float = 1e-3) -> torch.Tensor:
    """``z / GCM(z)`` per pixel, with ``GCM`` the geometric mean over channels; values below ``eps`` clamp to it.

    Args:
        z: ``(B, C, H, W)`` non-negative image.
        eps: floor that keeps the logarithms finite on black pixels.

    Returns:
        ``(B, C, H, W)``; the product over channels is 1 at every pixel.

    Example:
        >>> geometric_chromaticity(torch.tensor([[[[1.0]], [[2.0]], [[4.0]]]]))[0, :, 0, 0]
        tensor([0.5000, 1.0000, 2.0000])
    """
    logz = torch.log(z.clamp_min(eps))
    return torch.exp(logz - logz.mean(1, keepdim=True))


def chromaticity_error(
    u: torch.Tensor,
    u0: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    eps: float = 1e-3,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chromaticity error of eq. (21) between a result ``u`` and a reference ``u0``.

    Args:
        u: ``(B, C, H, W)`` result, values in [0, 1] (or any non-negative scale).
        u0: ``(B, C, H, W)`` reference (the paper compares the fused image with the foreground ``f``).
        mask: optional ``(B, 1, H, W)`` weights for the mean (e.g. the region where ``f`` should be kept).
        eps: floor applied to the images before the geometric mean.

    Returns:
        ``(mean, error_map)``: the ``(B,)`` (weighted) mean of the map over pixels and channels, and the
        ``(B, C, H, W)`` per-pixel, per-channel map ``|u/GCM(u) − u0/GCM(u0)|``.

    Example:
        >>> u0 = torch.rand(1, 3, 8, 8) + 0.1
        >>> mean, _ = chromaticity_error(2.5 * u0, u0)
        >>> bool(mean < 1e-5)
        True
    """
    check_image(u, "u")
    check_image(u0, "u0", channels=u.shape[1])
    check_same_size(u=u, u0=u0)
    if eps <= 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    if bool((u < 0).any()) or bool((u0 < 0).any()):
        raise ValueError("chromaticity_error needs non-negative images (u and u0)")
    err = (geometric_chromaticity(u, eps=eps) - geometric_chromaticity(u0, eps=eps)).abs()
    if mask is None:
        return err.flatten(1).mean(1), err
    check_image(mask, "mask", channels=1)
    check_same_size(u=u, mask=mask)
    w = mask.expand_as(err)
    return (w * err).flatten(1).sum(1) / w.flatten(1).sum(1).clamp_min(torch.finfo(err.dtype).tiny), err


def bits_per_dim(nll: torch.Tensor, dims: int) -> torch.Tensor:
    """Negative log-likelihood in nats over ``dims`` dimensions, expressed in bits per dimension: ``nll / (dims ln 2)``.

    Example:
        >>> bits_per_dim(torch.tensor([1024 * math.log(2.0)]), 1024)
        tensor([1.])
    """
    if dims < 1:
        raise ValueError(f"dims must be a positive number of dimensions, got {dims}")
    return nll / (dims * math.log(2.0))


def importance_sampled_nll(
    model: Callable[[torch.Tensor, torch.Tensor], Any],
    inputs: torch.Tensor,
    target: torch.Tensor,
    *,
    num_samples: int = 100,
    chunk: int = 100,
) -> torch.Tensor:
    """``−log p(y | x)`` in nats per sample, by importance sampling with the model's approximate posterior.

    With ``z_s ~ q(z | y)``, ``s = 1..S``: ``log p(y | x) ≈ logsumexp_s [log p(y | x, z_s) + log p(z_s | x) −
    log q(z_s | y)] − log S`` (FusionVAE paper §5.5, the importance-weighted estimate of Burda et al. 2016). It is a
    stochastic upper bound on the true NLL whose expectation decreases to it as ``S`` grows.

    Args:
        model: called as ``model(inputs, target)``; returns an object with ``likelihood.log_prob(target) -> (B,)``,
            ``log_p`` and ``log_q`` ``(B,)`` for one draw of ``z`` from ``q`` (the interface of
            :mod:`fusion.nn.fusionvae`). Put it in eval mode first.
        inputs: ``(B, K, C, H, W)`` context images (``K`` may be 0).
        target: ``(B, C, H, W)`` target images.
        num_samples: ``S``.
        chunk: samples drawn per forward pass (the batch is repeated ``chunk`` times).

    Returns:
        ``(B,)`` estimated NLL in nats (float64 accumulation of the weights).

    Raises:
        ValueError: bad sizes, or a model without ``log_p``/``log_q`` (e.g. a deterministic FCN).
    """
    if num_samples < 1 or chunk < 1:
        raise ValueError(f"num_samples and chunk must be >= 1, got {num_samples} and {chunk}")
    if inputs.dim() != 5 or target.dim() != 4 or inputs.shape[0] != target.shape[0]:
        raise ValueError(
            "expected inputs (B, K, C, H, W) and target (B, C, H, W), "
            f"got {tuple(inputs.shape)} and {tuple(target.shape)}"
        )
    batch = target.shape[0]
    weights = []
    with torch.no_grad():
        done = 0
        while done < num_samples:
            n = min(chunk, num_samples - done)
            out = model(inputs.repeat(n, 1, 1, 1, 1), target.repeat(n, 1, 1, 1))
            if getattr(out, "log_p", None) is None or getattr(out, "log_q", None) is None:
                raise ValueError(
                    "the model has no latent variables (log_p/log_q are None); its NLL cannot be estimated"
                )
            log_w = (
                out.likelihood.log_prob(target.repeat(n, 1, 1, 1)).double() + out.log_p.double() - out.log_q.double()
            )
            weights.append(log_w.view(n, batch))
            done += n
    log_w = torch.cat(weights)
    return -(torch.logsumexp(log_w, dim=0) - math.log(num_samples))


def mse_min(samples: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Smallest mean squared error between ``target`` and any of ``S`` samples (FusionVAE paper §5.5).

    Args:
        samples: ``(S, B, C, H, W)`` model outputs.
        target: ``(B, C, H, W)``.

    Returns:
        ``(B,)``: ``min_s mean_{c,h,w} (samples[s] − target)²``.

    Example:
        >>> y = torch.zeros(1, 1, 2, 2)
        >>> mse_min(torch.stack([y + 0.5, y + 0.1]), y)
        tensor([0.0100])
    """
    if samples.dim() != 5 or samples.shape[1:] != target.shape:
        raise ValueError(
            f"expected samples (S, *target.shape), got {tuple(samples.shape)} for target {tuple(target.shape)}"
        )
    return (samples.float() - target.float()).pow(2).flatten(2).mean(2).amin(0)


# ----------------------------------------------------------------------------------------------------
# Blending quality (``python -m fusion.compare``)
# ----------------------------------------------------------------------------------------------------
def _region_inputs(x: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None, names: tuple[str, str]) -> None:
    check_image(x, names[0])
    check_image(ref, names[1], channels=x.shape[1])
    check_same_size(**{names[0]: x, names[1]: ref})
    if x.shape[0] != ref.shape[0]:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same batch size, got {x.shape[0]} and {ref.shape[0]}"
        )
    if mask is not None:
        check_image(mask, "mask", channels=1)
        check_same_size(**{names[0]: x, "mask": mask})
        if mask.shape[0] not in (1, x.shape[0]):
            raise ValueError(f"mask has batch size {mask.shape[0]}, expected 1 or {x.shape[0]}")


def _pair_masks(inside: torch.Tensor) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """For the vertical and horizontal neighbour pairs ``(p, p + e)`` of a ``(B, 1, H, W)`` boolean region: which
    pairs have both pixels inside, and which have exactly one inside (the pairs crossing the region's boundary)."""
    pairs = []
    for a, b in ((inside[..., :-1, :], inside[..., 1:, :]), (inside[..., :, :-1], inside[..., :, 1:])):
        pairs.append((a & b, a ^ b))
    return pairs[0], pairs[1]


def _forward_differences(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``x(p + e) − x(p)`` for the vertical (``(B, C, H − 1, W)``) and horizontal (``(B, C, H, W − 1)``) pairs."""
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def _pair_mean(values: tuple[torch.Tensor, torch.Tensor], weights: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """``(B,)`` mean of ``values`` over the selected pairs and every channel; NaN for a sample with no pair."""
    total = sum((v * w.expand_as(v)).flatten(1).sum(1) for v, w in zip(values, weights))
    count = sum(w.expand_as(v).flatten(1).sum(1) for v, w in zip(values, weights))
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def gradient_fidelity(result: torch.Tensor, fg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean distance of the result's gradients to the foreground's inside the mask (0: ``fg``'s gradients kept).

    With forward differences ``∂_e u(p) = u(p + e) − u(p)`` for ``e`` one pixel down or right, and ``P_in`` the
    pairs ``(p, p + e)`` with both pixels inside the mask (``mask > 0.5``)::

        G(u, f) = 1 / (C |P_in|) · Σ_{(p, p+e) ∈ P_in} Σ_c | ∂_e u_c(p) − ∂_e f_c(p) |

    It is what Poisson editing optimises (the guidance field of Pérez et al. is ``∇f``): it is 0 for
    ``u = f + constant``, and ``|1 − k| · mean |∂f|`` for ``u = k f``.

    Args:
        result: ``(B, C, H, W)`` blended image ``u``.
        fg: ``(B, C, H, W)`` foreground ``f``, on ``result``'s grid.
        mask: ``(B, 1, H, W)`` (or ``(1, 1, H, W)``) mask; pixels ``> 0.5`` are inside.

    Returns:
        ``(B,)``; NaN for a sample whose mask holds no pair of neighbouring pixels.

    Example:
        >>> f = torch.rand(1, 3, 8, 8)
        >>> m = torch.zeros(1, 1, 8, 8); m[..., 2:6, 2:6] = 1
        >>> float(gradient_fidelity(f + 0.25, f, m)) < 1e-6
        True
    """
    _region_inputs(result, fg, mask, ("result", "fg"))
    both, _ = zip(*_pair_masks(mask > 0.5))
    du, df = _forward_differences(result), _forward_differences(fg)
    return _pair_mean(tuple((a - b).abs() for a, b in zip(du, df)), both)


def seam_excess(result: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """How much larger the result's jumps across the mask boundary are than the background's own jumps there.

    With ``P_∂`` the neighbour pairs ``(p, p + e)`` with exactly one pixel inside the mask (``mask > 0.5``)::

        S(u, b) = 1 / (C |P_∂|) · Σ_{P_∂} Σ_c ( |∂_e u_c(p)| − |∂_e b_c(p)| )

    that is, the mean absolute step of ``u`` across the boundary minus that of ``b`` on the same pairs, in
    intensity units. It is 0 when the result crosses the boundary the way the background does (``u = b``), positive
    for a visible seam (a cut-and-paste of a brighter patch by ``δ`` over flat ``b`` gives ``δ``), and negative
    when the boundary is smoother than the background's texture.

    Args:
        result: ``(B, C, H, W)`` blended image ``u``.
        bg: ``(B, C, H, W)`` background ``b``.
        mask: ``(B, 1, H, W)`` (or ``(1, 1, H, W)``) mask.

    Returns:
        ``(B,)``; NaN for a sample whose mask has no boundary pair (empty or full).

    Example:
        >>> b = torch.zeros(1, 1, 6, 6)
        >>> m = torch.zeros(1, 1, 6, 6); m[..., 2:4, 2:4] = 1
        >>> seam_excess(b + 0.5 * m, b, m)
        tensor([0.5000])
    """
    _region_inputs(result, bg, mask, ("result", "bg"))
    _, cross = zip(*_pair_masks(mask > 0.5))
    du, db = _forward_differences(result), _forward_differences(bg)
    return _pair_mean(tuple(a.abs() - b.abs() for a, b in zip(du, db)), cross)


def region_mean(values: torch.Tensor, region: torch.Tensor) -> torch.Tensor:
    """``(B,)`` mean of ``(B, C, H, W)`` ``values`` over the pixels of a ``(B, 1, H, W)`` boolean ``region`` and every
    channel; NaN for a sample with an empty region.

    Example:
        >>> region_mean(torch.arange(4.0).view(1, 1, 2, 2), torch.tensor([[[[True, False], [False, True]]]]))
        tensor([1.5000])
    """
    w = region.to(values.dtype).expand_as(values)
    count = w.flatten(1).sum(1)
    total = (values * w).flatten(1).sum(1)
    return torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))


def change_outside(result: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean absolute change of the background outside the mask (0: the background is left untouched).

    With ``Ω_out`` the pixels where ``mask ≤ 0.5``::

        O(u, b) = 1 / (C |Ω_out|) · Σ_{p ∈ Ω_out} Σ_c | u_c(p) − b_c(p) |

    Poisson editing gives exactly 0; methods that diffuse across the whole image (osmosis) do not.

    Args:
        result: ``(B, C, H, W)``; bg: ``(B, C, H, W)``; mask: ``(B, 1, H, W)`` (or ``(1, 1, H, W)``).

    Returns:
        ``(B,)``; NaN for a sample whose mask covers every pixel.

    Example:
        >>> b = torch.zeros(1, 1, 4, 4); m = torch.zeros(1, 1, 4, 4); m[..., :2, :] = 1
        >>> change_outside(b + 0.2, b, m)
        tensor([0.2000])
    """
    _region_inputs(result, bg, mask, ("result", "bg"))
    return region_mean((result - bg).abs(), (mask <= 0.5).expand(result.shape[0], -1, -1, -1))


def region_psnr(
    x: torch.Tensor, ref: torch.Tensor, region: torch.Tensor | None = None, *, data_range: float = 1.0
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, over the whole image or over a region.

    ``PSNR = 10 log10(R² / MSE)`` with ``MSE`` the mean of ``(x − ref)²`` over the region's pixels and every channel
    and ``R = data_range``. Identical images give ``+inf``. Without ``region`` it is torchmetrics'
    ``peak_signal_noise_ratio`` per sample.

    Args:
        x, ref: ``(B, C, H, W)``.
        region: optional ``(B, 1, H, W)`` (or ``(1, 1, H, W)``) mask; pixels ``> 0.5`` count.
        data_range: ``R``, the value range of the images (1 for [0, 1]).

    Returns:
        ``(B,)`` in dB (``inf`` where the images agree on the region, NaN for an empty region).

    Example:
        >>> x = torch.zeros(1, 1, 4, 4)
        >>> round(float(region_psnr(x + 0.1, x)), 4)
        20.0
    """
    _region_inputs(x, ref, region, ("x", "ref"))
    if region is None:
        from torchmetrics.functional.image import peak_signal_noise_ratio

        return peak_signal_noise_ratio(x, ref, data_range=data_range, reduction="none", dim=(1, 2, 3))
    mse = region_mean((x - ref).pow(2), (region > 0.5).expand(x.shape[0], -1, -1, -1))
    return 10 * torch.log10(data_range**2 / mse)


def region_ssim(
    x: torch.Tensor, ref: torch.Tensor, region: torch.Tensor | None = None, *, data_range: float = 1.0
) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004), over the whole image or averaged over a region.

    The SSIM map is torchmetrics' ``structural_similarity_index_measure`` (11 × 11 Gaussian window, σ = 1.5,
    ``K1 = 0.01``, ``K2 = 0.03``): ``SSIM(p) = (2 μ_x μ_r + c1)(2 σ_xr + c2) / ((μ_x² + μ_r² + c1)(σ_x² + σ_r² + c2))``
    with ``c1 = (K1 R)²``, ``c2 = (K2 R)²``. Without ``region`` it is torchmetrics' value per sample; with one, the
    mean of the map over the region's pixels and every channel.

    Args:
        x, ref: ``(B, C, H, W)``.
        region: optional ``(B, 1, H, W)`` (or ``(1, 1, H, W)``) mask; pixels ``> 0.5`` count.
        data_range: ``R``.

    Returns:
        ``(B,)``, 1 for identical images.

    Example:
        >>> x = torch.rand(1, 1, 16, 16)
        >>> float(region_ssim(x, x))
        1.0
    """
    _region_inputs(x, ref, region, ("x", "ref"))
    from torchmetrics.functional.image import structural_similarity_index_measure

    value, full = structural_similarity_index_measure(
        x, ref, data_range=data_range, reduction="none", return_full_image=True
    )
    if region is None:
        return value
    return region_mean(full, (region > 0.5).expand(x.shape[0], -1, -1, -1))


def gain_matched_psnr(
    x: torch.Tensor, ref: torch.Tensor, region: torch.Tensor | None = None, *, data_range: float = 1.0
) -> torch.Tensor:
    """PSNR of ``s* x`` against ``ref`` on a region, after one global gain ``s*`` fitted on the whole image.

    ``s* = ⟨x, ref⟩ / ⟨x, x⟩`` over every pixel and channel (the least-squares gain), then
    ``region_psnr(s* x, ref, region)``. An osmosis result is defined up to such a constant (its steady states form
    a ray), so this says whether a method recovers the ground truth up to one brightness factor for the whole
    image; for Poisson-type results, which leave the background untouched, ``s* ≈ 1``.

    Returns:
        ``(B,)`` in dB.

    Example:
        >>> r = torch.rand(1, 3, 8, 8) + 0.1
        >>> bool(gain_matched_psnr(0.5 * r, r) > 100)
        True
    """
    _region_inputs(x, ref, region, ("x", "ref"))
    gain = (x * ref).flatten(1).sum(1) / (x * x).flatten(1).sum(1).clamp_min(torch.finfo(x.dtype).tiny)
    return region_psnr(gain.view(-1, 1, 1, 1) * x, ref, region, data_range=data_range)


__all__ = [
    "bits_per_dim",
    "change_outside",
    "chromaticity_error",
    "gain_matched_psnr",
    "geometric_chromaticity",
    "gradient_fidelity",
    "importance_sampled_nll",
    "mse_min",
    "region_mean",
    "region_psnr",
    "region_ssim",
    "seam_excess",
]
