"""Regenerate the built-in sample inputs in ``datasets/samples/``.

The samples are cut from two public-domain photographs that ship with scikit-image, so the demo works offline:

* background: ``skimage.data.rocket()`` — DSCOVR launch on Falcon 9 (SpaceX, released into the public domain);
* foreground: ``skimage.data.astronaut()`` — Eileen Collins (NASA, public domain). The source region is the
  space-shuttle model standing behind her.

The shuttle model is moved into the evening sky of the launch photo; the mask is a binary ellipse around it
that includes some of the grey studio backdrop, which is exactly what a gradient-domain blend should hide.

Usage::

    python datasets/make_samples.py            # writes datasets/samples/{fg,bg,mask}.png
    python datasets/make_samples.py --out DIR

The output is deterministic (no randomness, fixed resampling filter).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from skimage import data

HEIGHT, WIDTH = 256, 320
# Background: crop of the launch photo (rows, cols) resized to HEIGHT x WIDTH.
BG_CROP = (slice(0, 384), slice(100, 580))
# Foreground: the astronaut photo is scaled by FG_SCALE and shifted so that the shuttle centre
# (row, col in the original photo) lands at FG_TARGET (row, col in the sample).
FG_SCALE = 0.42
SHUTTLE_CENTRE = (150.0, 407.0)
FG_TARGET = (78.0, 192.0)
# Binary elliptic mask around the shuttle: centre (row, col) and semi-axes (rows, cols) in sample pixels.
MASK_CENTRE = (74.0, 192.0)
MASK_AXES = (66.0, 30.0)


def make_background() -> np.ndarray:
    photo = data.rocket()[BG_CROP]
    return np.asarray(Image.fromarray(photo).resize((WIDTH, HEIGHT), Image.Resampling.LANCZOS))


def make_foreground() -> np.ndarray:
    photo = data.astronaut()
    h, w = photo.shape[:2]
    size = (round(w * FG_SCALE), round(h * FG_SCALE))
    scaled = np.asarray(Image.fromarray(photo).resize(size, Image.Resampling.LANCZOS))
    top = round(FG_TARGET[0] - SHUTTLE_CENTRE[0] * FG_SCALE)
    left = round(FG_TARGET[1] - SHUTTLE_CENTRE[1] * FG_SCALE)
    # Pad the scaled photo by edge replication so that it covers the whole sample canvas after the shift.
    sh, sw = scaled.shape[:2]
    pad_top, pad_left = max(top, 0), max(left, 0)
    pad_bottom = max(HEIGHT - (top + sh), 0)
    pad_right = max(WIDTH - (left + sw), 0)
    padded = np.pad(scaled, ((pad_top, pad_bottom), (pad_left, pad_right), (0, 0)), mode="edge")
    row0, col0 = pad_top - top, pad_left - left
    return np.ascontiguousarray(padded[row0 : row0 + HEIGHT, col0 : col0 + WIDTH])


def make_mask() -> np.ndarray:
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    inside = ((rows - MASK_CENTRE[0]) / MASK_AXES[0]) ** 2 + ((cols - MASK_CENTRE[1]) / MASK_AXES[1]) ** 2 <= 1.0
    return (inside * 255).astype(np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "samples")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = {"fg.png": make_foreground(), "bg.png": make_background(), "mask.png": make_mask()}
    for name, array in images.items():
        Image.fromarray(array).save(args.out / name, optimize=True)
        print(f"wrote {args.out / name} {array.shape}")


if __name__ == "__main__":
    main()
