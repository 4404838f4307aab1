"""The inference command line: end-to-end runs, the error contract, and the pipeline behind it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from PIL import Image

from fusion.cli import check_overrides, run_cli
from fusion.data.io import LABEL_HEIGHT, read_image, read_mask, save_side_by_side, write_image
from fusion.methods import registry
from fusion.pipeline import SAMPLES_DIR, infer

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
H, W = 24, 32


def _save_rgb(path: Path, array: np.ndarray) -> Path:
    Image.fromarray((np.clip(array, 0, 1) * 255).round().astype(np.uint8)).save(path)
    return path


@pytest.fixture
def inputs(tmp_path: Path) -> dict[str, Path]:
    """A small RGB fg/bg pair and a rectangular mask, all H x W."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W] / max(H, W)
    fg = np.stack([yy, xx, 0.5 + 0.2 * rng.random((H, W))], axis=-1)
    bg = np.stack([0.3 + 0.4 * xx, 0.2 + 0.0 * yy, 0.6 - 0.3 * yy], axis=-1)
    mask = np.zeros((H, W), np.uint8)
    mask[6:18, 8:24] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    return {
        "fg": _save_rgb(tmp_path / "fg.png", fg),
        "bg": _save_rgb(tmp_path / "bg.png", bg),
        "mask": tmp_path / "mask.png",
    }


def _path_args(paths: dict[str, Path]) -> list[str]:
    return [f"{key}={value}" for key, value in paths.items()]


def _overrides(paths: dict[str, Path], extra: list[str], out: Path) -> list[str]:
    """Input paths, the case's extra overrides, and ``out`` unless the case sets it."""
    has_out = any(arg.startswith("out=") for arg in extra)
    return [*_path_args(paths), *extra, *([] if has_out else [f"out={out}"])]


def run_infer(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "infer.py"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def assert_input_error(proc: subprocess.CompletedProcess[str], fragment: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), lines[0]
    assert fragment in lines[0], lines[0]


def _written(stdout: str) -> dict[str, Path]:
    found = {}
    for line in stdout.splitlines():
        if line.startswith("wrote "):
            key, _, path = line[len("wrote ") :].partition(": ")
            found[key] = Path(path)
    return found


# ------------------------------------------------------------------------------------------------------------
# End-to-end runs of infer.py
# ------------------------------------------------------------------------------------------------------------
def test_cli_runs_on_builtin_samples(tmp_path: Path) -> None:
    proc = run_infer([], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    written = _written(proc.stdout)
    assert set(written) == {"result", "side_by_side"}
    result, panel = written["result"], written["side_by_side"]
    assert result.resolve().is_relative_to((tmp_path / "outputs" / "infer").resolve())
    bg = read_image(SAMPLES_DIR / "bg.png")
    out = read_image(result)
    assert out.shape == bg.shape
    mask = read_mask(SAMPLES_DIR / "mask.png") > 0.5
    outside = (~mask).expand_as(bg)
    assert (out - bg)[outside].abs().max() <= 1.5 / 255  # Poisson editing keeps bg outside the mask
    assert (out - bg)[~outside].abs().mean() > 0.01
    assert read_image(panel).shape[-1] == 2 * bg.shape[-1] + 4


@pytest.mark.parametrize("method", ["poisson", "gaussian_poisson"])
def test_cli_runs_on_explicit_paths(tmp_path: Path, inputs: dict[str, Path], method: str) -> None:
    out = tmp_path / "out" / "blend.png"
    proc = run_infer([f"method={method}", *_path_args(inputs), f"out={out}", "device=cpu"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert _written(proc.stdout) == {"result": out, "side_by_side": out.with_name("blend_side_by_side.png")}
    assert read_image(out).shape == (1, 3, H, W)
    panel = read_image(out.with_name("blend_side_by_side.png"))
    assert panel.shape == (1, 3, LABEL_HEIGHT + H, 2 * W + 4)
    band = panel[..., :LABEL_HEIGHT, :W]  # the labels: black text on white above each panel
    assert float(band.amin()) < 0.2 and float((band > 0.9).float().mean()) > 0.6


def test_cli_method_parameters_and_no_side_by_side(tmp_path: Path, inputs: dict[str, Path]) -> None:
    out = tmp_path / "blend.png"
    args = ["method=poisson", "method.mixed=true", "side_by_side=false", *_path_args(inputs), f"out={out}"]
    proc = run_infer(args, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert out.is_file()
    assert sorted(p.name for p in tmp_path.glob("*.png")) == ["bg.png", "blend.png", "fg.png", "mask.png"]


# ------------------------------------------------------------------------------------------------------------
# Error contract: exit status 2, one "error:" line on stderr, nothing written
# ------------------------------------------------------------------------------------------------------------
def _bad_inputs(case: str, paths: dict[str, Path], tmp: Path) -> tuple[dict[str, Path], list[str], str]:
    """Inputs for one bad-input case: (paths, extra overrides, expected message fragment)."""
    paths = dict(paths)
    extra: list[str] = []
    if case == "mask_size":
        Image.fromarray(np.full((H + 2, W), 255, np.uint8)).save(tmp / "big_mask.png")
        paths["mask"] = tmp / "big_mask.png"
        return paths, extra, "must match the fg size"
    if case == "fg_larger_than_bg":
        _save_rgb(tmp / "small_bg.png", np.full((H - 4, W, 3), 0.5))
        paths["bg"] = tmp / "small_bg.png"
        return paths, extra, "larger than bg"
    if case == "empty_mask":
        Image.fromarray(np.zeros((H, W), np.uint8)).save(tmp / "empty.png")
        paths["mask"] = tmp / "empty.png"
        return paths, extra, "mask is empty"
    if case == "full_mask":
        Image.fromarray(np.full((H, W), 255, np.uint8)).save(tmp / "full.png")
        paths["mask"] = tmp / "full.png"
        return paths, extra, "covers the whole image"
    if case == "nan_fg":
        fg = np.full((H, W, 3), 0.5, np.float32)
        fg[3, 4, 1] = np.nan
        np.save(tmp / "nan.npy", fg)
        paths["fg"] = tmp / "nan.npy"
        return paths, extra, "NaN or Inf"
    if case == "inf_mask":
        mask = np.zeros((H, W), np.float32)
        mask[5:10, 5:10] = 1
        mask[0, 0] = np.inf
        np.save(tmp / "inf.npy", mask)
        paths["mask"] = tmp / "inf.npy"
        return paths, extra, "NaN or Inf"
    if case == "gray_fg_rgb_bg":
        Image.fromarray(np.full((H, W), 128, np.uint8)).save(tmp / "gray.png")
        paths["fg"] = tmp / "gray.png"
        return paths, extra, "channel"
    if case == "four_channel_array":
        np.save(tmp / "four.npy", np.full((H, W, 4), 0.5, np.float32))
        paths["bg"] = tmp / "four.npy"
        return paths, extra, "4 channels"
    if case == "unreadable":
        (tmp / "junk.png").write_bytes(b"this is not an image")
        paths["fg"] = tmp / "junk.png"
        return paths, extra, "cannot read fg"
    if case == "missing":
        paths["bg"] = tmp / "nowhere.png"
        return paths, extra, "bg not found"
    if case == "partial":
        del paths["mask"]
        return paths, extra, "missing: mask"
    if case == "out_is_fg":
        return paths, [f"out={paths['fg']}"], "overwrite the fg input"
    if case == "bad_offset":
        return paths, ["offset=[1]"], "offset"
    if case == "unknown_parameter":
        return paths, ["+method.bogus=1"], "bogus"
    if case == "unknown_method":
        return paths, ["method=nope"], "unknown method 'nope'"
    raise AssertionError(case)


ERROR_CASES = [
    "mask_size",
    "fg_larger_than_bg",
    "empty_mask",
    "full_mask",
    "nan_fg",
    "inf_mask",
    "gray_fg_rgb_bg",
    "four_channel_array",
    "unreadable",
    "missing",
    "partial",
    "out_is_fg",
    "bad_offset",
    "unknown_parameter",
    "unknown_method",
]
# Each case costs an interpreter start-up on the command line; these cover every kind of failure end to end,
# and the in-process test below checks all cases through the same code path.
CLI_ERROR_CASES = [
    "mask_size",
    "empty_mask",
    "nan_fg",
    "gray_fg_rgb_bg",
    "unreadable",
    "out_is_fg",
    "unknown_method",
]


def _snapshot(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and ".hydra" not in p.parts}


@pytest.mark.parametrize("case", CLI_ERROR_CASES)
def test_cli_bad_input_exits_2_with_one_line(tmp_path: Path, inputs: dict[str, Path], case: str) -> None:
    paths, extra, fragment = _bad_inputs(case, inputs, tmp_path)
    out = tmp_path / "out" / "result.png"
    overrides = _overrides(paths, extra, out)
    before = _snapshot(tmp_path)
    proc = run_infer(overrides, cwd=tmp_path)
    assert_input_error(proc, fragment)
    assert proc.stdout.strip() == ""
    assert not out.parent.exists()
    after = {p: b for p, b in _snapshot(tmp_path).items() if p.suffix != ".log"}
    assert after == before  # no new image, and no input changed


def test_cli_unknown_method_writes_nothing(tmp_path: Path) -> None:
    proc = run_infer(["method=nope"], cwd=tmp_path)
    options = ", ".join(sorted(p.stem for p in (CONF / "method").glob("*.yaml")))
    assert "poisson" in options.split(", ")
    assert_input_error(proc, f"unknown method 'nope'; expected one of: {options}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("override", "fragment"),
    [("nonsense_key=1", "Could not override 'nonsense_key'"), ("fg=a=b", "invalid override 'fg=a=b'")],
)
def test_check_overrides_one_line(override: str, fragment: str) -> None:
    with pytest.raises(ValueError, match="invalid override") as info:
        check_overrides([override], CONF, "infer")
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_check_overrides_accepts_good_and_leaves_flags_to_hydra() -> None:
    check_overrides(["method=gaussian_poisson", "method.beta=2.0", "device=cpu", "offset=[1,2]"], CONF, "infer")
    check_overrides(["--multirun", "method=nope"], CONF, "infer")  # Hydra reports flagged command lines itself
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        check_overrides(["method=nope"], CONF, "infer")


# ------------------------------------------------------------------------------------------------------------
# The pipeline in-process (fast): same code path as the command line, minus interpreter start-up
# ------------------------------------------------------------------------------------------------------------
def _cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="infer", overrides=overrides)


@pytest.mark.parametrize("case", [c for c in ERROR_CASES if c != "unknown_method"])
def test_pipeline_bad_input(tmp_path, inputs, capsys, case: str) -> None:
    paths, extra, fragment = _bad_inputs(case, inputs, tmp_path)
    out = tmp_path / "out" / "result.png"
    before = _snapshot(tmp_path)
    try:
        check_overrides(_overrides(paths, extra, out), CONF, "infer")
        cfg = _cfg(_overrides(paths, extra, out))
    except ValueError as err:  # rejected while composing: the CLI reports it the same way
        assert fragment in str(err)
        return
    with pytest.raises(SystemExit) as info:
        run_cli(infer, cfg)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and fragment in err[0], err
    assert not out.parent.exists()
    assert _snapshot(tmp_path) == before


def test_pipeline_unknown_method_name(tmp_path, inputs) -> None:
    cfg = _cfg([*_path_args(inputs), f"out={tmp_path / 'r.png'}", "method.name=nope"])
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        infer(cfg)


def test_pipeline_passes_method_parameters(tmp_path, inputs, monkeypatch) -> None:
    calls = []

    def recorder(fg, bg, mask, **params):
        calls.append((fg, bg, mask, params))
        return registry.MethodOutput(result=mask * fg + (1 - mask) * bg)

    monkeypatch.setitem(registry._REGISTRY, "recorder_for_tests", registry.MethodSpec("recorder_for_tests", recorder))
    out = tmp_path / "r.png"
    cfg = _cfg([*_path_args(inputs), f"out={out}", "device=cpu", "method.name=recorder_for_tests"])
    written = infer(cfg)
    assert written == {"result": out, "side_by_side": tmp_path / "r_side_by_side.png"}
    ((fg, bg, mask, params),) = calls
    assert params == {"mixed": False, "solver": "exact", "tol": 1e-5, "max_iter": 20000}
    assert fg.shape == bg.shape == (1, 3, H, W) and mask.shape == (1, 1, H, W)
    assert fg.dtype == torch.float32 and fg.device.type == "cpu"
    # Left panel of the side-by-side is the plain composite, right panel the result.
    panel = read_image(written["side_by_side"])
    composite = mask * fg + (1 - mask) * bg
    assert torch.allclose(panel[..., LABEL_HEIGHT:, :W], composite, atol=0.5 / 255 + 1e-6)
    assert torch.allclose(panel[..., LABEL_HEIGHT:, W + 4 :], read_image(out), atol=1e-6)


def test_an_adapter_returning_a_bare_tensor_is_refused(tmp_path, inputs, monkeypatch) -> None:
    def bare(fg, bg, mask, **params):
        return mask * fg + (1 - mask) * bg

    monkeypatch.setitem(registry._REGISTRY, "bare_for_tests", registry.MethodSpec("bare_for_tests", bare))
    out = tmp_path / "r.png"
    cfg = _cfg([*_path_args(inputs), f"out={out}", "device=cpu", "method.name=bare_for_tests"])
    with pytest.raises(TypeError, match="'bare_for_tests' returned Tensor; a registered adapter returns"):
        infer(cfg)
    assert not out.exists()


@pytest.mark.parametrize(("offset", "origin"), [(None, (4, 8)), ([2, 3], (2, 3))])
def test_pipeline_places_smaller_fg(tmp_path, inputs, monkeypatch, offset, origin) -> None:
    seen = {}

    def recorder(fg, bg, mask, **params):
        seen["mask"] = mask
        return registry.MethodOutput(result=mask * fg + (1 - mask) * bg)

    monkeypatch.setitem(registry._REGISTRY, "recorder_for_tests", registry.MethodSpec("recorder_for_tests", recorder))
    small = read_image(inputs["fg"])[..., :16, :16]
    write_image(tmp_path / "small.png", small)
    small_mask = torch.zeros(1, 1, 16, 16)
    small_mask[..., 4:12, 4:12] = 1
    write_image(tmp_path / "small_mask.png", small_mask)
    overrides = [f"fg={tmp_path / 'small.png'}", f"bg={inputs['bg']}", f"mask={tmp_path / 'small_mask.png'}"]
    overrides += [f"out={tmp_path / 'r.png'}", "method.name=recorder_for_tests", f"offset={offset or 'null'}"]
    infer(_cfg(overrides))
    expected = torch.zeros(1, 1, H, W)
    y, x = origin
    expected[..., y + 4 : y + 12, x + 4 : x + 12] = 1
    assert torch.equal(seen["mask"], expected)


def test_pipeline_without_hydra_needs_out(inputs) -> None:
    cfg = _cfg(_path_args(inputs))
    with pytest.raises(ValueError, match="out="):
        infer(cfg)


def test_pipeline_rejects_cuda_without_cuda(tmp_path, inputs, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        infer(_cfg([*_path_args(inputs), f"out={tmp_path / 'r.png'}", "device=cuda"]))


@pytest.mark.gpu
def test_pipeline_on_cuda(tmp_path, inputs) -> None:
    out = tmp_path / "r.png"
    infer(_cfg([*_path_args(inputs), f"out={out}", "device=cuda"]))
    assert read_image(out).shape == (1, 3, H, W)


# ------------------------------------------------------------------------------------------------------------
# Image IO
# ------------------------------------------------------------------------------------------------------------
def test_io_round_trips(tmp_path) -> None:
    """Pixel values against what Pillow, NumPy, tifffile and OpenCV write and read: 8-bit RGB and grey PNGs both
    ways, 16-bit grey PNGs and TIFFs, 16-bit colour TIFFs and PNGs (exact), ``.npy`` both ways; writing clamps
    to [0, 1] and leaves no temporary file behind."""
    import warnings

    import cv2
    import tifffile

    # 8-bit codes k and values (k + d) / 255, d in {-0.4, ..., 0.4} away from rounding ties; codes 0 and 255 with
    # an offset lie outside [0, 1] and must clamp to 0 and 255
    codes = ((np.arange(5 * 7 * 3) * 37) % 256).reshape(5, 7, 3).astype(np.uint8)
    codes[0, 0], codes[0, 1] = (0, 255, 0), (255, 0, 255)
    offsets = 0.2 * ((np.arange(5 * 7 * 3) % 5) - 2).reshape(5, 7, 3)
    offsets[0, 0], offsets[0, 1] = (-0.4, 0.4, -0.4), (0.4, -0.4, 0.4)
    values = (codes + offsets) / 255
    assert values.min() < 0 and values.max() > 1
    rgb = torch.from_numpy(values.transpose(2, 0, 1)[None].astype(np.float32))
    write_image(tmp_path / "rgb.png", rgb)
    with Image.open(tmp_path / "rgb.png") as written:
        assert written.mode == "RGB"
        np.testing.assert_array_equal(np.asarray(written), codes)
    write_image(tmp_path / "grey.png", rgb[:, 1:2])
    with Image.open(tmp_path / "grey.png") as written:
        assert written.mode == "L"
        np.testing.assert_array_equal(np.asarray(written), codes[..., 1])

    # files written by Pillow: 8-bit RGB and grey, 16-bit grey (PNG and TIFF)
    exact = dict(rtol=0, atol=1e-7)
    Image.fromarray(codes).save(tmp_path / "pil_rgb.png")
    got = read_image(tmp_path / "pil_rgb.png")
    assert got.shape == (1, 3, 5, 7) and got.dtype == torch.float32
    np.testing.assert_allclose(got[0].numpy().transpose(1, 2, 0), codes / 255, **exact)
    assert float(got[0, 0, 0, 1]) == 1.0 and float(got[0, 1, 0, 1]) == 0.0  # channel order R, G, B
    Image.fromarray(codes[..., 2]).save(tmp_path / "pil_grey.png")
    for read in (read_image, read_mask):
        got = read(tmp_path / "pil_grey.png")
        assert got.shape == (1, 1, 5, 7)
        np.testing.assert_allclose(got[0, 0].numpy(), codes[..., 2] / 255, **exact)
    deep = (np.arange(5 * 7).reshape(5, 7) * 1927 % 65536).astype(np.uint16)
    deep[0, :2] = (0, 65535)
    for name in ("pil_grey16.png", "pil_grey16.tif"):
        Image.fromarray(deep).save(tmp_path / name)
        for read in (read_image, read_mask):
            np.testing.assert_allclose(read(tmp_path / name)[0, 0].numpy(), deep / 65535, **exact)

    # 16-bit colour: a TIFF (tifffile, interleaved and planar) keeps its 16 bits; Pillow decodes a 16-bit colour
    # PNG (OpenCV writes BGR) at 8 bits per channel, the high byte, and read_image says so
    deep_rgb = (np.arange(5 * 7 * 3).reshape(5, 7, 3) * 3001 % 65536).astype(np.uint16)
    tifffile.imwrite(tmp_path / "rgb16.tif", deep_rgb, photometric="rgb")
    tifffile.imwrite(tmp_path / "rgb16_planar.tif", deep_rgb.transpose(2, 0, 1), photometric="rgb", planarconfig=2)
    for name in ("rgb16.tif", "rgb16_planar.tif"):
        got = read_image(tmp_path / name)
        np.testing.assert_allclose(got[0].numpy().transpose(1, 2, 0), deep_rgb / 65535, **exact)
        luma = deep_rgb @ np.array([0.299, 0.587, 0.114]) / 65535
        np.testing.assert_allclose(read_mask(tmp_path / name)[0, 0].numpy(), luma, rtol=0, atol=1e-6)
    assert cv2.imwrite(str(tmp_path / "rgb16.png"), deep_rgb[..., ::-1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = read_image(tmp_path / "rgb16.png")  # all 16 bits, no warning
    np.testing.assert_allclose(got[0].numpy().transpose(1, 2, 0), deep_rgb / 65535, **exact)

    # .npy: float32 values stored unchanged in (H, W, C); arrays NumPy wrote are read as values or integer codes
    write_image(tmp_path / "rgb.npy", rgb)
    stored = np.load(tmp_path / "rgb.npy")
    assert stored.dtype == np.float32 and stored.shape == (5, 7, 3)
    np.testing.assert_array_equal(stored, np.clip(values, 0, 1).astype(np.float32))
    torch.testing.assert_close(read_image(tmp_path / "rgb.npy"), rgb.clamp(0, 1), rtol=0, atol=0)
    for name, array, expected in [
        ("f64.npy", values.clip(0, 1), values.clip(0, 1)),
        ("u8.npy", codes, codes / 255),
        ("u16.npy", deep_rgb, deep_rgb / 65535),
        ("grey_f64.npy", values[..., 0].clip(0, 1), values[..., 0].clip(0, 1)[..., None]),
        ("bool.npy", codes[..., 0] > 100, (codes[..., 0] > 100)[..., None].astype(float)),
    ]:
        np.save(tmp_path / name, array)
        got = read_image(tmp_path / name)
        np.testing.assert_allclose(got[0].numpy().transpose(1, 2, 0), expected, **exact)
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".") or p.suffix == ".part"]
    assert leftovers == []  # no temporary files left


def test_io_reads_16_bit_png(tmp_path) -> None:
    values = np.array([[0, 1, 65535], [32768, 257, 12345]], np.uint16)
    Image.fromarray(values).save(tmp_path / "deep.png")
    img = read_image(tmp_path / "deep.png")
    assert img.shape == (1, 1, 2, 3)
    assert torch.allclose(img[0, 0].double(), torch.from_numpy(values / 65535.0), atol=1e-7)
    assert torch.equal(read_mask(tmp_path / "deep.png"), img)


def test_io_converts_palette_and_alpha(tmp_path) -> None:
    Image.new("RGBA", (4, 3), (10, 20, 30, 40)).save(tmp_path / "rgba.png")
    Image.new("P", (4, 3), 5).save(tmp_path / "pal.png")
    assert read_image(tmp_path / "rgba.png").shape == (1, 3, 3, 4)
    assert read_image(tmp_path / "pal.png").shape == (1, 3, 3, 4)
    assert read_mask(tmp_path / "rgba.png").shape == (1, 1, 3, 4)


def test_io_errors_name_the_path(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.png"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_text("not an image")
    with pytest.raises(ValueError, match="bad.png"):
        read_image(tmp_path / "bad.png")
    np.save(tmp_path / "range.npy", np.full((2, 2), 2.0))
    with pytest.raises(ValueError, match=r"range.npy.*\[0, 1\]"):
        read_mask(tmp_path / "range.npy")
    with pytest.raises(ValueError, match="extension"):
        write_image(tmp_path / "x.unknown", torch.rand(1, 3, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        write_image(tmp_path / "x.png", torch.full((1, 3, 2, 2), float("nan")))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.png", "range.npy"]


@pytest.mark.parametrize("name", ["keep.png", "keep.jpg"])  # OpenCV's PNG encoder, Pillow for the rest
def test_write_is_atomic_on_failure(tmp_path, monkeypatch, name) -> None:
    import fusion.data.io as io_module

    target = tmp_path / name
    write_image(target, torch.zeros(1, 3, 2, 2))
    original = target.read_bytes()

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Image.Image, "save", explode)
    monkeypatch.setattr(io_module, "_encode_png8", explode)
    with pytest.raises(RuntimeError, match="disk full"):
        write_image(target, torch.ones(1, 3, 2, 2))
    assert target.read_bytes() == original
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_side_by_side_mixes_gray_and_colour(tmp_path) -> None:
    path = save_side_by_side(tmp_path / "s.png", [torch.zeros(1, 1, 4, 3), torch.ones(1, 3, 4, 5)], gap=2)
    panel = read_image(path)
    assert panel.shape == (1, 3, 4, 3 + 2 + 5)
    assert panel[..., :3].max() == 0 and panel[..., 3:].min() == 1


def test_pipeline_writes_method_extras(tmp_path, inputs, monkeypatch) -> None:
    """A method returning a MethodOutput gets its extra images, frame sequences and curves written."""

    def with_extras(fg, bg, mask, **params):
        assert mask is None  # the mask is optional for a method registered with needs_mask=False
        frames = torch.stack([fg * (1 - t) + bg * t for t in (0.0, 0.5, 1.0)])
        return registry.MethodOutput(
            result=bg,
            images={"first_channel": fg[:, :1]},
            frames={"frames": frames},
            curves={"energy": {"energy": [3.0, 2.0, 1.5]}},
        )

    spec = registry.MethodSpec("extras_for_tests", with_extras, needs_mask=False)
    monkeypatch.setitem(registry._REGISTRY, "extras_for_tests", spec)
    out = tmp_path / "run" / "res.png"
    cfg = OmegaConf.create(
        {
            "method": {"name": "extras_for_tests"},
            "fg": str(inputs["fg"]),
            "bg": str(inputs["fg"]),
            "mask": None,
            "out": str(out),
            "offset": None,
            "device": "cpu",
            "side_by_side": True,
        }
    )
    written = infer(cfg)
    assert out.is_file() and written["side_by_side"].is_file()
    assert (tmp_path / "run" / "res_frames.gif").is_file()
    assert (tmp_path / "run" / "res_frames_strip.png").is_file()
    assert sorted(p.name for p in (tmp_path / "run" / "res_frames").iterdir()) == ["000.png", "001.png", "002.png"]
    assert (tmp_path / "run" / "res_energy.png").is_file()
    assert (tmp_path / "run" / "res_energy.csv").read_text().splitlines()[1:] == ["0,3.0", "1,2.0", "2,1.5"]
    assert read_image(tmp_path / "run" / "res_first_channel.png").shape[1] == 1
