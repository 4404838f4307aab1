"""FusionVAE training throughput at the paper's FusionMNIST size, and the projected time of its schedule.

Builds the ``fusionvae_mnist`` experiment as ``train.py`` does (Hydra config → data module and Lightning module:
the Table 6 network, batch 800, AdaMax, KL warm-up, spectral regularisation) on a FusionMNIST folder in the
published IDX layout, and times training steps under a Lightning ``Trainer`` after ``--warmup`` steps: images per
second, the time of one FusionMNIST epoch (60,000 digits) and of the paper's 400 epochs (4 h on 2 V100 in the
paper). Precision is ``bf16-mixed`` on CUDA and ``32-true`` on the CPU. The data come from the real loader (live
ellipse masks and noise, ``--workers`` processes); ``--root`` takes a real MNIST folder, else a synthetic one with
the same layout and image size is written to a temporary folder. The data module's own throughput (one process)
is measured separately.

    python benchmarks/fusionvae_mnist.py [--device cpu|cuda] [--batch 800] [--steps 5] [--warmup 2]
                                         [--workers 4] [--root /data/mnist] [--model fusionvae]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TrainClock, device_name, markdown_table  # noqa: E402

from fusion.data.synthetic_layouts import write_synthetic_mnist  # noqa: E402

MNIST_TRAIN = 60_000
PAPER_EPOCHS = 400


def build(model: str, root: str, batch: int, workers: int):
    overrides = [f"experiment={model}_mnist", f"data.root={root}", f"data.batch_size={batch}"]
    overrides.append(f"data.num_workers={workers}")
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    return instantiate(cfg.data), instantiate(cfg.model)


def training_throughput(args: argparse.Namespace, root: str, device: torch.device) -> tuple[float, int, str]:
    datamodule, module = build(args.model, root, args.batch, args.workers)
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    clock = TrainClock(args.warmup)
    trainer = L.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        limit_train_batches=args.warmup + args.steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
    )
    trainer.fit(module, datamodule=datamodule)
    params = sum(p.numel() for p in module.parameters())
    return args.batch * args.steps / (clock.stop - clock.start), params, precision


def data_throughput(root: str, batch: int, batches: int = 3) -> float:
    datamodule, _ = build("fusionvae", root, batch, 0)
    loader = iter(datamodule.train_dataloader())
    next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return batch * batches / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--model", default="fusionvae", choices=["fusionvae", "cvae", "cvae_s", "fcn", "fcn_s"])
    parser.add_argument("--batch", type=int, default=800, help="Table 6: 800 (400 per GPU on 2 GPUs)")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=4, help="data loader processes")
    parser.add_argument("--root", default=None, help="MNIST folder (default: a synthetic one)")
    args = parser.parse_args()
    if min(args.batch, args.steps, args.warmup + 1) < 1 or args.workers < 0:
        parser.error("--batch and --steps must be >= 1, --warmup and --workers >= 0")
    os.environ.setdefault("WANDB_MODE", "offline")
    device = torch.device(args.device)
    print(f"Device: {device_name(device)}; torch {torch.__version__}\n")
    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:  # enough digits for the timed steps without repeating an epoch
            n = args.batch * (args.warmup + args.steps + 1)
            root = str(write_synthetic_mnist(Path(tmp) / "mnist", n_train=n, n_test=32))
        images_per_s, params, precision = training_throughput(args, root, device)
        loader = data_throughput(root, min(args.batch, 256))
    epoch = MNIST_TRAIN / images_per_s
    print(f"FusionMNIST training ({args.model}_mnist, {params / 1e6:.2f} M parameters, batch {args.batch}, 32×32)")
    print(
        markdown_table(
            ["loop", "precision", "images/s", "one epoch (60k)", f"{PAPER_EPOCHS} epochs"],
            [
                [
                    "Lightning, real data module",
                    precision,
                    f"{images_per_s:.0f}",
                    f"{epoch:.1f} s",
                    f"{epoch * PAPER_EPOCHS / 3600:.2f} h",
                ],
                ["data module alone (1 process)", "", f"{loader:.0f}", "", ""],
            ],
        )
    )


if __name__ == "__main__":
    main()
