"""FusionModule: the ELBO terms of eq. (8), the KL warm-up and balancing, the spectral term, one training step for
every model and every K, validation metrics, and the sample grid."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fusion.metrics import bits_per_dim, importance_sampled_nll
from fusion.models.fusionvae import FusionModule, kl_balance_coefficients, kl_weight
from fusion.nn.baselines import CVAE, FCN
from fusion.nn.fusionvae import FusionVAE

S = 16


def _network(kind: str) -> torch.nn.Module:
    if kind == "fusionvae":
        return FusionVAE(1, S, channels=4, latent_channels=2, groups_per_scale=[2, 1], latent_sizes=[4, 8])
    if kind.startswith("cvae"):
        return CVAE(1, S, channels=4, latent_channels=2, num_downsamples=2, cells_per_level=1, skip=kind == "cvae_s")
    return FCN(1, S, channels=4, num_downsamples=2, cells_per_level=1, skip=kind == "fcn_s")


def _module(kind: str, **kwargs) -> FusionModule:
    optimizer = lambda params: torch.optim.Adamax(params, lr=1e-2)  # noqa: E731
    return FusionModule(_network(kind), optimizer=optimizer, **kwargs)


def _batch(k: int, b: int = 3, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    target = (torch.rand(b, 1, S, S, generator=gen) > 0.6).float()
    masks = (torch.rand(b, k, 1, S, S, generator=gen) > 0.5).float()
    return {"inputs": target[:, None] * masks, "target": target}


def _bernoulli_nll_bits(logits: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per item ``−Σ log₂ p(y | logits)`` of pixel-wise Bernoulli variables, in NumPy (float64)."""
    p = 1 / (1 + np.exp(-logits.detach().double().numpy()))
    y = target.double().numpy()
    bits = -(y * np.log2(p) + (1 - y) * np.log2(1 - p))
    return bits.reshape(len(bits), -1).sum(1)


def test_kl_weight_schedule() -> None:
    total = 1000
    betas = [kl_weight(s, total, warmup_fraction=0.3, constant_fraction=0.01, minimum=1e-4) for s in range(total)]
    assert betas[0] == 1e-4 and betas[10] == 1e-4  # held during the constant part
    assert all(b2 >= b1 for b1, b2 in zip(betas, betas[1:]))  # monotone warm-up
    assert math.isclose(betas[160], 150 / 300) and betas[310] == 1.0 and betas[-1] == 1.0
    assert kl_weight(5, 100, warmup_fraction=0.0) == 1.0


def test_kl_balance_coefficients() -> None:
    kl = [torch.tensor([2.0, 4.0]), torch.tensor([0.0, 0.0]), torch.tensor([9.0, 9.0], requires_grad=True)]
    alpha = kl_balance_coefficients(kl)
    expected = torch.tensor([3.01, 0.01, 9.01])
    torch.testing.assert_close(alpha, expected / expected.mean())
    assert not alpha.requires_grad and math.isclose(float(alpha.mean()), 1.0, rel_tol=1e-6)


@pytest.mark.parametrize("kind", ["fusionvae", "cvae"])
def test_objective_is_the_negative_elbo_of_eq8(kind: str) -> None:
    """loss = mean(−log p(y | x, z) + β Σ_l KL_l) in nats; ``elbo_bpd`` and ``kl_bpd`` in bits per dimension; the
    likelihood term recomputed in NumPy from the decoder's logits for the same z."""
    module = _module(kind).eval()
    batch = _batch(2)
    torch.manual_seed(3)
    out = module.network(batch["inputs"], batch["target"])
    nll_bits = _bernoulli_nll_bits(out.likelihood.logits, batch["target"])
    nll = torch.from_numpy(nll_bits * np.log(2)).float()
    kl = torch.stack(out.kl).sum(0).detach()
    assert bool((kl > 0).all())
    for beta in (1.0, 0.25):
        torch.manual_seed(3)  # the same z
        loss, logs = module.objective(batch["inputs"], batch["target"], beta=beta)
        torch.testing.assert_close(loss, (nll + beta * kl).mean())
    kl_bits = kl.double().numpy() / np.log(2)
    np.testing.assert_allclose(float(logs["elbo_bpd"].detach()), (nll_bits + kl_bits).mean() / (S * S), rtol=1e-5)
    np.testing.assert_allclose(float(logs["kl_bpd"].detach()), kl_bits.mean() / (S * S), rtol=1e-5)
    np.testing.assert_allclose(float(logs["nll_bpd"].detach()), nll_bits.mean() / (S * S), rtol=1e-5)
    # KL balancing weighs each group by alpha_l during the warm-up (beta < 1)
    torch.manual_seed(3)
    balanced, _ = module.objective(batch["inputs"], batch["target"], beta=0.5, balance=True)
    alpha = kl_balance_coefficients(out.kl)
    torch.testing.assert_close(balanced, (nll + 0.5 * (torch.stack(out.kl).detach() * alpha[:, None]).sum(0)).mean())
    torch.manual_seed(3)  # the logged bound stays the (unweighted) negative ELBO under balancing
    _, logs = module.objective(batch["inputs"], batch["target"], beta=0.5, balance=True)
    np.testing.assert_allclose(float(logs["elbo_bpd"].detach()), (nll_bits + kl_bits).mean() / (S * S), rtol=1e-5)
    torch.manual_seed(3)  # beta = 1 ends the warm-up: no balancing any more
    unbalanced, _ = module.objective(batch["inputs"], batch["target"], beta=1.0, balance=True)
    torch.testing.assert_close(unbalanced, (nll + kl).mean())


def test_importance_sampled_nll_tightens_the_elbo() -> None:
    """log p(y|x) >= ELBO: the importance-sampled NLL lies below the negative ELBO (analytic KL, averaged z)."""
    module = _module("fusionvae").eval()
    batch = _batch(1, b=4)
    torch.manual_seed(0)
    with torch.no_grad():
        elbo = torch.stack(
            [module.objective(batch["inputs"], batch["target"])[1]["elbo_bpd"] for _ in range(64)]
        ).mean()
        nll = bits_per_dim(
            importance_sampled_nll(module.network, batch["inputs"], batch["target"], num_samples=64), S * S
        )
    assert float(nll.mean()) < float(elbo)
    assert float(nll.mean()) > 0


@pytest.mark.parametrize("channels", [1, 3])
def test_fcn_objective_is_the_bernoulli_nll_in_bits_per_dim(channels: int) -> None:
    """FCN: the loss is the batch mean of −log p(y | x) in nats of the decoder's Bernoulli pixels and ``nll_bpd``
    the same in bits per dimension (C·H·W dimensions), both computed here from the logits in NumPy."""
    module = FusionModule(
        FCN(channels, S, channels=4, num_downsamples=2, cells_per_level=1),
        optimizer=lambda params: torch.optim.Adamax(params, lr=1e-2),
    )
    gen = torch.Generator().manual_seed(4)
    target = (torch.rand(3, channels, S, S, generator=gen) > 0.6).float()
    inputs = target[:, None] * (torch.rand(3, 2, 1, S, S, generator=gen) > 0.5).float()
    loss, logs = module.objective(inputs, target)
    assert set(logs) == {"nll_bpd"}
    bits = _bernoulli_nll_bits(module.network(inputs).likelihood.logits, target)
    np.testing.assert_allclose(float(loss.detach()), bits.mean() * np.log(2), rtol=1e-5)
    np.testing.assert_allclose(float(logs["nll_bpd"].detach()), bits.mean() / (channels * S * S), rtol=1e-5)
    assert 0.5 < float(logs["nll_bpd"].detach()) < 2  # an untrained network: about one bit per binary pixel


def test_spectral_weight_moves_log_linearly() -> None:
    module = _module("fusionvae", spectral_weight=1e-2, spectral_weight_init=10.0)
    assert math.isclose(module.spectral_lambda(0.0), 10.0) and math.isclose(module.spectral_lambda(1.0), 1e-2)
    assert math.isclose(module.spectral_lambda(0.5), math.sqrt(10.0 * 1e-2))
    assert _module("fusionvae", spectral_weight=0.0).spectral is None


@pytest.mark.parametrize("kind", ["fusionvae", "cvae", "cvae_s", "fcn", "fcn_s"])
@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_one_training_step_every_model_and_k(kind: str, k: int) -> None:
    module = _module(kind)
    module._total_steps = 100
    optimizer = module.configure_optimizers()["optimizer"]
    before = [p.detach().clone() for p in module.network.parameters()]
    module.log_dict = lambda *args, **kwargs: None  # no trainer attached
    loss = module.training_step(_batch(k), 0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    changed = [not torch.equal(a, p) for a, p in zip(before, module.network.parameters())]
    assert sum(changed) > len(changed) // 2
    assert all(torch.isfinite(p).all() for p in module.network.parameters())


def test_training_step_adds_the_weighted_spectral_penalty() -> None:
    """training_step: loss = objective(β, balanced) + λ(β) · SR with β = kl_min at step 0 and λ moving log-linearly
    from spectral_weight_init (10) to spectral_weight (0.01); the logged parts add up to the loss."""
    module = _module("fusionvae", spectral_weight=1e-2, spectral_weight_init=10.0, kl_min=0.2, kl_constant_fraction=0.1)
    module._total_steps = 100
    logged = {}
    module.log_dict = lambda logs, **kwargs: logged.update(logs)
    batch = _batch(2)
    torch.manual_seed(5)
    loss = module.training_step(batch, 0)
    torch.manual_seed(5)
    objective, _ = module.objective(batch["inputs"], batch["target"], beta=0.2, balance=True)
    weight = math.exp(0.8 * math.log(10.0) + 0.2 * math.log(1e-2))
    penalty = float(logged["train/spectral"])
    assert float(logged["train/beta"]) == pytest.approx(0.2) and penalty > 1
    assert float(loss.detach()) == pytest.approx(float(objective.detach()) + weight * penalty, rel=1e-6)
    assert float(logged["train/loss"]) == pytest.approx(float(loss.detach()), rel=1e-7)


def test_cosine_annealing_from_lr_to_lr_min() -> None:
    module = _module("fcn", lr_min=1e-4)
    module._total_steps = 10
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    lrs = []
    for _ in range(12):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert math.isclose(lrs[0], 1e-2) and math.isclose(lrs[5], (1e-2 + 1e-4) / 2) and math.isclose(lrs[10], 1e-4)
    for step in (2, 3, 7):  # the cosine, not a straight line: lr_min + (lr - lr_min)(1 + cos(π t)) / 2
        assert math.isclose(lrs[step], 1e-4 + (1e-2 - 1e-4) * (1 + math.cos(math.pi * step / 10)) / 2)
    assert lrs[11] == lrs[10]


@pytest.mark.parametrize("kind", ["fusionvae", "cvae_s", "fcn"])
def test_validation_logs_per_k_agree_with_a_direct_computation(kind: str) -> None:
    """For K = 0..3: ``val/bound_bpd(_kK)`` is the negative ELBO (Bernoulli NLL from the logits + Σ KL) in bits per
    dimension and ``val/mse_min(_kK)`` the batch mean of min_s mean (sample_s − y)², recomputed from the same
    random draws; they are logged per epoch with the batch size."""
    module = _module(kind, val_samples=4).eval()
    for k in range(4):
        batch = _batch(k, seed=10 + k)
        logged, options = {}, {}
        module.log_dict = lambda logs, **kwargs: (logged.update(logs), options.update(kwargs))
        torch.manual_seed(7)
        with torch.no_grad():
            module.validation_step(batch, 5 + 3 * k)  # K comes from the batch, not from its index
            torch.manual_seed(7)  # the same draws: z ~ q for the bound, then the prior samples
            out = module.network(batch["inputs"], batch["target"])
            samples = module.network.sample(batch["inputs"], num_samples=4)
        y = batch["target"].double().numpy()
        bits = _bernoulli_nll_bits(out.likelihood.logits, batch["target"])
        if out.kl:
            bits = bits + sum(kl.double().numpy() for kl in out.kl) / np.log(2)
            assert float(sum(out.kl).min()) > 0
        bound = bits.mean() / (S * S)
        if kind == "fcn":
            prediction = 1 / (1 + np.exp(-out.likelihood.logits.double().numpy()))
            mse = ((prediction - y) ** 2).reshape(3, -1).mean(1).mean()
        else:
            errors = ((samples.double().numpy() - y[None]) ** 2).reshape(4, 3, -1).mean(2)
            mse = errors.min(0).mean()
        assert set(logged) == {"val/bound_bpd", f"val/bound_bpd_k{k}", "val/mse_min", f"val/mse_min_k{k}"}
        for name, value in (("bound_bpd", bound), ("mse_min", mse)):
            np.testing.assert_allclose(float(logged[f"val/{name}"]), value, rtol=1e-5)
            np.testing.assert_allclose(float(logged[f"val/{name}_k{k}"]), value, rtol=1e-5)
        assert options["batch_size"] == 3 and options["on_epoch"] and not options["on_step"]


def test_validation_image_grid() -> None:
    module = _module("fusionvae", num_val_images=2, grid_samples=3).eval()
    batch = _batch(2)
    torch.manual_seed(1)
    panels = module.image_grids(batch)
    assert list(panels) == ["input1", "input2", "input3", "target", "sample1", "sample2", "sample3"]
    assert all(p.shape == (2, 1, S, S) for p in panels.values())
    torch.testing.assert_close(panels["input1"], batch["inputs"][:2, 0])
    torch.testing.assert_close(panels["input2"], batch["inputs"][:2, 1])
    torch.testing.assert_close(panels["target"], batch["target"][:2])
    assert panels["input3"].abs().sum() == 0  # K = 2: the third input column is blank
    torch.manual_seed(1)
    with torch.no_grad():
        samples = module.network.sample(batch["inputs"][:2], num_samples=3)
    for s in range(3):
        torch.testing.assert_close(panels[f"sample{s + 1}"], samples[s])


def test_rejects_a_network_without_the_interface() -> None:
    with pytest.raises(TypeError, match="lacks"):
        FusionModule(torch.nn.Linear(2, 2), optimizer=torch.optim.Adamax)
    with pytest.raises(ValueError, match="kl_warmup_fraction"):
        _module("fcn", kl_warmup_fraction=2.0)
