"""The command-line contract of ``infer.py`` and ``train.py``: vetted overrides, one-line errors, warning lines, help.

* :func:`check_overrides` rejects bad overrides (such as an unknown ``method=``) before Hydra starts, and
  :func:`prepare_run` decides where the run writes (a new run folder, or only ``out=``).
* :func:`exit_on_input_error` turns the ``ValueError`` / ``TypeError`` / ``FileNotFoundError`` raised for bad input
  into a single ``error: ...`` line on stderr and exit status 2; any other exception keeps its traceback.
* :func:`convergence_warnings_as_lines` prints every :class:`fusion.ConvergenceWarning` as one ``warning: ...``
  line and logs it to the run; :func:`run_cli` runs an entry point under both.
* :func:`group_help` writes the method and experiment lists of ``--help``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from fusion import ConvergenceWarning
from fusion.errors import EXIT_BAD_INPUT, INPUT_ERRORS, hydra_message, one_line
from fusion.runs import discard_claimed_run_dir, expect_run_dir, start_run_dir

__all__ = [
    "CONFIG_DIR",
    "check_overrides",
    "config_summary",
    "convergence_warnings_as_lines",
    "exit_on_input_error",
    "group_help",
    "prepare_run",
    "run_cli",
]

#: The project's Hydra configs.
CONFIG_DIR = Path(__file__).resolve().parent.parent / "conf"


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
        print(f"error: {one_line(message)}", file=sys.stderr)
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
                text = f"warning: {one_line(str(message))}"
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
        discard_claimed_run_dir()  # a failed run leaves no folder behind
        raise
    for key, value in outputs.items():
        if isinstance(value, Path):
            print(f"wrote {key}: {value}")
    return outputs


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
            raise ValueError(f"invalid override {arg!r}: {hydra_message(err)}") from None
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
        raise ValueError(f"invalid override: {hydra_message(err)}") from None


def prepare_run(argv: Sequence[str], config_dir: str | os.PathLike[str], config_name: str) -> list[str]:
    """Vet the command line (:func:`check_overrides`) and decide where the run writes; return Hydra overrides to add.

    * ``infer.py ... out=PATH`` (or a batch run's ``out_dir=DIR``): the outputs go where ``out`` (``out_dir``) says
      and nothing else is written (no run folder, no saved config, no log file: warnings go to stderr only).
    * otherwise, unless ``hydra.run.dir`` is given: a new run folder is claimed (:func:`fusion.runs.start_run_dir`)
      from the configured pattern (``outputs/<task>/<date>_<time>-<microseconds>``), and :func:`run_cli` removes it
      again if the run fails before writing a checkpoint. A ``hydra.run.dir`` that does not exist yet is treated the
      same way; an existing one (a run being resumed) is never removed.

    Command lines with flags (``--help``, ``--multirun``, ...) are left to Hydra.
    """
    cfg = check_overrides(argv, config_dir, config_name)
    if cfg is None or any(arg.startswith("-") for arg in argv):
        return []
    if config_name == "infer" and (cfg.get("out") is not None or cfg.get("out_dir") is not None):
        return ["hydra.output_subdir=null", "hydra.run.dir=.", "hydra/job_logging=none", "hydra/hydra_logging=none"]
    if any(arg.lstrip("+~").split("=", 1)[0] == "hydra.run.dir" for arg in argv):
        expect_run_dir(str(cfg.hydra.run.dir))  # a folder this run creates is removed again if the run fails
        return []
    from omegaconf.errors import OmegaConfBaseException

    try:
        pattern = str(OmegaConf.select(cfg, "hydra.run.dir", throw_on_missing=True))
    except OmegaConfBaseException as err:
        raise ValueError(f"invalid hydra.run.dir: {hydra_message(err)}") from None
    return [f"hydra.run.dir={start_run_dir(pattern)}"]


# ----------------------------------------------------------------------------------------------------
# Help text (``--help`` of infer.py and train.py)
# ----------------------------------------------------------------------------------------------------
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
