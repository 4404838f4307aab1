"""Name → method registry used by ``infer.py``.

A registered method is its command-line adapter ``<m>_cli(fg, bg, mask, **params)`` taking ``(B, C, H, W)``
images and a ``(B, 1, H, W)`` mask in [0, 1] (``mask`` is ``None`` for methods registered with
``needs_mask=False``, such as optimal transport between two images). It returns a :class:`MethodOutput`: the
``(B, C, H, W)`` result plus the extra images, frame sequences and curves the command line writes next to it.
Methods register themselves when their module is imported (``fusion.methods`` imports them all). The Python
functions of a method follow :mod:`fusion.methods.contract`.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from fusion import ConvergenceWarning

Method = Callable[..., "MethodOutput"]


@dataclass
class MethodOutput:
    """What a method hands to the command line besides its result.

    Attributes:
        result: ``(B, C, H, W)`` main result, written to ``out``.
        images: extra ``(B, C, H, W)`` images in [0, 1], written as ``<out stem>_<name>.png``.
        frames: ``(T, B, C, H, W)`` sequences, written as ``<out stem>_<name>.gif`` (animation),
            ``<out stem>_<name>_strip.png`` (all frames in a row) and ``<out stem>_<name>/NNN.png``.
        curves: named 1-D sequences (energy, residual, ...), plotted to ``<out stem>_<name>.png`` with their values
            in ``<out stem>_<name>.csv``; the value is ``{label: values}`` for several curves on one plot.
    """

    result: torch.Tensor
    images: dict[str, torch.Tensor] = field(default_factory=dict)
    frames: dict[str, torch.Tensor] = field(default_factory=dict)
    curves: dict[str, dict[str, torch.Tensor | list[float]]] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodSpec:
    """A registered method.

    Attributes:
        name: the name ``infer.py method=NAME`` selects.
        fn: the command-line adapter, ``fn(fg, bg, mask, **options)``.
        needs_mask: ``False`` for methods of two whole images (``mask`` is then ``None``).
        samples: sub-folder of ``datasets/samples`` holding this method's own built-in inputs (``fg.png``,
            ``bg.png``, ``mask.png``), used when none is given; ``None`` uses the shared ones.
        options_from: for an adapter that passes ``**options`` on, the function receiving them: its signature
            says which options exist and their types (the command line checks them before the method runs).
        loads: what the method needs loaded from disk, ``{option: network}``: the option (in the method's yaml) is
            the path of a checkpoint written by ``train.py``; the command line rebuilds ``model.<network>`` from
            that run's saved config, loads its weights and passes it to the adapter as the keyword ``network``
            (GP-GAN: ``{"ckpt": "generator"}``).
    """

    name: str
    fn: Method
    needs_mask: bool = True
    samples: str | None = None
    options_from: Callable[..., object] | None = None
    loads: Mapping[str, str] = field(default_factory=dict)


_REGISTRY: dict[str, MethodSpec] = {}


def register(
    name: str,
    *,
    needs_mask: bool = True,
    samples: str | None = None,
    options_from: Callable[..., object] | None = None,
    loads: Mapping[str, str] | None = None,
) -> Callable[[Method], Method]:
    """Decorator adding ``fn`` to the registry under ``name`` (see :class:`MethodSpec` for the options)."""

    def deco(fn: Method) -> Method:
        if name in _REGISTRY and _REGISTRY[name].fn is not fn:
            raise ValueError(f"method name {name!r} is registered twice")
        _REGISTRY[name] = MethodSpec(name, fn, needs_mask, samples, options_from, dict(loads or {}))
        return fn

    return deco


def available_methods() -> list[str]:
    """Sorted names of every registered method."""
    return sorted(_REGISTRY)


def method_spec(name: str) -> MethodSpec:
    """The :class:`MethodSpec` registered as ``name``; ``ValueError`` naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown method {name!r}; expected one of: {', '.join(available_methods()) or '(none)'}"
        ) from None


def get_method(name: str) -> Method:
    """The function registered as ``name``; ``ValueError`` naming the known ones otherwise."""
    return method_spec(name).fn


def checked_result(name: str, output: object, shape: torch.Size | tuple[int, ...]) -> torch.Tensor:
    """The result of a registered adapter's ``output``, checked: a :class:`MethodOutput` whose ``result`` is a
    tensor of ``shape`` (the background's); ``TypeError`` / ``RuntimeError`` naming the method otherwise.

    Example:
        >>> checked_result("paste", MethodOutput(torch.zeros(1, 3, 2, 2)), (1, 3, 2, 2)).shape
        torch.Size([1, 3, 2, 2])
    """
    if not isinstance(output, MethodOutput):
        raise TypeError(
            f"method {name!r} returned {type(output).__name__}; a registered adapter returns a MethodOutput"
        )
    result = output.result
    if not isinstance(result, torch.Tensor) or result.shape != tuple(shape):
        got = tuple(result.shape) if isinstance(result, torch.Tensor) else type(result).__name__
        raise RuntimeError(f"method {name!r} returned {got}, expected a tensor of shape {tuple(shape)}")
    return result


@contextlib.contextmanager
def recorded_convergence() -> Iterator[list[ConvergenceWarning]]:
    """Collect every :class:`fusion.ConvergenceWarning` raised in the block (repeats included) into the yielded
    list, filled when the block ends; any other warning is raised again as it was.

    Example:
        >>> with recorded_convergence() as found:
        ...     warnings.warn(ConvergenceWarning("stopped", samples=[1], batch=2))
        >>> [list(w.samples) for w in found]
        [[1]]
    """
    found: list[ConvergenceWarning] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        yield found
    for warning in caught:
        if issubclass(warning.category, ConvergenceWarning):
            found.append(warning.message)
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
