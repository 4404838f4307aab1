"""FusionVAE and baselines through train.py's code path: every experiment config (fast_dev_run on tiny folders in
the published layouts), resumption from last.ckpt, the sample grid, and the evaluation script's table."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from fusion.data.occluders import cut_occluders
from fusion.data.synthetic_layouts import write_synthetic_celeba, write_synthetic_mnist, write_synthetic_tless
from fusion.evaluate import evaluate, format_table
from fusion.pipeline import train

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
MODELS = ["fusionvae", "cvae", "cvae_s", "fcn", "fcn_s"]
DATASETS = ["digits", "mnist", "celeba", "tless"]
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONWARNINGS": "ignore"}
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "data.num_workers=0"]


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="module")
def roots(tmp_path_factory) -> dict[str, list[str]]:
    """Data overrides per data set: tiny folders in the MNIST, CelebA and T-LESS layouts (digits need none)."""
    mnist = write_synthetic_mnist(tmp_path_factory.mktemp("mnist"), n_train=16, n_test=8)
    celeba = write_synthetic_celeba(tmp_path_factory.mktemp("celeba"), n=12)
    tless = write_synthetic_tless(tmp_path_factory.mktemp("tless"), frames_per_class=10, size=64)
    occluders = tmp_path_factory.mktemp("occluders")
    cut_occluders(tless, occluders)
    return {
        "digits": [],
        "mnist": [f"data.root={mnist}"],
        "celeba": [f"data.root={celeba}"],
        "tless": [f"data.root={tless}", f"data.occluder_root={occluders}"],
    }


@pytest.mark.parametrize("dataset", DATASETS)
@pytest.mark.parametrize("model", MODELS)
def test_fast_dev_run_every_experiment(model: str, dataset: str, roots, tmp_path: Path, monkeypatch) -> None:
    """The real experiment configs (paper-size networks), one batch of 2 through training and validation."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    overrides = [f"experiment={model}_{dataset}", *roots[dataset], f"paths.output_dir={tmp_path}", "debug=fdr"]
    cfg = _compose([*overrides, "data.batch_size=2", "model.val_samples=2", *QUIET])
    assert _compose(overrides[:-1]).callbacks.model_checkpoint.monitor == "val/mse_min"
    result = train(cfg)
    assert not (tmp_path / "checkpoints").exists()  # debug=fdr writes no checkpoint (paper size: ~0.5 GB each)
    assert result["global_step"] == 1
    metrics = result["metrics"]
    assert "val/mse_min" in metrics and all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert ("train/kl_bpd" in metrics) == (not model.startswith("fcn"))


def test_paper_settings() -> None:
    mnist = _compose(["experiment=fusionvae_mnist", "data.root=X"])
    assert list(mnist.model.network.groups_per_scale) == [5, 2] and list(mnist.model.network.latent_sizes) == [4, 8]
    assert mnist.model.network.latent_channels == 10 and mnist.trainer.max_epochs == 400
    assert mnist.data.batch_size == 800 and mnist.eval_samples == 1000 and mnist.data.image_size == 32
    celeba = _compose(["experiment=fusionvae_celeba", "data.root=X"])
    assert list(celeba.model.network.groups_per_scale) == [10, 5, 2] and celeba.model.network.latent_channels == 20
    assert list(celeba.model.network.latent_sizes) == [8, 16, 32] and celeba.trainer.max_epochs == 90
    assert celeba.model.network.likelihood == "logistic_mixture" and celeba.eval_samples == 100
    tless = _compose(["experiment=fusionvae_tless", "data.root=X", "data.occluder_root=Y"])
    assert tless.model.network.likelihood == "bernoulli" and tless.trainer.max_epochs == 500
    for cfg in (mnist, celeba, tless):
        assert cfg.model.optimizer._target_ == "torch.optim.Adamax" and cfg.model.optimizer.lr == 0.01
        assert cfg.model.lr_min == 1e-4 and cfg.model.network.aggregation == "max"
        assert cfg.data.max_inputs == 3


def _params(cfg) -> int:
    from hydra.utils import instantiate

    return sum(p.numel() for p in instantiate(cfg.model.network).parameters())


@pytest.mark.parametrize("dataset", ["digits", "mnist"])
def test_baselines_have_a_similar_number_of_parameters(dataset: str) -> None:
    """§5.3: all architectures of a data set are sized to a similar number of trainable parameters (within 25 %)."""
    root = [] if dataset == "digits" else ["data.root=X"]
    counts = {m: _params(_compose([f"experiment={m}_{dataset}", *root])) for m in MODELS}
    reference = counts["fusionvae"]
    assert all(abs(n - reference) / reference < 0.25 for n in counts.values()), counts


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory) -> dict[str, dict]:
    """A few steps of fusionvae_digits and fcn_digits with checkpoints, the CSV logger and the sample grid."""
    runs = {}
    for model in ("fusionvae", "fcn"):
        out = tmp_path_factory.mktemp(f"{model}_digits")
        overrides = [f"experiment={model}_digits", f"paths.output_dir={out}", "logger=csv", *QUIET]
        overrides += ["trainer.max_steps=3", "trainer.limit_train_batches=3", "trainer.limit_val_batches=4"]
        overrides += ["data.batch_size=8", "model.val_samples=2"]
        runs[model] = {"result": train(_compose(overrides)), "overrides": overrides, "out": out}
    return runs


def test_checkpoints_and_sample_grid(digits_runs) -> None:
    result = digits_runs["fusionvae"]["result"]
    assert result["global_step"] == 3 and result["last_checkpoint"].is_file()
    metrics = result["metrics"]
    assert {f"val/mse_min_k{k}" for k in range(4)} <= set(metrics)  # validation sees every K
    grids = sorted(digits_runs["fusionvae"]["out"].rglob("val_samples_step*.png"))
    assert grids, "no sample grid was written"
    from fusion.data.io import read_image

    grid = read_image(grids[0])
    assert grid.shape[-1] == 7 * (16 + 2) + 2  # inputs 1-3 | target | samples 1-3


def test_resume_continues_the_schedules(digits_runs) -> None:
    run = digits_runs["fusionvae"]
    checkpoint = torch.load(run["result"]["last_checkpoint"], weights_only=True)
    assert checkpoint["lr_schedulers"][0]["last_epoch"] == 3
    overrides = [o for o in run["overrides"] if not o.startswith("trainer.max_steps")]
    resumed = train(_compose([*overrides, "trainer.max_steps=5", "ckpt_path=last"]))
    assert resumed["global_step"] == 5
    after = torch.load(resumed["last_checkpoint"], weights_only=True)
    # the scheduler went on from step 3 (a fresh one would stand at 2) and ends its cosine at lr_min
    assert after["lr_schedulers"][0]["last_epoch"] == 5
    assert abs(after["lr_schedulers"][0]["_last_lr"][0] - 1e-4) < 1e-12


def test_evaluate_prints_the_table(digits_runs) -> None:
    vae = evaluate(digits_runs["fusionvae"]["result"]["last_checkpoint"], num_samples=3, limit=6, device="cpu")
    assert vae["model"] == "FusionVAE" and vae["images"] == 6
    for table in (vae["nll_bpd"], vae["mse_min"]):
        assert set(table) == {0, 1, 2, 3, "avg"} and all(v > 0 for v in table.values())
        assert abs(table["avg"] - sum(table[k] for k in range(4)) / 4) < 1e-12
    fcn = evaluate(digits_runs["fcn"]["result"]["last_checkpoint"], num_samples=2, limit=4, device="cpu")
    assert fcn["nll_bpd"] is None and fcn["mse_min"]["avg"] > 0
    text = format_table(fcn, "FCN")
    assert text.splitlines()[2].startswith("| FCN | — |")


def test_evaluate_cli(digits_runs, tmp_path: Path) -> None:
    ckpt = digits_runs["fusionvae"]["result"]["last_checkpoint"]
    out = tmp_path / "table.json"
    args = [sys.executable, "-m", "fusion.evaluate", str(ckpt), "--samples", "2", "--limit", "4", "--json", str(out)]
    proc = subprocess.run(args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "| FusionVAE |" in proc.stdout and json.loads(out.read_text())["images"] == 4
    bad = subprocess.run(
        [sys.executable, "-m", "fusion.evaluate", str(tmp_path / "missing.ckpt")],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert bad.returncode == 2 and bad.stderr.strip().startswith("error: ") and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


def test_missing_mnist_root_names_the_layout(tmp_path: Path) -> None:
    cfg = _compose(["experiment=fusionvae_mnist", f"data.root={tmp_path / 'nope'}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match="idx3-ubyte"):
        train(cfg)
    missing = r"missing required config value\(s\): data.root; set them as KEY=VALUE; data.root: expected the MNIST"
    with pytest.raises(ValueError, match=missing):
        train(_compose(["experiment=fusionvae_mnist", f"paths.output_dir={tmp_path}"]))
    tless = _compose(["experiment=fusionvae_tless", f"data.root={tmp_path}", f"paths.output_dir={tmp_path}"])
    layouts = r"data.occluder_root; .*data.occluder_root: root: expected the T-LESS.*OCCLUDERS"
    with pytest.raises(ValueError, match=layouts):
        train(tless)
