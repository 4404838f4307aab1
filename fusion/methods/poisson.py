"""Poisson image editing (Pérez, Gangnet & Blake, 2003): seamless cloning, exact and spectral."""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import nn

from fusion.energies.poisson import poisson_energy, region_edges
from fusion.methods.contract import MethodResult
from fusion.methods.registry import MethodOutput, register
from fusion.ops.cg import relative_residual
from fusion.ops.checks import check_batch, check_blend_inputs, check_image, check_max_iter, check_same_size, check_tol
from fusion.ops.diff import div, grad, laplacian
from fusion.ops.masked import (
    BoxGroups,
    masked_poisson_operator,
    masked_poisson_preconditioner,
    region_boxes,
    solve_masked_poisson,
)
from fusion.ops.poisson import solve_poisson
from fusion.ops.result import SolverResult, warn_unconverged
from fusion.optim.implicit import implicit_minimiser
from fusion.optim.ipiano import ipiano

Solver = Literal["exact", "spectral", "inertial"]
Precondition = Literal["spectral", "jacobi", "none"]


def place_source(
    fg: torch.Tensor,
    mask: torch.Tensor,
    bg: torch.Tensor,
    offset: Sequence[int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Put a source ``fg`` (and its ``mask``) at ``offset`` on a canvas the size of ``bg``.

    Args:
        fg: ``(B, C, h, w)`` source image.
        mask: ``(B, 1, h, w)`` source mask.
        bg: ``(B, C, H, W)`` background; gives the canvas size and fills the canvas outside the source.
        offset: ``(y, x)`` of the source's top-left corner on the canvas (may be negative or run past the
            edge: what falls outside is cropped); ``None`` centres the source.

    Returns:
        ``(fg_canvas, mask_canvas)`` shaped ``(B, C, H, W)`` and ``(B, 1, H, W)``; ``fg_canvas`` equals ``bg``
        outside the pasted rectangle and ``mask_canvas`` is zero there.

    Example:
        >>> f, m, b = torch.ones(1, 3, 2, 2), torch.ones(1, 1, 2, 2), torch.zeros(1, 3, 4, 5)
        >>> fc, mc = place_source(f, m, b, offset=(1, 3))
        >>> mc[0, 0]
        tensor([[0., 0., 0., 0., 0.],
                [0., 0., 0., 1., 1.],
                [0., 0., 0., 1., 1.],
                [0., 0., 0., 0., 0.]])
    """
    check_image(fg, "fg")
    check_image(bg, "bg", channels=fg.shape[1])
    check_image(mask, "mask", channels=1)
    check_same_size(fg=fg, mask=mask)
    batch = check_batch(fg=fg, mask=mask, bg=bg)
    h, w = fg.shape[-2:]
    big_h, big_w = bg.shape[-2:]
    if offset is None:
        oy, ox = (big_h - h) // 2, (big_w - w) // 2
    else:
        if len(offset) != 2:
            raise ValueError(f"offset must be (y, x), got {offset!r}")
        oy, ox = int(offset[0]), int(offset[1])
    y0, y1 = max(oy, 0), min(oy + h, big_h)
    x0, x1 = max(ox, 0), min(ox + w, big_w)
    if y0 >= y1 or x0 >= x1:
        raise ValueError(f"offset {(oy, ox)} puts the {h}x{w} source entirely outside the {big_h}x{big_w} background")
    src = (slice(y0 - oy, y1 - oy), slice(x0 - ox, x1 - ox))
    fg_canvas = bg.expand(batch, -1, -1, -1).clone()
    fg_canvas[..., y0:y1, x0:x1] = fg.expand(batch, -1, -1, -1)[..., src[0], src[1]]
    mask_canvas = torch.zeros(batch, 1, big_h, big_w, dtype=mask.dtype, device=mask.device)
    mask_canvas[..., y0:y1, x0:x1] = mask.expand(batch, -1, -1, -1)[..., src[0], src[1]]
    return fg_canvas, mask_canvas


def _mixed_choice(g_fg: torch.Tensor, g_bg: torch.Tensor) -> torch.Tensor:
    """Per edge and channel, the one of the two differences with the larger magnitude (``fg``'s on ties)."""
    return torch.where(g_bg.abs() > g_fg.abs(), g_bg, g_fg)


def guidance_field(fg: torch.Tensor, bg: torch.Tensor, *, mixed: bool = False) -> torch.Tensor:
    """Guidance field on the forward-difference edges: ``∇fg``, or Pérez's mixed gradients.

    Mixed: per edge and channel, the one of ``∇fg`` and ``∇bg`` with the larger magnitude (Pérez eq. 13;
    ``∇fg`` on ties).

    Returns:
        ``(B, C, 2, H, W)``.
    """
    g_fg = grad(fg, bc="neumann")
    if not mixed:
        return g_fg
    return _mixed_choice(g_fg, grad(bg, bc="neumann"))


#: What ``converged`` means for every Poisson solver (``SolverResult.criterion``): the relative residual of
#: Pérez's discrete equations ``A u_Ω = b`` on Ω (see :func:`perez_residual`).
PEREZ_CRITERION = "Pérez residual ‖b − A u‖/‖b‖"

#: Default relative-residual tolerance of the iterative solvers: reachable in float32 for images of tens of
#: megapixels (the float32 rounding floor of the residual is about 1e-6 at 1 megapixel and grows slowly with size).
DEFAULT_TOL = 1e-5


def _check_iterations(max_iter: object, tol: object) -> None:
    check_max_iter(max_iter, "max_iter")
    check_tol(tol, "tol")


def perez_residual(
    u: torch.Tensor, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor, *, mixed: bool = False
) -> torch.Tensor:
    """The convergence criterion of every Poisson solver: ``‖b − A u_Ω‖ / ‖b‖`` per sample.

    ``A u_Ω = b`` are Pérez's discrete equations on Ω = {mask > 0.5} (see :func:`poisson_solve`), the norms
    are taken over the channels and pixels of one sample, and ``u`` off Ω is ignored.

    Args:
        u: ``(B, C, H, W)`` candidate solution.
        fg, bg, mask: as in :func:`poisson_blend`.
        mixed: mixed gradients.

    Returns:
        ``(B,)`` relative residuals.

    Example:
        >>> fg, bg = torch.rand(1, 1, 6, 7, dtype=torch.float64), torch.rand(1, 1, 6, 7, dtype=torch.float64)
        >>> mask = torch.zeros(1, 1, 6, 7, dtype=torch.float64); mask[..., 2:4, 2:5] = 1
        >>> bool(perez_residual(poisson_blend(fg, bg, mask, tol=1e-12), fg, bg, mask) < 1e-12)
        True
    """
    fg, bg, mask = check_blend_inputs(fg, bg, mask)
    region, b = _perez_system(fg, bg, mask, mixed)
    return relative_residual(masked_poisson_operator(region), b, u * region)


def _perez_system(fg, bg, mask, mixed):
    """Ω as a 0/1 tensor and the right-hand side ``b`` of Pérez's equations ``A u_Ω = b`` (zero off Ω)."""
    region = (mask > 0.5).to(fg.dtype)
    rhs = -div(guidance_field(fg, bg, mixed=mixed), bc="neumann")
    return region, (rhs + laplacian(bg * (1 - region), bc="neumann")) * region


def _exact(fg, bg, mask, mixed, max_iter, tol, precondition) -> SolverResult:
    region = (mask > 0.5).to(fg.dtype)
    rhs = -div(guidance_field(fg, bg, mixed=mixed), bc="neumann")
    res = solve_masked_poisson(
        rhs, bg, region, precondition=precondition, max_iter=max_iter, tol=tol, name="poisson (exact)"
    )
    res.criterion = PEREZ_CRITERION
    return res


def _spectral(fg, bg, mask, mixed):
    """The single-solve formulation per sample, each over its own box; samples with equal box sizes together."""
    groups = BoxGroups(region_boxes(mask), fg.device)
    # Work on each box plus a one-pixel margin. Edge replication of the image gives the margin where a box meets
    # the image border: the differences into the margin are then zero (the Neumann condition of the image) and
    # the Dirichlet ghost there is the border pixel's own background value.
    solved = []
    for f, b, m in zip(*(groups.gather(x, margin=1, replicate=True) for x in (fg, bg, mask))):
        g_fg = grad(f, bc="neumann")
        g_bg = grad(b, bc="neumann")
        inner = _mixed_choice(g_fg, g_bg) if mixed else g_fg
        m = m.unsqueeze(-3)
        field = m * inner + (1 - m) * g_bg  # GP-GAN eq. (8), with a soft mask as a convex combination
        rhs = -div(field, bc="neumann")[..., 1:-1, 1:-1]
        frame = torch.ones_like(b[:1, :1])
        frame[..., 1:-1, 1:-1] = 0
        ghost = b * frame  # the bg values around the box, zero inside it
        neighbours = ghost[..., :-2, 1:-1] + ghost[..., 2:, 1:-1] + ghost[..., 1:-1, :-2] + ghost[..., 1:-1, 2:]
        solved.append(solve_poisson(rhs + neighbours, bc="dirichlet"))
    return groups.scatter(bg.clone(), solved)


def _inertial(fg, bg, mask, mixed, beta, max_iter, tol) -> SolverResult:
    region, b = _perez_system(fg.detach(), bg.detach(), mask, mixed)
    edges = region_edges(region)
    apply_a = masked_poisson_operator(region)
    field = guidance_field(fg.detach(), bg.detach(), mixed=mixed)
    fixed = bg.detach()

    def energy(u: torch.Tensor) -> torch.Tensor:
        return poisson_energy(u, field, edges)

    def project(z: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return region * z + (1 - region) * fixed

    def residual(u: torch.Tensor) -> torch.Tensor:
        return relative_residual(apply_a, b, u * region)

    start = region * fg.detach() + (1 - region) * fixed
    res = ipiano(
        energy,
        start,
        prox=project,
        beta=beta,
        lipschitz=1.0,
        max_iter=max_iter,
        tol=tol,
        min_iter=1,
        criterion=residual,
        criterion_name=PEREZ_CRITERION,
    )
    with torch.no_grad():
        res.reached = residual(res.solution)
    res.converged = res.reached <= tol
    res.criterion = PEREZ_CRITERION

    def energy_of(u: torch.Tensor, f: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        return poisson_energy(region * u + (1 - region) * g, guidance_field(f, g, mixed=mixed), edges)

    m_inv = masked_poisson_preconditioner(region, "spectral")
    u = implicit_minimiser(
        energy_of,
        res.solution,
        [fg, bg],
        free=region,
        precondition=lambda blocks: [m_inv(blocks[0])],
        tol=tol,
        max_iter=max_iter,
        method="poisson (inertial)",
    )
    res.solution = region * u + (1 - region) * bg
    return res


def poisson_solve(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    mixed: bool = False,
    solver: Solver = "exact",
    max_iter: int = 20000,
    tol: float = DEFAULT_TOL,
    precondition: Precondition = "spectral",
    beta: float = 0.9,
) -> MethodResult:
    """Seamless cloning of ``fg`` into ``bg`` on ``mask`` (Pérez et al. 2003, eqs. 7–13), with its solve record.

    Solvers:

    * ``"exact"`` — the discrete Pérez equations on Ω = {mask > 0.5}: for every pixel ``p`` of Ω with in-image
      neighbours ``N_p`` (eq. 7 discretised), ``|N_p| f_p − Σ_{q ∈ N_p ∩ Ω} f_q = Σ_{q ∈ N_p \\ Ω} bg_q +
      Σ_{q ∈ N_p} v_pq`` with ``v_pq = fg_p − fg_q`` (``mixed=True``: the larger of the ``fg`` and ``bg``
      differences, eq. 13), written ``A u_Ω = b``. Conjugate gradients with a per-sample preconditioner
      (``precondition``: ``"spectral"``, ``"jacobi"`` or ``"none"``). Ω may touch the image border (pixels
      there have fewer neighbours).
    * ``"spectral"`` — the single-solve formulation of OpenCV's ``seamlessClone`` and GP-GAN: the guidance is
      ``∇fg`` inside the mask and ``∇bg`` outside (a soft mask blends the two; an edge ``(p, p + e)`` takes the
      mask value at ``p``), solved once per sample by a DST-I over that sample's mask bounding box grown by one
      pixel, with the ``bg`` values around the box as Dirichlet data (where the box meets the image border, the
      border pixel's own ``bg`` value). Direct, not iterative (``solver`` of the result is ``None``); differs
      from ``"exact"`` only near the mask boundary.
    * ``"inertial"`` — minimises the Poisson energy ``½ Σ_{edges touching Ω} (∇u − v)²``
      (:func:`fusion.energies.poisson_energy`) with ``u = bg`` off Ω by iPiano with inertia ``beta``; the
      constraint's prox is the projection ``Ω·z + (1 − Ω)·bg``. Its minimiser is the ``"exact"`` solution,
      reached slowly (the iteration count grows with the square of the region's width).

    Convergence (``"exact"`` and ``"inertial"``): the same criterion, ``‖b − A u_Ω‖ / ‖b‖ ≤ tol``
    (:func:`perez_residual`), per sample, independently of the other samples of the batch; a sample that stops at
    ``max_iter`` (or at the floating-point floor of its residual) emits one :class:`fusion.ConvergenceWarning`
    naming the solver, the samples, the iterations and the reached residual.

    Differentiability: every solver backpropagates to ``fg`` and ``bg``. ``"spectral"`` is a chain of linear
    operations, differentiable also with respect to ``mask`` (through the soft blend of the two fields; the box
    comes from ``mask > 0.5`` and is piecewise constant). ``"exact"`` and ``"inertial"`` threshold the mask
    (no gradient to it) and differentiate the converged solve implicitly: the backward pass solves ``A λ = g``
    by preconditioned CG to ``tol`` (not by unrolling the iterations), so the gradient is that of the exact
    solution, as accurate as the forward solve converged. The mixed-gradient choice is piecewise: gradients
    follow the chosen edge.

    Args:
        fg: ``(B, C, H, W)`` source, already placed on the canvas (see :func:`place_source`).
        bg: ``(B, C, H, W)`` destination.
        mask: ``(B, 1, H, W)`` in [0, 1].
        mixed: use mixed gradients.
        solver: ``"exact"``, ``"spectral"`` or ``"inertial"``.
        max_iter: iteration cap of the iterative solvers, an integer ``>= 1``.
        tol: relative residual tolerance of the iterative solvers, ``> 0`` (the default is reachable in float32).
        precondition: preconditioner of ``"exact"``.
        beta: inertia of ``"inertial"``, in ``[0, 1)``.

    Returns:
        :class:`~fusion.methods.contract.MethodResult`: ``image`` the ``(B, C, H, W)`` blend (not clipped; values
        may leave [0, 1] slightly; each sample depends on that sample's inputs only); ``solver`` the
        :class:`~fusion.ops.result.SolverResult` of ``"exact"`` (``history`` the relative residuals the
        iteration carries) or ``"inertial"`` (``history`` the energies, ``info["criterion_history"]`` the
        residuals), with ``criterion`` :data:`PEREZ_CRITERION`, ``tol``, ``reached`` ``(B,)`` and
        ``info["iterations"]`` per sample; ``None`` for ``"spectral"``.

    Example:
        >>> fg, bg = torch.rand(1, 3, 20, 24, dtype=torch.float64), torch.rand(1, 3, 20, 24, dtype=torch.float64)
        >>> mask = torch.zeros(1, 1, 20, 24, dtype=torch.float64); mask[..., 5:15, 6:18] = 1
        >>> res = poisson_solve(fg, bg, mask, tol=1e-10)
        >>> res.solver.all_converged, bool(res.solver.reached < 1e-10), res.image.shape
        (True, True, torch.Size([1, 3, 20, 24]))
    """
    if solver not in ("exact", "spectral", "inertial"):
        raise ValueError(f"solver must be 'exact', 'spectral' or 'inertial', got {solver!r}")
    if precondition not in ("spectral", "jacobi", "none"):
        raise ValueError(f"precondition must be 'spectral', 'jacobi' or 'none', got {precondition!r}")
    fg, bg, mask = check_blend_inputs(fg, bg, mask)
    _check_iterations(max_iter, tol)
    if solver == "spectral":
        return MethodResult(_spectral(fg, bg, mask, mixed))
    if solver == "exact":
        res = _exact(fg, bg, mask, mixed, max_iter, tol, precondition)
    else:
        res = _inertial(fg, bg, mask, mixed, beta, max_iter, tol)
    warn_unconverged(res, f"poisson ({solver})")
    return MethodResult(res.solution, res)


def poisson_blend(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    mixed: bool = False,
    solver: Solver = "exact",
    max_iter: int = 20000,
    tol: float = DEFAULT_TOL,
    precondition: Precondition = "spectral",
    beta: float = 0.9,
) -> torch.Tensor:
    """Seamless cloning of ``fg`` into ``bg`` on ``mask``: the image of :func:`poisson_solve` (same arguments).

    Returns:
        ``(B, C, H, W)`` blended image (not clipped). An iterative solver that stops before ``tol`` emits
        :class:`fusion.ConvergenceWarning`.

    Example:
        >>> fg, bg = torch.rand(1, 3, 32, 40), torch.rand(1, 3, 32, 40)
        >>> mask = torch.zeros(1, 1, 32, 40); mask[..., 8:24, 10:30] = 1
        >>> poisson_blend(fg, bg, mask).shape
        torch.Size([1, 3, 32, 40])
    """
    return poisson_solve(
        fg, bg, mask, mixed=mixed, solver=solver, max_iter=max_iter, tol=tol, precondition=precondition, beta=beta
    ).image


class PoissonBlend(nn.Module):
    """:func:`poisson_blend` as a layer: the options are fixed at construction, ``forward(fg, bg, mask)`` blends.

    Differentiable in ``fg`` and ``bg`` (and, with ``solver="spectral"``, in ``mask``), so it can paste
    seamlessly inside a training graph: a data augmentation, or a loss that compares a network's output with
    its Poisson-blended composite.

    Example:
        >>> layer = PoissonBlend(solver="spectral")
        >>> fg, bg = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
        >>> mask = torch.zeros(2, 1, 16, 16); mask[..., 4:12, 4:12] = 1
        >>> layer(fg, bg, mask).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(
        self,
        *,
        mixed: bool = False,
        solver: Solver = "exact",
        max_iter: int = 20000,
        tol: float = DEFAULT_TOL,
        precondition: Precondition = "spectral",
        beta: float = 0.9,
    ) -> None:
        super().__init__()
        self.options = dict(
            mixed=mixed, solver=solver, max_iter=max_iter, tol=tol, precondition=precondition, beta=beta
        )

    def forward(self, fg: torch.Tensor, bg: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return poisson_blend(fg, bg, mask, **self.options)

    def extra_repr(self) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in self.options.items())


@register("poisson")
def poisson_cli(
    fg: torch.Tensor,
    bg: torch.Tensor,
    mask: torch.Tensor,
    *,
    mixed: bool = False,
    solver: Solver = "exact",
    max_iter: int = 20000,
    tol: float = DEFAULT_TOL,
) -> MethodOutput:
    """Command-line adapter (``infer.py method=poisson``): :func:`poisson_solve` with the options of
    ``conf/method/poisson.yaml``; no extra outputs."""
    return MethodOutput(
        result=poisson_solve(fg, bg, mask, mixed=mixed, solver=solver, max_iter=max_iter, tol=tol).image
    )
