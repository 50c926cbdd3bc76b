r"""Autograd rules of the torch layer: envelope (Danskin), implicit (CG on the optimality
conditions, warm-started across calls) and the guard that refuses gradients a mode cannot give.

Conventions: ``P = exp((f ⊕ g − C)/ε − 1)``.

*Balanced* (both ρ = ∞): the dual value is ``D = <a, f> + <b, g> − ε Σ_ij P_ij``, equal at the
optimum to ``<C, P> + ε Σ P log P``; ∂D/∂C = P, ∂D/∂a = f, ∂D/∂b = g (returned centred: the
weights live on a simplex).

*Unbalanced* (KL-relaxed marginals of strength ρ_a, ρ_b; Séjourné et al. 2019): with the
potentials of the references ``φ = f − ε log a − ε/2``, ``ψ = g − ε log b − ε/2`` (so that
``P = a_i b_j exp((φ_i + ψ_j − C_ij)/ε)``) the dual value is

.. math::
    D = \sum_i a_i\,
ho_a (1 - e^{-arphi_i/
ho_a}) + \sum_j b_j\,
ho_b (1 - e^{-\psi_j/
ho_b})
        - arepsilon\,(	extstyle\sum P - |a|\,|b|),

equal at the optimum to the primal objective ``<C,P> + ε KL(P|a⊗b) + ρ_a KL(P1|a) + ρ_b KL(Pᵀ1|b)``
(a side with ρ = ∞ contributes ``<w, φ>``). D is linear in ``a`` at fixed (φ, ψ), and the optimum
is stationary in (φ, ψ), so the envelope theorem gives, with ``P1 = a e^{-φ/ρ_a}`` at the optimum,

.. math::
    \partial D/\partial a_i = (
ho_a + arepsilon)(1 - e^{-arphi_i/
ho_a}) - arepsilon (1 - |b|),
    \qquad \partial D/\partial C_{ij} = P_{ij}

(``φ_i − ε(1 − |b|)`` for a side with ρ_a = ∞; likewise for b). For a zero weight, φ_i is the
C-transform of ψ (``φ_i = ε λ_a (1/2 − LSE_j (g_j − C_ij)/ε)``, λ = ρ/(ρ + ε)): the one-sided
derivative of the value there. GeomLoss autograd-differentiates its closed-form value
``(ρ + ε/2) <a, 1 − e^{−φ/ρ}>`` instead (its ``UnbalancedWeight.backward``, which would use ρ + ε,
is a plain method that autograd never calls): its gradients are ``(ρ + ε/2)/(ρ + ε)`` times these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ._costs import CostSpec, pairwise_cost, plan_cost_grads
from ._solve import Solution, solve_potentials

__all__ = ["SolveSpec", "ImplicitState", "envelope_value", "implicit_potentials", "refuse_grad",
           "unbalanced_dual", "side_potential"]


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
    rho_a: float = math.inf  # KL relaxation of the row marginal (inf = hard constraint)
    rho_b: float = math.inf
    solution: Solution | None = None

    @property
    def balanced(self) -> bool:
        return math.isinf(self.rho_a) and math.isinf(self.rho_b)

    def core_options(self) -> dict:
        """Keyword arguments of :func:`solve_potentials` besides the problem."""
        return dict(eps=self.eps, tol=self.tol, max_iter=self.max_iter, scaling=self.scaling, init=self.init,
                    compiled=self.compiled, n_threads=self.n_threads, symmetric=self.symmetric,
                    value_tol=self.value_tol, stage_tol=self.stage_tol, epsilon_init=self.epsilon_init,
                    kernel_memory=self.kernel_memory, rho_a=self.rho_a, rho_b=self.rho_b)


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


def _safe_log(w: torch.Tensor) -> torch.Tensor:
    # log w with 0 where w = 0 (a finite value whose gradient is 0 there, not 0/0 = NaN)
    pos = w > 0
    return torch.where(pos, torch.log(torch.where(pos, w, torch.ones_like(w))), torch.zeros_like(w))


def side_potential(w: torch.Tensor, pot: torch.Tensor, eps: float, ct_lse: torch.Tensor | None = None,
                   lam: float = 1.0) -> torch.Tensor:
    """GeomLoss-convention potential ``φ = pot − ε log w − ε/2`` of one side.

    Where ``w = 0`` (pot = −inf) it is the C-transform ``ε λ (1/2 − lse)`` when ``ct_lse``
    (``LSE_j (g_j − C_ij)/ε`` of those rows) is given, else 0."""
    pos = w > 0
    phi = torch.where(pos, pot, torch.zeros_like(pot)) - eps * _safe_log(w) - 0.5 * eps
    other = torch.zeros_like(phi) if ct_lse is None else eps * lam * (0.5 - ct_lse.to(phi.dtype))
    return torch.where(pos, phi, other)


def _side_term(w, phi, rho):
    """``ρ <w, 1 − e^{−φ/ρ}>`` (``<w, φ>`` for ρ = ∞), summed over the last axis."""
    if math.isinf(rho):
        return (w * phi).sum(-1)
    return (-rho * w * torch.expm1(torch.clamp(-phi / rho, max=80.0))).sum(-1)


def _side_grad(phi, rho, eps, other_mass):
    """∂D/∂w of the unbalanced dual at the optimum: ``(ρ + ε)(1 − e^{−φ/ρ}) − ε (1 − |other|)``."""
    h = phi if math.isinf(rho) else -(rho + eps) * torch.expm1(torch.clamp(-phi / rho, max=80.0))
    return h - eps * (1.0 - other_mass.unsqueeze(-1))


def unbalanced_dual(a, b, phi, psi, mass, eps: float, rho_a: float, rho_b: float) -> torch.Tensor:
    """``D = Σ_sides ρ <w, 1 − e^{−φ/ρ}> − ε (mass − |a| |b|)`` (a side with ρ = ∞: ``<w, φ>``);
    the torch twin of :func:`otsolve.problems.marginals.dual_value`, in the GeomLoss-convention
    potentials (see :func:`side_potential`). Differentiable in all its arguments."""
    return (_side_term(a, phi, rho_a) + _side_term(b, psi, rho_b)
            - eps * (mass - a.sum(-1) * b.sum(-1)))


def transform_lse(f: torch.Tensor, g: torch.Tensor, eps: float, C: torch.Tensor | None = None,
                  x: torch.Tensor | None = None, y: torch.Tensor | None = None, cost: CostSpec | None = None,
                  chunk: int = 1 << 22) -> tuple[torch.Tensor, torch.Tensor]:
    """``LSE_j (g_j − C_ij)/ε`` (rows) and ``LSE_i (f_i − C_ij)/ε`` (columns), without a graph;
    point clouds are processed in row chunks (O(chunk) extra memory)."""
    with torch.no_grad():
        if C is not None:
            C = C.to(f.dtype)
            return (torch.logsumexp((g.unsqueeze(-2) - C) / eps, dim=-1),
                    torch.logsumexp((f.unsqueeze(-1) - C) / eps, dim=-2))
        B, n, m = x.shape[0], x.shape[1], y.shape[1]
        rows = max(1, min(n, chunk // max(m, 1)))
        lr = torch.empty(B, n, dtype=f.dtype, device=f.device)
        lc = torch.full((B, m), -math.inf, dtype=f.dtype, device=f.device)
        for s in range(0, n, rows):
            Cs = pairwise_cost(x[:, s:s + rows], y, cost).to(f.dtype)
            lr[:, s:s + rows] = torch.logsumexp((g.unsqueeze(-2) - Cs) / eps, dim=-1)
            lc = torch.logaddexp(lc, torch.logsumexp((f[:, s:s + rows].unsqueeze(-1) - Cs) / eps, dim=-2))
        return lr, lc


class _EnvelopeValue(torch.autograd.Function):
    """Value ``D(a, b, C)`` with gradients ``P`` (for C, or through the cost for x, y) and
    the centred potentials (for a, b; unbalanced: the formula of the module docstring).
    Memory O(n + m) for point clouds."""

    @staticmethod
    def forward(ctx, spec: SolveSpec, a, b, C, x, y):  # noqa: D102
        sol = solve_potentials(a=a, b=b, C=C, x=x, y=y, cost=spec.cost, **spec.core_options())
        spec.solution = sol
        f, g = sol.f, sol.g
        # the dual value, with Σ P measured by the core on the returned plan (its error is then
        # second order in the marginal error, also for loose tolerances)
        mass = sol.mass
        if mass is None or not bool(torch.isfinite(mass).all()):
            mass = b.sum(-1)  # columns exact after a g-update (balanced)
        mass = mass.to(f.dtype)
        if spec.balanced:
            af = torch.where(a > 0, a * f, torch.zeros_like(f)).sum(-1)
            bg = torch.where(b > 0, b * g, torch.zeros_like(g)).sum(-1)
            value = af + bg - spec.eps * mass
        else:
            value = unbalanced_dual(a, b, side_potential(a, f, spec.eps), side_potential(b, g, spec.eps), mass,
                                    spec.eps, spec.rho_a, spec.rho_b)
        ctx.spec = spec
        ctx.save_for_backward(a, b, C, x, y, f, g)
        return value

    @staticmethod
    def backward(ctx, gv):  # noqa: D102
        spec = ctx.spec
        a, b, C, x, y, f, g = ctx.saved_tensors
        need = ctx.needs_input_grad  # (spec, a, b, C, x, y)
        ga = gb = gC = gx = gy = None
        w = gv.unsqueeze(-1)
        if spec.balanced:
            if need[1]:
                ga = w * _center(f)
            if need[2]:
                gb = w * _center(g)
        elif need[1] or need[2]:
            from ..problems.marginals import damping  # noqa: PLC0415

            eps = spec.eps
            lr = lc = None
            if bool((a == 0).any()) or bool((b == 0).any()):
                # zero weights: their potential is the C-transform of the other side's
                lr, lc = transform_lse(f, g, eps, C, x, y, spec.cost)
            if need[1]:
                phi = side_potential(a, f, eps, lr, damping(eps, spec.rho_a))
                ga = w * _side_grad(phi, spec.rho_a, eps, b.sum(-1))
            if need[2]:
                psi = side_potential(b, g, eps, lc, damping(eps, spec.rho_b))
                gb = w * _side_grad(psi, spec.rho_b, eps, a.sum(-1))
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
    """Optimal potentials differentiated through the optimality conditions ``P1 = ã, Pᵀ1 = b̃``
    (``ã = a`` when balanced: gauge Σf = Σg; unbalanced: ``ã = a e^{−φ/ρ_a}``, no gauge)."""

    @staticmethod
    def forward(ctx, spec: SolveSpec, state: ImplicitState, C, a, b):  # noqa: D102
        sol = solve_potentials(a=a, b=b, C=C, **spec.core_options())
        spec.solution = sol
        f, g = sol.f.to(C.dtype), sol.g.to(C.dtype)
        if spec.balanced:
            f, g = _gauge(f, g)
        ctx.spec, ctx.state = spec, state
        ctx.save_for_backward(C, a, b, f, g)
        return f, g

    @staticmethod
    def backward(ctx, gf, gg):  # noqa: D102
        spec, state = ctx.spec, ctx.state
        C, a, b, f, g = ctx.saved_tensors
        eps = spec.eps
        balanced = spec.balanced
        # Zero weights (−inf potentials) are outside the system: their plan rows / columns are
        # exactly zero, so they get identity equations with a zero right-hand side (λ = 0) and
        # the gauge lives on the support only.
        rows, cols = torch.isfinite(f), torch.isfinite(g)
        P = _plan(C, f, g, eps)
        r, c = P.sum(-1), P.sum(-2)
        # d(target)/d(pot) = −target/ρ: the unbalanced Jacobian adds ε·target/ρ to the diagonal
        # (its blocks are then r(1 + ε/ρ_a) at the optimum, and the system is definite: no gauge)
        ta = _target_of(a, f, eps, spec.rho_a)
        tb = _target_of(b, g, eps, spec.rho_b)
        if not math.isinf(spec.rho_a):
            r = r + (eps / spec.rho_a) * ta
        if not math.isinf(spec.rho_b):
            c = c + (eps / spec.rho_b) * tb
        tiny = torch.finfo(C.dtype).tiny
        r = torch.where(rows, r.clamp_min(tiny), torch.ones_like(r))
        c = torch.where(cols, c.clamp_min(tiny), torch.ones_like(c))
        wf = torch.zeros_like(f) if gf is None else torch.where(rows, gf, torch.zeros_like(gf))
        wg = torch.zeros_like(g) if gg is None else torch.where(cols, gg, torch.zeros_like(gg))
        uf, ug = rows.to(f.dtype), cols.to(g.dtype)
        if balanced:
            # drop the component along the gauge direction (1, −1) on the support: it does not
            # move the solution
            t = (wf.sum(-1, keepdim=True) - wg.sum(-1, keepdim=True)) / (uf.sum(-1, keepdim=True)
                                                                           + ug.sum(-1, keepdim=True)).clamp_min(1)
            wf, wg = wf - t * uf, wg + t * ug
        rtol = state.rtol if state.rtol is not None else (1e-10 if C.dtype == torch.float64 else 1e-5)
        x0 = state._x0 if (state.warm_start and state._x0 is not None
                           and state._x0.shape == wg.shape and state._x0.dtype == wg.dtype
                           and state._x0.device == wg.device) else None
        # null space of the Schur complement: constants on the support columns (balanced), none
        # (unbalanced: strictly diagonally dominant)
        lf, lg, its, rel = _schur_cg(P, r, c, wf, wg, rtol, state.maxiter, x0,
                                     ug if balanced else torch.zeros_like(ug))
        state._x0 = lg.detach()
        state.iterations.append(its)
        state.residuals.append(float(rel.max()))
        lf, lg = lf * uf, lg * ug
        if balanced:
            t = ((lf.sum(-1, keepdim=True) - lg.sum(-1, keepdim=True))
                 / (uf.sum(-1, keepdim=True) + ug.sum(-1, keepdim=True)).clamp_min(1))
            lf, lg = lf - t * uf, lg + t * ug  # the gauge of _gauge, on the support
        need = ctx.needs_input_grad  # (spec, state, C, a, b)
        gC = P * (lf.unsqueeze(-1) + lg.unsqueeze(-2)) if need[2] else None
        # ∂(target)/∂w = (1 + ε/ρ) target / w  (1 when balanced)
        ga = eps * lf * _dtarget_dw(a, ta, eps, spec.rho_a) if need[3] else None
        gb = eps * lg * _dtarget_dw(b, tb, eps, spec.rho_b) if need[4] else None
        return None, None, gC, ga, gb


def _target_of(w, pot, eps, rho):
    """``w e^{−φ/ρ}`` (``w`` when ρ = ∞; 0 where w = 0)."""
    if math.isinf(rho):
        return w
    phi = side_potential(w, pot, eps)
    return torch.where(w > 0, w * torch.exp(torch.clamp(-phi / rho, max=80.0)), torch.zeros_like(w))


def _dtarget_dw(w, target, eps, rho):
    if math.isinf(rho):
        return torch.ones_like(w)
    pos = w > 0
    return torch.where(pos, (1.0 + eps / rho) * target / torch.where(pos, w, torch.ones_like(w)), torch.zeros_like(w))


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
