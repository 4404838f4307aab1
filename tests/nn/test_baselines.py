"""CVAE(+S) and FCN(+S) baselines: the shared interface for K = 0..3, invariance to the input order, skips."""

from __future__ import annotations

import math

import pytest
import torch

from fusion.nn.baselines import CVAE, FCN
from fusion.nn.distributions import Bernoulli, DiscretizedLogisticMixture
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
    for k in (0, 3):
        inputs, _ = _batch(k, b=2)
        s = net.sample(inputs, num_samples=3, generator=torch.Generator().manual_seed(0))
        assert s.shape == (3, 2, 1, 16, 16) and float(s.min()) >= 0 and float(s.max()) <= 1
        spread = float((s[0] - s[1]).abs().max())
        assert (spread > 0) == (cls is CVAE)
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
