"""The FusionVAE data module: batches of a training and an evaluation data set that the config builds.

The data module knows no data set by name. Its config names two data set classes as Hydra partials
(``_partial_: true``), ``train_set`` and ``eval_set``, with what is particular to each split (``train: true``, a
flip probability, ...); every other key of the config that the data module does not take itself (the root folder,
the image size, the view options) goes to both. Swapping a data set is therefore a config change::

    python train.py experiment=fusionvae_celeba data.root=PATH data.eval_set.split=val   # CelebA's val partition
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from fusion.data.base import FusionSet
from fusion.data.checks import check_int
from fusion.data.collate import EvalCollate, Keyed, TrainCollate, ValCollate
from fusion.data.samplers import EpochSampler

__all__ = ["FusionDataModule"]

#: What builds a data set: a class or a ``functools.partial`` of one (Hydra's ``_partial_: true``).
DataSetFactory = Callable[..., FusionSet]


def build_data_set(factory: DataSetFactory, what: str, shared: dict[str, Any], **fixed: Any) -> FusionSet:
    """``factory(**shared, **fixed)``, where a keyword the partial ``factory`` sets itself wins over ``shared``.

    ``fixed`` (the seed and ``max_inputs``) belong to the data module, so a partial may not set them.

    Raises:
        TypeError: ``factory`` is not callable or does not build a :class:`~fusion.data.base.FusionSet`.
        ValueError: the partial sets one of ``fixed``.
    """
    if not callable(factory):
        raise TypeError(f"{what} must be a data set class or partial (_partial_: true), got {type(factory).__name__}")
    own = dict(getattr(factory, "keywords", None) or {})
    clash = sorted(set(own) & set(fixed))
    if clash:
        raise ValueError(f"{what} sets {', '.join(clash)}; set data.{clash[0]} instead, which both data sets share")
    data = factory(**{k: v for k, v in shared.items() if k not in own}, **fixed)
    if not isinstance(data, FusionSet):
        raise TypeError(f"{what} built a {type(data).__name__}; expected a fusion.data FusionSet")
    return data


class FusionDataModule(L.LightningDataModule):
    """Batches of two FusionVAE data sets (FusionMNIST, FusionCelebA, FusionT-LESS, FusionDigits, ...).

    Batches are dicts ``{"target": (B, C, H, W), "inputs": (B, K, C, H, W)}`` in [0, 1] with one ``K`` per batch:

    * :meth:`train_dataloader`: ``K`` uniform in ``{0, ..., max_inputs}`` for every batch (Section 5.4); items and
      order are redrawn every epoch from ``(seed, epoch, index)`` (:class:`~fusion.data.samplers.EpochSampler`),
      so a run is reproducible and resumes with the same data;
    * :meth:`val_dataloader`: the first ``val_items`` evaluation items in order, ``K = batch_index mod
      (max_inputs + 1)`` (every ``K`` appears once there are at least ``max_inputs + 1`` batches);
    * :meth:`eval_dataloader` / :meth:`test_dataloader`: evaluation items with all ``max_inputs`` views, fixed by
      ``(seed, index)``.

    Under DDP run the trainer with ``use_distributed_sampler=false``: the samplers shard across ranks themselves.

    Args:
        train_set, eval_set: build the training and the evaluation data set (a class or a partial of one), called
            with ``shared`` (less what the partial sets itself), ``seed`` and ``max_inputs``.
        batch_size: batch size of every loader (``eval_dataloader`` may override it).
        max_inputs: views per item, ``K_max`` (3).
        num_workers, pin_memory: loader settings.
        seed: seeds every item, the shuffling and the per-batch K (``None``: 0).
        val_items: at most this many evaluation items are used for validation.
        **shared: options both data sets take, e.g. ``root``, ``image_size``, ``noise_std``, ``binarize``.

    Example:
        >>> from functools import partial
        >>> from fusion.data.digits import FusionDigits
        >>> dm = FusionDataModule(
        ...     partial(FusionDigits, train=True), partial(FusionDigits, train=False),
        ...     batch_size=4, num_workers=0, image_size=8,
        ... )
        >>> batch = next(iter(dm.eval_dataloader(limit=4)))
        >>> tuple(batch["target"].shape), tuple(batch["inputs"].shape)
        ((4, 1, 8, 8), (4, 3, 1, 8, 8))
    """

    #: The config entries that receive this module's ``**shared`` options (the command line checks those options
    #: against these data sets' signatures before anything is built).
    SHARES_OPTIONS_WITH = ("train_set", "eval_set")

    def __init__(
        self,
        train_set: DataSetFactory,
        eval_set: DataSetFactory,
        *,
        batch_size: int = 32,
        max_inputs: int = 3,
        num_workers: int = 4,
        pin_memory: bool = False,
        seed: int | None = 0,
        val_items: int = 1000,
        **shared: Any,
    ) -> None:
        super().__init__()
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.val_items = check_int("val_items", val_items, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.seed = 0 if seed is None else check_int("seed", seed, 0)
        self.max_inputs = check_int("max_inputs", max_inputs, 1)
        self.pin_memory = bool(pin_memory)
        fixed = dict(seed=self.seed, max_inputs=self.max_inputs)
        self.train_set = build_data_set(train_set, "train_set", shared, **fixed)
        self.eval_set = build_data_set(eval_set, "eval_set", shared, **fixed)

    def _loader(
        self,
        dataset: FusionSet,
        sampler: EpochSampler,
        collate: Any,
        batch_size: int,
        drop_last: bool,
        persistent: bool = False,
    ) -> DataLoader:
        return DataLoader(
            Keyed(dataset, len(dataset)),
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=collate,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            drop_last=drop_last,
            persistent_workers=persistent and self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches with a random ``K`` each; the sampler follows Lightning's epoch.

        Workers persist across epochs (they keep their cache of decoded T-LESS occluders); the keys, and with them
        every random draw, come from the sampler in the main process.
        """
        n = len(self.train_set)
        sampler = EpochSampler(n, shuffle=True, seed=self.seed)
        collate = TrainCollate(self.max_inputs, self.seed)
        drop_last = n >= self.batch_size
        return self._loader(self.train_set, sampler, collate, self.batch_size, drop_last, persistent=True)

    def val_dataloader(self) -> DataLoader:
        """The first ``val_items`` evaluation items in order; ``K`` cycles with the batch index."""
        sampler = EpochSampler(min(self.val_items, len(self.eval_set)), shuffle=False, follow_epoch=False)
        collate = ValCollate(self.max_inputs, self.batch_size, sampler.world_size)
        return self._loader(self.eval_set, sampler, collate, self.batch_size, drop_last=False)

    def eval_dataloader(self, batch_size: int | None = None, limit: int | None = None) -> DataLoader:
        """Evaluation items ``0 .. limit-1`` (default: all) in order, with all ``max_inputs`` views each."""
        batch_size = self.batch_size if batch_size is None else check_int("batch_size", batch_size, 1)
        n = len(self.eval_set) if limit is None else min(check_int("limit", limit, 1), len(self.eval_set))
        sampler = EpochSampler(n, shuffle=False, follow_epoch=False)
        return self._loader(self.eval_set, sampler, EvalCollate(self.max_inputs), batch_size, drop_last=False)

    def test_dataloader(self) -> DataLoader:
        """Same as :meth:`eval_dataloader` with the defaults."""
        return self.eval_dataloader()
