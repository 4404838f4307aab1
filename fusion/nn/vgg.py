"""VGG16 feature extractor (Simonyan & Zisserman 2015) for perceptual losses, with explicit weight loading.

The convolutional trunk is torchvision's VGG16 ("configuration D"), truncated after the deepest layer asked for.
Inputs are images in [0, 1]; the ImageNet mean and standard deviation are applied inside. Activations are taken
after each convolution's ReLU and named after the convolution (``"conv2_2"`` is the ReLU output of the second
convolution of block 2), the naming used by style-transfer papers.

Weights never come from the network here: they are read from a local file, from the torch hub cache, or drawn
at random (for tests and for runs where the quality of the result does not matter).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
import torch.nn as nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VGG16_FILENAME",
    "VGG16_LAYERS",
    "VGG16Features",
    "default_vgg16_path",
    "load_vgg16_state_dict",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: File name of torchvision's ImageNet VGG16 weights (``VGG16_Weights.IMAGENET1K_V1``) in the hub cache.
VGG16_FILENAME = "vgg16-397923af.pth"
_VGG16_URL = f"https://download.pytorch.org/models/{VGG16_FILENAME}"

#: Convolution name → index of its ReLU in ``torchvision.models.vgg16().features``.
VGG16_LAYERS: dict[str, int] = {
    "conv1_1": 1,
    "conv1_2": 3,
    "conv2_1": 6,
    "conv2_2": 8,
    "conv3_1": 11,
    "conv3_2": 13,
    "conv3_3": 15,
    "conv4_1": 18,
    "conv4_2": 20,
    "conv4_3": 22,
    "conv5_1": 25,
    "conv5_2": 27,
    "conv5_3": 29,
}
_POOLS_BEFORE = {name: int(name[4]) - 1 for name in VGG16_LAYERS}


def default_vgg16_path() -> Path:
    """Where torchvision caches its ImageNet VGG16 weights: ``<torch hub dir>/checkpoints/vgg16-397923af.pth``.

    The hub directory is ``$TORCH_HOME/hub`` (``~/.cache/torch/hub`` by default), see ``torch.hub.get_dir``.
    """
    return Path(torch.hub.get_dir()) / "checkpoints" / VGG16_FILENAME


def _missing_weights_message(path: Path) -> str:
    return (
        f"VGG16 ImageNet weights not found at {path}; download {_VGG16_URL} and place it there, "
        "or pass vgg_weights=PATH to a local copy (vgg_weights='random' runs with random weights, "
        "for tests only: results are then meaningless)"
    )


def load_vgg16_state_dict(vgg_weights: str | os.PathLike[str] | None) -> dict[str, torch.Tensor]:
    """Read VGG16 weights into a state dict of the convolutional trunk (keys ``"0.weight"``, ``"0.bias"``, ...).

    Args:
        vgg_weights: a path to a file saved with ``torch.save`` holding either a full ``torchvision`` VGG16 state
            dict (keys ``"features.N.weight"``, the format of torchvision's download) or the trunk's state dict
            (keys ``"N.weight"``); or ``None`` for torchvision's cache (:func:`default_vgg16_path`). The file is
            read with ``weights_only=True``: it must hold tensors only, no pickled code.

    Returns:
        The trunk's tensors, on the CPU; classifier weights, if any, are dropped.

    Raises:
        FileNotFoundError: the file does not exist (the message says where to put the weights).
        ValueError: the file cannot be read as a state dict or holds no VGG16 convolution weights.

    Example:
        >>> import tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "vgg.pth")
        >>> torch.save(VGG16Features("random", layers=("conv1_1",)).features.state_dict(), path)
        >>> sorted(load_vgg16_state_dict(path))
        ['0.bias', '0.weight']
    """
    path = default_vgg16_path() if vgg_weights is None else Path(vgg_weights)
    if not path.is_file():
        raise FileNotFoundError(_missing_weights_message(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # unpickling errors come in many types; all mean "not a plain state dict"
        raise ValueError(f"cannot read VGG16 weights from {path} as a state dict of tensors: {err}") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"VGG16 weights file {path} holds a {type(state).__name__}, expected a state dict")
    trunk = {}
    for key, value in state.items():
        if not isinstance(key, str) or not isinstance(value, torch.Tensor):
            continue
        name = key[len("features.") :] if key.startswith("features.") else key
        index, _, kind = name.partition(".")
        if index.isdigit() and kind in ("weight", "bias"):
            trunk[name] = value
    if not trunk:
        raise ValueError(f"VGG16 weights file {path} has no convolution weights ('features.N.weight' keys)")
    return trunk


def _random_init(module: nn.Module, generator: torch.Generator) -> None:
    # He initialisation (fan-out, as torchvision uses for VGG) drawn from a seeded generator.
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            fan_out = layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
            with torch.no_grad():
                layer.weight.copy_(torch.randn(layer.weight.shape, generator=generator) * (2.0 / fan_out) ** 0.5)
                layer.bias.zero_()


class VGG16Features(nn.Module):
    """Frozen VGG16 trunk returning the ReLU activations of named convolutions.

    Args:
        vgg_weights: where the weights come from — a path to a local file (see :func:`load_vgg16_state_dict`);
            ``None`` for torchvision's cache (:func:`default_vgg16_path`; a clear ``FileNotFoundError`` when the
            file is not there); or ``"random"``: He-initialised random weights from ``seed``. Random weights
            are meant for tests and for runs where the quality of the result does not matter: losses built on
            them are well defined and differentiable but carry no ImageNet semantics.
        layers: names from :data:`VGG16_LAYERS` the forward pass returns by default, in this order; the trunk
            is cut after the deepest one.
        seed: seed of the random weights (``vgg_weights="random"`` only).

    Forward:
        ``x``: ``(B, 3, H, W)`` images in [0, 1] (``(B, 1, H, W)`` is repeated to RGB), ``H, W ≥ 2**k`` for
        ``k`` max-pooling steps before the deepest layer. ``layers`` (optional): a subset of the module's layers;
        the pass stops after the deepest of them. Returns a list of ``(B, N_l, H_l, W_l)`` activations in the
        order of ``layers``.

    The parameters never require gradients; gradients flow to the input only. Move the module with ``.to()``
    like any other (its dtype follows; under ``torch.autocast`` the convolutions run in reduced precision).

    Example:
        >>> vgg = VGG16Features("random", layers=("conv1_2", "conv2_2"))
        >>> [tuple(f.shape) for f in vgg(torch.rand(2, 3, 16, 20))]
        [(2, 64, 16, 20), (2, 128, 8, 10)]
    """

    def __init__(
        self,
        vgg_weights: str | os.PathLike[str] | None = None,
        layers: Sequence[str] = ("conv1_2", "conv2_2", "conv3_3", "conv4_3"),
        *,
        seed: int = 0,
    ) -> None:
        super().__init__()
        layers = tuple(layers)
        if not layers:
            raise ValueError("layers must name at least one VGG16 layer")
        unknown = [name for name in layers if name not in VGG16_LAYERS]
        if unknown:
            raise ValueError(f"unknown VGG16 layer(s) {unknown}; expected names from {list(VGG16_LAYERS)}")
        self.layers = layers
        last = max(VGG16_LAYERS[name] for name in layers)
        from torchvision.models.vgg import cfgs, make_layers  # imported here: torchvision.models takes a second

        trunk = make_layers(cfgs["D"], batch_norm=False)[: last + 1]
        if isinstance(vgg_weights, str) and vgg_weights == "random":
            _random_init(trunk, torch.Generator().manual_seed(seed))
        elif vgg_weights is None or isinstance(vgg_weights, (str, os.PathLike)):
            state = load_vgg16_state_dict(vgg_weights)
            own = trunk.state_dict()
            missing = [key for key in own if key not in state]
            if missing:
                raise ValueError(f"VGG16 weights lack {len(missing)} tensor(s) the trunk needs, e.g. {missing[0]!r}")
            for key, value in own.items():
                if state[key].shape != value.shape:
                    raise ValueError(
                        f"VGG16 weight {key!r} has shape {tuple(state[key].shape)}, expected {tuple(value.shape)}"
                    )
            trunk.load_state_dict({key: state[key] for key in own})
        else:
            raise TypeError(
                f"vgg_weights must be a path, None or 'random', got {type(vgg_weights).__name__} {vgg_weights!r}"
            )
        self.features = trunk.eval()
        self.features.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def min_size(self, layers: Sequence[str] | None = None) -> int:
        """Smallest image side the pass to ``layers`` (default: the module's) accepts: 2 ** (max-pools on the way)."""
        return 2 ** max(_POOLS_BEFORE[name] for name in (layers or self.layers))

    def train(self, mode: bool = True) -> VGG16Features:
        # The trunk has no dropout or batch norm, but keep it in eval mode whatever the caller does.
        super().train(mode)
        self.features.eval()
        return self

    def forward(self, x: torch.Tensor, layers: Sequence[str] | None = None) -> list[torch.Tensor]:
        names = self.layers if layers is None else tuple(layers)
        wanted = {VGG16_LAYERS[name]: name for name in names}
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        h = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        if x.is_cuda:
            h = h.contiguous(memory_format=torch.channels_last)
        found: dict[str, torch.Tensor] = {}
        last = max(wanted)
        if last >= len(self.features):
            raise ValueError(f"layers {list(names)} go deeper than this extractor's {list(self.layers)}")
        for index, layer in enumerate(self.features):
            h = layer(h)
            if index in wanted:
                found[wanted[index]] = h
            if index == last:
                break
        return [found[name] for name in names]
