"""Dynamic optimal transport between gray or RGB images (Benamou–Brenier; Papadakis et al. 2014; Fitschen, Laus
& Steidl 2016).

An image is a density on the pixel grid and, for colour images, along a colour axis with ``C`` cells (R, G, B):
its mass is the sum of all its values. :func:`ot_interpolate` computes the displacement interpolation between two
images — the minimiser of the kinetic energy ``∫∫ |m|²/(2f)`` under the continuity equation
``∂_t f + div m = 0`` — on the staggered grid of :mod:`fusion.ops.staggered`, by the primal–dual algorithm of
:mod:`fusion.optim.ot_primal_dual`. Mass moves in space (mirror conditions) and, for RGB, between channels: with
periodic colour conditions along the circle R → G → B → R, so red turns into blue through red–blue mixtures
(magenta); with mirror colour conditions it has to pass through green.

Units: the longer image side has length 1, the colour circle length 1, time runs over [0, 1]. The cost is
``Σ J · cell volume``; for a density of total mass ``M`` (``Σ f · h²``, summed over colour with weight ``1/C``)
translated by ``s`` it tends to ``M|s|²/2``.

Convergence: the primal–dual method converges slowly (sublinearly). A sample has converged when, at a check
(every 10 iterations), the mean relative change of its iterate per iteration since the previous check is below
``tol`` and, in the constrained model, so is the relative residual ``‖Au − b‖/‖b‖`` of the continuity equation
(see :func:`fusion.optim.ot_primal_dual.ot_primal_dual`); the penalised model violates the continuity equation
on purpose, so only the change is tested there. Each sample stops on its own (the result of a sample never
depends on the rest of its batch); a sample that reaches ``max_iter`` first is reported by one
:class:`fusion.ConvergenceWarning`. Measured on photographs the frames are then within about ``300 · tol``
(relative) of the discrete minimiser.

Gradients: every function here is differentiable in its image inputs by unrolling the iterations (autograd
records each of them; the cubic root of the prox is differentiated implicitly, through its last Newton step).
Memory grows linearly with the iterations: autograd keeps about 40 tensors of the size of the cell grid
``(B, P, C, H, W)`` per iteration (measured: 1.8 MB per iteration for a 16×16 RGB image with 8 steps in float64,
28 MB per iteration at the command-line size, 51×64 RGB with 16 steps in float32), so backpropagating through a
full run is only practical for small images or a small ``max_iter`` (the gradient is then that of the returned
iterate, not of the exact minimiser). Inputs that do not require grad build no graph.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fusion.methods.contract import MethodResult
from fusion.methods.registry import MethodOutput, register
from fusion.ops.checks import check_image, check_max_iter, check_tol
from fusion.ops.filters import resize
from fusion.ops.result import warn_unconverged
from fusion.ops.staggered import StaggeredGrid, full_density, interpolate
from fusion.optim.ot_primal_dual import DEFAULT_RELAXATION, ot_primal_dual

#: Default penalty of the penalised model, relative to the mean density: ``λ = DEFAULT_LAMBDA / mean(f)``.
DEFAULT_LAMBDA = 10.0
#: Default primal step of the constrained model, relative to the mean density and the grid:
#: ``τ = DEFAULT_STEP · mean(f) · max(H, W)``, ``σ = 0.99/τ``. Measured on photograph pairs (24 to 64 pixels, 8 to
#: 16 time steps): the best step grows with the image side and hardly depends on the number of time steps; 1.25 is
#: near the best at every size tried.
DEFAULT_STEP = 1.25
#: Default primal step of the penalised model, relative to the mean density: ``τ = DEFAULT_STEP_PENALIZED ·
#: mean(f)`` (with the default ``λ``, ``τλ = 100``). Measured on the same pairs: larger steps slow it down (at 64
#: pixels, 20 instead of 10 needs about twice the iterations), and the best step does not grow with the size.
DEFAULT_STEP_PENALIZED = 10.0
#: Default iteration cap and tolerance (see the module docstring for what is tested).
DEFAULT_MAX_ITER = 5000
DEFAULT_TOL = 1e-5
#: Relative difference of total mass above which the constrained model rejects its inputs.
MASS_RTOL = 1e-3


@dataclass
class OTResult(MethodResult):
    """What :func:`ot_solve` returns.

    Attributes:
        image: ``(steps+1, B, C, H, W)`` densities at ``t = k/steps`` (what :func:`ot_interpolate` returns); the
            first and last are the inputs. Also available as :attr:`frames`.
        solver: the primal–dual :class:`SolverResult` (``solution`` is the staggered ``(m, f)``; ``info`` holds
            ``cost_history`` and ``residual_history``).
        cost: ``(B,)`` discrete Benamou–Brenier cost ``Σ J · cell volume`` (≈ ``W₂²/2`` in the constrained model).
        momentum: ``(steps, B, K, C, H, W)`` momentum at the cell centres (times ``(k−½)/steps``), components
            ``(x, y)`` for gray images and ``(x, y, colour)`` for colour images (``K = 2`` or ``3``).
    """

    cost: torch.Tensor | None = None
    momentum: torch.Tensor | None = None

    @property
    def frames(self) -> torch.Tensor:
        """The interpolation, ``(steps+1, B, C, H, W)`` (the same tensor as ``image``)."""
        return self.image


def _validate(f0, f1, steps, model, color_bc, lam, max_iter, tol, tau, relaxation):
    f0 = check_image(f0, "f0")
    f1 = check_image(f1, "f1")
    if f0.shape[1:] != f1.shape[1:]:
        raise ValueError(f"f0 is {tuple(f0.shape[1:])} and f1 is {tuple(f1.shape[1:])} (C, H, W); expected equal")
    if f0.dtype != f1.dtype or f0.device != f1.device:
        raise TypeError(f"f0 and f1 must share dtype and device, got {f0.dtype}/{f0.device} and {f1.dtype}/{f1.device}")
    if f0.shape[0] != f1.shape[0]:
        if 1 not in (f0.shape[0], f1.shape[0]):
            raise ValueError(f"batch sizes differ: f0 {f0.shape[0]}, f1 {f1.shape[0]}")
        batch = max(f0.shape[0], f1.shape[0])
        f0, f1 = f0.expand(batch, -1, -1, -1), f1.expand(batch, -1, -1, -1)
    if min(f0.shape[-2:]) < 2:
        raise ValueError(f"images must be at least 2x2, got {f0.shape[-2]}x{f0.shape[-1]}")
    for name, f in (("f0", f0), ("f1", f1)):
        if bool((f < 0).any()):
            raise ValueError(f"{name} must be non-negative (a density), got minimum {f.min().item():g}")
        if not bool((f.flatten(1).sum(1) > 0).all()):
            raise ValueError(f"{name} has a sample with zero total mass; every image needs some positive value")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 2:
        raise ValueError(f"steps must be an integer >= 2, got {steps!r}")
    if model not in ("constrained", "penalized"):
        raise ValueError(f"model must be 'constrained' or 'penalized', got {model!r}")
    if color_bc not in ("periodic", "mirror"):
        raise ValueError(f"color_bc must be 'periodic' or 'mirror', got {color_bc!r}")
    if lam is not None and not (isinstance(lam, (int, float)) and lam > 0):
        raise ValueError(f"lam must be a positive number or None, got {lam!r}")
    if tau is not None and not (isinstance(tau, (int, float)) and tau > 0):
        raise ValueError(f"tau must be a positive number or None, got {tau!r}")
    check_max_iter(max_iter, "max_iter")
    check_tol(tol, "tol")
    if isinstance(relaxation, bool) or not isinstance(relaxation, (int, float)) or not 0 < relaxation < 2:
        raise ValueError(f"relaxation must be a number in (0, 2), got {relaxation!r}")
    m0, m1 = f0.flatten(1).sum(1), f1.flatten(1).sum(1)
    if model == "constrained":
        rel = ((m0 - m1).abs() / torch.maximum(m0, m1)).max().item()
        if rel > MASS_RTOL:
            raise ValueError(
                f"f0 and f1 have different total mass (relative difference {rel:.3g} > {MASS_RTOL:g}); the "
                "constrained model needs equal mass: normalise the images or use model='penalized'"
            )
    return f0, f1


def ot_solve(
    f0: torch.Tensor,
    f1: torch.Tensor,
    *,
    steps: int = 16,
    model: Literal["constrained", "penalized"] = "constrained",
    color_bc: Literal["periodic", "mirror"] = "periodic",
    lam: float | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    tau: float | None = None,
    relaxation: float = DEFAULT_RELAXATION,
) -> OTResult:
    """Displacement interpolation between two images by dynamic optimal transport (Fitschen et al., §3–4).

    Constrained model (balanced, Papadakis et al. eq. (10)): ``min Σ J(S u)`` subject to the discrete continuity
    equation ``A u = b``; needs equal total mass. Penalised model (unbalanced): ``min Σ J(S u) + (λ/2)‖Au − b‖²``.
    Both run on the first-order primal–dual algorithm.

    Args:
        f0, f1: ``(B, C, H, W)`` non-negative densities, same ``C, H, W`` (batch 1 broadcasts). ``C = 1``: gray,
            transport in space only; ``C > 1`` (RGB): transport along the colour axis too.
        steps: number of time steps ``P >= 2``; ``steps + 1`` frames are returned.
        model: ``"constrained"`` or ``"penalized"``.
        color_bc: ``"periodic"`` (R → G → B → R, the paper's model) or ``"mirror"`` (no flux across B|R).
        lam: penalty ``λ > 0`` of the penalised model; ``None`` takes ``10 / mean density`` per sample, which makes
            the result invariant to scaling both images (the cost is 1-homogeneous in the densities).
        max_iter: iteration cap (an integer ``>= 1``).
        tol: tolerance of the stopping test (module docstring): the mean relative change of the iterate per
            iteration over the last check interval and, constrained, the relative constraint residual.
        tau: primal step ``τ = tau · mean f · max(H, W)`` (constrained) or ``τ = tau · mean f`` (penalised), per
            sample, with ``σ = 0.99/τ``; ``None``: :data:`DEFAULT_STEP` or :data:`DEFAULT_STEP_PENALIZED`.
            Concentrated mass that moves far (a small bump crossing the image) converges faster with a smaller
            step (0.3 instead of 1.25 for a 32×32 bump moving by 0.3: 1110 instead of 3400 iterations).
        relaxation: over-relaxation ``ρ ∈ (0, 2)`` of the primal–dual iteration (1: plain Chambolle–Pock).

    Returns:
        :class:`OTResult`; ``solver.converged`` ``(B,)`` says which samples met ``tol``, ``solver.reached`` their
        final criterion, ``solver.info["iterations"]`` ``(B,)`` where each stopped.

    Warns:
        fusion.ConvergenceWarning: some sample stopped at ``max_iter`` before meeting ``tol`` (one warning naming
            the samples, the iterations, the criterion's values and ``tol``).

    Raises:
        ValueError: negative or zero-mass inputs, shapes that differ, unequal total mass in the constrained model
            (relative difference above ``1e-3``), bad parameters (``max_iter < 1`` or not an integer, ``tol <= 0``,
            ``tau <= 0``, ``relaxation`` outside ``(0, 2)``, ...).

    Differentiable in ``f0`` and ``f1`` (frames, momentum and cost) by unrolling; see the module docstring for
    the memory this takes.

    Example:
        >>> f0 = torch.ones(1, 1, 8, 8); f0[..., :4] = 3.0
        >>> r = ot_solve(f0, f0.flip(-1), steps=4, tol=1e-4)
        >>> r.frames.shape, bool(torch.allclose(r.frames[0], f0)), bool(r.solver.converged)
        (torch.Size([5, 1, 1, 8, 8]), True, True)
    """
    f0, f1 = _validate(f0, f1, steps, model, color_bc, lam, max_iter, tol, tau, relaxation)
    batch, c, h, w = f0.shape
    grid = StaggeredGrid(steps, c, h, w, color_bc)
    mean = 0.5 * (f0.flatten(1).mean(1) + f1.flatten(1).mean(1))
    if model == "constrained":
        step = (DEFAULT_STEP if tau is None else tau) * mean * max(h, w)
    else:
        step = (DEFAULT_STEP_PENALIZED if tau is None else tau) * mean
    lam_t = DEFAULT_LAMBDA / mean if lam is None else torch.full_like(mean, float(lam))
    result = ot_primal_dual(
        f0, f1, grid, model=model, lam=lam_t, tau=step, relaxation=relaxation, max_iter=max_iter, tol=tol
    )
    warn_unconverged(result, f"ot ({model})")
    u = result.solution
    frames = full_density(u.f, f0, f1).transpose(0, 1).contiguous()
    v = interpolate(u, grid)
    comps = [v.mx, v.my] + ([v.mc] if v.mc is not None else [])
    momentum = torch.stack(comps, dim=2).transpose(0, 1).contiguous()
    return OTResult(frames, result, cost=result.info["cost"], momentum=momentum)


def ot_interpolate(
    f0: torch.Tensor,
    f1: torch.Tensor,
    *,
    steps: int = 16,
    model: Literal["constrained", "penalized"] = "constrained",
    color_bc: Literal["periodic", "mirror"] = "periodic",
    lam: float | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    tau: float | None = None,
    relaxation: float = DEFAULT_RELAXATION,
) -> torch.Tensor:
    """The displacement interpolation between ``f0`` and ``f1``: the frames of :func:`ot_solve` (same arguments).

    Returns:
        ``(steps+1, B, C, H, W)`` densities at ``t = k/steps``. A sample that stops at ``max_iter`` before ``tol``
        emits :class:`fusion.ConvergenceWarning`.

    Example:
        >>> f0 = torch.ones(1, 1, 8, 8); f0[..., :4] = 3.0
        >>> ot_interpolate(f0, f0.flip(-1), steps=4, tol=1e-4).shape
        torch.Size([5, 1, 1, 8, 8])
    """
    return ot_solve(
        f0,
        f1,
        steps=steps,
        model=model,
        color_bc=color_bc,
        lam=lam,
        max_iter=max_iter,
        tol=tol,
        tau=tau,
        relaxation=relaxation,
    ).image


class OTInterpolate(nn.Module):
    """:func:`ot_interpolate` as a layer: ``forward(f0, f1)`` returns the ``(steps+1, B, C, H, W)`` frames, with the
    options fixed at construction; differentiable in both densities (by unrolling the iterations).

    Example:
        >>> layer = OTInterpolate(steps=4, tol=1e-4)
        >>> f0 = torch.ones(1, 1, 8, 8); f0[..., :4] = 3.0
        >>> layer(f0, f0.flip(-1)).shape
        torch.Size([5, 1, 1, 8, 8])
    """

    def __init__(
        self,
        *,
        steps: int = 16,
        model: Literal["constrained", "penalized"] = "constrained",
        color_bc: Literal["periodic", "mirror"] = "periodic",
        lam: float | None = None,
        max_iter: int = DEFAULT_MAX_ITER,
        tol: float = DEFAULT_TOL,
        tau: float | None = None,
        relaxation: float = DEFAULT_RELAXATION,
    ) -> None:
        super().__init__()
        self.options = dict(
            steps=steps,
            model=model,
            color_bc=color_bc,
            lam=lam,
            max_iter=max_iter,
            tol=tol,
            tau=tau,
            relaxation=relaxation,
        )

    def forward(self, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
        return ot_interpolate(f0, f1, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


def _working_size(h: int, w: int, size: int | None) -> tuple[int, int]:
    if size is None or max(h, w) <= size:
        return h, w
    scale = size / max(h, w)
    return max(2, round(h * scale)), max(2, round(w * scale))


@register("ot", needs_mask=False)
def ot_cli(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    steps: int = 16,
    model: Literal["constrained", "penalized"] = "constrained",
    color_bc: Literal["periodic", "mirror"] = "periodic",
    lam: float | None = None,
    max_iter: int = DEFAULT_MAX_ITER,
    tol: float = DEFAULT_TOL,
    tau: float | None = None,
    size: int | None = 64,
    floor: float = 1e-3,
    normalize: bool = True,
) -> MethodOutput:
    """Command-line adapter: transport ``fg`` (``t = 0``) to ``bg`` (``t = 1``); the result is the midpoint.

    The images are downscaled so that their longer side is at most ``size`` pixels (``None`` keeps the full
    size; OT is expensive: ``steps × C × H × W`` unknowns per iteration), ``floor`` is added so that black
    pixels carry a little mass, and with ``normalize`` (and the constrained model) both are scaled to their mean
    mass; the frames are scaled back by the linear mass profile ``(1−t)M₀ + tM₁`` and the floor removed, so the
    end frames are the downscaled inputs. The midpoint frame is resized back to the input size. ``steps``,
    ``model``, ``color_bc``, ``lam``, ``max_iter``, ``tol`` and ``tau`` are those of :func:`ot_interpolate` (same
    defaults, same :class:`fusion.ConvergenceWarning` when a sample stops at ``max_iter``); the adapter is
    differentiable in ``fg`` and ``bg`` like it (``mask`` is ignored).

    Returns:
        :class:`MethodOutput` with ``result`` the ``(B, C, H, W)`` midpoint, ``frames["frames"]`` the
        ``(steps+1, B, C, h, w)`` interpolation at working size, and ``curves["convergence"]`` the relative
        change of the iterates, the relative constraint residual ``‖Au − b‖/‖b‖`` (evaluated every 10 iterations)
        and the cost, per iteration, for the first sample.
    """
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 2):
        raise ValueError(f"size must be an integer >= 2 or None, got {size!r}")
    if not (isinstance(floor, (int, float)) and floor >= 0):
        raise ValueError(f"floor must be >= 0, got {floor!r}")
    fg = check_image(fg, "fg")
    bg = check_image(bg, "bg")
    h, w = fg.shape[-2:]
    work = _working_size(h, w, size)
    f0 = resize(fg, work).clamp_min(0) + floor
    f1 = resize(bg, work).clamp_min(0) + floor
    m0, m1 = f0.flatten(1).sum(1), f1.flatten(1).sum(1)
    scale0 = scale1 = torch.ones_like(m0)
    if normalize and model == "constrained":
        target = 0.5 * (m0 + m1)
        scale0, scale1 = target / m0, target / m1
    r = ot_solve(
        f0 * scale0.view(-1, 1, 1, 1),
        f1 * scale1.view(-1, 1, 1, 1),
        steps=steps,
        model=model,
        color_bc=color_bc,
        lam=lam,
        max_iter=max_iter,
        tol=tol,
        tau=tau,
    )
    t = torch.linspace(0, 1, steps + 1, dtype=fg.dtype, device=fg.device).view(-1, 1)
    back = ((1 - t) / scale0 + t / scale1).view(steps + 1, -1, 1, 1, 1)
    frames = (r.frames * back - floor).clamp(0, 1)
    mid = resize(frames[steps // 2], (h, w)).clamp(0, 1)
    info = r.solver.info
    # the residual is evaluated every few iterations; hold each value until the next evaluation
    at = torch.as_tensor(info["residual_iterations"], device=fg.device)
    k = torch.arange(r.solver.iterations + 1, device=fg.device)
    held = info["residual_history"][torch.searchsorted(at, k, right=True) - 1, 0]
    curves = {
        "relative change": r.solver.history[:, 0],
        "constraint residual": held,
        "cost": info["cost_history"][:, 0],
    }
    return MethodOutput(result=mid, frames={"frames": frames}, curves={"convergence": curves})
