"""FusionVAE: aggregation, the interface for K = 0..3, prior and posterior against the paper's definitions and closed
forms, batch independence in eval mode, training steps."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributions as td

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


def _soft_clamp(x: torch.Tensor, bound: float) -> torch.Tensor:
    return bound * torch.tanh(x / bound)


def _first_group_reference(net: FusionVAE, inputs: torch.Tensor, y: torch.Tensor):
    """``(mu, sigma)`` of ``p_1`` and ``q_1`` written out from the heads (eval mode, one view at a time):
    ``q_1 = conv(f_1y)``; ``p_1 = N(0, I)`` without views, ``conv(max_i f_1x,i)`` / ``conv(mean_i f_1x,i)``, or the
    precision-weighted fusion of the per-view Gaussians with the prior belief (supplement eqs. (9)-(10)); means
    and log standard deviations soft-clamped to (−5, 5), Bayesian log-variances to (−10, 10)."""
    q_mu, q_log_sigma = net.posterior_heads[0](net.target_encoder(y)[0]).chunk(2, dim=1)
    q = (_soft_clamp(q_mu, 5), torch.exp(_soft_clamp(q_log_sigma, 5)))
    k = inputs.shape[1]
    if k == 0:
        return (torch.zeros_like(q[0]), torch.ones_like(q[1])), q
    feats = [net.context_encoder(inputs[:, i])[0] for i in range(k)]
    if net.aggregation == "bayes":
        if net.aggregation_target == "all":
            belief_mu, belief_log_var = net.bayes_prior[0].chunk(2, dim=0)
        else:
            belief_mu, belief_log_var = torch.zeros_like(q_mu[0]), torch.zeros_like(q_mu[0])
        precision = 1 / torch.exp(_soft_clamp(belief_log_var, 10))
        weighted = belief_mu * precision
        for f in feats:
            mu_i, log_var_i = net.prior_heads[0](f).chunk(2, dim=1)
            var_i = torch.exp(_soft_clamp(log_var_i, 10))
            precision = precision + 1 / var_i
            weighted = weighted + mu_i / var_i
        mu, log_sigma = weighted / precision, -0.5 * torch.log(precision)
    else:
        agg = feats[0]
        for f in feats[1:]:
            agg = torch.maximum(agg, f) if net.aggregation == "max" else agg + f
        if net.aggregation == "mean":
            agg = agg / k
        mu, log_sigma = net.prior_heads[0](agg).chunk(2, dim=1)
    return (_soft_clamp(mu, 5), torch.exp(_soft_clamp(log_sigma, 5))), q


def _log_normal(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> np.ndarray:
    """Per item ``Σ log N(z; mu, sigma²)`` in NumPy."""
    z, mu, sigma = (t.detach().double().numpy() for t in (z, mu, sigma))
    dens = -0.5 * ((z - mu) / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)
    return dens.reshape(len(dens), -1).sum(1)


@pytest.mark.parametrize(("aggregation", "target"), CONFIGS)
def test_kl_log_q_log_p_against_closed_forms(aggregation: str, target: str) -> None:
    """The KL of every group is the closed-form Gaussian KL of torch.distributions, log q and log p are the NumPy
    Gaussian log-densities of the drawn z, and the first group's prior and posterior are the heads' outputs as
    the paper defines them (written out above)."""
    net = _tiny(aggregation, target).double().eval()
    if aggregation == "bayes" and target == "all":
        with torch.no_grad():  # a prior belief other than N(0, I), so it shows in p_1
            shape = net.bayes_prior[0].shape
            net.bayes_prior[0].copy_(0.5 * torch.randn(shape, generator=torch.Generator().manual_seed(3)))
    for k in (0, 2):
        inputs, y = (t.double() for t in _batch(k))
        with torch.no_grad():
            out = net(inputs, y, generator=torch.Generator().manual_seed(5))
            (p_mu, p_sigma), (q_mu, q_sigma) = _first_group_reference(net, inputs, y)
        assert len(out.priors) == len(out.posteriors) == len(out.latents) == len(out.kl) == 3
        torch.testing.assert_close(out.priors[0].mu, p_mu, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out.priors[0].sigma, p_sigma, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out.posteriors[0].mu, q_mu, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(out.posteriors[0].sigma, q_sigma, rtol=1e-10, atol=1e-12)
        kl_first = td.kl_divergence(td.Normal(q_mu, q_sigma), td.Normal(p_mu, p_sigma))
        torch.testing.assert_close(out.kl[0], _flat_sum(kl_first), rtol=1e-10, atol=1e-10)
        log_q, log_p = np.zeros(3), np.zeros(3)
        for kl, q, p, z in zip(out.kl, out.posteriors, out.priors, out.latents):
            ref = td.kl_divergence(td.Normal(q.mu, q.sigma), td.Normal(p.mu, p.sigma))
            torch.testing.assert_close(kl, _flat_sum(ref), rtol=1e-10, atol=1e-10)
            assert bool((kl > 0).all())
            log_q += _log_normal(z, q.mu, q.sigma)
            log_p += _log_normal(z, p.mu, p.sigma)
        np.testing.assert_allclose(out.log_q.numpy(), log_q, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(out.log_p.numpy(), log_p, rtol=1e-10, atol=1e-10)
        assert all(t.dtype == torch.float64 for t in (out.log_q, out.log_p, *out.kl, out.priors[-1].mu))


def _fixed_noise(self: Normal, generator: torch.Generator | None = None, *, temperature: float = 1.0) -> torch.Tensor:
    """Stand-in for ``Normal.rsample``: the same noise pattern ``cos(0.7 j)`` (j the element index) for every item.

    The networks draw one noise tensor for the whole batch from one generator, so the API cannot seed each item
    on its own; with this draw an item's latent depends on its own mean and standard deviation only, and the
    whole stochastic pass becomes a deterministic function that a batch and single calls must agree on."""
    n = self.mu[0].numel()
    eps = torch.cos(0.7 * torch.arange(n, dtype=self.mu.dtype, device=self.mu.device)).view(self.mu.shape[1:])
    return self.mu + (temperature * self.sigma) * eps


BATCH_CASES = [(a, t, "target") for a, t in CONFIGS] + [("max", "add", "joint"), ("bayes", "add", "residual")]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("aggregation", "target", "posterior"), BATCH_CASES)
def test_eval_batch_of_three_equals_three_single_calls(
    aggregation: str, target: str, posterior: str, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In eval mode (batch norms on their running statistics) no item depends on the others of its batch: the
    likelihood, every group's KL, log q, log p and the samples of a batch of 3 (different views and targets)
    equal those of the three single calls."""
    net = _tiny(aggregation, target, posterior=posterior).to(dtype).eval()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for k in (0, 2):
        inputs, y = (t.to(dtype) for t in _batch(k, seed=11))
        with torch.no_grad():  # the public API as it is: prior means (temperature 0) need no per-item seed
            cold = net.sample(inputs, num_samples=2, temperature=0.0)
            for i in range(3):
                torch.testing.assert_close(cold[:, i : i + 1], net.sample(inputs[i : i + 1], 2, 0.0), **tol)
        with monkeypatch.context() as patch, torch.no_grad():
            patch.setattr(Normal, "rsample", _fixed_noise)
            whole = net(inputs, y)
            warm = net.sample(inputs, num_samples=2)
            for i in range(3):
                one = net(inputs[i : i + 1], y[i : i + 1])
                item = slice(i, i + 1)
                torch.testing.assert_close(whole.likelihood.logits[item], one.likelihood.logits, **tol)
                torch.testing.assert_close(whole.likelihood.log_prob(y)[item], one.likelihood.log_prob(y[item]), **tol)
                for kl_whole, kl_one in zip(whole.kl, one.kl):
                    torch.testing.assert_close(kl_whole[item], kl_one, **tol)
                torch.testing.assert_close(whole.log_q[item], one.log_q, **tol)
                torch.testing.assert_close(whole.log_p[item], one.log_p, **tol)
                torch.testing.assert_close(warm[:, item], net.sample(inputs[item], num_samples=2), **tol)
        lp = whole.likelihood.log_prob(y)
        assert float((lp[0] - lp[1]).abs()) > 1e-3 and float((lp[1] - lp[2]).abs()) > 1e-3  # distinct items


def _record(modules, what: str) -> dict[int, torch.Tensor]:
    """Forward hooks that keep the (first) input or the output of each module, by index."""
    store: dict[int, torch.Tensor] = {}
    for g, module in enumerate(modules):
        if what == "input":
            module.register_forward_hook(lambda m, args, out, g=g: store.__setitem__(g, args[0]))
        else:
            module.register_forward_hook(lambda m, args, out, g=g: store.__setitem__(g, out))
    return store


WIRING_CASES = [
    ("max", "add", "target"),
    ("mean", "add", "joint"),
    ("max", "all", "target"),
    ("bayes", "add", "joint"),
    ("bayes", "all", "target"),
]


@pytest.mark.parametrize(("aggregation", "target", "posterior"), WIRING_CASES)
def test_every_group_is_wired_as_in_the_paper(aggregation: str, target: str, posterior: str) -> None:
    """Paper §4.3 for every latent group l (the heads' inputs read by hooks, the features recomputed one view at a
    time): the generator starts from h and continues from conv1×1([d_l, z_l]); the posterior sees f_ly (+ d_l for
    l > 1, + agg_i f_lx,i for the joint posterior); the prior sees agg_i f_lx,i + d_l ("add"), agg(f_lx,1..K, d_l)
    ("all"), or, for Bayesian aggregation, every f_lx,i on its own and d_l as the belief; the encoders read 2x − 1."""
    net = _tiny(aggregation, target, posterior=posterior).double().eval()
    prior_in, post_in = _record(net.prior_heads, "input"), _record(net.posterior_heads, "input")
    comb_in, comb_out = _record(net.combiners, "input"), _record(net.combiners, "output")
    d_out, belief_in = _record(net.decoder_blocks, "output"), _record(net.belief_heads, "input")
    stem_in = _record([net.context_encoder.stem, net.target_encoder.stem], "input")
    agg = (lambda v: v.mean(1)) if aggregation == "mean" else (lambda v: v.amax(1))
    for k in (0, 2):
        inputs, y = (t.double() for t in _batch(k))
        for store in (prior_in, post_in, comb_in, comb_out, d_out, belief_in, stem_in):
            store.clear()
        with torch.no_grad():
            out = net(inputs, y, generator=torch.Generator().manual_seed(0))
            torch.testing.assert_close(stem_in[1], 2 * y - 1)
            if k:
                torch.testing.assert_close(stem_in[0], 2 * inputs.flatten(0, 1) - 1)
            fy = net.target_encoder(y)
            fx = [net.context_encoder(inputs[:, i]) for i in range(k)]
        for g in range(net.num_groups):
            views = torch.stack([f[g] for f in fx], 1) if k else None  # (B, K, C_l, s_l, s_l)
            d = d_out[g] if g > 0 else None
            start = net.h.expand(3, -1, -1, -1) if g == 0 else d
            torch.testing.assert_close(comb_in[g], torch.cat([start, out.latents[g]], 1))
            if g > 0:
                torch.testing.assert_close(d, net.decoder_blocks[g](comb_out[g - 1]))
            want = fy[g] if d is None else fy[g] + d
            if posterior != "target" and k:
                want = want + agg(views)
            torch.testing.assert_close(post_in[g], want, rtol=1e-10, atol=1e-12)
            if aggregation == "bayes":
                assert (g in prior_in) == (k > 0)
                if k:
                    torch.testing.assert_close(prior_in[g], views.flatten(0, 1))
                if g > 0:
                    torch.testing.assert_close(belief_in[g], d)
            elif k == 0 and g == 0:
                assert g not in prior_in  # p_1 = N(0, I)
            elif target == "add":
                want = (agg(views) if k else 0) + (d if d is not None else 0)
                torch.testing.assert_close(prior_in[g], want, rtol=1e-10, atol=1e-12)
            else:
                items = [views] if k else []
                items += [] if d is None else [d.unsqueeze(1)]
                torch.testing.assert_close(prior_in[g], agg(torch.cat(items, 1)), rtol=1e-10, atol=1e-12)


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
    default = FusionVAE(1, 32, channels=4, groups_per_scale=[1, 1])  # documented default: the finest side is S / 2
    assert default.latent_sizes == [8, 16] and default.num_preprocess == 1


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
