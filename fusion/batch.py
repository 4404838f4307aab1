"""Batch inference: one method over many (fg, bg, mask) triplets, resumable, in batches of equal-sized items.

``python infer.py method=NAME manifest=items.csv out_dir=DIR`` (or ``fg_dir=A bg_dir=B mask_dir=C out_dir=DIR``)
runs :func:`infer_batch`:

* The items come from a CSV manifest (header with ``fg``, ``bg``, ``mask``; optional ``id``, ``offset_y``,
  ``offset_x``; relative paths resolve against the manifest's folder) or from three folders matched by file stem.
  An item's result is ``DIR/<id>.png``, its extras (side by side, the method's extra images and frames) are named
  after it as in single-image mode. A manifest or folder set that cannot be read is bad input (``ValueError``,
  nothing written).
* Every item's files are written all-or-nothing (temporary name + rename), then its stamp
  ``DIR/.stamps/<id>.json``: the method, its options, the identity of its inputs (path, size, modification time)
  and of the files written. A rerun skips an item whose stamp matches and whose files are unchanged, redoes one
  whose inputs or options changed; ``overwrite=true`` redoes all. A run killed at any moment therefore resumes
  where it stopped.
* Items are read by a :class:`torch.utils.data.DataLoader` (``num_workers`` processes, so reading overlaps the
  compute), grouped by size into batches of at most ``batch_size`` and passed to the method in one call (a
  sample's result never depends on the others of its batch). A call that fails is retried item by item, so one bad
  item cannot take its batch-mates down.
* ``DIR/results.csv`` (rewritten atomically after every batch) has one row per item: ``id``, ``status`` (ok,
  failed, skipped), ``seconds``, ``converged`` and ``message``. A failed item does not stop the run; the run then
  ends with :class:`BatchIncomplete` (exit status :data:`EXIT_ITEMS_FAILED`) after a summary line.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from fusion.batch_items import Item, read_folders, read_manifest
from fusion.batch_writer import OutputWriter, Progress, writer_threads
from fusion.data.io import (
    as_float,
    atomic_output,
    output_set,
    read_image,
    read_mask,
    save_side_by_side,
    write_image,
)
from fusion.errors import one_line
from fusion.infer_files import (
    check_inputs,
    check_outputs,
    extra_paths,
    method_params,
    parse_offset,
    resolve_device,
    result_depth,
    write_extras,
)
from fusion.methods import MethodOutput, MethodSpec, checked_result, method_spec, place_source, recorded_convergence

__all__ = ["EXIT_ITEMS_FAILED", "BatchIncomplete", "Item", "infer_batch", "read_folders", "read_manifest"]

#: Exit status of a batch run in which some items failed (the others are written).
EXIT_ITEMS_FAILED = 3
#: Columns of ``results.csv``.
RESULT_COLUMNS = ("id", "status", "seconds", "converged", "message")
STAMP_DIR = ".stamps"
STAMP_VERSION = 1


class BatchIncomplete(SystemExit):
    """Raised at the end of a batch run in which some items failed; its ``code`` is :data:`EXIT_ITEMS_FAILED`.

    Attributes:
        results: the path of ``results.csv``.
        counts: ``{"ok": n, "skipped": n, "failed": n}``.
    """

    def __init__(self, results: Path, counts: Mapping[str, int]) -> None:
        super().__init__(EXIT_ITEMS_FAILED)
        self.results = results
        self.counts = dict(counts)


# ----------------------------------------------------------------------------------------------------
# Stamps: what made an output
# ----------------------------------------------------------------------------------------------------
def _file_identity(path: Path) -> list[Any]:
    info = path.stat()
    return [str(path), info.st_size, info.st_mtime_ns]


def _stamp_path(out_dir: Path, item_id: str) -> Path:
    return out_dir / STAMP_DIR / f"{item_id}.json"


def _recipe(run: Mapping[str, Any], item: Item) -> dict[str, Any]:
    """What determines an item's output: the run's method, options and output settings, and its input files."""
    return {
        "version": STAMP_VERSION,
        **run,
        "offset": list(item.offset) if item.offset is not None else None,
        "inputs": {key: _file_identity(path) for key, path in sorted(item.inputs.items())},
    }


def _is_done(out_dir: Path, item: Item, run: Mapping[str, Any]) -> bool:
    """Whether ``item``'s stamp records this recipe and every file it lists is still as written."""
    try:
        stamp = json.loads(_stamp_path(out_dir, item.id).read_text())
        if stamp.get("recipe") != json.loads(json.dumps(_recipe(run, item))):
            return False
        return all(_file_identity(Path(p)) == [p, size, mtime] for p, size, mtime in stamp["outputs"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def _write_stamp(out_dir: Path, item: Item, run: Mapping[str, Any], written: Sequence[Path]) -> None:
    files = sorted({str(p) for p in written if Path(p).is_file()})
    stamp = {"recipe": _recipe(run, item), "outputs": [_file_identity(Path(p)) for p in files]}
    with atomic_output(_stamp_path(out_dir, item.id)) as tmp:
        tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True))


# ----------------------------------------------------------------------------------------------------
# Reading items (in DataLoader workers)
# ----------------------------------------------------------------------------------------------------
class _ItemDataset(torch.utils.data.Dataset):
    """Reads and checks one item: ``{"index", "fg", "bg", "mask", "depth"}`` or ``{"index", "error"}``."""

    def __init__(self, items: Sequence[tuple[int, Item]], spec: MethodSpec, out_depth: int | None) -> None:
        self.items = list(items)
        self.spec = spec
        self.out_depth = out_depth

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int) -> dict[str, Any]:
        index, item = self.items[k]
        try:
            return {"index": index, **self._load(item)}
        except (ValueError, TypeError, OSError, RuntimeError) as err:
            message = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) and err.filename else str(err)
            return {"index": index, "error": one_line(message) or type(err).__name__}

    def _load(self, item: Item) -> dict[str, Any]:
        if item.error is not None:
            raise ValueError(item.error)
        inputs = item.inputs
        # 8-bit files travel to the computing process as bytes (a quarter of the float32 size); as_float there
        fg, bg = read_image(inputs["fg"], what="fg", as_bytes=True), read_image(inputs["bg"], what="bg", as_bytes=True)
        depth = result_depth(OmegaConf.create({"out_depth": self.out_depth}), inputs)
        mask = None
        if self.spec.needs_mask:
            mask = read_mask(inputs["mask"], what="mask")
            check_inputs(fg, bg, mask, inputs, require_blend_region=True)
            if item.offset is not None or fg.shape[-2:] != bg.shape[-2:]:
                fg, mask = place_source(as_float(fg), mask, as_float(bg), item.offset)
        elif fg.shape[1] != bg.shape[1] or fg.shape[-2:] != bg.shape[-2:]:
            raise ValueError(f"fg is {tuple(fg.shape[1:])} and bg is {tuple(bg.shape[1:])} (C, H, W); "
                             f"{self.spec.name} needs equal shapes")  # fmt: skip
        return {"fg": fg[0], "bg": bg[0], "mask": None if mask is None else mask[0], "depth": depth}


def _identity(sample: Any) -> Any:
    return sample


def _stack(samples: list[dict[str, Any]], key: str, device: torch.device) -> torch.Tensor:
    """The samples' ``key`` images as one float32 batch on ``device`` (bytes are moved first, then converted)."""
    images = [s[key] for s in samples]
    if all(x.dtype == torch.uint8 for x in images):
        return as_float(torch.stack(images).to(device))
    return torch.stack([as_float(x) for x in images]).to(device)


# ----------------------------------------------------------------------------------------------------
# The run
# ----------------------------------------------------------------------------------------------------
def _batch_options(cfg: DictConfig) -> dict[str, Any]:
    from fusion.options import check_value

    batch_size = check_value(cfg.get("batch_size", 1), int, "batch_size")
    num_workers = check_value(cfg.get("num_workers", 0), int, "num_workers")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers}")
    devices = check_value(cfg.get("devices"), int | None, "devices")
    num_nodes = check_value(cfg.get("num_nodes", 1), int, "num_nodes")
    if devices is not None and devices < 1 or num_nodes < 1:
        raise ValueError(
            f"devices must be null or >= 1 and num_nodes >= 1, got devices={devices}, num_nodes={num_nodes}"
        )
    strategy = check_value(cfg.get("strategy", "auto"), str, "strategy")
    if strategy not in ("auto", "ddp", "ddp_spawn"):
        raise ValueError(f"strategy must be auto, ddp or ddp_spawn, got {strategy!r}")
    return {
        "batch_size": batch_size,
        "num_workers": num_workers,
        "overwrite": check_value(cfg.get("overwrite", False), bool, "overwrite"),
        "devices": devices,
        "num_nodes": num_nodes,
        "strategy": strategy,
    }


def _items(cfg: DictConfig, spec: MethodSpec, offset: tuple[int, int] | None) -> list[Item]:
    given = [k for k in ("fg", "bg", "mask", "out") if cfg.get(k) is not None]
    if given:
        raise ValueError(f"{'=, '.join(given)}= are for one image; a batch run takes manifest= or fg_dir=/bg_dir=/"
                         "mask_dir= and out_dir=")  # fmt: skip
    if cfg.get("manifest") is not None:
        if any(cfg.get(f"{k}_dir") is not None for k in ("fg", "bg", "mask")):
            raise ValueError("give either manifest= or fg_dir=/bg_dir=/mask_dir=, not both")
        return read_manifest(Path(to_absolute_path(str(cfg.manifest))), needs_mask=spec.needs_mask, offset=offset)
    keys = ["fg", "bg", "mask"] if spec.needs_mask else ["fg", "bg"]
    missing = [f"{k}_dir" for k in keys if cfg.get(f"{k}_dir") is None]
    if missing:
        raise ValueError(f"folder mode needs {', '.join(f'{k}_dir' for k in keys)}; missing: {', '.join(missing)}")
    return read_folders({k: Path(to_absolute_path(str(cfg.get(f"{k}_dir")))) for k in keys}, offset=offset)


def _out_dir(cfg: DictConfig) -> Path:
    if cfg.get("out_dir") is None:
        raise ValueError("a batch run needs out_dir=DIR (the results, their stamps and results.csv go there)")
    out_dir = Path(to_absolute_path(str(cfg.out_dir)))
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir={out_dir} is a file; it must name a folder")
    for parent in out_dir.parents:
        if parent.exists():
            if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
                raise ValueError(f"out_dir={out_dir} cannot be created in {parent}")
            break
    return out_dir


def _remove_stale_temporaries(out_dir: Path, before_ns: int) -> None:
    """Delete the temporary files (``.NAME.*.part``, see :func:`fusion.data.io.atomic_output`) that a run killed
    mid-write left in ``out_dir``: those older than this run, so another rank's file being written is kept."""
    for path in out_dir.rglob(".*.part"):
        with contextlib.suppress(OSError):
            if path.is_file() and path.stat().st_mtime_ns < before_ns:
                path.unlink()


def _compute_threads(num_workers: int) -> int:
    """Torch threads of the method's calls on a CPU: the cores left by the reading workers and the writer threads
    (at least one). Oversubscribed, torch's thread pool waits on busy cores and runs slower than one thread."""
    return max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) - num_workers - writer_threads()))


def _write_results(path: Path, rows: Sequence[Mapping[str, Any] | None]) -> None:
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=RESULT_COLUMNS)
        writer.writeheader()
        writer.writerows(row for row in rows if row is not None)


def _row(item: Item, status: str, seconds: float = 0.0, converged: bool | None = None, message: str = "") -> dict:
    flag = "" if converged is None else str(bool(converged)).lower()
    return {"id": item.id, "status": status, "seconds": f"{seconds:.3f}", "converged": flag, "message": message}


def _sample_output(output: MethodOutput, i: int, alone: bool) -> MethodOutput:
    """Sample ``i`` of a batched :class:`MethodOutput`; curves (computed for the batch's first sample) only when
    the batch held this item alone."""
    return MethodOutput(
        result=output.result[i : i + 1],
        images={k: v[i : i + 1] for k, v in output.images.items()},
        frames={k: v[:, i : i + 1] for k, v in output.frames.items()},
        curves=dict(output.curves) if alone else {},
    )


class _Runner:
    """Calls the method on batches and writes each item's files, stamp and row."""

    def __init__(self, spec, params, device, out_dir, run, side_by_side, items, rows) -> None:  # noqa: ANN001
        self.spec, self.params, self.device, self.out_dir, self.run = spec, params, device, out_dir, run
        self.side_by_side, self.items, self.rows = side_by_side, items, rows

    def call(self, samples: list[dict[str, Any]]) -> tuple[MethodOutput, list[bool], list[str]]:
        """One method call on ``samples`` stacked; the per-sample converged flags and warning texts."""
        fg, bg = _stack(samples, "fg", self.device), _stack(samples, "bg", self.device)
        mask = None if samples[0]["mask"] is None else torch.stack([s["mask"] for s in samples]).to(self.device)
        converged, notes = [True] * len(samples), [""] * len(samples)
        with recorded_convergence() as found, torch.no_grad():
            output = self.spec.fn(fg, bg, mask, **self.params)
        for warning in found:
            which = list(getattr(warning, "samples", None) or range(len(samples)))
            for k, i in enumerate(which):
                if 0 <= i < len(samples):
                    converged[i] = False
                    notes[i] = _item_warning(warning, k, len(which))
        checked_result(self.spec.name, output, bg.shape)
        return output, converged, notes

    def compute(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Run ``samples`` as one batch; one outcome per sample (its output, or the error of its item).

        If the call fails, the samples are run one by one, so a failure stays with its item.
        """
        start = time.perf_counter()
        if "error" in samples[0]:
            return [{"sample": s, "error": s["error"], "seconds": 0.0} for s in samples]
        try:
            output, converged, notes = self.call(samples)
        except (ValueError, TypeError, RuntimeError) as err:
            if len(samples) > 1:
                return [outcome for sample in samples for outcome in self.compute([sample])]
            return [{"sample": samples[0], "error": _text(err), "seconds": time.perf_counter() - start}]
        low, high = output.result.detach().flatten(1).aminmax(dim=1)  # a NaN propagates, an Inf is the min or max
        finite = (low.isfinite() & high.isfinite()).tolist()  # once per batch, in the computing thread
        share = (time.perf_counter() - start) / len(samples)
        alone = len(samples) == 1
        return [
            {
                "sample": s,
                "output": _sample_output(output, i, alone),
                "converged": converged[i],
                "finite": finite[i],
                "note": notes[i],
                "seconds": share,
            }  # fmt: skip
            for i, s in enumerate(samples)
        ]

    def finish(self, outcome: dict[str, Any]) -> dict[str, Any]:
        """Write the files and stamp of one outcome of :meth:`compute`; its ``results.csv`` row."""
        began = time.perf_counter()
        sample = outcome["sample"]
        item = self.items[sample["index"]]
        if "error" in outcome:
            return _row(item, "failed", outcome["seconds"], None, outcome["error"])
        try:
            self.write(item, outcome["output"], sample, outcome["finite"])
        except (ValueError, TypeError, RuntimeError, OSError) as err:
            return _row(item, "failed", outcome["seconds"] + time.perf_counter() - began, None, _text(err))
        if not outcome["converged"]:
            print(f"warning: {item.id}: {outcome['note']}", file=sys.stderr, flush=True)
        seconds = outcome["seconds"] + time.perf_counter() - began
        return _row(item, "ok", seconds, outcome["converged"], outcome["note"])

    def compute_groups(self, samples: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """:meth:`compute` on each group of equal-shaped ``samples``."""
        return [outcome for group in _buckets(iter(samples), len(samples)) for outcome in self.compute(group)]

    def write(self, item: Item, output: MethodOutput, sample: dict[str, Any], outcome_finite: bool) -> None:
        if not outcome_finite:
            raise RuntimeError(f"method {self.spec.name!r} returned NaN or Inf values")
        result = output.result
        target = self.out_dir / f"{item.id}.png"
        outputs = {"result": target}
        if self.side_by_side:
            outputs["side_by_side"] = target.with_name(f"{target.stem}_side_by_side.png")
        outputs.update(extra_paths(target, output))
        check_outputs(outputs, item.inputs)
        written: list[Path] = []
        with output_set():
            written.append(write_image(target, result, depth=sample["depth"]))
            if self.side_by_side:
                fg, bg = as_float(sample["fg"][None]).to(result), as_float(sample["bg"][None]).to(result)
                if sample["mask"] is not None:
                    mask = sample["mask"][None].to(result)
                    panels, labels = (
                        [mask * fg + (1 - mask) * bg, result],
                        ["composite (cut and paste)", self.spec.name],
                    )
                else:
                    panels, labels = [fg, result, bg], ["fg", self.spec.name, "bg"]
                written.append(save_side_by_side(outputs["side_by_side"], panels, labels=labels))
            extras = write_extras(target, output)
        for path in extras.values():
            written.extend(sorted(path.rglob("*")) if path.is_dir() else [path])
        _write_stamp(self.out_dir, item, self.run, written)


def _item_warning(warning: Warning, k: int, count: int) -> str:
    """The text of a :class:`ConvergenceWarning` for the ``k``-th of the ``count`` samples it names."""
    method, iterations = getattr(warning, "method", None), getattr(warning, "iterations", None)
    reached, tol = getattr(warning, "reached", None) or [], getattr(warning, "tol", None)
    if not method or iterations is None:
        return one_line(str(warning))
    text = f"{method} did not converge after {iterations} iteration{'s' if iterations != 1 else ''}"
    criterion = getattr(warning, "criterion", None) or "stopping criterion"
    if len(reached) == count:
        text += f": {criterion} {reached[k]:.3g}" + (f" > tol {tol:g}" if tol is not None else "")
    elif tol is not None:
        text += f": {criterion} above tol {tol:g}"
    return one_line(text)


def _text(err: BaseException) -> str:
    return one_line(str(err)) or type(err).__name__


def _buckets(samples: Iterator[dict[str, Any]], batch_size: int) -> Iterator[list[dict[str, Any]]]:
    """Group samples of one shape into lists of at most ``batch_size``; errors pass through alone."""
    open_buckets: dict[tuple, list[dict[str, Any]]] = {}
    for sample in samples:
        if "error" in sample:
            yield [sample]
            continue
        key = (tuple(sample["fg"].shape), tuple(sample["bg"].shape), sample["mask"] is None)
        bucket = open_buckets.setdefault(key, [])
        bucket.append(sample)
        if len(bucket) == batch_size:
            yield open_buckets.pop(key)
    yield from open_buckets.values()


def infer_batch(cfg: DictConfig) -> dict[str, Path]:
    """Run ``cfg.method`` over the items of ``cfg.manifest`` (or ``cfg.fg_dir``/``bg_dir``/``mask_dir``).

    Config keys besides those of single-image :func:`fusion.pipeline.infer` (``method``, ``device``, ``offset``,
    ``side_by_side``, ``out_depth``): ``manifest``, ``fg_dir``, ``bg_dir``, ``mask_dir``, ``out_dir`` (required),
    ``batch_size`` (items of one size per method call), ``num_workers`` (reading processes), ``overwrite`` (redo
    items whose stamp matches), and ``devices`` / ``num_nodes`` / ``strategy`` (set: several processes through
    Lightning's predict loop, :mod:`fusion.batch_lightning`). See the module docstring for the files written.

    Returns:
        ``{"results": DIR/results.csv}``.

    Raises:
        ValueError, TypeError, FileNotFoundError: bad config, manifest or folders (nothing is written).
        BatchIncomplete: some items failed; the others are written and ``results.csv`` says which.
    """
    from fusion.options import check_options, check_value
    from fusion.runs import load_network

    started_ns = time.time_ns()
    name, raw = method_params(cfg.method)
    spec = method_spec(name)
    params = dict(raw)
    to_load = {option: params.pop(option, None) for option in spec.loads}
    for option, path in to_load.items():
        check_value(path, str | None, f"method.{option}")
        if path is None:
            raise ValueError(f"method={name} needs method.{option}=PATH, a checkpoint written by train.py")
    params = check_options(spec.fn, params, "method", forwards_to=spec.options_from)
    side_by_side = check_value(cfg.get("side_by_side", True), bool, "side_by_side")
    device = resolve_device(check_value(cfg.get("device", "auto"), str, "device"))
    out_depth = check_value(cfg.get("out_depth"), int | None, "out_depth")
    if out_depth is not None and out_depth not in (8, 16, 32):
        raise ValueError(f"out_depth must be 8, 16, 32 or null, got {out_depth}")
    options = _batch_options(cfg)
    offset = parse_offset(cfg.get("offset"))
    out_dir = _out_dir(cfg)
    items = _items(cfg, spec, offset)

    loaded = {}
    for option, network in spec.loads.items():  # once for the whole run
        path = Path(to_absolute_path(str(to_load[option])))
        loaded[network] = load_network(path, key=network).to(device)
        raw[option] = _file_identity(path)
    run = json.loads(
        json.dumps(
            {"method": name, "options": raw, "side_by_side": side_by_side, "out_depth": out_depth},
            sort_keys=True,
            default=str,
        )
    )
    params.update(loaded)

    rows: list[dict[str, Any] | None] = [None] * len(items)
    pending = []
    for index, item in enumerate(items):
        if item.error is None and not options["overwrite"] and _is_done(out_dir, item, run):
            rows[index] = _row(item, "skipped", message="output and stamp match")
        else:
            pending.append((index, item))
    if out_dir.is_dir():
        _remove_stale_temporaries(out_dir, started_ns)
    out_dir.mkdir(parents=True, exist_ok=True)
    results = out_dir / "results.csv"
    _write_results(results, rows)

    runner = _Runner(spec, params, device, out_dir, run, side_by_side, items, rows)
    dataset = _ItemDataset(pending, spec, out_depth)
    if not pending:
        pass
    elif options["devices"] is not None or options["num_nodes"] > 1:  # several processes: Lightning's predict loop
        from fusion.batch_lightning import predict_items

        if not predict_items(runner, dataset, options):
            return {}
    else:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=None, collate_fn=_identity, num_workers=options["num_workers"]
        )
        progress, done = Progress(len(pending)), [0]
        threads = torch.get_num_threads()
        if device.type == "cpu":  # leave cores to the reading workers and the writer threads
            torch.set_num_threads(_compute_threads(options["num_workers"]))

        def record(index: int, row: dict[str, Any]) -> None:
            rows[index] = row
            done[0] += 1

        window = 2 * options["batch_size"]
        try:
            with OutputWriter(runner.finish, record, workers=writer_threads(), window=window) as writer:
                for samples in _buckets(iter(loader), options["batch_size"]):
                    for outcome in runner.compute(samples):  # written while the next batch is read and computed
                        writer.submit(outcome["sample"]["index"], outcome)
                    progress.update_to(done[0])
                    _write_results(results, rows)
        finally:
            torch.set_num_threads(threads)
            progress.update_to(done[0])
            progress.close()
    _write_results(results, rows)

    counts = {
        status: sum(1 for row in rows if row and row["status"] == status) for status in ("ok", "skipped", "failed")
    }
    summary = f"{len(items)} item(s): {counts['ok']} ok, {counts['skipped']} skipped, {counts['failed']} failed"
    if counts["failed"]:
        for row in rows:
            if row and row["status"] == "failed":
                print(f"failed: {row['id']}: {row['message']}", file=sys.stderr)
        print(f"{summary} (see {results})", file=sys.stderr, flush=True)
        raise BatchIncomplete(results, counts)
    print(summary, flush=True)
    return {"results": results}
