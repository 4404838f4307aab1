"""Data loading: image and mask IO helpers, the Transient Attributes pairs (GP-GAN), and the FusionVAE data sets
(FusionMNIST, FusionCelebA, FusionT-LESS, FusionDigits) with the data module that batches any two of them.

One module per job: :mod:`~fusion.data.idx` (the MNIST file format), :mod:`~fusion.data.base` (keyed items and
ellipse-masked views), one module per data set (:mod:`~fusion.data.mnist`, :mod:`~fusion.data.digits`,
:mod:`~fusion.data.celeba`, :mod:`~fusion.data.tless`), :mod:`~fusion.data.geometry` (warps and pasting),
:mod:`~fusion.data.collate`, :mod:`~fusion.data.samplers` (shared by both data modules),
:mod:`~fusion.data.datamodule`, and :mod:`~fusion.data.synthetic_layouts`, which writes tiny stand-ins of the
published layouts for tests, benchmarks and smoke runs.
"""

from fusion.data.celeba import FusionCelebA
from fusion.data.datamodule import FusionDataModule
from fusion.data.digits import FusionDigits
from fusion.data.io import (
    atomic_output,
    read_image,
    read_mask,
    save_side_by_side,
    write_curves,
    write_gif,
    write_image,
)
from fusion.data.mnist import FusionMNIST
from fusion.data.samplers import EpochSampler
from fusion.data.tless import FusionTLESS

__all__ = [
    "EpochSampler",
    "FusionCelebA",
    "FusionDataModule",
    "FusionDigits",
    "FusionMNIST",
    "FusionTLESS",
    "atomic_output",
    "read_image",
    "read_mask",
    "save_side_by_side",
    "write_curves",
    "write_gif",
    "write_image",
]
