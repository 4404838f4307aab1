"""Variational osmosis fusion (Parisotto et al.): model (1), ``min_{u,v} O(u, v) + γ D(u) + η R(v)``.

* :func:`osmosis_solve` / :func:`osmosis_blend` / :class:`OsmosisBlend` — the method ``osmosis``: block-coordinate
  iPiano (Algorithm 1, :func:`fusion.optim.ipiano.ipiano`) with the closed-form prox (16) for ``u`` and the
  primal–dual prox (17)–(20) for ``v``; by default the ``u``-block is minimised exactly.
* :func:`alpha_map` — the α-maps of the paper (eq. 9, Fig. 2).

The linear osmosis filter, its fusion baseline (the method ``linear_osmosis``) and the linear system of the
``u``-block (:func:`~fusion.methods.linear_osmosis.solve_u_block`) are in :mod:`fusion.methods.linear_osmosis`.

What the variational model does where ``α = 0``. Nothing in model (1) ties ``u`` to the background ``b``: ``b``
enters only through ``v ≈ f^α b^{1−α}``, and the osmosis term fixes ``u`` only up to ``u = w·v`` with ``w``
``h``-harmonic there (for fixed ``v`` it is ``½ Σ h(v) |∇(u/v)|²``). Per channel and connected part, ``w`` is a
free constant if ``γα`` vanishes on the whole part (the minimisers form a ray ``{c·v}``, so the start ``u0`` picks
the scale: this is the paper's Fig. 3 with ``γ = 0``); otherwise ``w`` is the harmonic extension of the ratio
``u/v`` where ``γα`` pins ``u`` to ``f``, which across the seam is about ``(f/b)^{1−α}``. So the minimiser
paints the structure of ``b`` with the colours of ``f``: the background comes out multiplied, per channel and
smoothly in space, by the foreground-to-background ratio along the seam. That is what the model is for — two
images of the same scene under different light or in different modalities (visible and infrared, paper Figs.
1, 6, 7; see ``datasets/samples/osmosis``), where that ratio is the change of light and the result keeps the
colours of ``f``. For an object cut from one photograph and pasted into an unrelated one it re-colours the whole
background (even a one-pixel region does), and Poisson editing (:mod:`fusion.methods.poisson`) is the right tool.
The scale direction is also the flattest of the energy (the lowest eigenvector of the ``u``-block Hessian is
``φ·v`` with ``φ`` smooth, about 0 in the ``α``-region and growing away from it): solvers with diagonal steps
(``metric="curvature"``, ``"identity"``) creep along it and meet the relative-energy stopping rule long before
reaching the minimiser, keeping much of the colours of their start; ``metric="newton_u"`` reaches it.

Positivity. Osmosis needs strictly positive images (it works with ``log v`` and ``u / v``): the images in [0, 1]
get a constant ``offset`` and are rescaled to ``scale · (x + offset)`` before solving, and mapped back after. The
offset must leave every pixel positive; a larger one improves the conditioning near black pixels at the price of
weakening the invariance to multiplicative brightness changes (``c f + o ≠ c (f + o)``).

Gradients. The minimiser is differentiated by the implicit function theorem
(:func:`fusion.optim.implicit.implicit_minimiser`). The α-map is thresholded from the mask and carries no gradient
to it (:func:`alpha_map` refuses a mask that requires grad).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from fusion import ConvergenceWarning
from fusion.energies.osmosis import (
    fidelity_energy,
    geometric_blend,
    huber_tv,
    osmosis_curvature,
    osmosis_fusion_term,
    osmosis_grad_v,
    prox_fidelity,
    u_block_hessian,
    variational_osmosis_energy,
)
from fusion.methods.contract import MethodResult
from fusion.methods.linear_osmosis import DEFAULT_OFFSET, u_block_operator
from fusion.methods.registry import MethodOutput, register
from fusion.metrics import chromaticity_error
from fusion.ops.cg import conjugate_gradient
from fusion.ops.checks import (
    check_alpha,
    check_batch,
    check_image,
    check_images,
    check_int,
    check_keywords,
    check_max_iter,
    check_positive_image,
    check_same_kind,
    check_same_size,
    check_tol,
)
from fusion.ops.filters import gaussian_blur_dct
from fusion.ops.result import SolverResult, warn_unconverged
from fusion.optim.implicit import implicit_minimiser
from fusion.optim.ipiano import ipiano
from fusion.optim.primal_dual import prox_huber_tv

Init = Literal["f", "alpha", "average"]
AlphaKind = Literal["binary", "gaussian", "constant"]
MetricKind = Literal["newton_u", "curvature", "identity"]

#: What ``converged`` of :func:`osmosis_solve` measures, for every ``metric``.
ENERGY_CRITERION = "relative change of E(u, v) in the last iteration"


def alpha_map(
    mask: torch.Tensor | None = None,
    *,
    kind: AlphaKind = "binary",
    sigma: float = 5.0,
    value: float = 0.5,
    like: torch.Tensor | None = None,
) -> torch.Tensor:
    """α-map for the fusion models (paper Section III, eq. 9, and Fig. 2).

    Not differentiable in ``mask`` (it is thresholded at ½): a mask that requires grad is refused.

    Args:
        mask: ``(B, 1, H, W)`` region of the foreground, in [0, 1] (not needed for ``"constant"``).
        kind: ``"binary"`` — 1 where ``mask > 0.5`` and 0 elsewhere; ``"gaussian"`` — the binary map blurred
            by a Gaussian of standard deviation ``sigma`` pixels (half-sample mirror boundaries, kernel radius
            ``int(4σ + ½)``: ``scipy.ndimage.gaussian_filter(..., mode="reflect")``), eq. (9);
            ``"constant"`` — ``value`` everywhere.
        sigma: blur width for ``"gaussian"`` (the paper's face fusion uses 5).
        value: the constant for ``"constant"``, in [0, 1].
        like: ``(B, C, H, W)`` image giving the size, dtype and device for ``"constant"`` without a mask.

    Returns:
        ``(B, 1, H, W)`` α-map in [0, 1].

    Example:
        >>> m = torch.zeros(1, 1, 8, 8); m[..., 2:6, 2:6] = 1
        >>> a = alpha_map(m, kind="gaussian", sigma=1.0)
        >>> bool(a.min() >= 0) and bool(a.max() <= 1) and a.shape == m.shape
        True
    """
    if isinstance(mask, torch.Tensor) and mask.requires_grad and torch.is_grad_enabled():
        raise ValueError(
            "alpha_map thresholds the mask at 0.5 and has no gradient with respect to it; pass mask.detach()"
        )
    if kind == "constant":
        if not 0 <= value <= 1:
            raise ValueError(f"constant alpha value must lie in [0, 1], got {value}")
        ref = mask if mask is not None else like
        if ref is None:
            raise ValueError("alpha_map(kind='constant') needs mask or like to know the image size")
        check_image(ref, "mask" if mask is not None else "like")
        return torch.full((ref.shape[0], 1, *ref.shape[-2:]), float(value), dtype=ref.dtype, device=ref.device)
    if kind not in ("binary", "gaussian"):
        raise ValueError(f"alpha kind must be 'binary', 'gaussian' or 'constant', got {kind!r}")
    if mask is None:
        raise ValueError(f"alpha_map(kind={kind!r}) needs a mask")
    mask = check_alpha(mask, "mask")
    binary = (mask > 0.5).to(mask.dtype)
    if kind == "binary":
        return binary
    if not sigma > 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    return gaussian_blur_dct(binary, sigma).clamp(0, 1)


def initial_image(f: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor, init: Init) -> torch.Tensor:
    """Initialisations of the paper's Fig. 3: ``"f"``, ``"alpha"`` (``α f + (1 − α) b``) or ``"average"``."""
    if init == "f":
        return f.clone()
    if init == "alpha":
        return alpha * f + (1 - alpha) * b
    if init == "average":
        return 0.5 * (f + b)
    raise ValueError(f"init must be 'f', 'alpha' or 'average', got {init!r}")


# ----------------------------------------------------------------------------------------------- the model


@dataclass
class OsmosisResult(MethodResult):
    """What :func:`osmosis_solve` returns.

    Attributes:
        image: ``(B, C, H, W)`` the fused image ``u`` in the input scale (what :func:`osmosis_blend` returns).
        solver: the iPiano :class:`SolverResult` (``solution`` the minimiser ``(u, v)`` in the model's units,
            ``history`` the ``(iterations + 1, B)`` energies ``E(u, v)``; see :func:`osmosis_solve`).
        v: ``(B, C, H, W)`` the structure image ``v`` in the input scale.
    """

    v: torch.Tensor | None = None


def osmosis_solve(
    fg: torch.Tensor,
    bg: torch.Tensor,
    alpha: torch.Tensor,
    *,
    eta: float = 0.5,
    mu: float = 100.0,
    gamma: float = 1.0,
    init: Init = "f",
    max_iter: int = 10000,
    tol: float = 1e-6,
    epsilon: float = 0.05,
    beta: float = 0.4,
    offset: float = DEFAULT_OFFSET,
    scale: float = 255.0,
    min_iter: int = 10,
    prox_max_iter: int = 10000,
    prox_tol: float | None = None,
    metric: MetricKind = "newton_u",
) -> OsmosisResult:
    """Variational osmosis fusion, model (1): ``min_{u,v} O(u, v) + γ D(u) + η R(v)``, with the solver's record.

    ``O`` is eq. (11) (osmosis energy of ``u`` with respect to ``v`` plus ``µ/2 ‖v − f^α b^{1−α}‖²``), ``D`` the
    foreground fidelity (12) and ``R`` the Huber total variation with ``ε`` (0.05 in the paper). Solved by
    block-coordinate iPiano (Algorithm 1; :func:`fusion.optim.ipiano.ipiano`): gradient steps on ``O`` with
    per-sample Lipschitz backtracking, inertia ``β``, then the prox of ``γD`` in closed form (16) and the prox of
    ``ηR`` by the accelerated primal–dual algorithm (17)–(20), warm-started from the dual of the accepted trial.
    Starts from ``u = f`` (or ``init``) and ``v = f^α b^{1−α}``; stops when the relative change of ``E`` falls below
    ``tol`` (after ``min_iter`` iterations) or after ``max_iter``.

    The minimiser keeps ``f`` where ``γα > 0`` and elsewhere the structure of ``b`` in the colours of ``f`` (module
    docstring). With ``γ = 0`` (or ``α = 0``) the scale of ``u`` per channel is free and ``init`` decides it;
    otherwise the ``"newton_u"`` result does not depend on ``init``, while the diagonal-step solvers stop at points
    that still do (the energy is flat along the scale direction; BENCHMARKS.md, "Osmosis: why the background
    changes colour").

    Metric (solver variant; all three minimise the same ``E`` with the same stopping rule). ``O`` is very unevenly
    stiff: its curvature in ``v`` grows like ``u²/v³`` and in ``u`` like ``1/v``, so one scalar step per block
    (``metric="identity"``, the paper's scheme) is set by the stiffest pixel and crawls everywhere else.

    * ``"curvature"``: variable-metric iPiano with a per-pixel diagonal metric ``D`` per block, the Gershgorin row
      sums of the two Hessian blocks of ``O`` at the current iterate (:func:`~fusion.energies.osmosis.
      osmosis_curvature`; ``diag(D) ⪰ ∇²O`` blockwise, so the Lipschitz estimates relative to ``D`` stay near 1).
      Both proxes are taken in the metric ``D`` (per-pixel steps ``ζ/D``), acceptance uses the joint descent test
      of both blocks (monotone for ``β = 0``, up to the accuracy of the inner prox), and the inner prox is solved
      accurately (``prox_tol``). Its iteration count still grows with the image size: for fixed ``v`` the
      ``u``-block is a global, diffusion-like quadratic problem that no diagonal metric preconditions.
    * ``"newton_u"`` (default) takes the exact Hessian of the ``u``-block as its metric. For fixed ``v``,
      ``O(·, v) + γD`` is the convex quadratic ``½ uᵀ(V⁻¹ S_h V⁻¹ + γ diag(α))u − γ⟨αf, u⟩`` (eqs. 11, 12, 14), so
      the metric step with the prox (16) is the block minimiser itself: an exact block of iPiano, by
      Jacobi-preconditioned conjugate gradients from the current ``u`` to a relative residual that follows the
      sample's outer progress (its previous relative change of ``E``, clipped to [eps, 1e-2]). Then ``v`` takes
      one inertial forward–backward step in the curvature metric, backtracked until both the descent inequality of
      ``O(u, ·)`` and a decrease of ``E`` hold (an inertial step that does not lower ``E`` is retried without
      inertia), so ``E`` is non-increasing. On the benchmark pair this takes tens of iterations at every size where
      ``"curvature"`` takes hundreds to thousands.

    Every sample is solved independently (own steps, tolerances, prox warm starts, stopping): a sample's result
    does not depend on the others of its batch.

    Convergence: for every ``metric``, ``converged`` means that the relative change of ``E`` in the sample's last
    iteration was below ``tol`` (``criterion``; ``reached`` per sample) and the inner prox of the final iterate met
    ``prox_tol``; a sample that does not emits one :class:`fusion.ConvergenceWarning`. The rule measures progress,
    not distance to the minimiser (see the flat scale direction above).

    Gradients: differentiable in ``fg``, ``bg`` and ``alpha`` (implicit differentiation of the minimiser of the
    smooth ``O + γD + ηR``, Huber TV being C¹ and piecewise C²: one adjoint conjugate-gradient solve with the
    Hessian), for every ``metric`` and ``init``, as accurate as the forward solve converged. A minimiser that is not
    isolated (``γ = 0``, or ``α = 0`` on a whole sample) has no derivative: inputs that require grad are refused.

    Scale: the model is solved for ``scale · (image + offset)``; with ``scale = 255`` the intensities are those of
    the authors' Algorithm 1, to which µ, γ, η refer (the terms are not homogeneous of one degree).

    Args:
        fg: ``(B, C, H, W)`` foreground ``f`` in [0, 1].
        bg: ``(B, C, H, W)`` background ``b`` (register it to ``fg`` first when needed, see
            :func:`fusion.ops.align.align_to`).
        alpha: ``(B, 1, H, W)`` α-map in [0, 1] (see :func:`alpha_map`), of the images' dtype and device.
        eta, mu, gamma: model weights ``η`` (TV on ``v``), ``µ`` (``v`` fidelity), ``γ`` (``u`` fidelity).
        init: ``"f"`` (the paper's Algorithm 1), ``"alpha"`` or ``"average"`` (paper Fig. 3).
        max_iter, tol: iPiano limits (``max_iter ≥ 1``).
        epsilon: Huber parameter ``ε``.
        beta: iPiano inertia (both blocks; the ``v``-block for ``"newton_u"``).
        offset: positivity offset, in [0, 1] units.
        scale: intensity scale of the model (255 follows the authors).
        min_iter: iterations always performed.
        prox_max_iter, prox_tol: limits of the inner primal–dual solve (relative gap); ``prox_tol`` defaults to
            1e-4 (the paper's) for ``metric="identity"`` and to ``max(1e-8, 64 eps)`` of the dtype otherwise.
        metric: ``"newton_u"``, ``"curvature"`` or ``"identity"`` (see above): same model and minimiser, in
            decreasing order of speed.

    Returns:
        :class:`OsmosisResult`: ``image`` the fused ``u`` and ``v`` the structure image, ``(B, C, H, W)`` each in
        the input scale; ``solver`` the :class:`SolverResult` (``history``: the ``(iterations + 1, B)`` energies
        ``E(u, v)`` of the scaled, offset images; ``criterion``/``tol``/``reached``; ``info``: ``"lipschitz"`` per
        block (``None`` for the exact ``u``-block of ``"newton_u"``), ``"evaluations"``, ``"inertia_resets"`` and
        ``"iterations"`` per sample, ``"prox_converged"`` and ``"prox_iterations"`` of the Huber-TV proxes, and
        for ``"newton_u"`` the total ``"cg_iterations"`` of the ``u``-solves).

    Example:
        >>> f, b = torch.rand(1, 3, 16, 16) + 0.1, torch.rand(1, 3, 16, 16) + 0.1
        >>> a = torch.zeros(1, 1, 16, 16); a[..., 4:12, 4:12] = 1
        >>> out = osmosis_solve(f, b, a, max_iter=200)
        >>> out.image.shape == out.v.shape == f.shape, bool(out.solver.history[-1, 0] < out.solver.history[0, 0])
        (True, True)
    """
    check_images(fg=fg, bg=bg)
    alpha = check_alpha(alpha)
    check_same_size(fg=fg, alpha=alpha)
    check_same_kind(fg=fg, alpha=alpha)
    batch = check_batch(fg=fg, bg=bg, alpha=alpha)
    check_positive_image(fg, "fg", offset=offset)
    check_positive_image(bg, "bg", offset=offset)
    for name, val in (("eta", eta), ("mu", mu), ("gamma", gamma)):
        if not val >= 0:
            raise ValueError(f"{name} must be >= 0, got {val}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be > 0, got {epsilon}")
    if not 0 <= beta < 1:
        raise ValueError(f"beta must lie in [0, 1), got {beta}")
    check_max_iter(max_iter, "max_iter")
    check_tol(tol, "tol")
    check_int(min_iter, "min_iter", minimum=0)
    check_max_iter(prox_max_iter, "prox_max_iter")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if metric not in ("newton_u", "curvature", "identity"):
        raise ValueError(f"metric must be 'newton_u', 'curvature' or 'identity', got {metric!r}")
    if init not in ("f", "alpha", "average"):
        raise ValueError(f"init must be 'f', 'alpha' or 'average', got {init!r}")
    if prox_tol is None:
        # long metric steps need an accurate prox for the energy to decrease; the gap cannot be resolved much below
        # a few dozen ulps of the working precision
        prox_tol = max(1e-8, 64 * torch.finfo(fg.dtype).eps) if metric != "identity" else 1e-4
    check_tol(prox_tol, "prox_tol")
    wants_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (fg, bg, alpha))
    if wants_grad and (gamma == 0 or bool((alpha.detach().flatten(1).amax(1) == 0).any())):
        raise ValueError(
            "osmosis has no gradient with gamma=0 or an all-zero alpha: the scale of u is then free (the "
            "minimisers form a ray c·v), so the minimiser is not a differentiable function of the inputs"
        )
    weights, units = dict(eta=eta, mu=mu, gamma=gamma, epsilon=epsilon), dict(offset=offset, scale=scale)
    with torch.no_grad():
        f, b, a, target = _model_inputs(fg.detach(), bg.detach(), alpha.detach(), batch=batch, **units)
        result = _solve_model(
            f, a, target, initial_image(f, b, a, init), target.clone(), metric=metric, beta=beta, **weights,
            max_iter=max_iter, tol=tol, min_iter=min_iter, prox_max_iter=prox_max_iter, prox_tol=prox_tol,
        )  # fmt: skip
    result.criterion = ENERGY_CRITERION
    warn_unconverged(result, f"osmosis (metric={metric})")
    result.converged = _check_final_prox(result, f"osmosis (metric={metric})", prox_max_iter, prox_tol)
    u, v = result.solution
    if wants_grad:
        u, v = _attach_implicit_gradient(u, v, fg, bg, alpha, batch=batch, **units, **weights)
    return OsmosisResult(image=u / scale - offset, solver=result, v=v / scale - offset)


def osmosis_blend(fg: torch.Tensor, bg: torch.Tensor, alpha: torch.Tensor, **options) -> torch.Tensor:
    """The fused image ``u`` of :func:`osmosis_solve` (same arguments and options, warnings and gradients).

    Returns:
        ``(B, C, H, W)`` fused image in the input scale (not clipped: the model does not bound ``u`` to [0, 1]).

    Example:
        >>> f, b = torch.rand(1, 3, 12, 12) + 0.1, torch.rand(1, 3, 12, 12) + 0.1
        >>> a = torch.zeros(1, 1, 12, 12); a[..., 3:9, 3:9] = 1
        >>> osmosis_blend(f, b, a, max_iter=100).shape
        torch.Size([1, 3, 12, 12])
    """
    return osmosis_solve(fg, bg, alpha, **options).image


class OsmosisBlend(nn.Module):
    """:func:`osmosis_blend` as a layer: the options (those of :func:`osmosis_solve`) are fixed at construction
    and checked by name, ``forward(fg, bg, alpha)`` fuses. Differentiable in ``fg``, ``bg`` and ``alpha`` (implicit
    differentiation of the minimiser; ``gamma=0`` is refused when an input requires grad).

    Example:
        >>> layer = OsmosisBlend(max_iter=100)
        >>> f, b = torch.rand(2, 3, 12, 12) + 0.1, torch.rand(2, 3, 12, 12) + 0.1
        >>> a = torch.zeros(2, 1, 12, 12); a[..., 3:9, 3:9] = 1
        >>> layer(f, b, a).shape
        torch.Size([2, 3, 12, 12])
    """

    def __init__(self, **options) -> None:
        super().__init__()
        self.options = check_keywords(osmosis_solve, options, inputs=("fg", "bg", "alpha"))

    def forward(self, fg: torch.Tensor, bg: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        return osmosis_blend(fg, bg, alpha, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


def _check_final_prox(result: SolverResult, method: str, prox_max_iter: int, prox_tol: float) -> torch.Tensor:
    """``converged`` and-ed with whether the Huber-TV prox that produced the final ``v`` met its tolerance.

    The energy rule alone would accept an iterate whose inner prox stopped at ``prox_max_iter``: with a cap too
    low for the problem the energy still stops changing, far from the minimiser. Such samples are reported by one
    :class:`fusion.ConvergenceWarning` and are not ``converged``."""
    ok = result.info["prox_converged"].reshape(-1).to(result.converged.device)
    capped = result.converged & ~ok
    if bool(capped.any()):
        samples = [int(i) for i in torch.nonzero(capped).flatten()]
        which = ("sample " if len(samples) == 1 else "samples ") + ", ".join(str(i) for i in samples[:8])
        batch = ok.numel()
        warnings.warn(
            ConvergenceWarning(
                f"{method} did not converge for {len(samples)} of {batch} sample{'s' if batch > 1 else ''} ({which})"
                f": the energy stopped changing after {result.iterations} iterations, but the inner Huber-TV prox "
                f"of the final iterate stopped at prox_max_iter={prox_max_iter} above prox_tol {prox_tol:g}; "
                "raise prox_max_iter",
                method=method,
                samples=samples,
                batch=batch,
                iterations=result.iterations,
                criterion="inner prox reached its tolerance",
                tol=prox_tol,
            ),
            stacklevel=3,
        )
    return result.converged & ok


def _model_inputs(fg, bg, alpha, *, batch: int, offset: float, scale: float):
    """``(f, b, α, f^α b^{1−α})`` of model (1) in its units (scaled, offset), expanded to the batch."""
    shape = (batch, fg.shape[1], *fg.shape[-2:])
    f, b = (scale * (fg + offset)).expand(shape), (scale * (bg + offset)).expand(shape)
    a = alpha.to(fg.dtype).expand(batch, 1, -1, -1)
    return f, b, a, geometric_blend(f, b, a)


def _attach_implicit_gradient(u, v, fg, bg, alpha, *, batch, eta, mu, gamma, epsilon, offset, scale):
    """Connect the minimiser ``(u, v)`` (model units) to ``fg``, ``bg``, ``alpha`` by the implicit function theorem."""

    def energy(u_, v_, fg_, bg_, alpha_):
        f, _, a, target = _model_inputs(fg_, bg_, alpha_, batch=batch, offset=offset, scale=scale)
        return variational_osmosis_energy(u_, v_, f, a, target, mu=mu, gamma=gamma, eta=eta, epsilon=epsilon)

    # Jacobi preconditioner of the joint Hessian: the exact diagonal of the u-block and a bound for the v-block
    _, diag_u = u_block_hessian(v, alpha.detach().expand(batch, 1, -1, -1), gamma)
    _, diag_v = osmosis_curvature(u, v, mu)
    diag_u = diag_u.clamp_min(torch.finfo(u.dtype).tiny)
    diag_v = diag_v + (4 * eta / epsilon if eta > 0 else 0.0)

    def precondition(blocks: list[torch.Tensor]) -> list[torch.Tensor]:
        return [blocks[0] / diag_u, blocks[1] / diag_v]

    tol = max(1e-10, 64 * torch.finfo(u.dtype).eps)
    return implicit_minimiser(energy, (u, v), [fg, bg, alpha], precondition=precondition, tol=tol, max_iter=20000,
                              method="osmosis")  # fmt: skip


# ----------------------------------------------------------------------------------------------- the solvers


def _energies(f, alpha, target, *, eta, mu, gamma, epsilon):
    """``(O, E, ηR)`` of model (1) as functions of ``(u, v)`` (``ηR`` of ``v``; ``None`` for ``η = 0``)."""

    def smooth(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        # O is defined for v > 0 only: +inf outside makes the line search reject steps that leave the domain
        e = osmosis_fusion_term(u, v, target, mu)
        return torch.where(v.flatten(1).amin(1) > 0, e, torch.full_like(e, torch.inf))

    def objective(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        e = smooth(u, v) + gamma * fidelity_energy(u, f, alpha)
        return e + eta * huber_tv(v, epsilon) if eta > 0 else e

    return smooth, objective, ((lambda v: eta * huber_tv(v, epsilon)) if eta > 0 else None)


def _huber_prox(eta, epsilon, prox_max_iter, prox_tol, counts):
    """The Huber-TV prox of ``v`` (17)–(20) with its warm-start state ``(dual, converged)`` (see ``ipiano``)."""

    def prox_v(z: torch.Tensor, step: torch.Tensor, state):
        res = prox_huber_tv(z, step, eta=eta, epsilon=epsilon, y0=state[0], max_iter=prox_max_iter, tol=prox_tol)
        counts["prox_iterations"] += res.iterations
        return res.solution, (res.info["dual"], res.converged.reshape(-1))

    return prox_v


def _floored(d: torch.Tensor, d_u: torch.Tensor, d_v: torch.Tensor) -> torch.Tensor:
    """``d`` bounded below by eps times the largest curvature of the sample (µ = 0, flat regions)."""
    floor = torch.finfo(d.dtype).eps * torch.maximum(d_u.flatten(1).amax(1), d_v.flatten(1).amax(1))
    return torch.maximum(d, floor.view(-1, 1, 1, 1))


def _diagonal_steps(f, alpha, *, mu, gamma, beta, metric) -> dict:
    """``ipiano`` options of ``metric="curvature"`` or ``"identity"``: one forward–backward step per block and
    iteration with the closed-form prox (16) for ``u``; per-pixel Gershgorin metrics for ``"curvature"``."""
    scaled = metric == "curvature"

    def prox_u(z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return prox_fidelity(z, f, alpha, gamma, step)

    def metric_fn(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        if not scaled:
            return None, None
        d_u, d_v = osmosis_curvature(u, v, mu)
        return _floored(d_u, d_u, d_v), _floored(d_v, d_u, d_v)

    # relative to a Gershgorin metric the curvature is at most 1 (exactly for u, at the current point for v); the
    # estimate is non-decreasing (letting it shrink again made long inertial steps leave v > 0 and stall)
    lipschitz = (1.0, 1.0) if scaled else (1.0, max(mu, 1.0))
    descent_test = "joint" if scaled else "blocks"
    return dict(prox_u=prox_u, metric=metric_fn, beta=beta, lipschitz=lipschitz, descent_test=descent_test)


def _newton_u(f, alpha, target, smooth, counts, *, mu, gamma, beta, cg_max_iter: int = 2000) -> dict:
    """``ipiano`` options of ``metric="newton_u"``: the exact ``u``-block (conjugate gradients on the system of
    :func:`~fusion.methods.linear_osmosis.solve_u_block`, without checks or autograd, each sample to the relative
    residual ``clip(ρ, eps, 1e-2)`` of its previous relative energy change ``ρ``), then one inertial curvature-metric
    step in ``v`` with the closed-form gradient and the monotone safeguard."""
    eps, operator = torch.finfo(f.dtype).eps, u_block_operator(gamma)
    counts["cg_iterations"] = 0

    def solve_u(blocks: list[torch.Tensor], active: torch.Tensor, progress: torch.Tensor) -> torch.Tensor:
        # one solve per sample, so that a sample's path never depends on the others of its batch
        u, v = blocks[0].clone(), blocks[1]
        tols = progress.clamp(eps, 1e-2)
        for i in torch.nonzero(active).flatten().tolist():
            one = slice(i, i + 1)
            apply, precondition = operator(v[one], alpha[one])
            rhs = (gamma * alpha[one] * f[one]).expand(u[one].shape)
            res = conjugate_gradient(
                apply, rhs, u[one], precondition=precondition, max_iter=cg_max_iter, tol=float(tols[i])
            )
            u[one] = res.solution
            counts["cg_iterations"] += res.iterations
        return u

    def gradient(u: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, tuple[None, torch.Tensor]]:
        return smooth(u, v), (None, osmosis_grad_v(u, v, target, mu))

    def metric_fn(u: torch.Tensor, v: torch.Tensor) -> tuple[None, torch.Tensor]:
        d_u, d_v = osmosis_curvature(u, v, mu)
        return None, _floored(d_v, d_u, d_v)

    return dict(
        prox_u=None, block_solve=(solve_u, None), gradient=gradient, metric=metric_fn, beta=(0.0, beta),
        lipschitz=1.0, monotone=True, descent_test="blocks",
    )  # fmt: skip


def _solve_model(f, alpha, target, u0, v0, *, metric, beta, eta, mu, gamma, epsilon, prox_max_iter, prox_tol, **limits):
    """Model (1) on checked, detached inputs in the model's units, by :func:`fusion.optim.ipiano.ipiano` with the
    options of ``metric``; the Huber-TV prox of ``v`` is warm-started from the dual of the trial each sample
    accepted (its state in ``ipiano``)."""
    smooth, objective, tv = _energies(f, alpha, target, eta=eta, mu=mu, gamma=gamma, epsilon=epsilon)
    counts = {"prox_iterations": 0}
    if metric == "newton_u":
        options = _newton_u(f, alpha, target, smooth, counts, mu=mu, gamma=gamma, beta=beta)
    else:
        options = _diagonal_steps(f, alpha, mu=mu, gamma=gamma, beta=beta, metric=metric)
    prox_v, state = None, None
    if eta > 0:  # the state: the dual of the prox's primal–dual solve, and whether that prox met its tolerance
        prox_v = _huber_prox(eta, epsilon, prox_max_iter, prox_tol, counts)
        dual = torch.zeros(*v0.shape[:2], 2, *v0.shape[2:], dtype=v0.dtype, device=v0.device)
        state = (dual, torch.ones(v0.shape[0], dtype=torch.bool, device=v0.device))
    result = ipiano(
        smooth, (u0, v0), prox=(options.pop("prox_u"), prox_v), prox_state=(None, state), objective=objective,
        nonsmooth=(None, tv), **options, **limits,
    )  # fmt: skip
    final = result.info.pop("prox_state")[1]
    ok = final[1] if eta > 0 else torch.ones(v0.shape[0], dtype=torch.bool, device=v0.device)
    result.info.update(prox_converged=ok, **counts)
    return result


# ----------------------------------------------------------------------------------------------- command line


@register("osmosis", samples="osmosis", options_from=osmosis_solve)
def osmosis_cli(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    alpha: AlphaKind = "gaussian",
    sigma: float = 5.0,
    alpha_value: float = 0.5,
    align: bool = False,
    **params,
) -> MethodOutput:
    """Command-line adapter (``infer.py method=osmosis``): α-map from ``mask`` (where ``fg`` is kept), optional
    SIFT pre-alignment of ``bg``, then :func:`osmosis_solve`. Extras: ``v``, ``alpha``, the chromaticity error maps
    of ``u`` against ``fg`` and ``bg`` (eq. 21, clipped to [0, 1]) and the energy curve. Without inputs the command
    line uses the built-in pair ``datasets/samples/osmosis`` (one scene under two lights). Non-convergence is
    reported only by the :class:`fusion.ConvergenceWarning` of :func:`osmosis_solve`."""
    if align:
        from fusion.ops.align import align_to

        bg, _ = align_to(bg, fg)
    a = alpha_map(mask, kind=alpha, sigma=sigma, value=alpha_value, like=fg)
    out = osmosis_solve(fg, bg, a, **params)
    u = out.image.clamp(0, 1)
    _, err_f = chromaticity_error(u, fg)
    _, err_b = chromaticity_error(u, bg)
    return MethodOutput(
        result=u,
        images={
            "v": out.v.clamp(0, 1),
            "alpha": a,
            "chroma_error_fg": err_f.clamp(0, 1),
            "chroma_error_bg": err_b.clamp(0, 1),
        },
        curves={"energy": {"E(u, v)": out.solver.history[:, 0].tolist()}},
    )


__all__ = [
    "DEFAULT_OFFSET",
    "ENERGY_CRITERION",
    "OsmosisBlend",
    "OsmosisResult",
    "alpha_map",
    "initial_image",
    "osmosis_blend",
    "osmosis_cli",
    "osmosis_solve",
]
