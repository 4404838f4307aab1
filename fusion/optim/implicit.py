"""Gradients of a minimiser by implicit differentiation, whatever solver found it.

If ``x*(θ)`` minimises a smooth per-sample energy ``E(x, θ)``, then ``∇_x E(x*, θ) = 0`` and, by the implicit
function theorem, ``dx*/dθ = −H⁻¹ ∂_θ∇_x E`` with ``H = ∇²_x E(x*, θ)``. For a cotangent ``g`` of ``x*`` the
vector–Jacobian product is therefore

    λ = H⁻¹ g,    ∂L/∂θ = −∂_θ ⟨∇_x E(x*, θ), λ⟩,

one linear solve with the Hessian (here conjugate gradients on Hessian–vector products from double backward)
and one more backward pass. Nothing of the forward iteration is stored, so memory does not grow with the number
of iterations, and the gradient is that of the exact minimiser: it is as accurate as the forward solve converged.

:func:`implicit_minimiser` attaches this backward pass to a solution computed without autograd. ``H`` must be
positive definite on the free entries (a strict local minimum): true for the convex quadratics of Poisson editing
and at the minimisers the osmosis solvers return.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from fusion.ops.cg import conjugate_gradient
from fusion.ops.result import warn_unconverged

Energy = Callable[..., torch.Tensor]
BlockPreconditioner = Callable[[list[torch.Tensor]], list[torch.Tensor]]


class _Spec:
    """What the backward pass needs besides tensors (kept off the autograd graph)."""

    def __init__(self, energy, n_blocks, free, precondition, tol, max_iter, method):
        self.energy = energy
        self.n_blocks = n_blocks
        self.free = free
        self.precondition = precondition
        self.tol = tol
        self.max_iter = max_iter
        self.method = method


def _pack(blocks: Sequence[torch.Tensor]) -> torch.Tensor:
    return torch.cat([b.reshape(b.shape[0], -1) for b in blocks], dim=1)


def _unpack(flat: torch.Tensor, like: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    out, start = [], 0
    for b in like:
        n = b[0].numel()
        out.append(flat[:, start : start + n].reshape(b.shape))
        start += n
    return out


class _ImplicitMinimiser(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Spec, *tensors: torch.Tensor):  # noqa: ANN205 (autograd.Function protocol)
        ctx.spec = spec
        ctx.save_for_backward(*tensors)
        return tuple(x.detach().clone() for x in tensors[: spec.n_blocks])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: torch.Tensor):  # noqa: ANN205
        spec: _Spec = ctx.spec
        n = spec.n_blocks
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[1 + n :]
        free = spec.free
        with torch.enable_grad():
            xs = [x.detach().requires_grad_(True) for x in saved[:n]]
            params = [p.detach().requires_grad_(need) for p, need in zip(saved[n:], needs)]
            energy = spec.energy(*xs, *params)
            grad_x = torch.autograd.grad(energy.sum(), xs, create_graph=True)
            g = [torch.zeros_like(x) if gr is None else gr for x, gr in zip(xs, grads)]
            if free is not None:
                g = [gi * fi for gi, fi in zip(g, free)]

            def hessian(flat: torch.Tensor) -> torch.Tensor:
                vs = _unpack(flat, xs)
                if free is not None:
                    vs = [v * fi for v, fi in zip(vs, free)]
                dot = sum((gx * v).sum() for gx, v in zip(grad_x, vs))
                hv = torch.autograd.grad(dot, xs, retain_graph=True)
                if free is not None:
                    hv = tuple(h * fi for h, fi in zip(hv, free))
                return _pack([h.detach() for h in hv])

            m_inv = None
            if spec.precondition is not None:

                def m_inv(flat: torch.Tensor) -> torch.Tensor:
                    return _pack(spec.precondition(_unpack(flat, xs)))

            res = conjugate_gradient(
                hessian, _pack([gi.detach() for gi in g]), precondition=m_inv, max_iter=spec.max_iter, tol=spec.tol
            )
            res.criterion, res.tol, res.reached = "relative residual of the adjoint solve", spec.tol, res.history[-1]
            warn_unconverged(res, f"{spec.method} (implicit gradient)")
            lam = _unpack(res.solution, xs)
            wanted = [p for p, need in zip(params, needs) if need]
            grads_p = iter(())
            if wanted:
                dot = sum((gx * lm).sum() for gx, lm in zip(grad_x, lam))
                grads_p = iter(torch.autograd.grad(dot, wanted, allow_unused=True))
        out = [None] * (1 + n)  # spec and the solution blocks get no gradient
        for need, p in zip(needs, params):
            if not need:
                out.append(None)
                continue
            gp = next(grads_p)
            out.append(None if gp is None else -gp)
        return tuple(out)


def implicit_minimiser(
    energy: Energy,
    solution: torch.Tensor | Sequence[torch.Tensor],
    params: Sequence[torch.Tensor],
    *,
    free: torch.Tensor | Sequence[torch.Tensor | None] | None = None,
    precondition: BlockPreconditioner | None = None,
    tol: float = 1e-10,
    max_iter: int = 10000,
    method: str = "minimiser",
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """Return ``solution`` connected to ``params`` by the implicit-function gradient of ``argmin_x E(x, θ)``.

    Args:
        energy: ``energy(*blocks, *params) -> (B,)`` per-sample energies, twice differentiable by autograd in the
            blocks (piecewise is enough: Huber functions, ``where``). Samples must not interact.
        solution: the minimiser, one ``(B, …)`` tensor or several blocks, computed by any solver (no graph needed).
        params: the tensors ``θ`` the energy depends on; gradients flow to those that require them.
        free: per block, a 0/1 tensor broadcastable to it marking the entries that are variables (the rest are
            held fixed, e.g. Dirichlet data: their sensitivity must be added by the caller); ``None``: all free.
        precondition: optional ``M⁻¹`` for the adjoint solve, acting on a list of blocks.
        tol, max_iter: conjugate-gradient limits of the adjoint solve (relative residual); an adjoint solve that
            stops early emits :class:`fusion.ConvergenceWarning`.
        method: name used in that warning.

    Returns:
        The solution (a tensor, or a tuple for several blocks), equal in value to ``solution``, whose backward pass
        solves the adjoint system. When no ``params`` require grad the solution is returned as it is.

    Example:
        >>> a = torch.tensor([[2.0, 3.0]], dtype=torch.float64, requires_grad=True)
        >>> x = implicit_minimiser(lambda x, a: 0.5 * (a * x * x).sum(1) - x.sum(1), 1 / a.detach(), [a])
        >>> x.sum().backward()          # x* = 1/a, so dx*/da = -1/a²
        >>> a.grad
        tensor([[-0.2500, -0.1111]], dtype=torch.float64)
    """
    single = isinstance(solution, torch.Tensor)
    blocks = [solution] if single else list(solution)
    params = list(params)
    if not any(p.requires_grad for p in params) or not torch.is_grad_enabled():
        return blocks[0] if single else tuple(blocks)
    if free is not None:
        free_list = [free] if isinstance(free, torch.Tensor) else list(free)
        if len(free_list) != len(blocks):
            raise ValueError(f"free needs one entry per block ({len(blocks)}), got {len(free_list)}")
        free_list = [torch.ones_like(b) if f is None else f.to(b.dtype).expand_as(b) for f, b in zip(free_list, blocks)]
    else:
        free_list = None
    spec = _Spec(energy, len(blocks), free_list, precondition, tol, max_iter, method)
    out = _ImplicitMinimiser.apply(spec, *[b.detach() for b in blocks], *params)
    return out[0] if single else tuple(out)
