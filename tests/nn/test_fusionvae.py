"""FusionVAE: aggregation, the interface for K = 0..3, the structure of prior and posterior, training steps."""

from __future__ import annotations

import math

import pytest
import torch

from fusion.nn.distributions import Bernoulli, DiscretizedLogisticMixture, Normal
from fusion.nn.fusionvae import FusionOutput, FusionVAE, aggregate, bayesian_aggregate

CONFIGS = [("max", "add"), ("mean", "add"), ("max", "all"), ("bayes", "add"), ("bayes", "all")]


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Tiny networks: extra threads only contend."""
    yield


def _tiny(aggregation: str = "max", target: str = "add", **kw) -> FusionVAE:
    torch.manual_seed(0)
    args = dict(channels=4, latent_channels=2, groups_per_scale=[2, 1], latent_sizes=[4, 8], preprocess_cells=1)
    args.update(kw)
    return FusionVAE(1, 16, aggregation=aggregation, aggregation_target=target, **args)


def _batch(k: int, b: int = 3, c: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, k, c, 16, 16, generator=g), torch.rand(b, c, 16, 16, generator=g).round()


def _flat_sum(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(1).sum(1)


# ---------------------------------------------------------------------------------------------------- aggregation
def test_aggregate_max_mean_and_empty(gen: torch.Generator) -> None:
    f = torch.randn(2, 3, 4, 5, 5, generator=gen)
    torch.testing.assert_close(aggregate(f, "max"), torch.maximum(torch.maximum(f[:, 0], f[:, 1]), f[:, 2]))
    torch.testing.assert_close(aggregate(f, "mean"), (f[:, 0] + f[:, 1] + f[:, 2]) / 3)
    perm = f[:, [2, 0, 1]]
    for mode in ("max", "mean"):
        torch.testing.assert_close(aggregate(perm, mode), aggregate(f, mode))
    empty = aggregate(f[:, :0], "max")
    assert empty.shape == (2, 4, 5, 5) and not empty.any()
    with pytest.raises(ValueError, match="mode"):
        aggregate(f, "sum")
    with pytest.raises(ValueError, match="B, K, C, H, W"):
        aggregate(f[0], "max")


def _sequential_bayes(mu, var, prior_mu, prior_var):
    """Eqs. (6)-(7) one estimate after the other."""
    m, v = prior_mu.expand_as(mu[:, 0]), prior_var.expand_as(var[:, 0])
    for i in range(mu.shape[1]):
        q = v / (v + var[:, i])
        m = m + q * (mu[:, i] - m)
        v = v * (1 - q)
    return m, v


def test_bayesian_aggregate_matches_sequential_update_and_is_symmetric(gen: torch.Generator) -> None:
    mu = torch.randn(2, 3, 4, 5, 5, generator=gen, dtype=torch.float64)
    var = torch.rand(2, 3, 4, 5, 5, generator=gen, dtype=torch.float64) + 0.1
    prior_mu = torch.randn(4, 5, 5, generator=gen, dtype=torch.float64)
    prior_var = torch.rand(4, 5, 5, generator=gen, dtype=torch.float64) + 0.5
    m, v = bayesian_aggregate(mu, var, prior_mu, prior_var)
    rm, rv = _sequential_bayes(mu, var, prior_mu, prior_var)
    torch.testing.assert_close(m, rm)
    torch.testing.assert_close(v, rv)
    for perm in ([1, 2, 0], [2, 1, 0]):
        pm, pv = bayesian_aggregate(mu[:, perm], var[:, perm], prior_mu, prior_var)
        torch.testing.assert_close(pm, m)
        torch.testing.assert_close(pv, v)
    # posterior variance shrinks below every input; no estimates leave the prior unchanged
    assert bool((v < var.amin(1)).all()) and bool((v < prior_var).all())
    e_m, e_v = bayesian_aggregate(mu[:, :0], var[:, :0], prior_mu, prior_var)
    torch.testing.assert_close(e_m, prior_mu.expand(2, -1, -1, -1))
    torch.testing.assert_close(e_v, prior_var.expand(2, -1, -1, -1))


# ---------------------------------------------------------------------------------------------------- the network
@pytest.mark.parametrize(("aggregation", "target"), CONFIGS)
def test_training_step_every_k(aggregation: str, target: str) -> None:
    net = _tiny(aggregation, target)
    opt = torch.optim.Adamax(net.parameters(), lr=1e-3)
    assert net.is_generative and net.num_groups == 3 and net.in_channels == 1 and net.image_size == 16
    for k in range(4):
        inputs, y = _batch(k)
        out = net(inputs, y)
        assert isinstance(out, FusionOutput) and isinstance(out.likelihood, Bernoulli)
        assert out.likelihood.mean.shape == y.shape and len(out.kl) == 3
        assert [z.shape for z in out.latents] == [(3, 2, 4, 4), (3, 2, 4, 4), (3, 2, 8, 8)]
        assert out.log_q.shape == out.log_p.shape == (3,)
        loss = (-out.likelihood.log_prob(y) + sum(out.kl)).mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        for name, p in net.named_parameters():
            used = k > 0 or not name.startswith("context_encoder")
            if name.startswith("prior_heads.0") and k == 0:
                used = False  # p_1 is N(0, I) without inputs
            if name.startswith("bayes_prior.0") and k == 0:
                used = False
            if name.startswith("prior_heads") and k == 0 and aggregation == "bayes":
                used = False  # the per-input Gaussian estimates
            if used:
                assert p.grad is not None and torch.isfinite(p.grad).all(), f"no gradient for {name} at K={k}"
            elif name.startswith("context_encoder"):
                assert p.grad is None, f"{name} received a gradient at K=0"
        opt.step()
        assert all(torch.isfinite(p).all() for p in net.parameters())
        # bits per dim of the ELBO at (near) initialisation are finite and positive
        bpd = (-out.likelihood.log_prob(y) + sum(out.kl)).detach() / (16 * 16 * math.log(2))
        assert torch.isfinite(bpd).all() and bool((bpd > 0).all())


@pytest.mark.parametrize(("aggregation", "target"), CONFIGS)
def test_kl_log_q_log_p_agree_with_distributions(aggregation: str, target: str) -> None:
    net = _tiny(aggregation, target).eval()
    for k in (0, 2):
        inputs, y = _batch(k)
        with torch.no_grad():
            out = net(inputs, y, generator=torch.Generator().manual_seed(5))
        assert len(out.priors) == len(out.posteriors) == len(out.latents) == 3
        log_q = sum(_flat_sum(q.log_prob(z)) for q, z in zip(out.posteriors, out.latents))
        log_p = sum(_flat_sum(p.log_prob(z)) for p, z in zip(out.priors, out.latents))
        torch.testing.assert_close(out.log_q, log_q)
        torch.testing.assert_close(out.log_p, log_p)
        for kl, q, p in zip(out.kl, out.posteriors, out.priors):
            assert bool((kl >= 0).all())
            torch.testing.assert_close(kl, _flat_sum(q.kl(p)))
        if k == 0:  # paper §4.3: p_1 is the standard normal without inputs
            assert not out.priors[0].mu.any() and bool((out.priors[0].sigma == 1).all())
        else:
            assert out.priors[0].mu.abs().sum() > 0


@pytest.mark.parametrize(("aggregation", "target"), CONFIGS)
def test_permutation_invariance(aggregation: str, target: str) -> None:
    net = _tiny(aggregation, target)
    inputs, y = _batch(3)
    for mode in ("train", "eval"):
        net.train(mode == "train")
        with torch.no_grad():
            a = net(inputs, y, generator=torch.Generator().manual_seed(1))
            b = net(inputs[:, [2, 0, 1]], y, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a.log_p, b.log_p, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(a.log_q, b.log_q, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(a.likelihood.logits, b.likelihood.logits, rtol=1e-5, atol=1e-5)
        for ka, kb in zip(a.kl, b.kl):
            torch.testing.assert_close(ka, kb, rtol=1e-5, atol=1e-4)


def test_posterior_depends_on_target_only() -> None:
    """q(z | y) ignores the inputs (§4.3): with the same noise, only the prior and the KL change with x."""
    net = _tiny().eval()
    _, y = _batch(0)
    x1, _ = _batch(2, seed=1)
    x2, _ = _batch(2, seed=2)
    with torch.no_grad():
        a = net(x1, y, generator=torch.Generator().manual_seed(0))
        b = net(x2, y, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.log_q, b.log_q)
    torch.testing.assert_close(a.likelihood.logits, b.likelihood.logits)
    assert float((a.log_p - b.log_p).abs().max()) > 1e-3


def test_residual_posterior_is_relative_to_the_prior() -> None:
    """posterior="residual": q_l = N(mu_p + Δmu, sigma_p exp(Δlog sigma)), (Δmu, Δlog sigma) the head's output on
    the joint features f_ly + agg f_lx + d_l."""
    net = _tiny(posterior="residual").eval()
    raw = {}
    for g, head in enumerate(net.posterior_heads):
        head.register_forward_hook(lambda m, i, o, g=g: raw.__setitem__(g, o))
    inputs, y = _batch(2)
    with torch.no_grad():
        out = net(inputs, y, generator=torch.Generator().manual_seed(0))
        ctx = net._context(inputs)
        f0 = net.target_encoder(y)[0] + ctx[0]
        torch.testing.assert_close(raw[0], net.posterior_heads[0](f0))  # the joint features
    for g in range(net.num_groups):
        d_mu, d_log_sigma = raw[g].chunk(2, dim=1)
        want = Normal(out.priors[g].mu + d_mu, out.priors[g].log_sigma + d_log_sigma)
        torch.testing.assert_close(out.posteriors[g].mu, want.mu)
        torch.testing.assert_close(out.posteriors[g].log_sigma, want.log_sigma)
    assert torch.isfinite(sum(out.kl)).all()


def test_latent_scale_at_full_resolution() -> None:
    """Latent groups at 4², 8² and 16² on 16×16 images (the FusionDigits ``fusionvae_xy16`` setting): no
    preprocessing halving, the last group has one latent per pixel, and every K trains."""
    net = _tiny(posterior="residual", groups_per_scale=[2, 1, 1], latent_sizes=[4, 8, 16])
    assert net.num_preprocess == 0 and net.group_sizes == [4, 4, 8, 16]
    opt = torch.optim.Adamax(net.parameters(), lr=1e-3)
    for k in range(4):
        inputs, y = _batch(k)
        out = net(inputs, y)
        assert [z.shape[-1] for z in out.latents] == [4, 4, 8, 16] and out.latents[-1].shape == (3, 2, 16, 16)
        loss = (-out.likelihood.log_prob(y) + sum(out.kl)).mean()
        opt.zero_grad()
        loss.backward()
        heads = net.posterior_heads[-1]
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in heads.parameters())
        opt.step()
    samples = net.sample(_batch(2)[0], num_samples=2)
    assert samples.shape[-2:] == (16, 16) and torch.isfinite(samples).all()


@pytest.mark.parametrize("aggregation", ["max", "bayes"])
def test_joint_posterior_sees_the_inputs(aggregation: str) -> None:
    """posterior="joint" (Table 4, q(z | x, y)): the posterior changes with x, and without inputs it equals the
    target-only posterior of the same weights."""
    net = _tiny(aggregation, posterior="joint").eval()
    ref = _tiny(aggregation).eval()
    ref.load_state_dict(net.state_dict())
    _, y = _batch(0)
    x1, _ = _batch(2, seed=1)
    x2, _ = _batch(2, seed=2)
    with torch.no_grad():
        a = net(x1, y, generator=torch.Generator().manual_seed(0))
        b = net(x2, y, generator=torch.Generator().manual_seed(0))
        c = net(x1[:, :0], y, generator=torch.Generator().manual_seed(0))
        d = ref(x1[:, :0], y, generator=torch.Generator().manual_seed(0))
    assert float((a.posteriors[0].mu - b.posteriors[0].mu).abs().max()) > 1e-3
    torch.testing.assert_close(c.log_q, d.log_q)
    torch.testing.assert_close(c.likelihood.logits, d.likelihood.logits)


def test_shared_encoder_is_the_context_encoder() -> None:
    """share_encoder=True: the target passes through the context encoder, whose weights then get gradient from the
    reconstruction even when K = 0; the default has a target encoder of its own, exactly one encoder larger."""
    shared, own = _tiny(share_encoder=True), _tiny()
    assert shared.target_encoder is None and own.target_encoder is not None
    n_ctx = sum(p.numel() for p in shared.context_encoder.parameters())
    n_shared, n_own = (sum(p.numel() for p in m.parameters()) for m in (shared, own))
    assert n_own - n_shared == n_ctx
    inputs, y = _batch(0)
    out = shared(inputs, y)
    (-out.likelihood.log_prob(y).mean()).backward()
    grads = [p.grad for p in shared.context_encoder.parameters()]
    assert all(g is not None for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    with torch.no_grad():  # the same image as a view and as the target gives the same features
        feats = shared.context_encoder.eval()(y)
        shared.eval()
        ctx = shared._context(y.unsqueeze(1))
    for f, c in zip(feats, ctx):
        torch.testing.assert_close(f, c)


@torch.no_grad()
def test_sample_shapes_temperature_and_seed() -> None:
    net = _tiny().eval()
    for k in range(4):
        inputs, _ = _batch(k, b=2)
        s = net.sample(inputs, num_samples=4, generator=torch.Generator().manual_seed(0))
        assert s.shape == (4, 2, 1, 16, 16) and float(s.min()) >= 0 and float(s.max()) <= 1
        assert float((s[0] - s[1]).abs().max()) > 0  # different latent draws
        again = net.sample(inputs, num_samples=4, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(s, again)
        cold = net.sample(inputs, num_samples=3, temperature=0.0)
        torch.testing.assert_close(cold[0], cold[2])  # z = prior mean


def test_logistic_mixture_rgb_and_bf16_autocast() -> None:
    torch.manual_seed(0)
    net = FusionVAE(
        3,
        16,
        channels=4,
        latent_channels=2,
        groups_per_scale=[1, 1],
        latent_sizes=[4, 8],
        likelihood="logistic_mixture",
        num_mix=3,
        preprocess_cells=1,
    )
    inputs, y = _batch(2, b=2, c=3)
    out = net(inputs, y)
    assert isinstance(out.likelihood, DiscretizedLogisticMixture)
    bpd = (-out.likelihood.log_prob(y) + sum(out.kl)) / (3 * 16 * 16 * math.log(2))
    assert torch.isfinite(bpd).all() and bool((bpd > 0).all())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(inputs, y)
        s = net.sample(inputs, num_samples=2)
    lp = out.likelihood.log_prob(y)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all() and out.kl[0].dtype == torch.float32
    assert s.shape == (2, 2, 3, 16, 16) and torch.isfinite(s).all()


def test_channels_last_matches() -> None:
    net = _tiny().eval()
    inputs, y = _batch(2)
    with torch.no_grad():
        ref = net(inputs, y, generator=torch.Generator().manual_seed(0))
        net = net.to(memory_format=torch.channels_last)
        out = net(inputs, y.contiguous(memory_format=torch.channels_last), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.likelihood.logits, ref.likelihood.logits, rtol=1e-4, atol=1e-4)


def test_paper_configurations() -> None:
    mnist = FusionVAE(1, 32, channels=8, latent_channels=10, groups_per_scale=[5, 2], latent_sizes=[4, 8])
    assert mnist.num_groups == 7 and mnist.group_sizes == [4] * 5 + [8] * 2 and mnist.num_preprocess == 2
    celeba = FusionVAE(
        3,
        64,
        channels=4,
        latent_channels=20,
        groups_per_scale=[10, 5, 2],
        latent_sizes=[8, 16, 32],
        likelihood="logistic_mixture",
    )
    assert celeba.num_groups == 17 and celeba.num_preprocess == 1
    assert celeba.group_sizes == [8] * 10 + [16] * 5 + [32] * 2
    assert celeba.output[-1].out_channels == 100


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="latent_sizes"):
        _tiny(latent_sizes=[4, 6])
    with pytest.raises(ValueError, match="latent_sizes"):
        _tiny(latent_sizes=[3, 6])
    with pytest.raises(ValueError, match="aggregation"):
        _tiny("sum")
    with pytest.raises(ValueError, match="aggregation_target"):
        _tiny("max", "concat")
    with pytest.raises(ValueError, match="groups_per_scale"):
        _tiny(groups_per_scale=[])
    with pytest.raises(ValueError, match="likelihood"):
        _tiny(likelihood="gaussian")
    with pytest.raises(ValueError, match="posterior"):
        _tiny(posterior="prior")
    with pytest.raises(TypeError, match="share_encoder"):
        _tiny(share_encoder="yes")
    net = _tiny()
    with pytest.raises(ValueError, match="inputs"):
        net(torch.rand(2, 1, 16, 16), torch.rand(2, 1, 16, 16))
    with pytest.raises(ValueError, match="target"):
        net(torch.rand(2, 1, 1, 16, 16), torch.rand(3, 1, 16, 16))
    with pytest.raises(ValueError, match="num_samples"):
        net.sample(torch.rand(2, 1, 1, 16, 16), num_samples=0)
