"""Variational osmosis: the setting of the paper's Figure 3 (weights η, µ, γ and the start u0), qualitatively.

The paper fuses a photograph f (Fig. 2a, from the KNN-matting data) into a painting b (Fig. 2b, The Starry Night)
through an α-matte (Fig. 2c) and shows the result for η ∈ {0, 0.1, 0.5}, µ ∈ {10, 100}, γ ∈ {0, 1} and three
starts u0 (f, the α-combination of f and b, their average). Those images are not shipped here; the stand-ins come
with scikit-image: f = ``astronaut`` (a portrait, like the matting photographs), b = ``rocket`` (an evening sky
with bright lights, for the night painting), α = a Gaussian-blurred ellipse around the head and shoulders (a soft
matte; σ = 5 px at 563 rows, scaled with the height). Both are cropped to the paper's 800×563 aspect ratio and
resized.

For each of the 36 settings the script runs :func:`fusion.methods.osmosis.osmosis_solve` with the chosen solver and
prints one table row: iterations, whether the stopping rule was met, the final energy, the chromaticity error
(eq. 21) against f where α > 0.5 (how well the foreground's colours survive), the mean change of the background
|u − b| and the ratio u/b per channel where α < 0.01 (what happens to the background), and TV(v)/TV(f^α b^{1−α})
(how much the Huber-TV term flattens v). It writes the grid of results u as one PNG (rows: u0 × µ, columns:
η × γ, with f, b, α and f^α b^{1−α} in a first row) and the table as CSV. ``--scale`` sets the intensity scale of
the model: the weights refer to images in [0, 255] by default, as in the authors' Algorithm 1, and ``--scale 1``
puts them on [0, 1].

    python benchmarks/osmosis_figure3.py [--metric newton_u|curvature|identity] [--height 112 --width 160]
                                         [--threads 1] [--max-iter 10000] [--tol 1e-6] [--scale 255]
                                         [--etas 0,0.1,0.5 --mus 10,100 --gammas 0,1 --inits f,alpha,average]
                                         [--out outputs/bench/osmosis_figure3]
"""

from __future__ import annotations

import argparse
import csv
import itertools
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from skimage import data, transform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, markdown_table  # noqa: E402

from fusion import ConvergenceWarning  # noqa: E402
from fusion.energies.osmosis import geometric_blend  # noqa: E402
from fusion.methods.osmosis import alpha_map, osmosis_solve  # noqa: E402
from fusion.metrics import chromaticity_error  # noqa: E402

ETAS = (0.0, 0.1, 0.5)
MUS = (10.0, 100.0)
GAMMAS = (0.0, 1.0)
INITS = ("f", "alpha", "average")


def make_inputs(height: int, width: int, dtype=torch.float64):
    """``(f, b, alpha)`` as ``(1, 3, H, W)``, ``(1, 3, H, W)``, ``(1, 1, H, W)`` tensors in [0, 1]."""
    aspect = 563 / 800
    face = data.astronaut()[:360]  # 360 × 512: head, shoulders and the shuttle model
    face = face[:, : int(round(360 / aspect))]
    sky = data.rocket()
    sky = sky[: int(round(sky.shape[1] * aspect))]
    f = transform.resize(face, (height, width), anti_aliasing=True).transpose(2, 0, 1)
    b = transform.resize(sky, (height, width), anti_aliasing=True).transpose(2, 0, 1)
    yy, xx = np.mgrid[:height, :width] / np.array([height, width])[:, None, None]
    mask = (((yy - 0.55) / 0.5) ** 2 + ((xx - 0.3) / 0.24) ** 2 < 1).astype(np.float64)
    as_t = lambda a: torch.from_numpy(np.ascontiguousarray(a))[None].to(dtype)  # noqa: E731
    alpha = alpha_map(as_t(mask[None]), kind="gaussian", sigma=5.0 * height / 563)
    return as_t(f), as_t(b), alpha


def _tv(x: torch.Tensor) -> float:
    return float((x[..., 1:, :] - x[..., :-1, :]).abs().sum() + (x[..., :, 1:] - x[..., :, :-1]).abs().sum())


def _png(x: torch.Tensor) -> np.ndarray:
    return (x[0].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--metric", choices=["newton_u", "curvature", "identity"], default="newton_u")
    parser.add_argument("--height", type=int, default=112)
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--max-iter", type=int, default=10000)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--scale", type=float, default=255.0, help="intensity scale of the model (255: the paper's)")
    parser.add_argument("--etas", default=",".join(f"{x:g}" for x in ETAS), help="comma-separated η values")
    parser.add_argument("--mus", default=",".join(f"{x:g}" for x in MUS), help="comma-separated µ values")
    parser.add_argument("--gammas", default=",".join(f"{x:g}" for x in GAMMAS), help="comma-separated γ values")
    parser.add_argument("--inits", default=",".join(INITS), help="comma-separated starts (f, alpha, average)")
    parser.add_argument("--out", default="outputs/bench/osmosis_figure3")
    args = parser.parse_args()
    etas, mus, gammas = ([float(x) for x in text.split(",")] for text in (args.etas, args.mus, args.gammas))
    inits = args.inits.split(",")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    f, b, alpha = make_inputs(args.height, args.width, dtype)
    fg_region, bg_region = (alpha > 0.5)[0, 0], (alpha < 0.01)[0, 0]
    offset = 1 / 255
    target = geometric_blend(f + offset, b + offset, alpha) - offset
    tv_target = _tv(target)

    rows, images = [], {}
    for init, mu, eta, gamma in itertools.product(inits, mus, etas, gammas):
        start = time.perf_counter()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ConvergenceWarning)
            out = osmosis_solve(
                f, b, alpha, eta=eta, mu=mu, gamma=gamma, init=init, metric=args.metric,
                max_iter=args.max_iter, tol=args.tol, scale=args.scale,
            )  # fmt: skip
            u, v, res = out.image, out.v, out.solver
        seconds = time.perf_counter() - start
        images[(init, mu, eta, gamma)] = u
        uc = u.clamp(0, 1)
        err_f, _ = chromaticity_error(uc, f, mask=fg_region[None, None].to(dtype))
        change = float((uc - b)[0][:, bg_region].abs().mean()) * 255
        ratio = ((u + offset) / (b + offset))[0][:, bg_region].mean(1)
        rows.append(
            [
                init,
                f"{mu:g}",
                f"{eta:g}",
                f"{gamma:g}",
                res.iterations,
                "yes" if res.all_converged and not caught else "no",
                f"{float(res.history[-1, 0]):.6g}",
                f"{float(err_f):.4f}",
                f"{change:.1f}",
                " / ".join(f"{float(r):.2f}" for r in ratio),
                f"{_tv(v) / tv_target:.3f}",
                f"{seconds:.1f}",
            ]
        )
        print(" | ".join(str(c) for c in rows[-1]), flush=True)

    header = [
        "u0",
        "µ",
        "η",
        "γ",
        "iterations",
        "converged",
        "final E",
        "chroma err vs f (α>0.5)",
        "|u − b| where α<0.01 (grey levels)",
        "u/b where α<0.01 (R / G / B)",
        "TV(v)/TV(f^α b^(1−α))",
        "time (s)",
    ]
    print()
    device = device_name(torch.device("cpu"))
    print(f"device: {device}; torch {torch.__version__}; {args.dtype}")
    print(f"inputs: {args.height}x{args.width}; metric={args.metric}, tol {args.tol:g}, max_iter {args.max_iter}, "
          f"scale {args.scale:g}")  # fmt: skip
    print()
    print(markdown_table(header, rows))

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stem = out.with_name(f"{out.name}_{args.metric}" + ("" if args.scale == 255 else f"_scale{args.scale:g}"))
    with open(stem.with_suffix(".csv"), "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = 1 + len(inits) * len(mus), max(4, len(etas) * len(gammas))
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(1.9 * n_cols, 1.5 * n_rows), squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    first = [("f", f), ("b", b), ("α", alpha.expand(-1, 3, -1, -1)), ("f^α b^(1−α)", target)]
    for j, (title, img) in enumerate(first):
        axes[0, j].imshow(_png(img))
        axes[0, j].set_title(title, fontsize=8)
    for ax in axes[0, len(first) :]:
        ax.axis("off")
    for i, (init, mu) in enumerate(itertools.product(inits, mus), start=1):
        axes[i, 0].set_ylabel(f"u0={init}\nµ={mu:g}", fontsize=8)
        for ax in axes[i, len(etas) * len(gammas) :]:
            ax.axis("off")
        for j, (eta, gamma) in enumerate(itertools.product(etas, gammas)):
            axes[i, j].imshow(_png(images[(init, mu, eta, gamma)]))
            if i == 1:
                axes[i, j].set_title(f"η={eta:g}, γ={gamma:g}", fontsize=8)
    fig.suptitle(f"variational osmosis, paper Fig. 3 setting (metric={args.metric}, scale {args.scale:g})", fontsize=9)
    fig.tight_layout()
    png = stem.with_suffix(".png")
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(png)
    print(f"\nfigure: {png}\ntable: {stem.with_suffix('.csv')}")


if __name__ == "__main__":
    main()
