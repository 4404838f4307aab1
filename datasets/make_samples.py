"""Regenerate the built-in sample inputs in ``datasets/samples/``.

The samples are cut from two public-domain photographs that ship with scikit-image, so the demo works offline:

* background: ``skimage.data.rocket()`` — DSCOVR launch on Falcon 9 (SpaceX, released into the public domain);
* foreground: ``skimage.data.astronaut()`` — Eileen Collins (NASA, public domain). The source region is the
  space-shuttle model standing behind her.

The shuttle model is moved into the evening sky of the launch photo; the mask is a binary ellipse around it
that includes some of the grey studio backdrop, which is exactly what a gradient-domain blend should hide.

The osmosis pair (``datasets/samples/osmosis/``, used by ``method=osmosis``) is one scene under two lights, built
from ``skimage.data.chelsea()`` (Stefan van der Walt, CC0): ``fg`` is the photograph with a patch of the forehead
whose structure is lost (blurred, as faded or abraded paint would be), ``bg`` the intact scene under dim, uneven,
bluish light (a smooth multiplicative change of every channel), and ``mask`` is 1 where ``fg`` is kept and 0 on
an ellipse around the damaged patch, where the structure must come from ``bg``. ``truth.png`` is the intact
photograph at the same size, for measuring the restoration.

Usage::

    python datasets/make_samples.py            # writes datasets/samples/{fg,bg,mask}.png and samples/osmosis/
    python datasets/make_samples.py --out DIR

The output is deterministic (no randomness, fixed resampling filter).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
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


# Osmosis pair (one scene, two lights): size, damaged patch and the mask's hole, in sample pixels.
OSMOSIS_HEIGHT, OSMOSIS_WIDTH = 200, 300
DAMAGE_CENTRE = (32.0, 160.0)
DAMAGE_AXES = (20.0, 32.0)
DAMAGE_BLUR = 6.0  # standard deviation (pixels) of the blur that erases the structure in the patch
# The hole is the patch grown by 15 px (3σ of the default Gaussian α-map, σ = 5): where α is above ~0.005 the
# model keeps fg, so the hole must reach that far beyond the damage.
HOLE_AXES = (35.0, 47.0)
# Light of bg: brightness rising linearly from left to right, times a per-channel tint (R, G, B).
LIGHT_RANGE = (0.2, 0.8)
LIGHT_TINT = (0.6, 0.85, 1.2)


def _ellipse(centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    rows, cols = np.mgrid[0:OSMOSIS_HEIGHT, 0:OSMOSIS_WIDTH].astype(np.float64)
    return ((rows - centre[0]) / axes[0]) ** 2 + ((cols - centre[1]) / axes[1]) ** 2


def make_osmosis_truth() -> np.ndarray:
    """The intact photograph at the pair's size, ``(H, W, 3)`` float64 in [0, 1]."""
    photo = Image.fromarray(data.chelsea()).resize((OSMOSIS_WIDTH, OSMOSIS_HEIGHT), Image.Resampling.LANCZOS)
    return np.asarray(photo).astype(np.float64) / 255


def make_osmosis_pair() -> dict[str, np.ndarray]:
    """``fg`` (damaged patch), ``bg`` (other light), ``mask`` (1 where fg is kept) and ``truth``, as uint8 arrays."""
    truth = make_osmosis_truth()
    blurred = np.stack([ndimage.gaussian_filter(truth[..., c], DAMAGE_BLUR, mode="reflect") for c in range(3)], -1)
    # soft edge: fully blurred inside the patch, fading out over a few pixels beyond it
    weight = np.clip((1.15 - _ellipse(DAMAGE_CENTRE, DAMAGE_AXES)) / 0.3, 0, 1)[..., None]
    fg = (1 - weight) * truth + weight * blurred
    cols = np.arange(OSMOSIS_WIDTH, dtype=np.float64)[None, :, None]
    light = LIGHT_RANGE[0] + (LIGHT_RANGE[1] - LIGHT_RANGE[0]) * cols / (OSMOSIS_WIDTH - 1)
    bg = np.clip(truth * light * np.asarray(LIGHT_TINT), 0, 1)
    mask = (_ellipse(DAMAGE_CENTRE, HOLE_AXES) > 1.0).astype(np.float64)
    as_u8 = lambda x: np.round(x * 255).astype(np.uint8)  # noqa: E731
    return {"fg.png": as_u8(fg), "bg.png": as_u8(bg), "mask.png": as_u8(mask), "truth.png": as_u8(truth)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "samples")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    images = {"fg.png": make_foreground(), "bg.png": make_background(), "mask.png": make_mask()}
    for name, array in images.items():
        Image.fromarray(array).save(args.out / name, optimize=True)
        print(f"wrote {args.out / name} {array.shape}")
    osmosis = args.out / "osmosis"
    osmosis.mkdir(exist_ok=True)
    for name, array in make_osmosis_pair().items():
        Image.fromarray(array).save(osmosis / name, optimize=True)
        print(f"wrote {osmosis / name} {array.shape}")


if __name__ == "__main__":
    main()
