"""Deep Image Blending (Zhang, Wen & Shi, WACV 2020): Poisson gradient loss plus VGG style and content, by L-BFGS.

Two stages (the paper's Algorithms 1 and 2) optimise pixels with ``torch.optim.LBFGS``:

1. Seamless blending. The free image ``I_Z`` (noise, or a chosen start) is composited with the target,
   ``I_B = I_Z ⊙ M + I_T ⊙ (1 − M)``, and ``λ_grad L_grad(I_B) + λ_cont L_cont(I_Z, I_S) + λ_style L_style(I_B, I_T)
   + λ_hist L_hist(I_B, I_T) + λ_tv L_tv(I_B)`` is minimised (eqs. 6, 7, 8, 11, 12).
2. Style refinement. Starting from the stage-1 blend, ``I_BR`` minimises ``λ_cont L_cont(I_BR, I_B) +
   λ_style L_style(I_BR, I_T) + λ_hist L_hist(I_BR, I_T) + λ_tv L_tv(I_BR)`` (eqs. 9, 10, 11, 12). The content
   term compares with the fixed stage-1 result ``I_B``.

Choices where the paper leaves room, all documented at the functions: the Gram matrices are normalised by
``N_l M_l`` and the histogram loss by ``2 N_l M_l`` (:mod:`fusion.nn.losses`); the Poisson loss counts the
residual inside the mask (``poisson_region="mask"``); in stage 2 too only the pixels inside the mask are free
(``I_BR = Z ⊙ M + I_T ⊙ (1 − M)``), so with a binary mask the background is kept exactly; the free pixels are
unconstrained during the descent and clipped to [0, 1] at the end of each stage (clamping after every
iteration, as the authors' code does, invalidates L-BFGS's curvature pairs and stalls the descent; it is
available as ``clamp=True``). The loss weights default to the numbers printed in the paper's
experiments section, read literally: "10e5" is ``1e6``, "10e7" is ``1e8`` and "10e−6" is ``1e-5``.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Literal

import torch

from fusion.methods.poisson import place_source, poisson_blend
from fusion.methods.registry import MethodOutput, register
from fusion.nn.losses import (
    ContentLoss,
    HistogramLoss,
    PoissonGradientLoss,
    StyleLoss,
    TVLoss,
    gram_matrix,
    sorted_features,
)
from fusion.nn.vgg import VGG16_LAYERS, VGG16Features
from fusion.ops.checks import check_batch, check_image, check_mask, check_same_size
from fusion.ops.result import SolverResult

__all__ = [
    "STAGE1_DEFAULTS",
    "STAGE2_DEFAULTS",
    "StageConfig",
    "deep_blend",
    "deep_blend_solve",
    "deep_image_blend",
]

Init = Literal["noise", "source", "target", "poisson"]
TERMS = ("grad", "content", "style", "hist", "tv")


@dataclass(frozen=True)
class StageConfig:
    """Iteration budget and loss weights of one stage (``λ_grad, λ_cont, λ_style, λ_hist, λ_tv``).

    A zero weight drops its term (and the work it needs) from the stage.
    """

    max_iter: int
    grad: float
    content: float
    style: float
    hist: float
    tv: float


#: Stage 1 of the paper: 1000 iterations, λ_blend = 10e5, λ_cont = 1, λ_style = 10e5, λ_hist = 1, λ_tv = 10e−6.
STAGE1_DEFAULTS = StageConfig(max_iter=1000, grad=1e6, content=1.0, style=1e6, hist=1.0, tv=1e-5)
#: Stage 2 of the paper: 1000 iterations, λ_cont = 1, λ_style = 10e7, λ_hist = 1, λ_tv = 10e−6 (no blending term).
STAGE2_DEFAULTS = StageConfig(max_iter=1000, grad=0.0, content=1.0, style=1e8, hist=1.0, tv=1e-5)


def _stage(value: StageConfig | Mapping[str, Any] | None, defaults: StageConfig, name: str) -> StageConfig:
    if value is None:
        return defaults
    if isinstance(value, StageConfig):
        cfg = value
    elif isinstance(value, Mapping):
        known = {f.name for f in fields(StageConfig)}
        unknown = sorted(str(k) for k in value if k not in known)
        if unknown:
            raise ValueError(f"{name} has unknown key(s) {unknown}; expected some of {sorted(known)}")
        cfg = replace(defaults, **dict(value))
    else:
        raise TypeError(f"{name} must be a StageConfig, a mapping or None, got {type(value).__name__}")
    if not isinstance(cfg.max_iter, int) or isinstance(cfg.max_iter, bool) or cfg.max_iter < 0:
        raise ValueError(f"{name}.max_iter must be a non-negative integer, got {cfg.max_iter!r}")
    for term in TERMS:
        weight = getattr(cfg, term)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{name}.{term} must be a finite number >= 0, got {weight!r}")
    return replace(cfg, **{term: float(getattr(cfg, term)) for term in TERMS})


def _validate(fg, bg, mask, offset):
    check_image(fg, "fg")
    check_image(bg, "bg")
    check_image(mask, "mask", channels=1)
    if fg.shape[1] != bg.shape[1]:
        raise ValueError(f"fg and bg channel counts differ: {fg.shape[1]} vs {bg.shape[1]}")
    if fg.shape[1] not in (1, 3):
        raise ValueError(f"fg and bg must be grayscale or RGB (1 or 3 channels), got {fg.shape[1]}")
    if fg.dtype != bg.dtype or fg.device != bg.device or mask.device != fg.device:
        raise TypeError(
            f"fg, bg and mask must share dtype and device, got {fg.dtype}/{fg.device}, {bg.dtype}/{bg.device}, "
            f"mask on {mask.device}"
        )
    check_same_size(fg=fg, mask=mask)
    (fh, fw), (bh, bw) = fg.shape[-2:], bg.shape[-2:]
    if fh > bh or fw > bw:
        raise ValueError(f"fg ({fh}x{fw}) is larger than bg ({bh}x{bw}); fg must fit inside bg")
    if bool((mask < 0).any()) or bool((mask > 1).any()):
        raise ValueError(f"mask values must lie in [0, 1], got range [{mask.min().item():g}, {mask.max().item():g}]")
    if offset is not None or (fh, fw) != (bh, bw):
        fg, mask = place_source(fg, mask, bg, offset)
    check_mask(mask)
    batch = check_batch(fg=fg, bg=bg, mask=mask)
    c = fg.shape[1]
    return fg.expand(batch, c, -1, -1), bg.expand(batch, c, -1, -1), mask.to(fg.dtype).expand(batch, 1, -1, -1)


def _features(vgg_weights, layers: Sequence[str]) -> VGG16Features:
    if isinstance(vgg_weights, VGG16Features):
        deepest = max(VGG16_LAYERS[name] for name in layers)
        if deepest >= len(vgg_weights.features):
            raise ValueError(f"the given VGG16Features stops before layer(s) {list(layers)}")
        return vgg_weights
    return VGG16Features(vgg_weights, layers=layers)


class _Stage:
    """One L-BFGS stage: the objective on the composite ``Z ⊙ M + I_T ⊙ (1 − M)`` and its iteration loop."""

    def __init__(self, cfg, *, vgg, amp, target, mask, source, guidance, content_target, content_on_free,
                 content_mask, content_layer, style_layers, style_grams, hist_sorted, poisson):  # fmt: skip
        self.cfg, self.vgg, self.amp = cfg, vgg, amp
        self.target, self.mask, self.source, self.guidance = target, mask, source, guidance
        self.content_target, self.content_on_free, self.content_mask = content_target, content_on_free, content_mask
        self.content_layer, self.style_layers = content_layer, tuple(style_layers)
        self.style_grams, self.hist_sorted = style_grams, hist_sorted
        self.poisson = poisson
        self.content, self.style, self.hist, self.tv = ContentLoss(), StyleLoss(), HistogramLoss(), TVLoss()

    def compose(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.mask + self.target * (1 - self.mask)

    def _vgg(self, x: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
        with self.amp():
            return self.vgg(x, layers)

    def terms(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        cfg, blend, out = self.cfg, self.compose(z), {}
        if cfg.grad:
            out["grad"] = self.poisson(blend, self.source, self.target, self.mask, guidance=self.guidance)
        feats = None
        if cfg.style or cfg.hist:
            feats = dict(zip(self.style_layers, self._vgg(blend, self.style_layers)))
        if cfg.content:
            if not self.content_on_free and feats is not None and self.content_layer in feats:
                current = feats[self.content_layer]
            else:
                current = self._vgg(z if self.content_on_free else blend, (self.content_layer,))[0]
            out["content"] = self.content([current], [self.content_target], self.content_mask)
        if cfg.style:
            out["style"] = self.style([feats[name] for name in self.style_layers], self.style_grams)
        if cfg.hist:
            out["hist"] = self.hist([feats[name] for name in self.style_layers], self.hist_sorted)
        if cfg.tv:
            out["tv"] = self.tv(blend)
        return out

    def total(self, terms: Mapping[str, torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        total = torch.zeros(like.shape[0], dtype=dtype, device=like.device)
        for name, value in terms.items():
            total = total + getattr(self.cfg, name) * value
        return total

    def run(self, z0, *, lr, history_size, clamp, tol, frames, bar, label):
        """Iterate; return (z, totals (k+1, B), per-term values, frames, iterations k, converged, diverged)."""
        cfg = self.cfg
        z = z0.detach().clone().requires_grad_(True)
        optimizer = torch.optim.LBFGS(
            [z],
            lr=lr,
            max_iter=1,
            history_size=history_size,
            tolerance_grad=-1.0,
            tolerance_change=-1.0,
        )
        totals: list[torch.Tensor] = []
        terms: dict[str, list[torch.Tensor]] = {}
        snapshots: list[torch.Tensor] = []
        snap_at = {round(i * cfg.max_iter / (frames - 1)) for i in range(frames)} if frames > 1 else set()
        if frames == 1:
            snap_at = {cfg.max_iter}
        seen: dict[str, Any] = {}

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            values = self.terms(z)
            per_sample = self.total(values, z)
            loss = per_sample.sum()
            loss.backward()
            if "total" not in seen:  # the step's first evaluation is at the current iterate
                seen["total"], seen["terms"] = per_sample.detach(), {k: v.detach() for k, v in values.items()}
            return loss

        def record(total, values):
            totals.append(total)
            for name, value in values.items():
                terms.setdefault(name, []).append(value)

        done, converged, diverged, good = 0, False, False, z.detach().clone()
        for it in range(cfg.max_iter):
            if it in snap_at:
                snapshots.append(self.compose(z.detach().clamp(0, 1)))
            seen.clear()
            optimizer.step(closure)
            if not bool(torch.isfinite(seen["total"]).all()) or not bool(torch.isfinite(z).all()):
                with torch.no_grad():
                    z.copy_(good)  # a step left the finite range: keep the last good iterate and stop
                diverged = True
                break
            record(seen["total"], seen["terms"])
            if clamp:
                with torch.no_grad():
                    z.clamp_(0, 1)
            good.copy_(z.detach())
            done += 1
            if bar is not None:
                bar.set_postfix_str(f"{label} loss {float(totals[-1].sum()):.4g}", refresh=False)
                bar.update(1)
            if tol > 0 and len(totals) >= 2:
                prev, cur = float(totals[-2].sum()), float(totals[-1].sum())
                if abs(prev - cur) <= tol * max(abs(prev), 1e-30):
                    converged = True
                    break
        if bar is not None and done < cfg.max_iter:
            bar.update(cfg.max_iter - done)
        with torch.no_grad():
            z.clamp_(0, 1)  # the stage's result; its objective value closes the history
            values = self.terms(z)
            record(self.total(values, z), values)
            if frames > 0 and len(snapshots) < frames:
                snapshots.append(self.compose(z.detach().clamp(0, 1)))
        history = torch.stack(totals)
        per_term = {name: torch.stack(vals) for name, vals in terms.items()}
        stacked = torch.stack(snapshots) if snapshots else None
        return z.detach(), history, per_term, stacked, done, converged, diverged


def deep_blend_solve(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    offset: Sequence[int] | None = None,
    vgg_weights: str | os.PathLike[str] | VGG16Features | None = None,
    stage1: StageConfig | Mapping[str, Any] | None = None,
    stage2: StageConfig | Mapping[str, Any] | None = None,
    init: Init | torch.Tensor = "noise",
    generator: torch.Generator | None = None,
    content_layer: str = "conv2_2",
    style_layers: Sequence[str] = ("conv1_2", "conv2_2", "conv3_3", "conv4_3"),
    poisson_region: Literal["mask", "image"] = "mask",
    lr: float = 1.0,
    history_size: int = 100,
    clamp: bool = False,
    tol: float = 0.0,
    frames: int = 0,
    mixed_precision: bool | None = None,
    progress: bool = False,
) -> SolverResult:
    """Both stages of Deep Image Blending; returns the :class:`SolverResult` (see :func:`deep_image_blend`).

    Returns:
        ``solution``: ``(B, C, H, W)`` refined blend ``I_BR`` at the size of ``bg``. ``iterations``: L-BFGS
        iterations of both stages together. ``history``: ``(iterations + 1, B)`` per-sample objective values —
        the stage-1 objective at stage-1 iterates ``0 … T1``, then the stage-2 objective at stage-2 iterates
        ``1 … T2`` (its value at the start is ``info["history"]["stage2"][0]``); each stage's last value is
        taken at its result, the last iterate clipped to [0, 1]. ``converged``: ``(B,)``, whether
        stage 2 stopped on ``tol`` (always false with ``tol=0``, where every iteration is run). ``info``:
        ``"stage1"`` the stage-1 blend ``I_B``; ``"iterations"`` ``(T1, T2)``; ``"history"`` per stage
        ``(T + 1, B)`` objective values; ``"terms"`` per stage the unweighted loss terms ``{name: (T + 1, B)}``;
        ``"frames"`` per stage ``(F, B, C, H, W)`` snapshots of the blend (only when ``frames > 0``);
        ``"stopped_early"`` per stage, true when a step produced non-finite values and the stage kept its last
        finite iterate.

    Example:
        >>> fg, bg = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
        >>> mask = torch.zeros(1, 1, 16, 16); mask[..., 4:12, 4:12] = 1
        >>> res = deep_blend_solve(fg, bg, mask, vgg_weights="random", stage1={"max_iter": 3}, stage2={"max_iter": 2})
        >>> res.iterations, tuple(res.history.shape), sorted(res.info["terms"]["stage2"])
        (5, (6, 1), ['content', 'hist', 'style', 'tv'])
    """
    fg, bg, mask = _validate(fg, bg, mask, offset)
    cfg1 = _stage(stage1, STAGE1_DEFAULTS, "stage1")
    cfg2 = _stage(stage2, STAGE2_DEFAULTS, "stage2")
    if content_layer not in VGG16_LAYERS:
        raise ValueError(f"unknown content_layer {content_layer!r}; expected one of {list(VGG16_LAYERS)}")
    style_layers = tuple(style_layers)
    bad = [name for name in style_layers if name not in VGG16_LAYERS]
    if not style_layers or bad:
        raise ValueError(f"style_layers must name VGG16 layers from {list(VGG16_LAYERS)}, got {list(style_layers)}")
    if poisson_region not in ("mask", "image"):
        raise ValueError(f"poisson_region must be 'mask' or 'image', got {poisson_region!r}")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if not isinstance(history_size, int) or history_size < 1:
        raise ValueError(f"history_size must be a positive integer, got {history_size!r}")
    if not (isinstance(tol, (int, float)) and tol >= 0):
        raise ValueError(f"tol must be >= 0, got {tol!r}")
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 0:
        raise ValueError(f"frames must be a non-negative integer, got {frames!r}")
    if isinstance(init, torch.Tensor):
        check_image(init, "init", channels=fg.shape[1])
        check_same_size(init=init, bg=bg)
        check_batch(init=init, bg=bg)
    elif init not in ("noise", "source", "target", "poisson"):
        raise ValueError(f"init must be 'noise', 'source', 'target', 'poisson' or a tensor, got {init!r}")
    layers = tuple(dict.fromkeys((*style_layers, content_layer)))
    vgg = _features(vgg_weights, layers)
    side = vgg.min_size(layers)
    if min(bg.shape[-2:]) < side:
        raise ValueError(f"bg is {bg.shape[-2]}x{bg.shape[-1]}; the VGG layers used need both sides >= {side}")

    device, dtype = bg.device, bg.dtype
    vgg = vgg.to(device=device, dtype=dtype)
    use_amp = (device.type == "cuda" and dtype == torch.float32) if mixed_precision is None else bool(mixed_precision)
    use_amp = use_amp and device.type == "cuda"
    if device.type == "cuda":
        vgg = vgg.to(memory_format=torch.channels_last)

    def amp():
        return torch.autocast("cuda", dtype=torch.bfloat16) if use_amp else contextlib.nullcontext()

    def run_vgg(x: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
        with torch.no_grad(), amp():
            return [f.float() if f.dtype in (torch.float16, torch.bfloat16) else f for f in vgg(x, layers)]

    poisson = PoissonGradientLoss(region=poisson_region)
    target_feats = run_vgg(bg, style_layers) if (cfg1.style or cfg1.hist or cfg2.style or cfg2.hist) else []
    common = dict(
        vgg=vgg,
        amp=amp,
        target=bg,
        mask=mask,
        source=fg,
        guidance=poisson.guidance(fg, bg, mask) if (cfg1.grad or cfg2.grad) else None,
        content_layer=content_layer,
        style_layers=style_layers,
        style_grams=[gram_matrix(f) for f in target_feats],
        hist_sorted=[sorted_features(f) for f in target_feats] if (cfg1.hist or cfg2.hist) else [],
        poisson=poisson,
    )
    run_kw = dict(lr=float(lr), history_size=history_size, clamp=clamp, tol=float(tol), frames=frames)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg1.max_iter + cfg2.max_iter, desc="deep blend", unit="it", leave=False)
    try:
        with torch.enable_grad():
            content1 = run_vgg(fg, (content_layer,))[0] if cfg1.content else None
            stage1 = _Stage(cfg1, content_target=content1, content_on_free=True, content_mask=mask, **common)
            z0 = _initial(init, fg, bg, mask, generator).clamp(0, 1)
            z1, hist1, terms1, frames1, it1, _, diverged1 = stage1.run(z0, bar=bar, label="stage 1", **run_kw)
            blend1 = stage1.compose(z1)

            content2 = run_vgg(blend1, (content_layer,))[0] if cfg2.content else None
            stage2 = _Stage(cfg2, content_target=content2, content_on_free=False, content_mask=None, **common)
            z2, hist2, terms2, frames2, it2, converged, diverged2 = stage2.run(
                blend1, bar=bar, label="stage 2", **run_kw
            )
            result = stage2.compose(z2)
    finally:
        if bar is not None:
            bar.close()

    info: dict[str, Any] = {
        "stage1": blend1,
        "iterations": (it1, it2),
        "history": {"stage1": hist1, "stage2": hist2},
        "terms": {"stage1": terms1, "stage2": terms2},
        "frames": {"stage1": frames1, "stage2": frames2} if frames else {},
        "stopped_early": {"stage1": diverged1, "stage2": diverged2},
    }
    return SolverResult(
        solution=result,
        iterations=it1 + it2,
        history=torch.cat([hist1, hist2[1:]]),
        converged=torch.full((result.shape[0],), converged, dtype=torch.bool, device=result.device),
        info=info,
    )


def _initial(init, fg, bg, mask, generator) -> torch.Tensor:
    if isinstance(init, torch.Tensor):
        return init.to(bg.dtype).expand_as(bg).clone()
    if init == "noise":
        device = generator.device if generator is not None else bg.device
        return torch.rand(bg.shape, generator=generator, dtype=bg.dtype, device=device).to(bg.device)
    if init == "source":
        return fg.clone()
    if init == "target":
        return bg.clone()
    return poisson_blend(fg, bg, mask).clamp(0, 1)


def deep_image_blend(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    offset: Sequence[int] | None = None,
    vgg_weights: str | os.PathLike[str] | VGG16Features | None = None,
    stage1: StageConfig | Mapping[str, Any] | None = None,
    stage2: StageConfig | Mapping[str, Any] | None = None,
    init: Init | torch.Tensor = "noise",
    generator: torch.Generator | None = None,
    **options: Any,
) -> torch.Tensor:
    """Deep Image Blending (Zhang, Wen & Shi 2020, Algorithms 1 and 2): blend ``fg`` into ``bg`` on ``mask``.

    Stage 1 minimises ``λ_grad L_grad + λ_cont L_cont + λ_style L_style + λ_hist L_hist + λ_tv L_tv`` (eqs. 6,
    7, 8, 11, 12) over the pixels inside the mask, starting from ``init``; stage 2 refines the style from the
    stage-1 blend with eqs. 9–12, its content term measured against that stage-1 result. Each stage runs
    ``max_iter`` iterations of ``torch.optim.LBFGS`` (step 1, no line search, memory ``history_size``); the
    free pixels are clipped to [0, 1] at the end of each stage (``clamp=True``: after every iteration). Style
    and histogram losses use VGG16 layers conv1_2, conv2_2, conv3_3 and conv4_3, the content loss conv2_2;
    the Poisson gradient loss the 5-point Laplacian. Batches are optimised jointly (one L-BFGS over the summed
    objective).

    On CUDA the VGG passes run in channels-last layout and, for float32 inputs, under bfloat16 autocast
    (``mixed_precision=None``; ``False`` keeps full precision); Gram matrices, histograms and all loss sums
    are formed in float32 or wider.

    Args:
        fg: ``(B, C, h, w)`` source, ``C`` 1 or 3, no larger than ``bg``; placed at ``offset`` when smaller.
        bg: ``(B, C, H, W)`` target.
        mask: ``(B, 1, h, w)`` in [0, 1], the size of ``fg``; the blend is ``Z ⊙ M + bg ⊙ (1 − M)``.
        offset: ``(y, x)`` of ``fg``'s top-left corner on ``bg``; ``None`` centres a smaller ``fg``.
        vgg_weights: a path to VGG16 ImageNet weights; ``None`` for torchvision's cache
            (``~/.cache/torch/hub/checkpoints/vgg16-397923af.pth``; a ``FileNotFoundError`` saying how to provide
            them when absent); ``"random"`` for random weights (tests, or runs where quality does not matter); or
            a :class:`fusion.nn.vgg.VGG16Features` to reuse (moved in place to the inputs' device and dtype).
        stage1, stage2: :class:`StageConfig` or a mapping overriding some of its fields
            (``max_iter, grad, content, style, hist, tv``); defaults :data:`STAGE1_DEFAULTS`,
            :data:`STAGE2_DEFAULTS` (the paper's).
        init: stage-1 start ``I_Z``: ``"noise"`` (uniform, from ``generator``; the paper's), ``"source"``,
            ``"target"``, ``"poisson"`` (Poisson image editing's result) or a ``(B, C, H, W)`` tensor.
        generator: randomness of ``init="noise"``.
        **options: the remaining keywords of :func:`deep_blend_solve` — ``content_layer``, ``style_layers``,
            ``poisson_region`` ("mask" or "image", see :class:`fusion.nn.losses.PoissonGradientLoss`), ``lr``,
            ``history_size``, ``clamp``, ``tol`` (stop a stage when the objective's relative change per iteration
            falls below it; 0 runs every iteration), ``frames``, ``mixed_precision``, ``progress`` (tqdm bar).

    Returns:
        ``(B, C, H, W)`` blended image at the size of ``bg``; equal to ``bg`` wherever the mask is 0.

    Example:
        >>> fg, bg = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 24, 32)
        >>> mask = torch.zeros(1, 1, 16, 16); mask[..., 4:12, 4:12] = 1
        >>> few = {"max_iter": 2}
        >>> out = deep_image_blend(fg, bg, mask, vgg_weights="random", stage1=few, stage2=few, offset=(4, 8))
        >>> out.shape, bool((out[..., :4, :] == bg[..., :4, :]).all())
        (torch.Size([1, 3, 24, 32]), True)
    """
    result = deep_blend_solve(
        fg,
        bg,
        mask,
        offset=offset,
        vgg_weights=vgg_weights,
        stage1=stage1,
        stage2=stage2,
        init=init,
        generator=generator,
        **options,
    )
    return result.solution


@register("deep_blend")
def deep_blend(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    vgg_weights: str | None = None,
    stage1: Mapping[str, Any] | None = None,
    stage2: Mapping[str, Any] | None = None,
    init: Init = "noise",
    seed: int = 0,
    save_intermediate: bool = False,
    intermediate_frames: int = 10,
    progress: bool = True,
    **options: Any,
) -> MethodOutput:
    """Command-line adapter of :func:`deep_blend_solve` (``python infer.py method=deep_blend``).

    Writes the result, the loss curves of both stages (``curves["loss"]``, batch sample 0) and, with
    ``save_intermediate=True``, ``intermediate_frames`` snapshots of each stage as ``frames["stage1"]`` and
    ``frames["stage2"]``. ``seed`` seeds the noise start; a progress bar runs over the iterations.
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    if not isinstance(intermediate_frames, int) or isinstance(intermediate_frames, bool) or intermediate_frames < 2:
        raise ValueError(f"intermediate_frames must be an integer >= 2, got {intermediate_frames!r}")
    generator = torch.Generator().manual_seed(seed)
    result = deep_blend_solve(
        fg,
        bg,
        mask,
        vgg_weights=vgg_weights,
        stage1=stage1,
        stage2=stage2,
        init=init,
        generator=generator,
        frames=intermediate_frames if save_intermediate else 0,
        progress=progress,
        **options,
    )
    hist = result.info["history"]
    curves = {"loss": {"stage 1": hist["stage1"][:, 0].cpu(), "stage 2": hist["stage2"][:, 0].cpu()}}
    frames = {k: v.clamp(0, 1) for k, v in result.info["frames"].items()} if save_intermediate else {}
    return MethodOutput(result=result.solution, frames=frames, curves=curves)
