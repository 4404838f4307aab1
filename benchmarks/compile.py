"""Eager against ``compile=True``: time per iteration of the three solvers whose iteration compiles in one piece.

Problems (float32, one sample):

* OT: ``ot_primal_dual`` between two photographs (scikit-image astronaut → coffee) at 64×64 RGB with 32 time
  steps, constrained model, the step of ``benchmarks/ot.py`` (``τ = 1.25 · mean f · max(H, W)``);
* CG: a masked Poisson system on a 1000×1000 RGB image (an elliptic region of about 0.6 MP per channel), the
  operator and preconditioners of :func:`fusion.ops.solve_masked_poisson` (spectral and Jacobi);
* Huber-TV prox: ``prox_huber_tv`` of an 800×563 RGB photograph with the weights of the variational osmosis
  method (η = 0.5, ε = 0.05) and an element-wise step in [0.5, 5] (its variable-metric prox).

Each solver runs a fixed number of iterations (a tolerance that is never met); the time per iteration is the
best of ``--repeat`` runs divided by the iterations, after one warm-up run (for ``compile=True`` the warm-up
compiles, and its extra time is reported as the compile time). The best of several runs is reported because
other work on a shared machine only ever adds time.

    python benchmarks/compile.py [--device cpu|cuda] [--threads 1] [--repeat 3] [--only ot,cg,huber]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from skimage import data, transform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, markdown_table  # noqa: E402

from fusion.ops.cg import conjugate_gradient  # noqa: E402
from fusion.ops.masked import masked_poisson_operator, masked_poisson_preconditioner  # noqa: E402
from fusion.ops.result import SolverResult  # noqa: E402
from fusion.ops.staggered import StaggeredGrid  # noqa: E402
from fusion.optim.ot_primal_dual import ot_primal_dual  # noqa: E402
from fusion.optim.primal_dual import prox_huber_tv  # noqa: E402

NEVER = 1e-30  # a tolerance no iteration meets: every run does exactly its iterations


def _photo(image: np.ndarray, height: int, width: int, device: torch.device) -> torch.Tensor:
    """``(1, 3, height, width)`` float32 in [0, 1]."""
    small = transform.resize(image, (height, width), anti_aliasing=True).transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(small, dtype=np.float32))[None].to(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _best_time(fn: Callable[[], SolverResult], iterations: int, device: torch.device, repeat: int):
    """``(time of the first call, best time of the next repeat calls)`` in seconds; every call must run all
    ``iterations`` (a solver that stopped early would look fast)."""
    times = []
    for _ in range(repeat + 1):
        _sync(device)
        start = time.perf_counter()
        res = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
        if res.iterations != iterations:
            raise RuntimeError(f"the solver stopped after {res.iterations} of {iterations} iterations")
    return times[0], min(times[1:])


def ot_case(device: torch.device, iterations: int):
    f0 = _photo(data.astronaut(), 64, 64, device) + 0.01
    f1 = _photo(data.coffee(), 64, 64, device) + 0.01
    f1 = f1 * f0.sum() / f1.sum()
    grid = StaggeredGrid(steps=32, channels=3, height=64, width=64)
    tau = 1.25 * float(f0.mean()) * 64

    def run(compile: bool):
        return lambda: ot_primal_dual(f0, f1, grid, tau=tau, max_iter=iterations, tol=NEVER, compile=compile)

    return "OT primal–dual, 64×64×3, 32 steps", run


def cg_case(device: torch.device, iterations: int, precondition: str):
    h = w = 1000
    yy, xx = torch.meshgrid(torch.arange(h, device=device), torch.arange(w, device=device), indexing="ij")
    region = ((((yy - 480) / 420.0) ** 2 + ((xx - 510) / 460.0) ** 2) < 1).float()[None, None]
    gen = torch.Generator(device=device).manual_seed(0)
    b = torch.randn(1, 3, h, w, generator=gen, device=device) * region
    apply_a = masked_poisson_operator(region)
    m_inv = masked_poisson_preconditioner(region, precondition)
    share = float(region.mean())

    def run(compile: bool):
        return lambda: conjugate_gradient(
            apply_a, b, precondition=m_inv, max_iter=iterations, tol=NEVER, check_every=10, compile=compile
        )

    return f"CG, masked Poisson 1000×1000×3 ({share:.0%} unknown), {precondition}", run


def huber_case(device: torch.device, iterations: int):
    z = _photo(data.astronaut(), 563, 800, device)
    gen = torch.Generator(device=device).manual_seed(0)
    step = 0.5 + 4.5 * torch.rand(z.shape, generator=gen, device=device)

    def run(compile: bool):
        return lambda: prox_huber_tv(z, step, eta=0.5, epsilon=0.05, max_iter=iterations, tol=NEVER, compile=compile)

    return "Huber-TV prox, 800×563×3", run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", default="ot,cg,huber", help="comma-separated subset of ot, cg, huber")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    wanted = set(args.only.split(","))
    cases = []
    if "ot" in wanted:
        cases.append((ot_case(device, 20), 20))
    if "cg" in wanted:
        cases += [(cg_case(device, 20, "spectral"), 20), (cg_case(device, 20, "jacobi"), 20)]
    if "huber" in wanted:
        cases.append((huber_case(device, 50), 50))

    load_before = os.getloadavg()
    rows = []
    for (name, run), iterations in cases:
        _, eager = _best_time(run(False), iterations, device, args.repeat)
        first, compiled = _best_time(run(True), iterations, device, args.repeat)
        rows.append(
            [
                name,
                iterations,
                f"{1e3 * eager / iterations:.2f}",
                f"{1e3 * compiled / iterations:.2f}",
                f"{eager / compiled:.2f}×",
                f"{first - compiled:.0f}",
            ]
        )
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    load_after = os.getloadavg()
    print()
    print(
        f"device: {device_name(device)}; torch {torch.__version__}; float32, batch 1; best of {args.repeat} runs; "
        f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after ({os.cpu_count()} CPUs)"
    )
    print()
    header = ["solver", "iterations", "eager ms/iter", "compiled ms/iter", "speed-up", "compile s"]
    print(markdown_table(header, rows))


if __name__ == "__main__":
    main()
