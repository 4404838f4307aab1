"""Input validation shared by the public entry points (never called inside iteration loops)."""

from __future__ import annotations

import math

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
    _finite_range(x, name)
    return x


def _finite_range(x: torch.Tensor, name: str) -> tuple[float, float]:
    """``(min, max)`` of ``x`` in one pass and one host sync, or ``ValueError`` for NaN or Inf values (a NaN
    propagates to both, an infinity is the min or the max; a fraction of the cost of ``isfinite(x).all()``)."""
    low, high = torch.stack(torch.aminmax(x.detach())).tolist()
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"{name} contains NaN or Inf values")
    return low, high


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
    if isinstance(mask, torch.Tensor) and torch.is_floating_point(mask) and mask.ndim == 4 and min(mask.shape) > 0:
        if mask.shape[1] != 1:
            raise ValueError(f"{name} must have 1 channel(s), got {mask.shape[1]}")
        low, high = _finite_range(mask, name)
    else:
        mask = check_image(mask, name, channels=1)  # raises the error of what is wrong
        low, high = _finite_range(mask, name)
    if low < 0 or high > 1:
        raise ValueError(f"{name} values must lie in [0, 1], got range [{low:g}, {high:g}]")
    return check_mask_coverage(mask, name)


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


def check_same_kind(**tensors: torch.Tensor) -> None:
    """Raise ``TypeError`` unless all tensors share dtype and device (the message lists each one's).

    Example:
        >>> check_same_kind(fg=torch.zeros(1), bg=torch.zeros(1))
    """
    kinds = {k: (v.dtype, v.device) for k, v in tensors.items()}
    if len(set(kinds.values())) > 1:
        names = " and ".join(kinds)
        listed = " and ".join(f"{d}/{dev}" for d, dev in kinds.values())
        raise TypeError(f"{names} must share dtype and device, got {listed}")


def check_images(**images: object) -> int:
    """Check images that go into one computation together; return their common batch size.

    Each is a finite ``(B, C, H, W)`` floating-point tensor (:func:`check_image`); all have the same channel count,
    the same ``H`` and ``W``, the same dtype and device, and batch sizes that agree or are 1 (broadcast).

    Raises:
        ValueError: a bad image, channel counts, sizes or batch sizes that differ (the message names the images).
        TypeError: not a floating-point tensor, or dtypes or devices that differ.

    Example:
        >>> check_images(fg=torch.rand(2, 3, 4, 5), bg=torch.rand(1, 3, 4, 5))
        2
    """
    for name, x in images.items():
        check_image(x, name)
    check_same_channels(**images)
    check_same_size(**images)
    check_same_kind(**images)
    return check_batch(**images)


def check_alpha(alpha: object, name: str = "alpha") -> torch.Tensor:
    """An α-map (or a soft mask): a finite ``(B, 1, H, W)`` floating-point tensor with values in [0, 1]; return it.

    Unlike :func:`check_mask` it may be empty or full (an all-zero α is a valid weight map).

    Raises:
        TypeError: not a floating-point tensor.
        ValueError: wrong shape, NaN/Inf, or values outside [0, 1] (the message gives the range found).

    Example:
        >>> check_alpha(torch.full((1, 1, 2, 2), 0.5)).shape
        torch.Size([1, 1, 2, 2])
    """
    alpha = check_image(alpha, name, channels=1)
    lo, hi = float(alpha.detach().min()), float(alpha.detach().max())
    if lo < 0 or hi > 1:
        raise ValueError(f"{name} values must lie in [0, 1], got range [{lo:g}, {hi:g}]")
    return alpha


def check_positive_image(x: torch.Tensor, name: str, *, offset: float | None = None) -> None:
    """Raise ``ValueError`` unless every value of ``x`` (plus ``offset``, when given) is ``> 0``.

    For methods that take logarithms or ratios of an image (osmosis); the message gives the minimum found and, with
    an offset, how to fix it.

    Example:
        >>> check_positive_image(torch.zeros(1, 1, 2, 2), "u0", offset=0.01)
    """
    low = float(x.detach().min())
    if offset is None:
        if not low > 0:
            raise ValueError(f"{name} must be positive, its minimum is {low:g}")
    elif not low + offset > 0:
        raise ValueError(
            f"{name} must be positive after adding offset={offset:g}; its minimum is {low:g} "
            "(raise offset or shift the image)"
        )


def check_keywords(fn: object, options: dict, *, inputs: tuple[str, ...] = ()) -> dict:
    """Check that ``fn`` accepts every name of ``options`` as a keyword and none of them is one of its ``inputs``
    (the tensors a layer receives in ``forward``); return a copy of ``options``. For layers that hold the options of
    a method function. Types and values are left to ``fn``, which checks them when called.

    Raises:
        TypeError: an option ``fn`` does not take, or an input passed as an option (the message names it).

    Example:
        >>> def blend(fg, bg, mask, *, tol=1e-6): ...
        >>> check_keywords(blend, {"tol": 1e-3}, inputs=("fg", "bg", "mask"))
        {'tol': 0.001}
    """
    import inspect

    for name in options:
        if name in inputs:
            raise TypeError(f"{name} is an input (an argument of forward), not an option")
    try:
        inspect.signature(fn).bind_partial(**options)
    except TypeError as err:
        known = ", ".join(k for k in inspect.signature(fn).parameters if k not in inputs)
        raise TypeError(f"{err}; the options of {fn.__name__} are: {known}") from None
    return dict(options)


def check_flag(value: object, name: str) -> bool:
    """A switch: ``True`` or ``False`` (not 0/1, not a string).

    Example:
        >>> check_flag(False, "clamp")
        False
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """An integer (booleans excluded), at least ``minimum`` when one is given (a seed, a number of frames).

    Example:
        >>> check_int(3, "intermediate_frames", minimum=2)
        3
    """
    if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
        expected = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {expected}, got {value!r}")
    return value


def check_positive_number(value: object, name: str) -> float:
    """A finite real number ``> 0`` (a step size, a scale); returned as ``float``.

    Example:
        >>> check_positive_number(1, "lr")
        1.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < float(value) < float("inf"):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative_number(value: object, name: str) -> float:
    """A finite real number ``>= 0`` (a loss weight, where 0 drops the term); returned as ``float``.

    Example:
        >>> check_nonnegative_number(0, "stage2.grad")
        0.0
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= float(value) < float("inf"):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_choice(value: object, name: str, choices: tuple[object, ...]) -> object:
    """One of ``choices`` (a boolean never stands for 0 or 1); return it.

    Example:
        >>> check_choice("mask", "poisson_region", ("mask", "image"))
        'mask'
        >>> check_choice(3, "stages", (1, 2))
        Traceback (most recent call last):
        ...
        ValueError: stages must be 1 or 2, got 3
    """
    if isinstance(value, bool) or not any(type(value) is type(c) and value == c for c in choices):
        listed = ", ".join(repr(c) for c in choices[:-1])
        listed = f"{listed} or {choices[-1]!r}" if listed else repr(choices[-1])
        raise ValueError(f"{name} must be {listed}, got {value!r}")
    return value


def check_same_channels(**tensors: torch.Tensor) -> int:
    """Raise ``ValueError`` unless all tensors have the same channel count (axis 1); return it."""
    channels = {k: v.shape[1] for k, v in tensors.items()}
    if len(set(channels.values())) > 1:
        names = " and ".join(channels)
        raise ValueError(f"{names} channel counts differ: {' vs '.join(str(c) for c in channels.values())}")
    return next(iter(channels.values()))


def check_same_device(**tensors: torch.Tensor) -> None:
    """Raise ``TypeError`` unless all tensors are on one device (the message lists each one's)."""
    devices = {k: v.device for k, v in tensors.items()}
    if len(set(devices.values())) > 1:
        listed = ", ".join(f"{k} on {d}" for k, d in devices.items())
        raise TypeError(f"{' and '.join(devices)} must be on one device, got {listed}")


def check_fits_inside(inner: torch.Tensor, inner_name: str, outer: torch.Tensor, outer_name: str) -> None:
    """Raise ``ValueError`` unless ``inner``'s ``H, W`` are at most ``outer``'s (a source pasted onto a canvas)."""
    (ih, iw), (oh, ow) = inner.shape[-2:], outer.shape[-2:]
    if ih > oh or iw > ow:
        raise ValueError(
            f"{inner_name} ({ih}x{iw}) is larger than {outer_name} ({oh}x{ow}); {inner_name} must fit inside "
            f"{outer_name}"
        )


def check_min_size(x: torch.Tensor, name: str, minimum: int, *, why: str = "") -> None:
    """Raise ``ValueError`` unless both of ``x``'s ``H, W`` are at least ``minimum``; ``why`` ends the message."""
    h, w = x.shape[-2:]
    if min(h, w) < minimum:
        raise ValueError(f"{name} is {h}x{w}; both sides must be >= {minimum}" + (f" ({why})" if why else ""))


def check_mask_coverage(mask: torch.Tensor, name: str = "mask") -> torch.Tensor:
    """Per sample, some pixel of ``mask`` is inside (``> 0.5``) and some is outside; return ``mask``.

    The coverage part of :func:`check_mask`, for a mask already checked as an image (e.g. after it was placed on a
    larger canvas, where a crop may have emptied it).

    Example:
        >>> m = torch.zeros(1, 1, 2, 2); m[..., 0, 0] = 1
        >>> check_mask_coverage(m).shape
        torch.Size([1, 1, 2, 2])
    """
    inside = (mask > 0.5).flatten(1)
    if not bool(inside.any(1).all()):
        raise ValueError(f"{name} is empty (no pixel > 0.5) in at least one batch sample")
    if bool(inside.all(1).any()):
        raise ValueError(f"{name} covers the whole image in at least one batch sample; nothing to blend into")
    return mask


def check_no_grad(method: str, reason: str, **inputs: object) -> None:
    """Refuse tensors that require grad (with grad mode on) for a ``method`` that is not differentiable in them.

    The one error names the inputs and ends with ``reason`` (why there is no gradient, what to pass instead).

    Example:
        >>> check_no_grad("demo", "pass detached tensors", x=torch.zeros(1, requires_grad=True))
        Traceback (most recent call last):
        ...
        ValueError: demo is not differentiable with respect to its inputs: x requires grad. pass detached tensors
    """
    if not torch.is_grad_enabled():
        return
    asking = [name for name, t in inputs.items() if isinstance(t, torch.Tensor) and t.requires_grad]
    if asking:
        verb = "requires" if len(asking) == 1 else "require"
        raise ValueError(
            f"{method} is not differentiable with respect to its inputs: {', '.join(asking)} {verb} grad. {reason}"
        )
