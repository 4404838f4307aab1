"""Independent float64 references assembled with NumPy/SciPy; used by the tests only."""

from __future__ import annotations

import numpy as np
import scipy.ndimage as nd
import scipy.sparse as sp
import scipy.sparse.linalg as spl

NEIGHBOURS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def masked_poisson(rhs: np.ndarray, boundary: np.ndarray, region: np.ndarray) -> np.ndarray:
    """Solve ``|N_p| u_p − Σ_{q ∈ N_p ∩ Ω} u_q = rhs_p + Σ_{q ∈ N_p \\ Ω} boundary_q`` on Ω with SciPy's sparse LU.

    ``N_p`` is the in-image 4-neighbourhood; the result equals ``boundary`` off Ω.
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
    a = sp.csc_matrix((vals, (rows, cols)), shape=(len(pts), len(pts)))
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
