"""Autograd rules of the torch layer: envelope (Danskin), implicit (CG on the optimality
conditions, warm-started across calls) and the guard that refuses gradients a mode cannot give.

Conventions: ``P = exp((f ⊕ g − C)/ε − 1)``; the dual value of the problem is
``D = <a, f> + <b, g> − ε Σ_ij P_ij`` which equals ``<C, P> + ε Σ P log P`` at the optimum.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ._costs import CostSpec, plan_cost_grads
from ._solve import Solution, solve_potentials

__all__ = ["SolveSpec", "ImplicitState", "envelope_value", "implicit_potentials", "refuse_grad"]


@dataclass
class SolveSpec:
    """Forward-solve parameters handed to the autograd Functions (and the solution they found)."""

    eps: float
    tol: float
    max_iter: int
    cost: CostSpec | None = None
    scaling: float | None = None
    compiled: bool = True
    init: tuple[torch.Tensor, torch.Tensor] | None = None
    n_threads: int = 0
    symmetric: bool = False  # OT(a, a) on C(x, x): the core's symmetric solve
    value_tol: float | None = None
    stage_tol: float = 1e-2
    epsilon_init: float | None = None
    kernel_memory: float = 4e9  # bytes the CPU kernels may spend on stored costs / kernels
    solution: Solution | None = None

    def core_options(self) -> dict:
        """Keyword arguments of :func:`solve_potentials` besides the problem."""
        return dict(eps=self.eps, tol=self.tol, max_iter=self.max_iter, scaling=self.scaling, init=self.init,
                    compiled=self.compiled, n_threads=self.n_threads, symmetric=self.symmetric,
                    value_tol=self.value_tol, stage_tol=self.stage_tol, epsilon_init=self.epsilon_init,
                    kernel_memory=self.kernel_memory)


@dataclass
class ImplicitState:
    """Conjugate-gradient settings and warm start of the implicit backward pass.

    The backward solve of step t+1 starts from the solution of step t: in a training loop the
    plan moves little between steps, so the previous multiplier is a good first guess (the
    Krylov-reuse idea of the spec, in its cheapest form). ``iterations`` records the CG count of
    every backward pass.

    Parameters
    ----------
    rtol : float, optional
        Relative residual of CG (default 1e-10 in float64, 1e-5 in float32).
    maxiter : int
        CG iteration cap per backward pass.
    warm_start : bool
        Reuse the previous solution as the initial guess when the shapes match.
    """

    rtol: float | None = None
    maxiter: int = 2000
    warm_start: bool = True
    iterations: list = field(default_factory=list)
    residuals: list = field(default_factory=list)
    _x0: torch.Tensor | None = None


def _center(v: torch.Tensor) -> torch.Tensor:
    # the potentials are defined up to (f + t, g − t): return the zero-mean representative
    finite = torch.isfinite(v)
    vz = torch.where(finite, v, torch.zeros_like(v))
    mean = vz.sum(-1, keepdim=True) / finite.sum(-1, keepdim=True).clamp_min(1)
    return torch.where(finite, v - mean, torch.zeros_like(v))


def _plan(C: torch.Tensor, f: torch.Tensor, g: torch.Tensor, eps: float) -> torch.Tensor:
    return torch.exp((f.unsqueeze(-1) + g.unsqueeze(-2) - C) / eps - 1.0)


class _EnvelopeValue(torch.autograd.Function):
    """Value ``D(a, b, C)`` with gradients ``P`` (for C, or through the cost for x, y) and
    the centred potentials (for a, b). Memory O(n + m) for point clouds."""

    @staticmethod
    def forward(ctx, spec: SolveSpec, a, b, C, x, y):  # noqa: D102
        sol = solve_potentials(a=a, b=b, C=C, x=x, y=y, cost=spec.cost, **spec.core_options())
        spec.solution = sol
        f, g = sol.f, sol.g
        # the dual value <a, f> + <b, g> - ε Σ P, with Σ P measured by the core on the returned
        # plan (its error is then second order in the marginal error, also for loose tolerances)
        af = torch.where(a > 0, a * f, torch.zeros_like(f)).sum(-1)
        bg = torch.where(b > 0, b * g, torch.zeros_like(g)).sum(-1)
        mass = sol.mass
        if mass is None or not bool(torch.isfinite(mass).all()):
            mass = b.sum(-1)  # columns exact after a g-update
        value = af + bg - spec.eps * mass.to(af.dtype)
        ctx.spec = spec
        ctx.save_for_backward(C, x, y, f, g)
        return value

    @staticmethod
    def backward(ctx, gv):  # noqa: D102
        spec = ctx.spec
        C, x, y, f, g = ctx.saved_tensors
        need = ctx.needs_input_grad  # (spec, a, b, C, x, y)
        ga = gb = gC = gx = gy = None
        w = gv.unsqueeze(-1)
        if need[1]:
            ga = w * _center(f)
        if need[2]:
            gb = w * _center(g)
        if need[3]:
            gC = w.unsqueeze(-1) * _plan(C, f, g, spec.eps)
        if need[4] or need[5]:
            gx, gy = plan_cost_grads(x, y, spec.cost, f, g, spec.eps, need[4], need[5])
            gx = None if gx is None else w.unsqueeze(-1) * gx
            gy = None if gy is None else w.unsqueeze(-1) * gy
        return None, ga, gb, gC, gx, gy


def envelope_value(spec: SolveSpec, a, b, C=None, x=None, y=None) -> torch.Tensor:
    """Dual value of a batch of problems, differentiable by the envelope theorem."""
    return _EnvelopeValue.apply(spec, a, b, C, x, y)


def _schur_cg(P, r, c, wf, wg, rtol, maxiter, x0, u=None):
    """Solve ``M λ = w`` with ``M = [[diag r, P], [Pᵀ, diag c]]`` (batched) by CG on the Schur
    complement ``S = diag c − Pᵀ diag(1/r) P`` (PSD, null space = constants on the support
    columns ``u``, m unknowns).

    ``w`` must satisfy Σ w_f = Σ w_g (the system is then consistent). Returns λ_f, λ_g, the
    iteration count and the final relative residuals. Jacobi preconditioner diag(c).
    """
    Pt = P.transpose(-1, -2)
    u = torch.ones_like(wg) if u is None else u  # indicator of the null space of S
    uu = u.sum(-1, keepdim=True).clamp_min(1)

    def proj(v):  # component orthogonal to the null space
        return v - (v * u).sum(-1, keepdim=True) / uu * u

    def S(v):
        return c * v - (Pt @ ((P @ v.unsqueeze(-1)).squeeze(-1) / r).unsqueeze(-1)).squeeze(-1)

    rhs = wg - (Pt @ (wf / r).unsqueeze(-1)).squeeze(-1)
    rhs = proj(rhs)
    bnorm = rhs.norm(dim=-1)
    v = torch.zeros_like(rhs)
    res = rhs.clone()
    if x0 is not None:
        # keep the warm start only for the problems where it beats the zero guess
        res0 = proj(rhs - S(x0))
        better = (res0.norm(dim=-1) < bnorm).unsqueeze(-1)
        v = torch.where(better, x0, v)
        res = torch.where(better, res0, res)
    tiny = torch.finfo(rhs.dtype).tiny
    target = rtol * bnorm
    z = res / c
    p = z.clone()
    rz = (res * z).sum(-1)
    k = 0
    while k < maxiter:
        rn = res.norm(dim=-1)
        active = rn > target
        if not bool(active.any()):
            break
        Sp = S(p)
        pSp = (p * Sp).sum(-1)
        alpha = torch.where(active & (pSp > tiny), rz / pSp.clamp_min(tiny), torch.zeros_like(rz))
        v = v + alpha.unsqueeze(-1) * p
        res = res - alpha.unsqueeze(-1) * Sp
        res = proj(res)  # stay in the range of S (rounding drifts along the null space)
        z = res / c
        rz_new = (res * z).sum(-1)
        beta = torch.where(active, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        p = z + beta.unsqueeze(-1) * p
        rz = rz_new
        k += 1
    lg = v
    lf = (wf - (P @ lg.unsqueeze(-1)).squeeze(-1)) / r
    rel = res.norm(dim=-1) / bnorm.clamp_min(tiny)
    return lf, lg, k, rel


def _gauge(f: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # the representative with Σ f = Σ g over the finite entries (zero weights have −inf
    # potentials): the implicit derivative below is the derivative of exactly this choice
    ff, fg = torch.isfinite(f), torch.isfinite(g)
    sf = torch.where(ff, f, torch.zeros_like(f)).sum(-1, keepdim=True)
    sg = torch.where(fg, g, torch.zeros_like(g)).sum(-1, keepdim=True)
    cnt = (ff.sum(-1, keepdim=True) + fg.sum(-1, keepdim=True)).clamp_min(1)
    t = (sf - sg) / cnt
    return f - t, g + t


class _ImplicitPotentials(torch.autograd.Function):
    """Optimal potentials (gauge Σf = Σg) differentiated through ``P1 = a, Pᵀ1 = b``."""

    @staticmethod
    def forward(ctx, spec: SolveSpec, state: ImplicitState, C, a, b):  # noqa: D102
        sol = solve_potentials(a=a, b=b, C=C, **spec.core_options())
        spec.solution = sol
        f, g = _gauge(sol.f.to(C.dtype), sol.g.to(C.dtype))
        ctx.spec, ctx.state = spec, state
        ctx.save_for_backward(C, f, g)
        return f, g

    @staticmethod
    def backward(ctx, gf, gg):  # noqa: D102
        spec, state = ctx.spec, ctx.state
        C, f, g = ctx.saved_tensors
        eps = spec.eps
        # Zero weights (−inf potentials) are outside the system: their plan rows / columns are
        # exactly zero, so they get identity equations with a zero right-hand side (λ = 0) and
        # the gauge lives on the support only.
        rows, cols = torch.isfinite(f), torch.isfinite(g)
        P = _plan(C, f, g, eps)
        r, c = P.sum(-1), P.sum(-2)
        tiny = torch.finfo(C.dtype).tiny
        r = torch.where(rows, r.clamp_min(tiny), torch.ones_like(r))
        c = torch.where(cols, c.clamp_min(tiny), torch.ones_like(c))
        wf = torch.zeros_like(f) if gf is None else torch.where(rows, gf, torch.zeros_like(gf))
        wg = torch.zeros_like(g) if gg is None else torch.where(cols, gg, torch.zeros_like(gg))
        uf, ug = rows.to(f.dtype), cols.to(g.dtype)
        # drop the component along the gauge direction (1, −1) on the support: it does not move
        # the solution
        t = (wf.sum(-1, keepdim=True) - wg.sum(-1, keepdim=True)) / (uf.sum(-1, keepdim=True)
                                                                       + ug.sum(-1, keepdim=True)).clamp_min(1)
        wf, wg = wf - t * uf, wg + t * ug
        rtol = state.rtol if state.rtol is not None else (1e-10 if C.dtype == torch.float64 else 1e-5)
        x0 = state._x0 if (state.warm_start and state._x0 is not None
                           and state._x0.shape == wg.shape and state._x0.dtype == wg.dtype
                           and state._x0.device == wg.device) else None
        lf, lg, its, rel = _schur_cg(P, r, c, wf, wg, rtol, state.maxiter, x0, ug)
        state._x0 = lg.detach()
        state.iterations.append(its)
        state.residuals.append(float(rel.max()))
        lf, lg = lf * uf, lg * ug
        t = ((lf.sum(-1, keepdim=True) - lg.sum(-1, keepdim=True))
             / (uf.sum(-1, keepdim=True) + ug.sum(-1, keepdim=True)).clamp_min(1))
        lf, lg = lf - t * uf, lg + t * ug  # the gauge of _gauge, on the support
        need = ctx.needs_input_grad  # (spec, state, C, a, b)
        gC = P * (lf.unsqueeze(-1) + lg.unsqueeze(-2)) if need[2] else None
        ga = eps * lf if need[3] else None
        gb = eps * lg if need[4] else None
        return None, None, gC, ga, gb


def implicit_potentials(spec: SolveSpec, state: ImplicitState, C, a, b):
    """(f, g) of a batch of problems, differentiable by implicit differentiation."""
    return _ImplicitPotentials.apply(spec, state, C, a, b)


class _Refuse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, message: str, t):  # noqa: D102
        ctx.message = message
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        raise RuntimeError(ctx.message)


def refuse_grad(t: torch.Tensor, message: str, inputs: Any) -> torch.Tensor:
    """``t`` (detached values) attached to a node whose backward raises ``message``.

    Used for outputs the chosen gradient mode cannot differentiate (plan and potentials in
    envelope mode): reading them is fine, backpropagating through them is a clear error.
    """
    if not any(isinstance(i, torch.Tensor) and i.requires_grad for i in inputs):
        return t
    anchor = next(i for i in inputs if isinstance(i, torch.Tensor) and i.requires_grad)
    # zero-valued link to an input so the node is part of the graph
    return _Refuse.apply(message, t.detach() + 0.0 * anchor.sum())
