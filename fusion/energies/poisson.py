"""Poisson-type energies (Pérez et al.; GP-GAN's Gaussian–Poisson cost)."""

from __future__ import annotations

from typing import Callable

import torch

from fusion.ops.diff import grad, laplacian


def region_edges(region: torch.Tensor) -> torch.Tensor:
    """``(B, 1, 2, H, W)`` weights of the forward-difference edges with at least one end in ``region``.

    Edge ``(p, p + e_k)`` is stored at ``p``; edges leaving the image have weight 0.
    """
    r = (region > 0.5).to(region.dtype)
    down = torch.zeros_like(r)
    right = torch.zeros_like(r)
    down[..., :-1, :] = torch.maximum(r[..., :-1, :], r[..., 1:, :])
    right[..., :, :-1] = torch.maximum(r[..., :, :-1], r[..., :, 1:])
    return torch.stack([down, right], dim=-3)


def poisson_energy(u: torch.Tensor, guidance: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """Discrete ``½ ∫_A |∇u − v|²``: ``½ Σ_{edges e} w_e (∇u − v)_e²`` per sample.

    With ``edges = region_edges(Ω)`` and ``u`` held at the background off Ω, the minimiser satisfies the discrete
    Poisson equations of Pérez et al. (their eq. 7 with guidance ``v``).

    Args:
        u: ``(B, C, H, W)`` image.
        guidance: ``(B, C, 2, H, W)`` guidance field ``v`` on the forward-difference edges.
        edges: ``(B or 1, 1, 2, H, W)`` edge weights.

    Returns:
        ``(B,)`` energies.
    """
    r = grad(u, bc="neumann") - guidance
    return 0.5 * (edges * r * r).flatten(1).sum(1)


def gaussian_poisson_energy(
    x: torch.Tensor,
    divergence: torch.Tensor,
    color: torch.Tensor,
    blur: Callable[[torch.Tensor], torch.Tensor],
    beta: float,
) -> torch.Tensor:
    """GP-GAN's discrete cost, eq. (9): ``‖u − L x‖² + β ‖G x − x̃_l‖²`` per sample.

    Args:
        x: ``(B, C, H, W)`` candidate ``x_h``.
        divergence: ``u = div v`` of the guidance field, ``(B, C, H, W)``.
        color: the low-frequency target ``x̃_l``, ``(B, C, H, W)``.
        blur: the Gaussian filter ``G``.
        beta: colour-preserving weight ``β``.

    Returns:
        ``(B,)`` energies.
    """
    p = divergence - laplacian(x, bc="neumann")
    c = blur(x) - color
    return (p * p).flatten(1).sum(1) + beta * (c * c).flatten(1).sum(1)


__all__ = ["gaussian_poisson_energy", "poisson_energy", "region_edges"]
