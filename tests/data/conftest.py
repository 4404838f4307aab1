"""Tiny folders in the published layouts of MNIST, CelebA and T-LESS; data modules built from the shipped configs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from fusion.data.datamodule import FusionDataModule
from fusion.data.occluders import cut_occluders
from fusion.data.synthetic_layouts import write_synthetic_celeba, write_synthetic_mnist, write_synthetic_tless
from fusion.data.tless import EVAL_OCCLUDER_CLASSES, TARGET_CLASSES, TRAIN_OCCLUDER_CLASSES
from fusion.runs import instantiate

CONF = Path(__file__).resolve().parents[2] / "conf"


@pytest.fixture(scope="session")
def mnist(tmp_path_factory) -> Path:
    return write_synthetic_mnist(tmp_path_factory.mktemp("mnist"), n_train=40, n_test=24)


@pytest.fixture(scope="session")
def celeba(tmp_path_factory) -> Path:
    return write_synthetic_celeba(tmp_path_factory.mktemp("celeba"), n=15)


@pytest.fixture(scope="session")
def tless(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tless")
    write_synthetic_tless(root, 20, classes=TARGET_CLASSES, size=64)
    write_synthetic_tless(root, 2, classes=TRAIN_OCCLUDER_CLASSES + EVAL_OCCLUDER_CLASSES, size=64, seed=1)
    occluders = tmp_path_factory.mktemp("occluders")
    cut_occluders(root, occluders)
    return root, occluders


def data_module(name: str, root: Path | str | None = None, *overrides: str) -> FusionDataModule:
    """The data module of ``conf/data/fusion_<name>.yaml`` (seed 0, batches of 4, no workers, 16 validation items),
    with ``root`` and then ``KEY=VALUE`` overrides of the data node, built the way ``train.py`` builds it."""
    cfg = OmegaConf.create({"seed": 0, "data": OmegaConf.load(CONF / "data" / f"fusion_{name}.yaml")})
    settings = ["batch_size=4", "num_workers=0", "val_items=16"]
    settings += [] if root is None else [f"root={root}"]
    for override in [*settings, *overrides]:
        key, _, value = override.partition("=")
        OmegaConf.update(cfg.data, key, yaml.safe_load(value))
    return instantiate(cfg.data, "data")
