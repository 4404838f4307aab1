"""Training callbacks shared by the LightningModules.

:class:`ImageGridLogger` works with any LightningModule that has an ``image_grids(batch)`` method returning named
``(B, C, H, W)`` panels in [0, 1]: at each validation it lays the first batch out as a grid (one row per sample,
one column per panel) and hands it to every logger — ``log_image`` for Weights & Biases, ``add_image`` for
TensorBoard, and a PNG under ``<log_dir>/images/`` for any other logger (e.g. CSV).

:class:`AtomicCheckpointIO` is the trainer's checkpoint writer: every checkpoint (``last.ckpt``, the best one, the
requeue checkpoints) is written to a temporary file beside its target, flushed to disk and renamed over it, so a job
killed mid-write (pre-emption, a time limit) leaves the previous checkpoint intact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO

from fusion.data.io import atomic_output, write_image

__all__ = ["AtomicCheckpointIO", "ImageGridLogger", "image_grid"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` into a temporary file in the checkpoint's own folder, ``fsync``, then ``os.replace``.

    Lightning's own writer stages the file in the system's temporary folder and moves it; when that folder is on
    another file system than the run (a node-local ``/tmp``, a shared run folder) the move is a copy into the
    target, which a kill can cut short. Here the rename never leaves the folder, so the target always holds either
    the old or the new checkpoint. Paths with a URL scheme (``s3://``, ...) are left to Lightning.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        import os

        with atomic_output(Path(path)) as tmp, open(tmp, "wb") as handle:
            torch.save(checkpoint, handle)
            handle.flush()
            os.fsync(handle.fileno())


def image_grid(panels: dict[str, torch.Tensor], *, padding: int = 2) -> torch.Tensor:
    """``(C, H', W')`` grid with one row per sample and one column per panel (all ``(B, C, H, W)`` in [0, 1])."""
    from torchvision.utils import make_grid

    tensors = [p.detach().float().cpu().clamp(0, 1) for p in panels.values()]
    if not tensors:
        raise ValueError("image_grid needs at least one panel")
    channels = max(t.shape[1] for t in tensors)
    tensors = [t.expand(-1, channels, -1, -1) for t in tensors]
    rows = torch.stack(tensors, dim=1).flatten(0, 1)  # sample-major: each row holds one sample's panels
    return make_grid(rows, nrow=len(tensors), padding=padding, pad_value=1.0)


class ImageGridLogger(L.Callback):
    """Log a grid of the module's ``image_grids(batch)`` for the first validation batch of each validation run.

    Args:
        key: name of the logged image.
        every_n_epochs: log every this many validation runs.
    """

    def __init__(self, key: str = "val/samples", every_n_epochs: int = 1) -> None:
        self.key, self.every_n_epochs = key, max(1, int(every_n_epochs))
        self.written: list[Path] = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if batch_idx != 0 or trainer.sanity_checking or not trainer.is_global_zero:
            return
        if trainer.current_epoch % self.every_n_epochs or not hasattr(pl_module, "image_grids"):
            return
        grid = image_grid(pl_module.image_grids(batch))
        step = trainer.global_step
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):  # Weights & Biases
                logger.log_image(key=self.key, images=[grid.permute(1, 2, 0).numpy()])
            elif hasattr(getattr(logger, "experiment", None), "add_image"):  # TensorBoard
                logger.experiment.add_image(self.key, grid, global_step=step)
            elif getattr(logger, "log_dir", None):
                name = f"{self.key.replace('/', '_')}_step{step:08d}.png"
                self.written.append(write_image(Path(logger.log_dir) / "images" / name, grid))
