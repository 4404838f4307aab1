"""The Deep Image Blending losses against hand-computed values, NumPy/SciPy references and gradcheck."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage import data

from fusion.nn.losses import (
    ContentLoss,
    HistogramLoss,
    PoissonGradientLoss,
    StyleLoss,
    TVLoss,
    gram_matrix,
    match_histograms,
    sorted_features,
)
from tests.conftest import tol_for
from tests.reference import perez_reference


def _photo(which: str, h: int, w: int, dtype=torch.float64) -> torch.Tensor:
    image = torch.from_numpy(getattr(data, which)()).permute(2, 0, 1)[None].to(dtype) / 255
    return F.interpolate(image, size=(h, w), mode="area")


# ----------------------------------------------------------------------------------------------------------
# Hand-computed values on tiny inputs
# ----------------------------------------------------------------------------------------------------------
def test_gram_matrix_hand_value(dtype):
    # one sample, N = 2 channels, M = 2 positions: F = [[1, 2], [3, 4]]
    feats = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]], dtype=dtype)
    expected = torch.tensor([[[5.0, 11.0], [11.0, 25.0]]], dtype=dtype) / 4  # F Fᵀ / (N M)
    torch.testing.assert_close(gram_matrix(feats), expected)


def test_style_loss_hand_value(dtype):
    feats = torch.tensor([[[[1.0, 2.0]], [[3.0, 4.0]]]], dtype=dtype)
    target = torch.zeros(1, 2, 2, dtype=dtype)
    # G = [[1.25, 2.75], [2.75, 6.25]]; Σ G² = 1.5625 + 2·7.5625 + 39.0625 = 55.75; β / (2 N²) = β / 8
    loss = StyleLoss(layer_weights=[2.0])([feats], [target])
    torch.testing.assert_close(loss, torch.tensor([2.0 * 55.75 / 8], dtype=dtype))
    # a second layer adds its own term; a zero difference contributes nothing
    both = StyleLoss(layer_weights=[2.0, 5.0])([feats, feats], [target, gram_matrix(feats)])
    torch.testing.assert_close(both, loss)


def test_content_loss_hand_value(dtype):
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], dtype=dtype)  # N = 1, M = 4
    y = torch.tensor([[[[0.0, 2.0], [5.0, 4.0]]]], dtype=dtype)
    # Σ (x − y)² = 1 + 0 + 4 + 0 = 5; α / (2 N M) = α / 8
    torch.testing.assert_close(ContentLoss()([x], [y]), torch.tensor([5 / 8], dtype=dtype))
    # mask at twice the feature resolution: area-averaged to [[1, 0.5], [0, 0]] → (1·1)² + 0 + 0 + 0 = 1
    mask = torch.zeros(1, 1, 4, 4, dtype=dtype)
    mask[..., :2, :] = 1
    mask[..., :2, 2:] = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=dtype)
    torch.testing.assert_close(ContentLoss([3.0])([x], [y], mask), torch.tensor([3 * 1 / 8], dtype=dtype))


def test_histogram_loss_hand_value(dtype):
    x = torch.tensor([[[[3.0, 1.0], [2.0, 0.0]]]], dtype=dtype)  # ranks: 3 → 4th, 1 → 2nd, 2 → 3rd, 0 → 1st
    target = torch.tensor([[[10.0, 20.0, 30.0, 40.0]]], dtype=dtype)
    remapped = torch.tensor([[[[40.0, 20.0], [30.0, 10.0]]]], dtype=dtype)
    torch.testing.assert_close(match_histograms(x, target), remapped)
    # Σ (x − R)² = 37² + 19² + 28² + 10² = 1369 + 361 + 784 + 100 = 2614; γ / (2 N M) = γ / 8
    torch.testing.assert_close(HistogramLoss()([x], [target]), torch.tensor([2614 / 8], dtype=dtype))
    # target of another size: quantiles at fractional positions 0, 1/3, 2/3, 1 of [0, 6, 12] → 0, 4, 8, 12
    other = torch.tensor([[[0.0, 6.0, 12.0]]], dtype=dtype)
    torch.testing.assert_close(match_histograms(x, other), torch.tensor([[[[12.0, 4.0], [8.0, 0.0]]]], dtype=dtype))


def test_tv_loss_hand_value(dtype):
    image = torch.tensor([[[[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]]]], dtype=dtype)
    # vertical |2−0| + |2−1| + |0−3| = 6; horizontal |1−0| + |3−1| + |2−2| + |0−2| = 5
    torch.testing.assert_close(TVLoss()(image), torch.tensor([11.0], dtype=dtype))


def test_poisson_loss_hand_value(dtype):
    # 1 channel, 3x3, Neumann Laplacian. The blend is 1 at the centre and 0 elsewhere: ΔI_B has -4 at the
    # centre and +1 at its four neighbours. Source and target are constant (zero Laplacians).
    blend = torch.zeros(1, 1, 3, 3, dtype=dtype)
    blend[..., 1, 1] = 1
    zeros = torch.zeros_like(blend)
    mask = torch.zeros_like(blend)
    mask[..., 1, 1] = 1
    # inside the mask only the centre counts: 16 / (2·9)
    torch.testing.assert_close(PoissonGradientLoss()(blend, zeros, zeros, mask), torch.tensor([16 / 18], dtype=dtype))
    # over the image: 16 + 4·1 = 20
    torch.testing.assert_close(
        PoissonGradientLoss(region="image")(blend, zeros, zeros, mask), torch.tensor([20 / 18], dtype=dtype)
    )


# ----------------------------------------------------------------------------------------------------------
# Poisson loss: zero exactly at Pérez's solution, the loss formula against NumPy
# ----------------------------------------------------------------------------------------------------------
def _numpy_laplacian(u: np.ndarray) -> np.ndarray:
    p = np.pad(u, 1, mode="edge")
    return p[:-2, 1:-1] + p[2:, 1:-1] + p[1:-1, :-2] + p[1:-1, 2:] - 4 * u


def test_poisson_loss_zero_exactly_at_the_poisson_solution():
    h, w = 18, 22
    fg, bg = _photo("astronaut", h, w), _photo("coffee", h, w)
    region = np.zeros((h, w), bool)
    region[4:14, 5:17] = True
    region[8:11, 2:5] = True  # not convex
    mask = torch.from_numpy(region)[None, None].double()
    blend = np.stack([perez_reference(fg[0, c].numpy(), bg[0, c].numpy(), region) for c in range(3)])
    blend_t = torch.from_numpy(blend)[None]
    loss = PoissonGradientLoss()
    assert loss(blend_t, fg, bg, mask).item() < 1e-24  # SciPy's direct solve: zero up to round-off

    # the loss is exactly the squared Laplacian mismatch on the mask, for any blend
    rng = np.random.default_rng(0)
    for _ in range(3):
        other = blend + rng.normal(scale=0.05, size=blend.shape)
        expected = sum(
            ((_numpy_laplacian(other[c]) - _numpy_laplacian(fg[0, c].numpy()))[region] ** 2).sum() for c in range(3)
        ) / (2 * h * w)
        got = loss(torch.from_numpy(other)[None], fg, bg, mask).item()
        assert got == pytest.approx(expected, rel=1e-12)
        assert got > 0

    # moving one pixel inside the mask (its own Laplacian by -0.4, four neighbours' by 0.1), or one pixel of
    # the Dirichlet ring around the mask (one mask Laplacian by 0.1), breaks the equality by exactly that much ...
    for (y, x), squares in (((8, 9), 0.4**2 + 4 * 0.1**2), ((3, 9), 0.1**2)):
        moved = blend_t.clone()
        moved[..., y, x] += 0.1
        assert loss(moved, fg, bg, mask).item() == pytest.approx(3 * squares / (2 * h * w), rel=1e-9)
    # ... while a pixel that no mask Laplacian sees does not change the loss
    far = blend_t.clone()
    far[..., 0, 0] += 0.5
    assert loss(far, fg, bg, mask).item() < 1e-24


def test_poisson_loss_image_region_matches_numpy():
    h, w = 12, 15
    fg, bg = _photo("chelsea", h, w), _photo("coffee", h, w)
    gen = torch.Generator().manual_seed(3)
    blend = torch.rand(1, 3, h, w, generator=gen, dtype=torch.float64)
    mask = torch.zeros(1, 1, h, w, dtype=torch.float64)
    mask[..., 3:9, 4:11] = 1
    mask[..., 3, 4] = 0.5  # a soft pixel mixes the two guidance Laplacians
    m = mask[0, 0].numpy()
    expected = 0.0
    for c in range(3):
        guide = m * _numpy_laplacian(fg[0, c].numpy()) + (1 - m) * _numpy_laplacian(bg[0, c].numpy())
        expected += ((_numpy_laplacian(blend[0, c].numpy()) - guide) ** 2).sum()
    got = PoissonGradientLoss(region="image")(blend, fg, bg, mask).item()
    assert got == pytest.approx(expected / (2 * h * w), rel=1e-12)


# ----------------------------------------------------------------------------------------------------------
# Every loss against a dense NumPy transcription of its equation (random features, batch, several layers)
# ----------------------------------------------------------------------------------------------------------
def np_adaptive_average(mask: np.ndarray, h: int, w: int) -> np.ndarray:
    """Adaptive average pooling of an ``(H, W)`` map to ``(h, w)``: cell ``(i, j)`` averages rows
    ``⌊iH/h⌋ … ⌈(i+1)H/h⌉ − 1`` and the columns likewise."""
    big_h, big_w = mask.shape
    out = np.empty((h, w))
    for i in range(h):
        for j in range(w):
            rows = slice(i * big_h // h, -(-(i + 1) * big_h // h))
            cols = slice(j * big_w // w, -(-(j + 1) * big_w // w))
            out[i, j] = mask[rows, cols].mean()
    return out


def np_content(xs, ys, alphas, mask=None) -> float:
    """Eqs. (7)/(9): Σ_l α_l / (2 N_l M_l) Σ_{i,k} (m_l ⊙ (F_l[x] − F_l[y]))²_{ik}, one sample, (N, H, W) maps."""
    total = 0.0
    for alpha, x, y in zip(alphas, xs, ys):
        n, h, w = x.shape
        m = np.ones((h, w)) if mask is None else np_adaptive_average(mask, h, w)
        total += alpha / (2 * n * h * w) * (((x - y) * m) ** 2).sum()
    return total


def np_style(xs, targets, betas) -> float:
    """Eqs. (8)/(10) with G = F Fᵀ / (N M): Σ_l β_l / (2 N_l²) Σ_{i,j} (G_l[x] − G_l[t])²_{ij}."""
    total = 0.0
    for beta, x, t in zip(betas, xs, targets):
        n = x.shape[0]
        fx, ft = x.reshape(n, -1), t.reshape(n, -1)
        gx, gt = fx @ fx.T / fx.size, ft @ ft.T / ft.size
        total += beta / (2 * n * n) * ((gx - gt) ** 2).sum()
    return total


def np_histogram(xs, targets, gammas) -> float:
    """Eq. (11) with R the exact histogram matching: the k-th smallest activation of a channel is sent to the
    target's quantile at k / (M − 1) (linear interpolation), so ‖F − R(F)‖² pairs the sorted values."""
    total = 0.0
    for gamma, x, t in zip(gammas, xs, targets):
        n = x.shape[0]
        m = x[0].size
        for c in range(n):
            quantiles = np.quantile(t[c].ravel(), np.arange(m) / (m - 1))
            total += gamma / (2 * n * m) * ((np.sort(x[c].ravel()) - quantiles) ** 2).sum()
    return total


def np_tv(image: np.ndarray) -> float:
    """Eq. (12): Σ |I_{m+1,n} − I_{m,n}| + |I_{m,n+1} − I_{m,n}| over channels and in-image pairs."""
    return float(np.abs(np.diff(image, axis=-2)).sum() + np.abs(np.diff(image, axis=-1)).sum())


def np_poisson(blend, source, target, mask, region="mask") -> float:
    """Eq. (6): 1/(2HW) Σ w [Δ I_B − (M Δ I_S + (1 − M) Δ I_T)]², w = M (region "mask") or 1, per channel."""
    h, w = mask.shape
    weight = mask if region == "mask" else np.ones_like(mask)
    total = 0.0
    for c in range(blend.shape[0]):
        guide = mask * _numpy_laplacian(source[c]) + (1 - mask) * _numpy_laplacian(target[c])
        total += (weight * (_numpy_laplacian(blend[c]) - guide) ** 2).sum()
    return total / (2 * h * w)


def test_losses_match_numpy_transcriptions_of_the_equations(gen):
    dt = torch.float64
    shapes = [(4, 7, 10), (6, 3, 5)]  # two layers; the image-resolution mask is 13 x 21 (non-integer ratios)
    x = [torch.randn(2, *s, generator=gen, dtype=dt).relu() for s in shapes]
    y = [torch.randn(2, *s, generator=gen, dtype=dt).relu() for s in shapes]
    t = [torch.randn(1, n, h + 2, w + 1, generator=gen, dtype=dt) ** 2 for n, h, w in shapes]  # other sizes
    mask = (torch.rand(2, 1, 13, 21, generator=gen, dtype=dt) > 0.4).to(dt)
    mask[1, 0, 2:5, 3:9] = 0.5
    weights = [0.7, 1.9]
    got = {
        "content": ContentLoss(weights)(x, y, mask),
        "content_nomask": ContentLoss(weights)(x, y),
        "style": StyleLoss(weights)(x, [gram_matrix(v) for v in t]),
        "hist": HistogramLoss(weights)(x, [sorted_features(v) for v in t]),
    }
    for b in range(2):
        xb, yb, tb = [v[b].numpy() for v in x], [v[b].numpy() for v in y], [v[0].numpy() for v in t]
        expected = {
            "content": np_content(xb, yb, weights, mask[b, 0].numpy()),
            "content_nomask": np_content(xb, yb, weights),
            "style": np_style(xb, tb, weights),
            "hist": np_histogram(xb, tb, weights),
        }
        for name, value in expected.items():
            assert value > 0
            assert got[name][b].item() == pytest.approx(value, rel=1e-10), (name, b)

    image = torch.rand(2, 3, 9, 11, generator=gen, dtype=dt)
    tv = TVLoss()(image)
    source, target = torch.rand_like(image), torch.rand_like(image)
    soft = torch.rand(2, 1, 9, 11, generator=gen, dtype=dt)
    for b in range(2):
        assert tv[b].item() == pytest.approx(np_tv(image[b].numpy()), rel=1e-12)
        for region in ("mask", "image"):
            value = PoissonGradientLoss(region=region)(image, source, target, soft)[b].item()
            reference = np_poisson(image[b].numpy(), source[b].numpy(), target[b].numpy(), soft[b, 0].numpy(), region)
            assert value == pytest.approx(reference, rel=1e-12), region


# ----------------------------------------------------------------------------------------------------------
# Batches, histogram matching, gradients
# ----------------------------------------------------------------------------------------------------------
def test_losses_are_per_sample(gen):
    feats = [torch.rand(3, 4, 6, 5, generator=gen), torch.rand(3, 8, 3, 2, generator=gen)]
    target = [torch.rand(1, 4, 6, 5, generator=gen), torch.rand(1, 8, 3, 2, generator=gen)]
    grams = [gram_matrix(t) for t in target]
    sorted_t = [sorted_features(t) for t in target]
    batched = {
        "content": ContentLoss()(feats, target),
        "style": StyleLoss()(feats, grams),
        "hist": HistogramLoss()(feats, sorted_t),
    }
    for b in range(3):
        one = [f[b : b + 1] for f in feats]
        assert batched["content"][b].item() == pytest.approx(ContentLoss()(one, target).item(), rel=1e-6)
        assert batched["style"][b].item() == pytest.approx(StyleLoss()(one, grams).item(), rel=1e-6)
        assert batched["hist"][b].item() == pytest.approx(HistogramLoss()(one, sorted_t).item(), rel=1e-6)


def test_match_histograms_gives_target_distribution_and_keeps_order(gen):
    x = torch.randn(2, 5, 7, 9, generator=gen)
    target = torch.rand(2, 5, 7, 9, generator=gen) ** 3
    matched = match_histograms(x, sorted_features(target))
    # same sizes: the matched values are exactly the target's values, arranged in x's order
    torch.testing.assert_close(matched.flatten(2).sort(-1).values, target.flatten(2).sort(-1).values)
    assert torch.equal(matched.flatten(2).argsort(-1), x.flatten(2).argsort(-1))
    # different sizes: NumPy's linear quantiles of the target at the input's ranks
    small = torch.randn(1, 2, 4, 5, generator=gen)
    big = torch.rand(1, 2, 9, 11, generator=gen)
    got = match_histograms(small, sorted_features(big))
    for c in range(2):
        ranks = np.argsort(np.argsort(small[0, c].flatten().numpy()))
        quantiles = np.quantile(big[0, c].flatten().numpy(), ranks / (ranks.size - 1))
        np.testing.assert_allclose(got[0, c].flatten().numpy(), quantiles, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["poisson", "content", "style", "hist", "tv"])
def test_gradcheck(name, gen):
    dt = torch.float64
    x = torch.rand(2, 2, 5, 6, generator=gen, dtype=dt, requires_grad=True)
    other = torch.rand(2, 2, 5, 6, generator=gen, dtype=dt)
    mask = torch.zeros(2, 1, 5, 6, dtype=dt)
    mask[..., 1:4, 2:5] = 1
    if name == "poisson":
        fn = lambda t: PoissonGradientLoss()(t, other, other.flip(-1), mask)  # noqa: E731
    elif name == "content":
        fn = lambda t: ContentLoss([0.5])([t], [other], mask)  # noqa: E731
    elif name == "style":
        fn = lambda t: StyleLoss()([t], [gram_matrix(other)])  # noqa: E731
    elif name == "hist":
        # the remapping R is a constant: the loss gradient is (x − R) / (N M)
        fn = lambda t: HistogramLoss()([t], [sorted_features(other)])  # noqa: E731
    else:
        fn = TVLoss()  # differentiable away from ties, which random inputs avoid
    assert torch.autograd.gradcheck(fn, (x,), eps=1e-7, atol=1e-6)


def test_histogram_loss_gradient_is_residual_over_size(gen):
    x = torch.randn(1, 2, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    t = sorted_features(torch.rand(1, 2, 3, 4, generator=gen, dtype=torch.float64))
    HistogramLoss()([x], [t]).sum().backward()
    expected = (x.detach() - match_histograms(x, t)) / (2 * 12)
    torch.testing.assert_close(x.grad, expected, atol=tol_for(torch.float64), rtol=0)


def test_reduced_precision_features_are_widened():
    x = torch.rand(1, 4, 5, 5).to(torch.bfloat16)
    assert gram_matrix(x).dtype == torch.float32
    assert StyleLoss()([x], [gram_matrix(x)]).dtype == torch.float32
    assert HistogramLoss()([x], [sorted_features(x)]).dtype == torch.float32


def test_bad_arguments():
    with pytest.raises(ValueError, match="region"):
        PoissonGradientLoss(region="ring")
    with pytest.raises(ValueError, match="boundary condition"):
        PoissonGradientLoss(bc="mirror")
    with pytest.raises(ValueError, match="layer_weights"):
        StyleLoss(layer_weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="2 layer weights for 1 feature maps"):
        ContentLoss([1.0, 1.0])([torch.zeros(1, 1, 2, 2)], [torch.zeros(1, 1, 2, 2)])
