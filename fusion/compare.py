"""Compare blending methods on the same input: ``python -m fusion.compare fg=F bg=B mask=M out_dir=DIR``.

Three modes, one config (``conf/compare.yaml``), under the command-line contract of :mod:`fusion.cli` (bad input:
one ``error:`` line on stderr, exit status 2, nothing written):

* one triplet (``fg``, ``bg``, ``mask``; the built-in samples when none is given; optional ``ref``): every method of
  ``methods`` blends it; ``DIR/gallery.png`` shows the cut-and-paste composite and each result (labelled with the
  method and its seconds) above enlarged crops of the mask boundary, ``DIR/metrics.csv`` and ``DIR/metrics.md``
  hold one row per method (:mod:`fusion.compare_metrics`).
* ``manifest=items.csv`` (the batch manifest of :mod:`fusion.batch_items`, with an optional ``ref`` column): the
  same per item (``DIR/<id>/gallery.png``, rows with an ``id`` column), and the mean ± std per method in
  ``metrics.md``. An item that cannot be read is recorded as failed and the others go on; the run then ends with
  exit status 3 (as batch inference does).
* ``benchmark=builtin``: the ground-truth benchmark of :mod:`fusion.compare_benchmark`.

Methods come from the registry (:mod:`fusion.methods.registry`): by default every method that blends a masked
region (``needs_mask``) and loads no weights; those that load a checkpoint (``MethodSpec.loads``) or a ``*_weights``
file join when it is given (``ckpt=``, ``vgg_weights=``, or ``<m>.<option>=``). A method's options default to its
``conf/method/<m>.yaml`` and are checked like ``infer.py``'s. A method that fails on an input gets a row with its
error and the others still run; one that stops before its tolerance is marked ``converged=false`` and reported by
one ``warning:`` line.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from fusion.batch_items import Item, read_manifest
from fusion.cli import CONFIG_DIR, check_overrides, exit_on_input_error, prepare_run, run_cli
from fusion.compare_gallery import save_gallery
from fusion.compare_metrics import METRICS, blend_metrics, markdown_table, summary_rows, write_csv
from fusion.data.io import output_set, read_image, read_mask
from fusion.errors import one_line
from fusion.infer_files import check_inputs, check_output_path, check_outputs, input_paths, parse_offset, resolve_device
from fusion.methods import (
    MethodSpec,
    available_methods,
    checked_result,
    method_spec,
    place_source,
    recorded_convergence,
)

__all__ = [
    "COLUMNS",
    "MethodRun",
    "Outcome",
    "compare",
    "compose_config",
    "default_methods",
    "method_overrides",
    "resolve_methods",
    "run_methods",
]

#: Columns of ``metrics.csv`` (manifest mode puts ``id`` first).
COLUMNS = ("method", "status", "seconds", "converged", *METRICS, "message")
COMPOSITE_LABEL = "composite (cut and paste)"


# ----------------------------------------------------------------------------------------------------
# Methods and their options
# ----------------------------------------------------------------------------------------------------
def method_overrides(config_dir: Path = CONFIG_DIR) -> list[str]:
    """``+method@<m>=<m>`` for every ``conf/method/<m>.yaml``: the overrides that make each method's options a node
    of the compare config (so ``poisson.mixed=true`` is an ordinary override)."""
    return [f"+method@{path.stem}={path.stem}" for path in sorted((config_dir / "method").glob("*.yaml"))]


def compose_config(overrides: Sequence[str] = ()) -> DictConfig:
    """The compare config with ``overrides``, as the command line composes it (for tests and scripts)."""
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="compare", overrides=[*overrides, *method_overrides()])


def _weight_options(spec: MethodSpec, options: Mapping[str, Any]) -> list[str]:
    """The options of a method that name weights to load: its checkpoints (``loads``) and ``*_weights`` files."""
    return [*spec.loads, *(k for k in options if k.endswith("_weights") and k not in spec.loads)]


def _method_options(cfg: DictConfig, name: str) -> dict[str, Any]:
    node = cfg.get(name)
    if node is None:
        return {}
    options = OmegaConf.to_container(node, resolve=True)
    if not isinstance(options, dict):
        raise ValueError(f"{name} must be a mapping of options, got {options!r}")
    options.pop("name", None)
    for key in _weight_options(method_spec(name), options) if name in available_methods() else []:
        if options.get(key) is None and cfg.get(key) is not None:  # ckpt=, vgg_weights= given once for all
            options[key] = cfg.get(key)
    return {str(k): v for k, v in options.items()}


def default_methods(cfg: DictConfig) -> list[str]:
    """Every registered blending method (``needs_mask``) whose weights, if it needs any, are given."""
    names = []
    for name in available_methods():
        spec = method_spec(name)
        options = _method_options(cfg, name)
        if spec.needs_mask and all(options.get(k) is not None for k in _weight_options(spec, options)):
            names.append(name)
    return names


@dataclass
class MethodRun:
    """A method ready to run: its registry entry, its checked options and the networks it loads."""

    name: str
    spec: MethodSpec
    params: dict[str, Any]
    networks: dict[str, str] = field(default_factory=dict)


def resolve_methods(cfg: DictConfig) -> list[MethodRun]:
    """The methods of ``cfg.methods`` (default :func:`default_methods`) with their checked options.

    Raises:
        ValueError: an unknown method, a method that needs no mask, a missing checkpoint, a bad option value.
    """
    from fusion.options import check_options, check_value

    chosen = cfg.get("methods")
    if chosen is None:
        names = default_methods(cfg)
    elif isinstance(chosen, str):
        names = [chosen]
    elif isinstance(chosen, (ListConfig, list)) and all(isinstance(n, str) for n in chosen):
        names = list(chosen)
    else:
        raise ValueError(f"methods must be a list of method names, got {chosen!r}")
    if not names:
        raise ValueError(f"methods is empty; expected some of: {', '.join(available_methods())}")
    if len(set(names)) != len(names):
        raise ValueError(f"methods lists a method twice: {names}")
    runs = []
    for name in names:
        spec = method_spec(name)
        if not spec.needs_mask:
            raise ValueError(f"method {name!r} fuses two whole images (no mask); it cannot be compared here")
        params = _method_options(cfg, name)
        networks = {}
        for option, network in spec.loads.items():
            path = check_value(params.pop(option, None), str | None, f"{name}.{option}")
            if path is None:
                raise ValueError(
                    f"method {name} needs {option}=PATH (or {name}.{option}=PATH), a checkpoint written by train.py"
                )
            networks[network] = path
        params = check_options(spec.fn, params, name, forwards_to=spec.options_from)
        runs.append(MethodRun(name, spec, params, networks))
    return runs


def load_networks(runs: Sequence[MethodRun], device: torch.device) -> None:
    """Load every network the methods declare (``MethodSpec.loads``) into their options."""
    from fusion.runs import load_network

    for run in runs:
        for network, path in run.networks.items():
            run.params[network] = load_network(path, key=network).to(device)


# ----------------------------------------------------------------------------------------------------
# Running
# ----------------------------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What one method gave on one batch: the result (or the error), seconds per sample, converged per sample."""

    name: str
    result: torch.Tensor | None
    seconds: float
    converged: list[bool]
    error: str = ""
    warning: str = ""


def _call(run: MethodRun, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> Outcome:
    batch = bg.shape[0]
    start = time.perf_counter()
    converged, notes = [True] * batch, []
    try:
        with recorded_convergence() as found, torch.no_grad():
            output = run.spec.fn(fg, bg, mask, **run.params)
        seconds = (time.perf_counter() - start) / batch
        for warning in found:
            notes.append(one_line(str(warning)))
            for i in getattr(warning, "samples", None) or range(batch):
                if 0 <= i < batch:
                    converged[i] = False
        result = checked_result(run.name, output, bg.shape)
        if not bool(torch.isfinite(result).all()):
            raise RuntimeError(f"method {run.name!r} returned NaN or Inf values")
    except Exception as err:  # one method failing must not stop the comparison
        return Outcome(run.name, None, (time.perf_counter() - start) / batch, [False] * batch, one_line(str(err))
                       or type(err).__name__)  # fmt: skip
    return Outcome(run.name, result.detach(), seconds, converged, warning="; ".join(dict.fromkeys(notes)))


def run_methods(
    runs: Sequence[MethodRun], fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, where: str = ""
) -> list[Outcome]:
    """Each method on the batch ``(fg, bg, mask)``; a failure is kept in its :class:`Outcome`, a convergence warning
    is printed as one ``warning: [where: ]<method>: ...`` line."""
    outcomes = []
    for run in runs:
        outcome = _call(run, fg, bg, mask)
        if outcome.warning:
            print(f"warning: {where}{run.name}: {outcome.warning}", file=sys.stderr, flush=True)
        outcomes.append(outcome)
    return outcomes


def _rows(outcomes: Sequence[Outcome], fg, bg, mask, ref, extra: Mapping[str, Any] | None = None) -> list[dict]:  # noqa: ANN001
    rows = []
    for outcome in outcomes:
        row: dict[str, Any] = {**(extra or {}), "method": outcome.name, "seconds": outcome.seconds}
        if outcome.result is None:
            row.update(status="failed", message=outcome.error)
        else:
            row.update(status="ok", converged=outcome.converged[0], message=outcome.warning)
            row.update(blend_metrics(outcome.result, fg, bg, mask, ref)[0])
        rows.append(row)
    return rows


def _gallery(path: Path, outcomes: Sequence[Outcome], fg, bg, mask, crop: int) -> list[str]:  # noqa: ANN001
    panels = [mask * fg + (1 - mask) * bg] + [o.result for o in outcomes]
    labels = [COMPOSITE_LABEL] + [
        f"{o.name} {o.seconds:.2f} s" if o.result is not None else f"{o.name} failed" for o in outcomes
    ]
    return save_gallery(path, panels, labels, mask, score=(fg - bg).abs(), crop=crop)


# ----------------------------------------------------------------------------------------------------
# Inputs and outputs
# ----------------------------------------------------------------------------------------------------
def _dtype(cfg: DictConfig, default: torch.dtype) -> torch.dtype:
    from fusion.options import check_value

    value = check_value(cfg.get("dtype"), str | None, "dtype")
    if value is None:
        return default
    if value not in ("float32", "float64"):
        raise ValueError(f"dtype must be float32, float64 or null, got {value!r}")
    return getattr(torch, value)


def _out_dir(cfg: DictConfig, *, required: bool = False) -> Path:
    value = cfg.get("out_dir")
    if value is None:
        if required or not HydraConfig.initialized():
            raise ValueError("out_dir=DIR is needed (the galleries and metrics go there)")
        return Path(HydraConfig.get().runtime.output_dir)
    out_dir = Path(to_absolute_path(str(value)))
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir={out_dir} is a file; it must name a folder")
    return out_dir


def _crop(cfg: DictConfig) -> int:
    from fusion.options import check_value

    crop = check_value(cfg.get("crop", 32), int, "crop")
    if crop < 4:
        raise ValueError(f"crop must be >= 4 pixels, got {crop}")
    return crop


def _read_triplet(
    inputs: Mapping[str, Path], ref_path: Path | None, offset: tuple[int, int] | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Read and check fg, bg, mask (fg placed on bg's grid) and the optional reference image."""
    fg, bg = read_image(inputs["fg"], what="fg"), read_image(inputs["bg"], what="bg")
    mask = read_mask(inputs["mask"], what="mask")
    check_inputs(fg, bg, mask, inputs, require_blend_region=True)
    if offset is not None or fg.shape[-2:] != bg.shape[-2:]:
        fg, mask = place_source(fg, mask, bg, offset)
    ref = None
    if ref_path is not None:
        ref = read_image(ref_path, what="ref")
        if ref.shape != bg.shape:
            raise ValueError(
                f"ref is {tuple(ref.shape[1:])} but bg is {tuple(bg.shape[1:])} (C, H, W); "
                f"ref must match bg: {ref_path}"
            )
    return fg, bg, mask, ref


def _to(device: torch.device, dtype: torch.dtype, *tensors: torch.Tensor | None) -> list[torch.Tensor | None]:
    return [None if t is None else t.to(device, dtype) for t in tensors]


def _write_metrics(out_dir: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str], text: str) -> dict:
    csv_path = write_csv(out_dir / "metrics.csv", rows, columns)
    md_path = out_dir / "metrics.md"
    from fusion.data.io import atomic_output

    with atomic_output(md_path) as tmp:
        tmp.write_text(text)
    return {"metrics_csv": csv_path, "metrics_md": md_path}


_MD_COLUMNS = ("method", "status", "seconds", "converged", *METRICS, "message")
_LEGEND = (
    "gradient_fidelity: mean |∇result − ∇fg| over neighbour pairs inside the mask; seam: mean |∇result| − mean "
    "|∇bg| over pairs crossing the mask boundary; change_outside: mean |result − bg| outside the mask; "
    "chromaticity: eq. 21 of the variational osmosis paper against fg inside the mask; psnr (dB) / ssim: the "
    "whole result against ref. Formulas: fusion/metrics.py."
)


def compare_triplet(cfg: DictConfig) -> dict[str, Path]:
    """Single-triplet mode: gallery.png, metrics.csv and metrics.md in ``out_dir``."""
    runs = resolve_methods(cfg)
    device = resolve_device(str(cfg.get("device", "auto")))
    dtype, crop = _dtype(cfg, torch.float32), _crop(cfg)
    offset = parse_offset(cfg.get("offset"))
    inputs = input_paths(cfg, True, None)
    ref_path = Path(to_absolute_path(str(cfg.ref))) if cfg.get("ref") is not None else None
    if ref_path is not None and not ref_path.is_file():
        raise FileNotFoundError(f"ref={ref_path}: no such file")
    out_dir = _out_dir(cfg)
    outputs = {name: out_dir / name for name in ("gallery.png", "metrics.csv", "metrics.md")}
    sources = {**inputs, **({"ref": ref_path} if ref_path else {})}
    check_outputs({k: v for k, v in outputs.items() if k != "metrics.md"}, sources)  # .md: no image format
    check_output_path(outputs["metrics.md"], "metrics.md output")
    fg, bg, mask, ref = _to(device, dtype, *_read_triplet(inputs, ref_path, offset))
    load_networks(runs, device)

    outcomes = run_methods(runs, fg, bg, mask)
    rows = _rows(outcomes, fg, bg, mask, ref)
    text = "\n\n".join(
        [
            "# Method comparison",
            f"fg: {inputs['fg']}  \nbg: {inputs['bg']}  \nmask: {inputs['mask']}"
            + (f"  \nref: {ref_path}" if ref_path else ""),
            markdown_table(rows, _MD_COLUMNS),
            _LEGEND,
        ]
    )
    with output_set():
        _gallery(outputs["gallery.png"], outcomes, fg, bg, mask, crop)
        written = _write_metrics(out_dir, rows, COLUMNS, text + "\n")
    return {"gallery": outputs["gallery.png"], **written}


def _load_item(item: Item, offset_default: tuple[int, int] | None) -> tuple:
    if item.error is not None:
        raise ValueError(item.error)
    return _read_triplet(item.inputs, item.ref, item.offset if item.offset is not None else offset_default)


def compare_manifest(cfg: DictConfig) -> dict[str, Path]:
    """Manifest mode: ``DIR/<id>/gallery.png`` per item, metrics.csv (with ``id``) and metrics.md with the summary.

    Raises:
        fusion.batch.BatchIncomplete: some items could not be read (they have a ``failed`` row; exit status 3).
    """
    from fusion.batch import BatchIncomplete

    given = [k for k in ("fg", "bg", "mask", "ref") if cfg.get(k) is not None]
    if given:
        raise ValueError(f"{'=, '.join(given)}= are for one triplet; manifest mode reads them from the manifest")
    runs = resolve_methods(cfg)
    device = resolve_device(str(cfg.get("device", "auto")))
    dtype, crop = _dtype(cfg, torch.float32), _crop(cfg)
    offset = parse_offset(cfg.get("offset"))
    out_dir = _out_dir(cfg, required=True)
    items = read_manifest(Path(to_absolute_path(str(cfg.manifest))), offset=offset)
    for item in items:
        check_outputs({"gallery": out_dir / item.id / "gallery.png"}, item.inputs)
    load_networks(runs, device)

    rows, failed, written = [], [], {}
    for item in items:
        try:
            fg, bg, mask, ref = _to(device, dtype, *_load_item(item, offset))
        except (ValueError, TypeError, OSError, RuntimeError) as err:
            message = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.filename else str(err)
            rows.append({"id": item.id, "method": "", "status": "failed", "message": one_line(message)})
            failed.append((item.id, one_line(message)))
            continue
        outcomes = run_methods(runs, fg, bg, mask, where=f"{item.id}: ")
        rows.extend(_rows(outcomes, fg, bg, mask, ref, {"id": item.id}))
        written[f"gallery {item.id}"] = _gallery(out_dir / item.id / "gallery.png", outcomes, fg, bg, mask, crop)
    names = [run.name for run in runs]
    text = "\n\n".join(
        [
            "# Method comparison over a manifest",
            f"manifest: {Path(to_absolute_path(str(cfg.manifest)))}; {len(items)} item(s), {len(failed)} unreadable",
            "## Mean ± std per method over the items",
            markdown_table(summary_rows(rows, names), ("method", "items", "converged", "seconds", *METRICS)),
            "## Per item",
            markdown_table(rows, ("id", *_MD_COLUMNS)),
            _LEGEND,
        ]
    )
    result = _write_metrics(out_dir, rows, ("id", *COLUMNS), text + "\n")
    if failed:
        for item_id, message in failed:
            print(f"failed: {item_id}: {message}", file=sys.stderr)
        print(f"{len(items)} item(s): {len(failed)} could not be read (see {result['metrics_csv']})", file=sys.stderr)
        raise BatchIncomplete(result["metrics_csv"], {"ok": len(items) - len(failed), "failed": len(failed)})
    return result


def benchmark_from_config(cfg: DictConfig) -> dict[str, Path]:
    """``benchmark=builtin``: :func:`fusion.compare_benchmark.run_benchmark` with the methods and keys of ``cfg``
    (``size``, ``photos``, ``masks``, ``transforms``, ``ring``, ``device``, ``dtype``: float64 by default, ``crop``)."""
    from fusion.compare_benchmark import run_benchmark
    from fusion.options import check_value

    runs = resolve_methods(cfg)
    device = resolve_device(str(cfg.get("device", "auto")))
    dtype, crop = _dtype(cfg, torch.float64), _crop(cfg)
    size = check_value(cfg.get("size", 256), int, "size")
    width = check_value(cfg.get("ring"), int | None, "ring")
    lists = {}
    for key in ("photos", "masks", "transforms"):
        value = cfg.get(key)
        lists[key] = list(value) if isinstance(value, ListConfig) else value
    out_dir = _out_dir(cfg)
    from fusion.compare_benchmark import MASKS, PHOTOS, TRANSFORMS, check_names

    for key, known in (("photos", PHOTOS), ("masks", MASKS), ("transforms", list(TRANSFORMS))):
        check_names(lists[key], key, known)  # before any network is loaded
    load_networks(runs, device)

    def blend(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, where: str = "") -> list[Outcome]:
        return run_methods(runs, fg, bg, mask, where=where)

    return run_benchmark(blend, [run.name for run in runs], out_dir, size=size, ring_width=width, device=device,
                         dtype=dtype, crop=crop, **lists)  # fmt: skip


def compare(cfg: DictConfig) -> dict[str, Path]:
    """Run the mode ``cfg`` asks for (single triplet, ``manifest``, ``benchmark``); return the files written.

    Raises:
        ValueError, TypeError, FileNotFoundError: bad input (nothing written; ``error: ...`` on the command line).
    """
    benchmark = cfg.get("benchmark")
    if benchmark is not None:
        if benchmark != "builtin":
            raise ValueError(f"benchmark must be builtin or null, got {benchmark!r}")
        if cfg.get("manifest") is not None or any(cfg.get(k) is not None for k in ("fg", "bg", "mask", "ref")):
            raise ValueError("benchmark=builtin makes its own inputs; drop fg=, bg=, mask=, ref= and manifest=")
        return benchmark_from_config(cfg)
    if cfg.get("manifest") is not None:
        return compare_manifest(cfg)
    return compare_triplet(cfg)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def prepare(argv: Sequence[str]) -> list[str]:
    """Vet the overrides; with ``out_dir=`` nothing but the outputs is written (no run folder, no log file)."""
    cfg = check_overrides(argv, CONFIG_DIR, "compare")
    if cfg is None:
        return []
    if cfg.get("out_dir") is not None:
        return ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    return prepare_run(argv, CONFIG_DIR, "compare")


@hydra.main(config_path="../conf", config_name="compare", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_cli(compare, cfg)


if __name__ == "__main__":
    with exit_on_input_error():
        arguments = [*sys.argv[1:], *method_overrides()]
        sys.argv = [sys.argv[0], *arguments, *prepare(arguments)]
    main()
