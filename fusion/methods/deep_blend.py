"""Deep Image Blending (Zhang, Wen & Shi, WACV 2020): Poisson gradient loss plus VGG style and content, by L-BFGS.

Two stages (the paper's Algorithms 1 and 2) optimise pixels by L-BFGS (:func:`fusion.optim.lbfgs.lbfgs`):

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
``init`` as a tensor for starts that do not.
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
from fusion.ops.checks import (
    check_batch,
    check_blend_inputs,
    check_image,
    check_max_iter,
    check_same_size,
    check_tol,
)
from fusion.ops.result import SolverResult, warn_unconverged
from fusion.optim.lbfgs import criterion, lbfgs

__all__ = [
    "DEFAULT_TOL",
    "DEFAULT_WINDOW",
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
#: Default tolerance of each stage's stopping rule: relative change of the stage objective per L-BFGS iteration.
DEFAULT_TOL = 1e-5
#: Default number of iterations that stopping rule looks back over.
DEFAULT_WINDOW = 10


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
    check_max_iter(cfg.max_iter, f"{name}.max_iter")
    for term in TERMS:
        weight = getattr(cfg, term)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
            raise ValueError(f"{name}.{term} must be a finite number >= 0, got {weight!r}")
    return replace(cfg, **{term: float(getattr(cfg, term)) for term in TERMS})


def _check_inputs(fg, bg, mask) -> None:
    """Check the inputs of :func:`deep_blend_solve` before the source is placed on the background (no side effects)."""
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

    def run(self, z0, *, lr, history_size, clamp, tol, window, stop_early, frames, bar, label):
        """Minimise the stage objective from ``z0`` with the batched L-BFGS of :func:`fusion.optim.lbfgs.lbfgs`.

        Returns ``(z, solver, history, terms, frames)``: ``z`` the free image clipped to [0, 1]; ``solver`` the
        optimiser's :class:`SolverResult` (unclipped iterates, per-sample iterations, criterion); ``history``
        ``(T + 1, B)`` objective values and ``terms`` ``{name: (T + 1, B)}`` unweighted loss terms, where row
        ``k`` is iterate ``k`` and, for each sample, the rows from its last iteration on hold the values at the
        stage's result (``T`` the most iterations any sample took); ``frames`` ``(F, B, C, H, W)`` or ``None``.
        """
        cfg = self.cfg
        planned = {round(i * cfg.max_iter / (frames - 1)) for i in range(frames)} if frames > 1 else set()
        rows: list[dict[str, torch.Tensor]] = []
        snapshots: dict[int, torch.Tensor] = {}

        def energy(z: torch.Tensor) -> torch.Tensor:
            k = len(rows)  # the optimiser evaluates iterates 0, 1, 2, ... in order, once each
            values = self.terms(z)
            total = self.total(values, z)
            rows.append({name: value.detach() for name, value in values.items()})
            if k in planned:
                snapshots[k] = self.compose(z.detach().clamp(0, 1))
            if bar is not None and k > 0:
                bar.set_postfix_str(f"{label} loss {float(total.detach().sum()):.4g}", refresh=False)
                bar.update(1)
            return total

        project = (lambda t: t.clamp(0, 1)) if clamp else None
        solver = lbfgs(energy, z0.detach(), max_iter=cfg.max_iter, tol=tol, window=window, history_size=history_size,
                       lr=lr, stop_early=stop_early, project=project)  # fmt: skip
        if bar is not None:
            bar.update(cfg.max_iter - solver.iterations)
        steps, last = solver.info["iterations"], solver.iterations
        with torch.no_grad():
            z = solver.solution.clamp(0, 1)  # the stage's result; its objective value closes the history
            final = self.terms(z)
            final_total = self.total(final, z)
        after = torch.arange(last + 1, device=steps.device)[:, None] >= steps[None, :]  # (T + 1, B)
        history = torch.where(after, final_total, solver.history.to(final_total.dtype))
        terms = {
            name: torch.where(after, final[name], torch.stack([row[name] for row in rows[: last + 1]]))
            for name in final
        }
        stacked = None
        if frames:
            result = self.compose(z)
            kept = [snapshots[k] for k in sorted(snapshots) if k < last][: frames - 1]
            stacked = torch.stack(kept + [result] * (frames - len(kept)))
        return z, solver, history, terms, stacked


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
    tol: float = DEFAULT_TOL,
    tol_window: int = DEFAULT_WINDOW,
    stop_early: bool = True,
    stages: int = 2,
    frames: int = 0,
    mixed_precision: bool | None = None,
    progress: bool = False,
) -> SolverResult:
    """Both stages of Deep Image Blending; returns the :class:`SolverResult` (see :func:`deep_image_blend`).

    Emits one :class:`fusion.ConvergenceWarning` per stage that stopped above ``tol`` for some sample (method
    ``"deep_blend stage 1"`` or ``"deep_blend stage 2"``).

    Returns:
        ``solution``: ``(B, C, H, W)`` refined blend ``I_BR`` at the size of ``bg`` (the stage-1 blend with
        ``stages=1``). ``iterations``: L-BFGS iterations of the stages together (per stage, the most any sample
        took). ``history``: ``(iterations + 1, B)`` per-sample objective values — the stage-1 objective at
        stage-1 iterates ``0 … T1``, then the stage-2 objective at stage-2 iterates ``1 … T2`` (its value at the
        start is ``info["history"]["stage2"][0]``); from a sample's last iteration of a stage on, the value at the
        stage's result (that iterate clipped to [0, 1]). ``converged``: ``(B,)``, true when every stage met the
        criterion for that sample. ``criterion``, ``tol``: the stopping rule (see the module docstring); ``reached``
        ``(B,)``: the larger of the stages' last relative changes. ``info``: ``"stage1"`` the stage-1 blend
        ``I_B``; ``"iterations"`` ``(T1, T2)`` (``(T1,)`` with ``stages=1``); per stage (keys ``"stage1"``,
        ``"stage2"``): ``"history"`` ``(T + 1, B)`` objective values, ``"terms"`` the unweighted loss terms
        ``{name: (T + 1, B)}``, ``"solver"`` the optimiser's :class:`SolverResult` (its ``info["iterations"]``
        per sample, ``info["diverged"]`` the samples whose objective became non-finite — they keep their last
        finite iterate), and ``"frames"`` ``(F, B, C, H, W)`` snapshots of the blend at iterations
        ``round(i·max_iter/(F − 1))``, the last one the stage's result, repeated when the stage stopped earlier
        (only when ``frames > 0``).

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
        >>> res.iterations, tuple(res.history.shape), sorted(res.info["terms"]["stage2"])
        (5, (6, 1), ['content', 'hist', 'style', 'tv'])
    """
    _refuse_grad(fg=fg, bg=bg, mask=mask, init=init)
    fg, bg, mask, init = (t.detach() if isinstance(t, torch.Tensor) else t for t in (fg, bg, mask, init))
    _check_inputs(fg, bg, mask)
    if offset is not None or fg.shape[-2:] != bg.shape[-2:]:
        fg, mask = place_source(fg, mask, bg, offset)
    fg, bg, mask = check_blend_inputs(fg, bg, mask)
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
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not 0 < lr < math.inf:
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    check_max_iter(history_size, "history_size")
    tol = check_tol(tol, "tol")
    check_max_iter(tol_window, "tol_window")
    for name, flag in (("stop_early", stop_early), ("clamp", clamp)):
        if not isinstance(flag, bool):
            raise ValueError(f"{name} must be true or false, got {flag!r}")
    if isinstance(stages, bool) or stages not in (1, 2):
        raise ValueError(f"stages must be 1 (seamless blending only) or 2 (with style refinement), got {stages!r}")
    if not isinstance(frames, int) or isinstance(frames, bool) or frames < 0:
        raise ValueError(f"frames must be a non-negative integer, got {frames!r}")
    if isinstance(init, torch.Tensor):
        check_image(init, "init", channels=fg.shape[1])
        check_same_size(init=init, bg=bg)
        check_batch(init=init, bg=bg)
    elif init not in ("noise", "source", "target", "poisson"):
        raise ValueError(f"init must be 'noise', 'source', 'target', 'poisson' or a tensor, got {init!r}")
    configs = (cfg1, cfg2)[:stages]
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
    run_kw = dict(lr=float(lr), history_size=history_size, clamp=clamp, tol=tol, window=tol_window,
                  stop_early=stop_early, frames=frames)  # fmt: skip

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(cfg.max_iter for cfg in configs), desc="deep blend", unit="it", leave=False)
    runs: dict[str, tuple] = {}
    try:
        with torch.enable_grad():
            content1 = run_vgg(fg, (content_layer,))[0] if cfg1.content else None
            stage = _Stage(cfg1, content_target=content1, content_on_free=True, content_mask=mask, **common)
            z0 = _initial(init, fg, bg, mask, generator).clamp(0, 1)
            runs["stage1"] = stage.run(z0, bar=bar, label="stage 1", **run_kw)
            blend1 = result = stage.compose(runs["stage1"][0])
            if stages == 2:
                content2 = run_vgg(blend1, (content_layer,))[0] if cfg2.content else None
                stage = _Stage(cfg2, content_target=content2, content_on_free=False, content_mask=None, **common)
                runs["stage2"] = stage.run(blend1, bar=bar, label="stage 2", **run_kw)
                result = stage.compose(runs["stage2"][0])
    finally:
        if bar is not None:
            bar.close()

    solvers = {name: run[1] for name, run in runs.items()}
    for number, (name, solver) in enumerate(solvers.items(), start=1):
        warn_unconverged(solver, f"deep_blend stage {number}")
    histories = [run[2] for run in runs.values()]
    info: dict[str, Any] = {
        "stage1": blend1,
        "iterations": tuple(solver.iterations for solver in solvers.values()),
        "history": {name: run[2] for name, run in runs.items()},
        "terms": {name: run[3] for name, run in runs.items()},
        "solver": solvers,
        "frames": {name: run[4] for name, run in runs.items()} if frames else {},
    }
    reached = torch.stack([solver.reached for solver in solvers.values()]).amax(0)
    converged = torch.stack([solver.converged for solver in solvers.values()]).all(0)
    return SolverResult(
        solution=result,
        iterations=sum(info["iterations"]),
        history=torch.cat([histories[0]] + [h[1:] for h in histories[1:]]),
        converged=converged,
        info=info,
        criterion=f"{criterion(tol_window)}, each stage",
        tol=tol,
        reached=reached,
    )


def _refuse_grad(**tensors: Any) -> None:
    """Inputs that require grad get one clear error: the result is not differentiable with respect to them."""
    if not torch.is_grad_enabled():
        return
    asking = [name for name, t in tensors.items() if isinstance(t, torch.Tensor) and t.requires_grad]
    if asking:
        raise ValueError(
            "deep_image_blend is not differentiable with respect to its inputs: "
            f"{', '.join(asking)} require{'s' if len(asking) == 1 else ''} grad. The blend is the end point of "
            "up to thousands of L-BFGS iterations through VGG16, stopped at a tolerance (not an exact minimiser), "
            "so neither unrolling nor implicit differentiation gives its gradient; pass detached tensors"
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
    L-BFGS (step 1, no line search, memory ``history_size``; :func:`fusion.optim.lbfgs.lbfgs`) for each batch
    sample on its own, until the relative change of the stage objective per iteration (over the last
    ``tol_window`` iterations) is at most ``tol`` or ``max_iter`` iterations are done (then a
    :class:`fusion.ConvergenceWarning` names the stage; see the module docstring for the criterion); the free
    pixels are clipped to [0, 1] at the end of each stage (``clamp=True``: after every iteration). Style and
    histogram losses use VGG16 layers conv1_2, conv2_2, conv3_3 and conv4_3, the content loss conv2_2; the
    Poisson gradient loss the 5-point Laplacian.

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
            at most ``tol``), ``tol_window``, ``stop_early`` (``False``: run
            every ``max_iter`` iteration, the paper's fixed count, and test the last one), ``stages`` (1: stage 1
            only, the single-stage variant of the paper's ablation), ``frames``, ``mixed_precision``,
            ``progress`` (tqdm bar).

    Returns:
        ``(B, C, H, W)`` blended image at the size of ``bg``; equal to ``bg`` wherever the mask is 0.

    Raises:
        ValueError: bad options or inputs, or inputs that require grad.

    Example:
        >>> fg, bg = torch.rand(1, 3, 16, 16), torch.rand(1, 3, 24, 32)
        >>> mask = torch.zeros(1, 1, 16, 16); mask[..., 4:12, 4:12] = 1
        >>> few = {"max_iter": 2}
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")  # two iterations per stage: each stage warns that it stopped early
        ...     out = deep_image_blend(fg, bg, mask, vgg_weights="random", stage1=few, stage2=few, offset=(4, 8))
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


@register("deep_blend", options_from=deep_blend_solve)
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

    Writes the result, the loss curves of the stages (``curves["loss"]``, batch sample 0) and, with
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
    curves = {"loss": {f"stage {name[-1]}": h[:, 0].cpu() for name, h in result.info["history"].items()}}
    frames = {k: v.clamp(0, 1) for k, v in result.info["frames"].items()} if save_intermediate else {}
    return MethodOutput(result=result.solution, frames=frames, curves=curves)
