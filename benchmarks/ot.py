"""Dynamic optimal transport: iterations per second and time to tolerance of fusion's primal–dual solver.

Problem: two real photographs (scikit-image astronaut → coffee) at 64×64 RGB with 32 time steps, constrained
model with periodic colour conditions (``steps × C × H × W`` ≈ 0.4 M cells, ≈ 1.6 M unknowns). No public GPU
implementation exists, so the reference is a plain NumPy/SciPy version of the same iteration on the CPU
(written here, independent of the package): same grid, same steps (``τ = 1.25 · mean f · max(H, W)``), same
over-relaxation (ρ = 1.9), the projection applied twice in float32, same initial point. Reported: iterations per
second, the time of 1000 iterations, the time to reach ``tol`` (the solver's stopping test: mean relative change
per iteration over each 10-iteration check interval), and the agreement of the two implementations after the
same number of iterations.

    python benchmarks/ot.py [--device cpu|cuda] [--size 64] [--steps 32] [--iters 1000] [--ref-iters 20] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import scipy.fft as sfft
import torch
from skimage import data, transform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, markdown_table  # noqa: E402

from fusion.methods.ot import DEFAULT_STEP  # noqa: E402
from fusion.ops.staggered import StaggeredGrid  # noqa: E402
from fusion.optim.ot_primal_dual import DEFAULT_RELAXATION, ot_primal_dual  # noqa: E402


def make_inputs(size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(3, size, size)`` float32 densities of equal mass, with a floor of 0.01 so that black carries mass."""
    a = transform.resize(data.astronaut(), (size, size), anti_aliasing=True).transpose(2, 0, 1) + 0.01
    b = transform.resize(data.coffee(), (size, size), anti_aliasing=True).transpose(2, 0, 1) + 0.01
    b = b * a.sum() / b.sum()
    return a.astype(np.float32), b.astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Plain NumPy reference: the same staggered grid and Chambolle–Pock iteration, arrays (P, C, H, W) without batch.
# ----------------------------------------------------------------------------------------------------------------


def _avg_faces(x, axis):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    x = np.pad(x, pad)
    n = x.shape[axis]
    return 0.5 * (np.take(x, range(n - 1), axis=axis) + np.take(x, range(1, n), axis=axis))


def _avg_faces_t(y, axis):
    n = y.shape[axis]
    return 0.5 * (np.take(y, range(n - 1), axis=axis) + np.take(y, range(1, n), axis=axis))


def _dif_faces(x, axis, h):
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    x = np.pad(x, pad)
    n = x.shape[axis]
    return (np.take(x, range(1, n), axis=axis) - np.take(x, range(n - 1), axis=axis)) / h


def _dif_faces_t(y, axis, h):
    n = y.shape[axis]
    return (np.take(y, range(n - 1), axis=axis) - np.take(y, range(1, n), axis=axis)) / h


class NumpyOT:
    """Constrained dynamic OT with periodic colour, ``u = [mx, my, mc, f]``; centred ``[vx, vy, vc, vf]``."""

    def __init__(self, f0, f1, steps, tau, rho=DEFAULT_RELAXATION):
        self.f0, self.f1, self.p, self.rho = f0, f1, steps, rho
        c, h, w = f0.shape
        self.ht, self.hc, self.h = 1.0 / steps, 1.0 / c, 1.0 / max(h, w)
        self.tau, self.sigma = tau, 0.99 / tau
        self.b = np.zeros((steps, c, h, w), f0.dtype)
        self.b[0] += f0 / self.ht
        self.b[-1] -= f1 / self.ht
        self.s0 = np.zeros_like(self.b)
        self.s0[0] += 0.5 * f0
        self.s0[-1] += 0.5 * f1
        lam = [4 * np.sin(np.pi * np.arange(steps) / (2 * steps)) ** 2 / self.ht**2]
        lam.append(4 * np.sin(np.pi * np.arange(c // 2 + 1) / c) ** 2 / self.hc**2)
        lam.append(4 * np.sin(np.pi * np.arange(h) / (2 * h)) ** 2 / self.h**2)
        lam.append(4 * np.sin(np.pi * np.arange(w) / (2 * w)) ** 2 / self.h**2)
        sym = lam[0][:, None, None, None] + lam[1][None, :, None, None] + lam[2][None, None, :, None] + lam[3]
        sym[0, 0, 0, 0] = 1.0
        self.inv = (1.0 / sym).astype(f0.dtype)
        self.inv[0, 0, 0, 0] = 0.0

    def interp(self, u):
        mx, my, mc, f = u
        return [_avg_faces(mx, 2), _avg_faces(my, 3), 0.5 * (mc + np.roll(mc, 1, 1)), _avg_faces(f, 0)]

    def interp_t(self, v):
        vx, vy, vc, vf = v
        return [_avg_faces_t(vx, 2), _avg_faces_t(vy, 3), 0.5 * (vc + np.roll(vc, -1, 1)), _avg_faces_t(vf, 0)]

    def a(self, u):
        mx, my, mc, f = u
        out = _dif_faces(f, 0, self.ht) + _dif_faces(mx, 2, self.h) + _dif_faces(my, 3, self.h)
        return out + (mc - np.roll(mc, 1, 1)) / self.hc

    def a_t(self, r):
        return [
            _dif_faces_t(r, 2, self.h),
            _dif_faces_t(r, 3, self.h),
            (r - np.roll(r, -1, 1)) / self.hc,
            _dif_faces_t(r, 0, self.ht),
        ]

    def project(self, u):
        u = self._project(u)
        return self._project(u) if u[0].dtype != np.float64 else u  # twice below float64, as the solver does

    def _project(self, u):
        r = self.a(u) - self.b
        coef = sfft.dctn(r, type=2, norm="ortho", axes=(0, 2, 3))
        coef = np.fft.rfft(coef, axis=1) * self.inv
        w = sfft.idctn(np.fft.irfft(coef, n=r.shape[1], axis=1), type=2, norm="ortho", axes=(0, 2, 3))
        return [x - c for x, c in zip(u, self.a_t(w.astype(r.dtype)))]

    @staticmethod
    def prox_j(m, f, g):
        """Largest root of (x − f)(x + g)² − g|m|²/2 by Cardano plus Newton; then the shrink of m."""
        msq = sum(x * x for x in m)
        c = 0.5 * g * msq
        b2, b1, b0 = 2 * g - f, g * g - 2 * f * g, -f * g * g - c
        s = b2 / 3
        p = b1 - b2 * s
        q = 2 * s**3 - s * b1 + b0
        d = (q / 2) ** 2 + (p / 3) ** 3
        sd = np.sqrt(np.maximum(d, 0))
        one = np.cbrt(-q / 2 + sd) + np.cbrt(-q / 2 - sd)
        rad = np.sqrt(np.maximum(-p, 1e-30) / 3)
        three = 2 * rad * np.cos(np.arccos(np.clip(-q / 2 / rad**3, -1, 1)) / 3)
        lo = np.maximum(f, -g)
        hi = lo + np.cbrt(c)
        x = np.clip(np.where(d > 0, one, three) - s, lo, hi)
        for _ in range(3):
            xg = x + g
            der = xg * (3 * x + g - 2 * f)
            x = np.clip(x - np.where(der > 0, ((x - f) * xg * xg - c) / np.maximum(der, 1e-30), 0), lo, hi)
        fs = np.maximum(x, 0)
        k = np.where(x > 0, fs / (fs + g), 0)
        return [k * mi for mi in m], fs

    def run(self, iters, tol=0.0):
        c, h, w = self.f0.shape
        p, dt = self.p, self.f0.dtype
        t = (np.arange(1, p, dtype=dt) / p)[:, None, None, None]
        u = [
            np.zeros((p, c, h - 1, w), dt),
            np.zeros((p, c, h, w - 1), dt),
            np.zeros((p, c, h, w), dt),
            (1 - t) * self.f0 + t * self.f1,
        ]
        u = self.project(u)
        y = [np.zeros((p, c, h, w), dt) for _ in range(4)]
        sg, ta, rho = self.sigma, self.tau, self.rho
        u_check = u
        for k in range(1, iters + 1):
            # primal step, dual step at the extrapolated point, over-relaxation (Condat 2013)
            ut = self.project([ui - ta * si for ui, si in zip(u, self.interp_t(y))])
            z = [yi + sg * si for yi, si in zip(y, self.interp([2 * a - b for a, b in zip(ut, u)]))]
            z[3] = z[3] + sg * self.s0
            pm, pf = self.prox_j([zi / sg for zi in z[:3]], z[3] / sg, 1 / sg)
            yt = [z[0] - sg * pm[0], z[1] - sg * pm[1], z[2] - sg * pm[2], z[3] - sg * pf]
            u = [b + rho * (a - b) for a, b in zip(ut, u)]
            y = [b + rho * (a - b) for a, b in zip(yt, y)]
            if k % 10 == 0:
                diff = [a - b for a, b in zip(u, u_check)]
                change = np.sqrt(sum((d * d).sum() for d in diff) / sum((x * x).sum() for x in u)) / 10
                u_check = u
                if change < tol:
                    break
        return u, k


def run_ours(f0, f1, steps, tau, iters, device, tol=0.0, check_every=10):
    grid = StaggeredGrid(steps, f0.shape[0], f0.shape[1], f0.shape[2], "periodic")
    a = torch.from_numpy(f0)[None].to(device)
    b = torch.from_numpy(f1)[None].to(device)
    return ot_primal_dual(a, b, grid, tau=tau, max_iter=iters, tol=tol if tol > 0 else 1e-30, check_every=check_every)


def _timed(fn, device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--iters", type=int, default=None, help="iterations timed (default 1000 cuda, 100 cpu)")
    parser.add_argument("--ref-iters", type=int, default=20, help="iterations of the NumPy reference")
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch CPU threads (default 1, like the single-threaded NumPy reference)"
    )
    parser.add_argument("--max-iter", type=int, default=None, help="cap for time to tolerance (default 3·iters)")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    iters = args.iters or (1000 if device.type == "cuda" else 100)
    f0, f1 = make_inputs(args.size)
    tau = DEFAULT_STEP * 0.5 * (f0.mean() + f1.mean()) * max(f0.shape[-2:])

    run_ours(f0, f1, args.steps, tau, 5, device)  # warm-up (kernels, FFT plans)
    res, t_ours = _timed(lambda: run_ours(f0, f1, args.steps, tau, iters, device), device)
    ips = iters / t_ours
    cap = args.max_iter or 3 * iters
    res_tol, t_tol = _timed(lambda: run_ours(f0, f1, args.steps, tau, cap, device, tol=args.tol), device)
    reached = bool(res_tol.converged.all())

    ref = NumpyOT(f0, f1, args.steps, float(tau))
    start = time.perf_counter()
    u_ref, _ = ref.run(args.ref_iters)
    t_ref = time.perf_counter() - start
    ref_ips = args.ref_iters / t_ref
    check = run_ours(f0, f1, args.steps, tau, args.ref_iters, device).solution
    agree = max(
        float(np.abs(check.f[0].cpu().numpy() - u_ref[3]).max()),
        float(np.abs(check.mx[0].cpu().numpy() - u_ref[0]).max()),
    )

    n_cells = args.steps * 3 * args.size * args.size
    print(f"device: {device_name(device)}; torch {torch.__version__}; NumPy reference on CPU")
    print(
        f"problem: {args.size}x{args.size}x3, {args.steps} time steps ({n_cells} cells), float32, constrained, "
        f"periodic colour; tol {args.tol:g} on the mean relative change per iteration (10-iteration windows)"
    )
    rows = [
        [
            f"fusion ({device.type})",
            f"{ips:.1f}",
            f"{1000 / ips:.2f}",
            f"{t_tol:.2f} ({res_tol.iterations} it{'' if reached else ', not reached'})",
            "—",
        ],
        [
            "NumPy/SciPy reference (cpu)",
            f"{ref_ips:.2f}",
            f"{1000 / ref_ips:.1f}",
            "—",
            f"{agree:.1e} after {args.ref_iters} it",
        ],
    ]
    print(markdown_table(["implementation", "it/s", "s per 1000 it", "time to tol (s)", "max |Δu| vs ours"], rows))
    print(f"speed-up over the NumPy reference: {ips / ref_ips:.1f}x")
    if device.type == "cuda":
        target = 1000 / ips
        print(f"target 1000 iterations < 5 s: {'met' if target < 5 else 'NOT met'} ({target:.2f} s)")


if __name__ == "__main__":
    main()
