"""GP-GAN high-resolution blending (Wu et al. 2019, Algorithm 1) with a trained Blending GAN."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fusion.methods.contract import MethodResult
from fusion.methods.gaussian_poisson import check_levels, default_levels, gaussian_poisson_solve
from fusion.methods.registry import MethodOutput, register
from fusion.ops.checks import check_blend_inputs
from fusion.ops.filters import gaussian_pyramid, resize

__all__ = ["GPGANBlend", "GPGANResult", "blending_gan_color", "gpgan_blend", "gpgan_cli", "gpgan_solve"]


@dataclass
class GPGANResult(MethodResult):
    """What :func:`gpgan_solve` returns: ``image`` the blend, ``color`` the Blending GAN's ``(B, C, S, S)``
    low-resolution blend it was built on, ``levels`` the Gaussian–Poisson solution at every pyramid level
    (coarsest first). ``solver`` is ``None``: nothing is iterative."""

    color: torch.Tensor | None = None
    levels: list[torch.Tensor] | None = None


def _generator_size(generator: nn.Module, size: int | None) -> int:
    if size is None:
        size = getattr(generator, "image_size", None)
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        raise ValueError(f"size must be a positive integer (the generator's input side), got {size!r}")
    return size


def blending_gan_color(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    generator: nn.Module,
    size: int | None = None,
    levels: int | None = None,
) -> torch.Tensor:
    """The Blending GAN's low-resolution blend ``x̃_l = G(x)`` of the copy-and-paste composite (Algorithm 1, line 2).

    The composite ``x = mask·fg + (1 − mask)·bg`` is taken down its Gaussian pyramid to the coarsest level (the
    same ``levels`` as the blend, so the full-resolution image is never filtered with a wide kernel) and
    resampled to the generator's square input, whatever the aspect ratio; the generator runs in its own dtype
    and device, and the ``(B, C, size, size)`` result comes back in the inputs' dtype and device. Inputs are not
    validated here.
    """
    size = _generator_size(generator, size)
    h, w = fg.shape[-2:]
    sizes = check_levels(h, w, default_levels(h, w) if levels is None else levels)
    composite = gaussian_pyramid(mask * fg + (1 - mask) * bg, sizes)[-1]
    param = next(generator.parameters(), None)
    g_dtype = param.dtype if param is not None else composite.dtype
    g_device = param.device if param is not None else composite.device
    small = resize(composite, (size, size)).to(device=g_device, dtype=g_dtype)
    out = generator(small)
    if not isinstance(out, torch.Tensor) or out.shape != small.shape:
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"generator returned {got}, expected {tuple(small.shape)} (same shape as its input)")
    return out.to(device=fg.device, dtype=fg.dtype)


def gpgan_solve(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    generator: nn.Module,
    beta: float = 1.0,
    sigma: float = 0.5,
    levels: int | None = None,
    size: int | None = None,
) -> GPGANResult:
    """GP-GAN: the Blending GAN's colour at the coarsest level, carried up a pyramid by the Gaussian–Poisson equation.

    Algorithm 1: ``x̃_l = G(x)`` on the composite's coarsest pyramid level resampled to the generator's input
    size; then eq. (9) is solved in closed form from the coarsest pyramid level (``x̃_l`` resampled to that
    level's aspect ratio) up to full resolution
    (:func:`~fusion.methods.gaussian_poisson.gaussian_poisson_blend`). Works for any ``H×W``; the generator is
    used as given (call ``generator.eval()`` first for inference: in eval mode each sample's result depends on
    that sample only, while batch normalisation in training mode mixes the samples of a batch).

    Nothing is iterative (one generator pass, then a closed-form solve per level). Differentiable with respect
    to ``fg``, ``bg`` and the soft ``mask`` — through the composite the generator sees and through the pyramid —
    and to the generator's parameters.

    Args:
        fg, bg: ``(B, C, H, W)`` source (already placed on the canvas) and destination, in [0, 1].
        mask: ``(B, 1, H, W)`` in [0, 1].
        generator: a module mapping ``(B, C, S, S)`` images in [0, 1] to the same shape, e.g.
            :class:`fusion.nn.gpgan.BlendingGenerator`.
        beta: colour-preserving weight ``β`` of eq. (9) (paper: 1).
        sigma: width of the Gaussian filter ``G`` in eq. (9).
        levels: pyramid levels; ``None`` makes the coarsest level at most 64 pixels on its longer side.
        size: the generator's input side; ``None`` reads ``generator.image_size``.

    Returns:
        :class:`GPGANResult`: ``image`` the ``(B, C, H, W)`` blend (not clipped), in the inputs' dtype and
        device; ``color`` the generator's low-resolution blend; ``levels`` the solution at each pyramid level.

    Example:
        >>> from fusion.nn.gpgan import BlendingGenerator
        >>> g = BlendingGenerator(image_size=32, encoder_channels=8, decoder_channels=8, bottleneck=16).eval()
        >>> fg, bg = torch.rand(1, 3, 48, 80), torch.rand(1, 3, 48, 80)
        >>> mask = torch.zeros(1, 1, 48, 80); mask[..., 12:36, 20:60] = 1
        >>> r = gpgan_solve(fg, bg, mask, generator=g)
        >>> r.image.shape, r.color.shape
        (torch.Size([1, 3, 48, 80]), torch.Size([1, 3, 32, 32]))
    """
    if not isinstance(generator, nn.Module):
        raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}")
    fg, bg, mask = check_blend_inputs(fg, bg, mask)
    if fg.shape[1] != getattr(generator, "in_channels", fg.shape[1]):
        raise ValueError(f"fg has {fg.shape[1]} channels but the generator expects {generator.in_channels}")
    color = blending_gan_color(fg, bg, mask, generator=generator, size=size, levels=levels)
    pyramid = gaussian_poisson_solve(fg, bg, mask, color=color, beta=beta, sigma=sigma, levels=levels)
    return GPGANResult(pyramid.image, None, color, pyramid.levels)


def gpgan_blend(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    generator: nn.Module,
    beta: float = 1.0,
    sigma: float = 0.5,
    levels: int | None = None,
    size: int | None = None,
) -> torch.Tensor:
    """GP-GAN's blend: the image of :func:`gpgan_solve` (same arguments).

    Returns:
        ``(B, C, H, W)`` blended image (not clipped), in the inputs' dtype and device.

    Example:
        >>> from fusion.nn.gpgan import BlendingGenerator
        >>> g = BlendingGenerator(image_size=32, encoder_channels=8, decoder_channels=8, bottleneck=16).eval()
        >>> fg, bg = torch.rand(1, 3, 48, 80), torch.rand(1, 3, 48, 80)
        >>> mask = torch.zeros(1, 1, 48, 80); mask[..., 12:36, 20:60] = 1
        >>> gpgan_blend(fg, bg, mask, generator=g).shape
        torch.Size([1, 3, 48, 80])
    """
    return gpgan_solve(fg, bg, mask, generator=generator, beta=beta, sigma=sigma, levels=levels, size=size).image


class GPGANBlend(nn.Module):
    """:func:`gpgan_blend` as a layer. The generator is a submodule (its parameters are this module's, so a
    training graph can fine-tune it through the blend); ``forward(fg, bg, mask)``.

    Example:
        >>> from fusion.nn.gpgan import BlendingGenerator
        >>> g = BlendingGenerator(image_size=32, encoder_channels=8, decoder_channels=8, bottleneck=16)
        >>> layer = GPGANBlend(g, levels=2).eval()
        >>> fg, bg = torch.rand(1, 3, 48, 80), torch.rand(1, 3, 48, 80)
        >>> mask = torch.zeros(1, 1, 48, 80); mask[..., 12:36, 20:60] = 1
        >>> layer(fg, bg, mask).shape
        torch.Size([1, 3, 48, 80])
    """

    def __init__(
        self,
        generator: nn.Module,
        *,
        beta: float = 1.0,
        sigma: float = 0.5,
        levels: int | None = None,
        size: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(generator, nn.Module):
            raise TypeError(f"generator must be a torch.nn.Module, got {type(generator).__name__}")
        self.generator = generator
        self.options = dict(beta=beta, sigma=sigma, levels=levels, size=size)

    def forward(self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return gpgan_blend(fg, bg, mask, generator=self.generator, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


@register("gpgan", loads={"ckpt": "generator"})
def gpgan_cli(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    generator: nn.Module,
    beta: float = 1.0,
    sigma: float = 0.5,
    levels: int | None = None,
) -> MethodOutput:
    """Command-line adapter (``infer.py method=gpgan method.ckpt=PATH``): :func:`gpgan_blend` with the generator
    the command line rebuilt from the checkpoint's run (its registry entry declares ``ckpt`` → ``generator``).

    Extras: the Blending GAN's own low-resolution blend, ``blending_gan``.
    """
    r = gpgan_solve(fg, bg, mask, generator=generator, beta=beta, sigma=sigma, levels=levels)
    return MethodOutput(result=r.image, images={"blending_gan": r.color.clamp(0, 1)})
