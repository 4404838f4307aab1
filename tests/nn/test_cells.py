"""NVAE cells against their definitions written out with functional operations, and the spectral regulariser
against exact matrix norms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
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


# ---------------------------------------------------------------------------------------------------- references
# The cells written out from NVAE's definitions (Vahdat & Kautz 2020, Fig. 3; FusionVAE supplement A) with plain
# functional operations on the cell's weights: batch normalisation from its running statistics (evaluation mode)
# or from the batch statistics (training mode), Swish x·σ(x), convolutions, squeeze-and-excitation from its two
# linear layers, nearest-neighbour upsampling by repetition, and the 0.1-scaled residual branch.
def _bn(x: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """Evaluation mode: the running statistics; training mode: the batch's mean and biased variance."""
    shape = (1, -1, 1, 1)
    if bn.training:
        n = x.shape[0] * x.shape[2] * x.shape[3]
        mean = x.sum(dim=(0, 2, 3)) / n
        var = ((x - mean.view(shape)) ** 2).sum(dim=(0, 2, 3)) / n
    else:
        mean, var = bn.running_mean, bn.running_var
    scale = bn.weight.view(shape) / torch.sqrt(var.view(shape) + 1e-5)
    return (x - mean.view(shape)) * scale + bn.bias.view(shape)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x / (1 + torch.exp(-x))


def _se(x: torch.Tensor, se: SqueezeExcitation) -> torch.Tensor:
    squeezed = x.sum(dim=(2, 3)) / (x.shape[2] * x.shape[3])
    hidden = torch.clamp(squeezed @ se.fc1.weight.T + se.fc1.bias, min=0)
    gate = 1 / (1 + torch.exp(-(hidden @ se.fc2.weight.T + se.fc2.bias)))
    return x * gate[:, :, None, None]


def _conv(x: torch.Tensor, conv: nn.Conv2d, *, stride: int = 1, padding: int = 0, groups: int = 1) -> torch.Tensor:
    return F.conv2d(x, conv.weight, conv.bias, stride=stride, padding=padding, groups=groups)


def _encoder_reference(cell: EncoderResidualCell, x: torch.Tensor, stride: int) -> torch.Tensor:
    """BN–Swish–Conv3×3 (stride)–BN–Swish–Conv3×3–SE, skip: identity or a 1×1 convolution of the same stride."""
    bn1, _, conv1, bn2, _, conv2, se = cell.branch
    h = _conv(_swish(_bn(x, bn1)), conv1, stride=stride, padding=1)
    h = _se(_conv(_swish(_bn(h, bn2)), conv2, padding=1), se)
    skip = x if isinstance(cell.skip, nn.Identity) else _conv(x, cell.skip, stride=stride)
    return skip + 0.1 * h


def _decoder_reference(cell: DecoderResidualCell, x: torch.Tensor, upsample: bool) -> torch.Tensor:
    """[nearest ×2] then BN–Conv1×1 (×E)–BN–Swish–depthwise Conv5×5–BN–Swish–Conv1×1–BN–SE, skip: identity or 1×1."""
    if upsample:
        x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    bn0, expand, bn1, _, depthwise, bn2, _, project, bn3, se = cell.branch
    h = _conv(_bn(x, bn0), expand)
    h = _swish(_bn(h, bn1))
    h = _swish(_bn(_conv(h, depthwise, padding=2, groups=h.shape[1]), bn2))
    h = _se(_bn(_conv(h, project), bn3), se)
    skip = x if isinstance(cell.skip, nn.Identity) else _conv(x, cell.skip)
    return skip + 0.1 * h


def _randomise(cell: nn.Module, gen: torch.Generator) -> nn.Module:
    """Random running statistics, affine BN parameters and weights (so every term shows in the output)."""
    with torch.no_grad():
        for m in cell.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64))
                m.running_var.copy_(0.2 + torch.rand(m.num_features, generator=gen, dtype=torch.float64) * 3)
                m.weight.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64))
                m.bias.copy_(torch.randn(m.num_features, generator=gen, dtype=torch.float64))
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=torch.float64) * 0.5)
                if m.bias is not None:
                    m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=torch.float64) * 0.5)
    return cell


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
    assert SqueezeExcitation(64).fc1.out_features == 4 and SqueezeExcitation(128).fc1.out_features == 8
    torch.testing.assert_close(y, _se(x, se))  # gates σ(W₂ ReLU(W₁ mean x + b₁) + b₂)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("downsample", [False, True])
def test_encoder_cell_matches_the_nvae_definition(downsample: bool, train: bool, gen: torch.Generator) -> None:
    cell = _randomise(EncoderResidualCell(4, 6, downsample=downsample).double(), gen)
    x = torch.randn(3, 4, 8, 8, generator=gen, dtype=torch.float64)
    stride = 2 if downsample else 1
    assert cell.branch[2].stride == (stride, stride) and cell.branch[2].kernel_size == (3, 3)
    assert isinstance(cell.skip, nn.Conv2d) and cell.skip.stride == (stride, stride)
    cell.train(train)
    expected = _encoder_reference(cell, x, stride)
    out = cell(x)
    assert out.shape == (3, 6, 8 // stride, 8 // stride)
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    same = _randomise(EncoderResidualCell(4).double(), gen).train(train)  # identity skip
    assert isinstance(same.skip, nn.Identity)
    torch.testing.assert_close(same(x), _encoder_reference(same, x, 1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("upsample", [False, True])
def test_decoder_cell_matches_the_nvae_definition(upsample: bool, train: bool, gen: torch.Generator) -> None:
    cell = _randomise(DecoderResidualCell(8, 4, expansion=3, upsample=upsample).double(), gen)
    x = torch.randn(2, 8, 4, 4, generator=gen, dtype=torch.float64)
    convs = [m for m in cell.branch if isinstance(m, nn.Conv2d)]
    assert [(c.kernel_size, c.out_channels, c.groups) for c in convs] == [
        ((1, 1), 12, 1),
        ((5, 5), 12, 12),
        ((1, 1), 4, 1),
    ]
    cell.train(train)
    expected = _decoder_reference(cell, x, upsample)
    out = cell(x)
    assert out.shape == ((2, 4, 8, 8) if upsample else (2, 4, 4, 4))
    torch.testing.assert_close(out, expected, rtol=1e-10, atol=1e-10)
    same = _randomise(DecoderResidualCell(8, expansion=2, upsample=upsample).double(), gen).train(train)
    assert isinstance(same.skip, nn.Identity)
    torch.testing.assert_close(same(x), _decoder_reference(same, x, upsample), rtol=1e-10, atol=1e-10)


def test_cell_batch_norms_keep_a_slow_running_average(gen: torch.Generator) -> None:
    """One training pass moves the running statistics by momentum 0.05 towards the batch mean and the unbiased
    batch variance (NVAE's slow average); evaluation passes leave them alone."""
    x = 2 + 3 * torch.randn(4, 4, 6, 6, generator=gen, dtype=torch.float64)
    for cell in (EncoderResidualCell(4).double(), DecoderResidualCell(4, expansion=2).double()):
        bn = cell.branch[0]
        cell.eval()(x)
        assert not bn.running_mean.any() and bool((bn.running_var == 1).all())
        cell.train()(x)
        n = 4 * 6 * 6
        mean = x.sum(dim=(0, 2, 3)) / n
        var = ((x - mean.view(1, -1, 1, 1)) ** 2).sum(dim=(0, 2, 3)) / (n - 1)
        torch.testing.assert_close(bn.running_mean, 0.05 * mean, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(bn.running_var, 0.95 + 0.05 * var, rtol=1e-12, atol=1e-12)


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
