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


__all__ = [
    "bits_per_dim",
    "chromaticity_error",
    "geometric_chromaticity",
    "importance_sampled_nll",
    "mse_min",
]
