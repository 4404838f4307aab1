"""Latent Gaussians and decoder likelihoods: closed forms against torch.distributions and direct float64 sums."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributions as td

from fusion.nn.distributions import (
    Bernoulli,
    DiscretizedLogisticMixture,
    Normal,
    likelihood,
    likelihood_channels,
    logistic_mixture_channels,
    soft_clamp,
)


# ---------------------------------------------------------------------------------------------------- Normal
def test_normal_kl_and_log_prob_match_torch(gen: torch.Generator) -> None:
    mu1, mu2 = torch.randn(2, 3, 4, 4, generator=gen).double().unbind(0)
    ls1, ls2 = (0.5 * torch.randn(2, 3, 4, 4, generator=gen)).double().unbind(0)
    p, q = Normal(mu1, ls1, clamp=None), Normal(mu2, ls2, clamp=None)
    ref = td.kl_divergence(td.Normal(mu1, ls1.exp()), td.Normal(mu2, ls2.exp()))
    torch.testing.assert_close(p.kl(q), ref, rtol=1e-10, atol=1e-12)
    z = torch.randn(3, 4, 4, generator=gen).double()
    torch.testing.assert_close(p.log_prob(z), td.Normal(mu1, ls1.exp()).log_prob(z), rtol=1e-10, atol=1e-12)
    assert bool((p.kl(q) >= 0).all()) and float(p.kl(p).abs().max()) < 1e-12


def test_normal_soft_clamp_is_consistent(gen: torch.Generator) -> None:
    mu = 10 * torch.randn(50, generator=gen)
    log_sigma = 10 * torch.randn(50, generator=gen)
    n = Normal(mu, log_sigma)
    assert float(n.mu.abs().max()) < 5 and float(n.log_sigma.abs().max()) < 5
    torch.testing.assert_close(n.mu, soft_clamp(mu))
    torch.testing.assert_close(n.sigma, soft_clamp(log_sigma).exp())
    ref = td.Normal(n.mu, n.sigma)
    z = torch.randn(50, generator=gen)
    torch.testing.assert_close(n.log_prob(z), ref.log_prob(z))
    other = Normal(torch.zeros(50), torch.zeros(50))
    torch.testing.assert_close(n.kl(other), td.kl_divergence(ref, td.Normal(0.0, 1.0)), rtol=1e-5, atol=1e-5)


def test_normal_rsample_reparameterised_and_seeded() -> None:
    mu = torch.full((20000,), 2.0, requires_grad=True)
    log_sigma = torch.full((20000,), math.log(0.5), requires_grad=True)
    n = Normal(mu, log_sigma, clamp=None)
    a = n.rsample(torch.Generator().manual_seed(3))
    b = n.rsample(torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)
    a0 = a.detach()
    assert abs(float(a0.mean()) - 2.0) < 0.02 and abs(float(a0.std()) - 0.5) < 0.02
    a.sum().backward()
    assert torch.allclose(mu.grad, torch.ones_like(mu))  # d z / d mu = 1
    cold = n.rsample(torch.Generator().manual_seed(3), temperature=0.0)
    torch.testing.assert_close(cold, n.mu)


def test_normal_standard_and_reduced_precision() -> None:
    s = Normal.standard(torch.empty(2, 3, dtype=torch.bfloat16))
    assert s.mu.dtype == torch.float32 and bool((s.mu == 0).all()) and bool((s.sigma == 1).all())
    with pytest.raises(TypeError):
        Normal(torch.zeros(2), torch.zeros(2)).kl(td.Normal(0.0, 1.0))


# ---------------------------------------------------------------------------------------------------- Bernoulli
def test_bernoulli_log_prob_matches_torch(gen: torch.Generator) -> None:
    logits = 3 * torch.randn(4, 2, 5, 5, generator=gen)
    y = torch.bernoulli(torch.full_like(logits, 0.5), generator=gen)
    ref = td.Bernoulli(logits=logits).log_prob(y).flatten(1).sum(1)
    d = Bernoulli(logits)
    torch.testing.assert_close(d.log_prob(y), ref)
    torch.testing.assert_close(d.mean, torch.sigmoid(logits))
    grey = torch.rand(4, 2, 5, 5, generator=gen)
    p = torch.sigmoid(logits.double())
    direct = (grey * p.log() + (1 - grey) * (1 - p).log()).flatten(1).sum(1)
    torch.testing.assert_close(d.log_prob(grey).double(), direct, rtol=1e-5, atol=1e-4)
    sample = d.sample(torch.Generator().manual_seed(0))
    assert set(sample.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="shape"):
        d.log_prob(y[:, :1])


# ---------------------------------------------------------------------------------------------------- logistic mixture
def _random_params(num_mix: int, channels: int, shape: tuple[int, int, int], gen: torch.Generator, scale: float = 1.0):
    b, h, w = shape
    p = torch.randn(b, logistic_mixture_channels(num_mix, channels), h, w, generator=gen, dtype=torch.float64)
    return scale * p


def _reference_log_prob(params: torch.Tensor, y: torch.Tensor, num_mix: int, channels: int) -> torch.Tensor:
    """Direct float64 evaluation: explicit CDF differences, explicit mixture sum (B,)."""
    params, y = params.double(), y.double()
    b, _, h, w = params.shape
    logits = params[:, :num_mix]
    rest = params[:, num_mix:].reshape(b, num_mix, -1, h, w)
    locs, log_s = rest[:, :, :channels], rest[:, :, channels : 2 * channels].clamp(min=-7.0)
    coeffs = torch.tanh(rest[:, :, 2 * channels :])
    x = 2 * torch.round(y * 255) / 255 - 1
    pairs = [(c, j) for c in range(channels) for j in range(c)]
    total = torch.zeros(b, num_mix, h, w, dtype=torch.float64)
    for c in range(channels):
        loc = locs[:, :, c].clone()
        for k, (cc, j) in enumerate(pairs):
            if cc == c:
                loc = loc + coeffs[:, :, k] * x[:, None, j]
        s = log_s[:, :, c].exp()
        xc = x[:, None, c]
        upper = torch.where(xc > 0.999, torch.ones_like(loc), torch.sigmoid((xc + 1 / 255 - loc) / s))
        lower = torch.where(xc < -0.999, torch.zeros_like(loc), torch.sigmoid((xc - 1 / 255 - loc) / s))
        total = total + torch.log(upper - lower)
    weights = torch.softmax(logits, dim=1)
    return torch.log((weights * total.exp()).sum(1)).flatten(1).sum(1)


def test_logistic_mixture_channel_count() -> None:
    assert logistic_mixture_channels(10, 3) == 100  # PixelCNN++: 10 per component for RGB
    assert logistic_mixture_channels(5, 1) == 15
    assert likelihood_channels("logistic_mixture", 3, num_mix=4) == 40
    assert likelihood_channels("bernoulli", 3) == 3
    with pytest.raises(ValueError, match="num_mix"):
        logistic_mixture_channels(0, 3)
    with pytest.raises(ValueError, match="likelihood"):
        likelihood_channels("gaussian", 3)
    with pytest.raises(ValueError, match="params"):
        DiscretizedLogisticMixture(torch.zeros(1, 7, 2, 2), 2, 3)


@pytest.mark.parametrize("channels", [1, 3])
def test_logistic_mixture_matches_float64_reference(channels: int, gen: torch.Generator) -> None:
    params = _random_params(3, channels, (2, 4, 5), gen)
    y = torch.rand(2, channels, 4, 5, generator=gen, dtype=torch.float64)
    y[0, :, 0, 0], y[1, :, 0, 0] = 0.0, 1.0  # both edge bins
    ref = _reference_log_prob(params, y, 3, channels)
    got = DiscretizedLogisticMixture(params.float(), 3, channels).log_prob(y.float())
    assert got.dtype == torch.float32 and got.shape == (2,)
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=1e-3)
    got64 = DiscretizedLogisticMixture(params, 3, channels).log_prob(y)
    torch.testing.assert_close(got64, ref, rtol=1e-10, atol=1e-9)


def test_logistic_mixture_grey_bins_sum_to_one(gen: torch.Generator) -> None:
    # one pixel's distribution, repeated over 256 pixels holding the 256 values
    params = _random_params(4, 1, (1, 1, 1), gen, scale=2.0).expand(-1, -1, 1, 256)
    y = (torch.arange(256, dtype=torch.float64) / 255).view(1, 1, 1, 256)
    log_p = DiscretizedLogisticMixture(params, 4, 1).log_prob_pixels(y)
    assert abs(float(torch.logsumexp(log_p.flatten(), 0))) < 1e-10


def test_logistic_mixture_rgb_coupled_bins_sum_to_one(gen: torch.Generator) -> None:
    """Sum of the joint mass of one RGB pixel over all (r, g, b) bins with both coupling levels active.

    Red is made sharp (scale e^-6 around 0.1 in every component), so only red bins within 0.05 of it carry mass
    (the rest is below 256·e^-20 in total); green and blue are broad and enumerated over all 256 × 256 bins.
    """
    num_mix = 2
    params = _random_params(num_mix, 3, (1, 1, 1), gen)
    blocks = params[:, num_mix:].view(1, num_mix, 9, 1, 1)
    blocks[:, :, 0] = 0.1  # red locations
    blocks[:, :, 3] = -6.0  # red log-scales
    values = torch.arange(256, dtype=torch.float64) / 255
    reds = values[(2 * values - 1 - 0.1).abs() < 0.05]
    g, b = torch.meshgrid(values, values, indexing="ij")
    n = reds.numel()
    y = torch.stack([reds.view(n, 1, 1).expand(n, 256, 256), g.expand(n, -1, -1), b.expand(n, -1, -1)], 1)
    d = DiscretizedLogisticMixture(params.expand(n, -1, 256, 256), num_mix, 3)
    assert float(d.coeffs.abs().min()) > 0.01  # the channels are coupled
    assert abs(float(torch.logsumexp(d.log_prob_pixels(y).flatten(), 0))) < 1e-7


def test_logistic_mixture_extreme_parameters_stay_finite() -> None:
    params = torch.zeros(1, logistic_mixture_channels(2, 3), 2, 2)
    params[:, 2:] = 40.0  # locations far right, huge log-scales clamp, tanh coefficients saturate
    params[:, 5:8] = -50.0  # first component: tiny scales
    y = torch.tensor([0.0, 0.5, 1.0, 0.25]).view(1, 1, 2, 2).expand(1, 3, 2, 2).clone()
    params.requires_grad_(True)
    lp = DiscretizedLogisticMixture(params, 2, 3).log_prob(y)
    lp.sum().backward()
    assert torch.isfinite(lp).all() and float(lp.detach()) <= 0
    assert torch.isfinite(params.grad).all()


def test_logistic_mixture_mean_and_samples_agree(gen: torch.Generator) -> None:
    num_mix = 3
    params = _random_params(num_mix, 3, (1, 1, 1), gen).float()
    blocks = params[:, num_mix:].view(1, num_mix, 9, 1, 1)
    blocks[:, :, :3] *= 0.1  # locations near 0, small scales, moderate coupling: the coupled locations stay
    blocks[:, :, 3:6] = -3.0  # well inside [-1, 1], so clamping at the edges is negligible
    blocks[:, :, 6:] *= 0.5
    d = DiscretizedLogisticMixture(params.expand(1, -1, 200, 200), num_mix, 3)
    mean = d.mean
    assert mean.shape == (1, 3, 200, 200) and float(mean.min()) >= 0 and float(mean.max()) <= 1
    s = d.sample(torch.Generator().manual_seed(0))
    assert float(s.min()) >= 0 and float(s.max()) <= 1
    torch.testing.assert_close(torch.round(s * 255), s * 255)  # on the 256-level grid
    torch.testing.assert_close(s.mean(dim=(2, 3)), mean[:, :, 0, 0], atol=0.01, rtol=0)


def test_logistic_mixture_samples_follow_log_prob(gen: torch.Generator) -> None:
    params = _random_params(3, 1, (1, 1, 1), gen).float()
    d = DiscretizedLogisticMixture(params.expand(1, -1, 1, 50000), 3, 1)
    s = d.sample(torch.Generator().manual_seed(1))
    hist = torch.bincount(torch.round(s * 255).long().flatten(), minlength=256).double() / s.numel()
    values = (torch.arange(256, dtype=torch.float32) / 255).view(1, 1, 1, 256)
    probs = DiscretizedLogisticMixture(params.expand(1, -1, 1, 256), 3, 1).log_prob_pixels(values).exp().flatten()
    assert 0.5 * float((hist - probs.double()).abs().sum()) < 0.05  # total variation


def test_likelihood_factory_and_bf16_params() -> None:
    b = likelihood("bernoulli", torch.zeros(2, 1, 3, 3, dtype=torch.bfloat16), 1)
    assert isinstance(b, Bernoulli) and b.log_prob(torch.ones(2, 1, 3, 3)).dtype == torch.float32
    m = likelihood("logistic_mixture", torch.zeros(2, 24, 3, 3, dtype=torch.bfloat16), 2, num_mix=4)
    assert isinstance(m, DiscretizedLogisticMixture)
    assert torch.isfinite(m.log_prob(torch.rand(2, 2, 3, 3))).all()
    with pytest.raises(ValueError, match="bernoulli"):
        likelihood("bernoulli", torch.zeros(2, 3, 3, 3), 1)
    with pytest.raises(ValueError, match="likelihood"):
        likelihood("poisson", torch.zeros(2, 1, 3, 3), 1)


def test_logistic_log_scales_are_clamped_at_minus_seven(gen: torch.Generator) -> None:
    """PixelCNN++'s lower bound of the log-scales: −9 and −7 give the same masses, −6.5 sharper ones than −7
    would not; the masses match the float64 reference (which clamps at −7 itself)."""
    params = _random_params(2, 3, (2, 3, 3), gen)
    blocks = params[:, 2:].view(2, 2, 9, 3, 3)
    y = torch.rand(2, 3, 3, 3, generator=gen, dtype=torch.float64)
    values = {}
    for log_scale in (-9.0, -7.0, -6.5):
        blocks[:, :, 3:6] = log_scale
        blocks[:, :, :3] = 2 * torch.round(y * 255).unsqueeze(1) / 255 - 1 + 0.3 / 255  # near the bin centres
        blocks[:, :, 6:] = 0.0  # no coupling
        values[log_scale] = DiscretizedLogisticMixture(params, 2, 3).log_prob(y)
        torch.testing.assert_close(values[log_scale], _reference_log_prob(params, y, 2, 3), rtol=1e-10, atol=1e-9)
    torch.testing.assert_close(values[-9.0], values[-7.0], rtol=0, atol=0)
    assert float((values[-6.5] - values[-7.0]).abs().min()) > 1e-6
