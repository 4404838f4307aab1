"""Option values from a config, checked strictly against the annotations of the function they are for."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional, Sequence

import pytest

from fusion.options import check_options, check_value


def _method(
    fg,
    bg,
    mask,
    *,
    mixed: bool = False,
    max_iter: int = 10,
    tol: float = 1e-6,
    solver: Literal["exact", "spectral"] = "exact",
    levels: int | None = None,
    sigma: Optional[float] = None,
    offset: tuple[int, int] | None = None,
    sizes: Sequence[int] = (1,),
    root: Path | None = None,
    stage: dict | None = None,
):
    return None


GOOD = [
    ("mixed", True, True),
    ("mixed", False, False),
    ("max_iter", 7, 7),
    ("tol", 1, 1.0),  # an integer is a number
    ("tol", 1e-3, 1e-3),
    ("solver", "spectral", "spectral"),
    ("levels", None, None),
    ("levels", 3, 3),
    ("sigma", None, None),
    ("sigma", 2, 2.0),
    ("offset", [1, 2], [1, 2]),
    ("sizes", [3, 4, 5], [3, 4, 5]),
    ("root", "/data/x", "/data/x"),
    ("stage", {"max_iter": 3}, {"max_iter": 3}),
]


@pytest.mark.parametrize(("key", "value", "expected"), GOOD)
def test_good_values_pass(key, value, expected) -> None:
    got = check_options(_method, {key: value}, "method")[key]
    assert got == expected and type(got) is type(expected)


BAD = [
    ("mixed", "maybe", "method.mixed must be true or false, got 'maybe'"),
    ("mixed", 1, "method.mixed must be true or false, got 1"),
    ("max_iter", "abc", "method.max_iter must be an integer, got 'abc'"),
    ("max_iter", 2.5, "method.max_iter must be an integer, got 2.5"),
    ("max_iter", True, "method.max_iter must be an integer, got True"),
    ("tol", "abc", "method.tol must be a number, got 'abc'"),
    ("tol", False, "method.tol must be a number, got False"),
    ("solver", "fast", "method.solver must be one of 'exact', 'spectral', got 'fast'"),
    ("levels", "two", "method.levels must be an integer or null, got 'two'"),
    ("offset", [1], "method.offset must be a list or null, got [1]"),
    ("offset", [1, "a"], "method.offset must be a list or null, got [1, 'a']"),
    ("sizes", "abc", "method.sizes must be a list, got 'abc'"),
    ("root", 3, "method.root must be a path or null, got 3"),
    ("stage", "x", "method.stage must be a mapping or null, got 'x'"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD)
def test_bad_values_are_named(key, value, message) -> None:
    with pytest.raises(ValueError) as err:
        check_options(_method, {key: value}, "method")
    assert str(err.value) == message


def test_unknown_option_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown option method\.bogus; method options are: .*max_iter"):
        check_options(_method, {"bogus": 1}, "method")


def test_open_ended_functions_pass_unknown_options_on() -> None:
    def adapter(fg, *, alpha: float = 1.0, **params):
        return None

    assert check_options(adapter, {"alpha": 2, "other": "x"}, "method") == {"alpha": 2.0, "other": "x"}


def test_classes_are_checked_by_their_init() -> None:
    class Net:
        def __init__(self, width: int = 4, act: Literal["relu", "swish"] = "relu") -> None: ...

    assert check_options(Net, {"width": 8}, "model") == {"width": 8}
    with pytest.raises(ValueError, match="model.act must be one of 'relu', 'swish', got 'gelu'"):
        check_options(Net, {"act": "gelu"}, "model")


def test_literal_does_not_confuse_booleans_and_numbers() -> None:
    with pytest.raises(ValueError):
        check_value(True, Literal[1, 2], "x")
    with pytest.raises(ValueError):
        check_value(1, Literal[True, "warn"], "x")
    assert check_value("warn", bool | Literal["warn"] | None, "x") == "warn"


def test_forwarded_options_are_checked_against_the_receiver() -> None:
    def solve(fg, *, lr: float = 1.0, mixed_precision: bool | None = None):
        return None

    def adapter(fg, *, seed: int = 0, **options):
        return solve(fg, **options)

    got = check_options(adapter, {"seed": 3, "lr": 2}, "method", forwards_to=solve)
    assert got == {"seed": 3, "lr": 2.0} and type(got["lr"]) is float
    with pytest.raises(ValueError, match="method.mixed_precision must be true or false or null, got 'abc'"):
        check_options(adapter, {"mixed_precision": "abc"}, "method", forwards_to=solve)
    with pytest.raises(ValueError, match="method.seed must be an integer"):
        check_options(adapter, {"seed": "x"}, "method", forwards_to=solve)
    with pytest.raises(ValueError, match="unknown option method.nope"):
        check_options(adapter, {"nope": 1}, "method", forwards_to=solve)
