"""Baselines of the FusionVAE paper (§5.3): a conditional VAE (CVAE, CVAE+S) and a fully convolutional network
(FCN, FCN+S), each with one encoder shared by the K inputs and max aggregation, and the FusionVAE interface.

Both use a pyramid encoder of NVAE encoder cells (``num_downsamples`` halvings, width × ``channel_multiplier`` at
each) and a decoder of NVAE decoder cells with nearest-neighbour upsampling. With skip connections (``+S``) the
decoder feature at every resolution is max-aggregated with the context encoder's features of that resolution,
``d ← max(d, f_1, ..., f_K)`` (the paper's "max aggregation at each shortcut"); with ``K = 0`` it is left as is.

- :class:`CVAE` (Sohn et al. 2015): one latent group at the bottleneck, prior ``p(z | x) = conv(agg f_x)``
  (``N(0, I)`` when ``K = 0``), posterior ``q(z | x, y) = conv([agg f_x, f_y])``; the decoder starts from
  ``conv1×1([z, agg f_x])``.
- :class:`FCN`: deterministic; the decoder starts from the aggregated bottleneck and outputs the likelihood
  parameters directly.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from fusion.nn.cells import DecoderResidualCell, EncoderResidualCell, check_fusion_inputs, check_positive_int
from fusion.nn.distributions import Normal, likelihood, likelihood_channels
from fusion.nn.fusionvae import FusionOutput, aggregate

__all__ = ["CVAE", "FCN", "PyramidEncoder"]

Likelihood = Literal["bernoulli", "logistic_mixture"]


class PyramidEncoder(nn.Module):
    """Stem 3×3 convolution on ``2x − 1``, then per level ``cells_per_level`` cells and a downsampling cell.

    Returns the features before every halving (finest first) followed by the bottleneck feature (after
    ``cells_per_level`` more cells): ``num_downsamples + 1`` maps.

    Example:
        >>> enc = PyramidEncoder(1, 4, num_downsamples=2)
        >>> [tuple(f.shape) for f in enc(torch.rand(2, 1, 16, 16))]
        [(2, 4, 16, 16), (2, 8, 8, 8), (2, 16, 4, 4)]
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        *,
        num_downsamples: int,
        cells_per_level: int = 1,
        channel_multiplier: int = 2,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        self.levels = nn.ModuleList()
        self.downs = nn.ModuleList()
        c = channels
        for _ in range(num_downsamples):
            self.levels.append(nn.Sequential(*[EncoderResidualCell(c) for _ in range(cells_per_level)]))
            self.downs.append(EncoderResidualCell(c, c * channel_multiplier, downsample=True))
            c *= channel_multiplier
        self.levels.append(nn.Sequential(*[EncoderResidualCell(c) for _ in range(cells_per_level)]))
        self.widths = [channels * channel_multiplier**i for i in range(num_downsamples + 1)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.stem(2 * x - 1)
        features = []
        for i, level in enumerate(self.levels):
            f = level(f)
            features.append(f)
            if i < len(self.downs):
                f = self.downs[i](f)
        return features


class _EncoderDecoder(nn.Module):
    """Shared parts of the baselines: argument checks, the context encoder with max aggregation, the decoder."""

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        *,
        channels: int,
        num_downsamples: int,
        cells_per_level: int,
        channel_multiplier: int,
        expansion: int,
        skip: bool,
        likelihood: Likelihood,
        num_mix: int,
        latent_channels: int = 0,
    ) -> None:
        super().__init__()
        for name, value in [
            ("in_channels", in_channels),
            ("image_size", image_size),
            ("channels", channels),
            ("num_downsamples", num_downsamples),
            ("cells_per_level", cells_per_level),
            ("channel_multiplier", channel_multiplier),
            ("expansion", expansion),
            ("num_mix", num_mix),
        ]:
            check_positive_int(value, name)
        if image_size % (2**num_downsamples):
            raise ValueError(f"image_size={image_size} must be divisible by 2**num_downsamples={2**num_downsamples}")
        if not isinstance(skip, bool):
            raise TypeError(f"skip must be a bool, got {type(skip).__name__}")
        self.in_channels, self.image_size, self.skip = in_channels, image_size, skip
        self.likelihood_name, self.num_mix = likelihood, num_mix
        self.out_channels = likelihood_channels(likelihood, in_channels, num_mix)
        self.bottleneck_size = image_size // 2**num_downsamples
        enc_args = dict(
            num_downsamples=num_downsamples, cells_per_level=cells_per_level, channel_multiplier=channel_multiplier
        )
        self.context_encoder = PyramidEncoder(in_channels, channels, **enc_args)
        widths = self.context_encoder.widths
        self.bottleneck_width = widths[-1]
        # the decoder starts from [z, agg f_x] (CVAE) or agg f_x alone (FCN, latent_channels = 0)
        self.decoder_input = nn.Conv2d(latent_channels + widths[-1], widths[-1], 1)
        self.bottleneck = nn.Sequential(
            *[DecoderResidualCell(widths[-1], expansion=expansion) for _ in range(cells_per_level)]
        )
        self.up = nn.ModuleList()
        for i in reversed(range(num_downsamples)):
            cells = [DecoderResidualCell(widths[i + 1], widths[i], expansion=expansion, upsample=True)]
            cells += [DecoderResidualCell(widths[i], expansion=expansion) for _ in range(cells_per_level - 1)]
            self.up.append(nn.Sequential(*cells))
        self.output = nn.Sequential(nn.ELU(), nn.Conv2d(widths[0], self.out_channels, 3, padding=1))

    def _check_inputs(self, inputs: torch.Tensor, target: torch.Tensor | None = None) -> None:
        check_fusion_inputs(inputs, target, self.in_channels, self.image_size)

    def _context(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Max-aggregated bottleneck ``(B, C, s, s)`` (zeros for ``K = 0``) and the per-input skip features
        ``(B, K, C_i, H_i, W_i)`` per level (``None`` for ``K = 0``)."""
        b, k = inputs.shape[:2]
        if k == 0:
            s = self.bottleneck_size
            zeros = torch.zeros(
                b,
                self.bottleneck_width,
                s,
                s,
                device=self.decoder_input.weight.device,
                dtype=self.decoder_input.weight.dtype,
            )
            return zeros, None
        features = self.context_encoder(inputs.reshape(b * k, *inputs.shape[2:]))
        features = [f.reshape(b, k, *f.shape[1:]) for f in features]
        return aggregate(features[-1], "max"), features

    def _decode(self, start: torch.Tensor, skips: list[torch.Tensor] | None):
        d = self.bottleneck(self.decoder_input(start))
        n = len(self.up)
        for j, block in enumerate(self.up):
            d = block(d)
            if self.skip and skips is not None:
                f = skips[n - 1 - j]  # (B', K, C, H, W) at d's resolution
                d = aggregate(torch.cat([f, d.unsqueeze(1).to(f.dtype)], dim=1), "max")
        return likelihood(self.likelihood_name, self.output(d), self.in_channels, self.num_mix)


class CVAE(_EncoderDecoder):
    """Conditional VAE baseline with a shared, max-aggregated context encoder (paper §5.3; Sohn et al. 2015).

    Args:
        in_channels: image channels.
        image_size: side of the square images.
        channels: width after the stem, × ``channel_multiplier`` per halving.
        latent_channels: channels of ``z``.
        num_downsamples: halvings down to the bottleneck (``z`` is ``image_size / 2^n`` wide).
        cells_per_level: residual cells per resolution (encoders and decoder).
        channel_multiplier: width factor per halving.
        expansion: inverted-bottleneck factor of the decoder cells.
        skip: CVAE+S: max-aggregate the context features into the decoder at every resolution.
        likelihood: ``"bernoulli"`` or ``"logistic_mixture"``.
        num_mix: logistic mixture components.

    Example:
        >>> net = CVAE(1, 16, channels=4, latent_channels=2, num_downsamples=2, skip=True)
        >>> out = net(torch.rand(2, 3, 1, 16, 16), torch.rand(2, 1, 16, 16))
        >>> len(out.kl), out.kl[0].shape, net.sample(torch.rand(2, 0, 1, 16, 16), num_samples=4).shape
        (1, torch.Size([2]), torch.Size([4, 2, 1, 16, 16]))
    """

    is_generative = True

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 32,
        *,
        channels: int = 32,
        latent_channels: int = 10,
        num_downsamples: int = 3,
        cells_per_level: int = 2,
        channel_multiplier: int = 2,
        expansion: int = 6,
        skip: bool = False,
        likelihood: Likelihood = "bernoulli",
        num_mix: int = 10,
    ) -> None:
        check_positive_int(latent_channels, "latent_channels")
        super().__init__(
            in_channels,
            image_size,
            channels=channels,
            num_downsamples=num_downsamples,
            cells_per_level=cells_per_level,
            channel_multiplier=channel_multiplier,
            expansion=expansion,
            skip=skip,
            likelihood=likelihood,
            num_mix=num_mix,
            latent_channels=latent_channels,
        )
        self.latent_channels = latent_channels
        self.num_groups = 1
        self.target_encoder = PyramidEncoder(
            in_channels,
            channels,
            num_downsamples=num_downsamples,
            cells_per_level=cells_per_level,
            channel_multiplier=channel_multiplier,
        )
        c = self.bottleneck_width
        self.prior_head = nn.Sequential(nn.ELU(), nn.Conv2d(c, 2 * latent_channels, 3, padding=1))
        self.posterior_head = nn.Sequential(nn.ELU(), nn.Conv2d(2 * c, 2 * latent_channels, 3, padding=1))

    def _prior(self, agg: torch.Tensor, k: int) -> Normal:
        if k == 0:
            shape = (agg.shape[0], self.latent_channels, *agg.shape[2:])
            return Normal.standard(torch.empty(shape, device=agg.device, dtype=agg.dtype))
        mu, log_sigma = self.prior_head(agg).chunk(2, dim=1)
        return Normal(mu, log_sigma)

    def forward(
        self, inputs: torch.Tensor, target: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> FusionOutput:
        """Training pass with ``z ~ q(z | x, y)``; see :class:`~fusion.nn.fusionvae.FusionOutput`."""
        self._check_inputs(inputs, target)
        agg, skips = self._context(inputs)
        prior = self._prior(agg, inputs.shape[1])
        fy = self.target_encoder(target)[-1]
        mu, log_sigma = self.posterior_head(torch.cat([agg.to(fy.dtype), fy], dim=1)).chunk(2, dim=1)
        posterior = Normal(mu, log_sigma)
        z = posterior.rsample(generator)
        kl = posterior.kl(prior).flatten(1).sum(1)
        log_q = posterior.log_prob(z).flatten(1).sum(1)
        log_p = prior.log_prob(z).flatten(1).sum(1)
        dist = self._decode(torch.cat([z.to(agg.dtype), agg], dim=1), skips)
        return FusionOutput(dist, [kl], log_q, log_p, [prior], [posterior], [z])

    def sample(
        self,
        inputs: torch.Tensor,
        num_samples: int = 1,
        temperature: float = 1.0,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """``(N, B, C, S, S)`` decoder means with ``z ~ p(z | x)`` (standard deviation × ``temperature``)."""
        self._check_inputs(inputs)
        check_positive_int(num_samples, "num_samples")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        agg, skips = self._context(inputs)
        b = inputs.shape[0]
        if num_samples > 1:
            agg = agg.repeat(num_samples, 1, 1, 1)
            if skips is not None:
                skips = [f.repeat(num_samples, 1, 1, 1, 1) for f in skips]
        z = self._prior(agg, inputs.shape[1]).rsample(generator, temperature=temperature)
        mean = self._decode(torch.cat([z.to(agg.dtype), agg], dim=1), skips).mean
        return mean.reshape(num_samples, b, *mean.shape[1:])


class FCN(_EncoderDecoder):
    """Deterministic fully convolutional baseline with a shared, max-aggregated encoder (paper §5.3).

    Its output parameterises the same likelihood as the generative models (trained by ``−log p(y | x)``);
    ``kl = []`` and ``log_q = log_p = None``. Arguments as in :class:`CVAE` (no latent variables).

    Example:
        >>> net = FCN(1, 16, channels=4, num_downsamples=2, skip=True)
        >>> out = net(torch.rand(2, 1, 1, 16, 16), torch.rand(2, 1, 16, 16))
        >>> out.kl, out.log_q, out.likelihood.mean.shape
        ([], None, torch.Size([2, 1, 16, 16]))
    """

    is_generative = False

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 32,
        *,
        channels: int = 32,
        num_downsamples: int = 3,
        cells_per_level: int = 2,
        channel_multiplier: int = 2,
        expansion: int = 6,
        skip: bool = False,
        likelihood: Likelihood = "bernoulli",
        num_mix: int = 10,
    ) -> None:
        super().__init__(
            in_channels,
            image_size,
            channels=channels,
            num_downsamples=num_downsamples,
            cells_per_level=cells_per_level,
            channel_multiplier=channel_multiplier,
            expansion=expansion,
            skip=skip,
            likelihood=likelihood,
            num_mix=num_mix,
        )
        self.num_groups = 0

    def forward(
        self, inputs: torch.Tensor, target: torch.Tensor | None = None, *, generator: torch.Generator | None = None
    ) -> FusionOutput:
        """Prediction as a likelihood; ``target`` is only checked (the FCN does not encode it)."""
        self._check_inputs(inputs, target)
        agg, skips = self._context(inputs)
        return FusionOutput(self._decode(agg, skips))

    def sample(
        self,
        inputs: torch.Tensor,
        num_samples: int = 1,
        temperature: float = 1.0,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The single prediction (likelihood mean) repeated: ``(N, B, C, S, S)``."""
        self._check_inputs(inputs)
        check_positive_int(num_samples, "num_samples")
        mean = self.forward(inputs).likelihood.mean
        return mean.unsqueeze(0).expand(num_samples, *mean.shape).clone()
