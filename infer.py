"""Blend an image region into another: ``python infer.py method=poisson fg=... bg=... mask=... out=...``.

Thin command-line wrapper; the work is done by :func:`fusion.pipeline.infer`. Bad input ends with one
``error: ...`` line on stderr and exit status 2.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from fusion.cli import exit_on_input_error, prepare_run, run_cli
from fusion.pipeline import infer

CONFIG_DIR = Path(__file__).resolve().parent / "conf"


@hydra.main(config_path="conf", config_name="infer", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run_cli(infer, cfg)


if __name__ == "__main__":
    with exit_on_input_error():
        sys.argv += prepare_run(sys.argv[1:], CONFIG_DIR, "infer")
    main()
