"""Data loading: image and mask IO helpers, the Transient Attributes pairs (GP-GAN), and the FusionVAE data sets
(FusionMNIST, FusionCelebA, FusionT-LESS, FusionDigits) with the data module that batches any two of them.

One module per job: :mod:`~fusion.data.idx` (the MNIST file format), :mod:`~fusion.data.base` (keyed items and
ellipse-masked views), one module per data set (:mod:`~fusion.data.mnist`, :mod:`~fusion.data.digits`,
:mod:`~fusion.data.celeba`, :mod:`~fusion.data.tless`), :mod:`~fusion.data.geometry` (warps and pasting),
:mod:`~fusion.data.collate`, :mod:`~fusion.data.samplers` (shared by both data modules),
:mod:`~fusion.data.datamodule`, and :mod:`~fusion.data.synthetic_layouts`, which writes tiny stand-ins of the
published layouts for tests, benchmarks and smoke runs.
"""

from fusion.data.io import (
    atomic_output,
    read_image,
    read_mask,
    save_side_by_side,
    write_curves,
    write_gif,
    write_image,
)

# The data sets and the data module are imported on first use: the data module needs Lightning, whose import takes
# seconds, and blending an image (infer.py, batch mode) needs only the IO helpers.
_LAZY = ("EpochSampler", "FusionCelebA", "FusionDataModule", "FusionDigits", "FusionMNIST", "FusionTLESS")


def __getattr__(name: str):  # noqa: ANN202 - module attribute hook (PEP 562)
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from fusion.data.celeba import FusionCelebA
    from fusion.data.datamodule import FusionDataModule
    from fusion.data.digits import FusionDigits
    from fusion.data.mnist import FusionMNIST
    from fusion.data.samplers import EpochSampler
    from fusion.data.tless import FusionTLESS

    found = {
        "EpochSampler": EpochSampler,
        "FusionCelebA": FusionCelebA,
        "FusionDataModule": FusionDataModule,
        "FusionDigits": FusionDigits,
        "FusionMNIST": FusionMNIST,
        "FusionTLESS": FusionTLESS,
    }
    globals().update(found)
    return found[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
