"""The files of one inference run: where its inputs come from, where its outputs go, the checks on both before
anything is computed, and the extra files a method's :class:`fusion.methods.MethodOutput` asks for.

Every check raises ``ValueError`` / ``FileNotFoundError`` naming the config key (``fg=``, ``out=``, ...), which
the command line reports as one ``error:`` line; no output may replace an input.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from fusion.data.io import image_depth, output_format, save_side_by_side, write_curves, write_gif, write_image
from fusion.methods import MethodOutput

__all__ = [
    "SAMPLES_DIR",
    "SAMPLE_FILES",
    "check_inputs",
    "check_output_path",
    "check_outputs",
    "extra_paths",
    "input_paths",
    "method_params",
    "output_paths",
    "parse_offset",
    "resolve_device",
    "result_depth",
    "write_extras",
]

#: Built-in sample inputs, used when none of ``fg``, ``bg``, ``mask`` is given.
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "datasets" / "samples"
SAMPLE_FILES = {"fg": "fg.png", "bg": "bg.png", "mask": "mask.png"}


def resolve_device(name: str) -> torch.device:
    """``"auto"`` → CUDA when available, else CPU; ``"cpu"``, ``"cuda"``, ``"cuda:N"`` are checked to exist.

    Raises:
        ValueError: unknown device string, or CUDA requested where none is available.
    """
    name = str(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(f"unknown device {name!r}; expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device={name} requested but CUDA is not available; use device=cpu or device=auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device={name} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    elif device.type != "cpu":
        raise ValueError(f"unsupported device {name!r}; expected auto, cpu, cuda or cuda:N")
    return device


def input_paths(cfg: DictConfig, needs_mask: bool = True, samples: str | None = None) -> dict[str, Path]:
    keys = list(SAMPLE_FILES) if needs_mask else ["fg", "bg"]
    given = {key: cfg.get(key) for key in keys}
    if all(value is None for value in given.values()) and (needs_mask or cfg.get("mask") is None):
        folder = SAMPLES_DIR / samples if samples else SAMPLES_DIR
        paths = {key: folder / SAMPLE_FILES[key] for key in keys}
        missing = [str(p) for p in paths.values() if not p.is_file()]
        if missing:
            raise FileNotFoundError(
                f"built-in sample inputs not found ({', '.join(missing)}); pass {'=, '.join(keys)}= explicitly"
            )
        return paths
    missing = [key for key, value in given.items() if value is None]
    if missing:
        raise ValueError(f"{', '.join(keys)} must be given together; missing: {', '.join(missing)}")
    if not needs_mask and cfg.get("mask") is not None:
        given["mask"] = cfg.get("mask")
    return {key: Path(to_absolute_path(str(value))) for key, value in given.items()}


def output_paths(cfg: DictConfig) -> dict[str, Path]:
    out = cfg.get("out")
    if out is None:
        if not HydraConfig.initialized():
            raise ValueError("out=null needs a Hydra run directory; pass out=PATH")
        result = Path(HydraConfig.get().runtime.output_dir) / "result.png"
    else:
        result = Path(to_absolute_path(str(out)))
    paths = {"result": result}
    if cfg.get("side_by_side", True):
        paths["side_by_side"] = result.with_name(f"{result.stem}_side_by_side.png")
    return paths


def same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output_path(path: Path, what: str) -> None:
    """Check that a file can be written at ``path`` before anything is written.

    ``path`` must not be a folder, and the first of its ancestors that exists must be a writable folder (not a
    file: ``out=a.png/r.png`` with ``a.png`` a file is refused here, not by a failed ``mkdir`` later).

    Raises:
        ValueError: naming ``what`` and the offending path.
    """
    if path.is_dir():
        raise ValueError(f"{what} {path} is a directory; it must name a file")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ValueError(f"{what} {path} cannot be written: {parent} is a file, not a folder")
            if not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"{what} {path} cannot be written: no permission to write in {parent}")
            return


def check_outputs(outputs: Mapping[str, Path], inputs: Mapping[str, Path]) -> None:
    for key, path in outputs.items():
        check_output_path(path, f"{key} output")
        if path.suffix.lower() != ".csv":
            output_format(path)
        for name, source in inputs.items():
            if same_file(path, source):
                raise ValueError(f"{key} output {path} would overwrite the {name} input; choose another out=")


def parse_offset(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, (ListConfig, list, tuple)) else None
    if items is None or len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"offset must be null or [y, x] with two integers, got {value!r}")
    return int(items[0]), int(items[1])


def check_inputs(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    paths: Mapping[str, Path],
    *,
    require_blend_region: bool = True,
) -> None:
    if fg.shape[1] != bg.shape[1]:
        raise ValueError(
            f"fg has {fg.shape[1]} channel(s) but bg has {bg.shape[1]}; both must be grayscale or both RGB"
        )
    if fg.shape[-2:] != mask.shape[-2:]:
        (fh, fw), (mh, mw) = fg.shape[-2:], mask.shape[-2:]
        raise ValueError(f"mask is {mh}x{mw} but fg is {fh}x{fw}; the mask must match the fg size")
    (fh, fw), (bh, bw) = fg.shape[-2:], bg.shape[-2:]
    if fh > bh or fw > bw:
        raise ValueError(f"fg ({fh}x{fw}) is larger than bg ({bh}x{bw}); fg must fit inside bg")
    if not require_blend_region:
        return
    inside = mask > 0.5
    if not bool(inside.any()):
        raise ValueError(
            f"mask is empty (no pixel > 0.5): {paths['mask']}; masks are read as gray, colour by its luma "
            "0.299 R + 0.587 G + 0.114 B (pure red is 0.30): draw the region in white"
        )
    if bool(inside.all()):
        raise ValueError(
            f"mask covers the whole image (every pixel > 0.5), nothing is left to blend into: {paths['mask']}"
        )


def method_params(method_cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    params = OmegaConf.to_container(method_cfg, resolve=True)
    if not isinstance(params, dict) or "name" not in params:
        raise ValueError("the method config must have a 'name' entry")
    name = params.pop("name")
    return str(name), {str(k): v for k, v in params.items()}


def result_depth(cfg: DictConfig, inputs: Mapping[str, Path]) -> int:
    """Bits per channel of the result: ``out_depth``, or by default the deepest of the fg and bg files."""
    from fusion.options import check_value

    depth = check_value(cfg.get("out_depth"), int | None, "out_depth")
    if depth is None:
        return max(image_depth(inputs[key]) for key in ("fg", "bg"))
    if depth not in (8, 16, 32):
        raise ValueError(f"out_depth must be 8, 16, 32 (float TIFF or .npy) or null, got {depth}")
    return depth


def extra_paths(result: Path, output: MethodOutput) -> dict[str, Path]:
    """Every file :func:`write_extras` will write, so they can be vetted before anything is written."""
    stem = result.with_suffix("")
    paths = {}
    for key in output.images:
        paths[key] = Path(f"{stem}_{key}.png")
    for key, seq in output.frames.items():
        paths[f"{key}_gif"] = Path(f"{stem}_{key}.gif")
        paths[f"{key}_strip"] = Path(f"{stem}_{key}_strip.png")
        for t in range(seq.shape[0]):
            paths[f"{key}_{t:03d}"] = Path(f"{stem}_{key}") / f"{t:03d}.png"
    for key in output.curves:
        paths[f"{key}_plot"] = Path(f"{stem}_{key}.png")
        paths[f"{key}_csv"] = Path(f"{stem}_{key}.csv")
    return paths


def write_extras(result: Path, output: MethodOutput) -> dict[str, Path]:
    stem = result.with_suffix("")
    written: dict[str, Path] = {}
    for key, image in output.images.items():
        written[key] = write_image(Path(f"{stem}_{key}.png"), image[:1])
    for key, seq in output.frames.items():
        frames = [seq[t, :1] for t in range(seq.shape[0])]
        written[f"{key}_gif"] = write_gif(Path(f"{stem}_{key}.gif"), frames)
        written[f"{key}_strip"] = save_side_by_side(Path(f"{stem}_{key}_strip.png"), frames, gap=2)
        for t, frame in enumerate(frames):
            write_image(Path(f"{stem}_{key}") / f"{t:03d}.png", frame)
        written[f"{key}_frames"] = Path(f"{stem}_{key}")
    for key, curves in output.curves.items():
        png, csv = write_curves(Path(f"{stem}_{key}.png"), {k: v for k, v in curves.items()})
        written[f"{key}_plot"], written[f"{key}_csv"] = png, csv
    return written
