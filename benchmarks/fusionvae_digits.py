"""FusionVAE against its baselines on FusionDigits (scikit-learn's real handwritten digits), trained on this machine.

Trains ``fusionvae_digits``, ``cvae_digits``, ``cvae_s_digits``, ``fcn_digits`` and ``fcn_s_digits``, and
FusionVAE with the joint posterior ``q(z | x, y)`` of the paper's Table 4 in NVAE's residual form
(``fusionvae_xy``: ``model.network.posterior=residual``), also with a third latent scale at the full 16² resolution
(``fusionvae_xy16``: latent groups ``[3, 2, 1]`` at ``4², 8², 16²``), with the same data, schedule and number of epochs
through ``train.py``'s code path (``fusion.pipeline.train``), then evaluates each last checkpoint with
``fusion.evaluate`` on the held-out digits: NLL in bits/dim by importance sampling and ``MSE_min``, for K = 0..3
inputs and averaged (the layout of the paper's Tables 1–3, units 10⁻²). Prints one Markdown table and writes it with
the raw numbers to ``--out`` (JSON and .md).

    python benchmarks/fusionvae_digits.py [--epochs 40] [--samples 100] [--device cpu] [--out outputs/bench/digits]
                                          [--models fusionvae cvae_s ...] [--override KEY=VALUE ...]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name  # noqa: E402

from fusion.data.io import atomic_output  # noqa: E402
from fusion.evaluate import evaluate  # noqa: E402
from fusion.pipeline import train  # noqa: E402

MODELS = ["fcn", "fcn_s", "cvae", "cvae_s", "fusionvae", "fusionvae_xy", "fusionvae_xy16"]
LABELS = {
    "fcn": "FCN",
    "fcn_s": "FCN+S",
    "cvae": "CVAE",
    "cvae_s": "CVAE+S",
    "fusionvae": "FusionVAE",
    "fusionvae_xy": "FusionVAE q(x,y)",
    "fusionvae_xy16": "FusionVAE q(x,y), z at 4², 8², 16²",
}
#: variants of an experiment: name -> (experiment prefix, extra overrides)
VARIANTS = {
    "fusionvae_xy": ("fusionvae", ["model.network.posterior=residual"]),
    "fusionvae_xy16": (
        "fusionvae",
        [
            "model.network.posterior=residual",
            "model.network.groups_per_scale=[3,2,1]",
            "model.network.latent_sizes=[4,8,16]",
        ],
    ),
}


def run(model: str, args: argparse.Namespace) -> dict:
    out = Path(args.out) / model
    experiment, extra = VARIANTS.get(model, (model, []))
    overrides = [
        f"experiment={experiment}_digits",
        *extra,
        f"paths.output_dir={out}",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.accelerator={'gpu' if args.device.startswith('cuda') else 'cpu'}",
        "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false",
        "logger=csv",
        "data.num_workers=0",
        f"seed={args.seed}",
        *args.override,
    ]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    params = sum(p.numel() for p in torch.load(result["last_checkpoint"], weights_only=True)["state_dict"].values())
    metrics = evaluate(result["last_checkpoint"], num_samples=args.samples, device=args.device, seed=args.seed)
    return {**metrics, "train_seconds": seconds, "steps": result["global_step"], "state_numel": params}


def table(results: dict[str, dict]) -> str:
    cols = [0, 1, 2, 3, "avg"]
    head = "| model | " + " | ".join(f"NLL {c}" for c in cols) + " | " + " | ".join(f"MSE {c}" for c in cols)
    lines = [head + " | train s |", "|---" * (2 * len(cols) + 2) + "|"]
    for name, r in results.items():
        nll = [f"{100 * r['nll_bpd'][c]:.2f}" if r["nll_bpd"] else "—" for c in cols]
        mse = [f"{100 * r['mse_min'][c]:.2f}" for c in cols]
        lines.append(f"| {LABELS[name]} | " + " | ".join(nll + mse) + f" | {r['train_seconds']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--samples", type=int, default=100, help="importance / prior samples per evaluation image")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--models", nargs="+", default=MODELS, choices=MODELS)
    parser.add_argument("--out", default="outputs/bench/fusionvae_digits")
    parser.add_argument(
        "--override",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra Hydra override for every model, e.g. model.network.groups_per_scale=[4,1] (repeatable)",
    )
    args = parser.parse_args()
    os.environ.setdefault("WANDB_MODE", "offline")
    print(f"device: {device_name(torch.device(args.device))}; torch {torch.__version__}; epochs {args.epochs}")
    results = {}
    for model in args.models:
        results[model] = run(model, args)
        print(f"{LABELS[model]}: {results[model]['train_seconds']:.0f} s, {results[model]['steps']} steps", flush=True)
    text = table(results)
    print(text)
    out = Path(args.out)
    with atomic_output(out / "results.json") as tmp:
        tmp.write_text(json.dumps(results, indent=2, default=str))
    with atomic_output(out / "results.md") as tmp:
        tmp.write_text(text + "\n")


if __name__ == "__main__":
    main()
