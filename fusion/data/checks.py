"""Argument checks shared by the FusionVAE data sets and their data module (``ValueError``/``TypeError`` naming the
bad value and what was expected)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["check_int", "check_range", "check_root"]


def check_int(name: str, value: Any, low: int) -> int:
    """``value`` as an ``int`` if it is an integer (not a bool) of at least ``low``.

    Example:
        >>> check_int("batch_size", 4, 1)
        4
    """
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return int(value)


def check_range(name: str, value: Sequence[float], low: float, high: float) -> tuple[float, float]:
    """``value`` as a pair ``(a, b)`` of floats with ``low <= a <= b <= high``.

    Example:
        >>> check_range("scale", [0.9, 1.1], 1e-3, 1e3)
        (0.9, 1.1)
    """
    try:
        a, b = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}") from None
    if not (low <= a <= b <= high):
        raise ValueError(f"{name} must satisfy {low} <= low <= high <= {high}, got {value!r}")
    return a, b


def check_root(root: Any, what: str, layout: str) -> Path:
    """``root`` as an existing folder; the error names ``what`` it is and the ``layout`` expected there.

    Raises:
        ValueError: ``root`` is unset (``None``, empty or Hydra's ``???``).
        FileNotFoundError: ``root`` is not a folder.
    """
    if root is None or str(root) in ("", "???"):
        raise ValueError(f"{what} is not set; pass the dataset folder ({layout})")
    path = Path(os.fspath(root)).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist; {layout}")
    return path
