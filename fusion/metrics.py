"""Image-quality metrics shared by the methods and benchmarks.

Chromaticity error (variational osmosis paper, eq. 21): with the geometric chromaticity mean
``GCM(z) = (z_R · z_G · z_B)^{1/3}`` (Finlayson et al.), the pixelwise error between a result ``u`` and a
reference ``u0`` is ``| u / GCM(u) − u0 / GCM(u0) |`` per channel. It ignores any per-pixel multiplicative
change of brightness (``u = c(x) u0`` gives zero error) and measures changes of colour and structure only.
"""

from __future__ import annotations

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


__all__ = ["chromaticity_error", "geometric_chromaticity"]
