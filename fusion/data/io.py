"""Image and mask IO: files ⇄ ``(1, C, H, W)`` float32 tensors in [0, 1].

Reading goes through Pillow (8-bit and 16-bit PNG, JPEG, TIFF including 32-bit float, ...), ``tifffile`` for
16-bit colour TIFFs (Pillow decodes those at 8 bits per channel), or NumPy ``.npy`` arrays (``(H, W)`` or
``(H, W, C)``; float arrays are taken as values in [0, 1], integer arrays are scaled by their type's maximum).
Every reader raises ``FileNotFoundError`` for a missing file and ``ValueError`` naming the path for a file that
cannot be decoded or holds values outside [0, 1], NaN or Inf.

Writing is atomic: the image is written to a temporary file in the destination directory and moved into place
with :func:`os.replace`, so an interrupted run never leaves a truncated output behind.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

__all__ = [
    "atomic_output",
    "output_format",
    "read_image",
    "read_mask",
    "save_side_by_side",
    "write_curves",
    "write_gif",
    "write_image",
]

_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_GRAY_MODES = ("1", "L", "LA", "La")


def _as_path(path: str | os.PathLike[str]) -> Path:
    return Path(os.fspath(path))


def _check_file(path: Path, what: str) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{what} not found: {path}")
    if path.is_dir():
        raise ValueError(f"{what} is a directory, expected an image file: {path}")


def _integer_scale(dtype: np.dtype, path: Path, what: str) -> float:
    if dtype == np.bool_:
        return 1.0
    if dtype in (np.uint8, np.uint16):
        return float(np.iinfo(dtype).max)
    raise ValueError(f"{what} {path} has unsupported array dtype {dtype}; expected float, uint8, uint16 or bool")


def _load_npy(path: Path, what: str) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"cannot read {what} {path}: {err}") from None
    if not isinstance(array, np.ndarray) or array.ndim not in (2, 3):
        shape = getattr(array, "shape", None)
        raise ValueError(f"{what} {path} must hold an (H, W) or (H, W, C) array, got shape {shape}")
    if np.issubdtype(array.dtype, np.floating):
        return array.astype(np.float32)
    return array.astype(np.float32) / _integer_scale(array.dtype, path, what)


def _pil_to_array(image: Image.Image, *, gray: bool) -> np.ndarray:
    """Decoded pixels as float32 ``(H, W)`` or ``(H, W, 3)``, scaled to [0, 1] for integer modes."""
    mode = image.mode
    if mode in _SIXTEEN_BIT_MODES or mode == "I":
        # 16-bit grayscale (PNG, TIFF); Pillow reports some 16-bit files as 32-bit "I".
        return np.asarray(image, dtype=np.float32) / 65535.0
    if mode == "F":
        return np.asarray(image, dtype=np.float32)
    if gray or mode in _GRAY_MODES:
        target = "L"
    else:
        target = "RGB"
    if mode != target:
        image = image.convert(target)
    return np.asarray(image, dtype=np.float32) / 255.0


def _deep_colour(image: Image.Image) -> bool:
    """Whether an opened (not yet loaded) colour image stores more than 8 bits per channel, which Pillow decodes
    into its 8-bit ``RGB``/``RGBA`` modes (keeping the high byte)."""
    if image.mode not in ("RGB", "RGBA"):
        return False
    if image.format == "TIFF":
        bits = image.tag_v2.get(258, 8)  # BitsPerSample, one value per channel
        return max(bits if isinstance(bits, tuple) else (bits,)) > 8
    rawmodes = (tile.args[0] if isinstance(tile.args, tuple) else tile.args for tile in image.tile)
    return any(isinstance(raw, str) and ";16" in raw for raw in rawmodes)


def _tiff_colour(path: Path, *, gray: bool) -> np.ndarray | None:
    """First page of a 16-bit colour TIFF read exactly with ``tifffile``, as ``(H, W, 3)`` or its luma ``(H, W)``;
    ``None`` when ``tifffile`` cannot decode it (e.g. a compression it lacks a codec for)."""
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            page = tif.pages[0]
            array, axes = page.asarray(), page.axes
    except Exception:  # any failure falls back to Pillow
        return None
    if array.dtype != np.uint16 or array.ndim != 3 or "S" not in axes:
        return None
    rgb = np.moveaxis(array, axes.index("S"), -1)[..., :3].astype(np.float32) / 65535.0
    if gray:  # ITU-R 601-2 luma, the weights of Pillow's conversion to "L"
        return np.clip(rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32), 0.0, 1.0)
    return rgb


def _load(path: str | os.PathLike[str], what: str, *, gray: bool) -> np.ndarray:
    path = _as_path(path)
    _check_file(path, what)
    if path.suffix.lower() == ".npy":
        array = _load_npy(path, what)
    else:
        try:
            with Image.open(path) as image:
                deep = _deep_colour(image)
                array = _tiff_colour(path, gray=gray) if deep and image.format == "TIFF" else None
                if array is None:
                    if deep:
                        warnings.warn(
                            f"{what} {path} has 16 bits per colour channel, which Pillow decodes at 8 bits per "
                            "channel (steps of 1/255); save it as a 16-bit TIFF or a .npy array to keep them",
                            UserWarning,
                            stacklevel=3,
                        )
                    image.load()
                    array = _pil_to_array(image, gray=gray)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise ValueError(f"cannot read {what} {path}: {err}") from None
    if array.size == 0:
        raise ValueError(f"{what} {path} is empty (shape {array.shape})")
    if not np.isfinite(array).all():
        raise ValueError(f"{what} {path} contains NaN or Inf values")
    low, high = float(array.min()), float(array.max())
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{what} {path} has values in [{low:g}, {high:g}]; expected values in [0, 1]")
    return array


def read_image(path: str | os.PathLike[str], *, what: str = "image") -> torch.Tensor:
    """Read a grayscale or RGB image as a ``(1, C, H, W)`` float32 tensor in [0, 1], ``C`` ∈ {1, 3}.

    Palette, alpha and other colour modes are converted to RGB (alpha is dropped). 16-bit grey files and 16-bit
    colour TIFFs keep their precision; a 16-bit colour PNG is decoded by Pillow at 8 bits per channel (its high
    byte), with a ``UserWarning`` saying so. ``what`` names the input in error messages (e.g. ``"fg"``).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable file, wrong channel count, values outside [0, 1], NaN or Inf.

    Example:
        >>> from fusion.pipeline import SAMPLES_DIR
        >>> img = read_image(SAMPLES_DIR / "bg.png")
        >>> img.shape, img.dtype
        (torch.Size([1, 3, 256, 320]), torch.float32)
    """
    array = _load(path, what, gray=False)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[2] not in (1, 3):
        raise ValueError(f"{what} {_as_path(path)} has {array.shape[2]} channels; expected 1 (grayscale) or 3 (RGB)")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))[None]


def read_mask(path: str | os.PathLike[str], *, what: str = "mask") -> torch.Tensor:
    """Read a mask as a ``(1, 1, H, W)`` float32 tensor in [0, 1] (colour files are converted to gray).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable file, more than one channel in an array file, values outside [0, 1],
            NaN or Inf.
    """
    array = _load(path, what, gray=True)
    if array.ndim == 3:
        if array.shape[2] != 1:
            raise ValueError(f"{what} {_as_path(path)} has {array.shape[2]} channels; expected 1")
        array = array[:, :, 0]
    return torch.from_numpy(np.ascontiguousarray(array))[None, None]


def output_format(path: str | os.PathLike[str]) -> str:
    """The file format implied by ``path``'s extension (``"NPY"`` or a Pillow format name).

    Raises:
        ValueError: the extension is missing or not a format Pillow can write.
    """
    suffix = _as_path(path).suffix.lower()
    if suffix == ".npy":
        return "NPY"
    Image.init()
    fmt = Image.registered_extensions().get(suffix)
    if fmt is None or fmt not in Image.SAVE:
        raise ValueError(
            f"cannot write {path}: unknown image extension {suffix or '(none)'!r}; use .png, .jpg, .tif or .npy"
        )
    return fmt


def _to_hwc(image: torch.Tensor) -> np.ndarray:
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"image must be a torch.Tensor, got {type(image).__name__}")
    if image.ndim == 4:
        if image.shape[0] != 1:
            raise ValueError(f"can only write one image at a time, got batch size {image.shape[0]}")
        image = image[0]
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"image must have shape (1, C, H, W) or (C, H, W) with C in (1, 3), got {tuple(image.shape)}")
    array = image.detach().to("cpu", torch.float32).numpy().transpose(1, 2, 0)
    if not np.isfinite(array).all():
        raise ValueError("image to write contains NaN or Inf values")
    return array


def _default_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it onto ``path``, on failure delete it.

    Missing parent directories are created. Use it for every file a run writes, so that an interrupted run
    never leaves a truncated output behind.
    """
    path = _as_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _to_uint8(array: np.ndarray) -> np.ndarray:
    pixels = np.round(np.clip(array, 0.0, 1.0) * 255.0).astype(np.uint8)
    return pixels[:, :, 0] if pixels.shape[2] == 1 else pixels


def write_image(path: str | os.PathLike[str], image: torch.Tensor) -> Path:
    """Write a ``(1, C, H, W)`` or ``(C, H, W)`` image in [0, 1] atomically; return the path written.

    Values are clamped to [0, 1]. Image formats store 8 bits per channel; ``.npy`` stores the float32 values
    unchanged (``(H, W, C)`` layout, readable by :func:`read_image`). Missing parent directories are created.

    Raises:
        TypeError: ``image`` is not a tensor.
        ValueError: bad shape, NaN/Inf values, or an unknown file extension.
    """
    path = _as_path(path)
    fmt = output_format(path)
    array = np.clip(_to_hwc(image), 0.0, 1.0)
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        if fmt == "NPY":
            np.save(handle, array.astype(np.float32))
        else:
            Image.fromarray(_to_uint8(array)).save(handle, format=fmt)
    return path


def write_gif(path: str | os.PathLike[str], frames: Sequence[torch.Tensor], *, seconds: float = 2.0) -> Path:
    """Write ``frames`` (each ``(1, C, H, W)`` or ``(C, H, W)`` in [0, 1]) as a looping animated GIF, atomically.

    The animation plays forward then backward, ``seconds`` each way.
    """
    if len(frames) == 0:
        raise ValueError("write_gif needs at least one frame")
    pictures = [Image.fromarray(_to_uint8(_to_hwc(f))) for f in frames]
    pictures = pictures + pictures[-2:0:-1]
    duration = max(int(1000 * seconds / max(len(frames) - 1, 1)), 20)
    with atomic_output(path) as tmp, open(tmp, "wb") as handle:
        pictures[0].save(handle, format="GIF", save_all=True, append_images=pictures[1:], duration=duration, loop=0)
    return _as_path(path)


def write_curves(
    path: str | os.PathLike[str],
    curves: dict[str, Sequence[float]],
    *,
    xlabel: str = "iteration",
    ylabel: str = "value",
    log_y: bool = True,
) -> tuple[Path, Path]:
    """Plot named curves against their index into ``path`` (PNG) and write their values to ``path`` + ``.csv``.

    Returns:
        ``(png_path, csv_path)``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = _as_path(path)
    csv_path = path.with_suffix(".csv")
    values = {k: np.asarray(torch.as_tensor(v, dtype=torch.float64).flatten().cpu()) for k, v in curves.items()}
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, ys in values.items():
        positive = ys[np.isfinite(ys)]
        use_log = log_y and positive.size > 0 and bool((positive > 0).all())
        (ax.semilogy if use_log else ax.plot)(np.arange(ys.size), ys, label=name)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    if len(values) > 1:
        ax.legend()
    fig.tight_layout()
    try:
        with atomic_output(path) as tmp, open(tmp, "wb") as handle:
            fig.savefig(handle, format="png")
    finally:
        plt.close(fig)
    length = max((v.size for v in values.values()), default=0)
    with atomic_output(csv_path) as tmp, open(tmp, "w") as handle:
        handle.write(",".join([xlabel, *values]) + "\n")
        for i in range(length):
            row = [str(i)] + [repr(float(v[i])) if i < v.size else "" for v in values.values()]
            handle.write(",".join(row) + "\n")
    return path, csv_path


def save_side_by_side(
    path: str | os.PathLike[str], images: Sequence[torch.Tensor], *, gap: int = 4, fill: float = 1.0
) -> Path:
    """Write ``images`` (each ``(1, C, H, W)``, same H) side by side, ``gap`` columns of ``fill`` apart.

    Grayscale panels are repeated to RGB when any panel is in colour. The file is written atomically.
    """
    if not images:
        raise ValueError("save_side_by_side needs at least one image")
    panels = [img.detach().to("cpu", torch.float32) for img in images]
    heights = {int(p.shape[-2]) for p in panels}
    if len(heights) != 1:
        raise ValueError(f"side-by-side panels must share their height, got heights {sorted(heights)}")
    channels = max(int(p.shape[-3]) for p in panels)
    row: list[torch.Tensor] = []
    for i, panel in enumerate(panels):
        if panel.ndim == 3:
            panel = panel[None]
        if i:
            row.append(torch.full((1, channels, panel.shape[-2], gap), fill))
        row.append(panel.expand(-1, channels, -1, -1))
    return write_image(path, torch.cat(row, dim=-1))
