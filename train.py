"""Train a model: ``python train.py experiment=gpgan_transient data.root=PATH``.

Thin command-line wrapper; the work is done by :func:`fusion.pipeline.train`. Bad input (a missing data root,
a corrupt checkpoint, an unknown config key, ...) ends with one ``error: ...`` line on stderr and exit status 2.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fusion.cli import exit_on_input_error, prepare_run, run_cli
from fusion.pipeline import train

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(config_path="conf", config_name="train", version_base="1.3")
def main(cfg: DictConfig) -> float | None:
    return run_cli(train, cfg).get("optimized_metric")  # what a sweeper (hparams_search=...) optimises


if __name__ == "__main__":
    with exit_on_input_error():
        sys.argv += prepare_run(sys.argv[1:], CONFIG_DIR, "train")
    main()
