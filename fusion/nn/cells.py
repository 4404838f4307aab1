"""NVAE-style building blocks (Vahdat & Kautz 2020) used by FusionVAE and its baselines (paper supplement A).

- :class:`EncoderResidualCell`: BN–Swish–Conv3×3–BN–Swish–Conv3×3–SE on a residual branch; the stride-2 variant
  halves the resolution and takes a strided 1×1 convolution on the skip path.
- :class:`DecoderResidualCell`: BN–Conv1×1 (expand ×E)–BN–Swish–depthwise Conv5×5–BN–Swish–Conv1×1–BN–SE; the
  upsampling variant first doubles the resolution by nearest-neighbour interpolation.
- :class:`SpectralRegulariser` / :func:`spectral_regularisation`: NVAE's spectral regulariser, the sum over all
  convolutions of the largest singular value of the weight (as a ``out × in·k·k`` matrix), estimated by power
  iteration with persistent vectors.

Residual branches are scaled by :data:`RESIDUAL_SCALE` (0.1, as in NVAE) so that a freshly initialised cell is
close to its skip path, which keeps deep stacks stable.
"""

from __future__ import annotations

from collections.abc import MutableMapping

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "DecoderResidualCell",
    "EncoderResidualCell",
    "SpectralRegulariser",
    "SqueezeExcitation",
    "Swish",
    "spectral_regularisation",
]

#: Weight of the residual branch in every cell.
RESIDUAL_SCALE = 0.1
#: Momentum of the batch normalisations (NVAE uses a slow running average).
BN_MOMENTUM = 0.05


def check_positive_int(value: int, name: str) -> int:
    """``value`` when it is a positive ``int`` (not a bool); ``ValueError`` naming ``name`` otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_fusion_inputs(inputs: torch.Tensor, target: torch.Tensor | None, in_channels: int, image_size: int) -> None:
    """Check ``inputs`` ``(B, K, C, S, S)`` and ``target`` ``(B, C, S, S)`` against a network's ``C`` and ``S``."""
    image = (in_channels, image_size, image_size)
    if not isinstance(inputs, torch.Tensor) or inputs.dim() != 5 or tuple(inputs.shape[2:]) != image:
        shape = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be (B, K, {', '.join(map(str, image))}), got {shape}")
    if target is not None and (
        not isinstance(target, torch.Tensor)
        or target.dim() != 4
        or tuple(target.shape[1:]) != image
        or target.shape[0] != inputs.shape[0]
    ):
        shape = tuple(target.shape) if isinstance(target, torch.Tensor) else type(target).__name__
        raise ValueError(f"target must be (B={inputs.shape[0]}, {', '.join(map(str, image))}), got {shape}")


class Swish(nn.SiLU):
    """Swish activation ``x · σ(x)`` (Ramachandran et al. 2018), i.e. SiLU."""


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channel gates ``σ(W₂ ReLU(W₁ mean_{h,w} x))`` multiply ``x``.

    Args:
        channels: input and output channels.
        reduction: hidden width is ``max(channels // reduction, min_hidden)``.
        min_hidden: smallest hidden width.

    Example:
        >>> SqueezeExcitation(8)(torch.rand(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, channels: int, reduction: int = 16, min_hidden: int = 4) -> None:
        super().__init__()
        check_positive_int(channels, "channels")
        check_positive_int(reduction, "reduction")
        hidden = max(channels // reduction, check_positive_int(min_hidden, "min_hidden"))
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None].to(x.dtype)


class EncoderResidualCell(nn.Module):
    """Encoder residual cell: ``skip(x) + 0.1 · SE(Conv3×3(Swish(BN(Conv3×3(Swish(BN(x)))))))``.

    Args:
        channels: input channels.
        out_channels: output channels (default ``channels``).
        downsample: the first convolution has stride 2 and the skip is a stride-2 1×1 convolution (needs even
            ``H``, ``W``).

    Shapes:
        ``(B, channels, H, W)`` → ``(B, out_channels, H', W')`` with ``H' = H/2`` when downsampling.

    Example:
        >>> EncoderResidualCell(4, 8, downsample=True)(torch.rand(2, 4, 8, 8)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, channels: int, out_channels: int | None = None, *, downsample: bool = False) -> None:
        super().__init__()
        check_positive_int(channels, "channels")
        out_channels = channels if out_channels is None else check_positive_int(out_channels, "out_channels")
        stride = 2 if downsample else 1
        self.downsample = bool(downsample)
        self.branch = nn.Sequential(
            nn.BatchNorm2d(channels, momentum=BN_MOMENTUM),
            Swish(),
            nn.Conv2d(channels, out_channels, 3, stride=stride, padding=1),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            Swish(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
            SqueezeExcitation(out_channels),
        )
        if downsample or out_channels != channels:
            self.skip: nn.Module = nn.Conv2d(channels, out_channels, 1, stride=stride)
        else:
            self.skip = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + RESIDUAL_SCALE * self.branch(x)


class DecoderResidualCell(nn.Module):
    """Decoder residual cell with an inverted bottleneck and a depthwise 5×5 convolution (NVAE's generative cell).

    ``skip(x) + 0.1 · SE(BN(Conv1×1(Swish(BN(DWConv5×5(Swish(BN(Conv1×1(BN(x))))))))))``, the first 1×1
    convolution expanding to ``expansion · out_channels`` channels. With ``upsample`` the input is first enlarged ×2
    by nearest-neighbour interpolation (both paths); a 1×1 convolution adapts the skip when the width changes.

    Args:
        channels: input channels.
        out_channels: output channels (default ``channels``).
        expansion: width factor ``E`` of the inverted bottleneck (NVAE: 6).
        upsample: double ``H`` and ``W``.

    Example:
        >>> DecoderResidualCell(8, 4, upsample=True, expansion=2)(torch.rand(2, 8, 4, 4)).shape
        torch.Size([2, 4, 8, 8])
    """

    def __init__(
        self, channels: int, out_channels: int | None = None, *, expansion: int = 6, upsample: bool = False
    ) -> None:
        super().__init__()
        check_positive_int(channels, "channels")
        out_channels = channels if out_channels is None else check_positive_int(out_channels, "out_channels")
        hidden = check_positive_int(expansion, "expansion") * out_channels
        self.upsample = bool(upsample)
        self.branch = nn.Sequential(
            nn.BatchNorm2d(channels, momentum=BN_MOMENTUM),
            nn.Conv2d(channels, hidden, 1),
            nn.BatchNorm2d(hidden, momentum=BN_MOMENTUM),
            Swish(),
            nn.Conv2d(hidden, hidden, 5, padding=2, groups=hidden),
            nn.BatchNorm2d(hidden, momentum=BN_MOMENTUM),
            Swish(),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels, momentum=BN_MOMENTUM),
            SqueezeExcitation(out_channels),
        )
        self.skip: nn.Module = nn.Conv2d(channels, out_channels, 1) if out_channels != channels else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.upsample:
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.skip(x) + RESIDUAL_SCALE * self.branch(x)


# --------------------------------------------------------------------------------------------------------------
# Spectral regularisation
def _conv_weights(module: nn.Module) -> dict[tuple[int, int], list[torch.Tensor]]:
    """Convolution weights of ``module`` as ``out × in·k·k`` matrices, grouped by matrix shape (module order)."""
    groups: dict[tuple[int, int], list[torch.Tensor]] = {}
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            w = m.weight.reshape(m.weight.shape[0], -1)
            groups.setdefault(tuple(w.shape), []).append(w)
    return groups


def _normalise(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1, eps=1e-12)


def spectral_regularisation(
    module: nn.Module, state: MutableMapping[str, torch.Tensor], power_iterations: int = 1
) -> torch.Tensor:
    """NVAE's spectral regulariser ``Σ_conv σ_max(W)``, differentiable in the weights.

    Each convolution weight is read as a matrix ``W`` of shape ``(out, in·k·k)``; its largest singular value is
    estimated by ``power_iterations`` steps of the power method, ``v ← Wᵀu/‖Wᵀu‖, u ← Wv/‖Wv‖``, started from the
    vectors kept in ``state`` (updated in place, no gradient), and ``σ ≈ uᵀWv`` carries the gradient. Weights with
    the same matrix shape are processed together as one batch. Missing or mis-shaped entries of ``state`` are
    (re)initialised at random and refined with at least 10 iterations. The computation runs in float32 or
    float64 with autocast disabled.

    Args:
        module: network whose ``nn.Conv2d`` weights are regularised.
        state: mapping from ``"u_{out}x{in}"``/``"v_{out}x{in}"`` to ``(n, out)``/``(n, in)`` vectors (e.g. the
            buffers of :class:`SpectralRegulariser`, or a plain dict).
        power_iterations: power-method steps per call.

    Returns:
        Scalar tensor (zero when ``module`` has no convolution).

    Example:
        >>> conv = nn.Conv2d(2, 3, 1)
        >>> est = spectral_regularisation(conv, {}, power_iterations=50)
        >>> bool(torch.isclose(est, torch.linalg.matrix_norm(conv.weight.reshape(3, 2), 2), rtol=1e-4))
        True
    """
    check_positive_int(power_iterations, "power_iterations")
    groups = _conv_weights(module)
    if not groups:
        p = next(module.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    total = []
    for (rows, cols), weights in groups.items():
        device_type = weights[0].device.type
        with torch.autocast(device_type=device_type, enabled=False):
            w = torch.stack(weights).to(torch.promote_types(weights[0].dtype, torch.float32))
            ku, kv = f"u_{rows}x{cols}", f"v_{rows}x{cols}"
            u, v = state.get(ku), state.get(kv)
            steps = power_iterations
            fresh = u is None or v is None or u.shape != (len(weights), rows) or v.shape != (len(weights), cols)
            if fresh:
                u = _normalise(torch.randn(len(weights), rows, device=w.device, dtype=w.dtype))
                v = _normalise(torch.randn(len(weights), cols, device=w.device, dtype=w.dtype))
                steps = max(steps, 10)
            with torch.no_grad():
                wd = w.detach()
                uu, vv = u.to(w.dtype), v.to(w.dtype)
                for _ in range(steps):
                    vv = _normalise(torch.bmm(uu.unsqueeze(1), wd).squeeze(1))
                    uu = _normalise(torch.bmm(wd, vv.unsqueeze(2)).squeeze(2))
            if fresh:
                state[ku], state[kv] = uu, vv
            else:
                u.copy_(uu)
                v.copy_(vv)
            sigma = torch.einsum("no,noi,ni->n", uu, w, vv)
            total.append(sigma.sum())
    return torch.stack(total).sum()


class SpectralRegulariser(nn.Module):
    """Holds the power-iteration vectors of :func:`spectral_regularisation` as buffers (so they are saved in
    checkpoints and follow ``.to(device)``) and returns the regulariser when called.

    The watched network is not registered as a submodule (its parameters are not duplicated in the state dict).

    Args:
        module: the network to regularise.
        power_iterations: power-method steps per call.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.Conv2d(4, 4, 3))
        >>> reg = SpectralRegulariser(net)
        >>> reg().shape, sorted(name for name, _ in reg.named_buffers())
        (torch.Size([]), ['u_4x36', 'u_4x9', 'v_4x36', 'v_4x9'])
    """

    def __init__(self, module: nn.Module, power_iterations: int = 1) -> None:
        super().__init__()
        if not isinstance(module, nn.Module):
            raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        self.power_iterations = check_positive_int(power_iterations, "power_iterations")
        object.__setattr__(self, "_watched", (module,))  # a plain reference, not a submodule
        state: dict[str, torch.Tensor] = {}
        with torch.no_grad():
            spectral_regularisation(module, state, power_iterations=1)
        for name, tensor in state.items():
            self.register_buffer(name, tensor.detach().clone())

    def forward(self) -> torch.Tensor:
        state = _BufferView(self)
        return spectral_regularisation(self._watched[0], state, self.power_iterations)


class _BufferView(MutableMapping):
    """Dict-like view of a module's buffers; new keys become new buffers."""

    def __init__(self, owner: nn.Module) -> None:
        self.owner = owner

    def __getitem__(self, key: str) -> torch.Tensor:
        return self.owner._buffers[key]

    def __setitem__(self, key: str, value: torch.Tensor) -> None:
        self.owner._buffers[key] = value.detach()

    def __delitem__(self, key: str) -> None:
        del self.owner._buffers[key]

    def __iter__(self):
        return iter(self.owner._buffers)

    def __len__(self) -> int:
        return len(self.owner._buffers)
