"""CVAE(+S) and FCN(+S) baselines: the shared interface for K = 0..3, invariance to the input order, max merges and
skips as the paper defines them, batch independence in eval mode."""

from __future__ import annotations

import math

import pytest
import torch

from fusion.nn.baselines import CVAE, FCN
from fusion.nn.distributions import Bernoulli, DiscretizedLogisticMixture, Normal
from fusion.nn.fusionvae import FusionOutput

MODELS = [(CVAE, False), (CVAE, True), (FCN, False), (FCN, True)]


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Tiny networks: extra threads only contend."""
    yield


def _tiny(cls, skip: bool, in_channels: int = 1, **kw):
    torch.manual_seed(0)
    args = dict(channels=4, num_downsamples=2, cells_per_level=1, expansion=2, skip=skip)
    if cls is CVAE:
        args["latent_channels"] = 2
    args.update(kw)
    return cls(in_channels, 16, **args)


def _batch(k: int, b: int = 3, c: int = 1, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, k, c, 16, 16, generator=g), torch.rand(b, c, 16, 16, generator=g).round()


def _loss(out: FusionOutput, y: torch.Tensor) -> torch.Tensor:
    return -out.likelihood.log_prob(y) + (sum(out.kl) if out.kl else 0)


@pytest.mark.parametrize(("cls", "skip"), MODELS)
def test_training_step_every_k(cls, skip: bool) -> None:
    net = _tiny(cls, skip)
    opt = torch.optim.Adamax(net.parameters(), lr=1e-3)
    assert net.is_generative == (cls is CVAE) and net.in_channels == 1 and net.image_size == 16
    for k in range(4):
        inputs, y = _batch(k)
        out = net(inputs, y)
        assert isinstance(out, FusionOutput) and isinstance(out.likelihood, Bernoulli)
        assert out.likelihood.mean.shape == y.shape
        if cls is CVAE:
            assert len(out.kl) == 1 and out.kl[0].shape == (3,) and out.log_q.shape == out.log_p.shape == (3,)
            assert out.latents[0].shape == (3, 2, 4, 4)
        else:
            assert out.kl == [] and out.log_q is None and out.log_p is None
        loss = _loss(out, y).mean()
        assert torch.isfinite(loss)
        opt.zero_grad()
        loss.backward()
        for name, p in net.named_parameters():
            if name.startswith("context_encoder") or name.startswith("prior_head"):
                if k == 0:
                    assert p.grad is None, f"{name} received a gradient at K=0"
                    continue
            assert p.grad is not None and torch.isfinite(p.grad).all(), f"no gradient for {name} at K={k}"
        opt.step()
        assert all(torch.isfinite(p).all() for p in net.parameters())
        bpd = _loss(out, y).detach() / (16 * 16 * math.log(2))
        assert torch.isfinite(bpd).all() and bool((bpd > 0).all())


@pytest.mark.parametrize(("cls", "skip"), MODELS)
def test_permutation_invariance(cls, skip: bool) -> None:
    net = _tiny(cls, skip)
    inputs, y = _batch(3)
    for mode in (True, False):
        net.train(mode)
        with torch.no_grad():
            a = net(inputs, y, generator=torch.Generator().manual_seed(1))
            b = net(inputs[:, [1, 2, 0]], y, generator=torch.Generator().manual_seed(1))
        torch.testing.assert_close(a.likelihood.logits, b.likelihood.logits, rtol=1e-5, atol=1e-5)
        if cls is CVAE:
            torch.testing.assert_close(a.log_p, b.log_p, rtol=1e-5, atol=1e-4)
            torch.testing.assert_close(a.kl[0], b.kl[0], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("skip", [False, True])
def test_cvae_distributions(skip: bool) -> None:
    net = _tiny(CVAE, skip).eval()
    for k in (0, 2):
        inputs, y = _batch(k)
        with torch.no_grad():
            out = net(inputs, y, generator=torch.Generator().manual_seed(2))
        (p,), (q,), (z,) = out.priors, out.posteriors, out.latents
        torch.testing.assert_close(out.log_q, q.log_prob(z).flatten(1).sum(1))
        torch.testing.assert_close(out.log_p, p.log_prob(z).flatten(1).sum(1))
        torch.testing.assert_close(out.kl[0], q.kl(p).flatten(1).sum(1))
        assert bool((out.kl[0] >= 0).all())
        if k == 0:
            assert not p.mu.any() and bool((p.sigma == 1).all())
        # the CVAE posterior q(z | x, y) sees the inputs
        x2, _ = _batch(k, seed=7)
        with torch.no_grad():
            other = net(x2, y, generator=torch.Generator().manual_seed(2))
        changed = float((other.log_q - out.log_q).abs().max()) > 1e-4
        assert changed == (k > 0)


@pytest.mark.parametrize("cls", [CVAE, FCN])
def test_skip_connections_are_parameter_free_max_merges(cls) -> None:
    plain, skipped = _tiny(cls, False).eval(), _tiny(cls, True).eval()
    assert sum(p.numel() for p in plain.parameters()) == sum(p.numel() for p in skipped.parameters())
    skipped.load_state_dict(plain.state_dict())
    for k, differs in ((0, False), (2, True)):
        inputs, y = _batch(k)
        with torch.no_grad():
            a = plain(inputs, y, generator=torch.Generator().manual_seed(0)).likelihood.logits
            b = skipped(inputs, y, generator=torch.Generator().manual_seed(0)).likelihood.logits
        assert (float((a - b).abs().max()) > 1e-4) == differs


@torch.no_grad()
@pytest.mark.parametrize(("cls", "skip"), MODELS)
def test_sample(cls, skip: bool) -> None:
    net = _tiny(cls, skip).eval()
    net.output[-1].bias.fill_(4.0)  # confident pixels: means near 1, where a clamp or rescaling would show
    for k in (0, 3):
        inputs, _ = _batch(k, b=2)
        s = net.sample(inputs, num_samples=3, generator=torch.Generator().manual_seed(0))
        assert s.shape == (3, 2, 1, 16, 16) and float(s.min()) >= 0 and float(s.max()) <= 1
        spread = float((s[0] - s[1]).abs().max())
        assert (spread > 0) == (cls is CVAE)
        if cls is FCN:  # the one prediction: the Bernoulli means σ(logits), repeated
            logits = net(inputs).likelihood.logits
            torch.testing.assert_close(s, torch.sigmoid(logits).expand(3, -1, -1, -1, -1))
        torch.testing.assert_close(s, net.sample(inputs, num_samples=3, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("cls", [CVAE, FCN])
def test_logistic_mixture_and_autocast(cls) -> None:
    net = _tiny(cls, True, in_channels=3, likelihood="logistic_mixture", num_mix=2)
    inputs, y = _batch(1, b=2, c=3)
    out = net(inputs, y)
    assert isinstance(out.likelihood, DiscretizedLogisticMixture)
    assert torch.isfinite(out.likelihood.log_prob(y)).all()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(inputs, y)
    lp = out.likelihood.log_prob(y)
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()


def test_argument_checks() -> None:
    with pytest.raises(ValueError, match="divisible"):
        _tiny(CVAE, False, num_downsamples=5)
    with pytest.raises(ValueError, match="latent_channels"):
        _tiny(CVAE, False, latent_channels=0)
    with pytest.raises(TypeError, match="skip"):
        _tiny(FCN, 1)
    with pytest.raises(ValueError, match="inputs"):
        _tiny(FCN, False)(torch.rand(2, 1, 8, 8))


def _fixed_noise(self: Normal, generator: torch.Generator | None = None, *, temperature: float = 1.0) -> torch.Tensor:
    """Stand-in for ``Normal.rsample``: the same noise pattern ``cos(0.7 j)`` for every item (the networks draw one
    noise tensor per batch, so the API cannot seed items one by one)."""
    n = self.mu[0].numel()
    eps = torch.cos(0.7 * torch.arange(n, dtype=self.mu.dtype, device=self.mu.device)).view(self.mu.shape[1:])
    return self.mu + (temperature * self.sigma) * eps


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize(("cls", "skip"), MODELS)
def test_eval_batch_of_three_equals_three_single_calls(
    cls, skip: bool, dtype: torch.dtype, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eval mode: the likelihood, the KL, log q, log p and the samples of each item of a batch of 3 equal those of
    its single call (no batch statistic anywhere: batch norms on running statistics, per-item max merges)."""
    net = _tiny(cls, skip).to(dtype).eval()
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for k in (0, 2):
        inputs, y = (t.to(dtype) for t in _batch(k, seed=11))
        with torch.no_grad():
            cold = net.sample(inputs, num_samples=2, temperature=0.0)
            for i in range(3):
                torch.testing.assert_close(cold[:, i : i + 1], net.sample(inputs[i : i + 1], 2, 0.0), **tol)
        with monkeypatch.context() as patch, torch.no_grad():
            patch.setattr(Normal, "rsample", _fixed_noise)
            whole = net(inputs, y)
            warm = net.sample(inputs, num_samples=2)
            for i in range(3):
                item = slice(i, i + 1)
                one = net(inputs[item], y[item])
                torch.testing.assert_close(whole.likelihood.logits[item], one.likelihood.logits, **tol)
                torch.testing.assert_close(whole.likelihood.log_prob(y)[item], one.likelihood.log_prob(y[item]), **tol)
                if cls is CVAE:
                    torch.testing.assert_close(whole.kl[0][item], one.kl[0], **tol)
                    torch.testing.assert_close(whole.log_q[item], one.log_q, **tol)
                    torch.testing.assert_close(whole.log_p[item], one.log_p, **tol)
                torch.testing.assert_close(warm[:, item], net.sample(inputs[item], num_samples=2), **tol)
        lp = whole.likelihood.log_prob(y)
        assert float((lp[0] - lp[1]).abs()) > 1e-3 and float((lp[1] - lp[2]).abs()) > 1e-3  # distinct items


def _record(modules, what: str) -> dict[int, torch.Tensor]:
    """Forward hooks that keep the (first) input or the output of each module, by index."""
    store: dict[int, torch.Tensor] = {}
    for i, module in enumerate(modules):
        if what == "input":
            module.register_forward_hook(lambda m, args, out, i=i: store.__setitem__(i, args[0]))
        else:
            module.register_forward_hook(lambda m, args, out, i=i: store.__setitem__(i, out))
    return store


def _soft_clamp(x: torch.Tensor) -> torch.Tensor:
    return 5 * torch.tanh(x / 5)


@pytest.mark.parametrize(("cls", "skip"), MODELS)
def test_max_aggregation_latent_and_skip_merges_as_in_the_paper(cls, skip: bool) -> None:
    """Paper §5.3, with the features recomputed one view at a time: the decoder starts from conv1×1([z, max_i f_x,i])
    (CVAE) or max_i f_x,i (FCN; zeros without views); the CVAE prior is conv(max_i f_x,i) (mean first, then log σ,
    soft-clamped), its posterior conv([max_i f_x,i, f_y]); with skips the decoder feature after every upsampling
    block becomes max(d, f_1, ..., f_K) of that resolution, without skips it passes on unchanged; the encoders read
    2x − 1."""
    net = _tiny(cls, skip).double().eval()
    n = len(net.up)
    up_out = _record(net.up, "output")
    merged_in = _record([*net.up[1:], net.output], "input")  # what follows up block j
    start_in = _record([net.decoder_input], "input")
    stem_in = _record([net.context_encoder.stem], "input")
    heads = _record([net.prior_head, net.posterior_head], "input") if cls is CVAE else {}
    for k in (0, 2):
        inputs, y = (t.double() for t in _batch(k))
        for store in (up_out, merged_in, start_in, stem_in, heads):
            store.clear()
        with torch.no_grad():
            out = net(inputs, y, generator=torch.Generator().manual_seed(0))
            fx = [net.context_encoder(inputs[:, i]) for i in range(k)]
        if k:
            torch.testing.assert_close(stem_in[0], 2 * inputs[:, -1] - 1)  # the last per-view call above
        bottleneck = [f[-1] for f in fx]
        agg = torch.stack(bottleneck).amax(0) if k else torch.zeros_like(start_in[0][:, -net.bottleneck_width :])
        if cls is CVAE:
            with torch.no_grad():
                fy = net.target_encoder(y)[-1]
            torch.testing.assert_close(start_in[0], torch.cat([out.latents[0], agg], 1))
            torch.testing.assert_close(heads[1], torch.cat([agg, fy], 1))
            with torch.no_grad():
                q_raw = net.posterior_head(torch.cat([agg, fy], 1))
            torch.testing.assert_close(out.posteriors[0].mu, _soft_clamp(q_raw[:, :2]))
            torch.testing.assert_close(out.posteriors[0].log_sigma, _soft_clamp(q_raw[:, 2:]))
            if k:
                torch.testing.assert_close(heads[0], agg)
                with torch.no_grad():
                    p_raw = net.prior_head(agg)
                torch.testing.assert_close(out.priors[0].mu, _soft_clamp(p_raw[:, :2]))
                torch.testing.assert_close(out.priors[0].log_sigma, _soft_clamp(p_raw[:, 2:]))
            else:
                assert 0 not in heads  # N(0, I) without views
        else:
            torch.testing.assert_close(start_in[0], agg)
        for j in range(n):
            want = up_out[j]
            if skip and k:
                for f in fx:
                    want = torch.maximum(want, f[n - 1 - j])
            torch.testing.assert_close(merged_in[j], want)
