"""FusionT-LESS on a synthetic folder in the T-LESS layout, with occluders cut from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fusion.data import tless as tless_module
from fusion.data.synthetic_layouts import write_synthetic_tless
from fusion.data.tless import (
    EVAL_OCCLUDER_CLASSES,
    TARGET_CLASSES,
    TRAIN_OCCLUDER_CLASSES,
    FusionTLESS,
    index_tless,
    split_every_tenth,
)
from tests.data.conftest import data_module

pytestmark = pytest.mark.usefixtures("single_thread")


def test_tless_class_split_and_every_tenth_hold_out(tless: tuple[Path, Path]) -> None:
    root, occluders = tless
    assert split_every_tenth([Path(f"{i:04d}.png") for i in range(25)], train=False) == [
        Path("0009.png"),
        Path("0019.png"),
    ]
    train, test = FusionTLESS(root, occluders), FusionTLESS(root, occluders, train=False)
    assert (len(train), len(test)) == (6 * 18, 6 * 2)
    assert {p.parent.parent.name for p in train.frames} == {f"{c:02d}" for c in TARGET_CLASSES}
    assert sorted(p.name for p in test.frames) == sorted(["0009.png", "0019.png"] * 6)
    assert not set(train.frames) & set(test.frames)
    train_classes = {int(p.parent.name) for p in train.occluders}
    test_classes = {int(p.parent.name) for p in test.occluders}
    assert train_classes == set(TRAIN_OCCLUDER_CLASSES) and test_classes == set(EVAL_OCCLUDER_CLASSES)


def test_tless_bop_layout_is_indexed(tmp_path: Path) -> None:
    write_synthetic_tless(tmp_path, 3, classes=(1, 19), size=32, bop=True)
    classes = index_tless(tmp_path)
    assert sorted(classes) == [1, 19] and all(len(v) == 3 for v in classes.values())
    assert classes[19][0].parent.parent.name == "000019"


def test_tless_items(tless: tuple[Path, Path]) -> None:
    root, occluders = tless
    train = FusionTLESS(root, occluders)
    item = train[4]
    target, inputs = item["target"], item["inputs"]
    assert target.shape == (3, 64, 64) and inputs.shape == (3, 3, 64, 64)
    assert 0 <= float(inputs.min()) and float(inputs.max()) <= 1
    changed = (inputs - target).abs().amax(dim=1) > 0.05  # (3, H, W): pixels an occluder covers
    assert all(0.05 < float(c.float().mean()) < 0.99 for c in changed)
    assert not torch.equal(inputs[0], inputs[1])
    assert torch.equal(train[4]["inputs"], inputs)
    augmented = [not torch.allclose(train[k]["target"], train.target(k), atol=1e-3) for k in range(6)]
    assert sum(augmented) >= 4  # the training targets are flipped / rotated / scaled / shifted
    test = FusionTLESS(root, occluders, train=False)
    assert torch.equal(test[1]["target"], test.target(1))  # evaluation targets are not augmented


def test_tless_missing_parts_name_the_layout(tless: tuple[Path, Path], tmp_path: Path) -> None:
    root, occluders = tless
    with pytest.raises(FileNotFoundError, match=r"train_primesense/<obj>/rgb/<frame>\.png"):
        FusionTLESS(tmp_path, occluders)
    (tmp_path / "occ" / "01").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match=r"class\(es\) 01, 02, 05.*OCCLUDERS/<class:02d>/\*\.png"):
        FusionTLESS(root, tmp_path / "occ")
    with pytest.raises(ValueError, match=r"occluder root is not set.*OCCLUDERS/<class:02d>"):
        data_module("tless", root, "occluder_root=null")
    for part in ("T-LESS", "occluder"):
        assert part in FusionTLESS.LAYOUT


def test_tless_data_module(tless: tuple[Path, Path]) -> None:
    root, occluders = tless
    dm = data_module("tless", root, f"occluder_root={occluders}", "val_items=8")
    assert dm.train_set.train and dm.train_set.augment and not dm.eval_set.train and not dm.eval_set.augment
    batch = next(iter(dm.eval_dataloader(limit=4)))
    assert batch["target"].shape == (4, 3, 64, 64) and batch["inputs"].shape == (4, 3, 3, 64, 64)
    assert [b["inputs"].shape[1] for b in dm.val_dataloader()] == [0, 1]


def test_tless_views_paste_five_to_eight_occluders(tless: tuple[Path, Path], monkeypatch) -> None:
    """Each view pastes n occluders, n uniform in {5, ..., 8} (both ends included)."""
    root, occluders = tless
    train = FusionTLESS(root, occluders)
    calls = []
    monkeypatch.setattr(tless_module, "paste_occluder", lambda canvas, rgba, **kwargs: calls.append(1) or canvas)
    counts = []
    image = torch.zeros(3, 64, 64)
    for seed in range(120):
        calls.clear()
        train._occlude(image, torch.Generator().manual_seed(seed))
        counts.append(len(calls))
    assert set(counts) == {5, 6, 7, 8}
