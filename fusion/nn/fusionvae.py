"""FusionVAE (Duffhauss et al., §4 and Fig. 2): a hierarchical conditional VAE that fuses K partial views.

Three towers share the NVAE cell design (:mod:`fusion.nn.cells`):

- the *context encoder* runs on every input ``x_i`` with shared weights (the K views are folded into the batch)
  and yields one feature map ``f_lx`` per latent group ``l``;
- the *target encoder* (same architecture, own weights) yields ``f_ly`` from the target ``y``; with
  ``share_encoder=True`` it is the context encoder itself (a reading of the paper's shared φ in ``p_φ`` and ``q_φ``
  and of "the same residual cells" in §4.3);
- the *generator* starts from a trainable tensor ``h`` and, for the groups ``l = 1..L`` from coarse to fine,
  computes the conditional prior ``p_l`` and the approximate posterior ``q_l``, draws ``z_l`` and merges it into
  its features, then decodes the image-likelihood parameters.

For group ``l`` with generator feature ``d_l`` (paper §4.3, "MaxAggAdd"):

- prior ``p(z_l | x, z_<l)``: ``conv(agg_i f_1x,i)`` for ``l = 1`` (``N(0, I)`` when ``K = 0``) and
  ``conv(agg_i f_lx,i + d_l)`` for ``l > 1`` (the aggregate of an empty set is zero);
- posterior ``q(z_l | y, z_<l)``: ``conv(f_1y)`` and ``conv(f_ly + d_l)``; it depends on the target only (the
  paper's choice). The ablation ``posterior="joint"`` (Table 4, ``q(x, y)``) adds the aggregated context features,
  ``conv(f_ly + agg_i f_lx,i + d_l)``; ``posterior="residual"`` is that joint posterior parametrised relative to the
  prior as in NVAE, ``q_l = N(mu_p + Δmu, sigma_p · exp(Δlog sigma))`` with ``(Δmu, Δlog sigma)`` from the same
  features.

``agg`` is the pixel-wise max (paper), the mean, or Bayesian aggregation (eqs. (6)–(7)); the ablation target "all"
aggregates the decoder feature together with the context features instead of adding it (§6.3, Table 5).
The training objective is the conditional ELBO of eq. (8); the model returns its parts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn

from fusion.nn.cells import DecoderResidualCell, EncoderResidualCell, check_fusion_inputs, check_positive_int
from fusion.nn.distributions import Bernoulli, DiscretizedLogisticMixture, Normal, likelihood, likelihood_channels

__all__ = ["FusionOutput", "FusionVAE", "HierarchicalEncoder", "aggregate", "bayesian_aggregate"]

Aggregation = Literal["max", "mean", "bayes"]
AggregationTarget = Literal["add", "all"]
PosteriorKind = Literal["target", "joint", "residual"]
Likelihood = Literal["bernoulli", "logistic_mixture"]

#: Soft bound of the predicted log-variances in Bayesian aggregation (variances in ``(e^-10, e^10)``).
LOG_VAR_BOUND = 10.0


@dataclass
class FusionOutput:
    """What every fusion network returns from ``forward(inputs, target)``.

    Attributes:
        likelihood: decoder distribution ``p(y | x, z)``; ``log_prob(y) -> (B,)``, ``mean -> (B, C, H, W)``.
        kl: one ``(B,)`` tensor per latent group: ``KL(q_l ‖ p_l)`` summed over the group's elements ([] for FCN).
        log_q: ``(B,)`` ``log q(z | y)`` of the drawn ``z`` (all groups and elements), ``None`` without latents.
        log_p: ``(B,)`` ``log p(z | x)`` of the drawn ``z``, ``None`` without latents.
        priors: the prior distribution of each group (for inspection and tests).
        posteriors: the approximate posterior of each group.
        latents: the drawn ``z_l``.
    """

    likelihood: Bernoulli | DiscretizedLogisticMixture
    kl: list[torch.Tensor] = field(default_factory=list)
    log_q: torch.Tensor | None = None
    log_p: torch.Tensor | None = None
    priors: list[Normal] = field(default_factory=list)
    posteriors: list[Normal] = field(default_factory=list)
    latents: list[torch.Tensor] = field(default_factory=list)


def _check_features(features: torch.Tensor, name: str = "features") -> None:
    if not isinstance(features, torch.Tensor) or features.dim() != 5:
        raise ValueError(f"{name} must be a (B, K, C, H, W) tensor, got {tuple(getattr(features, 'shape', ()))}")


def aggregate(features: torch.Tensor, mode: Literal["max", "mean"] = "max") -> torch.Tensor:
    """Permutation-invariant fusion of K feature maps (paper §3.4): pixel-wise max or mean over K.

    Args:
        features: ``(B, K, C, H, W)``; ``K = 0`` is allowed.
        mode: ``"max"`` or ``"mean"``.

    Returns:
        ``(B, C, H, W)``; zeros when ``K = 0``.

    Example:
        >>> f = torch.tensor([1.0, 3.0, 2.0]).view(1, 3, 1, 1, 1)
        >>> aggregate(f, "max").flatten().tolist(), aggregate(f, "mean").flatten().tolist()
        ([3.0], [2.0])
    """
    _check_features(features)
    if mode not in ("max", "mean"):
        raise ValueError(f"mode must be 'max' or 'mean', got {mode!r}")
    if features.shape[1] == 0:
        return features.new_zeros(features.shape[:1] + features.shape[2:])
    return features.amax(dim=1) if mode == "max" else features.mean(dim=1)


def bayesian_aggregate(
    mu: torch.Tensor, var: torch.Tensor, prior_mu: torch.Tensor, prior_var: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bayesian aggregation (Volpp et al. 2020; paper eqs. (6)–(7), supplement eqs. (9)–(10)).

    Fusing the Gaussian estimates ``N(mu_i, var_i)``, ``i = 1..K``, one after the other into the prior
    ``N(mu_0, var_0)`` by Bayes' rule, ``q_i = var_{i−1} / (var_{i−1} + var_i)``,
    ``mu ← mu + q_i (mu_i − mu)``, ``var ← var (1 − q_i)``, ends in the precision-weighted closed form
    ``1/var = 1/var_0 + Σ_i 1/var_i`` and ``mu = var (mu_0/var_0 + Σ_i mu_i/var_i)``, which is what is computed
    (one vectorised step, symmetric in the K estimates).

    Args:
        mu, var: ``(B, K, C, H, W)`` means and (positive) variances; ``K = 0`` returns the prior.
        prior_mu, prior_var: broadcastable to ``(B, C, H, W)``.

    Returns:
        ``(mu, var)`` of the posterior, each ``(B, C, H, W)``.

    Example:
        >>> obs = torch.ones(1, 2, 1, 1, 1)  # two estimates N(1, 1), prior N(0, 1)
        >>> m, v = bayesian_aggregate(obs, obs, torch.zeros(1), torch.ones(1))
        >>> round(m.item(), 4), round(v.item(), 4)
        (0.6667, 0.3333)
    """
    _check_features(mu, "mu")
    if var.shape != mu.shape:
        raise ValueError(f"var must have the shape of mu {tuple(mu.shape)}, got {tuple(var.shape)}")
    shape = mu.shape[:1] + mu.shape[2:]
    prior_precision = torch.broadcast_to(1 / prior_var, shape)
    precision = prior_precision + (1 / var).sum(1)
    post_var = 1 / precision
    post_mu = post_var * (prior_mu * prior_precision + (mu / var).sum(1))
    return post_mu, post_var


class HierarchicalEncoder(nn.Module):
    """Bottom-up residual tower of FusionVAE: one feature map per latent group, returned coarse to fine.

    Stem 3×3 convolution on ``2x − 1``; ``num_preprocess`` preprocessing blocks of ``preprocess_cells`` encoder
    cells, the last of each halving the resolution and multiplying the width by ``channel_multiplier``; then, from
    the finest latent scale to the coarsest, ``groups_per_scale[s]`` groups of ``cells_per_group`` cells (one feature
    per group, taken after its cells) with a downsampling cell between scales. The features are reversed, so
    ``features[0]`` is the deepest (coarsest) one, paired with latent group 1 as in NVAE.

    Args:
        in_channels: image channels.
        channels: width after the stem.
        groups_per_scale: groups per latent scale, coarsest first.
        num_preprocess: halvings before the finest latent scale.
        cells_per_group, preprocess_cells: cells per group and per preprocessing block.
        channel_multiplier: width factor per halving.

    Example:
        >>> enc = HierarchicalEncoder(1, 4, [2, 1], num_preprocess=1)
        >>> [tuple(f.shape) for f in enc(torch.rand(2, 1, 16, 16))]
        [(2, 16, 4, 4), (2, 16, 4, 4), (2, 8, 8, 8)]
    """

    def __init__(
        self,
        in_channels: int,
        channels: int,
        groups_per_scale: Sequence[int],
        *,
        num_preprocess: int = 1,
        cells_per_group: int = 1,
        preprocess_cells: int = 1,
        channel_multiplier: int = 2,
    ) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1)
        pre: list[nn.Module] = []
        c = channels
        for _ in range(num_preprocess):
            pre += [EncoderResidualCell(c) for _ in range(preprocess_cells - 1)]
            pre.append(EncoderResidualCell(c, c * channel_multiplier, downsample=True))
            c *= channel_multiplier
        self.preprocess = nn.Sequential(*pre)
        self.groups = nn.ModuleList()
        self.downsample = nn.ModuleDict()
        num_scales = len(groups_per_scale)
        for s in reversed(range(num_scales)):  # finest first
            for _ in range(groups_per_scale[s]):
                self.groups.append(nn.Sequential(*[EncoderResidualCell(c) for _ in range(cells_per_group)]))
            if s > 0:
                self.downsample[str(len(self.groups) - 1)] = EncoderResidualCell(
                    c, c * channel_multiplier, downsample=True
                )
                c *= channel_multiplier

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        f = self.preprocess(self.stem(2 * x - 1))
        features = []
        for i, group in enumerate(self.groups):
            f = group(f)
            features.append(f)
            if str(i) in self.downsample:
                f = self.downsample[str(i)](f)
        return features[::-1]


def _promoted(t: torch.Tensor) -> torch.Tensor:
    """``t`` in float32 when it is in a reduced precision (autocast), else unchanged (float32 or float64)."""
    return t.to(torch.promote_types(t.dtype, torch.float32))


def _head(channels: int, out_channels: int) -> nn.Sequential:
    """ELU then a 3×3 convolution (NVAE's samplers), used for the distribution parameters."""
    return nn.Sequential(nn.ELU(), nn.Conv2d(channels, out_channels, 3, padding=1))


class FusionVAE(nn.Module):
    """FusionVAE network (paper Fig. 2, §4.3; supplement A and Table 6).

    Args:
        in_channels: image channels ``C`` (1 for MNIST, 3 for CelebA/T-LESS).
        image_size: side ``S`` of the square images.
        channels: width after the stem; multiplied by ``channel_multiplier`` at each halving.
        latent_channels: channels of each ``z_l`` (Table 6: 10 for MNIST, 20 for CelebA/T-LESS).
        groups_per_scale: latent groups per scale, coarsest first (Table 6: ``[5, 2]``; ``[10, 5, 2]``).
        latent_sizes: spatial side of ``z_l`` per scale, coarsest first, each double the previous, the last
            ``S / 2^p`` for some ``p >= 0`` preprocessing halvings (Table 6: ``[4, 8]`` at ``S = 32``;
            ``[8, 16, 32]`` at ``S = 64``). Default: finest ``S / 2``.
        cells_per_group: residual cells per group in the encoders and the generator.
        preprocess_cells: cells per pre-/post-processing block (one block per halving before the latent scales).
        channel_multiplier: width factor per halving (2 as in NVAE, 1 keeps the width).
        expansion: inverted-bottleneck factor of the generator cells (NVAE: 6).
        aggregation: ``"max"`` (paper), ``"mean"`` or ``"bayes"``.
        aggregation_target: ``"add"`` (aggregate the context features, then add the generator feature; paper's
            MaxAggAdd) or ``"all"`` (aggregate the context features together with the generator feature).
        share_encoder: encode the target with the context encoder itself instead of an encoder of the same
            architecture with its own weights (default).
        posterior: ``"target"`` (``q(z_l | y, z_<l)``, paper), ``"joint"`` (``q(z_l | x, y, z_<l)``: the
            aggregated context features are added to the target features; the ablation of Table 4) or
            ``"residual"`` (the joint posterior as a residual of the prior, NVAE's parametrisation).
        likelihood: ``"bernoulli"`` (MNIST, T-LESS) or ``"logistic_mixture"`` (CelebA).
        num_mix: mixture components of the logistic mixture.

    With ``aggregation="bayes"`` a 3×3 convolution of each ``f_lx,i`` predicts a Gaussian ``N(mu_i, var_i)`` over
    ``z_l`` and :func:`bayesian_aggregate` fuses them into ``p_l`` directly (§6.3: the convolutions move before the
    aggregation). The prior belief is ``N(0, I)`` for ``l = 1`` and ``conv(d_l)`` for ``l > 1`` (target "add"), or a
    learned per-group Gaussian (initialised to ``N(0, I)``) with ``conv(d_l)`` as one more estimate (target "all").
    In every mode ``p_1 = N(0, I)`` when ``K = 0``.

    Shapes:
        ``forward(inputs (B, K, C, S, S), target (B, C, S, S)) -> FusionOutput``;
        ``sample(inputs, num_samples=N) -> (N, B, C, S, S)``.

    Example:
        >>> net = FusionVAE(1, 16, channels=4, latent_channels=2, groups_per_scale=[1, 1], latent_sizes=[4, 8])
        >>> out = net(torch.rand(2, 3, 1, 16, 16), torch.rand(2, 1, 16, 16).round())
        >>> out.likelihood.log_prob(torch.zeros(2, 1, 16, 16)).shape, len(out.kl), out.log_q.shape
        (torch.Size([2]), 2, torch.Size([2]))
        >>> net.sample(torch.rand(2, 0, 1, 16, 16), num_samples=3).shape
        torch.Size([3, 2, 1, 16, 16])
    """

    is_generative = True

    def __init__(
        self,
        in_channels: int = 1,
        image_size: int = 32,
        *,
        channels: int = 32,
        latent_channels: int = 10,
        groups_per_scale: Sequence[int] = (5, 2),
        latent_sizes: Sequence[int] | None = None,
        cells_per_group: int = 1,
        preprocess_cells: int = 2,
        channel_multiplier: int = 2,
        expansion: int = 6,
        aggregation: Aggregation = "max",
        aggregation_target: AggregationTarget = "add",
        share_encoder: bool = False,
        posterior: PosteriorKind = "target",
        likelihood: Likelihood = "bernoulli",
        num_mix: int = 10,
    ) -> None:
        super().__init__()
        for name, value in [
            ("in_channels", in_channels),
            ("image_size", image_size),
            ("channels", channels),
            ("latent_channels", latent_channels),
            ("cells_per_group", cells_per_group),
            ("preprocess_cells", preprocess_cells),
            ("channel_multiplier", channel_multiplier),
            ("expansion", expansion),
            ("num_mix", num_mix),
        ]:
            check_positive_int(value, name)
        groups = [int(g) for g in groups_per_scale] if isinstance(groups_per_scale, Sequence) else []
        if not groups or any(g < 1 for g in groups) or any(g != v for g, v in zip(groups, groups_per_scale)):
            raise ValueError(f"groups_per_scale must be a non-empty list of positive ints, got {groups_per_scale!r}")
        num_scales = len(groups)
        if latent_sizes is None:
            finest = image_size // 2
            latent_sizes = [finest >> (num_scales - 1 - s) for s in range(num_scales)]
        sizes = list(latent_sizes)
        if (
            len(sizes) != num_scales
            or any(not isinstance(s, int) or s < 1 for s in sizes)
            or any(b != 2 * a for a, b in zip(sizes, sizes[1:]))
            or image_size % sizes[-1]
            or (image_size // sizes[-1]) & (image_size // sizes[-1] - 1)
        ):
            raise ValueError(
                f"latent_sizes must give one size per scale ({num_scales}), coarsest first, doubling from scale to "
                f"scale, the finest being image_size={image_size} / 2^p; got {latent_sizes!r}"
            )
        if aggregation not in ("max", "mean", "bayes"):
            raise ValueError(f"aggregation must be 'max', 'mean' or 'bayes', got {aggregation!r}")
        if aggregation_target not in ("add", "all"):
            raise ValueError(f"aggregation_target must be 'add' or 'all', got {aggregation_target!r}")
        if not isinstance(share_encoder, bool):
            raise TypeError(f"share_encoder must be a bool, got {share_encoder!r}")
        if posterior not in ("target", "joint", "residual"):
            raise ValueError(f"posterior must be 'target', 'joint' or 'residual', got {posterior!r}")
        self.out_channels = likelihood_channels(likelihood, in_channels, num_mix)

        self.in_channels, self.image_size = in_channels, image_size
        self.latent_channels, self.latent_sizes, self.groups_per_scale = latent_channels, sizes, groups
        self.aggregation, self.aggregation_target = aggregation, aggregation_target
        self.posterior = posterior
        self.likelihood_name, self.num_mix = likelihood, num_mix
        self.num_preprocess = int(round(math.log2(image_size // sizes[-1])))
        self.num_groups = sum(groups)

        encoder_args = dict(
            num_preprocess=self.num_preprocess,
            cells_per_group=cells_per_group,
            preprocess_cells=preprocess_cells,
            channel_multiplier=channel_multiplier,
        )
        self.context_encoder = HierarchicalEncoder(in_channels, channels, groups, **encoder_args)
        self.share_encoder = share_encoder
        self.target_encoder = (
            None if share_encoder else HierarchicalEncoder(in_channels, channels, groups, **encoder_args)
        )

        # per group (coarse to fine): scale index, width and latent side
        widths = [
            channels * channel_multiplier ** (self.num_preprocess + num_scales - 1 - s) for s in range(num_scales)
        ]
        self.group_scale = [s for s in range(num_scales) for _ in range(groups[s])]
        group_widths = [widths[s] for s in self.group_scale]
        self.group_sizes = [sizes[s] for s in self.group_scale]
        self.group_widths = group_widths

        two_z = 2 * latent_channels
        self.h = nn.Parameter(torch.randn(1, widths[0], sizes[0], sizes[0]))
        self.decoder_blocks = nn.ModuleList()
        self.prior_heads = nn.ModuleList()
        self.posterior_heads = nn.ModuleList()
        self.combiners = nn.ModuleList()
        self.belief_heads = nn.ModuleList()  # Bayesian aggregation: Gaussian from the generator feature
        for g, (s, c) in enumerate(zip(self.group_scale, group_widths)):
            block: list[nn.Module] = []
            if g > 0:
                if self.group_scale[g - 1] != s:
                    block.append(DecoderResidualCell(group_widths[g - 1], c, expansion=expansion, upsample=True))
                block += [DecoderResidualCell(c, expansion=expansion) for _ in range(cells_per_group)]
            self.decoder_blocks.append(nn.Sequential(*block))
            self.prior_heads.append(_head(c, two_z))
            self.posterior_heads.append(_head(c, two_z))
            self.combiners.append(nn.Conv2d(c + latent_channels, c, 1))
            self.belief_heads.append(_head(c, two_z) if aggregation == "bayes" and g > 0 else nn.Identity())
        if aggregation == "bayes" and aggregation_target == "all":
            self.bayes_prior = nn.ParameterList(
                [nn.Parameter(torch.zeros(two_z, z, z)) for z in self.group_sizes]  # (mu, log var) = N(0, I)
            )
        post: list[nn.Module] = []
        c = widths[-1]
        for _ in range(self.num_preprocess):
            post.append(DecoderResidualCell(c, c // channel_multiplier, expansion=expansion, upsample=True))
            c //= channel_multiplier
            post += [DecoderResidualCell(c, expansion=expansion) for _ in range(preprocess_cells - 1)]
        self.postprocess = nn.Sequential(*post)
        self.output = _head(c, self.out_channels)

    # ------------------------------------------------------------------------------------------------------------
    def _check_inputs(self, inputs: torch.Tensor, target: torch.Tensor | None = None) -> None:
        check_fusion_inputs(inputs, target, self.in_channels, self.image_size)

    def _context(self, inputs: torch.Tensor) -> list[torch.Tensor] | None:
        """Per group: the aggregated context ``(B, C_l, s_l, s_l)`` (max/mean with target "add") or the
        per-input features ``(B, K, C_l, s_l, s_l)`` (otherwise); ``None`` when ``K = 0``."""
        b, k = inputs.shape[:2]
        if k == 0:
            return None
        features = self.context_encoder(inputs.reshape(b * k, *inputs.shape[2:]))
        features = [f.reshape(b, k, *f.shape[1:]) for f in features]
        if self.aggregation != "bayes" and self.aggregation_target == "add":
            return [aggregate(f, self.aggregation) for f in features]
        return features

    def _bayes_prior(self, g: int, ctx: torch.Tensor | None, d: torch.Tensor | None, batch: int) -> Normal:
        estimates_mu, estimates_var = [], []
        if ctx is not None:
            b, k = ctx.shape[:2]
            mu, log_var = _promoted(self.prior_heads[g](ctx.reshape(b * k, *ctx.shape[2:]))).chunk(2, dim=1)
            estimates_mu.append(mu.reshape(b, k, *mu.shape[1:]))
            estimates_var.append(log_var.reshape(b, k, *log_var.shape[1:]))
        if self.aggregation_target == "all":
            prior_mu, prior_log_var = _promoted(self.bayes_prior[g]).chunk(2, dim=0)
            if d is not None:
                mu, log_var = _promoted(self.belief_heads[g](d)).chunk(2, dim=1)
                estimates_mu.append(mu.unsqueeze(1))
                estimates_var.append(log_var.unsqueeze(1))
        elif d is not None:
            prior_mu, prior_log_var = _promoted(self.belief_heads[g](d)).chunk(2, dim=1)
        else:
            z = self.group_sizes[g]
            dtype = torch.promote_types(self.h.dtype, torch.float32)
            prior_mu = torch.zeros(self.latent_channels, z, z, device=self.h.device, dtype=dtype)
            prior_log_var = torch.zeros_like(prior_mu)
        shape = (batch, self.latent_channels, self.group_sizes[g], self.group_sizes[g])
        if not estimates_mu:
            mu = torch.broadcast_to(prior_mu, shape)
            return Normal(mu, torch.broadcast_to(0.5 * prior_log_var, shape))
        bound = LOG_VAR_BOUND
        var = torch.exp(bound * torch.tanh(torch.cat(estimates_var, 1) / bound))
        prior_var = torch.exp(bound * torch.tanh(prior_log_var / bound))
        mu, var = bayesian_aggregate(torch.cat(estimates_mu, 1), var, prior_mu, prior_var)
        return Normal(mu, 0.5 * torch.log(var))

    def _prior(self, g: int, ctx: list[torch.Tensor] | None, d: torch.Tensor | None, batch: int) -> Normal:
        """``p(z_l | x, z_<l)``; ``d`` is the generator feature (``None`` for the first group)."""
        if ctx is None and g == 0:
            shape = (batch, self.latent_channels, self.group_sizes[0], self.group_sizes[0])
            return Normal.standard(torch.empty(shape, device=self.h.device, dtype=self.h.dtype))
        c = None if ctx is None else ctx[g]
        if self.aggregation == "bayes":
            return self._bayes_prior(g, c, d, batch)
        if self.aggregation_target == "add":
            feature = c if d is None else (d if c is None else c + d)
        else:
            items = [t for t in (c, None if d is None else d.unsqueeze(1)) if t is not None]
            feature = aggregate(torch.cat(items, 1) if len(items) > 1 else items[0], self.aggregation)
        mu, log_sigma = self.prior_heads[g](feature).chunk(2, dim=1)
        return Normal(mu, log_sigma)

    def _posterior_context(self, ctx: torch.Tensor) -> torch.Tensor:
        """The context term of the joint posterior: the aggregate of the K context features of one group (max
        for Bayesian aggregation, whose features are per input)."""
        if ctx.dim() == 4:  # already aggregated (max / mean with target "add")
            return ctx
        return aggregate(ctx, "mean" if self.aggregation == "mean" else "max")

    def _decode(
        self,
        ctx: list[torch.Tensor] | None,
        batch: int,
        target_features: list[torch.Tensor] | None,
        generator: torch.Generator | None,
        temperature: float = 1.0,
    ) -> FusionOutput:
        """Top-down pass; draws ``z_l`` from ``q_l`` when ``target_features`` is given, else from ``p_l``."""
        d = self.h.expand(batch, -1, -1, -1)
        kl, priors, posteriors, latents = [], [], [], []
        log_q = log_p = 0.0
        for g in range(self.num_groups):
            d_in = None
            if g > 0:
                d = self.decoder_blocks[g](d)
                d_in = d
            prior = self._prior(g, ctx, d_in, batch)
            if target_features is not None:
                f = target_features[g] if g == 0 else target_features[g] + d
                if self.posterior != "target" and ctx is not None:
                    f = f + self._posterior_context(ctx[g])
                mu, log_sigma = self.posterior_heads[g](f).chunk(2, dim=1)
                if self.posterior == "residual":
                    mu, log_sigma = prior.mu + mu, prior.log_sigma + log_sigma
                posterior = Normal(mu, log_sigma)
                z = posterior.rsample(generator)
                kl.append(posterior.kl(prior).flatten(1).sum(1))
                log_q = log_q + posterior.log_prob(z).flatten(1).sum(1)
                log_p = log_p + prior.log_prob(z).flatten(1).sum(1)
                posteriors.append(posterior)
            else:
                z = prior.rsample(generator, temperature=temperature)
            priors.append(prior)
            latents.append(z)
            d = self.combiners[g](torch.cat([d, z.to(d.dtype)], dim=1))
        params = self.output(self.postprocess(d))
        dist = likelihood(self.likelihood_name, params, self.in_channels, self.num_mix)
        if target_features is None:
            return FusionOutput(dist, priors=priors, latents=latents)
        return FusionOutput(dist, kl, log_q, log_p, priors, posteriors, latents)

    def forward(
        self, inputs: torch.Tensor, target: torch.Tensor, *, generator: torch.Generator | None = None
    ) -> FusionOutput:
        """Training pass: ``z_l ~ q(z_l | y, z_<l)``; returns the likelihood, per-group KL, ``log q`` and ``log p``.

        Args:
            inputs: ``(B, K, C, S, S)`` in [0, 1], ``K >= 0``.
            target: ``(B, C, S, S)`` in [0, 1].
            generator: source of the latent noise (on the model's device).
        """
        self._check_inputs(inputs, target)
        ctx = self._context(inputs)
        encoder = self.context_encoder if self.target_encoder is None else self.target_encoder
        return self._decode(ctx, inputs.shape[0], encoder(target), generator)

    def sample(
        self,
        inputs: torch.Tensor,
        num_samples: int = 1,
        temperature: float = 1.0,
        *,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Decoder means with ``z`` drawn from the conditional prior ``p(z | x)`` (``sigma`` scaled by
        ``temperature``).

        Args:
            inputs: ``(B, K, C, S, S)``; ``K = 0`` samples unconditionally.
            num_samples: ``N`` draws per item (folded into the batch).
            temperature: factor on the prior standard deviations.
            generator: source of the latent noise.

        Returns:
            ``(N, B, C, S, S)`` in [0, 1].
        """
        self._check_inputs(inputs)
        check_positive_int(num_samples, "num_samples")
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        ctx = self._context(inputs)
        if ctx is not None and num_samples > 1:
            ctx = [c.repeat(num_samples, *([1] * (c.dim() - 1))) for c in ctx]
        b = inputs.shape[0]
        out = self._decode(ctx, b * num_samples, None, generator, temperature)
        mean = out.likelihood.mean
        return mean.reshape(num_samples, b, *mean.shape[1:])
