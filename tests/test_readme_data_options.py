"""The README's data-set overrides compose and reach the data sets they name."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]


def _train_set(experiment: str, *overrides: str):
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *overrides])
    return instantiate(cfg.data.train_set), instantiate(cfg.data.eval_set)


def test_the_readme_names_the_overrides() -> None:
    text = (ROOT / "README.md").read_text()
    assert "`data.train_set.augment=true`" in text and "`+data.train_set.augment=true`" in text


@pytest.mark.parametrize(
    ("experiment", "override"),
    [
        ("fusionvae_digits", "data.train_set.augment=true"),
        ("fusionvae_mnist", "+data.train_set.augment=true"),
        ("fusionvae_celeba", "+data.train_set.augment=true"),
        ("fusionvae_tless", "data.train_set.augment=true"),
    ],
)
def test_augment_reaches_only_the_training_set(experiment: str, override: str) -> None:
    root = [] if experiment.endswith("digits") else ["data.root=/nowhere"]
    train, evaluation = _train_set(experiment, override, *root)
    assert train.keywords["augment"] is True
    assert evaluation.keywords.get("augment", False) is False
    default, _ = _train_set(experiment, *root)
    assert default.keywords.get("augment", False) is (experiment == "fusionvae_tless")
