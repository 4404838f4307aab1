"""Random visibility masks built from unions of ellipses, and the corruption that turns a target into a view.

FusionVAE (Section 5.1) makes every partial view of a FusionMNIST or FusionCelebA target by keeping the pixels
inside a random mask, "composed of the union of a varying number of ellipses with random size, shape and
position", blackening everything outside it, adding Gaussian noise of a fixed variance and clipping to [0, 1].
:func:`ellipse_masks` draws such masks (each ellipse also gets a random rotation), :func:`corrupt` applies them.
"""

from __future__ import annotations

import math

import torch

__all__ = ["check_ellipse_args", "corrupt", "ellipse_masks"]


def check_ellipse_args(min_ellipses: int, max_ellipses: int, min_axis: float, max_axis: float) -> None:
    """Raise ``ValueError`` unless ``1 <= min_ellipses <= max_ellipses`` and ``0 < min_axis <= max_axis``."""
    for name, value in (("min_ellipses", min_ellipses), ("max_ellipses", max_ellipses)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if not 1 <= min_ellipses <= max_ellipses:
        raise ValueError(
            f"need 1 <= min_ellipses <= max_ellipses, got min_ellipses={min_ellipses}, max_ellipses={max_ellipses}"
        )
    if not (math.isfinite(min_axis) and math.isfinite(max_axis) and 0 < min_axis <= max_axis):
        raise ValueError(f"need 0 < min_axis <= max_axis (finite), got min_axis={min_axis}, max_axis={max_axis}")


def ellipse_masks(
    n: int,
    height: int,
    width: int,
    *,
    generator: torch.Generator | None,
    min_ellipses: int = 1,
    max_ellipses: int = 4,
    min_axis: float = 0.1,
    max_axis: float = 0.4,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Draw ``n`` binary masks, each the union of a random number of randomly placed, rotated ellipses.

    Every mask gets ``m`` ellipses, ``m`` uniform in ``{min_ellipses, ..., max_ellipses}``. Each ellipse has two
    semi-axes drawn independently and uniformly from ``[min_axis, max_axis] · min(height, width)`` (random size
    and shape), a rotation uniform in ``[0, π)`` and a centre uniform over the pixel grid (paper, Section 5.1). A
    pixel ``(i, j)`` lies inside an ellipse when its rotated, axis-normalised distance to the centre is at most 1.
    Centres sit on pixels, so no mask is empty; ellipses may reach over the border and are cut there.

    Args:
        n: number of masks (``>= 0``).
        height, width: mask size.
        generator: the random stream (on the CPU or on ``device``); ``None`` uses torch's global generator.
        min_ellipses, max_ellipses: range of the number of ellipses per mask (inclusive).
        min_axis, max_axis: range of each semi-axis, as a fraction of ``min(height, width)``.
        device, dtype: of the result (default: the CPU, float32).

    Returns:
        ``(n, 1, height, width)`` tensor of 0s and 1s.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> m = ellipse_masks(2, 32, 32, generator=g)
        >>> m.shape, bool(((m == 0) | (m == 1)).all()), bool((m.sum((1, 2, 3)) > 0).all())
        (torch.Size([2, 1, 32, 32]), True, True)
    """
    for name, value in (("n", n), ("height", height), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if height < 1 or width < 1:
        raise ValueError(f"height and width must be >= 1, got {height}x{width}")
    check_ellipse_args(min_ellipses, max_ellipses, min_axis, max_axis)
    device = torch.device(device) if device is not None else torch.device("cpu")
    draw_device = generator.device if generator is not None else device
    e = max_ellipses

    def uniform(*shape: int) -> torch.Tensor:
        return torch.rand(shape, generator=generator, device=draw_device, dtype=torch.float64)

    count = torch.randint(min_ellipses, max_ellipses + 1, (n, 1), generator=generator, device=draw_device)
    side = min(height, width)
    axes = (min_axis + (max_axis - min_axis) * uniform(n, e, 2)) * side
    theta = math.pi * uniform(n, e)
    cy = torch.floor(uniform(n, e) * height).clamp(max=height - 1)
    cx = torch.floor(uniform(n, e) * width).clamp(max=width - 1)
    active = torch.arange(e, device=draw_device)[None, :] < count  # (n, e)
    params = [t.to(device) for t in (axes, theta, cy, cx, active)]
    axes, theta, cy, cx, active = params

    rows = torch.arange(height, device=device, dtype=torch.float64).view(1, 1, height, 1)
    cols = torch.arange(width, device=device, dtype=torch.float64).view(1, 1, 1, width)
    dy, dx = rows - cy[..., None, None], cols - cx[..., None, None]  # (n, e, H, W)
    cos, sin = torch.cos(theta)[..., None, None], torch.sin(theta)[..., None, None]
    u = (dx * cos + dy * sin) / axes[..., 0, None, None]
    v = (-dx * sin + dy * cos) / axes[..., 1, None, None]
    inside = (u * u + v * v <= 1.0) & active[..., None, None]
    return inside.any(dim=1, keepdim=True).to(dtype)


def corrupt(
    image: torch.Tensor,
    mask: torch.Tensor,
    *,
    noise_std: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A partial, noisy view of ``image``: ``clip(image · mask + noise_std · ε, 0, 1)`` with ``ε ~ N(0, I)``.

    Pixels outside the mask are blackened, then Gaussian noise is added to every pixel and the result is clipped
    to [0, 1] (paper, Section 5.1).

    Args:
        image: ``(..., C, H, W)`` values in [0, 1].
        mask: broadcastable against ``image``, e.g. ``(..., 1, H, W)`` with 1 = visible.
        noise_std: standard deviation of the noise (``>= 0``; 0 adds none and draws nothing).
        generator: random stream of the noise (on the CPU or on the image's device).

    Returns:
        The view, of the broadcast shape of ``image`` and ``mask``, on ``image``'s device and dtype.

    Example:
        >>> view = corrupt(torch.ones(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]), noise_std=0.0)
        >>> view.flatten().tolist()
        [1.0, 0.0, 0.0, 1.0]
    """
    if not isinstance(image, torch.Tensor) or not isinstance(mask, torch.Tensor):
        raise TypeError(f"image and mask must be tensors, got {type(image).__name__} and {type(mask).__name__}")
    if image.ndim < 3:
        raise ValueError(f"image must have shape (..., C, H, W), got {tuple(image.shape)}")
    try:
        shape = torch.broadcast_shapes(image.shape, mask.shape)
    except RuntimeError:
        raise ValueError(
            f"mask of shape {tuple(mask.shape)} does not broadcast against image of shape {tuple(image.shape)}"
        ) from None
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std must be finite and >= 0, got {noise_std}")
    view = image * mask.to(image.dtype)
    if noise_std > 0:
        draw_device = generator.device if generator is not None else image.device
        noise = torch.randn(shape, generator=generator, device=draw_device, dtype=image.dtype)
        view = view + noise_std * noise.to(image.device)
    return view.clamp(0.0, 1.0)
