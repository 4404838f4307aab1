"""The composed config of every experiment: the settings that matter, from a table, and experiment files that hold
only what differs from the defaults they build on."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
#: Every experiment file, the shared ones (experiment/shared/*.yaml) included.
FILES = sorted(str(p.relative_to(CONF / "experiment").with_suffix("")) for p in (CONF / "experiment").rglob("*.yaml"))


class Settings(NamedTuple):
    batch_size: int
    monitor: str
    lr: float  # the (generator's) optimizer
    max_epochs: int
    max_steps: int
    model: str  # the LightningModule
    network: str  # the network (the generator of the GAN)
    data_set: str | None  # the class of both FusionVAE data sets; None: the Transient Attributes pairs
    eval_samples: int | None
    in_channels: int | None
    skip: bool | None


_VAE, _CVAE, _FCN = "fusion.nn.fusionvae.FusionVAE", "fusion.nn.baselines.CVAE", "fusion.nn.baselines.FCN"
_MODULE, _GAN = "fusion.models.fusionvae.FusionModule", "fusion.models.gpgan.BlendingGAN"
_MNIST, _DIGITS = "fusion.data.mnist.FusionMNIST", "fusion.data.digits.FusionDigits"
_CELEBA, _TLESS = "fusion.data.celeba.FusionCelebA", "fusion.data.tless.FusionTLESS"
_M = "val/mse_min"
# fmt: off
TABLE = {
    #                     batch  monitor  lr     epochs steps model    network  data set eval  C  skip
    "fusionvae_mnist":  Settings(800, _M, 0.01, 400, -1, _MODULE, _VAE, _MNIST, 1000, 1, None),
    "fusionvae_celeba": Settings(32, _M, 0.01, 90, -1, _MODULE, _VAE, _CELEBA, 100, 3, None),
    "fusionvae_tless":  Settings(32, _M, 0.01, 500, -1, _MODULE, _VAE, _TLESS, 100, 3, None),
    "fusionvae_digits": Settings(64, _M, 0.01, 40, -1, _MODULE, _VAE, _DIGITS, 100, 1, None),
    "cvae_mnist":       Settings(800, _M, 0.01, 400, -1, _MODULE, _CVAE, _MNIST, 1000, 1, False),
    "cvae_celeba":      Settings(32, _M, 0.01, 90, -1, _MODULE, _CVAE, _CELEBA, 100, 3, False),
    "cvae_tless":       Settings(32, _M, 0.01, 500, -1, _MODULE, _CVAE, _TLESS, 100, 3, False),
    "cvae_digits":      Settings(64, _M, 0.01, 40, -1, _MODULE, _CVAE, _DIGITS, 100, 1, False),
    "cvae_s_mnist":     Settings(800, _M, 0.01, 400, -1, _MODULE, _CVAE, _MNIST, 1000, 1, True),
    "cvae_s_celeba":    Settings(32, _M, 0.01, 90, -1, _MODULE, _CVAE, _CELEBA, 100, 3, True),
    "cvae_s_tless":     Settings(32, _M, 0.01, 500, -1, _MODULE, _CVAE, _TLESS, 100, 3, True),
    "cvae_s_digits":    Settings(64, _M, 0.01, 40, -1, _MODULE, _CVAE, _DIGITS, 100, 1, True),
    "fcn_mnist":        Settings(800, _M, 0.01, 400, -1, _MODULE, _FCN, _MNIST, 1000, 1, False),
    "fcn_celeba":       Settings(32, _M, 0.01, 90, -1, _MODULE, _FCN, _CELEBA, 100, 3, False),
    "fcn_tless":        Settings(32, _M, 0.01, 500, -1, _MODULE, _FCN, _TLESS, 100, 3, False),
    "fcn_digits":       Settings(64, _M, 0.01, 40, -1, _MODULE, _FCN, _DIGITS, 100, 1, False),
    "fcn_s_mnist":      Settings(800, _M, 0.01, 400, -1, _MODULE, _FCN, _MNIST, 1000, 1, True),
    "fcn_s_celeba":     Settings(32, _M, 0.01, 90, -1, _MODULE, _FCN, _CELEBA, 100, 3, True),
    "fcn_s_tless":      Settings(32, _M, 0.01, 500, -1, _MODULE, _FCN, _TLESS, 100, 3, True),
    "fcn_s_digits":     Settings(64, _M, 0.01, 40, -1, _MODULE, _FCN, _DIGITS, 100, 1, True),
    "gpgan_transient":  Settings(64, "val/mse", 0.002, 25, -1, _GAN, "fusion.nn.gpgan.BlendingGenerator", None, None, None, None),  # noqa: E501
    "gpgan_smoke":      Settings(4, "val/mse", 0.002, -1, 30, _GAN, "fusion.nn.gpgan.BlendingGenerator", None, None, None, None),  # noqa: E501
}
# fmt: on


def _compose(overrides: list[str], conf: Path = CONF):
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def _settings(cfg) -> Settings:
    model, data = cfg.model, cfg.data
    network = model.network if "network" in model else model.generator
    optimizer = model.optimizer if "optimizer" in model else model.generator_optimizer
    if "train_set" in data:
        assert data.train_set._target_ == data.eval_set._target_, "both splits of one data set"
        assert data.train_set._partial_ and data.eval_set._partial_
        data_set = data.train_set._target_
    else:
        assert data._target_ == "fusion.data.transient.TransientAttributesDataModule"
        data_set = None
    return Settings(
        data.batch_size,
        cfg.callbacks.model_checkpoint.monitor,
        optimizer.lr,
        cfg.trainer.max_epochs,
        cfg.trainer.max_steps,
        model._target_,
        network._target_,
        data_set,
        cfg.get("eval_samples"),
        network.get("in_channels"),
        network.get("skip"),
    )


def test_the_table_covers_every_experiment() -> None:
    assert sorted(TABLE) == EXPERIMENTS


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_composed_settings(experiment: str) -> None:
    cfg = _compose([f"experiment={experiment}"])
    assert _settings(cfg) == TABLE[experiment]
    assert cfg.task_name == experiment
    if cfg.data._target_ == "fusion.data.datamodule.FusionDataModule":
        assert cfg.model.network.image_size == cfg.data.image_size and cfg.data.max_inputs == 3
        assert cfg.data.train_set.get("train", cfg.data.train_set.get("split")) in (True, "train")
        assert cfg.data.eval_set.get("train", cfg.data.eval_set.get("split")) in (False, "test")


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


@pytest.mark.parametrize("name", FILES)
def test_experiment_files_only_override(name: str, tmp_path: Path) -> None:
    """Every value an experiment file sets differs from what its defaults already give: a value shared by several
    experiments lives once, in the data, model, callback or shared experiment config they build on."""
    path = CONF / "experiment" / f"{name}.yaml"
    body = yaml.safe_load(path.read_text()) or {}
    defaults = body.pop("defaults", [])
    conf = tmp_path / "conf"
    shutil.copytree(CONF, conf)
    (conf / "experiment" / f"{name}.yaml").write_text("# @package _global_\n" + yaml.safe_dump({"defaults": defaults}))
    without = _compose([f"experiment={name}"], conf)
    for key, value in _flat(body).items():
        assert OmegaConf.select(without, key, default="(unset)") != value, f"{name}.yaml repeats {key}: {value!r}"
