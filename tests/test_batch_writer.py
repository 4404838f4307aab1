"""Writing a batch run's outputs beside the compute (fusion.batch_writer), its temporaries, and the byte transport
of 8-bit inputs (read_image(as_bytes=True))."""

from __future__ import annotations

import io
import os
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fusion.batch import _compute_threads, _remove_stale_temporaries
from fusion.batch_writer import OutputWriter, Progress, writer_threads
from fusion.data.io import as_float, read_image, write_image


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_every_outcome_is_recorded_once_in_submission_order(workers: int) -> None:
    recorded: list[tuple[int, str]] = []
    threads = set()

    def finish(outcome: int) -> str:
        threads.add(threading.get_ident())
        time.sleep(0.002 * (outcome % 3))  # later submissions may finish first
        return f"row{outcome}"

    with OutputWriter(finish, lambda key, row: recorded.append((key, row)), workers=workers, window=4) as writer:
        for k in range(20):
            writer.submit(k, k)
            assert len(writer.pending) <= 4  # the window bounds what is held in memory
    assert recorded == [(k, f"row{k}") for k in range(20)]
    assert (threading.get_ident() in threads) == (workers == 0)  # with workers, never the calling thread


def test_a_failing_write_is_raised_and_the_rest_still_finish() -> None:
    done: list[int] = []

    def finish(outcome: int) -> int:
        if outcome == 2:
            raise OSError("disk full")
        time.sleep(0.001)
        return outcome

    with pytest.raises(OSError, match="disk full"):
        with OutputWriter(finish, lambda key, row: done.append(row), workers=2, window=8) as writer:
            for k in range(5):
                writer.submit(k, k)
    assert done == [0, 1]  # recorded in order up to the failure


def test_progress_counts_items_and_is_silent_off_a_terminal() -> None:
    shown = io.StringIO()
    bar = Progress(10, file=shown, enabled=True)
    bar.update_to(4)
    bar.update_to(3)  # a count never goes back
    bar.update_to(10)
    bar.close()
    text = shown.getvalue()
    assert "10/10" in text and "item" in text
    assert bar.done == 10
    quiet = io.StringIO()
    Progress(5, file=quiet).update_to(5)  # StringIO is no terminal: no bar in logs and pipes
    assert quiet.getvalue() == ""


def test_threads_leave_cores_to_readers_and_writers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 16)
    assert writer_threads() == 2
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(16)
        assert _compute_threads(num_workers=4) == 10
        assert _compute_threads(num_workers=20) == 1
    finally:
        torch.set_num_threads(before)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    assert writer_threads() == 1


def test_only_temporaries_older_than_the_run_are_removed(tmp_path: Path) -> None:
    stale = tmp_path / ".a.png.x1y2.part"
    nested = tmp_path / "a_frames" / ".003.png.k9.part"
    nested.parent.mkdir()
    for path in (stale, nested):
        path.write_bytes(b"half")
        os.utime(path, ns=(time.time_ns() - 10**10,) * 2)
    live = tmp_path / ".b.png.z3.part"  # being written by another rank of this run
    live.write_bytes(b"half")
    keep = tmp_path / "c.part"  # not one of ours (no leading dot)
    keep.write_bytes(b"user file")
    os.utime(keep, ns=(time.time_ns() - 10**10,) * 2)
    _remove_stale_temporaries(tmp_path, time.time_ns() - 10**9)
    assert not stale.exists() and not nested.exists()
    assert live.exists() and keep.exists()


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    image = Image.fromarray(array)
    if mode is not None:
        image = image.convert(mode)
    image.save(path)
    return path


def test_bytes_give_exactly_the_float_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    files = {
        "rgb": _png(tmp_path / "rgb.png", rgb),
        "grey": _png(tmp_path / "grey.png", rgb[..., 0]),
        "palette": _png(tmp_path / "p.png", rgb, mode="P"),
        "rgba": _png(tmp_path / "rgba.png", np.dstack([rgb, rgb[..., :1]])),
    }
    for name, path in files.items():
        raw = read_image(path, as_bytes=True)
        assert raw.dtype == torch.uint8, name
        assert torch.equal(as_float(raw), read_image(path)), name
    deep = tmp_path / "deep.png"
    Image.fromarray((rng.random((5, 4)) * 65535).astype(np.uint16)).save(deep)
    assert read_image(deep, as_bytes=True).dtype == torch.float32  # 16 bits stay floats
    assert torch.equal(read_image(deep, as_bytes=True), read_image(deep))


@pytest.mark.parametrize("channels", [1, 3])
def test_fast_png_round_trips_every_byte(tmp_path: Path, channels: int) -> None:
    values = torch.arange(256.0).repeat(3 * 4)[: channels * 32 * 24].view(1, channels, 32, 24) / 255
    path = write_image(tmp_path / "x.png", values)
    with Image.open(path) as image:
        assert image.mode == ("L" if channels == 1 else "RGB")
        stored = np.asarray(image)
    expected = np.round(values[0].numpy() * 255).astype(np.uint8)
    expected = expected[0] if channels == 1 else expected.transpose(1, 2, 0)
    assert np.array_equal(stored, expected)
    with pytest.raises(ValueError, match="NaN or Inf"):
        write_image(tmp_path / "bad.png", torch.full((1, channels, 2, 2), float("nan")))
    assert not (tmp_path / "bad.png").exists()


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_fast_png_is_about_the_size_of_the_default_level_on_photographs(tmp_path: Path, name: str) -> None:
    """README: lossless PNGs within a few percent of the size zlib's default level gives."""
    from skimage import data

    photo = np.ascontiguousarray(getattr(data, name)()[:256, :256])
    reference = tmp_path / "pillow.png"
    Image.fromarray(photo).save(reference)  # Pillow's default: zlib level 6
    ours = write_image(tmp_path / "ours.png", torch.from_numpy(photo).permute(2, 0, 1)[None].float() / 255)
    assert np.array_equal(np.asarray(Image.open(ours)), photo)
    assert abs(ours.stat().st_size / reference.stat().st_size - 1) < 0.08
