"""The two stages of Deep Image Blending (:mod:`fusion.methods.deep_image_blending`): settings and objective.

A stage is a :class:`StageConfig` (iteration cap and loss weights, the paper's numbers by default) and a
:class:`StageObjective`, the weighted sum of the losses of :mod:`fusion.nn.losses` on the composite
``Z ⊙ M + I_T ⊙ (1 − M)`` of the free image ``Z`` with the target ``I_T``. The method minimises each objective with
:func:`fusion.optim.lbfgs.lbfgs_stage`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, fields, replace
from typing import Any

import torch

from fusion.nn.losses import ContentLoss, HistogramLoss, PoissonGradientLoss, StyleLoss, TVLoss
from fusion.nn.vgg import VGG16Features
from fusion.ops.checks import check_max_iter, check_nonnegative_number

__all__ = [
    "DEFAULT_TOL",
    "DEFAULT_WINDOW",
    "STAGE1_DEFAULTS",
    "STAGE2_DEFAULTS",
    "TERMS",
    "StageConfig",
    "StageObjective",
    "stage_config",
]

#: The loss terms of a stage, in the order they are summed: Poisson gradient (eq. 6), content (eqs. 7 and 9), Gram
#: style (eqs. 8 and 10), histogram (eq. 11), total variation (eq. 12).
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


def stage_config(value: StageConfig | Mapping[str, Any] | None, defaults: StageConfig, name: str) -> StageConfig:
    """The :class:`StageConfig` a user's ``value`` stands for, checked; weights as ``float``.

    Args:
        value: a :class:`StageConfig`; a mapping overriding some fields of ``defaults``; or ``None`` for them.
        defaults: the stage's defaults (:data:`STAGE1_DEFAULTS` or :data:`STAGE2_DEFAULTS`).
        name: the option's name in messages (``"stage1"``).

    Raises:
        ValueError: an unknown key, a cap that is not an integer ``>= 1``, a weight that is not finite and ``>= 0``.
        TypeError: ``value`` is neither of the three.

    Example:
        >>> stage_config({"max_iter": 5, "hist": 0}, STAGE1_DEFAULTS, "stage1")
        StageConfig(max_iter=5, grad=1000000.0, content=1.0, style=1000000.0, hist=0.0, tv=1e-05)
    """
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
    return replace(cfg, **{term: check_nonnegative_number(getattr(cfg, term), f"{name}.{term}") for term in TERMS})


class StageObjective:
    """The objective of one stage as a function of the free image ``Z``, for :func:`~fusion.optim.lbfgs.lbfgs_stage`.

    With the composite ``I = Z ⊙ M + I_T ⊙ (1 − M)`` (:meth:`compose`), the objective is
    ``λ_grad L_grad(I) + λ_cont L_cont + λ_style L_style(I, I_T) + λ_hist L_hist(I, I_T) + λ_tv L_tv(I)`` with the
    weights of ``cfg`` (a zero weight skips its term): stage 1 is eqs. 6, 7, 8, 11, 12 with its content term on
    ``Z`` against the source (``content_on_free=True``, inside ``content_mask``), stage 2 eqs. 9–12 with its content
    term on ``I`` against the stage-1 blend. The style and histogram targets are precomputed from ``I_T``.

    Args:
        cfg: the stage's weights.
        vgg: the feature extractor; ``amp()`` the context its passes run under (autocast or nothing).
        target, mask, source: ``I_T`` ``(B, C, H, W)``, ``M`` ``(B, 1, H, W)``, ``I_S`` ``(B, C, H, W)``.
        guidance: the Poisson loss's guidance field of ``(source, target, mask)`` (``None`` without the term).
        content_target: the content features to match (``None`` without the term); ``content_layer`` their layer.
        style_layers, style_grams, hist_sorted: the style layers and the target's Gram matrices and sorted features.
        poisson: the Poisson gradient loss.

    Calling it on ``Z`` ``(B, C, H, W)`` returns ``(total, terms)``: the ``(B,)`` objective (float32 or wider) and
    the unweighted ``(B,)`` terms by name.
    """

    def __init__(self, cfg: StageConfig, *, vgg: VGG16Features, amp: Callable[[], AbstractContextManager[Any]],
                 target: torch.Tensor, mask: torch.Tensor, source: torch.Tensor, guidance: torch.Tensor | None,
                 content_target: torch.Tensor | None, content_on_free: bool, content_mask: torch.Tensor | None,
                 content_layer: str, style_layers: Sequence[str], style_grams: Sequence[torch.Tensor],
                 hist_sorted: Sequence[torch.Tensor], poisson: PoissonGradientLoss) -> None:  # fmt: skip
        self.cfg, self.vgg, self.amp = cfg, vgg, amp
        self.target, self.mask, self.source, self.guidance = target, mask, source, guidance
        self.content_target, self.content_on_free, self.content_mask = content_target, content_on_free, content_mask
        self.content_layer, self.style_layers = content_layer, tuple(style_layers)
        self.style_grams, self.hist_sorted = list(style_grams), list(hist_sorted)
        self.poisson = poisson
        self.content, self.style, self.hist, self.tv = ContentLoss(), StyleLoss(), HistogramLoss(), TVLoss()

    def compose(self, z: torch.Tensor) -> torch.Tensor:
        """The composite ``Z ⊙ M + I_T ⊙ (1 − M)``."""
        return z * self.mask + self.target * (1 - self.mask)

    def _vgg(self, x: torch.Tensor, layers: Sequence[str]) -> list[torch.Tensor]:
        with self.amp():
            return self.vgg(x, layers)

    def terms(self, z: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unweighted ``(B,)`` loss terms of ``Z`` that have a nonzero weight."""
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
        """``Σ λ_name · term`` over ``terms``, accumulated in float32 (float64 for float64 ``like``)."""
        dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
        total = torch.zeros(like.shape[0], dtype=dtype, device=like.device)
        for name, value in terms.items():
            total = total + getattr(self.cfg, name) * value
        return total

    def __call__(self, z: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        terms = self.terms(z)
        return self.total(terms, z), terms
