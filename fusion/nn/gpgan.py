"""GP-GAN's Blending GAN (Wu et al. 2019, Section 3.3): the encoder–decoder generator and the WGAN critic.

Both networks take and return images in [0, 1] (the library's convention) and work on ``[-1, 1]`` inside, as
the paper's networks do (the generator ends in ``tanh``). The layer layout follows the paper's Figs. 3 and 4:

- :class:`BlendingGenerator`: a convolutional encoder (4×4 stride-2 convolutions, 64 → 128 → 256 → 512
  channels at 64×64 input), a 4×4 convolution without padding down to a ``bottleneck``-channel 1×1 code (4000
  in the paper: a fully connected layer over the whole image, which is what lets the network see global
  colour), then a mirror-image transposed-convolution decoder back to 3 channels and ``tanh``.
- :class:`BlendingCritic`: the same convolutional trunk with batch normalisation and leaky ReLU after every
  convolution except the first (leaky ReLU only) and the last (convolution only), ending in one score per
  image.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

__all__ = ["BlendingCritic", "BlendingGenerator", "dcgan_init_"]

#: Slope of the leaky ReLUs (the DCGAN/WGAN value).
LEAKY_SLOPE = 0.2


def _check_size(image_size: int) -> int:
    if not isinstance(image_size, int) or image_size < 8 or image_size & (image_size - 1):
        raise ValueError(f"image_size must be a power of two >= 8, got {image_size!r}")
    return image_size


def _check_positive_int(value: int, name: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def dcgan_init_(module: nn.Module) -> nn.Module:
    """DCGAN initialisation in place: convolution weights ~ N(0, 0.02), norm scales ~ N(1, 0.02), shifts 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


def _conv_trunk(
    in_channels: int, base_channels: int, image_size: int, out_channels: int, *, norm: bool
) -> tuple[nn.Sequential, int]:
    """4×4 stride-2 convolutions from ``image_size`` down to 4×4 (doubling channels), then a 4×4 valid convolution.

    Returns the layers and the channel count before the last convolution. With ``norm`` every convolution but
    the first and the last is followed by batch normalisation; all but the last by a leaky ReLU.
    """
    layers: list[nn.Module] = [
        nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1, bias=False),
        nn.LeakyReLU(LEAKY_SLOPE, inplace=True),
    ]
    size, channels = image_size // 2, base_channels
    while size > 4:
        layers.append(nn.Conv2d(channels, channels * 2, 4, stride=2, padding=1, bias=not norm))
        if norm:
            layers.append(nn.BatchNorm2d(channels * 2))
        layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
        channels, size = channels * 2, size // 2
    layers.append(nn.Conv2d(channels, out_channels, 4, stride=1, padding=0, bias=False))
    return nn.Sequential(*layers), channels


class BlendingGenerator(nn.Module):
    """Blending GAN generator ``G(x)`` (paper Fig. 3): encoder, fully connected bottleneck, decoder.

    Args:
        image_size: side of the square input and output (a power of two >= 8; the paper uses 64).
        in_channels: channels of the composite (3 for RGB).
        out_channels: channels of the output (3 for RGB).
        encoder_channels: channels of the first encoder convolution (64), doubled at each halving.
        decoder_channels: channels of the last decoder layer before the output (64), doubled towards the code.
        bottleneck: channels of the 1×1 code (4000 in the paper).

    Shapes:
        input ``(B, in_channels, image_size, image_size)`` in [0, 1]; output
        ``(B, out_channels, image_size, image_size)`` in [0, 1].

    Example:
        >>> g = BlendingGenerator(image_size=32, encoder_channels=8, decoder_channels=8, bottleneck=16)
        >>> g(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2, 3, 32, 32])
    """

    def __init__(
        self,
        image_size: int = 64,
        *,
        in_channels: int = 3,
        out_channels: int = 3,
        encoder_channels: int = 64,
        decoder_channels: int = 64,
        bottleneck: int = 4000,
    ) -> None:
        super().__init__()
        self.image_size = _check_size(image_size)
        for name, value in [
            ("in_channels", in_channels),
            ("out_channels", out_channels),
            ("encoder_channels", encoder_channels),
            ("decoder_channels", decoder_channels),
            ("bottleneck", bottleneck),
        ]:
            _check_positive_int(value, name)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.encoder, _ = _conv_trunk(in_channels, encoder_channels, image_size, bottleneck, norm=True)
        self.bottleneck_norm = nn.BatchNorm2d(bottleneck)
        self.bottleneck_act = nn.LeakyReLU(LEAKY_SLOPE, inplace=True)

        channels = decoder_channels * image_size // 8  # channels at 4×4
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(bottleneck, channels, 4, stride=1, padding=0, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
        size = 4
        while size < image_size // 2:
            layers += [
                nn.ConvTranspose2d(channels, channels // 2, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(inplace=True),
            ]
            channels, size = channels // 2, size * 2
        layers += [nn.ConvTranspose2d(channels, out_channels, 4, stride=2, padding=1, bias=False), nn.Tanh()]
        self.decoder = nn.Sequential(*layers)
        dcgan_init_(self)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, S, S)`` in [0, 1] → ``(B, bottleneck, 1, 1)`` code."""
        return self.bottleneck_act(self.bottleneck_norm(self.encoder(2 * x - 1)))

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        """``(B, bottleneck, 1, 1)`` code → ``(B, out_channels, S, S)`` image in [0, 1]."""
        return (self.decoder(code) + 1) / 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class BlendingCritic(nn.Module):
    """WGAN critic ``D(x)`` of the Blending GAN (paper Fig. 4): one unbounded score per image.

    Batch normalisation and leaky ReLU follow every convolution except the first (leaky ReLU only) and the last
    (convolution only). ``norm="none"`` drops the batch normalisation, as recommended with a gradient penalty
    (the penalty is per sample, which batch statistics would couple).

    Args:
        image_size: side of the square input (a power of two >= 8; the paper uses 64).
        in_channels: image channels.
        base_channels: channels of the first convolution (64), doubled at each halving.
        norm: ``"batch"`` (paper) or ``"none"``.

    Shapes:
        input ``(B, in_channels, image_size, image_size)`` in [0, 1]; output ``(B,)``.

    Example:
        >>> d = BlendingCritic(image_size=32, base_channels=8)
        >>> d(torch.rand(2, 3, 32, 32)).shape
        torch.Size([2])
    """

    def __init__(
        self,
        image_size: int = 64,
        *,
        in_channels: int = 3,
        base_channels: int = 64,
        norm: Literal["batch", "none"] = "batch",
    ) -> None:
        super().__init__()
        self.image_size = _check_size(image_size)
        _check_positive_int(in_channels, "in_channels")
        _check_positive_int(base_channels, "base_channels")
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        self.net, _ = _conv_trunk(in_channels, base_channels, image_size, 1, norm=norm == "batch")
        dcgan_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(2 * x - 1).flatten(1).squeeze(1)
