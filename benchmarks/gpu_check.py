"""The whole GPU verification as one command: the gpu-marked tests, then every benchmark's CUDA row, in one table.

A GPU is lent for a short time, start-up included, so everything that needs one runs here in a fixed order, each
row under its own time budget and all of them under a total budget (470 s by default, inside 8 minutes on one
H100/H200). A row that raises is recorded with its one-line error, a row that outlives its budget is stopped and
recorded as timed out, and the script goes on with the next row either way. The table (Markdown and JSON, with
the device, the torch and CUDA versions, each figure, its target and whether it is met, and the peak memory of
each row against the size of its inputs) is rewritten atomically after every row, so a run that is cut short
still leaves the rows it finished.

Rows, in order (``--list`` prints them with their budgets and targets):

* ``tests``: ``pytest -m gpu`` in a subprocess (every gpu-marked test, the CUDA variants of the tests that take
  the ``device`` fixture, and ``tests/methods/test_cuda.py``);
* the CUDA rows of the benchmarks, at the sizes of BENCHMARKS.md, calling the library directly: Poisson
  spectral (4 MP) and exact (1 M unknowns per channel), GP-GAN's 1024² blend and Blending GAN training
  (bf16-mixed), Deep Image Blending at 512² (fp32 and bf16; a reduced number of iterations, extrapolated to
  the paper's 1000 + 1000), variational osmosis at 800×563, dynamic OT (64²×3, 32 steps, 1000 iterations) and
  FusionVAE training at the FusionMNIST size (synthetic 32×32 batches).

Each timed row runs its computation once as a warm-up, synchronises the device before reading the clock, and
measures peak memory from a reset at the start of the row: on CUDA ``torch.cuda.max_memory_allocated``, on the
CPU the process's resident-set peak above its size at the start of the row.

Without CUDA the same rows run at tiny sizes on the CPU (``--rehearse``, chosen automatically): a rehearsal of
the script itself, whose figures say nothing about a GPU and whose targets are not judged.

    python benchmarks/gpu_check.py [--out outputs/gpu_check] [--rehearse] [--device cuda|cpu] [--only ROW ...]
                                   [--budget ROW=SECONDS ...] [--total-budget SECONDS] [--list]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "outputs" / "gpu_check"
TOTAL_BUDGET_S = 470.0  # under 8 minutes, with room for the interpreter's start
REHEARSAL_TOTAL_BUDGET_S = 150.0
HARD_STOP_GRACE_S = 20.0  # past its budget plus this, a row that never returns to Python ends the process
MIB = 2**20


def _process_age() -> float:
    """Seconds since this process started (from ``/proc``; 0 where that cannot be read), so that the total budget
    counts the interpreter's start and the imports too."""
    try:
        with open("/proc/self/stat") as fh:
            start_ticks = int(fh.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        age = uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0
    return age if 0.0 <= age < 120.0 else 0.0  # older: imported by a longer-lived process, which counts from now


PROCESS_START = time.monotonic() - _process_age()


# ----------------------------------------------------------------------------------------------------------------
# Row specifications
# ----------------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    """A figure's goal: ``value`` compared with ``op`` (``"<"``: at most, ``">="``: at least), in the row's unit."""

    op: str
    value: float
    text: str

    def met(self, figure: float) -> bool:
        return figure < self.value if self.op == "<" else figure >= self.value


@dataclasses.dataclass
class Measurement:
    """What a row function returns: its figure, how to show it, and what it ran on."""

    value: float | None
    unit: str
    text: str
    size: str
    input_bytes: int | None = None
    note: str = ""


@dataclasses.dataclass(frozen=True)
class RowSpec:
    id: str
    title: str
    budget_s: float  # on a GPU, at the full sizes
    rehearsal_budget_s: float  # at the rehearsal's tiny sizes
    target: Target | None
    run: Callable[[Context], Measurement]
    needs: tuple[str, ...] = ()  # modules imported before the rows start (see :func:`preload`)


@dataclasses.dataclass
class Context:
    """What every row function gets: where to run, at which scale, and where to write side files."""

    device: torch.device
    rehearse: bool
    out: Path

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# ----------------------------------------------------------------------------------------------------------------
# Small helpers shared by the rows
# ----------------------------------------------------------------------------------------------------------------


def photo(name: str, height: int, width: int, device: torch.device) -> torch.Tensor:
    """A scikit-image photograph (``astronaut``, ``coffee``) as a ``(1, 3, H, W)`` float32 image in [0, 1]."""
    from skimage import data

    image = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1)[None].float().div(255)
    image = F.interpolate(image, size=(height, width), mode="bilinear", antialias=True, align_corners=False)
    return image.clamp(0, 1).contiguous().to(device)


def ellipse(height: int, width: int, device: torch.device, radius: float = 0.35) -> torch.Tensor:
    """A centred elliptic ``(1, 1, H, W)`` mask with semi-axes ``radius`` times the sides (≈ 38 % of the image)."""
    yy = torch.arange(height, dtype=torch.float32)[:, None]
    xx = torch.arange(width, dtype=torch.float32)[None, :]
    inside = ((yy - height / 2) / (radius * height)) ** 2 + ((xx - width / 2) / (radius * width)) ** 2 < 1
    return inside.float()[None, None].to(device)


def nbytes(*tensors: torch.Tensor) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def timed(ctx: Context, fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """One warm-up call of ``fn``, then the median wall time of ``repeat`` calls (device synchronised around
    each) and the last call's result."""
    fn()
    times, out = [], None
    for _ in range(repeat):
        ctx.sync()
        start = time.perf_counter()
        out = fn()
        ctx.sync()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


@contextlib.contextmanager
def no_convergence_warnings():
    from fusion import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        yield


def step_clock(warmup: int):
    """A Lightning callback timing a ``Trainer.fit`` from the start of batch ``warmup`` to the end of training,
    with the device synchronised at both ends; its ``seconds`` is the time of the batches after the warm-up."""
    import lightning as L

    class StepClock(L.Callback):
        def __init__(self) -> None:
            self.start = self.stop = None

        @staticmethod
        def _sync(module) -> None:
            if module.device.type == "cuda":
                torch.cuda.synchronize(module.device)

        def on_train_batch_start(self, trainer, module, batch, index) -> None:
            if index == warmup:
                self._sync(module)
                self.start = time.perf_counter()

        def on_train_end(self, trainer, module) -> None:
            self._sync(module)
            self.stop = time.perf_counter()

        @property
        def seconds(self) -> float:
            if self.start is None or self.stop is None:
                raise RuntimeError("training ended before the timed batches started")
            return self.stop - self.start

    return StepClock()


def _trainer(ctx: Context, precision: str, batches: int, clock) -> Any:
    import lightning as L

    return L.Trainer(
        accelerator="gpu" if ctx.device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        max_epochs=1,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[clock],
        default_root_dir=str(ctx.out / "lightning"),
    )


class _Batches(torch.utils.data.Dataset):
    """Whole batches kept in memory on the training device (a loader with ``batch_size=None`` yields them), so
    that only the model is timed."""

    def __init__(self, batches: list[dict[str, torch.Tensor]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.batches[i]


# ----------------------------------------------------------------------------------------------------------------
# The rows
# ----------------------------------------------------------------------------------------------------------------


def row_tests(ctx: Context) -> Measurement:
    """Every gpu-marked test (rehearsal: only the file of CUDA-against-CPU comparisons, all skipped without CUDA)."""
    paths = ["tests/methods/test_cuda.py"] if ctx.rehearse else ["tests"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-rfEs", "--durations=15", "-p", "no:cacheprovider"]
    cmd += paths
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = ctx.out / "pytest.log"
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    chunks: list[str] = []
    try:
        for line in proc.stdout:
            chunks.append(line)
        proc.wait()
    except BaseException:  # the row's budget (or an interrupt) stops the run: end the whole process group
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        write_atomic(log, "".join(chunks) + "\n[stopped by the gpu check: the row's budget ran out]\n")
        raise
    output = "".join(chunks)
    write_atomic(log, output)
    # pytest's last line: "3 passed, 2 skipped, 1 xfailed in 4.20s" (between "=" rules without -q)
    finals = [line for line in output.splitlines() if re.search(r"\d+ \w+.* in [\d.]+s", line)]
    kinds = ("passed", "failed", "error", "errors", "skipped", "xfailed", "xpassed", "deselected")
    counts = {k: int(n) for n, k in re.findall(r"(\d+) (\w+)", finals[-1] if finals else "") if k in kinds}
    passed = counts.get("passed", 0)
    failed = counts.get("failed", 0) + counts.get("error", 0) + counts.get("errors", 0)
    summary = ", ".join(f"{counts[k]} {k}" for k in kinds[:-1] if k in counts)
    failures = re.findall(r"^(?:FAILED|ERROR) (\S+)", output, flags=re.MULTILINE)
    if proc.returncode not in (0, 5) or failed:
        shown = "; ".join(failures[:3]) + (f"; … {len(failures) - 3} more" if len(failures) > 3 else "")
        raise RuntimeError(f"pytest exit status {proc.returncode} ({summary or 'no summary'}): {shown or 'see log'}")
    note = f"pytest -m gpu {' '.join(paths)}; log: {log.name}"
    if not torch.cuda.is_available():
        note += "; no CUDA here, so every gpu-marked test is skipped"
    return Measurement(float(passed), "tests passed", summary or "no tests", " ".join(paths), note=note)


def row_poisson_spectral(ctx: Context) -> Measurement:
    from fusion.methods import poisson_blend

    h, w = (30, 40) if ctx.rehearse else (1732, 2309)  # 4 MP, BENCHMARKS.md's largest row
    fg, bg, mask = photo("astronaut", h, w, ctx.device), photo("coffee", h, w, ctx.device), ellipse(h, w, ctx.device)
    with torch.no_grad():
        seconds, out = timed(ctx, lambda: poisson_blend(fg, bg, mask, solver="spectral"), repeat=5)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("the spectral blend is not finite")
    return Measurement(
        seconds * 1e3, "ms", f"{seconds * 1e3:.2f} ms", f"{h}×{w} RGB ({h * w / 1e6:.2g} MP), float32",
        nbytes(fg, bg, mask), "median of 5 after one warm-up",
    )  # fmt: skip


def row_poisson_exact(ctx: Context) -> Measurement:
    from fusion.methods import poisson_solve

    # an ellipse of 0.35 × the sides covers π·0.35² ≈ 38.5 % of the image: 1396×1861 gives ≈ 1.0 M unknowns
    h, w = (30, 40) if ctx.rehearse else (1396, 1861)
    fg, bg, mask = photo("astronaut", h, w, ctx.device), photo("coffee", h, w, ctx.device), ellipse(h, w, ctx.device)
    unknowns = int((mask > 0.5).sum())
    with torch.no_grad():
        seconds, res = timed(ctx, lambda: poisson_solve(fg, bg, mask, solver="exact", tol=1e-5), repeat=3)
    solver = res.solver
    converged = bool(solver.converged.all())
    note = f"PCG, tol 1e-5: {solver.iterations} iterations, {'converged' if converged else 'NOT converged'}"
    return Measurement(
        seconds * 1e3, "ms", f"{seconds * 1e3:.1f} ms", f"{h}×{w} RGB, {unknowns:,} unknowns/channel, float32",
        nbytes(fg, bg, mask), note + "; median of 3 after one warm-up",
    )  # fmt: skip


def _generator(ctx: Context):
    from fusion.nn.gpgan import BlendingGenerator

    if ctx.rehearse:
        return BlendingGenerator(image_size=32, encoder_channels=8, decoder_channels=8, bottleneck=16)
    return BlendingGenerator()  # the paper's: 64×64, 4000-channel bottleneck


def row_gpgan_blend(ctx: Context) -> Measurement:
    from fusion.methods import gpgan_blend

    side = 48 if ctx.rehearse else 1024
    fg, bg = photo("astronaut", side, side, ctx.device), photo("coffee", side, side, ctx.device)
    mask = ellipse(side, side, ctx.device, radius=0.3)
    generator = _generator(ctx).to(ctx.device).eval()
    with torch.no_grad():
        seconds, out = timed(ctx, lambda: gpgan_blend(fg, bg, mask, generator=generator), repeat=5)
    if not bool(torch.isfinite(out).all()):
        raise FloatingPointError("the GP-GAN blend is not finite")
    weights = sum(p.numel() for p in generator.parameters())
    return Measurement(
        seconds * 1e3, "ms", f"{seconds * 1e3:.1f} ms", f"{side}×{side} RGB, float32",
        nbytes(fg, bg, mask), f"generator with random weights ({weights:,} parameters); median of 5 after one warm-up",
    )  # fmt: skip


def row_gpgan_train(ctx: Context) -> Measurement:
    import functools

    from fusion.models.gpgan import BlendingGAN
    from fusion.nn.gpgan import BlendingCritic

    critic_steps = 5
    batch, side = (4, 32) if ctx.rehearse else (64, 64)
    warmup_cycles, timed_cycles = 1, (1 if ctx.rehearse else 10)
    critic = BlendingCritic(image_size=side, base_channels=8) if ctx.rehearse else BlendingCritic()
    model = BlendingGAN(
        _generator(ctx),
        critic,
        generator_optimizer=functools.partial(torch.optim.Adam, lr=2e-3, betas=(0.5, 0.999)),
        critic_optimizer=functools.partial(torch.optim.Adam, lr=2e-4, betas=(0.5, 0.999)),
        critic_steps=critic_steps,
        critic_warmup_steps=critic_steps,  # the steady-state 5 : 1 schedule from the first cycle
        warmup_generator_steps=0,
        critic_burst_every=0,
    )
    g = torch.Generator().manual_seed(0)
    batches = [
        {
            "composite": torch.rand(batch, 3, side, side, generator=g).to(ctx.device),
            "target": torch.rand(batch, 3, side, side, generator=g).to(ctx.device),
        }
        for _ in range(critic_steps * (warmup_cycles + timed_cycles))
    ]
    loader = torch.utils.data.DataLoader(_Batches(batches), batch_size=None, shuffle=False)
    clock = step_clock(critic_steps * warmup_cycles)
    precision = "bf16-mixed" if ctx.device.type == "cuda" else "32-true"  # bf16 on a CPU only slows the rehearsal
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Lightning's advice on workers and tensor cores
        _trainer(ctx, precision, len(batches), clock).fit(model, loader)
    images = batch * critic_steps * timed_cycles
    rate = images / clock.seconds
    return Measurement(
        rate, "images/s", f"{rate:,.0f} images/s", f"batch {batch}, {side}×{side}, {precision}",
        nbytes(*batches[0].values()),
        f"Lightning BlendingGAN, 5 critic : 1 generator, {timed_cycles} timed cycle{'s' * (timed_cycles > 1)} after "
        f"{warmup_cycles} warm-up; "
        f"in-memory batches on the device; paper schedule (3.75 M pairs): {3.75e6 / rate / 60:,.1f} min",
    )  # fmt: skip


def _deep_blend(ctx: Context, amp: bool) -> Measurement:
    from fusion.methods import deep_blend_solve  # imported here: a broken method fails its rows only
    from fusion.nn.vgg import VGG16Features

    side = 32 if ctx.rehearse else 512
    iters = 1 if ctx.rehearse else 50
    paper = 1000
    fg, bg = photo("astronaut", side, side, ctx.device), photo("coffee", side, side, ctx.device)
    mask = ellipse(side, side, ctx.device, radius=0.33)
    vgg = VGG16Features("random").to(ctx.device)

    def run(n: int):
        gen = torch.Generator(device=ctx.device).manual_seed(0)
        return deep_blend_solve(
            fg, bg, mask, vgg_weights=vgg, stage1={"max_iter": n}, stage2={"max_iter": n}, generator=gen,
            stop_early=False, mixed_precision=amp,
        )  # fmt: skip

    with no_convergence_warnings():
        run(1)  # warm-up: cuDNN plans, the allocator
        ctx.sync()
        start = time.perf_counter()
        res = run(iters)
        ctx.sync()
        seconds = time.perf_counter() - start
    done = int(res.solver.iterations)
    if done < 1:
        raise RuntimeError("the blend ran no iterations")
    per_iter = seconds / done
    projected = per_iter * 2 * paper
    precision = "bf16 autocast" if amp else "fp32"
    return Measurement(
        projected, "s", f"{projected:.1f} s (extrapolated)", f"{side}×{side} RGB, {precision}",
        nbytes(fg, bg, mask),
        f"{iters} + {iters} iterations ran ({done} in all) in {seconds:.2f} s, {per_iter * 1e3:.1f} ms/iteration, "
        f"extrapolated to the paper's {paper} + {paper}; random VGG16 weights",
    )  # fmt: skip


def row_deep_blend_fp32(ctx: Context) -> Measurement:
    return _deep_blend(ctx, amp=False)


def row_deep_blend_bf16(ctx: Context) -> Measurement:
    m = _deep_blend(ctx, amp=True)
    if ctx.device.type != "cuda":  # the method's autocast is CUDA's: on the CPU the same call runs in float32
        m.note += "; no CUDA: mixed_precision has no effect on the CPU"
    return m


def row_osmosis(ctx: Context) -> Measurement:
    from fusion.methods import alpha_map, osmosis_solve

    h, w = (28, 40) if ctx.rehearse else (563, 800)
    f, b, mask = photo("astronaut", h, w, ctx.device), photo("coffee", h, w, ctx.device), ellipse(h, w, ctx.device)
    alpha = alpha_map(mask, kind="gaussian", sigma=5.0 * h / 563)
    with no_convergence_warnings():
        osmosis_solve(f, b, alpha, max_iter=2, min_iter=1)  # warm-up: kernels, allocator
    ctx.sync()
    start = time.perf_counter()
    res = osmosis_solve(f, b, alpha, max_iter=10000, tol=1e-6).solver
    ctx.sync()
    seconds = time.perf_counter() - start
    converged = bool(res.converged.all())
    return Measurement(
        seconds, "s", f"{seconds:.2f} s", f"{h}×{w} RGB, float32", nbytes(f, b, alpha),
        f"metric=newton_u, tol 1e-6: {res.iterations} iterations, {'converged' if converged else 'NOT converged'}",
    )  # fmt: skip


def row_ot(ctx: Context) -> Measurement:
    from fusion.methods import ot_solve

    side, steps, iters = (8, 4, 10) if ctx.rehearse else (64, 32, 1000)
    f0 = photo("astronaut", side, side, ctx.device) + 0.01  # a floor, so that black carries mass
    f1 = photo("coffee", side, side, ctx.device) + 0.01
    f1 = f1 * f0.sum() / f1.sum()
    with no_convergence_warnings(), torch.no_grad():
        ot_solve(f0, f1, steps=steps, max_iter=2, tol=1e-30)  # warm-up: kernels, FFT plans
        ctx.sync()
        start = time.perf_counter()
        res = ot_solve(f0, f1, steps=steps, max_iter=iters, tol=1e-30)  # tol below reach: every iteration runs
        ctx.sync()
        seconds = time.perf_counter() - start
    done = int(res.solver.iterations)
    per_1000 = seconds * 1000 / max(done, 1)
    return Measurement(
        per_1000, "s", f"{per_1000:.2f} s / 1000 it", f"{side}×{side}×3, {steps} time steps, float32",
        nbytes(f0, f1), f"{done} iterations in {seconds:.2f} s (constrained model, periodic colour)",
    )  # fmt: skip


def row_fusionvae(ctx: Context) -> Measurement:
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    batch = 4 if ctx.rehearse else 800  # Table 6
    warmup, steps = (1, 2) if ctx.rehearse else (4, 12)
    overrides = ["experiment=fusionvae_mnist", "data.root=unused", f"data.batch_size={batch}"]
    if ctx.rehearse:  # (at 4 channels the CPU convolutions are slower than at 8)
        overrides += ["model.network.channels=8", "model.network.groups_per_scale=[1,1]"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    module = instantiate(cfg.model)
    size, channels = int(cfg.data.image_size), int(cfg.model.network.in_channels)
    g = torch.Generator().manual_seed(0)
    batches = []
    for i in range(warmup + steps):  # K = 0, 1, 2, 3 in turn, as the training loader draws them uniformly
        target = (torch.rand(batch, channels, size, size, generator=g) > 0.7).float()
        k = i % 4
        keep = (torch.rand(batch, k, 1, size, size, generator=g) > 0.5).float()
        noise = 0.1 * torch.randn(batch, k, channels, size, size, generator=g)
        inputs = (target[:, None] * keep + noise).clamp(0, 1)
        batches.append({"inputs": inputs.to(ctx.device), "target": target.to(ctx.device)})
    loader = torch.utils.data.DataLoader(_Batches(batches), batch_size=None, shuffle=False)
    clock = step_clock(warmup)
    precision = "bf16-mixed" if ctx.device.type == "cuda" else "32-true"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _trainer(ctx, precision, len(batches), clock).fit(module, loader)
    rate = batch * steps / clock.seconds
    params = sum(p.numel() for p in module.parameters())
    epoch = 60_000 / rate
    return Measurement(
        rate, "images/s", f"{rate:,.0f} images/s", f"batch {batch}, {size}×{size}, {precision}",
        nbytes(*batches[-1].values()),
        f"fusionvae_mnist ({params / 1e6:.2f} M parameters) on synthetic 32×32 batches in memory, not the data "
        f"module; {steps} timed steps after {warmup}; 400 epochs: {epoch * 400 / 3600:.2f} h",
    )  # fmt: skip


_PHOTOS = ("skimage.data", "fusion.methods")
_TRAINING = ("lightning", "fusion.models.gpgan", "fusion.nn.gpgan")
ROWS: list[RowSpec] = [
    RowSpec("tests", "gpu-marked tests (pytest -m gpu)", 150, 60, Target(">=", 1.0, "all pass"), row_tests),
    RowSpec(
        "poisson_spectral", "Poisson, solver=spectral", 15, 10, Target("<", 5.0, "< 5 ms (H100)"),
        row_poisson_spectral, _PHOTOS,
    ),
    RowSpec(
        "poisson_exact", "Poisson, solver=exact", 20, 10, Target("<", 50.0, "< 50 ms (H100)"), row_poisson_exact,
        _PHOTOS,
    ),
    RowSpec(
        "gpgan_blend", "GP-GAN blend (gpgan_blend)", 20, 10, Target("<", 50.0, "< 50 ms (H100)"), row_gpgan_blend,
        (*_PHOTOS, "fusion.nn.gpgan"),
    ),
    RowSpec(
        "gpgan_train", "Blending GAN training", 45, 20,
        Target(">=", 4200.0, "≥ 4,200 images/s: paper schedule < 15 min (H100)"), row_gpgan_train, _TRAINING,
    ),
    RowSpec(
        "deep_blend_fp32", "Deep Image Blending, fp32", 40, 15,
        Target("<", 30.0, "< 30 s per 1000 + 1000 blend (H100)"), row_deep_blend_fp32, (*_PHOTOS, "fusion.nn.vgg"),
    ),
    RowSpec(
        "deep_blend_bf16", "Deep Image Blending, bf16 autocast", 40, 15,
        Target("<", 30.0, "< 30 s per 1000 + 1000 blend (H100)"), row_deep_blend_bf16, (*_PHOTOS, "fusion.nn.vgg"),
    ),
    RowSpec(
        "osmosis", "variational osmosis (osmosis_solve)", 45, 15, Target("<", 3.0, "< 3 s (H100)"), row_osmosis,
        _PHOTOS,
    ),
    RowSpec("ot", "dynamic OT (ot_solve)", 30, 10, Target("<", 5.0, "< 5 s per 1000 it (H100)"), row_ot, _PHOTOS),
    RowSpec(
        "fusionvae_train", "FusionVAE training", 45, 30,
        Target(">=", 6700.0, "≥ 6,700 images/s: 400 epochs < 1 GPU-hour (H100)"), row_fusionvae,
        ("lightning", "hydra", "hydra.utils", "fusion.models.fusionvae"),
    ),
]  # fmt: skip
ROW_IDS = [spec.id for spec in ROWS]


# ----------------------------------------------------------------------------------------------------------------
# Budgets, memory and the record of each row
# ----------------------------------------------------------------------------------------------------------------


class RowTimeout(BaseException):
    """Raised in the main thread when a row outlives its budget (a BaseException: ``except Exception`` in the code
    under test must not swallow it)."""


@contextlib.contextmanager
def budget(seconds: float):
    """Raise :class:`RowTimeout` in the main thread after ``seconds`` of wall time."""

    def expire(signum, frame):
        raise RowTimeout(f"stopped at its budget of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class MemoryMeter:
    """Peak memory of one row. CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``. CPU:
    the resident-set peak above the row's starting size, from the kernel's high-water mark (``VmHWM``, reset
    through ``/proc/self/clear_refs``) where that reset works, else sampled every 5 ms by a thread."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._sampler: threading.Thread | None = None
        self._stop = threading.Event()
        self._sampled = 0
        self.kind = ""

    def start(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            self.kind = "CUDA max allocated"
            return
        self.base = (_status_kib("VmRSS") or 0) * 1024
        reset = False
        try:
            with open("/proc/self/clear_refs", "w") as fh:
                fh.write("5")
            hwm = _status_kib("VmHWM")
            reset = hwm is not None and hwm * 1024 <= self.base + 8 * MIB
        except OSError:
            pass
        if reset:
            self.kind = "RSS peak above row start (VmHWM)"
            return
        self.kind = "RSS peak above row start (sampled every 5 ms)"
        self._sampled = self.base
        self._stop.clear()

        def sample() -> None:
            while not self._stop.wait(0.005):
                self._sampled = max(self._sampled, (_status_kib("VmRSS") or 0) * 1024)

        self._sampler = threading.Thread(target=sample, daemon=True)
        self._sampler.start()

    def stop(self) -> int | None:
        if self.device.type == "cuda":
            try:
                torch.cuda.synchronize(self.device)
                return int(torch.cuda.max_memory_allocated(self.device))
            except Exception:  # a failed kernel can leave the context unusable
                return None
        if self._sampler is not None:
            self._stop.set()
            self._sampler.join()
            self._sampler = None
            peak = self._sampled
        else:
            peak = (_status_kib("VmHWM") or 0) * 1024
        return max(0, peak - self.base)


def human_bytes(n: int | None) -> str:
    if n is None:
        return "—"
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.2f} {unit}" if unit == "GiB" else f"{n / size:.1f} {unit}"
    return f"{n} B"


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or "(no message)"
    if len(text) > 300:
        text = text[:297] + "..."
    return f"{type(exc).__name__}: {text}"


def new_record(spec: RowSpec, budget_s: float) -> dict[str, Any]:
    return {
        "id": spec.id,
        "title": spec.title,
        "size": "—",
        "status": "not run",
        "figure": None,
        "unit": "",
        "figure_text": "—",
        "target": spec.target.text if spec.target else "—",
        "met": "—",
        "seconds": None,
        "budget_s": budget_s,
        "peak_memory_bytes": None,
        "memory_kind": "",
        "input_bytes": None,
        "memory_per_input": None,
        "note": "",
        "error": "",
        "traceback": "",
    }


# ----------------------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------------------

MD_HEADER = ["row", "what", "size", "figure", "target", "met", "status", "s / budget", "peak memory", "inputs", "note"]


def _cell(value: Any) -> str:
    return str(value).replace("\n", " ").replace("|", "\\|")


def markdown_cells(row: dict[str, Any]) -> list[str]:
    """The Markdown cells of one row, in :data:`MD_HEADER` order (the test compares them with the JSON)."""
    seconds = "—" if row["seconds"] is None else f"{row['seconds']:.1f}"
    memory = human_bytes(row["peak_memory_bytes"])
    if row["peak_memory_bytes"] is not None:
        ratio = f", {row['memory_per_input']:.1f}× inputs" if row["memory_per_input"] is not None else ""
        memory = f"{memory} ({row['memory_kind']}{ratio})"
    note = row["note"]
    if row["error"]:
        note = f"{row['error']}" + (f"; {note}" if note else "")
    cells = [
        row["id"], row["title"], row["size"], row["figure_text"], row["target"], row["met"], row["status"],
        f"{seconds} / {row['budget_s']:g}", memory, human_bytes(row["input_bytes"]), note or "—",
    ]  # fmt: skip
    return [_cell(c) for c in cells]


def markdown(report: dict[str, Any]) -> str:
    env = report["environment"]
    if report["mode"] == "cuda":
        mode = "CUDA run at the sizes of BENCHMARKS.md; targets are judged"
    elif report["mode"] == "cpu":
        mode = "the sizes of BENCHMARKS.md on the CPU (--full-size): CPU figures, peak memory; no GPU targets judged"
    else:
        mode = (
            f"rehearsal at tiny sizes on {env['device_type']}: it checks the script, its figures say nothing about "
            "a GPU and its targets are not judged"
        )
    if env["driver"]:
        runtime = f"driver {env['driver']}"
    else:
        runtime = "a CUDA device is available" if env["cuda_available"] else "torch's build; no CUDA device here"
    lines = [
        "# GPU check",
        "",
        f"- mode: {mode}",
        f"- device: {env['device']}",
        f"- torch {env['torch']}, CUDA {env['cuda'] or '—'} ({runtime}), cuDNN {env['cudnn'] or '—'}, "
        f"Python {env['python']}",
        f"- started {report['started_utc']}; {report['elapsed_s']:.1f} s of the {report['total_budget_s']:g} s "
        f"total budget; {'finished' if report['finished'] else 'in progress or cut short'}",
        "",
        "| " + " | ".join(MD_HEADER) + " |",
        "|" + "---|" * len(MD_HEADER),
    ]
    lines += ["| " + " | ".join(markdown_cells(row)) + " |" for row in report["rows"]]
    return "\n".join(lines) + "\n"


_UMASK = os.umask(0)
os.umask(_UMASK)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make the table private
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class Report:
    """The run's table; :meth:`save` rewrites both files (JSON and Markdown) from the same rows."""

    def __init__(self, out: Path, mode: str, device: torch.device, total_budget: float, records: list[dict]) -> None:
        self.out = out
        self._lock = threading.Lock()
        self.data: dict[str, Any] = {
            "mode": mode,
            "environment": environment(device),
            "started_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "elapsed_s": 0.0,
            "total_budget_s": total_budget,
            "finished": False,
            "rows": records,
        }

    def save(self, finished: bool = False) -> None:
        with self._lock:
            self.data["elapsed_s"] = round(time.monotonic() - PROCESS_START, 2)
            self.data["finished"] = finished
            write_atomic(self.out / "gpu_check.json", json.dumps(self.data, indent=2, ensure_ascii=False) + "\n")
            write_atomic(self.out / "gpu_check.md", markdown(self.data))


def _driver() -> str | None:
    """The NVIDIA driver's version, from ``nvidia-smi`` where it answers within a few seconds."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


def environment(device: torch.device) -> dict[str, Any]:
    driver = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = f"{props.name} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)"
        driver = _driver()
    else:
        name = platform.processor() or platform.machine()
        with contextlib.suppress(OSError):
            with open("/proc/cpuinfo") as fh:
                for line in fh:
                    if line.startswith("model name"):
                        name = line.split(":", 1)[1].strip()
                        break
        threads = torch.get_num_threads()
        name = f"{name}, {threads} torch thread{'s' if threads > 1 else ''}"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {
        "device_type": device.type,
        "device": name,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "driver": driver,
        "cudnn": cudnn,
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------------------------------------------
# Running the rows
# ----------------------------------------------------------------------------------------------------------------


def _injected(kind: str, spec: RowSpec) -> Callable[[Context], Measurement]:
    """``spec``'s row with a fault added after its work, to check the script's own handling: ``raise`` fails it,
    ``sleep`` keeps it busy past its budget, ``hang`` does the same with the alarm ignored (as it is, in effect,
    by a call stuck in native code), which only the watchdog's hard stop can end."""

    def faulty(ctx: Context) -> Measurement:
        if kind == "hang":  # from the start: the alarm must not stop the row's own work either
            signal.signal(signal.SIGALRM, signal.SIG_IGN)
        spec.run(ctx)
        if kind == "raise":
            raise RuntimeError(f"injected failure (--inject {spec.id}=raise)")
        time.sleep(3600)
        raise AssertionError("the budget did not stop the row")

    return faulty


class Watchdog(threading.Thread):
    """Ends the process when a row has not returned to Python well past its budget (a call stuck in native code
    that the alarm cannot interrupt): the row is recorded as timed out, the rest as not run, the table saved."""

    def __init__(self, report: Report, grace: float = HARD_STOP_GRACE_S) -> None:
        super().__init__(daemon=True)
        self.report, self.grace = report, grace
        self.row: dict[str, Any] | None = None
        self.deadline = math.inf
        self.done = threading.Event()

    def arm(self, row: dict[str, Any], seconds: float) -> None:
        self.row, self.deadline = row, time.monotonic() + seconds + self.grace

    def disarm(self) -> None:
        self.row, self.deadline = None, math.inf

    def run(self) -> None:
        while not self.done.wait(0.5):
            row = self.row
            if row is None or time.monotonic() < self.deadline:
                continue
            row["status"] = "timed out"
            row["seconds"] = round(time.monotonic() - self.deadline + self.grace + row["budget_s"], 3)
            row["error"] = f"RowTimeout: hard stop, {self.grace:g} s past its budget of {row['budget_s']:g} s"
            for other in self.report.data["rows"]:
                if other["status"] in ("not run", "running"):
                    other["status"] = "not run"
                    other["note"] = "the process was ended by the hard stop of an earlier row"
            with contextlib.suppress(Exception):
                self.report.save(finished=False)
            sys.stderr.write(f"gpu_check: {row['id']} did not stop at its budget; ending the process\n")
            sys.stderr.flush()
            os._exit(3)


def preload(modules: list[str]) -> None:
    """Import what the rows use before they start, so that no row's time or memory holds its imports. It runs in
    a thread while the tests run in their subprocess; a module that fails to import here is left to fail the rows
    that need it, with its own error."""
    import logging

    for name in modules:
        with contextlib.suppress(Exception):
            __import__(name)
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):  # its banners are not part of the table
        logging.getLogger(name).setLevel(logging.WARNING)


def run_row(spec: RowSpec, fn: Callable, ctx: Context, row: dict[str, Any], watchdog: Watchdog) -> None:
    meter = MemoryMeter(ctx.device)
    seconds = row["budget_s"]
    row["status"] = "running"
    meter.start()
    start = time.monotonic()
    watchdog.arm(row, seconds)
    result: Measurement | None = None
    try:
        with budget(seconds):
            result = fn(ctx)
            ctx.sync()
    except RowTimeout as exc:
        row["status"], row["error"] = "timed out", one_line(exc)
    except Exception as exc:  # noqa: BLE001 - every failure becomes a row of the table
        timed_out = time.monotonic() - start >= seconds or isinstance(exc.__context__, RowTimeout)
        row["status"] = "timed out" if timed_out else "failed"
        row["error"] = one_line(exc)
        row["traceback"] = traceback.format_exc(limit=8)
    finally:
        watchdog.disarm()
        row["seconds"] = round(time.monotonic() - start, 3)
    if ctx.device.type == "cuda":
        with contextlib.suppress(Exception):  # let work queued before a stop finish before the next row
            torch.cuda.synchronize(ctx.device)
    if spec.id != "tests":  # the tests run in a subprocess: this process's memory says nothing about them
        row["peak_memory_bytes"] = meter.stop()
        row["memory_kind"] = meter.kind
    else:
        meter.stop()
    if result is not None and row["status"] == "running":  # (an alarm just after the work still times it out)
        row["status"] = "ok"
        note = "; ".join(part for part in (result.note, row["note"]) if part)
        row.update(size=result.size, figure=result.value, unit=result.unit, figure_text=result.text, note=note)
        row["input_bytes"] = result.input_bytes
        if result.input_bytes and row["peak_memory_bytes"] is not None:
            row["memory_per_input"] = round(row["peak_memory_bytes"] / result.input_bytes, 2)
    if ctx.device.type == "cuda" and not ctx.rehearse and spec.target is not None:
        ok = row["status"] == "ok" and row["figure"] is not None and spec.target.met(row["figure"])
        row["met"] = "met" if ok else "not met"
    gc.collect()
    if ctx.device.type == "cuda":
        with contextlib.suppress(Exception):
            torch.cuda.empty_cache()


def parse_assignments(values: list[str], what: str, convert: Callable[[str], Any]) -> dict[str, Any]:
    out = {}
    for item in values:
        name, sep, value = item.partition("=")
        if not sep or name not in ROW_IDS:
            raise SystemExit(f"error: {what} takes ROW=VALUE with ROW one of {', '.join(ROW_IDS)}; got {item!r}")
        try:
            out[name] = convert(value)
        except ValueError as exc:
            raise SystemExit(f"error: bad value in {what} {item!r}: {exc}") from None
    return out


def _inject_kind(value: str) -> str:
    if value not in ("raise", "sleep", "hang"):
        raise ValueError("expected raise, sleep or hang")
    return value


def _seconds(value: str) -> float:
    seconds = float(value)
    if not seconds > 0:
        raise ValueError("expected a positive number of seconds")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder of gpu_check.md / .json / pytest.log")
    parser.add_argument("--device", choices=["cuda", "cpu"], default=None, help="default: cuda when available")
    parser.add_argument("--rehearse", action="store_true", help="tiny sizes (the default without CUDA)")
    parser.add_argument(
        "--full-size", action="store_true", help="the benchmark sizes even without CUDA (CPU figures and peak memory)"
    )
    parser.add_argument("--only", nargs="+", choices=ROW_IDS, metavar="ROW", help="run these rows; the rest skip")
    parser.add_argument("--budget", action="append", default=[], metavar="ROW=SECONDS", help="override a budget")
    parser.add_argument("--total-budget", type=_seconds, default=None, help="seconds for the whole run")
    parser.add_argument(
        "--inject", action="append", default=[], metavar="ROW=raise|sleep|hang",
        help="after a row's work, fail, or sleep past its budget (hang: with the alarm ignored); for tests",
    )  # fmt: skip
    parser.add_argument(
        "--hard-stop-grace", type=_seconds, default=HARD_STOP_GRACE_S,
        help="seconds past a row's budget after which the process ends if the row never returned",
    )  # fmt: skip
    parser.add_argument(
        "--threads", type=int, default=None,
        help="torch CPU threads (default: 1 in a CPU rehearsal, where extra threads only contend; else torch's)",
    )  # fmt: skip
    parser.add_argument("--list", action="store_true", help="print the rows, their budgets and targets, and exit")
    args = parser.parse_args(argv)
    overrides = parse_assignments(args.budget, "--budget", _seconds)
    injections = parse_assignments(args.inject, "--inject", _inject_kind)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rehearse = args.rehearse or (device.type != "cuda" and not args.full_size)
    threads = args.threads if args.threads is not None else (1 if device.type == "cpu" else None)
    if threads is not None:
        if threads < 1:
            parser.error(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    total = args.total_budget or (REHEARSAL_TOTAL_BUDGET_S if rehearse else TOTAL_BUDGET_S)

    if args.list:
        for spec in ROWS:
            target = spec.target.text if spec.target else "—"
            print(f"{spec.id:18s} {spec.budget_s:5g} s (rehearsal {spec.rehearsal_budget_s:g} s)  target: {target}")
        print(f"total budget: {TOTAL_BUDGET_S:g} s (sum of the rows: {sum(s.budget_s for s in ROWS):g} s)")
        return 0

    out = args.out.resolve()
    ctx = Context(device=device, rehearse=rehearse, out=out)
    records = []
    for spec in ROWS:
        seconds = overrides.get(spec.id, spec.rehearsal_budget_s if rehearse else spec.budget_s)
        records.append(new_record(spec, seconds))
    mode = "rehearsal" if rehearse else ("cuda" if device.type == "cuda" else "cpu")
    report = Report(out, mode, device, total, records)
    report.save()
    if rehearse:
        print(f"gpu_check: rehearsal at tiny sizes on {device.type} (no judging of targets)", flush=True)
    selected = [spec for spec in ROWS if not args.only or spec.id in args.only]
    modules = list(dict.fromkeys(name for spec in selected for name in spec.needs))
    loader = threading.Thread(target=preload, args=(modules,), daemon=True)
    loader.start()
    watchdog = Watchdog(report, args.hard_stop_grace)
    watchdog.start()

    def terminate(signum, frame):  # an outer timeout: keep what is done, end cleanly
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    interrupted = False
    try:
        for spec, row in zip(ROWS, records):
            if args.only and spec.id not in args.only:
                row["status"], row["note"] = "skipped", "not selected (--only)"
                continue
            if spec.id != "tests":  # the tests' subprocess needs none of the imports: they overlap it
                loader.join(timeout=120)
            left = total - (time.monotonic() - PROCESS_START)
            if left < 1.0:
                row["status"], row["note"] = "skipped", "the total budget was spent"
                report.save()
                continue
            if left < row["budget_s"]:
                row["budget_s"] = round(left, 1)
                row["note"] = "budget cut to what the total budget had left"
            fn = _injected(injections[spec.id], spec) if spec.id in injections else spec.run
            print(f"gpu_check: {spec.id} (budget {row['budget_s']:g} s) ...", flush=True)
            report.save()
            run_row(spec, fn, ctx, row, watchdog)
            report.save()
            detail = row["figure_text"] if row["status"] == "ok" else row["error"]
            print(f"gpu_check: {spec.id}: {row['status']} in {row['seconds']:.1f} s: {detail}", flush=True)
    except (KeyboardInterrupt, SystemExit):
        interrupted = True
        for row in records:
            if row["status"] in ("running", "not run"):
                row["status"], row["note"] = "not run", "the run was interrupted"
    finally:
        watchdog.done.set()
        report.save(finished=not interrupted)
    print(f"gpu_check: table written to {out / 'gpu_check.md'} and {out / 'gpu_check.json'}")
    if interrupted:
        return 130
    spent = "the total budget was spent"
    bad = [r["id"] for r in records if r["status"] in ("failed", "timed out") or r["note"] == spent]
    if bad:
        print(f"gpu_check: rows that did not finish: {', '.join(bad)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
