"""Entry points behind the command-line scripts: plain functions of a config, callable from tests.

``infer.py`` is a thin ``@hydra.main`` wrapper around :func:`infer`. The command-line error contract lives
here too: :func:`check_overrides` rejects bad overrides (such as an unknown ``method=``) before Hydra starts,
and :func:`exit_on_input_error` turns the ``ValueError`` / ``TypeError`` / ``FileNotFoundError`` raised for
bad input into a single ``error: ...`` line on stderr and exit status 2. Any other exception propagates with
its traceback.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from fusion.data.io import (
    output_format,
    read_image,
    read_mask,
    save_side_by_side,
    write_curves,
    write_gif,
    write_image,
)
from fusion.methods import MethodOutput, method_spec, place_source

__all__ = [
    "INPUT_ERRORS",
    "SAMPLES_DIR",
    "check_overrides",
    "exit_on_input_error",
    "infer",
    "resolve_device",
    "run_cli",
]

#: Exceptions that mean "bad input" on the command line (one line on stderr, exit status 2).
INPUT_ERRORS: tuple[type[BaseException], ...] = (ValueError, TypeError, FileNotFoundError)
#: Exit status for bad input, as for a usage error.
EXIT_BAD_INPUT = 2
#: Built-in sample inputs, used when none of ``fg``, ``bg``, ``mask`` is given.
SAMPLES_DIR = Path(__file__).resolve().parent.parent / "datasets" / "samples"
_SAMPLE_FILES = {"fg": "fg.png", "bg": "bg.png", "mask": "mask.png"}


# ----------------------------------------------------------------------------------------------------
# Command-line error contract
# ----------------------------------------------------------------------------------------------------
def _one_line(message: str) -> str:
    return " ".join(message.split())


@contextlib.contextmanager
def exit_on_input_error() -> Iterator[None]:
    """Turn bad-input exceptions into ``error: <message>`` on stderr and ``SystemExit(2)``."""
    try:
        yield
    except INPUT_ERRORS as err:
        if isinstance(err, FileNotFoundError) and err.filename is not None:
            message = f"{err.strerror or 'file not found'}: {err.filename}"  # raised by the OS, not by us
        else:
            message = str(err) or type(err).__name__
        print(f"error: {_one_line(message)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def run_cli(fn: Callable[[DictConfig], Mapping[str, Any]], cfg: DictConfig) -> Mapping[str, Any]:
    """Run ``fn(cfg)`` under :func:`exit_on_input_error` and print every path it reports as written."""
    with exit_on_input_error():
        outputs = fn(cfg)
    for key, value in outputs.items():
        if isinstance(value, Path):
            print(f"wrote {key}: {value}")
    return outputs


def _hydra_message(err: BaseException) -> str:
    """The gist of a Hydra error: its first two non-empty lines without links to the documentation."""
    lines = [line for line in str(err).splitlines() if line.strip() and not line.startswith("See http")]
    return _one_line(" ".join(lines[:2])) or type(err).__name__


def _group_options(config_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def check_overrides(argv: Sequence[str], config_dir: str | os.PathLike[str], config_name: str) -> None:
    """Compose ``config_name`` with the command-line overrides once, before Hydra runs, to vet them.

    An unknown option of a config group (e.g. ``method=nope``) raises ``ValueError`` listing the available
    ones; any other composition failure (syntax error, unknown key) raises ``ValueError`` with the gist of
    Hydra's message. Command lines with flags (``--help``, ``--multirun``, ``--cfg``, ...) are left entirely
    to Hydra.

    Raises:
        ValueError: the overrides do not compose into a valid config.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    argv = list(argv)
    if any(arg.startswith("-") for arg in argv):
        return
    config_dir = Path(config_dir).resolve()
    parser = OverridesParser.create()
    overrides = []
    for arg in argv:
        try:
            overrides.extend(parser.parse_overrides([arg]))
        except HydraException as err:
            raise ValueError(f"invalid override {arg!r}: {_hydra_message(err)}") from None
    for override in overrides:
        group = override.key_or_group
        if override.package is not None or override.is_delete() or not (config_dir / group).is_dir():
            continue
        value = override.value()
        if isinstance(value, str) and not (config_dir / group / f"{value}.yaml").is_file():
            options = ", ".join(_group_options(config_dir, group)) or "(none)"
            raise ValueError(f"unknown {group} {value!r}; expected one of: {options}")
    if GlobalHydra.instance().is_initialized():
        return
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            compose(config_name=config_name, overrides=argv)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"invalid override: {_hydra_message(err)}") from None


# ----------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------
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


def _input_paths(cfg: DictConfig, needs_mask: bool = True) -> dict[str, Path]:
    keys = list(_SAMPLE_FILES) if needs_mask else ["fg", "bg"]
    given = {key: cfg.get(key) for key in keys}
    if all(value is None for value in given.values()) and (needs_mask or cfg.get("mask") is None):
        paths = {key: SAMPLES_DIR / _SAMPLE_FILES[key] for key in keys}
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


def _output_paths(cfg: DictConfig) -> dict[str, Path]:
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


def _same_file(a: Path, b: Path) -> bool:
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def _check_outputs(outputs: Mapping[str, Path], inputs: Mapping[str, Path]) -> None:
    for key, path in outputs.items():
        if path.is_dir():
            raise ValueError(f"{key} output {path} is a directory; out= must name a file")
        if path.suffix.lower() != ".csv":
            output_format(path)
        for name, source in inputs.items():
            if _same_file(path, source):
                raise ValueError(f"{key} output {path} would overwrite the {name} input; choose another out=")


def _offset(value: Any) -> tuple[int, int] | None:
    if value is None:
        return None
    items = list(value) if isinstance(value, (ListConfig, list, tuple)) else None
    if items is None or len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in items):
        raise ValueError(f"offset must be null or [y, x] with two integers, got {value!r}")
    return int(items[0]), int(items[1])


def _check_inputs(
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
        raise ValueError(f"mask is empty (no pixel > 0.5): {paths['mask']}")
    if bool(inside.all()):
        raise ValueError(
            f"mask covers the whole image (every pixel > 0.5), nothing is left to blend into: {paths['mask']}"
        )


def _method_params(method_cfg: DictConfig) -> tuple[str, dict[str, Any]]:
    params = OmegaConf.to_container(method_cfg, resolve=True)
    if not isinstance(params, dict) or "name" not in params:
        raise ValueError("the method config must have a 'name' entry")
    name = params.pop("name")
    return str(name), {str(k): v for k, v in params.items()}


def infer(cfg: DictConfig) -> dict[str, Path]:
    """Blend ``cfg.fg`` into ``cfg.bg`` inside ``cfg.mask`` with method ``cfg.method.name``; write the result.

    Config keys (see ``conf/infer.yaml``): ``fg``, ``bg``, ``mask`` (all null → built-in samples), ``out``
    (null → ``result.png`` in Hydra's run directory), ``offset`` (``[y, x]`` of a smaller fg on bg; null →
    centred), ``device`` (auto|cpu|cuda), ``side_by_side`` (also write ``<out>_side_by_side.png``: composite |
    result) and ``method`` (``name`` plus keyword arguments of the method function).

    All checks run before the method; nothing is written unless the method succeeds, and no output may replace
    an input file.

    Returns:
        ``{"result": Path, "side_by_side": Path}`` (the latter only when ``side_by_side`` is true).

    Raises:
        ValueError, TypeError, FileNotFoundError: bad input (turned into ``error: ...`` by the CLI).
    """
    name, params = _method_params(cfg.method)
    spec = method_spec(name)
    device = resolve_device(cfg.get("device", "auto"))
    offset = _offset(cfg.get("offset"))
    inputs = _input_paths(cfg, spec.needs_mask)
    outputs = _output_paths(cfg)
    _check_outputs(outputs, inputs)

    fg = read_image(inputs["fg"], what="fg")
    bg = read_image(inputs["bg"], what="bg")
    if "mask" in inputs:
        mask = read_mask(inputs["mask"], what="mask")
        _check_inputs(fg, bg, mask, inputs, require_blend_region=spec.needs_mask)
        fg, bg, mask = (t.to(device) for t in (fg, bg, mask))
        if offset is not None or fg.shape[-2:] != bg.shape[-2:]:
            fg, mask = place_source(fg, mask, bg, offset)
    else:
        if fg.shape[1] != bg.shape[1] or fg.shape[-2:] != bg.shape[-2:]:
            raise ValueError(
                f"fg is {tuple(fg.shape[1:])} and bg is {tuple(bg.shape[1:])} (C, H, W); {name} needs equal shapes"
            )
        fg, bg, mask = fg.to(device), bg.to(device), None

    with torch.no_grad():
        output = spec.fn(fg, bg, mask, **params)
    if not isinstance(output, MethodOutput):
        output = MethodOutput(result=output)
    result = output.result
    if not isinstance(result, torch.Tensor) or result.shape != bg.shape:
        shape = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise RuntimeError(f"method {name!r} returned {shape}, expected a tensor of shape {tuple(bg.shape)}")
    if not bool(torch.isfinite(result).all()):
        raise RuntimeError(f"method {name!r} returned NaN or Inf values")

    extras = _extra_paths(outputs["result"], output)
    _check_outputs(extras, inputs)
    write_image(outputs["result"], result)
    if "side_by_side" in outputs:
        panels = [mask * fg + (1 - mask) * bg, result] if mask is not None else [fg, result, bg]
        save_side_by_side(outputs["side_by_side"], panels)
    written = dict(outputs)
    written.update(_write_extras(outputs["result"], output))
    return written


def _extra_paths(result: Path, output: MethodOutput) -> dict[str, Path]:
    """Every file :func:`_write_extras` will write, so they can be vetted before anything is written."""
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


def _write_extras(result: Path, output: MethodOutput) -> dict[str, Path]:
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
