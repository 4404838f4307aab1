"""NVAE cells (shapes, residual structure, layer order) and the spectral regulariser against exact norms."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fusion.nn.cells import (
    DecoderResidualCell,
    EncoderResidualCell,
    SpectralRegulariser,
    SqueezeExcitation,
    Swish,
    spectral_regularisation,
)


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    """Tiny networks: extra threads only contend."""
    yield


def _exact_sum(module: nn.Module) -> torch.Tensor:
    return sum(
        torch.linalg.matrix_norm(m.weight.reshape(m.weight.shape[0], -1), 2)
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    )


def test_swish_and_squeeze_excitation(gen: torch.Generator) -> None:
    x = torch.randn(2, 8, 5, 5, generator=gen)
    torch.testing.assert_close(Swish()(x), x * torch.sigmoid(x))
    se = SqueezeExcitation(8)
    y = se(x)
    ratio = (y / x).detach()  # one gate in (0, 1) per (item, channel)
    assert y.shape == x.shape and float(ratio.min()) > 0 and float(ratio.max()) < 1
    torch.testing.assert_close(ratio, ratio[:, :, :1, :1].expand_as(ratio))
    assert se.fc1.out_features == 4  # max(8 // 16, 4)


@pytest.mark.parametrize("downsample", [False, True])
def test_encoder_cell(downsample: bool, gen: torch.Generator) -> None:
    cell = EncoderResidualCell(4, 6, downsample=downsample)
    x = torch.randn(3, 4, 8, 8, generator=gen)
    size = 4 if downsample else 8
    assert cell(x).shape == (3, 6, size, size)
    kinds = [type(m) for m in cell.branch]
    assert kinds == [nn.BatchNorm2d, Swish, nn.Conv2d, nn.BatchNorm2d, Swish, nn.Conv2d, SqueezeExcitation]
    assert cell.branch[2].stride == ((2, 2) if downsample else (1, 1)) and cell.branch[2].kernel_size == (3, 3)
    assert isinstance(cell.skip, nn.Conv2d) and cell.skip.stride == cell.branch[2].stride
    # the residual branch is added, scaled by 0.1
    cell.eval()
    torch.testing.assert_close(cell(x), cell.skip(x) + 0.1 * cell.branch(x))
    same = EncoderResidualCell(4).eval()
    torch.testing.assert_close(same(x), x + 0.1 * same.branch(x))


@pytest.mark.parametrize("upsample", [False, True])
def test_decoder_cell(upsample: bool, gen: torch.Generator) -> None:
    cell = DecoderResidualCell(8, 4, expansion=3, upsample=upsample)
    x = torch.randn(2, 8, 4, 4, generator=gen)
    size = 8 if upsample else 4
    assert cell(x).shape == (2, 4, size, size)
    convs = [m for m in cell.branch if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels, c.groups) for c in convs] == [
        ((1, 1), 12, 1),
        ((5, 5), 12, 12),
        ((1, 1), 4, 1),
    ]
    assert isinstance(cell.branch[0], nn.BatchNorm2d) and isinstance(cell.branch[-1], SqueezeExcitation)
    cell.eval()
    up = nn.functional.interpolate(x, scale_factor=2.0) if upsample else x
    torch.testing.assert_close(cell(x), cell.skip(up) + 0.1 * cell.branch(up))


def test_cells_channels_last(gen: torch.Generator) -> None:
    x = torch.randn(2, 4, 8, 8, generator=gen)
    for cell in (EncoderResidualCell(4, 8, downsample=True), DecoderResidualCell(4, upsample=True, expansion=2)):
        cell.eval()
        ref = cell(x)
        cl = cell.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
        torch.testing.assert_close(cl, ref, rtol=1e-5, atol=1e-5)


def test_cell_argument_checks() -> None:
    with pytest.raises(ValueError, match="channels"):
        EncoderResidualCell(0)
    with pytest.raises(ValueError, match="expansion"):
        DecoderResidualCell(4, expansion=0)


def _net() -> nn.Module:
    torch.manual_seed(0)
    # two convolutions share a matrix shape (batched together), plus a depthwise and a 1x1 one
    return nn.Sequential(
        nn.Conv2d(3, 5, 3), nn.Conv2d(5, 5, 3), nn.Conv2d(5, 5, 3), nn.Conv2d(5, 5, 5, groups=5), nn.Conv2d(5, 2, 1)
    )


def test_spectral_regularisation_matches_matrix_norm() -> None:
    net = _net()
    state: dict[str, torch.Tensor] = {}
    est = spectral_regularisation(net, state, power_iterations=200)
    torch.testing.assert_close(est, _exact_sum(net), rtol=1e-4, atol=1e-5)
    assert state["u_5x45"].shape == (2, 5) and state["v_5x45"].shape == (2, 45)
    # one iteration per call converges as the vectors persist
    state = {}
    for _ in range(100):
        est = spectral_regularisation(net, state)
    torch.testing.assert_close(est, _exact_sum(net), rtol=1e-4, atol=1e-5)
    # the gradient is that of the exact norms (u vᵀ for each weight)
    est.backward()
    grad = net[0].weight.grad.clone()
    net.zero_grad()
    _exact_sum(net).backward()
    torch.testing.assert_close(grad, net[0].weight.grad, rtol=1e-3, atol=1e-4)


def test_spectral_regulariser_module_state() -> None:
    net = _net()
    reg = SpectralRegulariser(net, power_iterations=1)
    names = {name for name, _ in reg.named_buffers()}
    assert names == {"u_5x27", "v_5x27", "u_5x45", "v_5x45", "u_5x25", "v_5x25", "u_2x5", "v_2x5"}
    assert not list(reg.parameters())  # the network is not a submodule
    for _ in range(100):
        value = reg()
    torch.testing.assert_close(value, _exact_sum(net), rtol=1e-4, atol=1e-5)
    u_before = reg.u_5x45.clone()
    reg()
    assert reg.u_5x45.data_ptr() == reg._buffers["u_5x45"].data_ptr()  # updated in place
    torch.testing.assert_close(reg.u_5x45, u_before, rtol=1e-3, atol=1e-4)
    # checkpoint round trip: a fresh regulariser resumes from the saved vectors
    fresh = SpectralRegulariser(net)
    fresh.load_state_dict(reg.state_dict())
    torch.testing.assert_close(fresh.u_5x45, reg.u_5x45)
    torch.testing.assert_close(fresh(), _exact_sum(net), rtol=1e-4, atol=1e-5)


def test_spectral_regularisation_under_bf16_autocast() -> None:
    net = _net()
    reg = SpectralRegulariser(net)
    for _ in range(50):
        reg()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = reg()
    assert value.dtype == torch.float32
    torch.testing.assert_close(value, _exact_sum(net), rtol=1e-4, atol=1e-5)
    assert float(spectral_regularisation(nn.Linear(2, 2), {})) == 0.0
