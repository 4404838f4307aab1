"""Distributions of FusionVAE and its baselines: latent Gaussians and the two decoder likelihoods.

- :class:`Normal`: the factorial Gaussians of the latent groups (prior ``p(z_l | x, z_<l)`` and approximate
  posterior ``q(z_l | y, z_<l)``, paper §3.3), with reparameterised sampling and the analytic KL of eq. (4).
- :class:`Bernoulli`: pixel-wise independent Bernoulli decoder (FusionMNIST and FusionT-LESS, supplement A).
- :class:`DiscretizedLogisticMixture`: the per-pixel mixture of discretised logistics of PixelCNN++ (Salimans et
  al. 2017) on 256 bins of [0, 1] with the linear coupling of the channel means (FusionCelebA, supplement A).

Every distribution evaluates in at least float32 (bfloat16/half parameters from autocast are promoted), so log
densities summed over thousands of pixels keep their precision; float64 parameters stay float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "Bernoulli",
    "DiscretizedLogisticMixture",
    "Normal",
    "likelihood",
    "likelihood_channels",
    "logistic_mixture_channels",
    "soft_clamp",
]

#: Bound of the soft clamp applied to the mean and the log standard deviation of :class:`Normal`.
NORMAL_CLAMP = 5.0
#: Lower bound of the logistic log-scales (PixelCNN++ uses the same value).
MIN_LOG_SCALE = -7.0
_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def _working_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for reduced-precision tensors, the tensor's own dtype for float32/float64."""
    return torch.promote_types(t.dtype, torch.float32)


def soft_clamp(x: torch.Tensor, bound: float = NORMAL_CLAMP) -> torch.Tensor:
    """Smooth clamp ``bound · tanh(x / bound)`` to ``(−bound, bound)``; near identity for ``|x| ≪ bound``.

    Example:
        >>> soft_clamp(torch.tensor([0.0, 1.0, 100.0])).round(decimals=3)
        tensor([0.0000, 0.9870, 5.0000])
    """
    return bound * torch.tanh(x / bound)


class Normal:
    """Diagonal Gaussian ``N(mu, sigma²)`` with ``sigma = exp(log_sigma)``.

    To keep deep hierarchies stable (as NVAE does), both ``mu`` and ``log_sigma`` pass through
    :func:`soft_clamp` with bound ``clamp`` (5 by default): ``|mu| < 5`` and ``sigma ∈ (e^-5, e^5)``. The stored
    attributes ``mu``, ``log_sigma`` and ``sigma`` are the clamped values, so every method is consistent with them.
    Pass ``clamp=None`` to use the parameters as they are.

    Args:
        mu: mean, any shape.
        log_sigma: log standard deviation, broadcastable to ``mu``.
        clamp: soft-clamp bound or ``None``.

    Example:
        >>> p = Normal(torch.zeros(3), torch.zeros(3))
        >>> Normal(torch.ones(3), torch.zeros(3), clamp=None).kl(p)
        tensor([0.5000, 0.5000, 0.5000])
        >>> Normal(torch.tensor([1.0, 100.0]), torch.zeros(2)).mu  # soft-clamped into (-5, 5)
        tensor([0.9869, 5.0000])
    """

    def __init__(self, mu: torch.Tensor, log_sigma: torch.Tensor, *, clamp: float | None = NORMAL_CLAMP) -> None:
        if not isinstance(mu, torch.Tensor) or not isinstance(log_sigma, torch.Tensor):
            raise TypeError(f"mu and log_sigma must be tensors, got {type(mu).__name__}, {type(log_sigma).__name__}")
        dtype = _working_dtype(mu)
        mu, log_sigma = mu.to(dtype), log_sigma.to(dtype)
        if clamp is not None:
            mu, log_sigma = soft_clamp(mu, clamp), soft_clamp(log_sigma, clamp)
        self.mu, self.log_sigma = torch.broadcast_tensors(mu, log_sigma)
        self.sigma = torch.exp(self.log_sigma)

    @classmethod
    def standard(cls, like: torch.Tensor) -> Normal:
        """The standard normal ``N(0, I)`` with the shape, device and (promoted) dtype of ``like``."""
        zeros = torch.zeros(like.shape, device=like.device, dtype=_working_dtype(like))
        return cls(zeros, zeros, clamp=None)

    @property
    def shape(self) -> torch.Size:
        return self.mu.shape

    def rsample(self, generator: torch.Generator | None = None, *, temperature: float = 1.0) -> torch.Tensor:
        """Reparameterised draw ``mu + temperature · sigma · eps`` with ``eps ~ N(0, I)`` from ``generator``
        (which must live on the parameters' device)."""
        eps = torch.randn(self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + (temperature * self.sigma) * eps

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """Elementwise ``log N(z; mu, sigma²)``, the shape of ``mu``."""
        u = (z.to(self.mu.dtype) - self.mu) / self.sigma
        return -0.5 * u * u - self.log_sigma - _HALF_LOG_2PI

    def kl(self, other: Normal) -> torch.Tensor:
        """Elementwise ``KL(self ‖ other) = log(σ₂/σ₁) + (σ₁² + (μ₁ − μ₂)²) / (2σ₂²) − 1/2`` (>= 0)."""
        if not isinstance(other, Normal):
            raise TypeError(f"other must be a Normal, got {type(other).__name__}")
        shift = (self.mu - other.mu) / other.sigma
        log_ratio = self.log_sigma - other.log_sigma
        return 0.5 * (shift * shift + torch.exp(2 * log_ratio)) - 0.5 - log_ratio


def _sum_per_item(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


class Bernoulli:
    """Pixel-wise independent Bernoulli decoder ``p(y | logits)``.

    ``log_prob`` is the negative binary cross-entropy, which is the Bernoulli log-mass for binary ``y`` and stays
    defined for grey values ``y ∈ [0, 1]``.

    Args:
        logits: ``(B, C, H, W)``.

    Example:
        >>> Bernoulli(torch.zeros(2, 1, 2, 2)).log_prob(torch.ones(2, 1, 2, 2))
        tensor([-2.7726, -2.7726])
    """

    def __init__(self, logits: torch.Tensor) -> None:
        if not isinstance(logits, torch.Tensor) or logits.dim() != 4:
            raise ValueError(f"logits must be a (B, C, H, W) tensor, got {getattr(logits, 'shape', logits)!r}")
        self.logits = logits.to(_working_dtype(logits))

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """``(B,)``: ``Σ_{c,h,w} y log σ(l) + (1 − y) log σ(−l)`` in nats."""
        if y.shape != self.logits.shape:
            raise ValueError(f"y must have shape {tuple(self.logits.shape)}, got {tuple(y.shape)}")
        y = y.to(self.logits.dtype)
        return -_sum_per_item(F.binary_cross_entropy_with_logits(self.logits, y, reduction="none"))

    @property
    def mean(self) -> torch.Tensor:
        """``(B, C, H, W)`` success probabilities ``σ(logits)``."""
        return torch.sigmoid(self.logits)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` binary draw."""
        return torch.bernoulli(self.mean, generator=generator)


def logistic_mixture_channels(num_mix: int, channels: int) -> int:
    """Parameter channels of :class:`DiscretizedLogisticMixture`: ``M · (1 + 2C + C(C−1)/2)``.

    Per mixture component: one logit, ``C`` means, ``C`` log-scales and ``C(C−1)/2`` coupling coefficients (10 per
    component for RGB, as in PixelCNN++; 3 for grey images).

    Example:
        >>> logistic_mixture_channels(10, 3), logistic_mixture_channels(10, 1)
        (100, 30)
    """
    if not isinstance(num_mix, int) or isinstance(num_mix, bool) or num_mix < 1:
        raise ValueError(f"num_mix must be a positive integer, got {num_mix!r}")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    return num_mix * (1 + 2 * channels + channels * (channels - 1) // 2)


class DiscretizedLogisticMixture:
    """Per-pixel mixture of discretised logistics (PixelCNN++, Salimans et al. 2017) on 256 bins of [0, 1].

    Values are mapped to ``x = 2y − 1 ∈ [−1, 1]``; bin ``k`` is centred at ``x_k = 2k/255 − 1`` with half-width
    ``1/255``, and the two edge bins extend to ``±∞`` so the 256 bin masses sum to one. All channels of a pixel
    share the mixture component; within a component channel ``c`` has location
    ``μ_c + Σ_{j<c} a_{cj} x_j`` (the linear autoregressive coupling of PixelCNN++, ``a = tanh(·)``; for RGB the
    pairs are (G|R), (B|R), (B|G); a single channel has no coupling).

    The bin mass ``σ(b⁺) − σ(b⁻)`` (``b^± = (x − loc ± 1/255)/s``) is evaluated in log space as
    ``b⁺ + log(−expm1(b⁻ − b⁺)) − softplus(b⁺) − softplus(b⁻)``, which is exact and finite for every ``x``,
    location and scale; it replaces PixelCNN++'s fallback to the mid-bin density when the difference of CDFs
    underflows. Log-scales are clamped below at −7.

    Parameter layout along dim 1 of ``params`` ``(B, logistic_mixture_channels(M, C), H, W)``: ``M`` mixture logits,
    then ``M`` blocks of ``2C + C(C−1)/2`` channels (means, log-scales, raw coupling coefficients).

    Args:
        params: decoder output.
        num_mix: ``M``.
        channels: ``C``.

    Example:
        >>> d = DiscretizedLogisticMixture(torch.zeros(2, logistic_mixture_channels(3, 3), 4, 4), 3, 3)
        >>> d.log_prob(torch.rand(2, 3, 4, 4)).shape, d.mean.shape
        (torch.Size([2]), torch.Size([2, 3, 4, 4]))
    """

    def __init__(self, params: torch.Tensor, num_mix: int, channels: int) -> None:
        expected = logistic_mixture_channels(num_mix, channels)
        if not isinstance(params, torch.Tensor) or params.dim() != 4 or params.shape[1] != expected:
            raise ValueError(
                f"params must be (B, {expected}, H, W) for num_mix={num_mix}, channels={channels}, "
                f"got {tuple(getattr(params, 'shape', ()))}"
            )
        params = params.to(_working_dtype(params))
        b, _, h, w = params.shape
        self.num_mix, self.channels = num_mix, channels
        self.logits = params[:, :num_mix]  # (B, M, H, W)
        rest = params[:, num_mix:].reshape(b, num_mix, -1, h, w)  # (B, M, 2C + P, H, W)
        self.locs = rest[:, :, :channels]  # (B, M, C, H, W)
        self.log_scales = rest[:, :, channels : 2 * channels].clamp(min=MIN_LOG_SCALE)
        self.coeffs = torch.tanh(rest[:, :, 2 * channels :])  # (B, M, C(C-1)/2, H, W)
        # (coupled channel, source channel) in coefficient order; for RGB (1, 0), (2, 0), (2, 1) as in PixelCNN++
        self.pairs = [(c, j) for c in range(channels) for j in range(c)]

    def _coupled_locs(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, M, C, H, W)`` locations given the (preceding) channel values ``x`` ``(B, 1 or M, C, H, W)``."""
        if not self.pairs:
            return self.locs
        shift = [torch.zeros_like(self.locs[:, :, 0]) for _ in range(self.channels)]
        for k, (c, j) in enumerate(self.pairs):
            shift[c] = shift[c] + self.coeffs[:, :, k] * x[:, :, j]
        return self.locs + torch.stack(shift, dim=2)

    def log_prob_pixels(self, y: torch.Tensor) -> torch.Tensor:
        """``(B, H, W)`` log-mass of each pixel (all its channels jointly) after rounding ``y`` to the 256 bins."""
        if y.dim() != 4 or y.shape[1] != self.channels or y.shape[0] != self.logits.shape[0]:
            raise ValueError(f"y must be (B, {self.channels}, H, W) matching the parameters, got {tuple(y.shape)}")
        k = torch.round(y.to(self.locs.dtype).clamp(0, 1) * 255)
        x = (2 * k / 255 - 1).unsqueeze(1)  # (B, 1, C, H, W)
        inv_s = torch.exp(-self.log_scales)
        centred = x - self._coupled_locs(x)
        plus = inv_s * (centred + 1 / 255)
        minus = inv_s * (centred - 1 / 255)
        log_cdf_plus = -F.softplus(-plus)  # log σ(b⁺): the left edge bin
        log_sf_minus = -F.softplus(minus)  # log(1 − σ(b⁻)): the right edge bin
        width = (2 / 255) * inv_s  # b⁺ − b⁻, computed without cancellation
        log_mid = plus + torch.log(-torch.expm1(-width)) - F.softplus(plus) - F.softplus(minus)
        k = k.unsqueeze(1)
        log_bin = torch.where(k < 0.5, log_cdf_plus, torch.where(k > 254.5, log_sf_minus, log_mid))
        log_joint = log_bin.sum(2) + torch.log_softmax(self.logits, dim=1)  # (B, M, H, W)
        return torch.logsumexp(log_joint, dim=1)

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        """``(B,)`` log-mass of the image ``y ∈ [0, 1]`` (rounded to 256 levels) in nats."""
        return _sum_per_item(self.log_prob_pixels(y))

    @property
    def mean(self) -> torch.Tensor:
        """``(B, C, H, W)`` mean of the coupled mixture in [0, 1].

        Within a component the channel means follow the coupling recursively (``E[x_c] = μ_c + Σ_j a_cj E[x_j]``,
        the logistic being symmetric); the component means are weighted by the mixture probabilities and mapped to
        [0, 1] with clamping (the mean of the continuous mixture; the discretisation is not integrated).
        """
        means: list[torch.Tensor] = []
        for c in range(self.channels):
            m = self.locs[:, :, c]
            for k, (cc, j) in enumerate(self.pairs):
                if cc == c:
                    m = m + self.coeffs[:, :, k] * means[j]
            means.append(m)
        comp = torch.stack(means, dim=2)  # (B, M, C, H, W)
        weights = torch.softmax(self.logits, dim=1).unsqueeze(2)
        x = (weights * comp).sum(1)
        return ((x.clamp(-1, 1) + 1) / 2).clamp(0, 1)

    def sample(self, generator: torch.Generator | None = None) -> torch.Tensor:
        """``(B, C, H, W)`` draw in [0, 1] on the 256-level grid (component, then channels in coupling order)."""
        b, m, h, w = self.logits.shape
        u = torch.rand((b, m, h, w), generator=generator, device=self.logits.device, dtype=self.logits.dtype)
        gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-10)))
        index = (self.logits + gumbel).argmax(1, keepdim=True)  # (B, 1, H, W)
        one_hot = torch.zeros_like(self.logits).scatter_(1, index, 1.0).unsqueeze(2)  # (B, M, 1, H, W)
        locs = (self.locs * one_hot).sum(1)  # (B, C, H, W)
        scales = torch.exp((self.log_scales * one_hot).sum(1))
        coeffs = (self.coeffs * one_hot).sum(1)
        v = torch.rand(locs.shape, generator=generator, device=locs.device, dtype=locs.dtype).clamp(1e-5, 1 - 1e-5)
        noise = scales * (torch.log(v) - torch.log1p(-v))
        xs: list[torch.Tensor] = []
        for c in range(self.channels):
            x = locs[:, c] + noise[:, c]
            for k, (cc, j) in enumerate(self.pairs):
                if cc == c:
                    x = x + coeffs[:, k] * xs[j]
            xs.append(x.clamp(-1, 1))
        y = (torch.stack(xs, dim=1) + 1) / 2
        return torch.round(y * 255) / 255


_LIKELIHOODS = ("bernoulli", "logistic_mixture")


def likelihood_channels(name: str, channels: int, num_mix: int = 10) -> int:
    """Channels of the decoder output that parameterise likelihood ``name`` for ``channels`` image channels.

    Example:
        >>> likelihood_channels("bernoulli", 1), likelihood_channels("logistic_mixture", 3, num_mix=10)
        (1, 100)
    """
    if name == "bernoulli":
        if not isinstance(channels, int) or channels < 1:
            raise ValueError(f"channels must be a positive integer, got {channels!r}")
        return channels
    if name == "logistic_mixture":
        return logistic_mixture_channels(num_mix, channels)
    raise ValueError(f"likelihood must be one of {_LIKELIHOODS}, got {name!r}")


def likelihood(
    name: str, params: torch.Tensor, channels: int, num_mix: int = 10
) -> Bernoulli | DiscretizedLogisticMixture:
    """Build the decoder distribution ``name`` ∈ {"bernoulli", "logistic_mixture"} from its parameters.

    Example:
        >>> likelihood("bernoulli", torch.zeros(1, 1, 2, 2), 1).mean
        tensor([[[[0.5000, 0.5000],
                  [0.5000, 0.5000]]]])
    """
    if name == "bernoulli":
        if params.dim() != 4 or params.shape[1] != channels:
            raise ValueError(f"bernoulli params must be (B, {channels}, H, W), got {tuple(params.shape)}")
        return Bernoulli(params)
    if name == "logistic_mixture":
        return DiscretizedLogisticMixture(params, num_mix, channels)
    raise ValueError(f"likelihood must be one of {_LIKELIHOODS}, got {name!r}")
