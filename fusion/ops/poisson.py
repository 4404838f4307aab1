"""Spectral solvers for screened Poisson equations on tensor-product grids, one boundary condition per axis.

The discrete operator is the standard three-point second difference along every solved axis (see
:mod:`fusion.ops.diff` for the grids each boundary condition assumes), scaled by ``1/h²`` for a spacing ``h``.
Each axis is diagonalised by its own transform:

=============  =====================  ========================================
boundary       transform              eigenvalues of −∂² (``k = 0 … N-1``)
=============  =====================  ========================================
``neumann``    DCT-II                 ``4 sin²(πk / (2N)) / h²``
``dirichlet``  DST-I                  ``4 sin²(π(k+1) / (2(N+1))) / h²``
``periodic``   real FFT               ``4 sin²(πk / N) / h²``
=============  =====================  ========================================

so any mix (e.g. mirror in space and periodic in colour for dynamic optimal transport) is solved by a transform,
a division and the inverse transform, in ``O(n log n)``. :func:`spectral_forward`, :func:`spectral_inverse` and
:func:`laplacian_symbol` expose the pieces so other operators diagonal in the same bases can reuse them.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

from fusion.ops.diff import BoundaryCondition, check_bc
from fusion.ops.transforms import dct, dst1, idct


def _normalise(
    x: torch.Tensor,
    bc: BoundaryCondition | Sequence[BoundaryCondition],
    dims: Sequence[int],
) -> tuple[list[int], list[str]]:
    dims_ = [d % x.ndim for d in dims]
    if len(set(dims_)) != len(dims_):
        raise ValueError(f"dims must be distinct axes, got {tuple(dims)}")
    bcs = [bc] * len(dims_) if isinstance(bc, str) else list(bc)
    if len(bcs) != len(dims_):
        raise ValueError(f"expected one boundary condition per axis ({len(dims_)}), got {len(bcs)}")
    for b in bcs:
        check_bc(b)
    return dims_, bcs


def spectral_forward(
    x: torch.Tensor,
    bc: BoundaryCondition | Sequence[BoundaryCondition],
    dims: Sequence[int],
) -> torch.Tensor:
    """Transform ``x`` along ``dims`` into the eigenbasis of the Laplacian with boundary conditions ``bc``.

    Neumann axes use the DCT-II, Dirichlet axes the DST-I and periodic axes a real FFT (``rfftn``, with the last
    periodic axis halved to ``N//2 + 1``); the result is complex when any axis is periodic.
    """
    dims_, bcs = _normalise(x, bc, dims)
    for d, b in zip(dims_, bcs):
        if b == "neumann":
            x = dct(x, d)
        elif b == "dirichlet":
            x = dst1(x, d)
    periodic = [d for d, b in zip(dims_, bcs) if b == "periodic"]
    if periodic:
        x = torch.fft.rfftn(x, dim=periodic)
    return x


def spectral_inverse(
    x: torch.Tensor,
    bc: BoundaryCondition | Sequence[BoundaryCondition],
    dims: Sequence[int],
    sizes: Sequence[int],
) -> torch.Tensor:
    """Inverse of :func:`spectral_forward`; ``sizes`` are the spatial lengths of ``dims``."""
    dims_, bcs = _normalise(x, bc, dims)
    periodic = [(d, n) for d, b, n in zip(dims_, bcs, sizes) if b == "periodic"]
    if periodic:
        x = torch.fft.irfftn(x, s=[n for _, n in periodic], dim=[d for d, _ in periodic])
    for d, b in zip(dims_, bcs):
        if b == "neumann":
            x = idct(x, d)
        elif b == "dirichlet":
            x = dst1(x, d)
    return x


def laplacian_eigenvalues(
    n: int,
    bc: BoundaryCondition,
    *,
    spacing: float = 1.0,
    half: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Eigenvalues of ``-∂²`` on ``n`` samples with boundary condition ``bc`` (table in the module docstring).

    ``half=True`` keeps the ``n//2 + 1`` frequencies of a real FFT (periodic only).

    Example:
        >>> laplacian_eigenvalues(4, "periodic", dtype=torch.float64).round(decimals=12).abs()
        tensor([0., 2., 4., 2.], dtype=torch.float64)
    """
    check_bc(bc)
    k = torch.arange(n, dtype=torch.float64)
    if bc == "neumann":
        lam = 4 * torch.sin(math.pi * k / (2 * n)) ** 2
    elif bc == "dirichlet":
        lam = 4 * torch.sin(math.pi * (k + 1) / (2 * (n + 1))) ** 2
    else:
        lam = 4 * torch.sin(math.pi * k / n) ** 2
        if half:
            lam = lam[: n // 2 + 1]
    return (lam / spacing**2).to(dtype=dtype, device=device)


def laplacian_symbol(
    shape: Sequence[int],
    bc: BoundaryCondition | Sequence[BoundaryCondition],
    dims: Sequence[int],
    *,
    spacing: float | Sequence[float] = 1.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Eigenvalues of ``-Δ`` over ``dims`` laid out like :func:`spectral_forward`'s output.

    Args:
        shape: full shape of the spatial tensor (``len(shape)`` dimensions).
        bc: one boundary condition, or one per axis of ``dims``.
        dims: the solved axes.
        spacing: grid step ``h``, one value or one per axis.

    Returns:
        A real tensor broadcastable against the transformed tensor (size 1 on the axes not in ``dims``).
    """
    ndim = len(shape)
    dims_ = [d % ndim for d in dims]
    bcs = [bc] * len(dims_) if isinstance(bc, str) else list(bc)
    hs = [spacing] * len(dims_) if isinstance(spacing, (int, float)) else list(spacing)
    if len(hs) != len(dims_):
        raise ValueError(f"expected one spacing per axis ({len(dims_)}), got {len(hs)}")
    periodic = [d for d, b in zip(dims_, bcs) if b == "periodic"]
    last_periodic = periodic[-1] if periodic else None
    total = torch.zeros([1] * ndim, dtype=dtype, device=device)
    for d, b, h in zip(dims_, bcs, hs):
        lam = laplacian_eigenvalues(
            shape[d], b, spacing=float(h), half=(d == last_periodic), dtype=dtype, device=device
        )
        view = [1] * ndim
        view[d] = lam.numel()
        total = total + lam.view(view)
    return total


def solve_poisson(
    rhs: torch.Tensor,
    bc: BoundaryCondition | Sequence[BoundaryCondition] = "neumann",
    screening: float | torch.Tensor = 0.0,
    *,
    dims: Sequence[int] = (-2, -1),
    spacing: float | Sequence[float] = 1.0,
) -> torch.Tensor:
    """Solve ``(−Δ + screening) u = rhs`` over the axes ``dims`` by one spectral transform per axis.

    The Laplacian is the standard stencil of :func:`fusion.ops.laplacian` with the given boundary condition(s),
    scaled by ``1/h²``. All other axes are batch axes.

    Neumann / periodic with ``screening == 0`` (no Dirichlet axis): the operator is singular, its kernel the
    constants. A solution exists only when ``rhs`` has zero mean over ``dims`` (the compatibility condition
    ``Σ rhs = 0``, the discrete form of ``∫ f = ∮ ∂u/∂n``). The solver returns the zero-mean least-squares
    solution: the mean of ``rhs`` is discarded and the returned ``u`` has zero mean; add any constant to get
    the others.

    Args:
        rhs: tensor of any shape, real floating point.
        bc: ``"neumann"``, ``"dirichlet"``, ``"periodic"``, or one per axis of ``dims``.
        screening: non-negative constant (or tensor broadcastable to ``rhs``'s batch axes) added to ``−Δ``.
        dims: the axes to solve over (default the image axes H, W).
        spacing: grid step, one value or one per axis.

    Returns:
        ``u`` with the shape, dtype and device of ``rhs``.

    Example:
        >>> from fusion.ops import laplacian
        >>> f = torch.randn(2, 3, 5, 7, dtype=torch.float64)
        >>> u = solve_poisson(f, bc="dirichlet")
        >>> torch.allclose(-laplacian(u, bc="dirichlet"), f)
        True
    """
    if not torch.is_floating_point(rhs):
        raise TypeError(f"rhs must be a floating-point tensor, got {rhs.dtype}")
    dims_, bcs = _normalise(rhs, bc, dims)
    if isinstance(screening, (int, float)) and screening < 0:
        raise ValueError(f"screening must be >= 0, got {screening}")
    sizes = [rhs.shape[d] for d in dims_]
    real = rhs.dtype
    symbol = laplacian_symbol(rhs.shape, bcs, dims_, spacing=spacing, dtype=real, device=rhs.device)
    if isinstance(screening, torch.Tensor):
        symbol = symbol + screening.to(real)
    else:
        symbol = symbol + screening
    singular = "dirichlet" not in bcs and not (isinstance(screening, torch.Tensor) or screening > 0)
    if singular:
        # The zero frequency sits at index 0 on every axis; make it harmless, then zero that coefficient.
        symbol = symbol.clone()
        symbol[(0,) * symbol.ndim] = 1.0
    coeffs = spectral_forward(rhs, bcs, dims_) / symbol
    if singular:
        index = [slice(None)] * coeffs.ndim
        for d in dims_:
            index[d] = 0
        coeffs = coeffs.clone()
        coeffs[tuple(index)] = 0
    return spectral_inverse(coeffs, bcs, dims_, sizes)
