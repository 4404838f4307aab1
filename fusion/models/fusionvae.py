"""Training of FusionVAE and its baselines (Duffhauss et al., §4.2, §5.4, supplement A) as one LightningModule.

The loss of a batch is the negative of the conditional ELBO of eq. (8), per sample in nats:

    −log p(y | x, z) + β · Σ_l α_l · KL(q(z_l | y, z_<l) ‖ p(z_l | x, z_<l)) + λ · SR,

with ``z ~ q``. ``β`` is the KL warm-up (:func:`kl_weight`): held at ``kl_min`` for the first ``kl_constant_fraction``
of the training steps, then raised linearly to 1 by ``kl_warmup_fraction`` of them. ``α_l`` is the KL balancing of
NVAE (Vahdat & Kautz 2020), applied during the warm-up only (:func:`kl_balance_coefficients`): groups that carry
more KL are penalised more, which keeps every latent group in use and avoids posterior collapse. ``SR`` is NVAE's
spectral regulariser (sum of the largest singular values of every convolution), weighted by ``λ`` that moves
log-linearly from ``spectral_weight_init`` to ``spectral_weight`` over the warm-up. The optimizer is AdaMax with
cosine annealing of the learning rate from its initial value (0.01) to ``lr_min`` (1e-4) over all steps.

The deterministic FCN baselines train on ``−log p(y | x)`` alone (no latent variables, no KL).

Validation batches carry ``K = batch_index mod 4`` inputs; each logs the negative ELBO in bits per dimension and
``MSE_min`` over ``val_samples`` prior samples, per ``K`` and overall (``val/mse_min`` picks the best checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import lightning as L
import torch
from torch import nn

from fusion.metrics import bits_per_dim, mse_min
from fusion.nn.cells import SpectralRegulariser

__all__ = ["FusionModule", "kl_balance_coefficients", "kl_weight"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]


def kl_weight(
    step: int, total_steps: int, *, warmup_fraction: float = 0.3, constant_fraction: float = 1e-4, minimum: float = 1e-4
) -> float:
    """``β`` at optimizer step ``step`` of ``total_steps``: ``minimum`` during the first ``constant_fraction`` of the
    steps, then linear up to 1 at ``warmup_fraction`` of them, 1 afterwards (NVAE's KL warm-up).

    Example:
        >>> schedule = dict(warmup_fraction=0.5, constant_fraction=0.0, minimum=0.0)
        >>> [round(kl_weight(s, 100, **schedule), 2) for s in (0, 25, 50, 80)]
        [0.0, 0.5, 1.0, 1.0]
    """
    warm = warmup_fraction * total_steps
    if warm <= 0:
        return 1.0
    const = constant_fraction * total_steps
    return float(max(minimum, min(1.0, (step - const) / warm)))


def kl_balance_coefficients(kl: Sequence[torch.Tensor], *, floor: float = 0.01) -> torch.Tensor:
    """KL balancing coefficients ``α_l`` (NVAE): proportional to each group's batch-mean KL plus ``floor``, scaled to
    mean 1 and detached from the graph.

    Args:
        kl: ``L`` tensors ``(B,)``, the KL of each latent group.

    Returns:
        ``(L,)`` coefficients with mean 1.

    Example:
        >>> kl_balance_coefficients([torch.tensor([1.0, 1.0]), torch.tensor([3.0, 3.0])], floor=0.0)
        tensor([0.5000, 1.5000])
    """
    per_group = torch.stack([k.detach().float().abs().mean() for k in kl]) + floor
    return per_group / per_group.mean()


class FusionModule(L.LightningModule):
    """FusionVAE, CVAE(+S) or FCN(+S) training with the paper's objective and schedules.

    Batches are dicts with ``inputs`` ``(B, K, C, H, W)`` and ``target`` ``(B, C, H, W)`` (see
    :class:`fusion.data.datamodule.FusionDataModule`).

    Args:
        network: a model with the interface of :mod:`fusion.nn.fusionvae` (``FusionVAE``, ``CVAE`` or ``FCN``).
        optimizer: factory ``params -> Optimizer`` (Hydra ``_partial_: true``; AdaMax, lr 0.01 in the paper).
        lr_min: learning rate at the end of the cosine annealing.
        kl_warmup_fraction, kl_constant_fraction, kl_min: the ``β`` schedule (:func:`kl_weight`).
        kl_balance: apply ``α_l`` balancing during the warm-up.
        spectral_weight, spectral_weight_init: ``λ`` after and at the start of the warm-up (0 disables the term).
        power_iterations: power iterations per step for the spectral norms.
        val_samples: prior samples per validation image for ``MSE_min``.
        num_val_images: rows of the logged sample grid.
        grid_samples: samples per row of the logged grid.
    """

    def __init__(
        self,
        network: nn.Module,
        *,
        optimizer: OptimizerFactory,
        lr_min: float = 1e-4,
        kl_warmup_fraction: float = 0.3,
        kl_constant_fraction: float = 1e-4,
        kl_min: float = 1e-4,
        kl_balance: bool = True,
        spectral_weight: float = 1e-2,
        spectral_weight_init: float = 10.0,
        power_iterations: int = 1,
        val_samples: int = 8,
        num_val_images: int = 8,
        grid_samples: int = 3,
    ) -> None:
        super().__init__()
        if not isinstance(network, nn.Module):
            raise TypeError(f"network must be a torch.nn.Module, got {type(network).__name__}")
        for name in ("is_generative", "sample", "in_channels", "image_size"):
            if not hasattr(network, name):
                raise TypeError(
                    f"network {type(network).__name__} lacks '{name}'; expected a fusion.nn FusionVAE/CVAE/FCN"
                )
        if not 0 <= kl_warmup_fraction <= 1 or not 0 <= kl_constant_fraction <= 1:
            raise ValueError("kl_warmup_fraction and kl_constant_fraction must be in [0, 1]")
        if spectral_weight < 0 or spectral_weight_init < 0:
            raise ValueError("spectral_weight and spectral_weight_init must be >= 0")
        if lr_min < 0 or val_samples < 1 or num_val_images < 1 or grid_samples < 1:
            raise ValueError("lr_min must be >= 0 and val_samples, num_val_images, grid_samples >= 1")
        self.network = network
        self.optimizer_factory = optimizer
        self.lr_min = float(lr_min)
        self.kl_schedule = dict(
            warmup_fraction=float(kl_warmup_fraction),
            constant_fraction=float(kl_constant_fraction),
            minimum=float(kl_min),
        )
        self.kl_balance = bool(kl_balance)
        self.spectral_weight, self.spectral_weight_init = float(spectral_weight), float(spectral_weight_init)
        self.spectral = SpectralRegulariser(network, power_iterations=power_iterations) if spectral_weight > 0 else None
        self.val_samples, self.num_val_images, self.grid_samples = (
            int(val_samples),
            int(num_val_images),
            int(grid_samples),
        )
        self._total_steps: int | None = None

    # ------------------------------------------------------------------------------------------------
    def forward(self, inputs: torch.Tensor, target: torch.Tensor):
        return self.network(inputs, target)

    @property
    def total_steps(self) -> int:
        """Optimizer steps of the whole run (sets the lengths of the warm-up and the cosine annealing)."""
        if self._total_steps is None:
            trainer = getattr(self, "_trainer", None)
            steps = trainer.estimated_stepping_batches if trainer is not None else 1
            self._total_steps = max(1, int(steps) if math.isfinite(steps) else 1)
        return self._total_steps

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.network.parameters())
        base = optimizer.param_groups[0]["lr"]
        ratio = self.lr_min / base if base > 0 else 1.0
        total = self.total_steps

        def cosine(step: int) -> float:
            t = min(step, total) / total
            return ratio + (1 - ratio) * 0.5 * (1 + math.cos(math.pi * t))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------------
    def beta(self) -> float:
        return kl_weight(int(self.global_step), self.total_steps, **self.kl_schedule)

    def spectral_lambda(self, beta: float) -> float:
        if self.spectral_weight == 0 or self.spectral_weight_init == 0:
            return self.spectral_weight
        logs = (1 - beta) * math.log(self.spectral_weight_init) + beta * math.log(self.spectral_weight)
        return math.exp(logs)

    def _dims(self, target: torch.Tensor) -> int:
        return int(target[0].numel())

    def objective(self, inputs: torch.Tensor, target: torch.Tensor, *, beta: float = 1.0, balance: bool = False):
        """``(loss, logs)``: the batch mean of ``−log p(y|x,z) + β Σ α_l KL_l`` (nats) and its parts."""
        out = self.network(inputs, target)
        nll = -out.likelihood.log_prob(target).float()
        logs = {"nll_bpd": bits_per_dim(nll.mean(), self._dims(target))}
        loss = nll
        if out.kl:
            kl_groups = [k.float() for k in out.kl]
            kl = torch.stack(kl_groups).sum(0)
            if balance and beta < 1:
                alpha = kl_balance_coefficients(kl_groups)
                weighted = (torch.stack(kl_groups) * alpha[:, None]).sum(0)
            else:
                weighted = kl
            loss = nll + beta * weighted
            logs["kl_bpd"] = bits_per_dim(kl.mean(), self._dims(target))
            logs["elbo_bpd"] = bits_per_dim((nll + kl).mean(), self._dims(target))
        return loss.mean(), logs

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        inputs, target = batch["inputs"], batch["target"]
        beta = self.beta()
        loss, parts = self.objective(inputs, target, beta=beta, balance=self.kl_balance)
        logs = {f"train/{k}": v.detach() for k, v in parts.items()}
        if self.spectral is not None:
            weight = self.spectral_lambda(beta)
            penalty = self.spectral()
            loss = loss + weight * penalty
            logs["train/spectral"] = penalty.detach()
        logs.update({"train/loss": loss.detach(), "train/beta": torch.tensor(beta), "train/k": float(inputs.shape[1])})
        self.log_dict(logs, on_step=True, on_epoch=False, batch_size=target.shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        inputs, target = batch["inputs"], batch["target"]
        k = inputs.shape[1]
        _, parts = self.objective(inputs, target)
        bound = parts.get("elbo_bpd", parts["nll_bpd"])
        samples = self.network.sample(inputs, num_samples=self.val_samples)
        err = mse_min(samples, target).mean()
        logs = {
            "val/bound_bpd": bound,
            f"val/bound_bpd_k{k}": bound,
            "val/mse_min": err,
            f"val/mse_min_k{k}": err,
        }
        self.log_dict(logs, on_step=False, on_epoch=True, batch_size=target.shape[0], sync_dist=True)

    @torch.no_grad()
    def image_grids(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Panels for the validation grid: the (up to three) inputs, the target and ``grid_samples`` samples."""
        inputs, target = batch["inputs"][: self.num_val_images], batch["target"][: self.num_val_images]
        panels = {}
        for i in range(max(3, inputs.shape[1])):
            panels[f"input{i + 1}"] = inputs[:, i] if i < inputs.shape[1] else torch.zeros_like(target)
        panels["target"] = target
        samples = self.network.sample(inputs, num_samples=self.grid_samples)
        for s in range(samples.shape[0]):
            panels[f"sample{s + 1}"] = samples[s].clamp(0, 1)
        return panels
