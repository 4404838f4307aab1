"""Deep Image Blending: both stages, the background kept, the Poisson stage against Pérez, errors, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from hydra import compose, initialize_config_dir
from skimage import data

from fusion.methods.deep_blend import (
    STAGE1_DEFAULTS,
    STAGE2_DEFAULTS,
    StageConfig,
    deep_blend,
    deep_blend_solve,
    deep_image_blend,
)
from fusion.methods.poisson import place_source
from fusion.methods.registry import MethodOutput, get_method
from fusion.nn.losses import ContentLoss
from fusion.nn.vgg import VGG16Features
from tests.reference import perez_reference

ROOT = Path(__file__).resolve().parents[2]
H, W = 16, 20
FEW = {"max_iter": 3}


def _photo(which: str, h: int, w: int, dtype=torch.float32) -> torch.Tensor:
    image = torch.from_numpy(getattr(data, which)()).permute(2, 0, 1)[None].to(dtype) / 255
    return F.interpolate(image, size=(h, w), mode="area")


@pytest.fixture(scope="module")
def vgg() -> VGG16Features:
    return VGG16Features("random")


@pytest.fixture
def inputs():
    fg, bg = _photo("astronaut", H, W), _photo("coffee", H, W)
    mask = torch.zeros(1, 1, H, W)
    mask[..., 4:12, 5:15] = 1
    return fg, bg, mask


def test_short_run_reduces_the_loss_in_both_stages(inputs, vgg):
    fg, bg, mask = inputs
    gen = torch.Generator().manual_seed(0)
    res = deep_blend_solve(fg, bg, mask, vgg_weights=vgg, stage1={"max_iter": 6}, stage2={"max_iter": 4}, generator=gen)
    hist = res.info["history"]
    assert hist["stage1"].shape == (7, 1) and hist["stage2"].shape == (5, 1)
    assert res.iterations == 10 and res.history.shape == (11, 1)
    assert hist["stage1"][-1, 0] < 0.5 * hist["stage1"][0, 0]
    assert hist["stage2"][-1, 0] < hist["stage2"][0, 0]
    # the recorded total is the weighted sum of the recorded terms
    terms = res.info["terms"]["stage1"]
    assert set(terms) == {"grad", "content", "style", "hist", "tv"}
    weighted = sum(getattr(STAGE1_DEFAULTS, k) * v for k, v in terms.items())
    torch.testing.assert_close(weighted, hist["stage1"], rtol=1e-5, atol=0)
    assert not bool(res.converged.any())  # tol=0: every iteration is run


def test_stage2_content_is_measured_against_the_stage1_result(inputs, vgg):
    fg, bg, mask = inputs
    gen = torch.Generator().manual_seed(2)
    res = deep_blend_solve(fg, bg, mask, vgg_weights=vgg, stage1=FEW, stage2={"max_iter": 4}, generator=gen)
    content = res.info["terms"]["stage2"]["content"][:, 0]
    # stage 2 starts at the stage-1 blend, so its content loss starts at zero and grows as the style moves away
    # (comparing the image with itself, the reference code's bug, would keep it at zero throughout)
    assert content[0].item() == 0.0
    assert content[-1].item() > 0.0
    target = vgg(res.info["stage1"], ["conv2_2"])
    final = vgg(res.solution, ["conv2_2"])
    torch.testing.assert_close(ContentLoss()(final, target), res.info["terms"]["stage2"]["content"][-1])


def test_background_is_kept_outside_a_binary_mask_with_offset(vgg):
    fg = _photo("chelsea", 12, 10)
    bg = _photo("coffee", 17, 23)
    mask = torch.zeros(1, 1, 12, 10)
    mask[..., 2:10, 2:8] = 1
    gen = torch.Generator().manual_seed(1)
    out = deep_image_blend(fg, bg, mask, offset=(3, 11), vgg_weights=vgg, stage1=FEW, stage2=FEW, generator=gen)
    assert out.shape == bg.shape
    _, canvas_mask = place_source(fg, mask, bg, offset=(3, 11))
    outside = (canvas_mask == 0).expand_as(bg)
    assert torch.equal(out[outside], bg[outside])
    inside = (canvas_mask == 1).expand_as(bg)
    assert (out[inside] - bg[inside]).abs().mean() > 0.01
    assert out.min() >= 0 and out.max() <= 1


def test_poisson_only_stage_converges_to_perez_solution():
    # With only the blending term, stage 1 is Poisson image editing: L-BFGS must reach Pérez's solution
    h, w = 16, 18
    fg, bg = _photo("astronaut", h, w, torch.float64), _photo("coffee", h, w, torch.float64)
    fg, bg = 0.25 + 0.5 * fg, 0.25 + 0.5 * bg  # keeps Pérez's solution inside [0, 1], where results are clipped
    region = np.zeros((h, w), bool)
    region[3:13, 4:15] = True
    mask = torch.from_numpy(region)[None, None].double()
    only_grad = {"max_iter": 150, "grad": 1.0, "content": 0.0, "style": 0.0, "hist": 0.0, "tv": 0.0}
    res = deep_blend_solve(
        fg, bg, mask, vgg_weights="random", stage1=only_grad, stage2={"max_iter": 0}, init="target", tol=1e-14
    )
    expected = np.stack([perez_reference(fg[0, c].numpy(), bg[0, c].numpy(), region) for c in range(3)])
    assert expected.min() > 0 and expected.max() < 1
    got = res.info["stage1"][0].numpy()
    assert np.abs(got - expected).max() < 1e-5
    assert res.info["terms"]["stage1"]["grad"][-1, 0] < 1e-10
    assert res.iterations <= 150


def test_batches_noise_seed_and_init_choices(inputs, vgg):
    fg, bg, mask = inputs
    fg2, bg2 = torch.cat([fg, fg.flip(-1)]), torch.cat([bg, bg.flip(-2)])
    mask2 = torch.cat([mask, mask.flip(-1)])

    def run(seed, **kw):
        gen = torch.Generator().manual_seed(seed)
        kw = {"stage1": FEW, "stage2": FEW, **kw}
        return deep_image_blend(fg2, bg2, mask2, vgg_weights=vgg, generator=gen, **kw)

    a, b, c = run(0), run(0), run(1)
    assert a.shape == (2, 3, H, W)
    assert torch.equal(a, b) and not torch.equal(a, c)
    for init in ("source", "target", "poisson", torch.rand(1, 3, H, W)):
        out = run(0, init=init, stage1={"max_iter": 1}, stage2={"max_iter": 0})
        assert torch.isfinite(out).all() and out.shape == (2, 3, H, W)


def test_frames_and_stage_overrides(inputs, vgg):
    fg, bg, mask = inputs
    res = deep_blend_solve(
        fg,
        bg,
        mask,
        vgg_weights=vgg,
        stage1={"max_iter": 2, "hist": 0.0},
        stage2=StageConfig(2, 0, 1, 1e8, 0, 0),
        frames=3,
    )
    frames = res.info["frames"]
    assert frames["stage1"].shape == (3, 1, 3, H, W) and frames["stage2"].shape == (3, 1, 3, H, W)
    torch.testing.assert_close(frames["stage1"][-1], res.info["stage1"])  # last snapshot: the stage's result
    torch.testing.assert_close(frames["stage2"][0], res.info["stage1"])  # stage 2 starts from it
    assert set(res.info["terms"]["stage1"]) == {"grad", "content", "style", "tv"}
    assert set(res.info["terms"]["stage2"]) == {"content", "style"}
    assert deep_blend_solve(fg, bg, mask, vgg_weights=vgg, stage1=FEW, stage2=FEW).info["frames"] == {}


def test_paper_defaults_and_config_follow_the_paper():
    assert STAGE1_DEFAULTS == StageConfig(max_iter=1000, grad=1e6, content=1.0, style=1e6, hist=1.0, tv=1e-5)
    assert STAGE2_DEFAULTS == StageConfig(max_iter=1000, grad=0.0, content=1.0, style=1e8, hist=1.0, tv=1e-5)
    cfg = yaml.safe_load((ROOT / "conf" / "method" / "deep_blend.yaml").read_text())
    assert cfg["name"] == "deep_blend" and cfg["vgg_weights"] is None
    assert StageConfig(**{k: float(v) if k != "max_iter" else v for k, v in cfg["stage1"].items()}) == STAGE1_DEFAULTS
    assert StageConfig(**{k: float(v) if k != "max_iter" else v for k, v in cfg["stage2"].items()}) == STAGE2_DEFAULTS
    assert get_method("deep_blend") is deep_blend


# ----------------------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------------------
def test_missing_weights_error(inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="VGG16 ImageNet weights not found.*vgg_weights=PATH"):
        deep_image_blend(*inputs)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        deep_image_blend(*inputs, vgg_weights=tmp_path / "nowhere.pth")


@pytest.mark.parametrize(
    "case, kwargs, error, fragment",
    [
        ("mask_size", {"mask": torch.ones(1, 1, H + 1, W)}, ValueError, "image sizes differ"),
        ("fg_larger", {"bg": torch.rand(1, 3, H - 2, W)}, ValueError, "larger than bg"),
        ("empty_mask", {"mask": torch.zeros(1, 1, H, W)}, ValueError, "mask is empty"),
        ("full_mask", {"mask": torch.ones(1, 1, H, W)}, ValueError, "whole image"),
        ("mask_range", {"mask": torch.full((1, 1, H, W), 2.0)}, ValueError, "[0, 1]"),
        ("channels", {"bg": torch.rand(1, 1, H, W)}, ValueError, "channel counts differ"),
        ("four_channels", {"fg": torch.rand(1, 4, H, W), "bg": torch.rand(1, 4, H, W)}, ValueError, "1 or 3"),
        ("nan", {"fg": torch.full((1, 3, H, W), float("nan"))}, ValueError, "NaN"),
        ("int", {"fg": torch.zeros(1, 3, H, W, dtype=torch.uint8)}, TypeError, "floating-point"),
        ("too_small", {"fg": torch.rand(1, 3, 6, 6), "bg": torch.rand(1, 3, 6, 6), "mask": None}, ValueError, ">= 8"),
        ("stage_key", {"stage1": {"iters": 3}}, ValueError, "unknown key"),
        ("stage_weight", {"stage2": {"style": -1.0}}, ValueError, "stage2.style"),
        ("stage_iter", {"stage1": {"max_iter": 2.5}}, ValueError, "stage1.max_iter"),
        ("init", {"init": "zeros"}, ValueError, "init must be"),
        ("init_shape", {"init": torch.rand(1, 3, H, W + 1)}, ValueError, "sizes differ"),
        ("layer", {"content_layer": "conv9_9"}, ValueError, "content_layer"),
        ("region", {"poisson_region": "ring"}, ValueError, "poisson_region"),
        ("frames", {"frames": -1}, ValueError, "frames"),
        ("weights_type", {"vgg_weights": 7}, TypeError, "vgg_weights"),
    ],
)
def test_bad_input_errors(inputs, case, kwargs, error, fragment):
    fg, bg, mask = inputs
    args = {"fg": fg, "bg": bg, "mask": mask, "vgg_weights": "random"}
    args.update(kwargs)
    if args["mask"] is None:
        args["mask"] = torch.zeros(1, 1, 6, 6)
        args["mask"][..., 2:4, 2:4] = 1
    fg, bg, mask = args.pop("fg"), args.pop("bg"), args.pop("mask")
    with pytest.raises(error, match=fragment.replace("[", r"\[").replace("]", r"\]")):
        deep_blend_solve(fg, bg, mask, **args)


# ----------------------------------------------------------------------------------------------------------
# The registered adapter and the command line
# ----------------------------------------------------------------------------------------------------------
def test_adapter_output(inputs):
    fg, bg, mask = inputs
    few = {"max_iter": 2}
    out = deep_blend(fg, bg, mask, vgg_weights="random", stage1=few, stage2=few, save_intermediate=True,
                     intermediate_frames=3, progress=False)  # fmt: skip
    assert isinstance(out, MethodOutput)
    assert set(out.frames) == {"stage1", "stage2"} and out.frames["stage1"].shape == (3, 1, 3, H, W)
    assert set(out.curves["loss"]) == {"stage 1", "stage 2"} and len(out.curves["loss"]["stage 1"]) == 3
    plain = deep_blend(fg, bg, mask, vgg_weights="random", stage1=few, stage2=few, progress=False)
    assert plain.frames == {} and torch.equal(plain.result, out.result)
    with pytest.raises(ValueError, match="intermediate_frames"):
        deep_blend(fg, bg, mask, vgg_weights="random", intermediate_frames=1)


def _save(path: Path, image: torch.Tensor) -> Path:
    from PIL import Image

    array = (image[0].permute(1, 2, 0).squeeze(-1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(path)
    return path


def test_cli_with_random_weights_writes_result_frames_and_curves(tmp_path: Path, inputs):
    from fusion.data.io import read_image
    from fusion.pipeline import infer

    fg, bg, mask = inputs
    paths = {"fg": _save(tmp_path / "fg.png", fg[..., 2:14, 3:17]), "bg": _save(tmp_path / "bg.png", bg)}
    paths["mask"] = _save(tmp_path / "mask.png", mask[..., 2:14, 3:17])
    out = tmp_path / "out" / "blend.png"
    overrides = [f"{k}={v}" for k, v in paths.items()] + [
        f"out={out}",
        "offset=[2,3]",
        "device=cpu",
        "method=deep_blend",
        "method.vgg_weights=random",
        "method.stage1.max_iter=2",
        "method.stage2.max_iter=2",
        "method.save_intermediate=true",
        "method.intermediate_frames=3",
        "method.progress=false",
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="infer", overrides=overrides)
    written = infer(cfg)
    for key in ("result", "side_by_side", "stage1_gif", "stage2_gif", "stage1_strip", "loss_plot", "loss_csv"):
        assert written[key].is_file(), key
    assert len(list((tmp_path / "out" / "blend_stage2").glob("*.png"))) == 3
    result = read_image(out)
    assert result.shape == (1, 3, H, W)
    outside = torch.ones(1, 3, H, W, dtype=torch.bool)
    outside[..., 2:14, 3:17] = (mask[..., 2:14, 3:17] == 0).expand(1, 3, -1, -1)
    assert torch.equal(result[outside], read_image(paths["bg"])[outside])
    rows = (tmp_path / "out" / "blend_loss.csv").read_text().splitlines()
    assert rows[0] == "iteration,stage 1,stage 2" and len(rows) == 1 + 3


def test_cli_without_weights_fails_with_one_clear_line(tmp_path: Path, inputs):
    fg, bg, mask = inputs
    paths = {"fg": _save(tmp_path / "fg.png", fg), "bg": _save(tmp_path / "bg.png", bg)}
    paths["mask"] = _save(tmp_path / "mask.png", mask)
    out = tmp_path / "blend.png"
    args = [f"{k}={v}" for k, v in paths.items()] + [f"out={out}", "method=deep_blend", "device=cpu"]
    env = {**os.environ, "TORCH_HOME": str(tmp_path / "torch")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), *args], cwd=tmp_path, capture_output=True, text=True, env=env
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: VGG16 ImageNet weights not found"), proc.stderr
    assert "vgg_weights=PATH" in lines[0]
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# GPU: channels_last + bfloat16 autocast against float32
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
def test_cuda_mixed_precision_close_to_full_precision(inputs):
    fg, bg, mask = (t.cuda() for t in inputs)
    vgg = VGG16Features("random")
    runs = {}
    for amp in (False, True):
        gen = torch.Generator(device="cuda").manual_seed(0)
        runs[amp] = deep_blend_solve(fg, bg, mask, vgg_weights=vgg, stage1={"max_iter": 30},
                                     stage2={"max_iter": 30}, generator=gen, mixed_precision=amp)  # fmt: skip
    for amp, res in runs.items():
        h1 = res.info["history"]["stage1"][:, 0]
        assert h1[-1] < 0.5 * h1[0], amp
    full, half = runs[False].solution, runs[True].solution
    assert (full - half).abs().mean() < 0.05
    assert torch.equal(half[(mask == 0).expand_as(half)], bg[(mask == 0).expand_as(bg)])
