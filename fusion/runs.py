"""Runs on disk: run folders, the configs saved in them, and the checkpoints they hold.

* Run folders: :func:`claim_run_dir` creates a new one atomically (two runs never share one);
  :func:`discard_claimed_run_dir` removes it again when the run fails before writing a checkpoint.
* Configs: :func:`check_targets` vets every ``_target_`` of a config (only fusion's own classes, torch optimizers
  and schedulers and Lightning's callbacks, loggers and trainer may be built) and :func:`instantiate` builds it,
  so a config or a run config saved next to a checkpoint never runs other code.
* Checkpoints: :func:`load_checkpoint` reads with ``weights_only=True``; :func:`load_network` rebuilds one network
  of a finished run from its saved config and loads its weights (``model.generator`` of GP-GAN, ``model.network``
  of FusionVAE and its baselines).
* Resuming: :func:`resume_path` finds the checkpoint a run continues from (``ckpt_path=auto``: the newest of the run
  folder's ``last.ckpt`` and the ``hpc_ckpt_N.ckpt`` Lightning writes on SLURM's requeue signal, if there is one),
  and :func:`start_run_dir` gives a named run (``run_name=NAME``) started again its old folder back, so a requeued
  job continues where it stopped.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from hydra.utils import to_absolute_path
from omegaconf import DictConfig, ListConfig, OmegaConf

from fusion.errors import INPUT_ERRORS, hydra_message, one_line

__all__ = [
    "check_state_fits",
    "check_target",
    "check_targets",
    "checkpoint_dir",
    "claim_run_dir",
    "discard_claimed_run_dir",
    "expect_run_dir",
    "holds_checkpoint",
    "instantiate",
    "load_checkpoint",
    "load_network",
    "resolve_class",
    "resume_path",
    "run_config_for",
    "save_run_config",
    "start_run_dir",
]


# ----------------------------------------------------------------------------------------------------
# Run folders
# ----------------------------------------------------------------------------------------------------
#: The run folder this process claimed, and the folders created for it: removed again when the run fails.
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


def start_run_dir(pattern: str | os.PathLike[str]) -> Path:
    """:func:`claim_run_dir`, remembered as this process's run folder (see :func:`discard_claimed_run_dir`).

    A folder at ``pattern`` where a run already started (it holds a checkpoint, :func:`holds_checkpoint`, or the
    config Hydra saved, ``.hydra/config.yaml``) is that run started again: a named run (``run_name=NAME``) requeued
    by SLURM or restarted by hand. It is returned as it is, to be resumed, and never removed. Timestamped folders
    never exist beforehand, so every other run still gets a new folder.

    In a launch of several processes that each start ``train.py`` (``srun`` with ``SLURM_NTASKS`` > 1, ``torchrun``
    with ``WORLD_SIZE`` > 1) every process joins the folder instead of claiming one, so all of them need the same
    folder name (``run_name=NAME`` or ``hydra.run.dir``), not a timestamp.
    """
    global _claimed_run_dir
    given = Path(pattern).absolute()
    if holds_checkpoint(given) or (given / ".hydra" / "config.yaml").is_file():
        _claimed_run_dir = None
        return given
    if _launched_processes() > 1:
        given.mkdir(parents=True, exist_ok=True)
        _claimed_run_dir = None
        return given
    _claimed_run_dir = claim_run_dir(pattern)
    return _claimed_run_dir


def _launched_processes() -> int:
    """How many processes the launcher (``srun``, ``torchrun``) started, each running ``train.py`` itself."""
    counts = [os.environ.get(key, "") for key in ("WORLD_SIZE", "SLURM_NTASKS")]
    return max([int(n) for n in counts if n.isdigit()] or [1])


def holds_checkpoint(run_dir: str | os.PathLike[str]) -> bool:
    """Whether ``run_dir`` holds a checkpoint to resume from: ``checkpoints/last.ckpt`` or ``hpc_ckpt_N.ckpt``."""
    folder = Path(run_dir)
    return (folder / "checkpoints" / "last.ckpt").is_file() or bool(_hpc_checkpoints(folder))


def _name_or(name: Any, default: Any) -> str:
    """``name`` unless it is null or empty, else ``default`` (the ``fusion_name_or`` resolver of the run folders)."""
    if name is None or str(name) == "":
        return str(default)
    text = str(name)
    if "/" in text or text in (".", ".."):
        raise ValueError(f"run_name must be a plain folder name, got {text!r}")
    return text


if not OmegaConf.has_resolver("fusion_name_or"):
    OmegaConf.register_new_resolver("fusion_name_or", _name_or)


def expect_run_dir(path: str | os.PathLike[str]) -> None:
    """Remember ``path`` as this process's run folder if it does not exist yet (the run will create it, and a failed
    run removes it again); an existing folder (a run being resumed) is never removed."""
    global _claimed_run_dir
    given = Path(path).absolute()
    if not given.exists():
        _created_parents[:] = [p for p in given.parents if not p.exists()]
        _claimed_run_dir = given


def discard_claimed_run_dir() -> None:
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
# Configs that build only what they may
# ----------------------------------------------------------------------------------------------------
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


def resolve_class(dotted: str) -> Any:
    import importlib

    module, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module), name)


def check_target(target: Any, where: str) -> None:
    """Refuse a ``_target_`` that is not a class :data:`_SAFE_TARGETS` allows (``ValueError`` naming ``where``)."""
    import inspect

    dotted = str(target)
    allowed = "fusion's own classes, torch optimizers and schedulers, and Lightning callbacks, loggers and trainers"
    refusal = f"{where}._target_ {dotted!r} is not allowed: a config may only build {allowed}"
    bases = next((b for prefix, b in _SAFE_TARGETS if dotted == prefix or dotted.startswith(prefix)), None)
    if bases is None or not dotted.replace(".", "").replace("_", "").isalnum():
        raise ValueError(refusal)
    try:
        obj = resolve_class(dotted)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"{where}._target_ {dotted!r} does not exist") from None
    if not inspect.isclass(obj) or not any(issubclass(obj, resolve_class(b)) for b in bases):
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
                check_target(value, what)
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
            cls = resolve_class(str(node["_target_"]))
            receivers = [k for k in getattr(cls, "SHARES_OPTIONS_WITH", ()) if k in nested]
            if receivers:
                named = _init_parameters(cls)
                check_options(cls, {k: v for k, v in options.items() if k in named}, what)
                shared = {k: v for k, v in options.items() if k not in named}
                for key in receivers:
                    own = set(node[key])  # a partial's own value wins over the shared one
                    _check_forwarded(
                        resolve_class(str(node[key]["_target_"])),
                        {k: v for k, v in shared.items() if k not in own},
                        what,
                    )
            else:
                check_options(cls, options, what)
        for key, value in node.items():
            _check_target_options(value, f"{what}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_target_options(value, f"{what}[{i}]")


def _init_parameters(cls: type) -> set[str]:
    """The keyword names ``cls.__init__`` takes itself (not through ``**kwargs``)."""
    import inspect

    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name for p in params if p.kind not in (inspect.Parameter.VAR_KEYWORD, inspect.Parameter.VAR_POSITIONAL)}


def _check_forwarded(cls: type, options: dict, what: str) -> None:
    """Check ``options`` against ``cls`` and, for those it takes through ``**kwargs``, against the ``__init__`` of
    its nearest base that defines one (the class passes them on with ``super().__init__(**kwargs)``)."""
    import inspect

    from fusion.options import check_options

    named = _init_parameters(cls)
    check_options(cls, {k: v for k, v in options.items() if k in named}, what)
    rest = {k: v for k, v in options.items() if k not in named}
    if not rest:
        return
    open_ended = any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(cls.__init__).parameters.values()
    )
    base = next((b for b in cls.__mro__[1:] if "__init__" in vars(b)), object)
    if open_ended and base is not object:
        _check_forwarded(base, rest, what)
    else:
        check_options(cls, rest, what)


def instantiate(node: Any, what: str, **kwargs: Any) -> Any:
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
        raise ValueError(f"cannot build {what}: {hydra_message(err)}") from err
    except OmegaConfBaseException as err:
        raise ValueError(f"cannot build {what}: {hydra_message(err)}") from None


# ----------------------------------------------------------------------------------------------------
# Checkpoints and the run configs beside them
# ----------------------------------------------------------------------------------------------------
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
        reason = one_line(str(err)).split(". ")[0][:160] or type(err).__name__
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


def checkpoint_dir(callbacks: Sequence[Any], output_dir: Path) -> Path:
    from lightning.pytorch.callbacks import ModelCheckpoint

    for callback in callbacks:
        if isinstance(callback, ModelCheckpoint) and callback.dirpath:
            return Path(callback.dirpath)
    return output_dir / "checkpoints"


def _hpc_checkpoints(run_dir: Path) -> list[Path]:
    """The ``hpc_ckpt_N.ckpt`` files Lightning's SLURM requeue handler wrote into ``run_dir``, by ``N``."""
    found = []
    for path in run_dir.glob("hpc_ckpt_*.ckpt"):
        number = path.stem.removeprefix("hpc_ckpt_")
        if number.isdigit() and path.is_file():
            found.append((int(number), path))
    return [path for _, path in sorted(found)]


def resume_path(ckpt_path: Any, checkpoint_dir: Path, run_dir: Path | None = None) -> Path | None:
    """The checkpoint a run resumes from, or ``None`` to start fresh.

    Args:
        ckpt_path: ``None`` (start fresh), ``"auto"`` (the newest of ``checkpoint_dir/last.ckpt`` and the
            highest ``run_dir/hpc_ckpt_N.ckpt`` when the run folder holds one, else start fresh), ``"last"``
            (the same, but one must exist) or the path of a checkpoint.
        checkpoint_dir: the folder of the checkpoint callback (``<run dir>/checkpoints``).
        run_dir: the run folder (Lightning's ``default_root_dir``), where the requeue checkpoints go.

    Raises:
        FileNotFoundError: ``ckpt_path=last`` and the run folder holds no checkpoint.
    """
    if ckpt_path is None:
        return None
    if str(ckpt_path) in ("auto", "last"):
        candidates = [checkpoint_dir / "last.ckpt"] if (checkpoint_dir / "last.ckpt").is_file() else []
        if run_dir is not None:
            candidates += _hpc_checkpoints(run_dir)[-1:]
        if candidates:  # the one written last; on a tie, last.ckpt
            return max(enumerate(candidates), key=lambda item: (item[1].stat().st_mtime_ns, -item[0]))[1]
        if str(ckpt_path) == "auto":
            return None
        raise FileNotFoundError(
            f"ckpt_path=last but {checkpoint_dir / 'last.ckpt'} does not exist; resume in the interrupted run's "
            "directory with hydra.run.dir=RUN_DIR (or the same run_name=NAME), or pass ckpt_path=PATH"
        )
    return Path(to_absolute_path(str(ckpt_path)))


def save_run_config(cfg: DictConfig, output_dir: Path) -> Path:
    """The run's config as Hydra saves it (``.hydra/config.yaml``); written here when Hydra did not."""
    from fusion.data.io import atomic_output

    path = output_dir / ".hydra" / "config.yaml"
    if not path.is_file():
        with atomic_output(path) as tmp:
            tmp.write_text(OmegaConf.to_yaml(cfg))
    return path


def run_config_for(checkpoint: Path) -> Path:
    """``.hydra/config.yaml`` of the run that wrote ``checkpoint`` (its folder or up to two levels above)."""
    for folder in [checkpoint.parent, *list(checkpoint.parents)[1:3]]:
        candidate = folder / ".hydra" / "config.yaml"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(
        f"no saved run config (.hydra/config.yaml) next to or above checkpoint {checkpoint}; "
        "use a checkpoint inside the run directory written by train.py"
    )


def load_network(checkpoint: str | os.PathLike[str], *, key: str = "generator") -> torch.nn.Module:
    """Rebuild ``model.<key>`` from the run's saved config and load its weights from ``checkpoint`` (eval mode).

    The checkpoint is read with ``weights_only=True``; only the network is built (no Lightning, no critic).

    Raises:
        FileNotFoundError: missing checkpoint or run config.
        ValueError: corrupt checkpoint, or weights that do not fit the configured network.
    """
    path = Path(to_absolute_path(str(checkpoint)))
    checkpoint_data = load_checkpoint(path)
    config_path = run_config_for(path)
    run_cfg = OmegaConf.load(config_path)
    node = OmegaConf.select(run_cfg, f"model.{key}")
    if node is None:
        kinds = {"generator": "GP-GAN (experiment=gpgan_*)", "network": "FusionVAE, CVAE or FCN"}
        kind = kinds.get(key, f"a model with a {key}")
        raise ValueError(f"the run config {config_path} has no model.{key}: this needs a checkpoint of a {kind} run")
    network = instantiate(node, f"model.{key}")
    prefix = f"{key}."
    state = {k[len(prefix) :]: v for k, v in checkpoint_data["state_dict"].items() if k.startswith(prefix)}
    if not state:
        raise ValueError(f"checkpoint {path} holds no {key} weights (no '{prefix}*' entries)")
    check_state_fits(state, network.state_dict(), path, f"model.{key} of {config_path}")
    network.load_state_dict(state)
    return network.eval()
