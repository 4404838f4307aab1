"""Data loading: image and mask IO helpers (datasets and data modules live here too)."""

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
    "atomic_output",
    "read_image",
    "read_mask",
    "save_side_by_side",
    "write_curves",
    "write_gif",
    "write_image",
]
