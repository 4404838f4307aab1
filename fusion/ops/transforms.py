"""Orthonormal real trigonometric transforms on ``torch.fft``.

* :func:`dct` — DCT-II, ``X_k = s_k Σ_n x_n cos(πk(2n+1)/(2N))`` with ``s_0 = √(1/N)``, ``s_k = √(2/N)``;
  the basis that diagonalises the Neumann (half-sample mirror) Laplacian.
* :func:`idct` — its inverse, the orthonormal DCT-III.
* :func:`dst1` — DST-I, ``X_k = √(2/(N+1)) Σ_n x_n sin(π(n+1)(k+1)/(N+1))``; orthonormal and its own inverse;
  the basis of the Dirichlet (zero ghost values) Laplacian.

Each takes one axis or a sequence of axes, works for any length, on any device, in float32/float64, and is
differentiable (the transforms are orthogonal, so their gradients are the inverse transforms).
These agree with ``scipy.fft.dct(x, type=2, norm="ortho")``, ``idct(..., type=2, norm="ortho")`` and
``dst(x, type=1, norm="ortho")``.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch

Dims = int | Sequence[int]


def _dims(x: torch.Tensor, dim: Dims) -> list[int]:
    dims = [dim] if isinstance(dim, int) else list(dim)
    return [d % x.ndim for d in dims]


def _twiddle(n: int, x: torch.Tensor, sign: float) -> torch.Tensor:
    """``exp(sign·iπk/(2n))`` for k = 0 … n//2, in the complex dtype matching ``x``."""
    real = torch.float64 if x.dtype == torch.float64 else torch.float32
    k = torch.arange(n // 2 + 1, device=x.device, dtype=real)
    return torch.polar(torch.ones_like(k), sign * math.pi * k / (2 * n))


def _dct_last(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    # Makhoul's reordering: even samples forward, odd samples backward; one real FFT of length n.
    v = torch.cat([x[..., ::2], x[..., 1::2].flip(-1)], dim=-1)
    w = torch.fft.rfft(v, dim=-1) * _twiddle(n, x, -1.0)
    # W_{n-k} = -i·conj(W_k), so Re W gives the first half and -Im W the mirrored second half.
    head = w.real
    tail = (-w.imag[..., 1 : (n + 1) // 2]).flip(-1)
    y = torch.cat([head, tail], dim=-1)
    scale = torch.full((n,), math.sqrt(2.0 / n), dtype=y.dtype, device=y.device)
    scale[0] = math.sqrt(1.0 / n)
    return y * scale


def _idct_last(y: torch.Tensor) -> torch.Tensor:
    n = y.shape[-1]
    scale = torch.full((n,), math.sqrt(2.0 / n), dtype=y.dtype, device=y.device)
    scale[0] = math.sqrt(1.0 / n)
    y = y / scale
    # W_k = Y_k - i·Y_{n-k} (Y_n = 0) for k = 0 … n//2, then undo the twiddle and the reordering.
    half = n // 2 + 1
    y_rev = torch.cat([torch.zeros_like(y[..., :1]), y.flip(-1)[..., : half - 1]], dim=-1)
    w = torch.complex(y[..., :half], -y_rev) * _twiddle(n, y, 1.0)
    v = torch.fft.irfft(w, n=n, dim=-1)
    x = torch.empty_like(v)
    n_even = (n + 1) // 2
    x[..., ::2] = v[..., :n_even]
    x[..., 1::2] = v[..., n_even:].flip(-1)
    return x


def _dst1_last(x: torch.Tensor) -> torch.Tensor:
    n = x.shape[-1]
    # Im FFT_{2(n+1)}([0, x_0, …, x_{n-1}, 0, …])_k = −Σ x_m sin(πk(m+1)/(n+1)): the DST-I for k = 1 … n.
    f = torch.fft.rfft(torch.nn.functional.pad(x, (1, 0)), n=2 * (n + 1), dim=-1)
    return f.imag[..., 1 : n + 1] * -math.sqrt(2.0 / (n + 1))


def _along(x: torch.Tensor, dim: Dims, fn) -> torch.Tensor:
    for d in _dims(x, dim):
        x = fn(x.movedim(d, -1)).movedim(-1, d)
    return x


def dct(x: torch.Tensor, dim: Dims = -1) -> torch.Tensor:
    """Orthonormal DCT-II along ``dim`` (an axis or a sequence of axes).

    Example:
        >>> dct(torch.ones(4)).round(decimals=6).abs()
        tensor([2., 0., 0., 0.])
    """
    return _along(x, dim, _dct_last)


def idct(x: torch.Tensor, dim: Dims = -1) -> torch.Tensor:
    """Orthonormal DCT-III along ``dim``: the inverse of :func:`dct`.

    Example:
        >>> x = torch.rand(2, 5, dtype=torch.float64)
        >>> torch.allclose(idct(dct(x)), x)
        True
    """
    return _along(x, dim, _idct_last)


def dst1(x: torch.Tensor, dim: Dims = -1) -> torch.Tensor:
    """Orthonormal DST-I along ``dim``; it is its own inverse.

    Example:
        >>> x = torch.rand(3, 6, dtype=torch.float64)
        >>> torch.allclose(dst1(dst1(x)), x)
        True
    """
    return _along(x, dim, _dst1_last)
