"""VGG16 feature extractor: architecture, weight loading from files and the hub cache, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fusion.nn.vgg import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG16_FILENAME,
    VGG16_LAYERS,
    VGG16Features,
    default_vgg16_path,
    load_vgg16_state_dict,
)

# (in, out) channels of VGG16's 13 convolutions and their indices in torchvision's ``features``
CONVS = [(3, 64), (64, 64), (64, 128), (128, 128), (128, 256), (256, 256), (256, 256)]
CONV_INDEX = [0, 2, 5, 7, 10, 12, 14]
POOL_AFTER = {2, 7}  # max-pool after features[3] and features[8] (ReLUs of conv1_2 and conv2_2)


def _random_torchvision_state(gen: torch.Generator, prefix: str = "features.") -> dict[str, torch.Tensor]:
    """The first seven convolutions (up to conv3_3) in torchvision's key format, plus a classifier tensor."""
    state = {}
    for (cin, cout), idx in zip(CONVS, CONV_INDEX):
        state[f"{prefix}{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=gen) * (2 / (9 * cout)) ** 0.5
        state[f"{prefix}{idx}.bias"] = torch.randn(cout, generator=gen) * 0.1
    state["classifier.0.weight"] = torch.zeros(2, 2)
    return state


def _reference_features(state: dict[str, torch.Tensor], x: torch.Tensor, prefix: str = "features.") -> dict:
    """conv1_2, conv2_2 and conv3_3 ReLU activations computed directly with F.conv2d / F.relu / F.max_pool2d."""
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    h = (x - mean) / std
    out = {}
    names = {2: "conv1_2", 7: "conv2_2", 14: "conv3_3"}
    for idx in CONV_INDEX:
        h = F.relu(F.conv2d(h, state[f"{prefix}{idx}.weight"], state[f"{prefix}{idx}.bias"], padding=1))
        if idx in names:
            out[names[idx]] = h
        if idx in POOL_AFTER:
            h = F.max_pool2d(h, 2)
    return out


LAYERS = ("conv1_2", "conv2_2", "conv3_3")


def test_random_weights_shapes_any_size_and_frozen():
    vgg = VGG16Features("random", layers=("conv1_2", "conv2_2", "conv3_3", "conv4_3"))
    x = torch.rand(2, 3, 19, 26, requires_grad=True)
    feats = vgg(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 19, 26), (2, 128, 9, 13), (2, 256, 4, 6), (2, 512, 2, 3)]
    assert all(not p.requires_grad for p in vgg.parameters())
    sum(f.sum() for f in feats).backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    # the trunk stops at conv4_3's ReLU: 23 modules of torchvision's 31
    assert len(vgg.features) == 23
    # a subset of layers, in the order asked for
    sub = vgg(x.detach(), ["conv2_2", "conv1_2"])
    torch.testing.assert_close(sub[0], feats[1])
    torch.testing.assert_close(sub[1], feats[0])
    # seeded: same seed, same weights; another seed, other weights
    same = VGG16Features("random", layers=("conv1_1",))
    other = VGG16Features("random", layers=("conv1_1",), seed=1)
    assert torch.equal(same.features[0].weight, vgg.features[0].weight)
    assert not torch.equal(other.features[0].weight, vgg.features[0].weight)


# VGG16 ("configuration D", Simonyan & Zisserman 2015, Table 1): conv3 channels per block, a 2x2 max-pool after
# each block. The ImageNet statistics torchvision's weights were trained with.
BLOCKS = [(1, [64, 64]), (2, [128, 128]), (3, [256, 256, 256]), (4, [512, 512, 512]), (5, [512, 512, 512])]
PUBLISHED_MEAN, PUBLISHED_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_every_named_layer_is_the_relu_of_that_convolution():
    # the whole trunk rebuilt from the architecture table with F.conv2d on the module's own weights, in float64
    vgg = VGG16Features("random", layers=("conv5_3",)).double()
    convs = iter(m for m in vgg.features if isinstance(m, torch.nn.Conv2d))
    x = torch.rand(2, 3, 37, 45, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    mean = torch.tensor(PUBLISHED_MEAN, dtype=torch.float64).view(1, 3, 1, 1)
    std = torch.tensor(PUBLISHED_STD, dtype=torch.float64).view(1, 3, 1, 1)
    h, expected, pools = (x - mean) / std, {}, {}
    for block, widths in BLOCKS:
        for i, width in enumerate(widths, start=1):
            conv = next(convs)
            assert conv.out_channels == width and conv.kernel_size == (3, 3) and conv.padding == (1, 1)
            h = F.relu(F.conv2d(h, conv.weight, conv.bias, padding=1))
            expected[f"conv{block}_{i}"] = h
            pools[f"conv{block}_{i}"] = block - 1
        h = F.max_pool2d(h, 2)
    names = list(expected)
    assert sorted(names) == sorted(VGG16_LAYERS)
    for name, got in zip(names, vgg(x, names)):
        # the module keeps the normalisation constants as float32 buffers (0.485 is 0.48500001…): 1e-7 apart
        torch.testing.assert_close(got, expected[name], rtol=1e-6, atol=1e-6)
        # the smallest side the pass to a layer accepts is 2 ** (pools before it)
        assert vgg.min_size([name]) == 2 ** pools[name]
    assert IMAGENET_MEAN == PUBLISHED_MEAN and IMAGENET_STD == PUBLISHED_STD
    # random weights are He-initialised (fan-out, zero bias) like torchvision's, from the seed
    for conv in (m for m in vgg.features if isinstance(m, torch.nn.Conv2d)):
        assert float(conv.bias.abs().max()) == 0.0
        fan_out = conv.out_channels * 9
        assert float(conv.weight.std()) == pytest.approx((2 / fan_out) ** 0.5, rel=0.1)


def test_grayscale_is_repeated_to_rgb():
    vgg = VGG16Features("random", layers=("conv1_2",))
    gray = torch.rand(1, 1, 10, 12)
    torch.testing.assert_close(vgg(gray)[0], vgg(gray.expand(-1, 3, -1, -1))[0])


@pytest.mark.parametrize("prefix", ["features.", ""])
def test_loads_local_file_like_the_direct_computation(tmp_path: Path, gen, prefix: str):
    state = _random_torchvision_state(gen, prefix)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    vgg = VGG16Features(path, layers=LAYERS)
    x = torch.rand(2, 3, 17, 22, generator=gen)
    expected = _reference_features(state, x, prefix)
    for name, got in zip(LAYERS, vgg(x)):
        torch.testing.assert_close(got, expected[name], rtol=1e-4, atol=1e-5)
    trunk = load_vgg16_state_dict(str(path))
    assert "classifier.0.weight" not in trunk and "0.weight" in trunk


def test_none_reads_the_torchvision_cache(tmp_path: Path, monkeypatch, gen):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected_path = tmp_path / "hub" / "checkpoints" / VGG16_FILENAME
    assert default_vgg16_path() == expected_path
    with pytest.raises(FileNotFoundError) as err:
        VGG16Features(None, layers=LAYERS)
    message = str(err.value)
    assert str(expected_path) in message and "vgg_weights=PATH" in message and "download" in message
    assert "\n" not in message

    state = _random_torchvision_state(gen)
    expected_path.parent.mkdir(parents=True)
    torch.save(state, expected_path)
    vgg = VGG16Features(None, layers=LAYERS)
    torch.testing.assert_close(vgg.features[0].weight, state["features.0.weight"])


def test_missing_file_error_names_the_path(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        VGG16Features(tmp_path / "nowhere.pth")


class _NotATensor:
    pass


def test_bad_weight_files(tmp_path: Path, gen):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read VGG16 weights"):
        VGG16Features(junk)
    # weights_only=True refuses arbitrary pickled objects
    code = tmp_path / "code.pth"
    torch.save({"features.0.weight": _NotATensor()}, code)
    with pytest.raises(ValueError, match="cannot read VGG16 weights"):
        load_vgg16_state_dict(code)
    listed = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listed)
    with pytest.raises(ValueError, match="expected a state dict"):
        load_vgg16_state_dict(listed)
    empty = tmp_path / "empty.pth"
    torch.save({"classifier.0.weight": torch.zeros(1)}, empty)
    with pytest.raises(ValueError, match="no convolution weights"):
        load_vgg16_state_dict(empty)
    short = tmp_path / "short.pth"
    torch.save(_random_torchvision_state(gen), short)  # up to conv3_3 only
    with pytest.raises(ValueError, match="lack"):
        VGG16Features(short, layers=("conv4_3",))
    wrong = _random_torchvision_state(gen)
    wrong["features.0.weight"] = torch.zeros(64, 3, 5, 5)
    torch.save(wrong, tmp_path / "wrong.pth")
    with pytest.raises(ValueError, match="shape"):
        VGG16Features(tmp_path / "wrong.pth", layers=LAYERS)


def test_bad_arguments():
    with pytest.raises(TypeError, match="vgg_weights"):
        VGG16Features(3)
    with pytest.raises(ValueError, match="unknown VGG16 layer"):
        VGG16Features("random", layers=("conv6_1",))
    vgg = VGG16Features("random", layers=("conv1_2",))
    with pytest.raises(ValueError, match="deeper"):
        vgg(torch.rand(1, 3, 8, 8), ["conv2_2"])
    assert vgg.min_size() == 1 and vgg.min_size(["conv4_3"]) == 8


@pytest.mark.gpu
def test_cuda_channels_last_matches_cpu():
    vgg = VGG16Features("random", layers=LAYERS)
    x = torch.rand(1, 3, 33, 40)
    expected = vgg(x)
    got = vgg.to("cuda").to(memory_format=torch.channels_last)(x.cuda())
    for a, b in zip(got, expected):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-2, atol=1e-2)  # TF32 convolutions
