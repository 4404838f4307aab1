"""The error contract of every command line, case by case: bad input ends with exit status 2 and exactly one
``error: ...`` line on stderr that names the problem; nothing is written (no output, no run folder), and no input
changes.

Each case is a real command (``infer.py``, ``train.py``, ``python -m fusion.evaluate``) run in a fresh, empty
working folder; the inputs it needs live in a shared folder whose contents are compared before and after.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from fusion.data.transient import write_synthetic_transient

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
H, W = 24, 32


@dataclass(frozen=True)
class Case:
    id: str
    script: str  # "infer", "train" or "evaluate"
    args: tuple[str, ...]  # {name} is replaced by the path of input file <name> (see the fixture)
    fragment: str  # part of the one error line


def _save_rgb(path: Path, array: np.ndarray) -> None:
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)


def _fake_run(folder: Path, experiment: str, extra: list[str] | None = None) -> Path:
    """A run folder as train.py leaves it (saved config, a checkpoint of the freshly built model), without training."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=[f"experiment={experiment}", *(extra or [])])
    (folder / ".hydra").mkdir(parents=True)
    (folder / "checkpoints").mkdir()
    OmegaConf.save(cfg, folder / ".hydra" / "config.yaml", resolve=False)
    model = instantiate(cfg.model)
    ckpt = folder / "checkpoints" / "last.ckpt"
    torch.save({"state_dict": model.state_dict(), "global_step": 0, "epoch": 0}, ckpt)
    return ckpt


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Every input file the cases refer to, good and bad, in one folder."""
    d = tmp_path_factory.mktemp("inputs")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    _save_rgb(d / "fg.png", np.stack([yy, xx, 0.5 + 0.2 * rng.random((H, W))], axis=-1))
    _save_rgb(d / "bg.png", np.stack([0.3 + 0.4 * xx, 0.2 + 0.0 * yy, 0.6 - 0.3 * yy], axis=-1))
    mask = np.zeros((H, W), np.uint8)
    mask[6:18, 8:24] = 255
    Image.fromarray(mask).save(d / "mask.png")
    red = np.zeros((H, W, 3), np.uint8)
    red[6:18, 8:24, 0] = 255
    Image.fromarray(red).save(d / "red_mask.png")
    _save_rgb(d / "bg_small.png", np.full((H // 2, W, 3), 0.5))
    _save_rgb(d / "bg_other.png", np.full((H + 4, W + 6, 3), 0.5))
    Image.fromarray(np.full((5, 500, 3), 128, np.uint8)).save(d / "thin.png")
    thin_mask = np.zeros((5, 500), np.uint8)
    thin_mask[1:4, 100:400] = 255
    Image.fromarray(thin_mask).save(d / "thin_mask.png")
    np.save(d / "complex.npy", np.ones((H, W, 3), complex))
    np.save(d / "objects.npy", np.array([{"a": 1}] * 4, dtype=object).reshape(2, 2), allow_pickle=True)
    np.save(d / "flat.npy", np.ones(H * W, np.float32))
    np.save(d / "two_channels.npy", np.ones((H, W, 2), np.float32))
    out_of_range = np.zeros((H, W), np.float32)
    out_of_range[6:18, 8:24] = 2.0
    np.save(d / "mask_range.npy", out_of_range)
    (d / "empty.png").write_bytes(b"")
    (d / "truncated.png").write_bytes((d / "fg.png").read_bytes()[:100])
    (d / "a_file.png").write_bytes((d / "fg.png").read_bytes())
    (d / "a_folder").mkdir()
    (d / "frames_as_file").mkdir()
    (d / "frames_as_file" / "r_frames").write_text("a file where the frames folder would go")
    (d / "corrupt.ckpt").write_bytes(b"not a checkpoint at all")

    class Payload:
        def __reduce__(self):
            return (print, ("unpickled",))

    torch.save({"state_dict": {"w": Payload()}}, d / "pickle.ckpt")
    torch.save({"something": 1}, d / "no_state.ckpt")
    write_synthetic_transient(d / "transient", webcams=3, images_per_webcam=2, size=(24, 32))
    broken = write_synthetic_transient(d / "transient_truncated", webcams=3, images_per_webcam=2, size=(24, 32))
    victim = sorted((broken / "imageAlignedLD").rglob("*.jpg"))[0]
    victim.write_bytes(victim.read_bytes()[:300])
    gpgan = _fake_run(d / "gpgan_run", "gpgan_smoke", [f"data.root={d / 'transient'}"])
    vae = _fake_run(d / "vae_run", "fcn_digits")
    poisoned = d / "poisoned_run"
    (poisoned / ".hydra").mkdir(parents=True)
    (poisoned / "checkpoints").mkdir()
    node = {"_target_": "pathlib.Path.touch", "_args_": [str(d / "created_by_config")]}
    (poisoned / ".hydra" / "config.yaml").write_text(OmegaConf.to_yaml({"model": {"generator": node}}))
    torch.save({"state_dict": {"generator.w": torch.zeros(1)}}, poisoned / "checkpoints" / "last.ckpt")
    paths = {p.stem if p.is_file() else p.name: p for p in d.iterdir()}
    paths.update(gpgan_ckpt=gpgan, vae_ckpt=vae, poisoned_ckpt=poisoned / "checkpoints" / "last.ckpt", dir=d)
    return paths


IN = ("fg={fg}", "bg={bg}", "mask={mask}")
OUT = ("out={work}/out/r.png",)

CASES = [
    # ---- infer.py: inputs
    Case("mask_size", "infer", ("fg={fg}", "bg={bg}", "mask={thin_mask}", *OUT), "must match the fg size"),
    Case("fg_larger_than_bg", "infer", ("fg={fg}", "bg={bg_small}", "mask={mask}", *OUT), "larger than bg"),
    Case("pure_red_mask", "infer", ("fg={fg}", "bg={bg}", "mask={red_mask}", *OUT), "pure red is 0.30"),
    Case("mask_out_of_range", "infer", ("fg={fg}", "bg={bg}", "mask={mask_range}", *OUT), "expected values in [0, 1]"),
    Case("complex_npy", "infer", ("fg={complex}", "bg={bg}", "mask={mask}", *OUT), "unsupported array dtype complex"),
    Case("object_npy", "infer", ("fg={objects}", "bg={bg}", "mask={mask}", *OUT), "holds Python objects"),
    Case("flat_npy", "infer", ("fg={flat}", "bg={bg}", "mask={mask}", *OUT), "must hold an (H, W) or (H, W, C)"),
    Case("two_channel_npy", "infer", ("fg={two_channels}", "bg={bg}", "mask={mask}", *OUT), "2 channels"),
    Case("empty_file", "infer", ("fg={empty}", "bg={bg}", "mask={mask}", *OUT), "cannot read fg"),
    Case("truncated_png", "infer", ("fg={truncated}", "bg={bg}", "mask={mask}", *OUT), "cannot read fg"),
    Case("fg_is_a_folder", "infer", ("fg={a_folder}", "bg={bg}", "mask={mask}", *OUT), "is a directory"),
    Case("missing_bg", "infer", ("fg={fg}", "bg={dir}/nowhere.png", "mask={mask}", *OUT), "bg not found"),
    Case("only_fg_given", "infer", ("fg={fg}", *OUT), "missing: bg, mask"),
    Case("offset_outside", "infer", ("fg={fg}", "bg={bg_other}", "mask={mask}", "offset=[500,500]", *OUT), "outside"),
    Case("offset_not_pair", "infer", (*IN, "offset=[1]", *OUT), "offset must be null or [y, x]"),
    Case("offset_not_integers", "infer", (*IN, "offset=[a,b]", *OUT), "offset must be null or [y, x]"),
    # ---- infer.py: outputs
    Case("out_is_fg", "infer", (*IN, "out={fg}"), "would overwrite the fg input"),
    Case("out_is_mask", "infer", (*IN, "out={mask}"), "would overwrite the mask input"),
    Case("out_under_a_file", "infer", (*IN, "out={a_file}/r.png"), "is a file, not a folder"),
    Case("out_is_a_folder", "infer", (*IN, "out={a_folder}"), "is a directory"),
    Case("out_unknown_extension", "infer", (*IN, "out={work}/r.xyz"), "unknown image extension '.xyz'"),
    Case("out_in_proc", "infer", (*IN, "out=/proc/fusion_r.png"), "out=/proc/fusion_r.png"),
    Case("out_depth_12", "infer", (*IN, *OUT, "out_depth=12"), "out_depth must be 8, 16, 32"),
    Case("out_depth_text", "infer", (*IN, *OUT, "out_depth=deep"), "out_depth must be an integer or null"),
    Case(
        "ot_frames_folder_is_a_file",
        "infer",
        ("method=ot", "fg={fg}", "bg={bg}", "out={frames_as_file}/r.png", "method.size=8", "method.tol=0.5"),
        "r_frames is a file, not a folder",
    ),
    # ---- infer.py: options
    Case("unknown_method", "infer", (*IN, *OUT, "method=nope"), "unknown method 'nope'; expected one of:"),
    Case("unknown_option", "infer", (*IN, *OUT, "+method.bogus=1"), "unknown option method.bogus"),
    Case("unknown_key", "infer", (*IN, *OUT, "nonsense_key=1"), "Could not override 'nonsense_key'"),
    Case("bad_override_syntax", "infer", (*IN, *OUT, "fg=a=b"), "invalid override 'fg=a=b'"),
    Case("mixed_maybe", "infer", (*IN, *OUT, "method.mixed=maybe"), "method.mixed must be true or false, got 'maybe'"),
    Case("side_by_side_maybe", "infer", (*IN, *OUT, "side_by_side=maybe"), "side_by_side must be true or false"),
    Case("max_iter_text", "infer", (*IN, *OUT, "method.max_iter=abc"), "method.max_iter must be an integer, got 'abc'"),
    Case("max_iter_zero", "infer", (*IN, *OUT, "method.max_iter=0"), "max_iter must be >= 1, got 0"),
    Case("tol_negative", "infer", (*IN, *OUT, "method.tol=-1"), "tol"),
    Case("solver_unknown", "infer", (*IN, *OUT, "method.solver=fast"), "method.solver must be one of"),
    Case("device_unknown", "infer", (*IN, *OUT, "device=tpu"), "unknown device 'tpu'"),
    Case("gaussian_poisson_levels_zero", "infer", (*IN, *OUT, "method=gaussian_poisson", "method.levels=0"), "levels"),
    Case("gaussian_poisson_beta_text", "infer", (*IN, *OUT, "method=gaussian_poisson", "method.beta=x"), "method.beta"),
    Case("osmosis_eta_negative", "infer", (*IN, *OUT, "method=osmosis", "method.eta=-1"), "eta must be >= 0"),
    Case("osmosis_metric_unknown", "infer", (*IN, *OUT, "method=osmosis", "method.metric=x"), "metric must be"),
    Case("linear_osmosis_scheme", "infer", (*IN, *OUT, "method=linear_osmosis", "method.scheme=x"), "method.scheme"),
    Case("ot_steps_one", "infer", ("method=ot", "fg={fg}", "bg={bg}", *OUT, "method.steps=1"), "steps"),
    Case("ot_model_unknown", "infer", ("method=ot", "fg={fg}", "bg={bg}", *OUT, "method.model=x"), "method.model"),
    Case("ot_sizes_differ", "infer", ("method=ot", "fg={fg}", "bg={bg_other}", *OUT), "needs equal shapes"),
    Case(
        "deep_blend_stage_max_iter",
        "infer",
        (*IN, *OUT, "method=deep_blend", "method.vgg_weights=random", "method.stage1.max_iter=0"),
        "stage1.max_iter",
    ),
    Case(
        "deep_blend_mixed_precision",
        "infer",
        (*IN, *OUT, "method=deep_blend", "method.vgg_weights=random", "method.mixed_precision=abc"),
        "method.mixed_precision must be true or false or null, got 'abc'",
    ),
    # ---- infer.py method=gpgan: checkpoints
    Case("gpgan_without_ckpt", "infer", (*IN, *OUT, "method=gpgan"), "method=gpgan needs method.ckpt=PATH"),
    Case("gpgan_missing_ckpt", "infer", (*IN, *OUT, "method=gpgan", "method.ckpt={dir}/nope.ckpt"), "does not exist"),
    Case(
        "gpgan_corrupt_ckpt",
        "infer",
        (*IN, *OUT, "method=gpgan", "method.ckpt={corrupt}"),
        "corrupt or not a checkpoint",
    ),
    Case("gpgan_pickle_ckpt", "infer", (*IN, *OUT, "method=gpgan", "method.ckpt={pickle}"), "holds Python objects"),
    Case("gpgan_ckpt_no_state", "infer", (*IN, *OUT, "method=gpgan", "method.ckpt={no_state}"), "has no state_dict"),
    Case(
        "gpgan_vae_ckpt",
        "infer",
        (*IN, *OUT, "method=gpgan", "method.ckpt={vae_ckpt}"),
        "needs a checkpoint of a GP-GAN",
    ),
    Case(
        "gpgan_poisoned_config", "infer", (*IN, *OUT, "method=gpgan", "method.ckpt={poisoned_ckpt}"), "is not allowed"
    ),
    Case(
        "gpgan_levels_too_deep",  # a 5x500 strip blends (with a shallower pyramid), but not 4 levels deep
        "infer",
        (
            "fg={thin}",
            "bg={thin}",
            "mask={thin_mask}",
            *OUT,
            "method=gpgan",
            "method.ckpt={gpgan_ckpt}",
            "method.levels=4",
        ),
        "levels=4 is too deep for the 5x500 image",
    ),
    # ---- train.py
    Case("train_unknown_experiment", "train", ("experiment=nope",), "unknown experiment 'nope'"),
    Case("train_root_missing", "train", ("experiment=gpgan_smoke",), "data.root"),
    Case("train_root_nowhere", "train", ("experiment=gpgan_smoke", "data.root={dir}/nowhere"), "does not exist"),
    Case(
        "train_truncated_jpeg",
        "train",
        ("experiment=gpgan_smoke", "data.root={transient_truncated}"),
        "are truncated (no end-of-image marker)",
    ),
    Case(
        "train_lr_text",
        "train",
        ("experiment=gpgan_smoke", "data.root={transient}", "model.generator_optimizer.lr=abc"),
        "model.generator_optimizer.lr must be a number, got 'abc'",
    ),
    Case(
        "train_max_epochs_text",
        "train",
        ("experiment=gpgan_smoke", "data.root={transient}", "trainer.max_epochs=abc"),
        "trainer.max_epochs must be an integer or null",
    ),
    Case(
        "train_precision_unknown",
        "train",
        ("experiment=gpgan_smoke", "data.root={transient}", "trainer.precision=17"),
        "trainer.precision must be one of",
    ),
    Case("train_seed_text", "train", ("experiment=gpgan_smoke", "data.root={transient}", "seed=abc"), "seed must be"),
    Case(
        "train_batch_size_zero",
        "train",
        ("experiment=gpgan_smoke", "data.root={transient}", "data.batch_size=0"),
        "batch_size must be >= 1",
    ),
    Case(
        "train_unsafe_target",
        "train",
        ("experiment=gpgan_smoke", "data.root={transient}", "model.generator._target_=os.system"),
        "is not allowed",
    ),
    Case(
        "train_ckpt_missing",
        "train",
        ("experiment=gpgan_smoke", "data.root={transient}", "ckpt_path={dir}/nope.ckpt"),
        "does not exist",
    ),
    Case(
        "train_ckpt_corrupt",
        "train",
        ("experiment=gpgan_smoke", "data.root={transient}", "ckpt_path={corrupt}"),
        "corrupt or not a checkpoint",
    ),
    Case(
        "train_ckpt_pickle",
        "train",
        ("experiment=gpgan_smoke", "data.root={transient}", "ckpt_path={pickle}"),
        "holds Python objects",
    ),
    Case(
        "train_gpgan_from_vae_ckpt",
        "train",
        ("experiment=gpgan_smoke", "data.root={transient}", "ckpt_path={vae_ckpt}"),
        "does not fit the model of this run",
    ),
    Case(
        "train_vae_from_gpgan_ckpt",
        "train",
        ("experiment=fcn_digits", "ckpt_path={gpgan_ckpt}"),
        "does not fit the model of this run",
    ),
    Case(
        "train_resume_without_last",
        "train",
        ("experiment=gpgan_smoke", "data.root={transient}", "ckpt_path=last"),
        "ckpt_path=last but",
    ),
    # ---- python -m fusion.evaluate
    Case("evaluate_missing_ckpt", "evaluate", ("{dir}/nope.ckpt",), "does not exist"),
    Case("evaluate_gpgan_ckpt", "evaluate", ("{gpgan_ckpt}",), "needs a checkpoint of a FusionVAE, CVAE or FCN"),
    Case("evaluate_json_under_a_file", "evaluate", ("{vae_ckpt}", "--json", "{a_file}/x.json"), "is a file"),
    Case("evaluate_json_is_ckpt", "evaluate", ("{vae_ckpt}", "--json", "{vae_ckpt}"), "would overwrite the checkpoint"),
    Case("evaluate_samples_text", "evaluate", ("{vae_ckpt}", "--samples", "abc"), "--samples"),
]


def _digest(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, files: dict[str, Path], tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    args = [a.format(work=work, **files) for a in case.args]
    command = {
        "infer": [sys.executable, str(ROOT / "infer.py")],
        "train": [sys.executable, str(ROOT / "train.py")],
        "evaluate": [sys.executable, "-m", "fusion.evaluate"],
    }[case.script]
    if case.script == "train":
        args.append("trainer.enable_progress_bar=false")
    before = _digest(files["dir"])
    proc = subprocess.run([*command, *args], cwd=work, capture_output=True, text=True, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and case.fragment in lines[0], lines[0]
    assert "allow_pickle=True" not in lines[0] and "weights_only=False" not in lines[0]
    assert proc.stdout.strip() == ""
    assert list(work.iterdir()) == []  # no output, no run folder
    assert _digest(files["dir"]) == before  # no input changed, nothing added next to them
    assert not (files["dir"] / "created_by_config").exists()


def test_the_table_is_large() -> None:
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)
