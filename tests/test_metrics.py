import numpy as np
import pytest
import torch

from fusion.metrics import chromaticity_error, geometric_chromaticity


def test_chromaticity_by_hand():
    u = torch.tensor([0.2, 0.4, 0.8], dtype=torch.float64).view(1, 3, 1, 1)
    u0 = torch.tensor([0.5, 0.5, 0.5], dtype=torch.float64).view(1, 3, 1, 1)
    gcm = (0.2 * 0.4 * 0.8) ** (1 / 3)
    expected = np.abs(np.array([0.2, 0.4, 0.8]) / gcm - 1.0)
    mean, err = chromaticity_error(u, u0)
    np.testing.assert_allclose(err.flatten().numpy(), expected, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(mean.item(), expected.mean(), rtol=1e-12)
    np.testing.assert_allclose(geometric_chromaticity(u).prod(1).item(), 1.0, rtol=1e-12)


def test_invariant_to_per_pixel_brightness(gen):
    u0 = torch.rand(2, 3, 9, 11, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    gain = torch.rand(2, 1, 9, 11, generator=gen, dtype=torch.float64) + 0.5
    mean, err = chromaticity_error(u0 * gain, u0)
    assert err.max() < 1e-12 and mean.shape == (2,)
    # an additive shift changes the chromaticity
    shifted, _ = chromaticity_error(u0 + 0.2, u0)
    assert bool((shifted > 1e-3).all())


def test_mask_weighted_mean(gen):
    u = torch.rand(1, 3, 4, 4, generator=gen, dtype=torch.float64) + 0.1
    u0 = torch.rand(1, 3, 4, 4, generator=gen, dtype=torch.float64) + 0.1
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    mask[..., :2, :] = 1
    mean, err = chromaticity_error(u, u0, mask=mask)
    np.testing.assert_allclose(mean.item(), err[..., :2, :].mean().item(), rtol=1e-12)


def test_rejects_bad_input():
    u = torch.rand(1, 3, 4, 4)
    with pytest.raises(ValueError, match="non-negative"):
        chromaticity_error(u - 1, u)
    with pytest.raises(ValueError, match="sizes differ"):
        chromaticity_error(u, u[..., :3])
    with pytest.raises(ValueError, match="channel"):
        chromaticity_error(u, u[:, :1])


# ----------------------------------------------------------------------------------------------------
# Importance-sampled NLL and MSE_min on a linear-Gaussian model whose marginal is known in closed form
# ----------------------------------------------------------------------------------------------------
class _GaussianLikelihood:
    def __init__(self, mean: torch.Tensor, std: float) -> None:
        self.mean_, self.std = mean, std

    def log_prob(self, y: torch.Tensor) -> torch.Tensor:
        return torch.distributions.Normal(self.mean_, self.std).log_prob(y).flatten(1).sum(1)


class _LinearGaussianModel:
    """z ~ N(m(x), 1) with m(x) = mean of the inputs (0 without inputs); y | z ~ N(a z + b, s² I) over D pixels.

    The proposal q(z | y) is N(mu_q, sd_q²): the exact posterior when ``exact_posterior`` is set, otherwise a fixed
    Gaussian that differs from both the prior and the posterior.
    """

    def __init__(self, a: torch.Tensor, b: torch.Tensor, s: float, *, exact_posterior: bool) -> None:
        self.a, self.b, self.s, self.exact = a, b, s, exact_posterior

    def prior_mean(self, inputs: torch.Tensor) -> torch.Tensor:
        return inputs.flatten(1).mean(1) if inputs.shape[1] else torch.zeros(inputs.shape[0], dtype=inputs.dtype)

    def posterior(self, inputs: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.prior_mean(inputs)
        if not self.exact:
            return m + 0.5, torch.full_like(m, 1.3)
        prec = 1 + (self.a**2).sum() / self.s**2
        mean = (m + ((y.flatten(1) - self.b) * self.a).sum(1) / self.s**2) / prec
        return mean, torch.full_like(m, float(prec) ** -0.5)

    def __call__(self, inputs: torch.Tensor, y: torch.Tensor):
        mu_q, sd_q = self.posterior(inputs, y)
        z = mu_q + sd_q * torch.randn_like(mu_q)
        prior = torch.distributions.Normal(self.prior_mean(inputs), 1.0)
        proposal = torch.distributions.Normal(mu_q, sd_q)
        mean = (z[:, None] * self.a + self.b).view_as(y)
        out = type("Out", (), {})()
        out.likelihood, out.log_p, out.log_q = (
            _GaussianLikelihood(mean, self.s),
            prior.log_prob(z),
            proposal.log_prob(z),
        )
        return out

    def exact_nll(self, inputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        m = self.prior_mean(inputs)
        cov = self.s**2 * torch.eye(self.a.numel(), dtype=y.dtype) + torch.outer(self.a, self.a)
        dist = torch.distributions.MultivariateNormal(m[:, None] * self.a + self.b, covariance_matrix=cov)
        return -dist.log_prob(y.flatten(1))


@pytest.mark.parametrize("k", [0, 2])
def test_importance_sampled_nll_exact_with_the_true_posterior(k: int, gen) -> None:
    from fusion.metrics import importance_sampled_nll

    d = 6
    a, b = torch.randn(d, generator=gen, dtype=torch.float64), torch.randn(d, generator=gen, dtype=torch.float64)
    model = _LinearGaussianModel(a, b, 0.7, exact_posterior=True)
    inputs = torch.randn(4, k, 1, 1, d, generator=gen, dtype=torch.float64)
    y = torch.randn(4, 1, 1, d, generator=gen, dtype=torch.float64)
    torch.manual_seed(0)
    estimate = importance_sampled_nll(model, inputs, y, num_samples=3, chunk=2)
    # every importance weight equals p(y | x) when q is the exact posterior: no sampling error at all
    np.testing.assert_allclose(estimate.numpy(), model.exact_nll(inputs, y).numpy(), rtol=0, atol=1e-10)


def test_importance_sampled_nll_converges_with_a_mismatched_proposal(gen) -> None:
    from fusion.metrics import importance_sampled_nll

    d = 4
    a = 0.6 * torch.randn(d, generator=gen, dtype=torch.float64)
    b = torch.randn(d, generator=gen, dtype=torch.float64)
    model = _LinearGaussianModel(a, b, 0.8, exact_posterior=False)
    inputs = torch.randn(3, 1, 1, 1, d, generator=gen, dtype=torch.float64)
    y = torch.randn(3, 1, 1, d, generator=gen, dtype=torch.float64)
    exact = model.exact_nll(inputs, y)
    torch.manual_seed(1)
    few = torch.stack([importance_sampled_nll(model, inputs, y, num_samples=1) for _ in range(200)]).mean(0)
    many = importance_sampled_nll(model, inputs, y, num_samples=20000, chunk=5000)
    assert (many - exact).abs().max() < 0.02
    # with a single sample the estimate is the negative ELBO: an upper bound that is visibly loose here
    assert bool((few > exact + 0.05).all()) and bool(((few - exact).abs() > (many - exact).abs()).all())


def test_importance_sampled_nll_rejects_a_model_without_latents() -> None:
    from fusion.metrics import importance_sampled_nll

    class Deterministic:
        def __call__(self, inputs, y):
            out = type("Out", (), {})()
            out.likelihood, out.log_p, out.log_q = _GaussianLikelihood(y, 1.0), None, None
            return out

    with pytest.raises(ValueError, match="no latent variables"):
        importance_sampled_nll(Deterministic(), torch.zeros(1, 0, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="expected inputs"):
        importance_sampled_nll(Deterministic(), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))


def test_mse_min_and_bits_per_dim(gen) -> None:
    from fusion.metrics import bits_per_dim, mse_min

    y = torch.rand(3, 2, 4, 5, generator=gen)
    samples = torch.rand(7, 3, 2, 4, 5, generator=gen)
    expected = ((samples - y) ** 2).mean(dim=(2, 3, 4)).min(0).values
    torch.testing.assert_close(mse_min(samples, y), expected)
    samples[4, 1] = y[1]
    assert mse_min(samples, y)[1] == 0
    with pytest.raises(ValueError, match="expected samples"):
        mse_min(samples[:, :2], y)
    np.testing.assert_allclose(bits_per_dim(torch.tensor(2 * np.log(2.0) * 10), 10).item(), 2.0, rtol=1e-6)
    with pytest.raises(ValueError, match="dims"):
        bits_per_dim(torch.tensor(1.0), 0)
