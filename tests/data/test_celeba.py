"""FusionCelebA on hand-made and synthetic folders in the aligned-and-cropped CelebA layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusion.data.celeba import FusionCelebA
from fusion.data.synthetic_layouts import write_synthetic_celeba
from tests.data.conftest import data_module

pytestmark = pytest.mark.usefixtures("single_thread")


def test_celeba_items_and_partitions(celeba: Path) -> None:
    train, test = FusionCelebA(celeba), FusionCelebA(celeba, split="test")
    assert (len(train), len(FusionCelebA(celeba, split="val")), len(test)) == (9, 3, 3)
    item = train[0]
    assert item["target"].shape == (3, 64, 64) and item["inputs"].shape == (3, 3, 64, 64)
    assert 0 <= float(item["target"].min()) and float(item["target"].max()) <= 1
    assert torch.all((item["inputs"] == 0) | (item["inputs"] == item["target"]))  # no noise by default


def test_celeba_flips_target_and_views_together(celeba: Path) -> None:
    never, always = FusionCelebA(celeba, flip_p=0.0), FusionCelebA(celeba, flip_p=1.0)
    for key in range(4):
        plain, flipped = never[key], always[key]
        assert torch.equal(flipped["target"], plain["target"].flip(-1))
        assert not torch.equal(flipped["target"], plain["target"])
        shown = flipped["inputs"] != 0
        assert bool(shown.any())
        assert torch.equal(flipped["inputs"][shown], flipped["target"].expand_as(flipped["inputs"])[shown])
    half = FusionCelebA(celeba, flip_p=0.5)
    flips = [torch.equal(half[k]["target"], always[k]["target"]) for k in range(40)]
    assert 5 < sum(flips) < 35
    dm = data_module("celeba", celeba)
    assert dm.train_set.flip_p == 0.5 and dm.eval_set.flip_p == 0.0
    partition = dict(line.split() for line in (celeba / "list_eval_partition.txt").read_text().splitlines())
    assert [p.name for p in dm.train_set.paths] == sorted(f for f, part in partition.items() if part == "0")
    assert [p.name for p in dm.eval_set.paths] == sorted(f for f, part in partition.items() if part == "2")


def test_celeba_centre_crop_and_flip_of_a_hand_made_face(tmp_path: Path) -> None:
    """A 218×178 picture, black outside its central 148×148 square (rows 35-182, columns 15-162), white inside
    except a red band over the square's left 20 columns: the target is that square (crop 148, no resize), its
    mirror image when flipped, and its resized (antialiased) white/red split at 64×64."""
    folder = tmp_path / "img_align_celeba"
    folder.mkdir()
    picture = np.zeros((218, 178, 3), dtype=np.uint8)
    picture[35:183, 15:163] = 255
    picture[35:183, 15:35] = (255, 0, 0)
    Image.fromarray(picture).save(folder / "000001.jpg", format="PNG")  # lossless content under the listed name
    (tmp_path / "list_eval_partition.txt").write_text("000001.jpg 0\n")
    square = torch.from_numpy(picture[35:183, 15:163].astype(np.float32) / 255).permute(2, 0, 1)
    plain = FusionCelebA(tmp_path, image_size=148, flip_p=0.0, noise_std=0.0)[0]["target"]
    torch.testing.assert_close(plain, square, rtol=0, atol=0)
    mirrored = FusionCelebA(tmp_path, image_size=148, flip_p=1.0, noise_std=0.0)[0]["target"]
    torch.testing.assert_close(mirrored, square.flip(-1), rtol=0, atol=0)
    small = FusionCelebA(tmp_path, flip_p=0.0, noise_std=0.0)[0]["target"]  # 64×64: red band 20·64/148 ≈ 8.6 wide
    assert small.shape == (3, 64, 64)
    torch.testing.assert_close(small[:, :, 10:], torch.ones(3, 64, 54), rtol=0, atol=1e-6)
    torch.testing.assert_close(small[0, :, :8], torch.ones(64, 8), rtol=0, atol=1e-6)
    assert float(small[1:, :, :8].max()) < 1e-6


def test_celeba_bad_roots(celeba: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"img_align_celeba/\*\.jpg"):
        FusionCelebA(tmp_path)
    broken = write_synthetic_celeba(tmp_path / "broken", n=5)
    (broken / "img_align_celeba" / "000001.jpg").unlink()
    with pytest.raises(FileNotFoundError, match="000001.jpg"):
        FusionCelebA(broken)
    (broken / "list_eval_partition.txt").write_text("000002.jpg 7\n")
    with pytest.raises(ValueError, match="list_eval_partition.txt:1"):
        FusionCelebA(broken)
    with pytest.raises(FileNotFoundError, match="aligned-and-cropped CelebA layout"):
        data_module("celeba", tmp_path / "nope")
