"""Throughput of batch inference: ``infer.py manifest=...`` against one ``infer.py`` call per item and OpenCV.

N items are cut from scikit-image's photographs (random 512×512 crops, fg and bg from different photographs, an
elliptic mask of random size and place) and written as PNGs with a manifest. Timed, in one run, from files to
files (reading, blending, writing the PNG; no side-by-side):

* batch mode: one ``python infer.py method=poisson method.solver=spectral manifest=... out_dir=... batch_size=B``;
* the same through Lightning's predict loop with ``devices=1`` and ``devices=2`` (``--devices 1 2``; on a CPU,
  two processes talking over gloo);
* single calls: ``python infer.py ... fg=.. bg=.. mask=.. out=..`` for the first ``--single`` items, extrapolated
  to N (each call pays the interpreter start and the imports);
* OpenCV: a Python loop of ``cv2.imread`` / ``cv2.seamlessClone`` (NORMAL_CLONE) / ``cv2.imwrite`` (if installed).

    python benchmarks/batch.py [--n 1000] [--single 20] [--batch-size 16] [--num-workers 2] [--device auto]
                               [--devices 1 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data, transform

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import device_name, markdown_table  # noqa: E402

from fusion.infer_files import resolve_device  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "motorcycle_left")


def _photos(size: int) -> list[np.ndarray]:
    """The RGB photographs of scikit-image, scaled so that their shorter side is at least ``size``."""
    photos = []
    for name in PHOTOS:
        loader = getattr(data, name, None)
        if loader is None:
            continue
        try:
            image = np.asarray(loader())
        except Exception:  # a photograph that needs a download is skipped
            continue
        if image.ndim != 3 or image.shape[2] != 3:
            continue
        scale = max(1.0, size / min(image.shape[:2]))
        if scale > 1:
            shape = (int(np.ceil(image.shape[0] * scale)), int(np.ceil(image.shape[1] * scale)))
            image = (transform.resize(image, shape, anti_aliasing=False) * 255).astype(np.uint8)
        photos.append(image)
    return photos


def make_items(folder: Path, n: int, size: int, seed: int = 0) -> list[dict[str, Path]]:
    rng = np.random.default_rng(seed)
    photos = _photos(size)
    yy, xx = np.mgrid[0:size, 0:size]
    items = []
    for i in range(n):
        a, b = rng.choice(len(photos), 2, replace=False)
        crops = []
        for k in (a, b):
            photo = photos[k]
            y, x = rng.integers(0, photo.shape[0] - size + 1), rng.integers(0, photo.shape[1] - size + 1)
            crops.append(photo[y : y + size, x : x + size])
        cy, cx = rng.uniform(0.4, 0.6, 2) * size
        ry, rx = rng.uniform(0.15, 0.3, 2) * size
        mask = ((((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2) < 1).astype(np.uint8) * 255
        paths = {"fg": folder / f"{i:04d}_fg.png", "bg": folder / f"{i:04d}_bg.png", "mask": folder / f"{i:04d}_m.png"}
        Image.fromarray(crops[0]).save(paths["fg"])
        Image.fromarray(crops[1]).save(paths["bg"])
        Image.fromarray(mask).save(paths["mask"])
        items.append(paths)
    return items


def _infer(*args: str) -> float:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / "infer.py"), *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"infer.py {' '.join(args)} failed:\n{proc.stderr[-2000:]}")
    return time.perf_counter() - start


def _check_ok(out_dir: Path) -> None:
    with open(out_dir / "results.csv") as handle:
        statuses = {row["status"] for row in csv.DictReader(handle)}
    if statuses != {"ok"}:
        raise RuntimeError(f"batch run {out_dir.name}: statuses {statuses}")


def run_opencv(items: list[dict[str, Path]], out: Path) -> float | None:
    try:
        import cv2
    except ImportError:
        return None
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for i, paths in enumerate(items):
        fg, bg = cv2.imread(str(paths["fg"])), cv2.imread(str(paths["bg"]))
        mask = cv2.imread(str(paths["mask"]), cv2.IMREAD_GRAYSCALE)
        ys, xs = np.nonzero(mask)
        center = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
        cv2.imwrite(str(out / f"{i:04d}.png"), cv2.seamlessClone(fg, bg, mask, center, cv2.NORMAL_CLONE))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="items of the batch run")
    parser.add_argument("--single", type=int, default=20, help="items timed one infer.py call each")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--devices", type=int, nargs="*", default=[1, 2], help="predict-loop runs (none: skip)")
    args = parser.parse_args()
    device = resolve_device(args.device)
    common = ["method=poisson", "method.solver=spectral", f"device={device}", "side_by_side=false"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        items = make_items(folder, args.n, args.size)
        with open(folder / "items.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=["fg", "bg", "mask"])
            writer.writeheader()
            writer.writerows({k: p.name for k, p in paths.items()} for paths in items)
        batch = _infer(*common, f"manifest={folder / 'items.csv'}", f"out_dir={folder / 'batch'}",
                       f"batch_size={args.batch_size}", f"num_workers={args.num_workers}")  # fmt: skip
        _check_ok(folder / "batch")
        spread = {}
        for devices in args.devices:
            out = folder / f"devices{devices}"
            spread[devices] = _infer(*common, f"manifest={folder / 'items.csv'}", f"out_dir={out}",
                                     f"batch_size={args.batch_size}", f"num_workers={args.num_workers}",
                                     f"devices={devices}")  # fmt: skip
            _check_ok(out)
        count = min(args.single, args.n)
        single = sum(
            _infer(*common, *(f"{k}={p}" for k, p in paths.items()), f"out={folder / 'single' / f'{i:04d}.png'}")
            for i, paths in enumerate(items[:count])
        )
        opencv = run_opencv(items, folder / "opencv")

    rows = [[f"infer.py batch mode (batch_size={args.batch_size}, num_workers={args.num_workers})", args.n,
             f"{batch:.1f}", f"{args.n / batch:.2f}", f"{(single / count) * args.n / batch:.1f}x"]]  # fmt: skip
    rows.append([f"one infer.py call per item ({count} timed, extrapolated)", args.n,
                 f"{single / count * args.n:.1f}", f"{count / single:.2f}", "1.0x"])  # fmt: skip
    for devices, seconds in spread.items():
        rows.append([f"infer.py batch mode, Lightning predict loop, devices={devices}", args.n, f"{seconds:.1f}",
                     f"{args.n / seconds:.2f}", f"{(single / count) * args.n / seconds:.1f}x"])  # fmt: skip
    if opencv is not None:
        rows.append(["Python loop over cv2.seamlessClone (CPU)", args.n, f"{opencv:.1f}", f"{args.n / opencv:.2f}",
                     f"{(single / count) * args.n / opencv:.1f}x"])  # fmt: skip
    else:
        rows.append(["Python loop over cv2.seamlessClone", "-", "-", "-", "cv2 not installed"])
    print(f"poisson (spectral), {args.size}x{args.size} RGB crops of scikit-image photographs, files to files")
    print(f"device: {device_name(device)}; CPU cores: {os.cpu_count()}; torch {torch.__version__}")
    header = ["mode", "items", "seconds", "items/s", "speed-up vs single calls"]
    if opencv is not None:  # the rate of each mode against OpenCV's loop
        header.append("vs OpenCV loop")
        for row in rows:
            row.append(f"{float(row[3]) / (args.n / opencv):.2f}x")
    print(markdown_table(header, rows))
    print(png_encoding(args.size))


def png_encoding(size: int, repeats: int = 20) -> str:
    """Encoding one RGB photo crop as PNG: Pillow at zlib's default level against the writer of fusion."""
    import io

    from fusion.data.io import write_image

    photo = _photos(size)[0][:size, :size]
    tensor = torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255

    def pillow() -> int:
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, format="PNG")
        return buffer.tell()

    with tempfile.TemporaryDirectory() as tmp:
        ours_path = Path(tmp) / "x.png"

        def ours() -> int:
            write_image(ours_path, tensor)
            return ours_path.stat().st_size

        rows = []
        for name, fn in (("Pillow, zlib default level (6)", pillow), ("fusion's write_image (level 1, RLE)", ours)):
            fn()
            start = time.perf_counter()
            for _ in range(repeats):
                nbytes = fn()
            rows.append([name, f"{(time.perf_counter() - start) / repeats * 1000:.1f}", f"{nbytes / 1024:.0f}"])
    return f"PNG encoding of one {size}x{size} photo crop\n" + markdown_table(["encoder", "ms", "KiB"], rows)


if __name__ == "__main__":
    main()
