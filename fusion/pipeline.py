"""Entry points behind the command-line scripts: plain functions of a config, callable from tests.

``infer.py`` and ``train.py`` are thin ``@hydra.main`` wrappers around :func:`infer` and :func:`train`. The
command-line error contract lives here too: :func:`check_overrides` rejects bad overrides (such as an unknown
``method=``) before Hydra starts, and :func:`exit_on_input_error` turns the ``ValueError`` / ``TypeError`` /
``FileNotFoundError`` raised for bad input into a single ``error: ...`` line on stderr and exit status 2. Any other
exception propagates with its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from fusion import ConvergenceWarning
from fusion.data.io import (
    image_depth,
    output_format,
    output_set,
    read_image,
    read_mask,
    save_side_by_side,
    write_curves,
    write_gif,
    write_image,
)
from fusion.methods import MethodOutput, method_spec, place_source
from fusion.methods.gaussian_poisson import gaussian_poisson_blend
from fusion.methods.gpgan import blending_gan_color
from fusion.methods.registry import register

__all__ = [
    "INPUT_ERRORS",
    "SAMPLES_DIR",
    "check_output_path",
    "check_overrides",
    "check_targets",
    "claim_run_dir",
    "convergence_warnings_as_lines",
    "exit_on_input_error",
    "infer",
    "load_checkpoint",
    "load_generator",
    "prepare_run",
    "resolve_device",
    "run_cli",
    "train",
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
        if "Original Traceback" in message:  # re-raised from a DataLoader worker: keep the original message only
            last = [line for line in message.splitlines() if line.strip()][-1]
            message = last.split(": ", 1)[1] if last.startswith(type(err).__name__ + ": ") else last
        print(f"error: {_one_line(message)}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


def _log_to_run_files(text: str) -> None:
    """Append ``text`` as a WARNING record to the run's log files (the file handlers Hydra set up), not the console."""
    record = logging.LogRecord("fusion", logging.WARNING, __file__, 0, text, None, None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


@contextlib.contextmanager
def convergence_warnings_as_lines() -> Iterator[None]:
    """Print every :class:`fusion.ConvergenceWarning` as one ``warning: ...`` line on stderr, and log it to the run.

    Other warnings are shown as usual. The exit status is not affected: a run that stops at its iteration cap
    still writes its result, and says so.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("always", ConvergenceWarning)
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):  # noqa: ANN001 (the warnings hook)
            if issubclass(category, ConvergenceWarning):
                text = f"warning: {_one_line(str(message))}"
                print(text, file=sys.stderr, flush=True)
                _log_to_run_files(text)
            else:
                shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def run_cli(fn: Callable[[DictConfig], Mapping[str, Any]], cfg: DictConfig) -> Mapping[str, Any]:
    """Run ``fn(cfg)`` under :func:`exit_on_input_error` and print every path it reports as written.

    Convergence warnings become one ``warning: ...`` line each (:func:`convergence_warnings_as_lines`).
    """
    try:
        with exit_on_input_error(), convergence_warnings_as_lines():
            outputs = fn(cfg)
    except BaseException:
        _discard_claimed_run_dir()  # a failed run leaves no folder behind
        raise
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


def check_overrides(argv: Sequence[str], config_dir: str | os.PathLike[str], config_name: str) -> DictConfig | None:
    """Compose ``config_name`` with the command-line overrides once, before Hydra runs, to vet them.

    An unknown option of a config group (e.g. ``method=nope``) raises ``ValueError`` listing the available
    ones; any other composition failure (syntax error, unknown key) raises ``ValueError`` with the gist of
    Hydra's message. Command lines with flags (``--help``, ``--multirun``, ``--cfg``, ...) are left entirely
    to Hydra.

    Returns:
        The composed config (with its ``hydra`` node), or ``None`` when nothing was composed (flags, or Hydra is
        already initialised).

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
        return None
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
        return None
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return compose(config_name=config_name, overrides=argv, return_hydra_config=True)
    except (HydraException, OmegaConfBaseException) as err:
        raise ValueError(f"invalid override: {_hydra_message(err)}") from None


#: The run folder this process claimed (see :func:`prepare_run`), and the folders created for it: removed again
#: when the run fails.
_claimed_run_dir: Path | None = None
_created_parents: list[Path] = []


def claim_run_dir(path: str | os.PathLike[str]) -> Path:
    """Create a new, empty run folder at ``path`` (or ``path-2``, ``path-3``, … when taken) and return it.

    The folder is created with an exclusive ``mkdir``, so two runs started at the same moment never share one and an
    existing folder is never reused.
    """
    base = Path(path).absolute()
    missing = [p for p in base.parents if not p.exists()]
    base.parent.mkdir(parents=True, exist_ok=True)
    _created_parents[:] = missing  # innermost first
    for n in range(1, 10_000):
        candidate = base if n == 1 else base.with_name(f"{base.name}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise ValueError(f"cannot create a new run folder next to {base}: too many runs of that name")


def prepare_run(argv: Sequence[str], config_dir: str | os.PathLike[str], config_name: str) -> list[str]:
    """Vet the command line (:func:`check_overrides`) and decide where the run writes; return Hydra overrides to add.

    * ``infer.py ... out=PATH``: the outputs go where ``out`` says and nothing else is written (no run folder, no
      saved config, no log file: warnings go to stderr only).
    * otherwise, unless ``hydra.run.dir`` is given: a new run folder is claimed (:func:`claim_run_dir`) from the
      configured pattern (``outputs/<task>/<date>_<time>-<microseconds>``), and :func:`run_cli` removes it again if
      the run fails before writing a checkpoint. A ``hydra.run.dir`` that does not exist yet is treated the same
      way; an existing one (a run being resumed) is never removed.

    Command lines with flags (``--help``, ``--multirun``, ...) are left to Hydra.
    """
    global _claimed_run_dir
    cfg = check_overrides(argv, config_dir, config_name)
    if cfg is None or any(arg.startswith("-") for arg in argv):
        return []
    if config_name == "infer" and cfg.get("out") is not None:
        return ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    if any(arg.lstrip("+~").split("=", 1)[0] == "hydra.run.dir" for arg in argv):
        given = Path(str(cfg.hydra.run.dir)).absolute()
        if not given.exists():  # a folder this run creates: it is removed again if the run fails
            _created_parents[:] = [p for p in given.parents if not p.exists()]
            _claimed_run_dir = given
        return []
    from omegaconf.errors import OmegaConfBaseException

    try:
        pattern = str(OmegaConf.select(cfg, "hydra.run.dir", throw_on_missing=True))
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid hydra.run.dir: {_hydra_message(err)}") from None
    _claimed_run_dir = claim_run_dir(pattern)
    return [f"hydra.run.dir={_claimed_run_dir}"]


def _discard_claimed_run_dir() -> None:
    """Remove the run folder this process claimed, unless the run got as far as writing a checkpoint."""
    global _claimed_run_dir
    folder, _claimed_run_dir = _claimed_run_dir, None
    if folder is None or not folder.is_dir() or any(folder.rglob("*.ckpt")):
        return
    logging.shutdown()  # close the run's log file before removing it
    shutil.rmtree(folder, ignore_errors=True)
    for parent in _created_parents:  # the folders made for it, if nothing else has moved in
        with contextlib.suppress(OSError):
            parent.rmdir()


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


def _input_paths(cfg: DictConfig, needs_mask: bool = True, samples: str | None = None) -> dict[str, Path]:
    keys = list(_SAMPLE_FILES) if needs_mask else ["fg", "bg"]
    given = {key: cfg.get(key) for key in keys}
    if all(value is None for value in given.values()) and (needs_mask or cfg.get("mask") is None):
        folder = SAMPLES_DIR / samples if samples else SAMPLES_DIR
        paths = {key: folder / _SAMPLE_FILES[key] for key in keys}
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


def _check_outputs(outputs: Mapping[str, Path], inputs: Mapping[str, Path]) -> None:
    for key, path in outputs.items():
        check_output_path(path, f"{key} output")
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
        raise ValueError(
            f"mask is empty (no pixel > 0.5): {paths['mask']}; masks are read as gray, colour by its luma "
            "0.299 R + 0.587 G + 0.114 B (pure red is 0.30): draw the region in white"
        )
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
    result, labelled), ``out_depth`` (bits per channel of the result; null keeps the deepest input's: a 16-bit
    input gives a 16-bit PNG or TIFF, a float TIFF a float TIFF) and ``method`` (``name`` plus keyword arguments of
    the method function).

    All checks run before the method; the files are written all-or-nothing once the method has succeeded, and no
    output may replace an input file.

    Returns:
        ``{"result": Path, "side_by_side": Path}`` (the latter only when ``side_by_side`` is true).

    Raises:
        ValueError, TypeError, FileNotFoundError: bad input (turned into ``error: ...`` by the CLI).
    """
    from fusion.options import check_options, check_value

    name, params = _method_params(cfg.method)
    spec = method_spec(name)
    params = check_options(spec.fn, params, "method", forwards_to=spec.options_from)
    check_value(cfg.get("side_by_side", True), bool, "side_by_side")
    check_value(cfg.get("device", "auto"), str, "device")
    device = resolve_device(cfg.get("device", "auto"))
    offset = _offset(cfg.get("offset"))
    inputs = _input_paths(cfg, spec.needs_mask, spec.samples)
    outputs = _output_paths(cfg)
    _check_outputs(outputs, inputs)

    fg = read_image(inputs["fg"], what="fg")
    bg = read_image(inputs["bg"], what="bg")
    depth = _result_depth(cfg, inputs)
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
    written = dict(outputs)
    try:
        with output_set():  # all or nothing: a failure part-way leaves none of the files
            write_image(outputs["result"], result, depth=depth)
            if "side_by_side" in outputs:
                if mask is not None:
                    panels, labels = [mask * fg + (1 - mask) * bg, result], ["composite (cut and paste)", name]
                else:
                    panels, labels = [fg, result, bg], ["fg", name, "bg"]
                save_side_by_side(outputs["side_by_side"], panels, labels=labels)
            written.update(_write_extras(outputs["result"], output))
    except (ValueError, OSError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ValueError(f"out={outputs['result']}: {reason}") from None
    return written


def _result_depth(cfg: DictConfig, inputs: Mapping[str, Path]) -> int:
    """Bits per channel of the result: ``out_depth``, or by default the deepest of the fg and bg files."""
    from fusion.options import check_value

    depth = check_value(cfg.get("out_depth"), int | None, "out_depth")
    if depth is None:
        return max(image_depth(inputs[key]) for key in ("fg", "bg"))
    if depth not in (8, 16, 32):
        raise ValueError(f"out_depth must be 8, 16, 32 (float TIFF or .npy) or null, got {depth}")
    return depth


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


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------
def _wandb_offline() -> bool:
    """Weights & Biases runs offline unless the user has set it up (``WANDB_MODE=online`` or ``WANDB_API_KEY``)."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    return not (mode in ("online", "run") or os.environ.get("WANDB_API_KEY"))


if not OmegaConf.has_resolver("fusion_wandb_offline"):
    OmegaConf.register_new_resolver("fusion_wandb_offline", _wandb_offline)


# ----------------------------------------------------------------------------------------------------
# Help text (``--help`` of infer.py and train.py)
# ----------------------------------------------------------------------------------------------------
CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


def config_summary(path: Path) -> str:
    """The one-line summary of a config file: its first comment line (after a ``# @package`` line)."""
    for line in path.read_text().splitlines():
        text = line.strip()
        if not text.startswith("#"):
            break
        text = text.lstrip("#").strip()
        if text and not text.startswith("@package"):
            return text
    return ""


def group_help(group: str) -> str:
    """One line per option of a config group: ``name  summary``, aligned (for the ``--help`` texts)."""
    files = sorted((CONFIG_DIR / group).glob("*.yaml"))
    width = max((len(f.stem) for f in files), default=0)
    return "\n".join(f"  {f.stem.ljust(width)}  {config_summary(f)}".rstrip() for f in files)


if not OmegaConf.has_resolver("fusion_group_help"):
    OmegaConf.register_new_resolver("fusion_group_help", group_help)


#: What a config may build, by the ``_target_``'s dotted path: a prefix (checked before anything is imported) and
#: the base classes the named class must derive from. A config, or a run config saved next to a checkpoint, can
#: therefore build fusion's networks, models, data modules and callbacks, torch optimizers and schedulers, and
#: Lightning's callbacks, loggers and trainer, and call nothing else.
_SAFE_TARGETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    (
        "fusion.",
        (
            "torch.nn.Module",
            "torch.utils.data.Dataset",
            "lightning.pytorch.LightningDataModule",
            "lightning.pytorch.callbacks.Callback",
        ),
    ),
    ("torch.optim.", ("torch.optim.Optimizer", "torch.optim.lr_scheduler.LRScheduler")),
    ("lightning.pytorch.callbacks.", ("lightning.pytorch.callbacks.Callback",)),
    ("lightning.pytorch.loggers.", ("lightning.pytorch.loggers.Logger",)),
    ("lightning.pytorch.trainer.", ("lightning.pytorch.Trainer",)),
    ("lightning.pytorch.Trainer", ("lightning.pytorch.Trainer",)),
    ("lightning.Trainer", ("lightning.pytorch.Trainer",)),
)


def _resolve_class(dotted: str) -> Any:
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _check_target(target: Any, where: str) -> None:
    """Refuse a ``_target_`` that is not a class :data:`_SAFE_TARGETS` allows (``ValueError`` naming ``where``)."""
    import inspect

    dotted = str(target)
    allowed = "fusion's own classes, torch optimizers and schedulers, and Lightning callbacks, loggers and trainers"
    refusal = f"{where}._target_ {dotted!r} is not allowed: a config may only build {allowed}"
    bases = next((b for prefix, b in _SAFE_TARGETS if dotted == prefix or dotted.startswith(prefix)), None)
    if bases is None or not dotted.replace(".", "").replace("_", "").isalnum():
        raise ValueError(refusal)
    try:
        obj = _resolve_class(dotted)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"{where}._target_ {dotted!r} does not exist") from None
    if not inspect.isclass(obj) or not any(issubclass(obj, _resolve_class(b)) for b in bases):
        raise ValueError(refusal)


def check_targets(node: Any, what: str) -> None:
    """Check every ``_target_`` in ``node`` (nested dicts and lists included) before anything is built, and the
    options given to it against its signature (:func:`fusion.options.check_options`).

    Raises:
        ValueError: a target outside :data:`_SAFE_TARGETS`, or an option of the wrong type, named with its place
            in the config (``model.generator_optimizer.lr must be a number, got 'abc'``).
    """
    _check_targets(node, what)
    if isinstance(node, (DictConfig, ListConfig)):
        from omegaconf.errors import OmegaConfBaseException

        try:
            node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException:  # an interpolation that only resolves in a run: leave those values out
            node = OmegaConf.to_container(node, resolve=False)
    _check_target_options(node, what)


def _check_targets(node: Any, what: str) -> None:
    if isinstance(node, (DictConfig, dict)):
        items = node.items_ex(resolve=False) if isinstance(node, DictConfig) else node.items()
        for key, value in items:
            if key == "_target_":
                _check_target(value, what)
            else:
                _check_targets(value, f"{what}.{key}")
    elif isinstance(node, (ListConfig, list, tuple)):
        for i, value in enumerate(node):
            _check_targets(value, f"{what}[{i}]")


def _check_target_options(node: Any, what: str) -> None:
    """Options of every (already allowed) ``_target_`` in a plain, resolved config, against its signature."""
    from fusion.options import check_options

    if isinstance(node, dict):
        if "_target_" in node:
            nested = {k for k, v in node.items() if isinstance(v, dict) and "_target_" in v}
            unresolved = {k for k, v in node.items() if isinstance(v, str) and ("${" in v or v == "???")}
            options = {k: v for k, v in node.items() if not str(k).startswith("_") and k not in nested | unresolved}
            check_options(_resolve_class(str(node["_target_"])), options, what)
        for key, value in node.items():
            _check_target_options(value, f"{what}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_target_options(value, f"{what}[{i}]")


def _instantiate(node: Any, what: str, **kwargs: Any) -> Any:
    """``hydra.utils.instantiate`` of an allowed config (:func:`check_targets`), with bad-input errors unwrapped.

    Hydra wraps every exception raised by a target in ``InstantiationException``; a ``ValueError``,
    ``TypeError`` or ``FileNotFoundError`` from the target (e.g. a data module rejecting its root) is re-raised
    as itself, so the command line reports it in one line. Any other failure becomes a ``ValueError`` naming
    the config node.
    """
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate
    from omegaconf.errors import OmegaConfBaseException

    check_targets(node, what)
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as err:
        cause = err.__cause__
        while isinstance(cause, InstantiationException) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, INPUT_ERRORS):
            raise cause from None
        raise ValueError(f"cannot build {what}: {_hydra_message(err)}") from err
    except OmegaConfBaseException as err:
        raise ValueError(f"cannot build {what}: {_hydra_message(err)}") from None


def _build_loggers(logger_cfg: DictConfig | None, output_dir: Path) -> list[Any]:
    """Every logger of the ``logger`` group; one that cannot start is replaced by a CSV logger in ``output_dir``."""
    from lightning.pytorch.loggers import CSVLogger

    loggers, failed = [], []
    for name, node in (logger_cfg or {}).items():
        if node is None or "_target_" not in node:
            continue
        try:
            loggers.append(_instantiate(node, f"logger.{name}"))
        except Exception as err:  # an optional logger (wandb) must never stop training
            failed.append(name)
            print(f"warning: logger {name!r} is unavailable ({_one_line(str(err))}); using CSV", file=sys.stderr)
    if failed and not any(isinstance(logger, CSVLogger) for logger in loggers):
        loggers.append(CSVLogger(save_dir=str(output_dir), name="csv"))
    return loggers


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a Lightning checkpoint with ``torch.load(weights_only=True)`` onto the CPU.

    Raises:
        FileNotFoundError: no such file.
        ValueError: the file is not a readable checkpoint (truncated, corrupt, or without a ``state_dict``).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        if "Unsupported global" in str(err):  # a pickle of arbitrary objects: never unpickled here
            raise ValueError(
                f"checkpoint {path} holds Python objects besides tensors and plain values, which are not loaded; "
                "expected a checkpoint written by train.py"
            ) from None
        reason = _one_line(str(err)).split(". ")[0][:160] or type(err).__name__
        raise ValueError(f"checkpoint {path} is corrupt or not a checkpoint ({type(err).__name__}: {reason})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise ValueError(f"checkpoint {path} has no state_dict; expected a checkpoint written by train.py")
    return checkpoint


def check_state_fits(state: Mapping[str, Any], own: Mapping[str, Any], path: Path, what: str) -> None:
    """Check that a checkpoint's weights fit a network before loading them: the same names and shapes.

    Raises:
        ValueError: one line with the counts of missing, unexpected and mis-shaped entries and a first example.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(
        k for k in set(own) & set(state) if getattr(own[k], "shape", None) != getattr(state[k], "shape", None)
    )
    if not (missing or unexpected or shapes):
        return
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes)):
        if keys:
            parts.append(f"{len(keys)} {label} (e.g. {keys[0]!r})")
    raise ValueError(
        f"checkpoint {path} does not fit {what}: {', '.join(parts)} weights; was it written by another experiment?"
    )


def _checkpoint_dir(callbacks: Sequence[Any], output_dir: Path) -> Path:
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return output_dir / "checkpoints"


def _resume_path(ckpt_path: Any, checkpoint_dir: Path) -> Path | None:
    if ckpt_path is None:
        return None
    if str(ckpt_path) == "last":
        path = checkpoint_dir / "last.ckpt"
        if not path.is_file():
            raise FileNotFoundError(
                f"ckpt_path=last but {path} does not exist; resume in the interrupted run's directory with "
                "hydra.run.dir=RUN_DIR, or pass ckpt_path=PATH"
            )
        return path
    return Path(to_absolute_path(str(ckpt_path)))


def _layout_hint(cfg: DictConfig, key: str) -> str:
    """``"; <LAYOUT>"`` when ``key`` belongs to a node whose ``_target_`` class documents a ``LAYOUT`` (a data root)."""
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent) if parent else None
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return ""
    try:
        _check_target(target, parent)
        layout = getattr(_resolve_class(str(target)), "LAYOUT", None)
    except Exception:
        return ""
    return f"; {key}: {layout}" if isinstance(layout, str) else ""


def _save_run_config(cfg: DictConfig, output_dir: Path) -> Path:
    """The run's config as Hydra saves it (``.hydra/config.yaml``); written here when Hydra did not."""
    from fusion.data.io import atomic_output

    path = output_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        with atomic_output(path) as tmp:
            tmp.write_text(OmegaConf.to_yaml(cfg))
    return path


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg.model`` on ``cfg.data`` with the Lightning Trainer of ``cfg.trainer``; return where things went.

    Generic over models: the data module, the LightningModule, the trainer, every callback of ``cfg.callbacks``
    and every logger of ``cfg.logger`` are built with ``hydra.utils.instantiate``. ``cfg.seed`` seeds everything;
    ``cfg.ckpt_path`` resumes (``last``: ``last.ckpt`` of the checkpoint callback's folder, or a path) after the
    checkpoint has been checked to load with ``weights_only=True``. The config is saved in the run directory
    (``cfg.paths.output_dir/.hydra/config.yaml``), from which inference rebuilds the model.

    Returns:
        ``{"run_dir": Path, "config": Path, "last_checkpoint": Path, "best_checkpoint": Path, "global_step":
        int, "metrics": {name: float}}``; checkpoint entries only when written.

    Raises:
        ValueError, TypeError, FileNotFoundError: bad config or input (turned into ``error: ...`` by the CLI).
    """
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hints = "".join(_layout_hint(cfg, key) for key in missing)
        raise ValueError(f"missing required config value(s): {', '.join(missing)}; set them as KEY=VALUE{hints}")
    from fusion.options import check_value

    check_value(cfg.get("seed"), int | None, "seed")
    check_value(cfg.get("ckpt_path"), str | None, "ckpt_path")
    output_dir = Path(to_absolute_path(str(cfg.paths.output_dir)))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path is not None and str(ckpt_path) != "last":  # vet an explicit checkpoint before anything is built
        load_checkpoint(_resume_path(ckpt_path, output_dir))

    import lightning as L

    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    callbacks = [
        _instantiate(node, f"callbacks.{name}")
        for name, node in (cfg.get("callbacks") or {}).items()
        if node is not None and "_target_" in node
    ]
    resume = _resume_path(ckpt_path, _checkpoint_dir(callbacks, output_dir))
    checkpoint = load_checkpoint(resume) if resume is not None else None
    step = checkpoint.get("global_step", 0) if checkpoint is not None else 0
    datamodule = _instantiate(cfg.data, "data")
    model = _instantiate(cfg.model, "model")
    if checkpoint is not None:
        check_state_fits(checkpoint["state_dict"], model.state_dict(), resume, "the model of this run")
        del checkpoint
    loggers = _build_loggers(cfg.get("logger"), output_dir)
    trainer = _instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False)
    config_path = _save_run_config(cfg, output_dir)
    if resume is not None:
        print(f"resuming from {resume} at global step {step}")

    with warnings.catch_warnings():
        # Lightning notes that mid-epoch checkpoints of manually optimised modules hold the post-step weights,
        # which is what resuming needs.
        warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization")
        trainer.fit(model, datamodule=datamodule, ckpt_path=resume, weights_only=True)

    print(f"finished at global step {trainer.global_step}")
    result: dict[str, Any] = {"run_dir": output_dir, "config": config_path, "global_step": trainer.global_step}
    checkpoint_callback = getattr(trainer, "checkpoint_callback", None)
    if checkpoint_callback is not None and not trainer.fast_dev_run and checkpoint_callback.dirpath:
        last = Path(checkpoint_callback.dirpath) / f"{checkpoint_callback.CHECKPOINT_NAME_LAST}.ckpt"
        if checkpoint_callback.save_last and trainer.global_step > 0:
            # a run stopped by max_steps mid-epoch has not saved its final state yet: last.ckpt must hold it
            if (
                not last.is_file()
                or torch.load(last, map_location="cpu", weights_only=True).get("global_step") != trainer.global_step
            ):
                trainer.save_checkpoint(last)
        if last.is_file():
            result["last_checkpoint"] = last
        if checkpoint_callback.best_model_path:
            result["best_checkpoint"] = Path(checkpoint_callback.best_model_path)
    result["metrics"] = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    return result


# ----------------------------------------------------------------------------------------------------
# GP-GAN from a trained checkpoint (registered as method "gpgan")
# ----------------------------------------------------------------------------------------------------
def _run_config_for(checkpoint: Path) -> Path:
    """``.hydra/config.yaml`` of the run that wrote ``checkpoint`` (its folder or up to two levels above)."""
    for folder in [checkpoint.parent, *list(checkpoint.parents)[1:3]]:
        candidate = folder / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no saved run config (.hydra/config.yaml) next to or above checkpoint {checkpoint}; "
        "use a checkpoint inside the run directory written by train.py"
    )


def load_generator(checkpoint: str | os.PathLike[str], *, key: str = "generator") -> torch.nn.Module:
    """Rebuild ``model.<key>`` from the run's saved config and load its weights from ``checkpoint`` (eval mode).

    The checkpoint is read with ``weights_only=True``; only the network is built (no Lightning, no critic).

    Raises:
        FileNotFoundError: missing checkpoint or run config.
        ValueError: corrupt checkpoint, or weights that do not fit the configured network.
    """
    path = Path(to_absolute_path(str(checkpoint)))
    checkpoint_data = load_checkpoint(path)
    config_path = _run_config_for(path)
    run_cfg = OmegaConf.load(config_path)
    node = OmegaConf.select(run_cfg, f"model.{key}")
    if node is None:
        kinds = {"generator": "GP-GAN (experiment=gpgan_*)", "network": "FusionVAE, CVAE or FCN"}
        kind = kinds.get(key, f"a model with a {key}")
        raise ValueError(f"the run config {config_path} has no model.{key}: this needs a checkpoint of a {kind} run")
    network = _instantiate(node, f"model.{key}")
    prefix = f"{key}."
    state = {k[len(prefix) :]: v for k, v in checkpoint_data["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"checkpoint {path} holds no {key} weights (no '{prefix}*' entries)")
    check_state_fits(state, network.state_dict(), path, f"model.{key} of {config_path}")
    network.load_state_dict(state)
    return network.eval()


@register("gpgan")
def _gpgan_method(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    ckpt: str | None = None,
    beta: float = 1.0,
    sigma: float = 0.5,
    levels: int | None = None,
) -> MethodOutput:
    """``infer.py method=gpgan ckpt=PATH``: :func:`fusion.methods.gpgan.gpgan_blend` with a trained generator.

    Also writes the Blending GAN's own low-resolution blend as ``<out>_blending_gan.png``.
    """
    if ckpt is None:
        raise ValueError("method=gpgan needs ckpt=PATH, a checkpoint written by train.py (.../checkpoints/last.ckpt)")
    generator = load_generator(ckpt).to(fg.device)
    channels = getattr(generator, "in_channels", fg.shape[1])
    if fg.shape[1] != channels:
        raise ValueError(f"the inputs have {fg.shape[1]} channel(s) but the generator of {ckpt} expects {channels}")
    color = blending_gan_color(fg, bg, mask, generator=generator, levels=levels)
    result = gaussian_poisson_blend(fg, bg, mask, color=color, beta=beta, sigma=sigma, levels=levels)
    return MethodOutput(result=result, images={"blending_gan": color.clamp(0, 1)})
