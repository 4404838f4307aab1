"""Poisson problems on an arbitrary region with Dirichlet data around it, solved matrix-free by PCG."""

from __future__ import annotations

from typing import Callable, Literal

import torch

from fusion.ops.cg import conjugate_gradient, relative_residual
from fusion.ops.diff import laplacian
from fusion.ops.poisson import solve_poisson
from fusion.ops.result import SolverResult, warn_unconverged

Preconditioner = Literal["spectral", "jacobi", "none"]
Box = tuple[int, int, int, int]


def region_boxes(region: torch.Tensor, *, grow: int = 1) -> list[Box]:
    """Per-sample bounding box ``(y0, y1, x0, x1)`` of ``region > 0.5``, grown by ``grow`` pixels and clipped.

    Args:
        region: ``(B, 1, H, W)``; every sample must have a pixel above 0.5.

    Returns:
        One half-open box per sample.

    Example:
        >>> r = torch.zeros(2, 1, 6, 7); r[0, 0, 2, 3] = 1; r[1, 0, 0:2, 5:7] = 1
        >>> region_boxes(r)
        [(1, 4, 2, 5), (0, 3, 4, 7)]
    """
    inside = (region > 0.5).flatten(1, -3).any(1)  # (B, H, W)
    rows = inside.any(-1)
    cols = inside.any(-2)
    h, w = inside.shape[-2:]
    ar_h = torch.arange(h, device=region.device)
    ar_w = torch.arange(w, device=region.device)
    big = h + w
    # first and last occupied row/column of every sample, in one transfer
    first_r = torch.where(rows, ar_h, big).amin(-1)
    last_r = torch.where(rows, ar_h, -1).amax(-1)
    first_c = torch.where(cols, ar_w, big).amin(-1)
    last_c = torch.where(cols, ar_w, -1).amax(-1)
    bounds = torch.stack([first_r, last_r, first_c, last_c], 1).cpu().tolist()
    boxes = []
    for r0, r1, c0, c1 in bounds:
        if r1 < 0:
            raise ValueError("region is empty (no pixel > 0.5) in at least one batch sample")
        boxes.append((max(r0 - grow, 0), min(r1 + 1 + grow, h), max(c0 - grow, 0), min(c1 + 1 + grow, w)))
    return boxes


class BoxGroups:
    """Batch samples grouped by the size of their box, to gather equal-sized crops and treat them in one call.

    ``gather(x)`` returns, per group, the ``(n, C, h, w)`` crops of the group's samples, each at its own box;
    ``scatter(out, crops)`` writes such crops back into ``out`` in place (autograd-safe on a non-leaf tensor).
    A sample has one box, so the scatter has no duplicate indices.

    Example:
        >>> x = torch.arange(2 * 16.0).view(2, 1, 4, 4)
        >>> groups = BoxGroups([(0, 2, 0, 2), (2, 4, 1, 3)], x.device)
        >>> [c.shape for c in groups.gather(x)]
        [torch.Size([2, 1, 2, 2])]
        >>> groups.gather(x)[0][1, 0]
        tensor([[25., 26.],
                [29., 30.]])
    """

    def __init__(self, boxes: list[Box], device: torch.device | str) -> None:
        by_size: dict[tuple[int, int], list[int]] = {}
        for i, (y0, y1, x0, x1) in enumerate(boxes):
            by_size.setdefault((y1 - y0, x1 - x0), []).append(i)
        self.boxes = boxes
        self.groups = []
        for (h, w), members in by_size.items():
            samples = torch.tensor(members, device=device)
            top = torch.tensor([boxes[i][0] for i in members], device=device)
            left = torch.tensor([boxes[i][2] for i in members], device=device)
            self.groups.append((samples, top, left, h, w))

    @staticmethod
    def _index(group, channels: int, margin: int, offset: int, clamp: tuple[int, int] | None = None):
        samples, top, left, h, w = group
        dev = samples.device
        rows = top[:, None] + (offset - margin) + torch.arange(h + 2 * margin, device=dev)
        cols = left[:, None] + (offset - margin) + torch.arange(w + 2 * margin, device=dev)
        if clamp is not None:
            rows, cols = rows.clamp(0, clamp[0] - 1), cols.clamp(0, clamp[1] - 1)
        return (
            samples[:, None, None, None],
            torch.arange(channels, device=dev)[None, :, None, None],
            rows[:, None, :, None],
            cols[:, None, None, :],
        )

    def gather(
        self, x: torch.Tensor, *, margin: int = 0, offset: int = 0, replicate: bool = False
    ) -> list[torch.Tensor]:
        """Per group, the crops of ``x`` over each box grown by ``margin``, in an image padded by ``offset``.

        ``replicate``: where a grown box leaves the image, repeat its edge pixels (the crops of ``x`` padded by
        edge replication, without padding the whole image).
        """
        clamp = tuple(x.shape[-2:]) if replicate else None
        return [x[self._index(g, x.shape[1], margin, offset, clamp)] for g in self.groups]

    def scatter(self, out: torch.Tensor, crops: list[torch.Tensor]) -> torch.Tensor:
        """Write the per-group box crops into ``out`` (in place) and return it."""
        for g, crop in zip(self.groups, crops):
            out[self._index(g, out.shape[1], 0, 0)] = crop
        return out


def masked_poisson_operator(region: torch.Tensor):
    """``x ↦ Ω·(−Δ(Ω·x))`` with the Neumann (in-image neighbours) Laplacian, Ω = ``region``.

    On the pixels of Ω this is the matrix of Pérez et al.: ``|N_p| x_p − Σ_{q ∈ N_p ∩ Ω} x_q``. It is symmetric
    and, when every connected part of Ω has a neighbour outside Ω, positive definite.
    """

    def apply(x: torch.Tensor) -> torch.Tensor:
        return -laplacian(x * region, bc="neumann") * region

    return apply


def masked_poisson_preconditioner(
    region: torch.Tensor, kind: Preconditioner = "spectral"
) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """``r ↦ M⁻¹ r`` for :func:`masked_poisson_operator`, built for each batch sample from its own region.

    ``"spectral"``: the inverse Dirichlet Laplacian of the sample's own bounding box of Ω, restricted to Ω,
    ``M⁻¹ = P_Ω L_box⁻¹ P_Ω`` (one DST-I pair per application; ``M⁻¹ = A⁻¹`` when Ω is a rectangle away from the
    image border, so that PCG stops after one iteration).
    Samples whose boxes have the same size are solved together in one transform call. ``"jacobi"``: division by
    ``|N_p|``. ``"none"``: ``None`` (identity). Each sample's ``M⁻¹`` depends on that sample only, so a batch is
    preconditioned exactly as its samples are one by one.

    Args:
        region: ``(B, 1, H, W)`` binary mask of Ω (1 = unknown), every sample non-empty.
        kind: ``"spectral"``, ``"jacobi"`` or ``"none"``.
    """
    if kind == "spectral":
        groups = BoxGroups(region_boxes(region, grow=0), region.device)
        box_regions = groups.gather(region)

        def m_inv(r: torch.Tensor) -> torch.Tensor:
            crops = groups.gather(r)
            solved = [solve_poisson(c, bc="dirichlet") * m for c, m in zip(crops, box_regions)]
            return groups.scatter(torch.zeros_like(r), solved)

        return m_inv
    if kind == "jacobi":
        # |N_p| = 4 minus the neighbours that fall outside the image (the zero ghosts of the Dirichlet stencil).
        degree = 4 + laplacian(torch.ones_like(region), bc="dirichlet")
        inv_degree = region / degree
        return lambda r: r * inv_degree
    if kind == "none":
        return None
    raise ValueError(f"precondition must be 'spectral', 'jacobi' or 'none', got {kind!r}")


class _Options:
    """Non-tensor settings of a masked solve, kept off the autograd graph."""

    def __init__(self, region, apply_a, m_inv, max_iter, tol, check_every, name):
        self.region, self.apply_a, self.m_inv = region, apply_a, m_inv
        self.max_iter, self.tol, self.check_every, self.name = max_iter, tol, check_every, name
        self.result: SolverResult | None = None


class _MaskedSolve(torch.autograd.Function):
    """``x = A⁻¹ b`` on Ω by PCG; the backward pass solves ``A λ = ∂L/∂x`` with the same operator (A = Aᵀ)."""

    @staticmethod
    def forward(ctx, opts: _Options, b: torch.Tensor, x0: torch.Tensor | None):  # noqa: ANN205
        ctx.opts = opts
        res = conjugate_gradient(
            opts.apply_a,
            b.detach(),
            None if x0 is None else x0.detach(),
            precondition=opts.m_inv,
            max_iter=opts.max_iter,
            tol=opts.tol,
            check_every=opts.check_every,
            true_residual=True,
        )
        opts.result = res
        return res.solution

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_x: torch.Tensor):  # noqa: ANN205
        opts: _Options = ctx.opts
        g = opts.region * grad_x
        res = conjugate_gradient(
            opts.apply_a,
            g,
            precondition=opts.m_inv,
            max_iter=opts.max_iter,
            tol=opts.tol,
            check_every=opts.check_every,
            true_residual=True,
        )
        warn_unconverged(res, f"{opts.name} (adjoint solve of the gradient)")
        return None, res.solution, None


def solve_masked_poisson(
    rhs: torch.Tensor,
    boundary: torch.Tensor,
    region: torch.Tensor,
    *,
    x0: torch.Tensor | None = None,
    precondition: Preconditioner = "spectral",
    max_iter: int = 20000,
    tol: float = 1e-6,
    check_every: int = 10,
    name: str = "masked Poisson solve",
) -> SolverResult:
    """Solve ``−Δu = rhs`` on the region Ω with ``u = boundary`` off Ω, for a batch of images.

    The discrete equations are, for every pixel ``p`` of Ω with in-image 4-neighbourhood ``N_p``:
    ``|N_p| u_p − Σ_{q ∈ N_p ∩ Ω} u_q = rhs_p + Σ_{q ∈ N_p \\ Ω} boundary_q``, i.e. ``A u_Ω = b``. Pixels of Ω on
    the image border simply have fewer neighbours (a natural, Neumann, condition there). Solved by conjugate
    gradients on the unknowns of Ω, matrix-free, each sample on its own (see
    :func:`masked_poisson_preconditioner`); convergence is the directly computed relative residual
    ``‖b − A u_Ω‖ / ‖b‖ ≤ tol`` (``true_residual`` of :func:`fusion.ops.conjugate_gradient`).

    Preconditioners: ``"spectral"`` cuts the iteration count from ``O(n)`` to about ``O(√n)`` for an
    ``n``-pixel-wide region; ``"jacobi"`` divides by ``|N_p|``.

    Differentiable with respect to ``rhs`` and ``boundary`` (and ``x0`` gets no gradient): the backward pass is
    one more PCG solve with the same symmetric operator and preconditioner (implicit differentiation of
    ``A u = b``, not unrolling), to the same ``tol``; if it stops at ``max_iter`` it emits
    :class:`fusion.ConvergenceWarning`. ``region`` is thresholded at 0.5 and gets no gradient.

    Args:
        rhs: ``(B, C, H, W)`` right-hand side (only its values on Ω matter).
        boundary: ``(B, C, H, W)`` Dirichlet data (only its values off Ω matter).
        region: ``(B, 1, H, W)`` or ``(1, 1, H, W)`` mask of Ω (> 0.5 = unknown), non-empty in every sample.
        x0: optional initial guess.
        precondition: ``"spectral"``, ``"jacobi"`` or ``"none"``.
        max_iter, tol, check_every: as in :func:`fusion.ops.conjugate_gradient`.
        name: what the adjoint solve's warning calls this solve.

    Returns:
        :class:`SolverResult` whose ``solution`` is the full ``(B, C, H, W)`` image (``boundary`` off Ω) and
        whose ``reached`` is the final directly computed relative residual per sample. Reports non-convergence
        in ``converged`` only (no warning: the calling method warns).

    Example:
        >>> region = torch.zeros(1, 1, 5, 5, dtype=torch.float64); region[..., 1:4, 1:4] = 1
        >>> res = solve_masked_poisson(torch.zeros(1, 1, 5, 5, dtype=torch.float64),
        ...                            torch.ones(1, 1, 5, 5, dtype=torch.float64), region, tol=1e-12)
        >>> torch.allclose(res.solution, torch.ones(1, 1, 5, 5, dtype=torch.float64))
        True
    """
    if precondition not in ("spectral", "jacobi", "none"):
        raise ValueError(f"precondition must be 'spectral', 'jacobi' or 'none', got {precondition!r}")
    batch = max(rhs.shape[0], boundary.shape[0], region.shape[0])
    region = (region > 0.5).to(rhs.dtype).expand(batch, 1, -1, -1)
    outside = 1 - region
    apply_a = masked_poisson_operator(region)
    b = ((rhs + laplacian(boundary * outside, bc="neumann")) * region).expand(batch, -1, -1, -1)
    m_inv = masked_poisson_preconditioner(region, precondition)
    opts = _Options(region, apply_a, m_inv, max_iter, tol, check_every, name)
    start = None if x0 is None else x0 * region
    x = _MaskedSolve.apply(opts, b, start)
    res = opts.result
    with torch.no_grad():
        # the criterion, evaluated directly on the returned unknowns (equal to the confirmed value where CG
        # confirmed it; the carried residual of a sample stopped at max_iter is replaced by the direct one)
        res.reached = relative_residual(apply_a, b.detach(), x.detach())
    res.converged = res.reached <= tol
    res.solution = x * region + boundary * outside
    return res
