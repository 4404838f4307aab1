"""GP-GAN: Blending GAN training throughput and the time of a high-resolution GP-GAN blend.

Training: the paper's networks (64×64, 4000-channel bottleneck) and batch size (64), the steady-state critic
schedule (5 critic batches, then a generator update on the 5th), on in-memory batches so that only the model
is timed. Reported in images per second for Lightning's loop (``BlendingGAN`` under a ``Trainer``) and for the
same updates written as a bare PyTorch loop (the reference: what the Lightning wrapper costs), plus the
projected wall time of the paper's schedule (25 epochs × 150k pairs). The data module's own throughput on a
synthetic folder in the Transient Attributes layout is measured separately (decoding, resizing, pasting).

Inference: ``gpgan_blend`` of a 1024×1024 real photograph pair (scikit-image's astronaut into coffee) with the
paper-size generator, against ``gaussian_poisson_blend`` without the GAN (the pyramid alone) in the same run.

    python benchmarks/gpgan.py [--device cpu|cuda] [--batch 64] [--cycles 1]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from skimage import data
from skimage.transform import resize as sk_resize
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import TrainClock, device_name, markdown_table, timeit  # noqa: E402

from fusion.data.synthetic_layouts import write_synthetic_transient  # noqa: E402
from fusion.data.transient import TransientAttributesDataModule  # noqa: E402
from fusion.methods.gaussian_poisson import gaussian_poisson_blend  # noqa: E402
from fusion.methods.gpgan import gpgan_blend  # noqa: E402
from fusion.models.gpgan import BlendingGAN  # noqa: E402
from fusion.nn.gpgan import BlendingCritic, BlendingGenerator  # noqa: E402

PAPER_PAIRS = 25 * 150_000  # 25 epochs of 150k pairs
CRITIC_STEPS = 5


class Batches(Dataset):
    def __init__(self, n: int, batch: int) -> None:
        g = torch.Generator().manual_seed(0)
        self.x = torch.rand(n, 3, 64, 64, generator=g)
        self.y = torch.rand(n, 3, 64, 64, generator=g)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"composite": self.x[i], "target": self.y[i]}


def _model() -> BlendingGAN:
    return BlendingGAN(
        BlendingGenerator(),
        BlendingCritic(),
        generator_optimizer=functools.partial(torch.optim.Adam, lr=2e-3, betas=(0.5, 0.999)),
        critic_optimizer=functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999)),
        critic_steps=CRITIC_STEPS,
        critic_warmup_steps=CRITIC_STEPS,
        warmup_generator_steps=0,
        critic_burst_every=0,
    )


def lightning_throughput(device: torch.device, batch: int, cycles: int, precision: str) -> float:
    """Images per second of ``BlendingGAN`` under a Lightning ``Trainer`` (after one warm-up cycle)."""
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    batches = CRITIC_STEPS * (cycles + 1)
    loader = DataLoader(Batches(batch * batches, batch), batch_size=batch, drop_last=True)

    clock = TrainClock(CRITIC_STEPS)  # time from the end of the warm-up cycle
    trainer = L.Trainer(
        accelerator=accelerator,
        devices=1,
        precision=precision,
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        limit_val_batches=0,
    )
    trainer.fit(_model(), loader)
    return batch * CRITIC_STEPS * cycles / (clock.stop - clock.start)


def plain_throughput(device: torch.device, batch: int, cycles: int) -> float:
    """Images per second of the same updates in a bare PyTorch loop (float32)."""
    model = _model().to(device)
    opt_g, opt_d = model.configure_optimizers()
    x = torch.rand(batch, 3, 64, 64, device=device)
    y = torch.rand(batch, 3, 64, 64, device=device)

    def cycle() -> None:
        for k in range(CRITIC_STEPS):
            with torch.no_grad():
                fake = model.generator(x)
            loss_d, _ = model.critic_loss(y, fake)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            model.clip_critic()
        for p in model.critic.parameters():
            p.requires_grad_(False)
        loss_g, _ = model.generator_loss(model.generator(x), y)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        for p in model.critic.parameters():
            p.requires_grad_(True)

    seconds = timeit(cycle, device, repeat=cycles, warmup=1)
    return batch * CRITIC_STEPS / seconds


def data_throughput(batch: int, batches: int = 4) -> float:
    """Pairs per second produced by the Transient Attributes data module (one process, 64×64 crops)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = write_synthetic_transient(tmp, webcams=6, images_per_webcam=10, size=(192, 256))
        dm = TransientAttributesDataModule(root, batch_size=batch, train_pairs=batch * batches, num_workers=0)
        loader = dm.train_dataloader()
        start = time.perf_counter()
        count = sum(b["composite"].shape[0] for b in loader)
        return count / (time.perf_counter() - start)


def inference_times(device: torch.device, side: int = 1024, repeat: int = 5) -> tuple[float, float]:
    fg = torch.from_numpy(sk_resize(data.astronaut(), (side, side), anti_aliasing=True)).permute(2, 0, 1)[None]
    bg = torch.from_numpy(sk_resize(data.coffee(), (side, side), anti_aliasing=True)).permute(2, 0, 1)[None]
    fg, bg = fg.float().to(device), bg.float().to(device)
    yy, xx = np.mgrid[0:side, 0:side]
    mask = torch.from_numpy((((yy - side / 2) ** 2 + (xx - side / 2) ** 2) < (0.3 * side) ** 2).astype(np.float32))
    mask = mask[None, None].to(device)
    generator = BlendingGenerator().to(device).eval()
    gan, pyramid = [], []
    with torch.no_grad():
        for _ in range(repeat):  # interleaved, so that load changes on a shared machine hit both alike
            gan.append(timeit(lambda: gpgan_blend(fg, bg, mask, generator=generator), device, repeat=1))
            pyramid.append(timeit(lambda: gaussian_poisson_blend(fg, bg, mask), device, repeat=1))
    return statistics.median(gan), statistics.median(pyramid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--cycles", type=int, default=1, help="timed critic/generator cycles (5 batches each)")
    args = parser.parse_args()
    device = torch.device(args.device)
    precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    print(f"Device: {device_name(device)}; torch {torch.__version__}\n")

    lit = lightning_throughput(device, args.batch, args.cycles, precision)
    plain = plain_throughput(device, args.batch, args.cycles)
    loader = data_throughput(args.batch)
    hours = PAPER_PAIRS / lit / 3600
    print("Training (Blending GAN, 64×64, bottleneck 4000, batch %d, 5 critic : 1 generator)" % args.batch)
    print(
        markdown_table(
            ["loop", "precision", "images/s", "paper schedule (3.75 M pairs)"],
            [
                ["Lightning BlendingGAN", precision, f"{lit:.1f}", f"{hours:.1f} h"],
                ["bare PyTorch loop", "32-true", f"{plain:.1f}", f"{PAPER_PAIRS / plain / 3600:.1f} h"],
                ["Lightning / bare", "", f"{lit / plain:.2f}", ""],
                ["data module alone (1 process)", "", f"{loader:.0f}", ""],
            ],
        )
    )
    gan, pyramid = inference_times(device)
    print("\nInference, 1024×1024 RGB, float32")
    print(
        markdown_table(
            ["method", "ms", "ratio"],
            [
                ["gpgan_blend (Blending GAN + Gaussian–Poisson pyramid)", f"{gan * 1e3:.0f}", f"{gan / pyramid:.2f}"],
                ["gaussian_poisson_blend (pyramid alone, no GAN)", f"{pyramid * 1e3:.0f}", "1.00"],
            ],
        )
    )


if __name__ == "__main__":
    main()
