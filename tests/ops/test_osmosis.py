import numpy as np
import torch

from fusion.ops.cg import bicgstab
from fusion.ops.osmosis import (
    canonical_drift,
    edge_mean,
    edge_mean_adjoint,
    harmonic_edge_weights,
    osmosis_operator,
    osmosis_operator_adjoint,
    osmosis_operator_diagonal,
    osmosis_stiffness,
    stiffness_diagonal,
)
from tests.conftest import tol_for


def _dense(apply, h, w, dtype=torch.float64):
    n = h * w
    cols = []
    for k in range(n):
        e = torch.zeros(1, 1, h, w, dtype=dtype)
        e.view(-1)[k] = 1
        cols.append(apply(e).flatten())
    return torch.stack(cols, 1)


def _photo(which: str, h: int, w: int, dtype=torch.float64) -> torch.Tensor:
    from skimage import data

    img = torch.from_numpy(getattr(data, which)().copy()).permute(2, 0, 1)[None].to(dtype) / 255
    return torch.nn.functional.interpolate(img, size=(h, w), mode="area")


def test_adjoints(device, dtype, gen):
    u = torch.rand(2, 3, 7, 9, generator=gen, dtype=dtype).to(device)
    w = torch.rand(2, 3, 7, 9, generator=gen, dtype=dtype).to(device)
    p = torch.randn(2, 3, 2, 7, 9, generator=gen, dtype=dtype).to(device)
    v = torch.rand(2, 3, 7, 9, generator=gen, dtype=dtype).to(device) + 0.2
    d = canonical_drift(v)
    scale = 10.0
    lhs, rhs = (edge_mean(u) * p).sum(), (u * edge_mean_adjoint(p)).sum()
    assert abs(float(lhs - rhs)) < tol_for(dtype) * scale
    lhs, rhs = (osmosis_operator(u, d) * w).sum(), (u * osmosis_operator_adjoint(w, d)).sum()
    assert abs(float(lhs - rhs)) < tol_for(dtype) * scale * 10


def test_steady_state_mass_and_symmetrisation(device, dtype, gen):
    v = torch.rand(2, 3, 8, 11, generator=gen, dtype=dtype).to(device) + 0.1
    u = torch.rand(2, 3, 8, 11, generator=gen, dtype=dtype).to(device) + 0.1
    d = canonical_drift(v)
    a_u = osmosis_operator(u, d)
    tol = tol_for(dtype) * 100
    # A v = 0: every multiple of v is a steady state
    assert osmosis_operator(3.0 * v, d).abs().max() < tol
    # columns of A sum to zero: Σ A u = 0 (mass conservation)
    assert a_u.sum((-2, -1)).abs().max() < tol
    # A u = −S(u/v) with the harmonic edge weights
    torch.testing.assert_close(a_u, -osmosis_stiffness(u / v, harmonic_edge_weights(v)), atol=tol, rtol=0)
    # the drift lies in (−2, 2), so off-diagonal entries 1 ± d/2 are positive
    assert d.abs().max() < 2


def test_dense_structure_against_definition():
    g = torch.Generator().manual_seed(3)
    h, w = 5, 6
    v = torch.rand(1, 1, h, w, generator=g, dtype=torch.float64) + 0.05
    d = canonical_drift(v)
    a = _dense(lambda e: osmosis_operator(e, d), h, w)
    # the stencil written out: edge (p, q), q = p + e_k, flux (u_q − u_p) − d (u_p + u_q)/2, A u = div(flux)
    ref = np.zeros((h * w, h * w))
    vn = v[0, 0].numpy()
    for y in range(h):
        for x in range(w):
            for dy, dx in ((1, 0), (0, 1)):
                yy, xx = y + dy, x + dx
                if yy >= h or xx >= w:
                    continue
                p, q = y * w + x, yy * w + xx
                dd = 2 * (vn[yy, xx] - vn[y, x]) / (vn[yy, xx] + vn[y, x])
                # flux F = (1 − dd/2) u_q − (1 + dd/2) u_p leaves p and enters q
                ref[p, q] += 1 - dd / 2
                ref[p, p] -= 1 + dd / 2
                ref[q, q] -= 1 - dd / 2
                ref[q, p] += 1 + dd / 2
    np.testing.assert_allclose(a.numpy(), ref, atol=1e-13)
    np.testing.assert_allclose(a.diagonal().numpy(), osmosis_operator_diagonal(d).flatten().numpy(), atol=1e-13)
    wts = harmonic_edge_weights(v)
    s = _dense(lambda e: osmosis_stiffness(e, wts), h, w)
    np.testing.assert_allclose(s.numpy(), s.T.numpy(), atol=1e-14)
    assert torch.linalg.eigvalsh(s).min() > -1e-12
    np.testing.assert_allclose(s.diagonal().numpy(), stiffness_diagonal(wts).flatten().numpy(), atol=1e-13)


def test_drift_is_log_derivative_at_half_points():
    """For a smooth v the half-grid drift matches ∂ log v at the midpoint to second order."""
    x = torch.linspace(0, 1, 201, dtype=torch.float64)
    h = float(x[1] - x[0])
    v = (2 + torch.sin(3 * x))[None, None, None, :]
    d = canonical_drift(v)[0, 0, 1, 0, :-1] / h
    mid = x[:-1] + h / 2
    exact = 3 * torch.cos(3 * mid) / (2 + torch.sin(3 * mid))
    assert (d - exact).abs().max() < 1e-4


def test_gradcheck_operators():
    g = torch.Generator().manual_seed(0)
    u = torch.rand(1, 2, 4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    v = (torch.rand(1, 2, 4, 5, generator=g, dtype=torch.float64) + 0.3).requires_grad_(True)
    assert torch.autograd.gradcheck(lambda a, b: osmosis_operator(a, canonical_drift(b)), (u, v))
    assert torch.autograd.gradcheck(lambda b: harmonic_edge_weights(b), (v,))


def test_bicgstab_on_osmosis_system_vs_scipy():
    import scipy.sparse as sp
    import scipy.sparse.linalg as spla

    f = _photo("coffee", 12, 16)
    b = _photo("chelsea", 12, 16)
    d = 0.5 * (canonical_drift(f + 0.05) + canonical_drift(b + 0.05))  # not the drift of any one image
    tau = 5.0
    rhs = f + 0.05
    res = bicgstab(lambda x: x - tau * osmosis_operator(x, d), rhs, tol=1e-12, max_iter=2000)
    assert res.all_converged
    for c in range(3):
        a = _dense(lambda e: osmosis_operator(e, d[:, c : c + 1]), 12, 16).numpy()
        ref = spla.spsolve(sp.csr_matrix(np.eye(a.shape[0]) - tau * a), rhs[0, c].flatten().numpy())
        np.testing.assert_allclose(res.solution[0, c].flatten().numpy(), ref, atol=1e-9)
