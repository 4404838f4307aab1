"""Staggered space–colour–time grid of dynamic optimal transport (Papadakis et al. 2014; Fitschen et al. 2016).

A sequence of ``P`` time steps between two ``(B, C, H, W)`` images lives on three grids:

* the **density** ``f`` on time nodes ``k/P``, ``k = 0 … P``; the endpoints ``f_0``, ``f_P`` are the given
  images, the unknowns are the ``P − 1`` interior nodes, shape ``(B, P−1, C, H, W)``;
* the **momentum** ``m = (m_x, m_y, m_c)`` on the faces between cells, centred in time at ``(k − ½)/P``:
  ``m_x`` ``(B, P, C, H−1, W)`` and ``m_y`` ``(B, P, C, H, W−1)`` (the boundary faces carry zero flux and are
  dropped: mirror conditions), ``m_c`` ``(B, P, C, H, W)`` with periodic colour conditions (the face ``c``
  joins channel ``c`` to channel ``c+1 mod C``: for RGB the faces R|G, G|B and B|R) or ``(B, P, C−1, H, W)``
  with mirror colour conditions (no flux across the B|R wrap). Gray images (``C = 1``) have no colour axis
  and ``m_c`` is ``None``;
* the **cell centres** ``(B, P, C, H, W)``, where the cost is evaluated and the continuity equation holds.

Grid steps: time ``h_t = 1/P``, colour ``h_c = 1/C`` (the colour circle has length 1), space ``h = 1/max(H, W)``
in both directions (square pixels, the longer side of the image has length 1).

Operators (all linear, with adjoints; the affine parts from ``f_0``, ``f_P`` are separate functions):

* :func:`interpolate` ``S``: staggered → centres, the mean of the two faces (nodes) around a cell along each
  axis; ``‖S‖ ≤ 1``. :func:`interpolate_boundary` is its constant part ``(f_0 at k=1, f_P at k=P)/2``.
* :func:`continuity` ``A``: ``∂_t f + div m`` at cell centres by differences scaled by the grid steps;
  :func:`continuity_rhs` is ``b`` so that the discrete constraint reads ``A u = b``.

``A Aᵀ`` is exactly ``−Δ`` on the cell grid with mirror conditions in time and space and the colour condition in
colour — the operator :mod:`fusion.ops.poisson` diagonalises by DCT-II ⊗ DFT ⊗ DCT-II ⊗ DCT-II (paper, Prop. 3).
The time part alone, ``D_tᵀ D_t``, is the zero (Dirichlet) Laplacian on the ``P − 1`` interior nodes (DST-I), and
the momentum part ``D_m D_mᵀ`` the space–colour Laplacian per time cell (used by the Schur complement, Prop. 4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch

ColorBC = Literal["periodic", "mirror"]


class Staggered(NamedTuple):
    """Primal variable ``u = (m_x, m_y, m_c, f)`` on the staggered grid (shapes in the module docstring)."""

    mx: torch.Tensor
    my: torch.Tensor
    mc: torch.Tensor | None
    f: torch.Tensor


class Centred(NamedTuple):
    """Momentum and density interpolated to the cell centres, each ``(B, P, C, H, W)`` (``mc`` ``None`` for gray)."""

    mx: torch.Tensor
    my: torch.Tensor
    mc: torch.Tensor | None
    f: torch.Tensor


@dataclass(frozen=True)
class StaggeredGrid:
    """Sizes, colour boundary condition and steps of the grid (see the module docstring).

    Args:
        steps: number of time steps ``P >= 2``.
        channels, height, width: image size ``C, H, W``.
        color_bc: ``"periodic"`` or ``"mirror"`` (ignored when ``C = 1``).
    """

    steps: int
    channels: int
    height: int
    width: int
    color_bc: ColorBC = "periodic"

    @property
    def has_color(self) -> bool:
        return self.channels > 1

    @property
    def color_faces(self) -> int:
        return self.channels if self.color_bc == "periodic" else self.channels - 1

    @property
    def ht(self) -> float:
        return 1.0 / self.steps

    @property
    def hc(self) -> float:
        return 1.0 / self.channels

    @property
    def h(self) -> float:
        return 1.0 / max(self.height, self.width)

    @property
    def cell_volume(self) -> float:
        """Volume of one space–colour–time cell, the weight of a cell in the discrete integrals."""
        return self.ht * self.h * self.h * (self.hc if self.has_color else 1.0)

    @property
    def poisson_bc(self) -> tuple[str, str, str, str]:
        """Boundary conditions of ``A Aᵀ`` on the cell axes (time, colour, H, W) for :mod:`fusion.ops.poisson`."""
        color = "periodic" if (self.has_color and self.color_bc == "periodic") else "neumann"
        return ("neumann", color, "neumann", "neumann")

    @property
    def spacing(self) -> tuple[float, float, float, float]:
        """Grid steps of the cell axes (time, colour, H, W)."""
        return (self.ht, self.hc, self.h, self.h)

    def zeros(self, batch: int, *, dtype: torch.dtype, device: torch.device | str | None = None) -> Staggered:
        """The zero staggered variable for a batch of ``batch``."""
        p, c, hh, ww = self.steps, self.channels, self.height, self.width
        kw = dict(dtype=dtype, device=device)
        mc = torch.zeros(batch, p, self.color_faces, hh, ww, **kw) if self.has_color else None
        return Staggered(
            torch.zeros(batch, p, c, hh - 1, ww, **kw),
            torch.zeros(batch, p, c, hh, ww - 1, **kw),
            mc,
            torch.zeros(batch, p - 1, c, hh, ww, **kw),
        )


def _pad(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Add a zero slice at both ends of ``dim`` (the boundary faces / fixed endpoints)."""
    pad = [0, 0] * (x.ndim - 1 - dim % x.ndim) + [1, 1]
    return torch.nn.functional.pad(x, pad)


def _mean_faces(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Faces (interior only, n−1) → cells (n): mean of the two faces around each cell, zero at the boundary."""
    x = _pad(x, dim)
    n = x.shape[dim]
    return 0.5 * (x.narrow(dim, 0, n - 1) + x.narrow(dim, 1, n - 1))


def _mean_faces_adjoint(y: torch.Tensor, dim: int) -> torch.Tensor:
    n = y.shape[dim]
    return 0.5 * (y.narrow(dim, 0, n - 1) + y.narrow(dim, 1, n - 1))


def _diff_faces(x: torch.Tensor, dim: int, h: float) -> torch.Tensor:
    """Faces (n−1) → cells (n): ``(x_{i+½} − x_{i−½})/h`` with zero boundary faces."""
    x = _pad(x, dim)
    n = x.shape[dim]
    return (x.narrow(dim, 1, n - 1) - x.narrow(dim, 0, n - 1)) / h


def _diff_faces_adjoint(y: torch.Tensor, dim: int, h: float) -> torch.Tensor:
    n = y.shape[dim]
    return (y.narrow(dim, 0, n - 1) - y.narrow(dim, 1, n - 1)) / h


def _color_mean(mc: torch.Tensor, grid: StaggeredGrid) -> torch.Tensor:
    if grid.color_bc == "periodic":
        return 0.5 * (mc + torch.roll(mc, 1, dims=2))
    return _mean_faces(mc, 2)


def _color_mean_adjoint(v: torch.Tensor, grid: StaggeredGrid) -> torch.Tensor:
    if grid.color_bc == "periodic":
        return 0.5 * (v + torch.roll(v, -1, dims=2))
    return _mean_faces_adjoint(v, 2)


def _color_diff(mc: torch.Tensor, grid: StaggeredGrid) -> torch.Tensor:
    if grid.color_bc == "periodic":
        return (mc - torch.roll(mc, 1, dims=2)) / grid.hc
    return _diff_faces(mc, 2, grid.hc)


def _color_diff_adjoint(r: torch.Tensor, grid: StaggeredGrid) -> torch.Tensor:
    if grid.color_bc == "periodic":
        return (r - torch.roll(r, -1, dims=2)) / grid.hc
    return _diff_faces_adjoint(r, 2, grid.hc)


def interpolate(u: Staggered, grid: StaggeredGrid) -> Centred:
    """Linear part of ``S``: staggered variables → cell centres (endpoint densities taken as zero).

    Example:
        >>> grid = StaggeredGrid(steps=4, channels=1, height=5, width=6)
        >>> v = interpolate(grid.zeros(2, dtype=torch.float32), grid)
        >>> v.f.shape, v.mc is None
        (torch.Size([2, 4, 1, 5, 6]), True)
    """
    mc = _color_mean(u.mc, grid) if grid.has_color else None
    return Centred(_mean_faces(u.mx, 3), _mean_faces(u.my, 4), mc, _mean_faces(u.f, 1))


def interpolate_adjoint(v: Centred, grid: StaggeredGrid) -> Staggered:
    """``Sᵀ``: cell centres → staggered variables."""
    mc = _color_mean_adjoint(v.mc, grid) if grid.has_color else None
    return Staggered(_mean_faces_adjoint(v.mx, 3), _mean_faces_adjoint(v.my, 4), mc, _mean_faces_adjoint(v.f, 1))


def interpolate_boundary(f0: torch.Tensor, f1: torch.Tensor, grid: StaggeredGrid) -> torch.Tensor:
    """Constant part of ``S_f``: ``(B, P, C, H, W)`` holding ``f_0/2`` at the first and ``f_P/2`` at the last cell."""
    out = f0.new_zeros(f0.shape[0], grid.steps, *f0.shape[1:])
    out[:, 0] += 0.5 * f0
    out[:, -1] += 0.5 * f1
    return out


def divergence(mx: torch.Tensor, my: torch.Tensor, mc: torch.Tensor | None, grid: StaggeredGrid) -> torch.Tensor:
    """``D_m m``: space (and colour) divergence of the momentum at the cell centres, ``(B, P, C, H, W)``."""
    out = _diff_faces(mx, 3, grid.h) + _diff_faces(my, 4, grid.h)
    if grid.has_color:
        out = out + _color_diff(mc, grid)
    return out


def divergence_adjoint(r: torch.Tensor, grid: StaggeredGrid) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """``D_mᵀ``: cells → momentum faces (minus the discrete gradient with zero boundary flux)."""
    mc = _color_diff_adjoint(r, grid) if grid.has_color else None
    return _diff_faces_adjoint(r, 3, grid.h), _diff_faces_adjoint(r, 4, grid.h), mc


def time_difference(f: torch.Tensor, grid: StaggeredGrid) -> torch.Tensor:
    """``D_t f``: ``(f_k − f_{k−1})/h_t`` at the ``P`` time cells, interior nodes only (endpoints as zero)."""
    return _diff_faces(f, 1, grid.ht)


def time_difference_adjoint(r: torch.Tensor, grid: StaggeredGrid) -> torch.Tensor:
    """``D_tᵀ``: time cells → interior nodes."""
    return _diff_faces_adjoint(r, 1, grid.ht)


def continuity(u: Staggered, grid: StaggeredGrid) -> torch.Tensor:
    """``A u = D_t f + D_m m``, the discrete ``∂_t f + div m`` at the cell centres, ``(B, P, C, H, W)``.

    Example:
        >>> grid = StaggeredGrid(steps=4, channels=3, height=5, width=6)
        >>> f0 = torch.rand(2, 3, 5, 6)
        >>> u = grid.zeros(2, dtype=torch.float32)
        >>> u = u._replace(f=f0.unsqueeze(1).expand(-1, 3, -1, -1, -1))  # a density that does not move
        >>> torch.allclose(continuity(u, grid), continuity_rhs(f0, f0, grid))
        True
    """
    return time_difference(u.f, grid) + divergence(u.mx, u.my, u.mc, grid)


def continuity_adjoint(r: torch.Tensor, grid: StaggeredGrid) -> Staggered:
    """``Aᵀ r`` for ``r`` of shape ``(B, P, C, H, W)``."""
    mx, my, mc = divergence_adjoint(r, grid)
    return Staggered(mx, my, mc, time_difference_adjoint(r, grid))


def continuity_rhs(f0: torch.Tensor, f1: torch.Tensor, grid: StaggeredGrid) -> torch.Tensor:
    """``b``: the endpoint terms moved to the right, ``f_0/h_t`` at the first and ``−f_P/h_t`` at the last cell."""
    out = f0.new_zeros(f0.shape[0], grid.steps, *f0.shape[1:])
    out[:, 0] += f0 / grid.ht
    out[:, -1] -= f1 / grid.ht
    return out


def full_density(f: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor) -> torch.Tensor:
    """All ``P + 1`` density nodes ``(B, P+1, C, H, W)``: ``f_0``, the interior nodes, ``f_P``."""
    return torch.cat([f0.unsqueeze(1), f, f1.unsqueeze(1)], dim=1)
