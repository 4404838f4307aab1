"""Transient Attributes data module on a tiny synthetic folder in the published layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from fusion.data.samplers import EpochSampler
from fusion.data.synthetic_layouts import write_synthetic_transient
from fusion.data.transient import (
    TransientAttributesDataModule,
    TransientPairs,
    central_square_mask,
    index_webcams,
    split_webcams,
)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return write_synthetic_transient(tmp_path_factory.mktemp("transient"), webcams=6, images_per_webcam=4)


def _module(root: Path, **kwargs) -> TransientAttributesDataModule:
    args = dict(batch_size=4, image_size=32, load_size=40, train_pairs=12, val_pairs=4, num_workers=0)
    args.update(kwargs)
    return TransientAttributesDataModule(str(root), **args)


def test_layout_is_indexed(root: Path) -> None:
    webcams = index_webcams(root)
    assert len(webcams) == 6 and all(len(v) == 4 for v in webcams.values())
    assert all(p.parent.parent.name == "imageAlignedLD" for v in webcams.values() for p in v)


def test_composite_is_central_square_of_source_on_destination(root: Path) -> None:
    dm = _module(root)
    item = dm.train_set[5]
    comp, src, dst, mask = item["composite"], item["source"], item["target"], item["mask"]
    assert comp.shape == (3, 32, 32) and mask.shape == (1, 32, 32)
    # the pasted square is the central 16×16 (ratio 0.5) and the ground truth is the destination
    inside = torch.zeros(32, 32, dtype=torch.bool)
    inside[8:24, 8:24] = True
    assert torch.equal(mask[0] > 0.5, inside)
    assert torch.equal(comp[:, inside], src[:, inside])
    assert torch.equal(comp[:, ~inside], dst[:, ~inside])
    assert not torch.equal(src, dst)
    assert float(comp.min()) >= 0 and float(comp.max()) <= 1
    assert torch.equal(central_square_mask(64, 0.5)[0].nonzero().min(0).values, torch.tensor([16, 16]))


def test_pairs_come_from_one_webcam_and_differ(root: Path) -> None:
    dm = _module(root, train_pairs=50)
    for key in range(50):
        name, src, dst, _ = dm.train_set.draw(key)
        assert src.parent.name == dst.parent.name == name and src != dst
        assert name in dm.train_webcams


def test_validation_webcams_are_held_out(root: Path) -> None:
    train, val = split_webcams([f"{i:03d}" for i in range(101)], 0.05, seed=0)
    assert len(val) == 5 and len(train) == 96 and not set(train) & set(val)
    dm = _module(root)
    assert len(dm.val_webcams) == 1 and not set(dm.val_webcams) & set(dm.train_webcams)
    used = {dm.val_set.draw(k)[0] for k in range(len(dm.val_set))}
    assert used <= set(dm.val_webcams)


def test_fresh_pairs_every_epoch_and_reproducible(root: Path) -> None:
    dm = _module(root, train_pairs=16)
    loader = dm.train_dataloader()
    sampler = loader.sampler
    assert isinstance(sampler, EpochSampler)
    epoch0 = [dm.train_set.draw(k) for k in sampler]
    again = [dm.train_set.draw(k) for k in sampler]
    sampler.set_epoch(1)
    epoch1 = [dm.train_set.draw(k) for k in sampler]
    assert epoch0 == again
    assert epoch0 != epoch1
    batch0 = next(iter(loader))
    sampler.set_epoch(0)
    assert torch.equal(next(iter(loader))["composite"], next(iter(loader))["composite"])
    assert not torch.equal(batch0["composite"], next(iter(loader))["composite"])
    # validation pairs stay fixed whatever epoch Lightning announces
    val = dm.val_dataloader()
    first = next(iter(val))["composite"]
    val.sampler.set_epoch(3)
    assert torch.equal(first, next(iter(val))["composite"])


def test_object_mask_mode(root: Path, tmp_path: Path) -> None:
    dm = _module(root)
    (val_cam,) = dm.val_webcams
    from PIL import Image

    mask = np.zeros((48, 64), dtype=np.uint8)
    mask[10:30, 5:25] = 255  # an object at the left, away from the centre
    (tmp_path / val_cam).mkdir()
    Image.fromarray(mask).save(tmp_path / val_cam / "object.png")
    dm = _module(root, eval_masks=str(tmp_path))
    item = dm.val_set[0]
    m = item["mask"]
    assert 0 < float(m.mean()) < 0.5
    assert not torch.equal(m, central_square_mask(32, 0.5))
    inside = m[0] > 0.5
    assert torch.equal(item["composite"][:, inside], item["source"][:, inside])
    assert torch.equal(item["composite"][:, ~inside], item["target"][:, ~inside])
    with pytest.raises(ValueError, match="no masks"):
        _module(root, eval_masks=str(tmp_path / val_cam))


def test_missing_root_names_the_layout(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"imageAlignedLD/<webcam>/\*\.jpg"):
        TransientAttributesDataModule(str(tmp_path / "nope"))
    with pytest.raises(FileNotFoundError, match="imageAlignedLD is missing"):
        TransientAttributesDataModule(str(tmp_path))


def test_annotations_are_optional(tmp_path: Path) -> None:
    root = write_synthetic_transient(tmp_path / "db", webcams=3, images_per_webcam=2)
    with_annotations = index_webcams(root)
    (root / "annotations" / "annotations.tsv").unlink()
    with pytest.raises(FileNotFoundError, match=r"annotations\.tsv is missing but .*attributes\.txt is there"):
        index_webcams(root)
    (root / "annotations" / "attributes.txt").unlink()
    (root / "annotations").rmdir()
    assert index_webcams(root) == with_annotations  # images only: the same webcams and files
    dm = _module(root, val_fraction=0.3)
    item = dm.train_set[0]
    assert item["composite"].shape == (3, 32, 32)


def test_malformed_annotations(tmp_path: Path) -> None:
    root = write_synthetic_transient(tmp_path, webcams=2, images_per_webcam=2)
    path = root / "annotations" / "annotations.tsv"
    path.write_text(path.read_text().replace("\t", "\tx\t", 1))
    with pytest.raises(ValueError, match="attribute fields"):
        index_webcams(root)


def test_bad_pair_arguments(root: Path) -> None:
    webcams = index_webcams(root)
    with pytest.raises(ValueError, match="load_size"):
        TransientPairs(webcams, 4, image_size=64, load_size=32)
    with pytest.raises(ValueError, match="val_fraction"):
        split_webcams(["a", "b"], 1.5, 0)
