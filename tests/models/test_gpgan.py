"""Blending GAN training: the WGAN critic schedule, weight clipping, losses of eqs. (2)–(4), gradient penalty."""

from __future__ import annotations

import functools
from pathlib import Path

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from fusion.models.gpgan import BlendingGAN, critic_iterations, gradient_penalty
from fusion.nn.gpgan import BlendingCritic, BlendingGenerator

SCHEDULE = dict(critic_steps=2, critic_warmup_steps=3, warmup_generator_steps=2, critic_burst_every=4)


class Pairs(Dataset):
    def __init__(self, n: int, size: int = 16) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, size, size, generator=g)
        self.y = torch.rand(n, 3, size, size, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"composite": self.x[i], "target": self.y[i]}


def _model(**kwargs) -> BlendingGAN:
    args = dict(
        generator=BlendingGenerator(16, encoder_channels=4, decoder_channels=4, bottleneck=8),
        critic=BlendingCritic(16, base_channels=4),
        generator_optimizer=functools.partial(torch.optim.Adam, lr=2e-3, betas=(0.5, 0.999)),
        critic_optimizer=functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999)),
        **SCHEDULE,
    )
    args.update(kwargs)
    return BlendingGAN(**args)


def _fit(model: BlendingGAN, batches: int, root: Path) -> L.Trainer:
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=root,
    )
    trainer.fit(model, DataLoader(Pairs(batches * 2), batch_size=2))
    return trainer


def _reference_generator_steps(batches: int, **schedule) -> int:
    """Replays the reference WGAN loop: for generator step g, Diters critic batches, then one generator update."""
    g, critic_done = 0, 0
    for _ in range(batches):
        critic_done += 1
        diters = 100 if g < 25 or g % 500 == 0 else 5
        if schedule:
            s = schedule
            burst = s["critic_burst_every"] and g % s["critic_burst_every"] == 0
            diters = s["critic_warmup_steps"] if g < s["warmup_generator_steps"] or burst else s["critic_steps"]
        if critic_done == diters:
            g, critic_done = g + 1, 0
    return g


def test_critic_schedule_matches_reference_rule() -> None:
    for g in range(0, 2001):
        expected = 100 if g < 25 or g % 500 == 0 else 5
        assert critic_iterations(g) == expected
    assert critic_iterations(3, critic_burst_every=0, warmup_generator_steps=0) == 5


def test_training_follows_schedule_and_clips(tmp_path: Path) -> None:
    model = _model()
    before = [p.detach().clone() for p in model.generator.parameters()]
    trainer = _fit(model, 14, tmp_path)
    g_steps = _reference_generator_steps(14, **SCHEDULE)
    assert g_steps == 5  # 3 + 3 + 2 + 2 + 3 (a burst at g = 4) batches, one left over
    assert int(model.generator_steps) == g_steps
    assert trainer.global_step == 14 + g_steps  # one critic step per batch plus the generator steps
    assert all(float(p.abs().max()) <= 0.01 + 1e-7 for p in model.critic.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(before, model.generator.parameters()))


def test_generator_untouched_during_critic_warmup(tmp_path: Path) -> None:
    model = _model(critic_warmup_steps=50)
    before = [p.detach().clone() for p in model.generator.parameters()]
    _fit(model, 4, tmp_path)
    assert int(model.generator_steps) == 0 and int(model.critic_count) == 4
    assert all(torch.equal(a, b) for a, b in zip(before, model.generator.parameters()))


def test_generator_loss_is_eq2() -> None:
    model = _model(l2_weight=0.9).eval()
    fake, target = torch.rand(3, 3, 16, 16), torch.rand(3, 3, 16, 16)
    loss, logs = model.generator_loss(fake, target)
    l2 = ((2 * fake - 1) - (2 * target - 1)).pow(2).mean()
    adv = -model.critic(fake).mean()
    torch.testing.assert_close(loss, 0.9 * l2 + 0.1 * adv)
    torch.testing.assert_close(logs["train/l2"], 4 * (fake - target).pow(2).mean())


def test_critic_loss_sign() -> None:
    model = _model().eval()
    real, fake = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    loss, logs = model.critic_loss(real, fake)
    torch.testing.assert_close(loss, model.critic(fake).mean() - model.critic(real).mean())
    torch.testing.assert_close(logs["train/wasserstein"], -loss)


class Linear(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x * self.w).flatten(1).sum(1)


def test_gradient_penalty_closed_form() -> None:
    # a linear critic has gradient w everywhere: the penalty is (‖w‖ − 1)² whatever the interpolation
    w = torch.randn(1, 3, 4, 4, dtype=torch.float64)
    critic = Linear(w)
    real, fake = torch.rand(5, 3, 4, 4, dtype=torch.float64), torch.rand(5, 3, 4, 4, dtype=torch.float64)
    eps = torch.rand(5, 1, 1, 1, dtype=torch.float64)
    penalty = gradient_penalty(critic, real, fake, eps)
    torch.testing.assert_close(penalty, (w.norm() - 1) ** 2)
    penalty.backward()  # differentiable in the critic's weights: d/dw (‖w‖−1)² = 2(‖w‖−1) w/‖w‖
    torch.testing.assert_close(critic.w.grad, 2 * (w.norm() - 1) * w / w.norm())


def test_gradient_penalty_training(tmp_path: Path) -> None:
    model = _model(clip=None, gp_weight=10.0, critic=BlendingCritic(16, base_channels=4, norm="none"))
    _fit(model, 5, tmp_path)
    assert int(model.generator_steps) >= 1
    assert any(float(p.abs().max()) > 0.01 for p in model.critic.parameters())  # no clipping


def test_checkpoint_loads_with_weights_only(tmp_path: Path) -> None:
    model = _model()
    trainer = _fit(model, 4, tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    state = checkpoint["state_dict"]
    assert int(state["generator_steps"]) == int(model.generator_steps)
    fresh = _model()
    fresh.load_state_dict(state)
    x = torch.rand(2, 3, 16, 16)
    model.eval(), fresh.eval()
    torch.testing.assert_close(fresh(x), model(x))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"l2_weight": 1.5}, "l2_weight"), ({"critic_steps": 0}, "critic_steps"), ({"clip": -1.0}, "clip")],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _model(**kwargs)
