"""Independent float64 references assembled with NumPy/SciPy; used by the tests only."""

from __future__ import annotations

import numpy as np
import scipy.ndimage as nd
import scipy.sparse as sp
import scipy.sparse.linalg as spl

NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def dirichlet_system(rhs: np.ndarray, boundary: np.ndarray, region: np.ndarray):
    """The sparse system ``|N_p| u_p − Σ_{q ∈ N_p ∩ Ω} u_q = rhs_p + Σ_{q ∈ N_p \\ Ω} boundary_q`` on Ω: ``(A, b)``.

    Row ``k`` is pixel ``p_k`` of Ω (in ``np.argwhere`` order); ``N_p`` is the in-image 4-neighbourhood.
    """
    h, w = region.shape
    index = -np.ones((h, w), dtype=int)
    pts = np.argwhere(region)
    index[region] = np.arange(len(pts))
    rows, cols, vals = [], [], []
    b = np.zeros(len(pts))
    for k, (i, j) in enumerate(pts):
        b[k] = rhs[i, j]
        degree = 0
        for di, dj in NEIGHBOURS:
            y, x = i + di, j + dj
            if 0 <= y < h and 0 <= x < w:
                degree += 1
                if region[y, x]:
                    rows.append(k), cols.append(index[y, x]), vals.append(-1.0)
                else:
                    b[k] += boundary[y, x]
        rows.append(k), cols.append(k), vals.append(float(degree))
    return sp.csc_matrix((vals, (rows, cols)), shape=(len(pts), len(pts))), b


def masked_poisson(rhs: np.ndarray, boundary: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Solve :func:`dirichlet_system` with SciPy's sparse LU; the result equals ``boundary`` off Ω."""
    a, b = dirichlet_system(rhs, boundary, region)
    out = boundary.copy()
    out[region] = spl.spsolve(a, b)
    return out


def perez_guidance_sum(fg: np.ndarray, bg: np.ndarray, mixed: bool = False) -> np.ndarray:
    """``Σ_{q ∈ N_p} v_pq`` per pixel with ``v_pq = fg_p − fg_q`` (Pérez eq. 11), or the mixed choice (eq. 13)."""
    h, w = fg.shape
    out = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            for di, dj in NEIGHBOURS:
                y, x = i + di, j + dj
                if 0 <= y < h and 0 <= x < w:
                    v = fg[i, j] - fg[y, x]
                    if mixed and abs(bg[i, j] - bg[y, x]) > abs(v):
                        v = bg[i, j] - bg[y, x]
                    out[i, j] += v
    return out


def perez_reference(fg: np.ndarray, bg: np.ndarray, region: np.ndarray, mixed: bool = False) -> np.ndarray:
    """Pérez et al.'s discrete seamless-cloning equations (their eq. 7), solved directly, for one channel."""
    return masked_poisson(perez_guidance_sum(fg, bg, mixed), bg, region)


def gaussian_poisson_dense(fg, bg, mask, color, beta, sigma):
    """Least squares of GP-GAN's eq. (9), ‖u − L x‖² + β‖G x − x̃‖², for one channel, with L, G and u assembled
    pixel by pixel: L the mirror-boundary Laplacian, G ``scipy.ndimage.gaussian_filter`` (mode reflect) applied to
    unit vectors, u the divergence of v = ∇fg where mask = 1 else ∇bg (eq. 8, forward differences)."""
    h, w = fg.shape
    n = h * w
    lap = np.zeros((n, n))
    for i in range(h):
        for j in range(w):
            for y, x in ((i + 1, j), (i - 1, j), (i, j + 1), (i, j - 1)):
                if 0 <= y < h and 0 <= x < w:  # mirror boundary: missing neighbours drop out
                    lap[i * w + j, i * w + j] -= 1
                    lap[i * w + j, y * w + x] += 1
    eye = np.eye(n)
    blur = np.stack([nd.gaussian_filter(eye[k].reshape(h, w), sigma, mode="reflect").ravel() for k in range(n)], 1)
    vy, vx = np.zeros((h, w)), np.zeros((h, w))
    for img, wgt in ((fg, mask), (bg, 1 - mask)):
        vy[:-1] += wgt[:-1] * (img[1:] - img[:-1])
        vx[:, :-1] += wgt[:, :-1] * (img[:, 1:] - img[:, :-1])
    u = vy + vx
    u[1:] -= vy[:-1]
    u[:, 1:] -= vx[:, :-1]
    a = np.vstack([lap, np.sqrt(beta) * blur])
    b = np.concatenate([u.ravel(), np.sqrt(beta) * color.ravel()])
    return np.linalg.lstsq(a, b, rcond=None)[0].reshape(h, w)


def perez_system(fg: np.ndarray, bg: np.ndarray, region: np.ndarray, mixed: bool = False):
    """Pérez's discrete equations on Ω for one channel as a sparse matrix ``A`` and right-hand side ``b``.

    Row ``k`` is pixel ``p_k`` of Ω (in ``np.argwhere`` order): ``|N_p| u_p − Σ_{q ∈ N_p ∩ Ω} u_q
    = Σ_{q ∈ N_p \\ Ω} bg_q + Σ_{q ∈ N_p} v_pq``, with ``N_p`` the in-image 4-neighbourhood.
    """
    return dirichlet_system(perez_guidance_sum(fg, bg, mixed), bg, region)


def perez_relative_residual(u: np.ndarray, fg: np.ndarray, bg: np.ndarray, region: np.ndarray, mixed=False) -> float:
    """``‖b − A u_Ω‖ / ‖b‖`` of Pérez's equations for ``(C, H, W)`` arrays, the norms over all channels."""
    num = den = 0.0
    for c in range(u.shape[0]):
        a, b = perez_system(fg[c], bg[c], region, mixed)
        r = b - a @ u[c][region]
        num += float(r @ r)
        den += float(b @ b)
    return float(np.sqrt(num / den))


def spectral_clone_reference(fg: np.ndarray, bg: np.ndarray, mask: np.ndarray, mixed: bool = False) -> np.ndarray:
    """The single-solve seamless cloning of OpenCV / GP-GAN for one channel, assembled pixel by pixel.

    Unknowns: the bounding box of ``mask > 0.5`` grown by one pixel (clipped to the image). Guidance on the edge
    from ``a`` to its next pixel ``c`` along an axis: ``m_a·d_in + (1 − m_a)·(bg_c − bg_a)`` with
    ``d_in = fg_c − fg_a`` (mixed: ``bg_c − bg_a`` when its magnitude is strictly larger). Equation of a box
    pixel ``p``: ``4 u_p − Σ_{q ∈ N4(p) ∩ box} u_q = Σ_{q ∈ N4(p) \\ box} g_q + Σ_{in-image q} v_pq`` with the
    Dirichlet value ``g_q = bg_q`` inside the image and ``bg_p`` for a neighbour beyond the image border, and
    ``v_pq`` the guidance from ``p`` towards ``q``. Solved by SciPy's sparse LU; ``bg`` outside the box.
    """
    h, w = mask.shape
    inside = mask > 0.5
    rows_on = np.nonzero(inside.any(1))[0]
    cols_on = np.nonzero(inside.any(0))[0]
    y0, y1 = max(rows_on[0] - 1, 0), min(rows_on[-1] + 2, h)
    x0, x1 = max(cols_on[0] - 1, 0), min(cols_on[-1] + 2, w)

    def edge(a, c):  # guidance on the edge from a to c, a before c along one axis
        d_fg = fg[c] - fg[a]
        d_bg = bg[c] - bg[a]
        d_in = d_bg if mixed and abs(d_bg) > abs(d_fg) else d_fg
        return mask[a] * d_in + (1 - mask[a]) * d_bg

    bh, bw = y1 - y0, x1 - x0
    n = bh * bw
    rows, cols, vals = [], [], []
    b = np.zeros(n)
    for i in range(y0, y1):
        for j in range(x0, x1):
            k = (i - y0) * bw + (j - x0)
            rows.append(k), cols.append(k), vals.append(4.0)
            for di, dj in NEIGHBOURS:
                y, x = i + di, j + dj
                in_image = 0 <= y < h and 0 <= x < w
                if in_image:
                    # v_pq: the guidance from p to q, i.e. minus the edge value when q comes after p
                    b[k] += -edge((i, j), (y, x)) if (di, dj) in ((1, 0), (0, 1)) else edge((y, x), (i, j))
                if y0 <= y < y1 and x0 <= x < x1:
                    rows.append(k), cols.append((y - y0) * bw + (x - x0)), vals.append(-1.0)
                else:
                    b[k] += bg[y, x] if in_image else bg[i, j]
    a = sp.csc_matrix((vals, (rows, cols)), shape=(n, n))
    out = bg.copy()
    out[y0:y1, x0:x1] = spl.spsolve(a, b).reshape(bh, bw)
    return out


def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


def blur_reflect(x: np.ndarray, sizes: tuple[int, int], sigmas: tuple[float, float]) -> np.ndarray:
    """Separable sampled-Gaussian correlation of a 2-D array, borders mirrored without repeating the edge sample."""
    out = x.astype(np.float64)
    for axis, (size, sigma) in enumerate(zip(sizes, sigmas)):
        taps = _gaussian_taps(size, sigma)
        r = size // 2
        pad = [(0, 0), (0, 0)]
        pad[axis] = (r, r)
        padded = np.pad(out, pad, mode="reflect")
        n = out.shape[axis]
        out = sum(t * np.take(padded, np.arange(k, k + n), axis=axis) for k, t in enumerate(taps))
    return out


def bilinear_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling of a 2-D array on pixel centres: output ``i`` samples input ``(i + ½)·in/out − ½``,
    clamped to the first and last samples."""

    def matrix(n_in: int, n_out: int) -> np.ndarray:
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
            i0 = min(int(np.floor(src)), n_in - 1)
            i1 = min(i0 + 1, n_in - 1)
            lam = src - i0
            m[i, i0] += 1 - lam
            m[i, i1] += lam
        return m

    return matrix(x.shape[0], size[0]) @ x @ matrix(x.shape[1], size[1]).T


def antialiased_resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resampling after a Gaussian pre-filter when shrinking (σ = (factor − 1)/2 per axis, window
    ``max(4σ, 3)`` made odd); the identity when ``size`` is the input's size."""
    h, w = x.shape
    if (h, w) == tuple(size):
        return x.copy()
    factors = (h / size[0], w / size[1])
    if max(factors) > 1:
        sigmas = tuple(max((f - 1.0) / 2.0, 0.001) for f in factors)
        windows = [int(max(4.0 * s, 3)) for s in sigmas]
        windows = [k if k % 2 else k + 1 for k in windows]
        x = blur_reflect(x, tuple(windows), sigmas)
    return bilinear_resize(x, size)


def gaussian_pyramid_levels(x: np.ndarray, levels: int) -> list[np.ndarray]:
    """Fine-to-coarse pyramid of a 2-D array: 5×5 Gaussian (σ = 1, mirrored borders), then bilinear resampling
    to half the size (rounded down, at least 1)."""
    out = [x.astype(np.float64)]
    for _ in range(levels - 1):
        h, w = out[-1].shape
        blurred = blur_reflect(out[-1], (5, 5), (1.0, 1.0))
        out.append(bilinear_resize(blurred, (max(h // 2, 1), max(w // 2, 1))))
    return out


def gaussian_poisson_pyramid_reference(fg, bg, mask, color, beta, sigma, levels):
    """GP-GAN's Algorithm 1 for one channel: eq. (9) by dense least squares at every pyramid level, coarse to fine.

    ``color`` (or, when ``None``, the composite ``m·fg + (1 − m)·bg`` of the coarsest level) is resampled to the
    coarsest level and constrains it; every finer level is constrained by the previous solution resampled to it.
    """
    fgs = gaussian_pyramid_levels(fg, levels)
    bgs = gaussian_pyramid_levels(bg, levels)
    masks = gaussian_pyramid_levels(mask, levels)
    if color is None:
        x = masks[-1] * fgs[-1] + (1 - masks[-1]) * bgs[-1]
    else:
        x = antialiased_resize(color, fgs[-1].shape)
    for level in reversed(range(levels)):
        target = antialiased_resize(x, fgs[level].shape)
        x = gaussian_poisson_dense(fgs[level], bgs[level], masks[level], target, beta, sigma)
    return x
