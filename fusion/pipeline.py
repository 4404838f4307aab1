"""Inference and training as plain functions of a config, callable from tests.

``infer.py`` and ``train.py`` are thin ``@hydra.main`` wrappers around :func:`infer` and :func:`train`, run under
the command-line contract of :mod:`fusion.cli`. Runs, their configs and checkpoints are handled by
:mod:`fusion.runs`.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, OmegaConf

from fusion.data.io import output_set, read_image, read_mask, save_side_by_side, write_image
from fusion.errors import one_line
from fusion.infer_files import (
    SAMPLES_DIR,
    check_inputs,
    check_output_path,
    check_outputs,
    extra_paths,
    input_paths,
    method_params,
    output_paths,
    parse_offset,
    resolve_device,
    result_depth,
    write_extras,
)
from fusion.methods import checked_result, method_spec, place_source
from fusion.runs import (
    check_state_fits,
    check_target,
    checkpoint_dir,
    instantiate,
    load_checkpoint,
    load_network,
    resolve_class,
    resume_path,
    save_run_config,
)

__all__ = ["SAMPLES_DIR", "check_output_path", "infer", "resolve_device", "train"]


# ----------------------------------------------------------------------------------------------------
# Inference
# ----------------------------------------------------------------------------------------------------
def infer(cfg: DictConfig) -> dict[str, Path]:
    """Blend ``cfg.fg`` into ``cfg.bg`` inside ``cfg.mask`` with method ``cfg.method.name``; write the result.

    Config keys (see ``conf/infer.yaml``): ``fg``, ``bg``, ``mask`` (all null → built-in samples), ``out``
    (null → ``result.png`` in Hydra's run directory), ``offset`` (``[y, x]`` of a smaller fg on bg; null →
    centred), ``device`` (auto|cpu|cuda), ``side_by_side`` (also write ``<out>_side_by_side.png``: composite |
    result, labelled), ``out_depth`` (bits per channel of the result; null keeps the deepest input's: a 16-bit
    input gives a 16-bit PNG or TIFF, a float TIFF a float TIFF) and ``method`` (``name`` plus keyword arguments of
    the method function).

    With ``manifest``, ``fg_dir``, ``bg_dir``, ``mask_dir`` or ``out_dir`` set this is a batch run over many items
    instead (:func:`fusion.batch.infer_batch`: ``batch_size``, ``num_workers``, ``overwrite``, ``devices``, ...; it
    returns ``{"results": DIR/results.csv}``).

    All checks run before the method; the files are written all-or-nothing once the method has succeeded, and no
    output may replace an input file.

    Returns:
        ``{"result": Path, "side_by_side": Path}`` (the latter only when ``side_by_side`` is true).

    Raises:
        ValueError, TypeError, FileNotFoundError: bad input (turned into ``error: ...`` by the CLI).
    """
    from fusion.options import check_options, check_value

    if any(cfg.get(key) is not None for key in ("manifest", "fg_dir", "bg_dir", "mask_dir", "out_dir")):  # many items
        from fusion.batch import infer_batch

        return infer_batch(cfg)
    name, params = method_params(cfg.method)
    spec = method_spec(name)
    to_load = {option: params.pop(option, None) for option in spec.loads}
    for option, path in to_load.items():
        check_value(path, str | None, f"method.{option}")
        if path is None:
            raise ValueError(
                f"method={name} needs method.{option}=PATH, a checkpoint written by train.py "
                "(outputs/<experiment>/<run>/checkpoints/last.ckpt)"
            )
    params = check_options(spec.fn, params, "method", forwards_to=spec.options_from)
    check_value(cfg.get("side_by_side", True), bool, "side_by_side")
    check_value(cfg.get("device", "auto"), str, "device")
    device = resolve_device(cfg.get("device", "auto"))
    offset = parse_offset(cfg.get("offset"))
    inputs = input_paths(cfg, spec.needs_mask, spec.samples)
    outputs = output_paths(cfg)
    check_outputs(outputs, inputs)

    fg = read_image(inputs["fg"], what="fg")
    bg = read_image(inputs["bg"], what="bg")
    depth = result_depth(cfg, inputs)
    if "mask" in inputs:
        mask = read_mask(inputs["mask"], what="mask")
        check_inputs(fg, bg, mask, inputs, require_blend_region=spec.needs_mask)
        fg, bg, mask = (t.to(device) for t in (fg, bg, mask))
        if offset is not None or fg.shape[-2:] != bg.shape[-2:]:
            fg, mask = place_source(fg, mask, bg, offset)
    else:
        if fg.shape[1] != bg.shape[1] or fg.shape[-2:] != bg.shape[-2:]:
            raise ValueError(
                f"fg is {tuple(fg.shape[1:])} and bg is {tuple(bg.shape[1:])} (C, H, W); {name} needs equal shapes"
            )
        fg, bg, mask = fg.to(device), bg.to(device), None

    for option, network in spec.loads.items():  # what the method declares it loads: a network of a trained run
        params[network] = load_network(to_load[option], key=network).to(device)
    with torch.no_grad():
        output = spec.fn(fg, bg, mask, **params)
    result = checked_result(spec.name, output, bg.shape)
    if not bool(torch.isfinite(result).all()):
        raise RuntimeError(f"method {name!r} returned NaN or Inf values")

    extras = extra_paths(outputs["result"], output)
    check_outputs(extras, inputs)
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
            written.update(write_extras(outputs["result"], output))
    except (ValueError, OSError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ValueError(f"out={outputs['result']}: {reason}") from None
    return written


# ----------------------------------------------------------------------------------------------------
# Training


def _wandb_offline() -> bool:
    """Weights & Biases runs offline unless the user has set it up (``WANDB_MODE=online`` or ``WANDB_API_KEY``)."""
    mode = os.environ.get("WANDB_MODE", "").lower()
    if mode in ("offline", "dryrun", "disabled"):
        return True
    return not (mode in ("online", "run") or os.environ.get("WANDB_API_KEY"))


if not OmegaConf.has_resolver("fusion_wandb_offline"):
    OmegaConf.register_new_resolver("fusion_wandb_offline", _wandb_offline)


def _build_loggers(logger_cfg: DictConfig | None, output_dir: Path) -> list[Any]:
    """Every logger of the ``logger`` group; one that cannot start is replaced by a CSV logger in ``output_dir``."""
    from lightning.pytorch.loggers import CSVLogger

    loggers, failed = [], []
    for name, node in (logger_cfg or {}).items():
        if node is None or "_target_" not in node:
            continue
        try:
            loggers.append(instantiate(node, f"logger.{name}"))
        except Exception as err:  # an optional logger (wandb) must never stop training
            failed.append(name)
            print(f"warning: logger {name!r} is unavailable ({one_line(str(err))}); using CSV", file=sys.stderr)
    if failed and not any(isinstance(logger, CSVLogger) for logger in loggers):
        loggers.append(CSVLogger(save_dir=str(output_dir), name="csv"))
    return loggers


def _layout(node: Any, where: str) -> str | None:
    """The ``LAYOUT`` string of the class a config node builds, if the node builds one that documents it."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return None
    try:
        check_target(target, where)
        layout = getattr(resolve_class(str(target)), "LAYOUT", None)
    except Exception:
        return None
    return layout if isinstance(layout, str) else None


def _layout_hint(cfg: DictConfig, key: str) -> str:
    """``"; <key>: <LAYOUT>"`` when ``key`` belongs to a node whose ``_target_`` class documents a ``LAYOUT`` (a data
    root), or whose data sets (the nodes it holds that build a class) do."""
    parent = key.rpartition(".")[0]
    node = OmegaConf.select(cfg, parent) if parent else None
    layout = _layout(node, parent)
    if layout is None and isinstance(node, DictConfig):
        found = [_layout(child, f"{parent}.{name}") for name, child in node.items_ex(resolve=False)]
        layout = "; ".join(dict.fromkeys(text for text in found if text)) or None
    return f"; {key}: {layout}" if layout else ""


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg.model`` on ``cfg.data`` with the Lightning Trainer of ``cfg.trainer``; return where things went.

    Generic over models: the data module, the LightningModule, the trainer, every callback of ``cfg.callbacks``
    and every logger of ``cfg.logger`` are built with ``hydra.utils.instantiate``. ``cfg.seed`` seeds everything;
    ``cfg.ckpt_path`` resumes after the checkpoint has been checked to load with ``weights_only=True``: ``auto``
    (the default) continues from the run folder's newest checkpoint when it holds one (``last.ckpt`` of the
    checkpoint callback's folder, or the ``hpc_ckpt_N.ckpt`` of a SLURM requeue) and starts fresh otherwise;
    ``last`` requires one; ``null`` always starts fresh; anything else is the path of a checkpoint. The config is
    saved in the run directory (``cfg.paths.output_dir/.hydra/config.yaml``), from which inference rebuilds the
    model.

    Checkpoints are written atomically (:class:`fusion.models.callbacks.AtomicCheckpointIO`). Under SLURM the
    trainer gets Lightning's ``SLURMEnvironment``; with ``cfg.slurm_requeue`` it saves ``hpc_ckpt_N.ckpt`` and
    requeues the job on ``SIGUSR1``, except in jobs of the submitit launcher, which requeues them itself.

    Returns:
        ``{"run_dir": Path, "config": Path, "last_checkpoint": Path, "best_checkpoint": Path, "global_step":
        int, "metrics": {name: float}, "optimized_metric": float}``; checkpoint entries only when written,
        ``optimized_metric`` (the value of the metric named by ``cfg.optimized_metric`` at the end of training,
        what a hyperparameter search minimises or maximises) only when the config names one.

    Raises:
        ValueError, TypeError, FileNotFoundError: bad config or input (turned into ``error: ...`` by the CLI).
    """
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        hints = "".join(_layout_hint(cfg, key) for key in missing)
        raise ValueError(f"missing required config value(s): {', '.join(missing)}; set them as KEY=VALUE{hints}")
    from fusion.options import check_value

    check_value(cfg.get("seed"), int | None, "seed")
    check_value(cfg.get("ckpt_path", "auto"), str | None, "ckpt_path")
    check_value(cfg.get("optimized_metric"), str | None, "optimized_metric")
    check_value(cfg.get("slurm_requeue", True), bool, "slurm_requeue")
    output_dir = Path(to_absolute_path(str(cfg.paths.output_dir)))
    ckpt_path = cfg.get("ckpt_path", "auto")
    if ckpt_path is not None and str(ckpt_path) not in ("auto", "last"):  # vet an explicit checkpoint first
        load_checkpoint(resume_path(ckpt_path, output_dir))

    import lightning as L

    if cfg.get("seed") is not None:
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    callbacks = [
        instantiate(node, f"callbacks.{name}")
        for name, node in (cfg.get("callbacks") or {}).items()
        if node is not None and "_target_" in node
    ]
    resume = resume_path(ckpt_path, checkpoint_dir(callbacks, output_dir), output_dir)
    checkpoint = load_checkpoint(resume) if resume is not None else None
    step = checkpoint.get("global_step", 0) if checkpoint is not None else 0
    datamodule = instantiate(cfg.data, "data")
    model = instantiate(cfg.model, "model")
    if checkpoint is not None:
        check_state_fits(checkpoint["state_dict"], model.state_dict(), resume, "the model of this run")
        del checkpoint
    loggers = _build_loggers(cfg.get("logger"), output_dir)
    plugins = _trainer_plugins(cfg)
    trainer = instantiate(cfg.trainer, "trainer", callbacks=callbacks, logger=loggers or False, plugins=plugins)
    config_path = save_run_config(cfg, output_dir)
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
    if cfg.get("optimized_metric") is not None:
        metric = str(cfg.optimized_metric)
        result["optimized_metric"] = _optimized_metric(metric, result["metrics"], checkpoint_callback)
    return result


def _trainer_plugins(cfg: DictConfig) -> list[Any]:
    """The trainer's plugins: the atomic checkpoint writer and, under SLURM, Lightning's ``SLURMEnvironment``
    (auto-requeue on ``SIGUSR1`` unless submitit runs the job or ``cfg.slurm_requeue`` is false; not for processes
    started by ``torchrun``, which Lightning gives its torchelastic environment). A config cannot
    name plugins itself (:func:`fusion.runs.check_targets` refuses their targets)."""
    import signal

    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    from fusion.models.callbacks import AtomicCheckpointIO

    plugins: list[Any] = [AtomicCheckpointIO()]
    if SLURMEnvironment.detect() and not TorchElasticEnvironment.detect():  # torchrun inside an allocation: its own
        submitit_job = bool(os.environ.get("SUBMITIT_EXECUTOR"))  # submitit owns the signal and the requeue
        requeue = bool(cfg.get("slurm_requeue", True)) and not submitit_job
        plugins.append(SLURMEnvironment(auto_requeue=requeue, requeue_signal=signal.SIGUSR1))
    return plugins


def _optimized_metric(name: str, metrics: dict[str, float], checkpoint_callback: Any) -> float:
    """The value of ``name`` at the end of training; for a resumed run that had nothing left to train, the best
    value the checkpoint callback kept when it monitors that metric."""
    if name in metrics:
        return metrics[name]
    if checkpoint_callback is not None and checkpoint_callback.monitor == name:
        score = checkpoint_callback.best_model_score
        if score is not None:
            return float(score)
    known = ", ".join(sorted(metrics)) or "none"
    raise ValueError(f"optimized_metric={name!r} was not logged by this run; logged metrics: {known}")
