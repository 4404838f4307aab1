"""The FusionVAE data module: loaders, and construction from data set partials (in Python and from the configs)."""

from __future__ import annotations

import pickle
from functools import partial
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fusion.data.base import FusionSet
from fusion.data.celeba import FusionCelebA
from fusion.data.datamodule import FusionDataModule
from fusion.data.digits import FusionDigits
from fusion.data.mnist import FusionMNIST
from fusion.data.tless import FusionTLESS
from fusion.runs import instantiate
from tests.data.conftest import CONF, data_module

pytestmark = pytest.mark.usefixtures("single_thread")


# ----------------------------------------------------------------------------------------------------- loaders


def test_training_batches_draw_k_per_batch_and_are_reproducible(mnist: Path) -> None:
    dm = data_module("mnist", mnist)
    loader = dm.train_dataloader()
    batches = list(loader)
    assert len(batches) == 10
    ks = [b["inputs"].shape[1] for b in batches]
    assert set(ks) <= {0, 1, 2, 3} and len(set(ks)) >= 3
    for b in batches:
        k = b["inputs"].shape[1]
        assert b["target"].shape == (4, 1, 32, 32) and b["inputs"].shape == (4, k, 1, 32, 32)
        assert b["target"].dtype == b["inputs"].dtype == torch.float32
        assert k == 0 or (0 <= float(b["inputs"].min()) and float(b["inputs"].max()) <= 1)
    again = list(loader)
    assert all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(batches, again))
    loader.sampler.set_epoch(1)
    other = list(loader)
    assert not all(torch.equal(x["target"], y["target"]) for x, y in zip(batches, other))


def test_workers_give_the_same_batches(mnist: Path) -> None:
    def same(a: list, b: list) -> bool:
        pairs = zip(a, b)
        return len(a) == len(b) and all(torch.equal(x["inputs"], y["inputs"]) and torch.equal(x["target"], y["target"])
                                        for x, y in pairs)  # fmt: skip

    loader = data_module("mnist", mnist).train_dataloader()
    pickle.dumps(loader.collate_fn), pickle.dumps(loader.dataset)
    parallel = data_module("mnist", mnist, "num_workers=2").train_dataloader()
    assert parallel.persistent_workers
    assert same(list(loader), list(parallel))
    loader.sampler.set_epoch(1), parallel.sampler.set_epoch(1)  # persistent workers follow the epoch
    assert same(list(loader), list(parallel))


def test_validation_cycles_k_and_evaluation_is_fixed(mnist: Path) -> None:
    grey = "binarize=false"  # targets that do not depend on the seed
    dm = data_module("mnist", mnist, "val_items=20", grey)
    val = dm.val_dataloader()
    assert [b["inputs"].shape[1] for b in val] == [0, 1, 2, 3, 0]
    val.sampler.set_epoch(5)
    first = next(iter(val))["target"]
    assert torch.equal(first, next(iter(dm.val_dataloader()))["target"])
    ev = list(dm.eval_dataloader(batch_size=5, limit=12))
    assert [b["inputs"].shape for b in ev] == [(5, 3, 1, 32, 32), (5, 3, 1, 32, 32), (2, 3, 1, 32, 32)]
    assert len(list(dm.test_dataloader())) == 6  # all 24 t10k items in batches of 4
    same = list(data_module("mnist", mnist, grey).eval_dataloader(batch_size=5, limit=12))
    assert all(torch.equal(x["inputs"], y["inputs"]) for x, y in zip(ev, same))
    reseeded = next(iter(data_module("mnist", mnist, "seed=7", grey).eval_dataloader(batch_size=5)))
    assert torch.equal(reseeded["target"], ev[0]["target"]) and not torch.equal(reseeded["inputs"], ev[0]["inputs"])
    assert torch.equal(dm.eval_set[3]["inputs"], ev[0]["inputs"][3])  # item content is fixed by (seed, index)


# ----------------------------------------------------------------------------------------------- from partials


def test_data_sets_come_from_the_partials_with_the_shared_options(mnist: Path) -> None:
    """No data set is known by name: any two partials, here scikit-learn's digits for training and MNIST for
    evaluation; the shared options reach both, a partial's own setting wins, the module's seed and K_max are
    given to both."""
    dm = FusionDataModule(
        partial(FusionDigits, train=True, noise_std=0.0),
        partial(FusionMNIST, root=str(mnist), train=False),
        batch_size=4,
        num_workers=0,
        seed=5,
        max_inputs=2,
        image_size=32,
        noise_std=0.2,
    )
    assert type(dm.train_set) is FusionDigits and type(dm.eval_set) is FusionMNIST
    assert dm.train_set.images.shape[-1] == dm.eval_set.images.shape[-1] == 32
    assert (dm.train_set.noise_std, dm.eval_set.noise_std) == (0.0, 0.2)
    assert dm.train_set.seed == dm.eval_set.seed == 5 and dm.train_set.max_inputs == dm.eval_set.max_inputs == 2
    assert dm.train_set.train and not dm.eval_set.train
    train, val = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
    assert train["target"].shape == (4, 1, 32, 32) and val["inputs"].shape == (4, 0, 1, 32, 32)
    assert len(dm.eval_dataloader().dataset) == 24  # evaluation reads the eval partial's data set


def test_partials_may_not_set_what_the_module_owns() -> None:
    for key in ("seed", "max_inputs"):
        with pytest.raises(ValueError, match=rf"train_set sets {key}; set data\.{key} instead"):
            FusionDataModule(partial(FusionDigits, **{key: 1}), FusionDigits, num_workers=0)
    with pytest.raises(TypeError, match="eval_set must be a data set class or partial"):
        FusionDataModule(FusionDigits, "digits", num_workers=0)
    with pytest.raises(TypeError, match="built a dict; expected a fusion.data FusionSet"):
        FusionDataModule(FusionDigits, lambda **options: dict(options), num_workers=0)


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


def test_a_data_set_partial_is_swapped_from_the_command_line(mnist: Path) -> None:
    """``data.eval_set._target_=...``: the digits experiment validates on MNIST's t10k digits instead, with no other
    change than the options that data set needs (its root, and a side the 28×28 digits fit in)."""
    swap = ["data.eval_set._target_=fusion.data.mnist.FusionMNIST", f"+data.eval_set.root={mnist}"]
    cfg = _compose(["experiment=fusionvae_digits", "data.num_workers=0", "data.image_size=32", *swap])
    assert cfg.model.network.image_size == 32  # the model follows data.image_size
    dm = instantiate(cfg.data, "data")
    assert type(dm.train_set) is FusionDigits and type(dm.eval_set) is FusionMNIST and len(dm.eval_set) == 24
    assert dm.train_set.images.shape[-1] == dm.eval_set.images.shape[-1] == 32
    assert dm.eval_set.binarize == dm.train_set.binarize == "threshold"  # shared options reach the new data set
    same_split = instantiate(_compose(["experiment=fusionvae_digits", "data.eval_set.train=true"]).data, "data")
    assert same_split.eval_set.train and torch.equal(same_split.eval_set.images, same_split.train_set.images)


def test_data_module_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fusion.data.cifar.FusionCIFAR' does not exist"):
        data_module("mnist", tmp_path, "train_set._target_=fusion.data.cifar.FusionCIFAR")
    with pytest.raises(ValueError, match=r"MNIST root is not set.*MNIST layout"):
        data_module("mnist", None, "root=null")
    # the config vetting checks the options both data sets share against their signatures: one line naming it
    with pytest.raises(ValueError, match=r"^unknown option data\.root; data options are: "):
        data_module("digits", tmp_path)  # digits come with scikit-learn
    with pytest.raises(ValueError, match=r"^unknown option data\.occluder_root; "):
        data_module("digits", None, f"occluder_root={tmp_path}")
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        data_module("digits", None, "batch_size=0")
    for cls, name in ((FusionMNIST, "MNIST"), (FusionCelebA, "CelebA"), (FusionTLESS, "T-LESS")):
        assert name in cls.LAYOUT


@pytest.mark.parametrize(
    ("name", "data_set", "split_key", "batch_size", "binarize"),
    [
        ("fusion_mnist", FusionMNIST, "train", 800, True),
        ("fusion_celeba", FusionCelebA, "split", 32, False),
        ("fusion_tless", FusionTLESS, "train", 32, False),
        ("fusion_digits", FusionDigits, "train", 64, "threshold"),
    ],
)
def test_configs(name: str, data_set: type[FusionSet], split_key: str, batch_size: int, binarize) -> None:
    node = OmegaConf.load(CONF / "data" / f"{name}.yaml")
    cfg = OmegaConf.create({"seed": 3, "data": node})
    assert cfg.data._target_ == "fusion.data.datamodule.FusionDataModule"
    for key, split in (("train_set", ("train", True)), ("eval_set", ("test", False))):
        partial_node = cfg.data[key]
        assert partial_node._partial_ is True and partial_node._target_ == f"{data_set.__module__}.{data_set.__name__}"
        assert partial_node[split_key] == (split[0] if split_key == "split" else split[1])
    assert cfg.data.seed == 3 and cfg.data.num_workers == 4
    assert (cfg.data.batch_size, cfg.data.binarize) == (batch_size, binarize)
    missing = OmegaConf.missing_keys(cfg)
    if name == "fusion_digits":
        assert not missing
        dm = instantiate(cfg.data, "data")
        assert dm.seed == 3 and len(dm.eval_set) == 300 and dm.eval_set.seed == 3
    else:
        assert "data.root" in missing
