"""Variational osmosis: what model (1) does with the background, measured.

Four experiments behind the explanation in :mod:`fusion.methods.osmosis` (module docstring) and README:

1. ``samples``: the shared built-in samples (shuttle model pasted into an evening sky), downscaled to
   ``--height``×``--width``: for every solver and start (``init``) the iterations, final energy and the mean colour
   of the result far from the α-map (α < 1e-8) against the background's, and the ratio (u + o)/(v + o) there.
   ``--tight`` adds a curvature run to tol 1e-12 (slow), which creeps towards the newton_u result. ``smudge``:
   at full size, the seam ratio f/v at the top and at the bottom of the mask, and u/v under the shuttle.
2. ``flat``: at the newton_u minimiser, the two lowest eigenvalues of the u-block Hessian (red channel; SciPy
   ``eigsh``) against its largest, how the lowest eigenvector divided by v looks (≈ 0 in the α-region, growing
   away from it), and the energy along the straight path from the newton_u minimiser to where curvature stops.
3. ``pixel``: chelsea → coffee with a one-pixel mask and with a box, for offsets 1/255 and 10/255: the mean change
   of the background and the ratio u/v far from the region.
4. ``pair``: the built-in osmosis pair (``datasets/samples/osmosis``): RMS error against the intact photograph in
   the damaged patch, and chromaticity error (eq. 21), for the damaged fg, the composite, osmosis (the
   ``conf/method/osmosis.yaml`` defaults), the linear osmosis filter (its defaults) and Poisson editing of the hole.

    python benchmarks/osmosis_background.py [--part samples|smudge|flat|pixel|pair|all] [--height 64 --width 80]
                                            [--threads 1] [--tight]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, markdown_table  # noqa: E402

from fusion import ConvergenceWarning  # noqa: E402
from fusion.data.io import read_image, read_mask  # noqa: E402
from fusion.energies.osmosis import geometric_blend, u_block_hessian, variational_osmosis_energy  # noqa: E402
from fusion.methods.osmosis import alpha_map, osmosis_solve  # noqa: E402
from fusion.methods.poisson import poisson_blend  # noqa: E402
from fusion.methods.registry import get_method  # noqa: E402
from fusion.metrics import chromaticity_error  # noqa: E402

SAMPLES = ROOT / "datasets" / "samples"
OFFSET = 1 / 255


def _grey(x: torch.Tensor) -> str:
    return "(" + ", ".join(f"{float(c) * 255:.1f}" for c in x) + ")"


def _shared_samples(height: int, width: int):
    fg = read_image(SAMPLES / "fg.png").double()
    bg = read_image(SAMPLES / "bg.png").double()
    mask = read_mask(SAMPLES / "mask.png").double()
    if (height, width) != tuple(fg.shape[-2:]):
        fg, bg = (F.interpolate(x, size=(height, width), mode="area") for x in (fg, bg))
        mask = (F.interpolate(mask, size=(height, width), mode="area") > 0.5).double()
    return fg, bg, alpha_map(mask, kind="gaussian", sigma=5.0 * height / 256)


def part_samples(args, runs: dict) -> None:
    fg, bg, alpha = _shared_samples(args.height, args.width)
    far = (alpha < 1e-8)[0, 0]
    print(f"\n### 1. shared samples at {args.height}x{args.width}: background mean {_grey(bg[0][:, far].mean(1))}\n")
    settings = [(m, i, 1e-6) for m in ("newton_u", "curvature", "identity") for i in ("alpha", "f")]
    if args.tight:
        settings.append(("curvature", "alpha", 1e-12))
    rows = []
    for metric, init, tol in settings:
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            out = osmosis_solve(fg, bg, alpha, metric=metric, init=init, tol=tol, max_iter=20000)
            u, v, res = out.image, out.v, out.solver
        seconds = time.perf_counter() - start
        runs[(metric, init, tol)] = (u, v)
        ratio = ((u + OFFSET) / (v + OFFSET))[0][:, far].mean(1)
        rows.append(
            [
                metric,
                init,
                f"{tol:g}",
                res.iterations,
                "yes" if res.all_converged else "no",
                f"{float(res.history[-1, 0]):.10g}",
                _grey(u.clamp(0, 1)[0][:, far].mean(1)),
                " / ".join(f"{float(r):.2f}" for r in ratio),
                f"{seconds:.1f}",
            ]
        )
        print(" | ".join(str(c) for c in rows[-1]), flush=True)
    header = ["metric", "init", "tol", "iterations", "converged", "final E", "far-field mean of u", "far u/v", "s"]
    print("\n" + markdown_table(header, rows))


def part_smudge(args) -> None:
    """The dark smudge under the shuttle, at the samples' full size (256×320, newton_u, CLI defaults)."""
    fg, bg, alpha = _shared_samples(256, 320)
    out = osmosis_solve(fg, bg, alpha)
    u, v, res = out.image, out.v, out.solver
    rows = torch.arange(256)[:, None].expand(256, 320)
    cols = torch.arange(320)[None, :].expand(256, 320)
    ring = ((alpha > 0.05) & (alpha < 0.6))[0, 0]
    table = []
    for label, where in (("seam ring, rows < 60", ring & (rows < 60)), ("seam ring, rows ≥ 120", ring & (rows >= 120))):
        ratio = ((fg + OFFSET) / (v + OFFSET))[0][:, where].mean(1)
        dark = float((fg[0][:, where] < 20 / 255).double().mean())
        table.append(
            [label, _grey(fg[0][:, where].mean(1)), f"{dark:.2f}", " / ".join(f"{float(r):.2f}" for r in ratio)]
        )
    below = (rows >= 140) & (rows < 160) & (cols > 175) & (cols < 215)
    ratio = ((u + OFFSET) / (v + OFFSET))[0][:, below].mean(1)
    print(f"\n### 1b. the smudge (256x320, newton_u, {res.iterations} iterations)\n")
    print(markdown_table(["where", "mean fg", "fraction of fg < 20/255", "(f + o)/(v + o)"], table))
    print(f"\nunder the shuttle (rows 140–159, cols 176–214): (u + o)/(v + o) = "
          f"{' / '.join(f'{float(r):.2f}' for r in ratio)}, mean u = {_grey(u[0][:, below].mean(1))}")  # fmt: skip


def part_flat(args, runs: dict) -> None:
    import scipy.sparse.linalg as spla

    fg, bg, alpha = _shared_samples(args.height, args.width)
    key_n, key_c = ("newton_u", "alpha", 1e-6), ("curvature", "alpha", 1e-6)
    for metric, init, tol in (key_n, key_c):
        if (metric, init, tol) not in runs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", ConvergenceWarning)
                out = osmosis_solve(fg, bg, alpha, metric=metric, init=init, tol=tol, max_iter=20000)
                u, v = out.image, out.v
            runs[(metric, init, tol)] = (u, v)
    u, v = runs[key_n]
    h, w = v.shape[-2:]
    vm = (255 * (v + OFFSET))[:, :1]
    apply, _ = u_block_hessian(vm, alpha, 1.0)
    n = h * w

    def matvec(x: np.ndarray) -> np.ndarray:
        return apply(torch.from_numpy(np.ascontiguousarray(x)).view(1, 1, h, w)).flatten().numpy()

    op = spla.LinearOperator((n, n), matvec=matvec, dtype=np.float64)
    low, vecs = spla.eigsh(op, k=2, sigma=0, which="LM")
    high = spla.eigsh(op, k=1, which="LA", return_eigenvectors=False)
    mode = vecs[:, int(np.argmin(low))].reshape(h, w) / vm[0, 0].numpy()
    far = (alpha < 1e-8)[0, 0].numpy()
    mode = mode / mode[far].mean()
    inside = (alpha > 0.5)[0, 0].numpy()
    print(f"\n### 2. flat direction ({h}x{w}, red channel, at the newton_u minimiser, model units)\n")
    ratio = high[0] / low[0]
    print(f"u-block Hessian: lowest eigenvalues {low[0]:.3e}, {low[1]:.3e}; largest {high[0]:.3e}; ratio {ratio:.3g}")
    print(f"lowest eigenvector / v, scaled to mean 1 far from α: mean {mode[inside].mean():.2e} where α > 0.5, "
          f"std {mode[far].std():.2f} far from α")  # fmt: skip
    f, b = 255 * (fg + OFFSET), 255 * (bg + OFFSET)
    target = geometric_blend(f, b, alpha)
    uc, vc = runs[key_c]
    print("\nenergy along (1 − s)·(newton_u minimiser) + s·(curvature stop):\n")
    rows = []
    e0 = None
    for s in (0.0, 0.25, 0.5, 0.75, 1.0):
        us, vs = 255 * ((1 - s) * u + s * uc + OFFSET), 255 * ((1 - s) * v + s * vc + OFFSET)
        e = float(variational_osmosis_energy(us, vs, f, alpha, target, mu=100.0, gamma=1.0, eta=0.5))
        e0 = e if e0 is None else e0
        rows.append([f"{s:g}", f"{e:.10g}", f"{e - e0:.4g}"])
    print(markdown_table(["s", "E", "E − E(0)"], rows))


def part_pixel(args) -> None:
    from skimage import data

    h, w = 150, 225

    def photo(name: str) -> torch.Tensor:
        x = torch.from_numpy(getattr(data, name)().copy()).permute(2, 0, 1)[None].double() / 255
        return F.interpolate(x, size=(h, w), mode="area")

    fg, bg = photo("chelsea"), photo("coffee")
    print(f"\n### 3. chelsea → coffee ({h}x{w}), α = Gaussian (σ = 5) of the region\n")
    rows = []
    for label in ("one pixel", "box (half the size)"):
        mask = torch.zeros(1, 1, h, w, dtype=torch.float64)
        if label == "one pixel":
            mask[..., h // 2, w // 2] = 1
        else:
            mask[..., h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = 1
        alpha = alpha_map(mask, kind="gaussian", sigma=5.0)
        far = (alpha < 1e-8)[0, 0]
        for offset in (1 / 255, 10 / 255):
            out = osmosis_solve(fg, bg, alpha, offset=offset)
            u, v, res = out.image, out.v, out.solver
            d = ((u.clamp(0, 1) - bg) * 255)[0][:, far]
            ratio = ((u + offset) / (v + offset))[0][:, far].mean(1)
            rows.append(
                [
                    label,
                    f"{offset * 255:g}/255",
                    f"{float(alpha.max()):.4f}",
                    res.iterations,
                    " / ".join(f"{float(x):+.1f}" for x in d.mean(1)),
                    f"{float(d.abs().mean()):.1f}",
                    " / ".join(f"{float(r):.2f}" for r in ratio),
                ]
            )
            print(" | ".join(str(c) for c in rows[-1]), flush=True)
    header = ["region", "offset", "max α", "iterations", "mean u − b far (R/G/B)", "mean |u − b| far", "far u/v"]
    print("\n" + markdown_table(header, rows))


def part_pair(args) -> None:
    import importlib.util

    from omegaconf import OmegaConf

    folder = SAMPLES / "osmosis"
    fg, bg = read_image(folder / "fg.png").double(), read_image(folder / "bg.png").double()
    mask, truth = read_mask(folder / "mask.png").double(), read_image(folder / "truth.png").double()
    spec = importlib.util.spec_from_file_location("make_samples", ROOT / "datasets" / "make_samples.py")
    samples = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(samples)
    patch = torch.from_numpy(samples._ellipse(samples.DAMAGE_CENTRE, samples.DAMAGE_AXES) < 1.0)
    results = {"fg (damaged)": (fg, None), "composite mask·fg + (1 − mask)·bg": (mask * fg + (1 - mask) * bg, None)}
    for name in ("osmosis", "linear_osmosis"):
        params = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "method" / f"{name}.yaml"))
        params.pop("name")
        start = time.perf_counter()
        out = get_method(name)(fg, bg, mask, **params)
        results[f"{name} (conf defaults)"] = (out.result, time.perf_counter() - start)
    start = time.perf_counter()
    poisson = poisson_blend(bg, fg, 1 - mask).clamp(0, 1)
    results["poisson_blend(bg, fg, 1 − mask)"] = (poisson, time.perf_counter() - start)
    weight = patch[None, None].double()
    rows = []
    for name, (x, seconds) in results.items():
        rmse = float(((x - truth)[0][:, patch] ** 2).mean().sqrt()) * 255
        err, _ = chromaticity_error(x, truth, mask=weight)
        kept = float((x - fg)[0][:, (mask > 0.5)[0, 0]].abs().max()) * 255
        time_s = "—" if seconds is None else f"{seconds:.1f}"
        rows.append([name, f"{rmse:.2f}", f"{float(err):.4f}", f"{kept:.1f}", time_s])
    print(f"\n### 4. built-in osmosis pair ({fg.shape[-2]}x{fg.shape[-1]}), damaged patch {int(patch.sum())} pixels\n")
    header = [
        "result",
        "RMS error vs intact photo in the patch",
        "chroma err (eq. 21)",
        "max |u − fg| where mask=1",
        "s",
    ]
    print(markdown_table(header, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["samples", "smudge", "flat", "pixel", "pair", "all"], default="all")
    parser.add_argument("--height", type=int, default=64)
    parser.add_argument("--width", type=int, default=80)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--tight", action="store_true", help="also run curvature to tol 1e-12 (slow)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"device: {device_name(torch.device('cpu'))}; torch {torch.__version__}; float64")
    runs: dict = {}
    if args.part in ("samples", "all"):
        part_samples(args, runs)
    if args.part in ("smudge", "all"):
        part_smudge(args)
    if args.part in ("flat", "all"):
        part_flat(args, runs)
    if args.part in ("pixel", "all"):
        part_pixel(args)
    if args.part in ("pair", "all"):
        part_pair(args)


if __name__ == "__main__":
    main()
