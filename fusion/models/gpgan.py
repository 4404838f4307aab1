"""Training of GP-GAN's Blending GAN (Wu et al. 2019, Section 3.3, eqs. 2–4) as a LightningModule.

The generator is trained with ``λ·L2 + (1 − λ)·adv`` (eq. 2, ``λ = 0.999``) against a Wasserstein critic.
The critic loop follows the reference WGAN schedule: ``critic_steps`` (5) critic updates per generator update,
``critic_warmup_steps`` (100) for the first ``warmup_generator_steps`` (25) generator updates and at every
``critic_burst_every``-th (500th) one; critic weights are clipped to ``[-clip, clip]`` (0.01) after each critic
update. A gradient penalty (Gulrajani et al. 2017) can replace or complement the clipping.

Optimisation is manual: every training batch drives one critic update, and the batch that completes the critic
quota also drives one generator update. ``trainer.global_step`` therefore counts optimizer steps of both
networks; the number of generator updates is the ``generator_steps`` buffer (saved in checkpoints).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["BlendingGAN", "critic_iterations", "gradient_penalty"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def critic_iterations(
    generator_step: int,
    *,
    critic_steps: int = 5,
    critic_warmup_steps: int = 100,
    warmup_generator_steps: int = 25,
    critic_burst_every: int = 500,
) -> int:
    """Critic updates before generator update number ``generator_step`` (0-based), as in the reference WGAN.

    ``critic_warmup_steps`` while ``generator_step < warmup_generator_steps`` or when ``generator_step`` is a
    multiple of ``critic_burst_every`` (0 disables the bursts); ``critic_steps`` otherwise.

    Example:
        >>> [critic_iterations(g) for g in (0, 24, 25, 499, 500)]
        [100, 100, 5, 5, 100]
    """
    burst = critic_burst_every > 0 and generator_step % critic_burst_every == 0
    return critic_warmup_steps if generator_step < warmup_generator_steps or burst else critic_steps


def gradient_penalty(critic: nn.Module, real: torch.Tensor, fake: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """WGAN-GP penalty ``mean_b (‖∇_x D(x̂_b)‖₂ − 1)²`` at ``x̂ = eps·real + (1 − eps)·fake``, ``eps`` ``(B, 1, 1, 1)``.

    The graph is kept (``create_graph=True``) so the penalty can be back-propagated into the critic.
    """
    mixed = (eps * real + (1 - eps) * fake).detach().requires_grad_(True)
    scores = critic(mixed)
    (grads,) = torch.autograd.grad(scores.sum(), mixed, create_graph=True)
    return ((grads.flatten(1).norm(dim=1) - 1) ** 2).mean()


class BlendingGAN(L.LightningModule):
    """Blending GAN training: WGAN critic loop with weight clipping, generator loss ``λ·L2 + (1 − λ)·adv``.

    Batches are dicts with ``composite`` (the copy-and-paste input ``x``) and ``target`` (the ground truth
    ``x_g``), ``(B, 3, S, S)`` in [0, 1] (see :class:`fusion.data.transient.TransientAttributesDataModule`).
    Losses are computed on the networks' ``[-1, 1]`` scale, so ``λ`` balances them as in the paper's code.

    Args:
        generator: ``G``, e.g. :class:`fusion.nn.gpgan.BlendingGenerator`.
        critic: ``D``, e.g. :class:`fusion.nn.gpgan.BlendingCritic` (one score per image).
        generator_optimizer, critic_optimizer: factories ``params -> Optimizer`` (Hydra ``_partial_: true``).
        l2_weight: ``λ`` of eq. (2).
        critic_steps, critic_warmup_steps, warmup_generator_steps, critic_burst_every: critic schedule, see
            :func:`critic_iterations`.
        clip: critic weight clipping bound (``None`` or 0 disables clipping).
        gp_weight: weight of the gradient penalty (0 disables it).
        num_val_images: images per validation grid.
    """

    def __init__(
        self,
        generator: nn.Module,
        critic: nn.Module,
        *,
        generator_optimizer: OptimizerFactory,
        critic_optimizer: OptimizerFactory,
        l2_weight: float = 0.999,
        critic_steps: int = 5,
        critic_warmup_steps: int = 100,
        warmup_generator_steps: int = 25,
        critic_burst_every: int = 500,
        clip: float | None = 0.01,
        gp_weight: float = 0.0,
        num_val_images: int = 8,
    ) -> None:
        super().__init__()
        if not isinstance(generator, nn.Module) or not isinstance(critic, nn.Module):
            raise TypeError("generator and critic must be torch.nn.Module instances")
        if not 0 <= l2_weight <= 1:
            raise ValueError(f"l2_weight must be in [0, 1], got {l2_weight}")
        for name, value in [("critic_steps", critic_steps), ("critic_warmup_steps", critic_warmup_steps)]:
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if warmup_generator_steps < 0 or critic_burst_every < 0:
            raise ValueError("warmup_generator_steps and critic_burst_every must be >= 0")
        if clip is not None and clip < 0:
            raise ValueError(f"clip must be >= 0 or null, got {clip}")
        if gp_weight < 0:
            raise ValueError(f"gp_weight must be >= 0, got {gp_weight}")
        self.automatic_optimization = False
        self.generator, self.critic = generator, critic
        self.generator_optimizer, self.critic_optimizer = generator_optimizer, critic_optimizer
        self.l2_weight = float(l2_weight)
        self.schedule = dict(
            critic_steps=critic_steps,
            critic_warmup_steps=critic_warmup_steps,
            warmup_generator_steps=warmup_generator_steps,
            critic_burst_every=critic_burst_every,
        )
        self.clip = float(clip) if clip else None
        self.gp_weight = float(gp_weight)
        self.num_val_images = int(num_val_images)
        # Progress of the critic schedule, saved with the weights so a resumed run continues where it stopped.
        self.register_buffer("generator_steps", torch.zeros((), dtype=torch.long))
        self.register_buffer("critic_count", torch.zeros((), dtype=torch.long))

    def forward(self, composite: torch.Tensor) -> torch.Tensor:
        return self.generator(composite)

    def configure_optimizers(self):
        return [self.generator_optimizer(self.generator.parameters()), self.critic_optimizer(self.critic.parameters())]

    # ------------------------------------------------------------------------------------------------
    def critic_loss(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``E[D(fake)] − E[D(real)]`` (minimised by the critic; eq. 4 with the sign of a loss) plus the penalty."""
        d_real, d_fake = self.critic(real).mean(), self.critic(fake).mean()
        loss = d_fake - d_real
        logs = {"train/wasserstein": (d_real - d_fake).detach()}
        if self.gp_weight > 0:
            eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
            penalty = gradient_penalty(self.critic, real, fake, eps)
            loss = loss + self.gp_weight * penalty
            logs["train/gradient_penalty"] = penalty.detach()
        logs["train/critic_loss"] = loss.detach()
        return loss, logs

    def generator_loss(self, fake: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Eq. (2): ``λ·mean((G(x) − x_g)²) + (1 − λ)·(−E[D(G(x))])`` on the ``[-1, 1]`` scale."""
        l2 = F.mse_loss(2 * fake - 1, 2 * target - 1)
        adv = -self.critic(fake).mean()
        loss = self.l2_weight * l2 + (1 - self.l2_weight) * adv
        return loss, {"train/l2": l2.detach(), "train/adversarial": adv.detach(), "train/generator_loss": loss.detach()}

    @torch.no_grad()
    def clip_critic(self) -> None:
        if self.clip is not None:
            for p in self.critic.parameters():
                p.clamp_(-self.clip, self.clip)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        opt_g, opt_d = self.optimizers()
        x, y = batch["composite"], batch["target"]

        self.toggle_optimizer(opt_d)
        with torch.no_grad():
            fake = self.generator(x)
        loss_d, logs = self.critic_loss(y, fake)
        opt_d.zero_grad(set_to_none=True)
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)
        self.clip_critic()
        self.critic_count += 1

        if int(self.critic_count) >= critic_iterations(int(self.generator_steps), **self.schedule):
            self.toggle_optimizer(opt_g)
            loss_g, logs_g = self.generator_loss(self.generator(x), y)
            opt_g.zero_grad(set_to_none=True)
            self.manual_backward(loss_g)
            opt_g.step()
            self.untoggle_optimizer(opt_g)
            self.generator_steps += 1
            self.critic_count.zero_()
            logs.update(logs_g)
        logs["train/generator_steps"] = self.generator_steps.float()
        self.log_dict(logs, prog_bar=False, on_step=True, on_epoch=False, batch_size=x.shape[0])

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        x, y = batch["composite"], batch["target"]
        fake = self.generator(x)
        mse = F.mse_loss(fake.float(), y.float())
        logs = {
            "val/mse": mse,
            "val/psnr": -10 * torch.log10(mse.clamp_min(1e-12)),
            "val/mse_composite": F.mse_loss(x.float(), y.float()),
        }
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True)

    @torch.no_grad()
    def image_grids(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Panels for the validation image grid: composite ``x``, blended ``G(x)``, ground truth ``x_g``."""
        x, y = batch["composite"][: self.num_val_images], batch["target"][: self.num_val_images]
        return {"composite": x, "blended": self.generator(x).clamp(0, 1), "target": y}
