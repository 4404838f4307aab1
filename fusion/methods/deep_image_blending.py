"""Deep Image Blending (Zhang, Wen & Shi, WACV 2020): Poisson gradient loss plus VGG style and content, by L-BFGS.

Two stages (the paper's Algorithms 1 and 2) optimise pixels by L-BFGS (:func:`fusion.optim.lbfgs.lbfgs_stage`):

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

Optimiser. Each stage runs L-BFGS with the paper's settings (step 1, no line search, memory ``history_size``),
with its own curvature memory, inner products and stopping test for every batch sample, so a sample's result
does not depend on the other samples of its batch (``torch.optim.LBFGS`` on the batch tensor would couple them).

Stopping. The paper runs a fixed 1000 iterations per stage. Here ``max_iter`` is a cap, and each stage stops a
sample once the relative change of that stage's objective per iteration, measured over the last ``w =
tol_window`` iterations (default 10),

    r_k = (max_{k−w ≤ j ≤ k} f_j − min_{k−w ≤ j ≤ k} f_j) / (w · |f_k|),

is at most ``tol`` (default :data:`DEFAULT_TOL` = 1e-5): the objective has changed by less than a relative
``w · tol`` over ``w`` iterations. Without a line search the objective does not decrease monotonically, and
in float32 it fluctuates by about 1e-6–1e-4 (relative) from one iteration to the next near a stationary point,
so a one-iteration test would stop on a lucky iteration; the window does not, and it never includes a sample's
first, short gradient step. A stage that reaches its cap above ``tol`` emits a :class:`fusion.ConvergenceWarning`
naming it (``"deep_blend stage 2"``). ``stop_early=False`` is the paper's fixed count: every stage runs all
``max_iter`` iterations and the same test is applied at its last iteration (a warning when it is above
``tol``). The test is passed by L-BFGS's iterates before the clipping to [0, 1] that ends each stage. A sample
whose objective becomes non-finite keeps its last finite iterate; it counts as not converged and is named in
the warning (``reached`` is ``nan``).

Differentiability. The result is not differentiable with respect to ``fg``, ``bg``, ``mask`` or ``init``:
inputs that require grad (with grad mode on) raise a ``ValueError``. Unrolling up to thousands of iterations
through VGG16 is impractical, and implicit differentiation would assume an exact minimiser, which a stage
stopped at a tolerance (then clipped) is not.

Batches. Every loss is per sample and the optimiser is per sample; ``init="noise"`` draws the noise of the
whole batch from ``generator`` in one call, so a sample's start depends on its position in the batch — pass
``init`` as a tensor for starts that do not. The command line (:func:`deep_blend_cli`, and so batch mode) gives
every sample the noise its ``seed`` draws alone, so an item of a batch starts as its single call does.

Entry points (:mod:`fusion.methods.contract`): :func:`deep_blend` returns the image; :func:`deep_blend_solve`
the same image in a :class:`DeepBlendResult` with the stage-1 blend and each stage's record (objective and
loss terms per iteration, optimiser result, snapshots); :class:`DeepBlend` holds the options and the VGG16
features as a module; :func:`deep_blend_cli` is ``infer.py method=deep_blend``. The stage settings and
objective live in :mod:`fusion.methods.deep_image_blending_stages`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from fusion.methods.contract import MethodResult
from fusion.methods.deep_image_blending_stages import (
    DEFAULT_TOL,
    DEFAULT_WINDOW,
    STAGE1_DEFAULTS,
    STAGE2_DEFAULTS,
    StageConfig,
    StageObjective,
    stage_config,
)
from fusion.methods.poisson import place_source, poisson_blend
from fusion.methods.registry import MethodOutput, register
from fusion.nn.losses import PoissonGradientLoss, gram_matrix, sorted_features
from fusion.nn.vgg import VGG16_LAYERS, VGG16Features
from fusion.ops.checks import (
    check_alpha,
    check_batch,
    check_choice,
    check_fits_inside,
    check_flag,
    check_image,
    check_int,
    check_mask_coverage,
    check_max_iter,
    check_min_size,
    check_no_grad,
    check_positive_number,
    check_same_channels,
    check_same_device,
    check_same_kind,
    check_same_size,
    check_tol,
)
from fusion.ops.result import SolverResult, warn_unconverged
from fusion.optim.lbfgs import LBFGSStageResult, criterion, lbfgs_stage

__all__ = [
    "DEFAULT_TOL",
    "DEFAULT_WINDOW",
    "STAGE1_DEFAULTS",
    "STAGE2_DEFAULTS",
    "DeepBlend",
    "DeepBlendResult",
    "StageConfig",
    "deep_blend",
    "deep_blend_cli",
    "deep_blend_solve",
]

Init = Literal["noise", "source", "target", "poisson"]
INITS = ("noise", "source", "target", "poisson")
STYLE_LAYERS = ("conv1_2", "conv2_2", "conv3_3", "conv4_3")
_NO_GRADIENT = (
    "The blend is the end point of up to thousands of L-BFGS iterations through VGG16, stopped at a tolerance (not "
    "an exact minimiser), so neither unrolling nor implicit differentiation gives its gradient; pass detached tensors"
)


@dataclass(kw_only=True)
class DeepBlendResult(MethodResult):
    """What :func:`deep_blend_solve` returns.

    Attributes:
        image: ``(B, C, H, W)`` the refined blend ``I_BR`` at the size of ``bg`` (the stage-1 blend with
            ``stages=1``): what :func:`deep_blend` returns.
        solver: the stages as one :class:`SolverResult`. ``solution`` is ``image``; ``iterations`` the stages'
            L-BFGS iterations together; ``history`` ``(iterations + 1, B)`` the stage-1 objective at stage-1
            iterates ``0 … T1``, then the stage-2 objective at stage-2 iterates ``1 … T2``, from a sample's last
            iteration of a stage on its value at the stage's result; ``converged`` ``(B,)`` true when every stage
            met its criterion for that sample; ``criterion``, ``tol``; ``reached`` ``(B,)`` the larger of the
            stages' last relative changes. ``info`` holds the fields below as a dict: ``"stage1"``,
            ``"iterations"`` (:attr:`stage_iterations`), and per stage ``"history"``, ``"terms"``, ``"solver"``,
            ``"frames"`` (``{}`` when no frames were asked for).
        stage1_image: ``(B, C, H, W)`` the stage-1 blend ``I_B``: stage 2's start and its content reference.
        stages: per stage (``"stage1"``, ``"stage2"``) its :class:`~fusion.optim.lbfgs.LBFGSStageResult`:
            ``solution`` the free image ``Z`` clipped to [0, 1]; ``solver`` the optimiser's result on the unclipped
            iterates (``info["iterations"]`` per sample, ``info["diverged"]`` the samples whose objective became
            non-finite: they keep their last finite iterate); ``history`` ``(T + 1, B)`` the stage objective and
            ``terms`` ``{name: (T + 1, B)}`` its unweighted loss terms per iterate, from a sample's last iteration
            on at the stage's result; ``frames`` ``(F, B, C, H, W)`` snapshots of the blend at iterations
            ``round(i · max_iter / (F − 1))``, the last one the stage's result (``None`` unless ``frames > 0``).
    """

    stage1_image: torch.Tensor
    stages: dict[str, LBFGSStageResult]

    @property
    def stage_iterations(self) -> tuple[int, ...]:
        """L-BFGS iterations of each stage (per stage, the most any sample took): ``(T1, T2)`` or ``(T1,)``."""
        return tuple(stage.solver.iterations for stage in self.stages.values())


def _check_images(fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> int:
    """Check the images before the source is placed on the background; return the batch size (no side effects)."""
    check_image(fg, "fg")
    check_image(bg, "bg")
    check_alpha(mask, "mask")
    channels = check_same_channels(fg=fg, bg=bg)
    check_choice(channels, "the channel count of fg and bg (grayscale or RGB)", (1, 3))
    check_same_kind(fg=fg, bg=bg)
    check_same_device(fg=fg, mask=mask)
    check_same_size(fg=fg, mask=mask)
    check_fits_inside(fg, "fg", bg, "bg")
    return check_batch(fg=fg, bg=bg, mask=mask)


def _check_options(*, stage1, stage2, init, content_layer, style_layers, poisson_region, lr, history_size, clamp,
                   tol, tol_window, stop_early, stages, frames) -> dict[str, Any]:  # fmt: skip
    """Check the options that do not depend on the images; return them normalised (no side effects)."""
    style_layers = tuple(style_layers)
    if not style_layers:
        raise ValueError("style_layers must name at least one VGG16 layer")
    for k, name in enumerate(style_layers):
        check_choice(name, f"style_layers[{k}]", tuple(VGG16_LAYERS))
    if not isinstance(init, torch.Tensor):
        check_choice(init, "init", INITS)
    check_max_iter(history_size, "history_size")
    check_max_iter(tol_window, "tol_window")
    check_flag(clamp, "clamp")
    check_flag(stop_early, "stop_early")
    check_int(frames, "frames", minimum=0)
    return {
        "cfg1": stage_config(stage1, STAGE1_DEFAULTS, "stage1"),
        "cfg2": stage_config(stage2, STAGE2_DEFAULTS, "stage2"),
        "content_layer": check_choice(content_layer, "content_layer", tuple(VGG16_LAYERS)),
        "style_layers": style_layers,
        "poisson_region": check_choice(poisson_region, "poisson_region", ("mask", "image")),
        "lr": check_positive_number(lr, "lr"),
        "tol": check_tol(tol, "tol"),
        "stages": check_choice(stages, "stages", (1, 2)),
    }


def _features(vgg_weights: str | os.PathLike[str] | VGG16Features | None, layers: Sequence[str]) -> VGG16Features:
    """The VGG16 extractor for ``layers``: built from weights, or a given one that reaches that deep."""
    if isinstance(vgg_weights, VGG16Features):
        deepest = max(VGG16_LAYERS[name] for name in layers)
        if deepest >= len(vgg_weights.features):
            raise ValueError(f"the given VGG16Features stops before layer(s) {list(layers)}")
        return vgg_weights
    return VGG16Features(vgg_weights, layers=layers)


def _clip(z: torch.Tensor) -> torch.Tensor:
    return z.clamp(0, 1)


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
    style_layers: Sequence[str] = STYLE_LAYERS,
    poisson_region: Literal["mask", "image"] = "mask",
    lr: float = 1.0,
    history_size: int = 100,
    clamp: bool = False,
    tol: float = DEFAULT_TOL,
    tol_window: int = DEFAULT_WINDOW,
    stop_early: bool = True,
    stages: int = 2,
    frames: int = 0,
    mixed_precision: bool | None = None,
    progress: bool = False,
) -> DeepBlendResult:
    """Both stages of Deep Image Blending (Algorithms 1 and 2), with their records; see :func:`deep_blend`.

    Emits one :class:`fusion.ConvergenceWarning` per stage that stopped above ``tol`` for some sample (method
    ``"deep_blend stage 1"`` or ``"deep_blend stage 2"``).

    Args:
        fg, bg, mask, offset, vgg_weights, stage1, stage2, init, generator: as in :func:`deep_blend`.
        content_layer, style_layers, poisson_region, lr, history_size, clamp, tol, tol_window, stop_early,
        stages, mixed_precision, progress: as in :func:`deep_blend`.
        frames: ``F >= 0`` snapshots of each stage's blend for :attr:`DeepBlendResult.stages` (``0``: none).

    Returns:
        :class:`DeepBlendResult`: ``image`` ``(B, C, H, W)``, ``solver``, ``stage1_image``, ``stages``.

    Example:
        >>> fg, bg = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 16, 16)
        >>> mask = torch.zeros(1, 1, 16, 16); mask[..., 4:12, 4:12] = 1
        >>> import warnings
        >>> with warnings.catch_warnings(record=True) as caught:  # 3 + 2 iterations are far from converged
        ...     warnings.simplefilter("always")
        ...     res = deep_blend_solve(fg, bg, mask, vgg_weights="random", stage1={"max_iter": 3},
        ...                            stage2={"max_iter": 2})
        >>> [w.message.method for w in caught]
        ['deep_blend stage 1', 'deep_blend stage 2']
        >>> res.stage_iterations, tuple(res.solver.history.shape), sorted(res.stages["stage2"].terms)
        ((3, 2), (6, 1), ['content', 'hist', 'style', 'tv'])
    """
    check_no_grad("deep_blend", _NO_GRADIENT, fg=fg, bg=bg, mask=mask, init=init)
    fg, bg, mask, init = (t.detach() if isinstance(t, torch.Tensor) else t for t in (fg, bg, mask, init))
    batch = _check_images(fg, bg, mask)
    opts = _check_options(stage1=stage1, stage2=stage2, init=init, content_layer=content_layer,
                          style_layers=style_layers, poisson_region=poisson_region, lr=lr, history_size=history_size,
                          clamp=clamp, tol=tol, tol_window=tol_window, stop_early=stop_early, stages=stages,
                          frames=frames)  # fmt: skip
    cfg1, cfg2, style_layers, tol = opts["cfg1"], opts["cfg2"], opts["style_layers"], opts["tol"]
    if offset is not None or fg.shape[-2:] != bg.shape[-2:]:
        fg, mask = place_source(fg, mask, bg, offset)
    check_mask_coverage(mask)  # a crop by the offset may have emptied it
    channels = fg.shape[1]
    fg, bg = fg.expand(batch, channels, -1, -1), bg.expand(batch, channels, -1, -1)
    mask = mask.to(fg.dtype).expand(batch, 1, -1, -1)
    if isinstance(init, torch.Tensor):
        check_image(init, "init", channels=channels)
        check_same_size(init=init, bg=bg)
        check_batch(init=init, bg=bg)
    configs = (cfg1, cfg2)[:stages]
    layers = tuple(dict.fromkeys((*style_layers, content_layer)))
    vgg = _features(vgg_weights, layers)
    check_min_size(bg, "bg", vgg.min_size(layers), why="for the VGG layers used")

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

    poisson = PoissonGradientLoss(region=opts["poisson_region"])
    needs_target = any(cfg.style or cfg.hist for cfg in configs)
    target_feats = run_vgg(bg, style_layers) if needs_target else []
    common = dict(
        vgg=vgg,
        amp=amp,
        target=bg,
        mask=mask,
        source=fg,
        guidance=poisson.guidance(fg, bg, mask) if any(cfg.grad for cfg in configs) else None,
        content_layer=content_layer,
        style_layers=style_layers,
        style_grams=[gram_matrix(f) for f in target_feats],
        hist_sorted=[sorted_features(f) for f in target_feats] if any(cfg.hist for cfg in configs) else [],
        poisson=poisson,
    )

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(cfg.max_iter for cfg in configs), desc="deep blend", unit="it", leave=False)

    def run(objective: StageObjective, start: torch.Tensor, label: str) -> LBFGSStageResult:
        def tick(k: int, values: torch.Tensor) -> None:
            bar.set_postfix_str(f"{label} loss {float(values.sum()):.4g}", refresh=False)
            bar.update(1)

        stage = lbfgs_stage(objective, start, max_iter=objective.cfg.max_iter, tol=tol, window=tol_window,
                            history_size=history_size, lr=opts["lr"], stop_early=stop_early,
                            project=_clip if clamp else None, finish=_clip, frames=frames, snapshot=objective.compose,
                            on_iterate=tick if bar is not None else None)  # fmt: skip
        if bar is not None:
            bar.update(objective.cfg.max_iter - stage.solver.iterations)
        return stage

    runs: dict[str, LBFGSStageResult] = {}
    try:
        with torch.enable_grad():
            content1 = run_vgg(fg, (content_layer,))[0] if cfg1.content else None
            objective = StageObjective(cfg1, content_target=content1, content_on_free=True, content_mask=mask, **common)
            runs["stage1"] = run(objective, _initial(init, fg, bg, mask, generator).clamp(0, 1), "stage 1")
            blend1 = result = objective.compose(runs["stage1"].solution)
            if stages == 2:
                content2 = run_vgg(blend1, (content_layer,))[0] if cfg2.content else None
                objective = StageObjective(cfg2, content_target=content2, content_on_free=False, content_mask=None,
                                           **common)  # fmt: skip
                runs["stage2"] = run(objective, blend1, "stage 2")
                result = objective.compose(runs["stage2"].solution)
    finally:
        if bar is not None:
            bar.close()

    for number, stage in enumerate(runs.values(), start=1):
        warn_unconverged(stage.solver, f"deep_blend stage {number}")
    histories = [stage.history for stage in runs.values()]
    info: dict[str, Any] = {
        "stage1": blend1,
        "iterations": tuple(stage.solver.iterations for stage in runs.values()),
        "history": {name: stage.history for name, stage in runs.items()},
        "terms": {name: stage.terms for name, stage in runs.items()},
        "solver": {name: stage.solver for name, stage in runs.items()},
        "frames": {name: stage.frames for name, stage in runs.items()} if frames else {},
    }
    solver = SolverResult(
        solution=result,
        iterations=sum(info["iterations"]),
        history=torch.cat([histories[0]] + [h[1:] for h in histories[1:]]),
        converged=torch.stack([stage.solver.converged for stage in runs.values()]).all(0),
        info=info,
        criterion=f"{criterion(tol_window)}, each stage",
        tol=tol,
        reached=torch.stack([stage.solver.reached for stage in runs.values()]).amax(0),
    )
    return DeepBlendResult(result, solver, stage1_image=blend1, stages=runs)


def _initial(init, fg, bg, mask, generator) -> torch.Tensor:
    """The stage-1 start ``I_Z`` (before its clip to [0, 1])."""
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


def deep_blend(
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
    L-BFGS (step 1, no line search, memory ``history_size``; :func:`fusion.optim.lbfgs.lbfgs_stage`) for each
    batch sample on its own, until the relative change of the stage objective per iteration (over the last
    ``tol_window`` iterations) is at most ``tol`` or ``max_iter`` iterations are done (then a
    :class:`fusion.ConvergenceWarning` names the stage; see the module docstring for the criterion); the free
    pixels are clipped to [0, 1] at the end of each stage (``clamp=True``: after every iteration). Style and
    histogram losses use VGG16 layers conv1_2, conv2_2, conv3_3 and conv4_3, the content loss conv2_2; the
    Poisson gradient loss the 5-point Laplacian. :func:`deep_blend_solve` returns the same image with the
    record of each stage; :class:`DeepBlend` is this function as a module.

    Not differentiable: inputs that require grad raise ``ValueError`` (see the module docstring).

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
            :data:`STAGE2_DEFAULTS` (the paper's). ``max_iter`` (``>= 1``) caps the stage's iterations.
        init: stage-1 start ``I_Z``: ``"noise"`` (uniform, from ``generator``; the paper's), ``"source"``,
            ``"target"``, ``"poisson"`` (Poisson image editing's result) or a ``(B, C, H, W)`` tensor.
        generator: randomness of ``init="noise"``.
        **options: the remaining keywords of :func:`deep_blend_solve` — ``content_layer``, ``style_layers``,
            ``poisson_region`` ("mask" or "image", see :class:`fusion.nn.losses.PoissonGradientLoss`), ``lr``,
            ``history_size``, ``clamp``, ``tol`` (``> 0``, default 1e-5: a stage stops for a sample when its
            objective's relative change per iteration, over the last ``tol_window`` (default 10) iterations, is
            at most ``tol``), ``tol_window``, ``stop_early`` (``False``: run every ``max_iter`` iteration, the
            paper's fixed count, and test the last one), ``stages`` (1: stage 1 only, the single-stage variant of
            the paper's ablation), ``mixed_precision``, ``progress`` (tqdm bar), ``frames`` (snapshots, kept in
            :func:`deep_blend_solve`'s record only).

    Returns:
        ``(B, C, H, W)`` blended image at the size of ``bg``; equal to ``bg`` wherever the mask is 0.

    Raises:
        ValueError: bad options or inputs, or inputs that require grad.
        TypeError: inputs that are not floating-point tensors, ``fg`` and ``bg`` of different dtype or device, a
            ``vgg_weights`` of the wrong type.
        FileNotFoundError: ``vgg_weights`` names no file (or is ``None`` and torchvision's cache lacks them).

    Example:
        >>> fg, bg = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 24, 32)
        >>> mask = torch.zeros(1, 1, 16, 16); mask[..., 4:12, 4:12] = 1
        >>> few = {"max_iter": 2}
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # two iterations per stage: each stage warns that it stopped early
        ...     out = deep_blend(fg, bg, mask, vgg_weights="random", stage1=few, stage2=few, offset=(4, 8))
        >>> out.shape, bool((out[..., :4, :] == bg[..., :4, :]).all())
        (torch.Size([1, 3, 24, 32]), True)
    """
    return deep_blend_solve(fg, bg, mask, offset=offset, vgg_weights=vgg_weights, stage1=stage1, stage2=stage2,
                            init=init, generator=generator, **options).image  # fmt: skip


class DeepBlend(nn.Module):
    """:func:`deep_blend` as a layer: the options are fixed at construction, ``forward(fg, bg, mask)`` blends.

    The VGG16 features are built once, here (from ``vgg_weights``, or the :class:`~fusion.nn.vgg.VGG16Features`
    given), and held as the frozen submodule ``vgg``: ``.to()`` moves them and every call reuses them.
    ``generator`` draws the noise start of each call in turn (``None``: torch's global generator). The options
    that do not depend on the images are checked here; the images at each call.

    Not differentiable (see :func:`deep_blend`): use it where no gradient flows back to its inputs, e.g. as a
    data-synthesis or augmentation step in front of a network, under ``torch.no_grad()``.

    Args:
        vgg_weights, stage1, stage2, init, generator, offset, content_layer, style_layers, poisson_region, lr,
        history_size, clamp, tol, tol_window, stop_early, stages, mixed_precision: as in :func:`deep_blend`.

    Example:
        >>> layer = DeepBlend(vgg_weights="random", stage1={"max_iter": 2}, stages=1,
        ...                   generator=torch.Generator().manual_seed(0))
        >>> fg, bg = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
        >>> mask = torch.zeros(2, 1, 16, 16); mask[..., 4:12, 4:12] = 1
        >>> import warnings
        >>> with warnings.catch_warnings(), torch.no_grad():
        ...     warnings.simplefilter("ignore")  # two iterations: the stage warns that it stopped early
        ...     out = layer(fg, bg, mask)
        >>> out.shape, out.requires_grad
        (torch.Size([2, 3, 16, 16]), False)
    """

    def __init__(self, *, vgg_weights: str | os.PathLike[str] | VGG16Features | None = None,
                 stage1: StageConfig | Mapping[str, Any] | None = None,
                 stage2: StageConfig | Mapping[str, Any] | None = None, init: Init | torch.Tensor = "noise",
                 generator: torch.Generator | None = None, offset: Sequence[int] | None = None,
                 content_layer: str = "conv2_2", style_layers: Sequence[str] = STYLE_LAYERS,
                 poisson_region: Literal["mask", "image"] = "mask", lr: float = 1.0, history_size: int = 100,
                 clamp: bool = False, tol: float = DEFAULT_TOL, tol_window: int = DEFAULT_WINDOW,
                 stop_early: bool = True, stages: int = 2, mixed_precision: bool | None = None) -> None:  # fmt: skip
        super().__init__()
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
        opts = _check_options(stage1=stage1, stage2=stage2, init=init, content_layer=content_layer,
                              style_layers=style_layers, poisson_region=poisson_region, lr=lr,
                              history_size=history_size, clamp=clamp, tol=tol, tol_window=tol_window,
                              stop_early=stop_early, stages=stages, frames=0)  # fmt: skip
        self.vgg = _features(vgg_weights, tuple(dict.fromkeys((*opts["style_layers"], content_layer))))
        self.generator = generator
        self.options = dict(stage1=opts["cfg1"], stage2=opts["cfg2"], init=init, offset=offset,
                            content_layer=content_layer, style_layers=opts["style_layers"],
                            poisson_region=poisson_region, lr=opts["lr"], history_size=history_size, clamp=clamp,
                            tol=opts["tol"], tol_window=tol_window, stop_early=stop_early, stages=stages,
                            mixed_precision=mixed_precision)  # fmt: skip

    def forward(self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The blend of ``fg`` into ``bg`` on ``mask``, ``(B, C, H, W)`` (see :func:`deep_blend`)."""
        return deep_blend(fg, bg, mask, vgg_weights=self.vgg, generator=self.generator, **self.options)

    def extra_repr(self) -> str:
        shown = {k: v for k, v in self.options.items() if not isinstance(v, torch.Tensor)}
        return ", ".join(f"{k}={v!r}" for k, v in shown.items())


@register("deep_blend", options_from=deep_blend_solve)
def deep_blend_cli(
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

    Writes the result, the loss curves of the stages (``curves["loss"]``, batch sample 0) and, with
    ``save_intermediate=True``, ``intermediate_frames`` snapshots of each stage as ``frames["stage1"]`` and
    ``frames["stage2"]``. ``seed`` seeds the noise start; a progress bar runs over the iterations.
    """
    check_int(seed, "seed")
    check_int(intermediate_frames, "intermediate_frames", minimum=2)
    save = check_flag(save_intermediate, "save_intermediate")
    start = init
    if isinstance(init, str) and init == "noise" and isinstance(bg, torch.Tensor) and bg.ndim == 4:
        # every sample draws the same seeded noise, so an item of a batch run starts as its single call does
        draws = [torch.rand(bg.shape[1:], generator=torch.Generator().manual_seed(seed), dtype=bg.dtype)
                 for _ in range(bg.shape[0])]  # fmt: skip
        start = torch.stack(draws).to(bg.device)
    result = deep_blend_solve(fg, bg, mask, vgg_weights=vgg_weights, stage1=stage1, stage2=stage2, init=start,
                              generator=None, frames=intermediate_frames if save else 0,
                              progress=progress, **options)  # fmt: skip
    curves = {"loss": {f"stage {name[-1]}": stage.history[:, 0].cpu() for name, stage in result.stages.items()}}
    frames = {name: stage.frames.clamp(0, 1) for name, stage in result.stages.items()} if save else {}
    return MethodOutput(result=result.image, frames=frames, curves=curves)
