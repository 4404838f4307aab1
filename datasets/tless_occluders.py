"""Cut the T-LESS occluders for FusionT-LESS (FusionVAE, Sections 5.1-5.2): an offline preparation step.

For every real training frame of the occluder classes (1, 2, 5-7, 11-14, 25-27 for training and 3, 4, 8-10,
15-18, 28-30 for evaluation), the object is found with a Canny edge detector, its outline closed and filled into a
solid mask, the largest component kept, and the frame cropped to it as an RGBA PNG (alpha = object mask):

    python datasets/tless_occluders.py --root /data/t-less --out /data/t-less-occluders
    python datasets/tless_occluders.py --root ROOT --out OUT --classes 1 2 3 --low 0.1 --high 0.2

writes ``OUT/<class:02d>/<frame>.png``; point ``data.occluder_root`` of ``conf/data/fusion_tless.yaml`` at OUT.
Existing outputs are kept (an interrupted run resumes; ``--overwrite`` redoes them); every file is written
atomically. The layouts are described in ``datasets/fusion_datasets.md``. Bad input ends with one ``error: ...``
line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from fusion.data.occluders import OCCLUDER_CLASSES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="T-LESS folder with train_primesense/<obj>/rgb/<frame>.png")
    parser.add_argument("--out", required=True, help="output folder for <class:02d>/<frame>.png occluders")
    parser.add_argument(
        "--classes", type=int, nargs="+", default=list(OCCLUDER_CLASSES), help="classes to cut (default: all 24)"
    )
    parser.add_argument("--low", type=float, default=0.1, help="lower Canny hysteresis threshold")
    parser.add_argument("--high", type=float, default=0.2, help="upper Canny hysteresis threshold")
    parser.add_argument("--close", type=int, default=5, help="side of the square that closes the outline (odd)")
    parser.add_argument("--batch-size", type=int, default=16, help="frames processed together")
    parser.add_argument("--device", default=None, help="torch device (default: cuda when available, else cpu)")
    parser.add_argument("--overwrite", action="store_true", help="redo frames whose occluder already exists")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    import torch

    from fusion.data.occluders import cut_occluders

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        written = cut_occluders(
            args.root,
            args.out,
            classes=args.classes,
            low=args.low,
            high=args.high,
            close=args.close,
            batch_size=args.batch_size,
            device=device,
            overwrite=args.overwrite,
            log=print,
        )
    except (FileNotFoundError, ValueError, TypeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {sum(written.values())} occluders of {len(written)} classes to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
