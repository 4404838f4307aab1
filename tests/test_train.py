"""train.py end to end: every experiment config, checkpoints, kill-and-resume, inference from a run, clear errors."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from fusion.data.io import read_image, read_mask
from fusion.data.synthetic_layouts import write_synthetic_transient
from fusion.methods.gpgan import gpgan_blend
from fusion.pipeline import train
from fusion.runs import load_network

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("gpgan*.yaml"))  # FusionVAE: test_train_fusionvae.py
ENV = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "PYTHONWARNINGS": "ignore"}
QUIET = ["trainer.enable_progress_bar=false", "trainer.enable_model_summary=false"]
MAX_STEPS = 20


def _python(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=300, **kwargs
    )


def _compose(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_synthetic_transient(tmp_path_factory.mktemp("transient"), webcams=4, images_per_webcam=4)


@pytest.fixture(scope="module")
def resumed_run(tmp_path_factory, data_root: Path) -> dict:
    """Start the smoke run, SIGKILL it once a mid-epoch last.ckpt exists, then resume it with ckpt_path=last."""
    run_dir = tmp_path_factory.mktemp("run")
    args = ["train.py", "experiment=gpgan_smoke", f"data.root={data_root}", f"hydra.run.dir={run_dir}", *QUIET]
    args += [f"trainer.max_steps={MAX_STEPS}", "data.train_pairs=16"]  # 4 batches an epoch
    last = run_dir / "checkpoints" / "last.ckpt"
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    killed = None
    deadline = time.monotonic() + 240
    try:
        while killed is None:
            assert time.monotonic() < deadline, "no last.ckpt within 240 s"
            if proc.poll() is not None:
                pytest.fail(f"training ended before it could be killed:\n{proc.stdout.read()[-3000:]}")
            if last.is_file():
                try:
                    checkpoint = torch.load(last, map_location="cpu", weights_only=True)
                except Exception:
                    checkpoint = None
                # Lightning writes step checkpoints of manually optimised modules once the monitored metric
                # exists (after the first validation); wait for one taken mid-epoch
                progress = checkpoint["loops"]["fit_loop"]["epoch_loop.batch_progress"] if checkpoint else None
                if progress is not None and progress["current"]["completed"] > 0:
                    os.kill(proc.pid, signal.SIGKILL)
                    killed = checkpoint
            time.sleep(0.01)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = torch.load(last, map_location="cpu", weights_only=True)  # the newest one written before the kill
    resumed = _python(*args, "ckpt_path=last")
    return {"run_dir": run_dir, "killed": killed, "killed_rc": proc.returncode, "resumed": resumed, "last": last}


def test_kill_mid_epoch_and_resume_from_last(resumed_run: dict) -> None:
    killed, resumed = resumed_run["killed"], resumed_run["resumed"]
    assert resumed_run["killed_rc"] == -signal.SIGKILL
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    # the checkpoint was written mid-epoch: some but not all of the epoch's batches were done
    batches = killed["loops"]["fit_loop"]["epoch_loop.batch_progress"]["current"]["completed"]
    assert 0 < batches < 4 and 0 < killed["global_step"] < MAX_STEPS
    step = killed["global_step"]
    assert f"at global step {step}" in resumed.stdout
    assert "weights_only" not in resumed.stdout + resumed.stderr  # resumed with weights_only=True, silently
    # a batch makes one or two optimizer steps (critic, then maybe generator), so the run may end one step past
    finished = int(re.search(r"finished at global step (\d+)", resumed.stdout).group(1))
    assert MAX_STEPS <= finished <= MAX_STEPS + 1
    final = torch.load(resumed_run["last"], map_location="cpu", weights_only=True)
    assert final["global_step"] == finished
    assert int(final["state_dict"]["generator_steps"]) > int(killed["state_dict"]["generator_steps"])
    # the resumed run logs from where the killed one stopped, not from step 0 (Lightning's log step counts batches)
    versions = sorted((resumed_run["run_dir"] / "csv").glob("version_*/metrics.csv"))
    assert len(versions) == 2
    with open(versions[-1]) as handle:
        steps = [int(row["step"]) for row in csv.DictReader(handle) if row["step"]]
    logged_before = killed["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"]  # the log's step
    assert logged_before > 0 and steps and min(steps) >= logged_before
    # each validation wrote an image grid next to the CSV log
    assert list((resumed_run["run_dir"] / "csv").glob("version_*/images/val_samples_step*.png"))
    best = list((resumed_run["run_dir"] / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1  # save_top_k=1 keeps only the best, besides last.ckpt


def test_checkpoint_blends_in_infer(resumed_run: dict, tmp_path: Path) -> None:
    ckpt = resumed_run["last"]
    out = tmp_path / "result.png"
    proc = _python("infer.py", "method=gpgan", f"method.ckpt={ckpt}", f"out={out}", "device=cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.is_file() and (tmp_path / "result_blending_gan.png").is_file()
    # the command line gives what the Python API gives with the generator rebuilt from the run's config
    generator = load_network(ckpt)
    assert generator.image_size == 32 and not generator.training
    samples = ROOT / "datasets" / "samples"
    fg, bg, mask = read_image(samples / "fg.png"), read_image(samples / "bg.png"), read_mask(samples / "mask.png")
    with torch.no_grad():
        expected = gpgan_blend(fg, bg, mask, generator=generator).clamp(0, 1)
    written = read_image(out)
    assert written.shape == bg.shape
    assert float((written - expected).abs().max()) <= 1 / 255 + 1e-6
    small = read_image(tmp_path / "result_blending_gan.png")
    assert small.shape[-2:] == (32, 32)


def test_infer_rejects_a_corrupt_checkpoint(tmp_path: Path) -> None:
    bad = tmp_path / "broken.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="corrupt"):
        load_network(bad)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_network(tmp_path / "missing.ckpt")


@pytest.mark.parametrize(
    "experiment", [pytest.param(e, marks=[pytest.mark.slow] if e == "gpgan_transient" else []) for e in EXPERIMENTS]
)
def test_fast_dev_run_every_experiment(experiment: str, data_root: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = _compose([f"experiment={experiment}", f"data.root={data_root}", f"paths.output_dir={tmp_path}", "debug=fdr"])
    result = train(cfg)
    assert result["global_step"] >= 1
    assert "last_checkpoint" not in result  # debug=fdr writes no checkpoints, as its config says
    assert not (tmp_path / "checkpoints").exists()
    assert (tmp_path / ".hydra" / "config.yaml").is_file()
    assert {"val/mse", "train/critic_loss"} <= set(result["metrics"])


def test_paper_settings_in_gpgan_transient(data_root: Path, tmp_path: Path) -> None:
    cfg = _compose(["experiment=gpgan_transient", f"data.root={data_root}"])
    assert cfg.data.image_size == 64 and cfg.data.ratio == 0.5 and cfg.data.batch_size == 64
    assert cfg.data.train_pairs == 150_000 and cfg.trainer.max_epochs == 25 and cfg.data.val_fraction == 0.05
    assert cfg.model.l2_weight == 0.999 and cfg.model.clip == 0.01 and cfg.model.critic_steps == 5
    assert cfg.model.generator.bottleneck == 4000
    assert cfg.model.generator_optimizer.lr == 0.002 and cfg.model.generator_optimizer.betas[0] == 0.5


def test_missing_required_root(tmp_path: Path) -> None:
    cfg = _compose(["experiment=gpgan_smoke", f"paths.output_dir={tmp_path}"])
    with pytest.raises(ValueError, match=r"data.root.*imageAlignedLD/<webcam>/\*\.jpg"):
        train(cfg)


def _error_line(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("error: ")
    assert "Traceback" not in proc.stderr
    return lines[-1]


def test_missing_data_root_names_the_layout(tmp_path: Path) -> None:
    cfg = _compose(["experiment=gpgan_smoke", f"data.root={tmp_path / 'nope'}", f"paths.output_dir={tmp_path}"])
    with pytest.raises(FileNotFoundError, match=r"imageAlignedLD/<webcam>/\*\.jpg"):
        train(cfg)


def test_corrupt_checkpoint_is_rejected_before_training(data_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"PK\x03\x04 truncated")
    overrides = ["experiment=gpgan_smoke", f"data.root={data_root}", f"paths.output_dir={tmp_path}"]
    with pytest.raises(ValueError, match="corrupt"):
        train(_compose([*overrides, f"ckpt_path={bad}"]))
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.slow
def test_cli_missing_data_root(tmp_path: Path) -> None:
    proc = _python("train.py", "experiment=gpgan_smoke", f"data.root={tmp_path / 'nope'}", f"hydra.run.dir={tmp_path}")
    line = _error_line(proc)
    assert "imageAlignedLD/<webcam>/*.jpg" in line and "annotations.tsv" in line


@pytest.mark.slow
def test_cli_corrupt_checkpoint(data_root: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"\x80\x02garbage")
    args = ["train.py", "experiment=gpgan_smoke", f"data.root={data_root}", f"hydra.run.dir={tmp_path}"]
    line = _error_line(_python(*args, f"ckpt_path={bad}"))
    assert "bad.ckpt" in line and "corrupt" in line


def test_cli_config_key_typo(data_root: Path, tmp_path: Path) -> None:
    args = ["train.py", "experiment=gpgan_smoke", f"data.root={data_root}", f"hydra.run.dir={tmp_path}"]
    line = _error_line(_python(*args, "trainer.max_stepz=3"))
    assert "max_stepz" in line
    assert not (tmp_path / "checkpoints").exists()


def test_resume_last_without_a_checkpoint(data_root: Path, tmp_path: Path) -> None:
    overrides = ["experiment=gpgan_smoke", f"data.root={data_root}", f"paths.output_dir={tmp_path}"]
    cfg = _compose([*overrides, "ckpt_path=last"])
    with pytest.raises(FileNotFoundError, match="hydra.run.dir"):
        train(cfg)


@pytest.mark.slow
def test_multirun_gives_each_run_its_own_directory(data_root: Path, tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = ["train.py", "-m", "experiment=gpgan_smoke", f"data.root={data_root}", "debug=fdr", *QUIET]
    proc = _python(*args, f"hydra.sweep.dir={sweep}", "model.generator_optimizer.lr=0.001,0.003")
    assert proc.returncode == 0, proc.stderr[-3000:]
    configs = sorted(sweep.glob("*/.hydra/config.yaml"))
    assert [c.parent.parent.name for c in configs] == ["0", "1"]
    lrs = [re.search(r"lr: ([0-9.e-]+)", c.read_text().split("generator_optimizer:")[1]).group(1) for c in configs]
    assert [float(v) for v in lrs] == [0.001, 0.003]


@pytest.mark.gpu
def test_bf16_training_and_blending_on_gpu(data_root: Path, tmp_path: Path) -> None:
    overrides = ["experiment=gpgan_smoke", f"data.root={data_root}", f"paths.output_dir={tmp_path}", *QUIET]
    gpu = ["trainer.accelerator=gpu", "trainer.precision=bf16-mixed", "trainer.max_steps=12"]
    result = train(_compose([*overrides, *gpu]))
    assert result["global_step"] >= 12 and "last_checkpoint" in result
    generator = load_network(result["last_checkpoint"]).cuda()
    fg = torch.rand(1, 3, 300, 500, device="cuda")
    bg = torch.rand(1, 3, 300, 500, device="cuda")
    mask = torch.zeros(1, 1, 300, 500, device="cuda")
    mask[..., 100:200, 150:350] = 1
    with torch.no_grad():
        on_gpu = gpgan_blend(fg, bg, mask, generator=generator)
        on_cpu = gpgan_blend(fg.cpu(), bg.cpu(), mask.cpu(), generator=generator.cpu())
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=1e-3, rtol=0)
