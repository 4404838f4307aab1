"""Data loading: image and mask IO helpers, the Transient Attributes pairs (GP-GAN) and the FusionVAE data sets
(FusionMNIST, FusionCelebA, FusionT-LESS, FusionDigits) with their data module."""

from fusion.data.fusion_sets import FusionCelebA, FusionDataModule, FusionDigits, FusionMNIST, FusionTLESS
from fusion.data.io import (
    atomic_output,
    read_image,
    read_mask,
    save_side_by_side,
    write_curves,
    write_gif,
    write_image,
)

__all__ = [
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
