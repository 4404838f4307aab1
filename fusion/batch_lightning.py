"""Batch inference over several processes: Lightning's predict loop (``devices=N``, ``num_nodes=M``).

:func:`predict_items` runs the items of :func:`fusion.batch.infer_batch` with ``Trainer.predict``: the batches
(items of one size, grouped from their file headers before anything is decoded) are dealt out to the ranks
without padding, so each item is computed by exactly one process; a :class:`~lightning.pytorch.callbacks.
BasePredictionWriter` writes each item's files and stamp in the rank that computed it, and keeps the rank's rows in
``DIR/.parts/rank<r>.csv``; global rank 0 merges them into ``results.csv``. On CPUs the processes talk over gloo
(``ddp_spawn``); on GPUs, NCCL (``ddp``, one process per device, as ``torchrun`` or SLURM start them for several
nodes). Every rank must see the same ``out_dir`` (a shared file system across nodes).
"""

from __future__ import annotations

import csv
import logging
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import BasePredictionWriter
from PIL import Image

from fusion.batch_writer import OutputWriter, Progress, writer_threads
from fusion.data.io import atomic_output

__all__ = ["RankBatches", "plan_batches", "predict_items"]

PARTS_DIR = ".parts"


def _rows_to_csv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]) if rows else ["id"])
        writer.writeheader()
        writer.writerows(rows)


def _quiet_lightning() -> None:
    """Batch mode reports items, not the trainer: silence Lightning's start-up notes (accelerators, tips) and the
    warning about our own batch sampler (it deals every item once, on purpose) in this process."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*custom batch sampler.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")


def _as_list(sample: Any) -> Any:
    return sample


def _header(path: Path) -> tuple[Any, ...] | None:
    try:
        with Image.open(path) as image:
            return image.size, image.mode
    except Exception:  # an unreadable file is read (and reported) by the dataset
        return None


def plan_batches(dataset: torch.utils.data.Dataset, batch_size: int) -> list[list[int]]:
    """Dataset positions grouped into batches of at most ``batch_size`` items whose fg and bg headers agree."""
    groups: dict[Any, list[int]] = {}
    batches: list[list[int]] = []
    for k, (_, item) in enumerate(dataset.items):
        key = None if item.error else (_header(item.inputs["fg"]), _header(item.inputs["bg"]))
        if key is None or None in key:
            batches.append([k])
            continue
        group = groups.setdefault(key, [])
        group.append(k)
        if len(group) == batch_size:
            batches.append(groups.pop(key))
    batches.extend(groups.values())
    return sorted(batches)


class RankBatches(torch.utils.data.Sampler):
    """The batches of one rank: ``batches[rank::world]``, without padding (a rank may get one batch fewer).

    A rank left without work gets one empty batch (the predict loop refuses a rank with none): no item is repeated.

    Example:
        >>> batches = [[0, 1], [2, 3], [4]]
        >>> [list(RankBatches(batches, rank, world=2)) for rank in (0, 1)]
        [[[0, 1], [4]], [[2, 3]]]
        >>> list(RankBatches(batches[:1], rank=1, world=2))
        [[]]
    """

    def __init__(self, batches: Sequence[list[int]], rank: int, world: int) -> None:
        self.batches = [list(b) for b in batches[rank::world]] or [[]]

    def __iter__(self):  # noqa: ANN204
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _Predictor(L.LightningModule):
    """Computes a batch of items: the outcomes of :meth:`fusion.batch._Runner.compute_groups`."""

    def __init__(self, runner: Any, dataset: torch.utils.data.Dataset, batches: Sequence[list[int]], workers: int):
        super().__init__()
        self.runner, self.dataset, self.batches, self.workers = runner, dataset, list(batches), workers
        self.networks = torch.nn.ModuleDict({k: v for k, v in runner.params.items() if isinstance(v, torch.nn.Module)})

    def predict_dataloader(self) -> torch.utils.data.DataLoader:
        rank, world = self.trainer.global_rank, self.trainer.world_size
        mine = RankBatches(self.batches, rank, world)  # no padding: an item belongs to one rank
        return torch.utils.data.DataLoader(
            self.dataset, batch_sampler=mine, collate_fn=_as_list, num_workers=self.workers
        )

    def setup(self, stage: str) -> None:
        _quiet_lightning()  # in every rank's process (spawned ranks start with fresh logging and warning filters)

    def predict_step(self, batch: list[dict[str, Any]], batch_idx: int) -> list[dict[str, Any]]:
        self.runner.device = self.device
        self.runner.params.update(dict(self.networks.items()))
        return self.runner.compute_groups(batch)


def _count_rows(parts: Path) -> int:
    """Rows in the ranks' part files so far (each is replaced whole, so a read never sees half a file)."""
    count = 0
    for part in parts.glob("rank*.csv"):
        try:
            with open(part, newline="") as handle:
                count += max(0, sum(1 for _ in handle) - 1)
        except OSError:
            continue
    return count


class _RowWriter(BasePredictionWriter):
    """Writes each outcome's files and stamp (:meth:`fusion.batch._Runner.finish`, in writer threads while the
    next batch computes) and the rank's rows; global rank 0 shows the progress of all ranks."""

    def __init__(self, runner: Any, parts: Path, total: int, window: int) -> None:
        super().__init__(write_interval="batch")
        self.runner, self.parts, self.total, self.window = runner, parts, total, window
        self.rows: list[dict[str, Any]] = []
        self.writer: OutputWriter | None = None
        self.progress: Progress | None = None

    def on_predict_start(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.writer = OutputWriter(self.runner.finish, lambda _, row: self.rows.append(row),
                                   workers=writer_threads(), window=self.window)  # fmt: skip
        if trainer.global_rank == 0:
            self.progress = Progress(self.total)

    def write_on_batch_end(self, trainer, pl_module, prediction, batch_indices, batch, batch_idx, dataloader_idx):  # noqa: ANN001
        for outcome in prediction:
            self.writer.submit(None, outcome)
        self._flush(trainer)

    def _flush(self, trainer) -> None:  # noqa: ANN001
        _rows_to_csv(self.parts / f"rank{trainer.global_rank}.csv", self.rows)
        if self.progress is not None:
            self.progress.update_to(_count_rows(self.parts))

    def on_predict_end(self, trainer, pl_module) -> None:  # noqa: ANN001
        self.writer.close()
        self._flush(trainer)
        trainer.strategy.barrier()
        if self.progress is not None:
            self.progress.update_to(_count_rows(self.parts))
            self.progress.close()

    def on_exception(self, trainer, pl_module, exception) -> None:  # noqa: ANN001
        if self.writer is not None:
            self.writer.__exit__(type(exception), exception, None)
        if self.progress is not None:
            self.progress.close()


def predict_items(runner: Any, dataset: torch.utils.data.Dataset, options: dict[str, Any]) -> bool:
    """Run ``dataset``'s items through ``Trainer.predict``; fill ``runner.rows`` (on global rank 0).

    ``runner`` is :class:`fusion.batch._Runner` (``compute_groups``, ``finish``, ``items``, ``rows``, ``out_dir``,
    ``device``, ``params``); ``dataset`` its :class:`fusion.batch._ItemDataset`.

    Returns:
        Whether this process is global rank 0 (the one that writes ``results.csv`` and the summary).
    """
    _quiet_lightning()
    parts = runner.out_dir / PARTS_DIR
    accelerator = "cpu" if runner.device.type == "cpu" else "gpu"
    devices, num_nodes = options["devices"] or 1, options["num_nodes"]
    strategy = options["strategy"]
    if strategy == "auto" and (devices > 1 or num_nodes > 1):
        strategy = "ddp_spawn" if accelerator == "cpu" and num_nodes == 1 else "ddp"
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=devices,
        num_nodes=num_nodes,
        strategy=strategy,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
        inference_mode=False,  # methods that optimise (deep_blend) need autograd inside their call
        callbacks=[_RowWriter(runner, parts, len(dataset), 2 * options["batch_size"])],
    )
    if trainer.global_rank == 0:
        shutil.rmtree(parts, ignore_errors=True)  # rows of an earlier, interrupted run
    batches = plan_batches(dataset, options["batch_size"])
    module = _Predictor(runner, dataset, batches, options["num_workers"])
    trainer.predict(module, return_predictions=False)
    if trainer.global_rank != 0:
        return False
    index = {item.id: k for k, item in enumerate(runner.items)}
    for part in sorted(parts.glob("rank*.csv")):
        with open(part, newline="") as handle:
            for row in csv.DictReader(handle):
                runner.rows[index[row["id"]]] = dict(row)
    shutil.rmtree(parts, ignore_errors=True)
    return True
