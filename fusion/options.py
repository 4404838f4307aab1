"""Strict checking of option values from a config or the command line against a function's signature.

Hydra parses ``method.mixed=maybe`` as the string ``'maybe'`` and ``method.max_iter=abc`` as ``'abc'``; passed on
unchecked, the first is silently true and the second fails deep inside a solver. :func:`check_options` compares
every given value with the type annotation of the parameter it is for, before anything runs, and raises one
``ValueError`` that names the option as the user wrote it (``method.max_iter must be an integer, got 'abc'``).

Understood annotations: ``bool`` (only ``true``/``false``), ``int`` (not a bool, not a float), ``float`` (an int is
accepted and converted), ``str``, ``Literal[...]``, ``X | None`` / ``Optional[X]`` and unions of these, sequences
(``list[int]``, ``tuple[int, int]``, ``Sequence[...]``), mappings (only that the value is one), and other classes
(a scalar from a config never is a tensor or a module; a string may stand for a path). What a mapping or a sequence
of objects holds is left to the function.
"""

from __future__ import annotations

import collections.abc
import inspect
import os
import types
import typing
from typing import Any, Callable, Literal, Mapping

__all__ = ["check_options", "check_value", "describe"]

_UNCHECKED = object()  # an annotation this module does not judge


def _arms(hint: Any) -> list[Any] | None:
    origin = typing.get_origin(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(hint, types.UnionType)):
        return list(typing.get_args(hint))
    return None


def describe(hint: Any) -> str:
    """The annotation in the words of an error message (``'an integer or null'``)."""
    arms = _arms(hint)
    if arms is not None:
        literals = [v for a in arms if typing.get_origin(a) is Literal for v in typing.get_args(a)]
        words = [describe(a) for a in arms if a is not type(None) and typing.get_origin(a) is not Literal]
        words = [w for w in words if w]  # classes a config cannot hold are not worth naming
        if literals:
            words.append(describe(Literal[tuple(literals)]))
        if type(None) in arms:
            words.append("null")
        return " or ".join(dict.fromkeys(words))
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(v) if isinstance(v, str) else str(v) for v in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple, collections.abc.Sequence):
        return "a list"
    if typing.get_origin(hint) in (dict, collections.abc.Mapping) or hint is dict:
        return "a mapping"
    if inspect.isclass(hint) and issubclass(hint, os.PathLike):
        return "a path"
    return ""


def _match(value: Any, hint: Any) -> Any:
    """``value`` converted to fit ``hint``, :data:`_UNCHECKED` when ``hint`` is not judged here; raises
    ``TypeError`` when it does not fit."""
    if hint is Any or hint is inspect.Parameter.empty:
        return _UNCHECKED
    arms = _arms(hint)
    if arms is not None:
        if value is None and type(None) in arms:
            return None
        unchecked = False
        for arm in arms:
            if arm is type(None):
                continue
            try:
                got = _match(value, arm)
            except TypeError:
                continue
            if got is _UNCHECKED:
                unchecked = True
                continue
            return got
        if unchecked:
            return _UNCHECKED
        raise TypeError
    if hint is type(None):
        if value is None:
            return None
        raise TypeError
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise TypeError
    if hint is str:
        if isinstance(value, str):
            return value
        raise TypeError
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        for choice in choices:  # a bool must not pass for 1, nor 1 for True
            if value == choice and type(value) is type(choice):
                return value
        raise TypeError
    if origin in (dict, collections.abc.Mapping):
        if isinstance(value, collections.abc.Mapping):
            return _UNCHECKED
        raise TypeError
    if origin in (list, tuple, collections.abc.Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, collections.abc.Sequence):
            raise TypeError
        args = [a for a in typing.get_args(hint) if a is not Ellipsis]
        if origin is tuple and args and Ellipsis not in typing.get_args(hint) and len(args) != len(value):
            raise TypeError
        if args:
            items = [_match(v, args[min(i, len(args) - 1)]) for i, v in enumerate(value)]
            return [v if got is _UNCHECKED else got for v, got in zip(value, items)]
        return list(value)
    if origin is None and inspect.isclass(hint):
        # a config holds only null, booleans, numbers, strings, lists and mappings: a value of any other class
        # (a tensor, a module) cannot come from one; paths are written as strings
        if isinstance(value, hint) or (isinstance(value, str) and issubclass(hint, (os.PathLike, str))):
            return _UNCHECKED
        if hint in (dict, list, tuple) or isinstance(value, (bool, int, float, str)) or value is None:
            raise TypeError
    return _UNCHECKED


def check_value(value: Any, hint: Any, name: str) -> Any:
    """Check one value against one annotation; return it (an int converted for a ``float``).

    Raises:
        ValueError: ``"<name> must be <described hint>, got <value>"``.
    """
    try:
        got = _match(value, hint)
    except TypeError:
        raise ValueError(f"{name} must be {describe(hint) or 'of another type'}, got {value!r}") from None
    return value if got is _UNCHECKED else got


def _hints(fn: Callable[..., Any]) -> dict[str, Any]:
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        return typing.get_type_hints(target)
    except Exception:  # annotations that cannot be resolved are not checked
        return {}


def check_options(
    fn: Callable[..., Any],
    options: Mapping[str, Any],
    prefix: str,
    *,
    forwards_to: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Check keyword options meant for ``fn`` (a function or a class) against its annotations.

    Args:
        fn: the callee; for a class, its ``__init__``.
        options: option name → value, as parsed from the config.
        prefix: how the user names them, e.g. ``"method"`` (messages say ``method.max_iter``).
        forwards_to: where ``fn`` passes its ``**kwargs`` on: the options ``fn`` does not name are checked against
            this function's signature instead (unknown ones included).

    Returns:
        The options, with ints converted where a float is expected.

    Raises:
        ValueError: an unknown option (when ``fn`` takes no ``**kwargs``) or a value of the wrong type.

    Example:
        >>> def solve(x, *, max_iter: int = 10, mixed: bool = False): ...
        >>> check_options(solve, {"max_iter": 5}, "method")
        {'max_iter': 5}
        >>> check_options(solve, {"mixed": "maybe"}, "method")
        Traceback (most recent call last):
        ...
        ValueError: method.mixed must be true or false, got 'maybe'
    """
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return dict(options)
    hints = _hints(fn)
    open_ended = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    checked = {}
    if open_ended and forwards_to is not None:
        mine = {k: v for k, v in options.items() if k in parameters}
        rest = {k: v for k, v in options.items() if k not in parameters}
        return {**check_options(fn, mine, prefix), **check_options(forwards_to, rest, prefix)}
    for key, value in options.items():
        name = f"{prefix}.{key}" if prefix else key
        if key not in parameters:
            if open_ended:
                checked[key] = value
                continue
            known = ", ".join(k for k, p in parameters.items() if p.kind is not inspect.Parameter.VAR_POSITIONAL)
            raise ValueError(f"unknown option {name}; {prefix or 'the'} options are: {known}")
        checked[key] = check_value(value, hints.get(key, inspect.Parameter.empty), name)
    return checked
