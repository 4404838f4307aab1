"""Evaluate a trained FusionVAE / CVAE / FCN checkpoint the way the paper's Tables 1–3 do (§5.5).

``python -m fusion.evaluate RUN_DIR/checkpoints/last.ckpt [--samples 1000] [--limit 2000]`` rebuilds the network from
the run's saved config, loads the checkpoint (``weights_only=True``), and for every evaluation image and every
number of inputs ``K = 0, 1, 2, 3`` (the first ``K`` of the image's three fixed views) computes

- the NLL in bits per dimension by importance sampling with ``--samples`` draws from the approximate posterior
  (:func:`fusion.metrics.importance_sampled_nll`; not defined for the deterministic FCN baselines), and
- ``MSE_min``, the smallest mean squared error among ``--mse-samples`` samples from the prior ``p(z | x)``
  (:func:`fusion.metrics.mse_min`),

then prints both per ``K`` and averaged over ``K``, in units of 10⁻² as in the paper. Bad input ends with one
``error: ...`` line and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from omegaconf import OmegaConf

from fusion.cli import exit_on_input_error
from fusion.data.io import atomic_output
from fusion.metrics import bits_per_dim, importance_sampled_nll, mse_min
from fusion.pipeline import check_output_path, resolve_device
from fusion.runs import instantiate, load_network, run_config_for

__all__ = ["evaluate", "format_table", "main"]

MAX_INPUTS = 3


def _data_module(run_cfg: Any, data_root: str | None, batch_size: int | None):
    node = OmegaConf.select(run_cfg, "data")
    if node is None:
        raise ValueError("the run config has no data section; was it written by train.py?")
    node = OmegaConf.to_container(node, resolve=True)
    if data_root is not None:
        node["root"] = data_root
    if batch_size is not None:
        node["batch_size"] = batch_size
    node["num_workers"] = 0
    return instantiate(OmegaConf.create(node), "data")


def evaluate(
    checkpoint: str | Path,
    *,
    num_samples: int | None = None,
    mse_samples: int | None = None,
    limit: int | None = None,
    batch_size: int | None = None,
    data_root: str | None = None,
    device: str = "auto",
    seed: int = 0,
    chunk: int = 100,
) -> dict[str, Any]:
    """NLL (bits/dim) and ``MSE_min`` of a checkpoint per number of inputs ``K = 0..3`` and on average.

    Args:
        checkpoint: a ``.ckpt`` written by ``train.py`` (its run directory holds ``.hydra/config.yaml``).
        num_samples: importance samples per image for the NLL (default: the run's ``eval_samples``, else 100).
        mse_samples: prior samples per image for ``MSE_min`` (default: ``num_samples``).
        limit: evaluate at most this many images of the evaluation split.
        batch_size: images per batch (default: the run's data batch size).
        data_root: data root, when it moved since training.
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N``.
        seed: seeds the samples.
        chunk: importance samples per forward pass.

    Returns:
        ``{"nll_bpd": {0: .., 1: .., 2: .., 3: .., "avg": ..} | None, "mse_min": {...}, "images": int,
        "samples": int, "mse_samples": int, "model": str}``.
    """
    path = Path(checkpoint)
    network = load_network(path, key="network")
    run_cfg = OmegaConf.load(run_config_for(path.resolve()))
    if num_samples is None:
        num_samples = int(OmegaConf.select(run_cfg, "eval_samples", default=100) or 100)
    mse_samples = num_samples if mse_samples is None else mse_samples
    if num_samples < 1 or mse_samples < 1:
        raise ValueError(f"--samples and --mse-samples must be >= 1, got {num_samples} and {mse_samples}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be >= 1, got {limit}")
    dev = resolve_device(device)
    network = network.to(dev).eval()
    datamodule = _data_module(run_cfg, data_root, batch_size)
    loader = datamodule.eval_dataloader(limit=limit)
    torch.manual_seed(seed)

    generative = bool(network.is_generative)
    nll = {k: [] for k in range(MAX_INPUTS + 1)}
    err = {k: [] for k in range(MAX_INPUTS + 1)}
    images = 0
    with torch.no_grad():
        for batch in loader:
            inputs, target = batch["inputs"].to(dev), batch["target"].to(dev)
            images += target.shape[0]
            dims = int(target[0].numel())
            for k in range(MAX_INPUTS + 1):
                context = inputs[:, :k]
                if generative:
                    nats = importance_sampled_nll(network, context, target, num_samples=num_samples, chunk=chunk)
                    nll[k].append(bits_per_dim(nats, dims).cpu())
                done, best = 0, None
                while done < mse_samples:
                    n = min(chunk, mse_samples - done)
                    value = mse_min(network.sample(context, num_samples=n), target)
                    best = value if best is None else torch.minimum(best, value)
                    done += n
                err[k].append(best.cpu())

    def summary(values: dict[int, list[torch.Tensor]]) -> dict[Any, float]:
        table: dict[Any, float] = {k: float(torch.cat(v).double().mean()) for k, v in values.items()}
        table["avg"] = sum(table[k] for k in range(MAX_INPUTS + 1)) / (MAX_INPUTS + 1)
        return table

    return {
        "model": type(network).__name__,
        "images": images,
        "samples": num_samples,
        "mse_samples": mse_samples,
        "nll_bpd": summary(nll) if generative else None,
        "mse_min": summary(err),
    }


def format_table(results: dict[str, Any], name: str | None = None) -> str:
    """A Markdown table like the paper's: NLL in 10⁻² bits/dim and ``MSE_min`` in 10⁻², per ``K`` and averaged."""
    cols = [*range(MAX_INPUTS + 1), "avg"]
    head = " | ".join(f"NLL {c}" for c in cols) + " | " + " | ".join(f"MSE {c}" for c in cols)
    nll = results["nll_bpd"]
    nll_cells = [f"{100 * nll[c]:.2f}" if nll else "—" for c in cols]
    mse_cells = [f"{100 * results['mse_min'][c]:.2f}" for c in cols]
    label = name or results["model"]
    return "\n".join(
        [
            f"| model | {head} |",
            "|---" * (2 * len(cols) + 1) + "|",
            f"| {label} | " + " | ".join(nll_cells + mse_cells) + " |",
        ]
    )


class _Parser(argparse.ArgumentParser):
    """argparse with the command-line contract: a usage error is one ``error: ...`` line and exit status 2."""

    def error(self, message: str):  # noqa: ANN201 (argparse's hook)
        hint = "python -m fusion.evaluate --help lists the options"
        print(f"error: {' '.join(message.split())} ({hint})", file=sys.stderr)
        raise SystemExit(2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _Parser(prog="python -m fusion.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .ckpt written by train.py")
    parser.add_argument("--samples", type=int, default=None, help="importance samples per image (default: run's)")
    parser.add_argument("--mse-samples", type=int, default=None, help="prior samples per image for MSE_min")
    parser.add_argument("--limit", type=int, default=None, help="evaluate at most this many images")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--data-root", default=None, help="data root, if it moved since training")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--name", default=None, help="row label (default: the network class)")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = parser.parse_args(argv)
    with exit_on_input_error():
        if args.json and Path(args.json).resolve() == Path(args.checkpoint).resolve():
            raise ValueError(f"--json {args.json} would overwrite the checkpoint")
        if args.json:
            check_output_path(Path(args.json), "--json")
        results = evaluate(
            args.checkpoint,
            num_samples=args.samples,
            mse_samples=args.mse_samples,
            limit=args.limit,
            batch_size=args.batch_size,
            data_root=args.data_root,
            device=args.device,
            seed=args.seed,
        )
        print(format_table(results, args.name))
        print(
            f"({results['images']} images, {results['samples']} importance samples, "
            f"{results['mse_samples']} samples for MSE_min; units 1e-2)"
        )
        if args.json:
            with atomic_output(Path(args.json)) as tmp:
                tmp.write_text(json.dumps({**results, "name": args.name}, indent=2, default=str))
            print(f"wrote json: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
