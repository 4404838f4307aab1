"""The method registry: importing ``fusion.methods`` alone registers exactly the methods that have a config."""

from __future__ import annotations

import inspect
import json
import shutil
import subprocess
import sys
from pathlib import Path

from fusion.methods import method_spec

ROOT = Path(__file__).resolve().parents[2]


def test_import_fusion_methods_registers_exactly_the_configured_methods() -> None:
    # a fresh interpreter, so that nothing else (the pipeline, other tests) has imported a method module first
    code = "import json, fusion.methods as m; print(json.dumps(m.available_methods()))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    configured = sorted(p.stem for p in (ROOT / "conf" / "method").glob("*.yaml"))
    assert json.loads(proc.stdout) == configured


def test_a_method_that_loads_a_network_declares_it() -> None:
    # the command line resolves declared loads generically: the option is in the yaml, the network an argument
    spec = method_spec("gpgan")
    assert dict(spec.loads) == {"ckpt": "generator"}
    assert "generator" in inspect.signature(spec.fn).parameters
    assert "ckpt" not in inspect.signature(spec.fn).parameters
    text = (ROOT / "conf" / "method" / "gpgan.yaml").read_text()
    assert "\nckpt: null" in text


def test_the_readme_recipe_for_a_new_method_runs(tmp_path: Path) -> None:
    # the README's development section: the module's code registers the adapter, one yaml makes it selectable,
    # and infer runs it with its options checked against the adapter's signature
    import re

    import pytest
    import torch
    from hydra import compose, initialize_config_dir

    from fusion.data.io import read_image, read_mask
    from fusion.methods import registry
    from fusion.pipeline import SAMPLES_DIR, infer

    readme = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(# fusion/methods/average\.py\n.*?)```", readme, flags=re.S).group(1)
    conf = tmp_path / "conf"
    shutil.copytree(ROOT / "conf", conf)
    (conf / "method" / "average.yaml").write_text(
        "# Constant-weight blend inside the mask.\nname: average\nweight: 0.5\n"
    )
    saved = dict(registry._REGISTRY)
    try:
        exec(compile(code, "README.md (adding a method)", "exec"), {})  # noqa: S102
        out = tmp_path / "r.png"
        with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
            cfg = compose(config_name="infer", overrides=["method=average", "method.weight=0.25", f"out={out}"])
            infer(cfg)
            bad = compose(config_name="infer", overrides=["method=average", "method.weight=abc", f"out={out}"])
            with pytest.raises(ValueError, match="method.weight must be a number"):
                infer(bad)
    finally:
        registry._REGISTRY.clear()
        registry._REGISTRY.update(saved)
    fg, bg = read_image(SAMPLES_DIR / "fg.png"), read_image(SAMPLES_DIR / "bg.png")
    mask = (read_mask(SAMPLES_DIR / "mask.png") > 0.5).float()
    expected = mask * (0.25 * fg + 0.75 * bg) + (1 - mask) * bg
    assert torch.allclose(read_image(out), expected, atol=1 / 255)


def test_checked_result_names_the_method_and_what_is_wrong() -> None:
    import pytest
    import torch

    from fusion.methods import MethodOutput, checked_result

    good = torch.zeros(2, 3, 4, 5)
    assert checked_result("m", MethodOutput(good), good.shape) is good
    with pytest.raises(TypeError, match="method 'm' returned Tensor; a registered adapter returns a MethodOutput"):
        checked_result("m", good, good.shape)
    with pytest.raises(RuntimeError, match=r"method 'm' returned \(2, 3, 4, 4\), expected a tensor of shape"):
        checked_result("m", MethodOutput(good[..., :4]), good.shape)
    with pytest.raises(RuntimeError, match="returned list"):
        checked_result("m", MethodOutput([good]), good.shape)
