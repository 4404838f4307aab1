"""Every boolean, integer and number option of every method and of every training experiment rejects a value of
the wrong type with an error that names it — checked for each option the shipped configs set. (Options whose
annotation also admits a string, such as Lightning's ``devices="auto"``, are left out: a string is valid there, and
the receiver checks its value.)"""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

import fusion.methods  # noqa: F401  (registers every method)
from fusion.methods import method_spec
from fusion.options import check_options, check_value
from fusion.runs import check_targets, resolve_class

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"


def _compose(name: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name=name, overrides=overrides)


def _wrong(value):
    return "maybe" if isinstance(value, bool) else "abc"


def _admits_text(fn, key: str) -> bool:
    target = fn.__init__ if isinstance(fn, type) else fn
    hint = typing.get_type_hints(target).get(key)
    try:
        check_value("abc", hint, key)
    except ValueError:
        return False
    return hint is not None


def _method_cases():
    cases = []
    for path in sorted((CONF / "method").glob("*.yaml")):
        cfg = _compose("infer", [f"method={path.stem}"])
        spec = method_spec(path.stem)
        for key, value in OmegaConf.to_container(cfg.method, resolve=True).items():
            if key != "name" and isinstance(value, (bool, int, float)):
                receiver = (
                    spec.fn if key in typing.get_type_hints(spec.fn) or spec.options_from is None else spec.options_from
                )
                if not _admits_text(receiver, key):
                    cases.append((path.stem, key, value))
    return cases


METHOD_CASES = _method_cases()


def test_every_method_has_typed_options() -> None:
    assert {m for m, _, _ in METHOD_CASES} == {p.stem for p in (CONF / "method").glob("*.yaml")}


@pytest.mark.parametrize(("method", "key", "value"), METHOD_CASES, ids=[f"{m}.{k}" for m, k, _ in METHOD_CASES])
def test_method_option_of_the_wrong_type(method: str, key: str, value) -> None:
    spec = method_spec(method)
    check_options(spec.fn, {key: value}, "method", forwards_to=spec.options_from)  # the shipped value passes
    with pytest.raises(ValueError, match=rf"^method\.{key} must be .*, got '{_wrong(value)}'$"):
        check_options(spec.fn, {key: _wrong(value)}, "method", forwards_to=spec.options_from)


def _receiver(cls, node: dict, key: str):
    """The class whose signature types ``key``: ``cls``, or for an option a data module shares with its data sets
    (``SHARES_OPTIONS_WITH``), the first data set class up the inheritance chain that names it."""
    import inspect

    if key in inspect.signature(cls.__init__).parameters or not getattr(cls, "SHARES_OPTIONS_WITH", ()):
        return cls
    for entry in cls.SHARES_OPTIONS_WITH:
        for base in resolve_class(node[entry]["_target_"]).__mro__:
            if "__init__" in vars(base) and key in inspect.signature(base.__init__).parameters:
                return base
    return cls


def _training_cases():
    cases = []
    for path in sorted((CONF / "experiment").glob("*.yaml")):
        cfg = _compose(
            "train",
            [f"experiment={path.stem}", "data.root=X"] if "digits" not in path.stem else [f"experiment={path.stem}"],
        )
        for group in ("model", "data", "trainer"):
            node = OmegaConf.to_container(cfg[group], resolve=False)
            cls = resolve_class(node["_target_"])
            for key, value in node.items():
                receiver = _receiver(cls, node, key)
                typed = isinstance(value, (bool, int, float)) and not _admits_text(receiver, key)
                if not key.startswith("_") and typed:
                    cases.append((path.stem, f"{group}.{key}", value))
    return cases


TRAINING_CASES = _training_cases()


@pytest.mark.parametrize(("experiment", "key", "value"), TRAINING_CASES, ids=[f"{e}:{k}" for e, k, _ in TRAINING_CASES])
def test_training_option_of_the_wrong_type(experiment: str, key: str, value) -> None:
    overrides = [f"experiment={experiment}", f"{key}={_wrong(value)}"]
    if "digits" not in experiment:
        overrides.append("data.root=X")
    cfg = _compose("train", overrides)
    group = key.split(".")[0]
    with pytest.raises(ValueError, match=rf"^{key.replace('.', '[.]')} must be .*, got '{_wrong(value)}'$"):
        check_targets(cfg[group], group)
