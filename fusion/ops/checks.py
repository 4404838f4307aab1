"""Input validation shared by the public entry points (never called inside iteration loops)."""

from __future__ import annotations

import torch


def check_image(x: object, name: str, *, channels: int | None = None) -> torch.Tensor:
    """Check that ``x`` is a finite ``(B, C, H, W)`` floating-point tensor; return it.

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: wrong rank, wrong channel count, empty axes, or NaN/Inf values — the message names ``name``.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not torch.is_floating_point(x):
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim != 4:
        raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(x.shape)}")
    if min(x.shape) == 0:
        raise ValueError(f"{name} has an empty axis: shape {tuple(x.shape)}")
    if channels is not None and x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channel(s), got {x.shape[1]}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf values")
    return x


def check_same_size(**tensors: torch.Tensor) -> None:
    """Raise ``ValueError`` unless all tensors share H and W (names and sizes listed in the message)."""
    sizes = {k: tuple(v.shape[-2:]) for k, v in tensors.items()}
    if len(set(sizes.values())) > 1:
        listed = ", ".join(f"{k} {h}x{w}" for k, (h, w) in sizes.items())
        raise ValueError(f"image sizes differ: {listed}")


def check_batch(**tensors: torch.Tensor) -> int:
    """Batch sizes must agree, or be 1 (broadcast); return the common batch size."""
    sizes = {k: v.shape[0] for k, v in tensors.items()}
    big = {b for b in sizes.values() if b != 1}
    if len(big) > 1:
        raise ValueError(f"batch sizes differ: {sizes}")
    return big.pop() if big else 1


def check_mask(mask: object, name: str = "mask") -> torch.Tensor:
    """A ``(B, 1, H, W)`` finite tensor in [0, 1] with, per sample, some pixel in and some pixel out (> 0.5)."""
    mask = check_image(mask, name, channels=1)
    if bool((mask < 0).any()) or bool((mask > 1).any()):
        raise ValueError(f"{name} values must lie in [0, 1], got range [{mask.min().item():g}, {mask.max().item():g}]")
    inside = (mask > 0.5).flatten(1)
    if not bool(inside.any(1).all()):
        raise ValueError(f"{name} is empty (no pixel > 0.5) in at least one batch sample")
    if bool(inside.all(1).any()):
        raise ValueError(f"{name} covers the whole image in at least one batch sample; nothing to blend into")
    return mask


def check_positive(value: float, name: str) -> None:
    if not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def check_max_iter(value: object, name: str = "max_iter") -> int:
    """An iteration cap: an integer ``>= 1`` (a cap of 0 would return the starting point as the answer).

    Raises:
        ValueError: ``value`` is not an integer (booleans included) or is below 1; the message names ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_tol(value: object, name: str = "tol") -> float:
    """A tolerance: a finite real number ``> 0``.

    Raises:
        ValueError: ``value`` is not a real number, or not finite and positive; the message names ``name``.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number > 0, got {value!r}")
    if not 0 < float(value) < float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_blend_inputs(fg: object, bg: object, mask: object) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Check the ``(fg, bg, mask)`` of a blending method and return them expanded to one batch size.

    ``fg`` and ``bg`` are ``(B, C, H, W)`` images with the same channels, dtype and device, ``mask`` a
    ``(B, 1, H, W)`` mask in [0, 1] of the same size (any of them may have batch 1 against a larger batch); the
    mask is returned in the images' dtype.

    Raises:
        ValueError: shapes, channels, sizes or batch sizes that do not fit, a mask outside [0, 1].
        TypeError: not tensors, or fg and bg of different dtype or device.
    """
    check_image(fg, "fg")
    check_image(bg, "bg")
    if fg.shape[1] != bg.shape[1]:
        raise ValueError(f"fg and bg channel counts differ: {fg.shape[1]} vs {bg.shape[1]}")
    check_mask(mask)
    check_same_size(fg=fg, bg=bg, mask=mask)
    batch = check_batch(fg=fg, bg=bg, mask=mask)
    if fg.dtype != bg.dtype or fg.device != bg.device:
        raise TypeError(f"fg and bg must share dtype and device, got {fg.dtype}/{fg.device} and {bg.dtype}/{bg.device}")
    c = fg.shape[1]
    return (
        fg.expand(batch, c, -1, -1),
        bg.expand(batch, c, -1, -1),
        mask.to(fg.dtype).expand(batch, 1, -1, -1),
    )
