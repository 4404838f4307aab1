"""FusionModule: the ELBO terms of eq. (8), the KL warm-up and balancing, the spectral term, one training step for
every model and every K, validation metrics, and the sample grid."""

from __future__ import annotations

import math

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
    module = _module(kind).eval()
    batch = _batch(2)
    torch.manual_seed(3)
    out = module.network(batch["inputs"], batch["target"])
    nll = -out.likelihood.log_prob(batch["target"])
    kl = torch.stack(out.kl).sum(0)
    for beta in (1.0, 0.25):
        torch.manual_seed(3)  # the same z
        loss, logs = module.objective(batch["inputs"], batch["target"], beta=beta)
        torch.testing.assert_close(loss, (nll + beta * kl).mean())
    torch.testing.assert_close(logs["elbo_bpd"], bits_per_dim((nll + kl).mean(), S * S))
    torch.testing.assert_close(logs["kl_bpd"], bits_per_dim(kl.mean(), S * S))
    # KL balancing weighs each group by alpha_l during the warm-up (beta < 1)
    torch.manual_seed(3)
    balanced, _ = module.objective(batch["inputs"], batch["target"], beta=0.5, balance=True)
    alpha = kl_balance_coefficients(out.kl)
    torch.testing.assert_close(balanced, (nll + 0.5 * (torch.stack(out.kl) * alpha[:, None]).sum(0)).mean())


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


def test_fcn_objective_has_no_kl() -> None:
    module = _module("fcn")
    loss, logs = module.objective(**_batch(3))
    assert set(logs) == {"nll_bpd"} and torch.isfinite(loss)


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
    assert lrs[11] == lrs[10]


@pytest.mark.parametrize("kind", ["fusionvae", "fcn"])
def test_validation_logs_per_k_and_image_grid(kind: str) -> None:
    module = _module(kind, val_samples=4, num_val_images=2, grid_samples=3).eval()
    logged = {}
    module.log_dict = lambda logs, **kwargs: logged.update(logs)
    with torch.no_grad():
        module.validation_step(_batch(2), 0)
    assert {"val/bound_bpd", "val/bound_bpd_k2", "val/mse_min", "val/mse_min_k2"} == set(logged)
    assert all(torch.isfinite(torch.as_tensor(v)) for v in logged.values())
    panels = module.image_grids(_batch(2))
    assert list(panels) == ["input1", "input2", "input3", "target", "sample1", "sample2", "sample3"]
    assert all(p.shape == (2, 1, S, S) for p in panels.values())
    assert panels["input3"].abs().sum() == 0  # K = 2: the third input column is blank


def test_rejects_a_network_without_the_interface() -> None:
    with pytest.raises(TypeError, match="lacks"):
        FusionModule(torch.nn.Linear(2, 2), optimizer=torch.optim.Adamax)
    with pytest.raises(ValueError, match="kl_warmup_fraction"):
        _module("fcn", kl_warmup_fraction=2.0)
