"""Public torch API: ``sinkhorn`` on cost matrices, the Sinkhorn divergence of point clouds and
the :class:`SinkhornLoss` module.

References
----------
M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
J. Feydy, T. Séjourné, F.-X. Vialard, S. Amari, A. Trouvé, G. Peyré, "Interpolating between
Optimal Transport and MMD using Sinkhorn Divergences", AISTATS 2019 (debiased divergence, GeomLoss).
T. Séjourné, J. Feydy, F.-X. Vialard, A. Trouvé, G. Peyré, "Sinkhorn Divergences for Unbalanced
Optimal Transport", arXiv:1910.12958, 2019 (unbalanced divergence, ``rho``).
L. Chizat, G. Peyré, B. Schmitzer, F.-X. Vialard, "Scaling algorithms for unbalanced optimal
transport problems", Math. Comp. 2018 (KL-damped Sinkhorn updates).
M. Eisenberger, A. Toker, L. Leal-Taixé, F. Bernard, D. Cremers, "A Unified Framework for Implicit
Sinkhorn Differentiation", CVPR 2022 (implicit gradients of the Sinkhorn layer).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from .._validation import check_epsilon, check_n_threads, check_positive_int, check_tol
from ..problems.marginals import check_rho, damping
from ._costs import CostSpec, pairwise_cost, resolve_cost
from ._grad import (ImplicitState, SolveSpec, envelope_value, implicit_potentials, refuse_grad, side_potential,
                    unbalanced_dual)
from ._solve import _update, annealing_schedule, core_problem

__all__ = ["GRAD_MODES", "SinkhornOutput", "sinkhorn", "sinkhorn_divergence", "SinkhornLoss", "TermInfo"]

#: gradient modes: name -> what is differentiable
GRAD_MODES = {
    "envelope": "value only (Danskin); O(n + m) memory for point clouds, one extra pass",
    "implicit": "value, plan and potentials, by CG on the optimality conditions; O(nm) memory",
    "unroll": "value, plan and potentials, by autograd through the iterations; O(iters·nm) memory",
    "detach": "nothing (outputs are detached)",
}
_ALIASES = {"autodiff": "unroll", "none": "detach", None: "detach", "danskin": "envelope"}


def _mode(grad: Any) -> str:
    g = _ALIASES.get(grad, grad)
    if g not in GRAD_MODES:
        raise ValueError(f"grad must be one of {sorted(GRAD_MODES)}, got {grad!r}")
    return g


def _default_tol(dtype: torch.dtype, *weights: torch.Tensor) -> float:
    # same defaults as the NumPy solvers (otsolve.solvers._common.default_tol), raised to what the
    # arithmetic reaches for the weights' total mass (unbalanced weights may weigh more than 1:
    # the core would raise it and warn)
    tol = 1e-9 if dtype == torch.float64 else 1e-6
    if weights:
        from ..solvers.sinkhorn import reachable_tol  # noqa: PLC0415

        mass = max(float(w.detach().sum(-1).max()) for w in weights)
        tol = max(tol, reachable_tol(np.float64 if dtype == torch.float64 else np.float32, mass))
    return tol


def _eps(epsilon: Any) -> float:
    if isinstance(epsilon, torch.Tensor):
        if epsilon.requires_grad:
            raise ValueError(
                "epsilon requires grad, but no gradient mode differentiates with respect to epsilon; "
                "pass a float or a detached tensor")
        if epsilon.numel() != 1:
            raise ValueError(f"epsilon must be a scalar, got shape {tuple(epsilon.shape)}")
        epsilon = float(epsilon.item())
    return check_epsilon(epsilon)


def _as_float(t: Any, name: str) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(t)
    if t.dtype in (torch.float32, torch.float64):
        return t
    if t.is_complex() or t.dtype == torch.bool:
        raise ValueError(f"{name} must be a real floating tensor, got dtype {t.dtype}")
    if t.is_floating_point():  # half / bfloat16: computed in float32 (differentiable cast, so
        return t.to(torch.float32)  # gradients come back in the input's dtype)
    return t.to(torch.float64)  # integers, as the NumPy API does


def _check_finite(t: torch.Tensor, name: str) -> None:
    with torch.no_grad():
        bad = ~torch.isfinite(t)
        if bool(bad.any()):
            raise ValueError(f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf)")


def _weights(w: Any, B: int, n: int, batched: bool, ref: torch.Tensor, name: str) -> torch.Tensor:
    """``w`` as a (B, n) tensor of ref's dtype and device; uniform when None."""
    if w is None:
        return torch.full((B, n), 1.0 / n, dtype=ref.dtype, device=ref.device)
    w = _as_float(w, name)
    if w.dtype != ref.dtype:
        raise ValueError(f"{name} has dtype {w.dtype} but the other inputs are {ref.dtype}; "
                         "convert explicitly (dtypes are never changed silently)")
    if w.device != ref.device:
        raise ValueError(f"{name} is on {w.device} but the other inputs are on {ref.device}")
    want = (B, n) if batched else (n,)
    if tuple(w.shape) != want:
        raise ValueError(f"{name} has shape {tuple(w.shape)}, expected {want}")
    _check_finite(w, name)
    with torch.no_grad():
        if bool((w < 0).any()):
            raise ValueError(f"{name} has negative entries; weights must be >= 0")
        if bool((w.sum(-1) <= 0).any()):
            raise ValueError(f"{name} has zero total mass")
    return w if batched else w.unsqueeze(0)


def _rho(rho: Any, name: str) -> float:
    """A KL relaxation strength: a positive number, or None / inf (the hard constraint)."""
    if isinstance(rho, torch.Tensor):
        if rho.requires_grad:
            raise ValueError(f"{name} requires grad, but no gradient mode differentiates with respect to {name}; "
                             "pass a float or a detached tensor")
        if rho.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got shape {tuple(rho.shape)}")
        rho = float(rho.item())
    if isinstance(rho, bool):
        raise ValueError(f"{name} must be a positive number, inf or None (balanced), got {rho!r}")
    return check_rho(rho, name)


def _check_mass(a: torch.Tensor, b: torch.Tensor, rho_a: float = math.inf, rho_b: float = math.inf) -> None:
    if not (math.isinf(rho_a) and math.isinf(rho_b)):
        return  # a relaxed marginal: the masses may differ
    with torch.no_grad():
        sa, sb = a.sum(-1).double(), b.sum(-1).double()
        rtol = 1e-6 if a.dtype == torch.float64 else 1e-4
        bad = (sa - sb).abs() > rtol * torch.maximum(sa, sb)
        if bool(bad.any()):
            k = int(bad.nonzero()[0, 0])
            raise ValueError(
                f"a and b have different total masses ({float(sa[k])!r} vs {float(sb[k])!r}) in problem {k}; "
                "balanced OT needs equal masses (normalize them, e.g. a / a.sum() and b / b.sum())")


def _plan(C, f, g, eps):
    return torch.exp((f.unsqueeze(-1) + g.unsqueeze(-2) - C) / eps - 1.0)


class SinkhornOutput:
    """Result of :func:`sinkhorn` (torch tensors; a leading batch axis when the input had one).

    Attributes
    ----------
    value : Tensor
        Regularized OT value ``<C, P> + ε Σ P log P`` (dual form ``<a, f> + <b, g> − ε Σ P``).
        Unbalanced problems (``rho_a`` / ``rho_b`` finite): the objective
        ``<C, P> + ε KL(P | a⊗b) + ρ_a KL(P1 | a) + ρ_b KL(Pᵀ1 | b)`` (the core's ``result.value``),
        in its dual form ``Σ_sides ρ <w, 1 − e^{−φ/ρ}> − ε (Σ P − |a| |b|)``.
    f, g : Tensor
        Potentials in cost units, ``P_ij = exp((f_i + g_j − C_ij)/ε − 1)``.
    plan : Tensor
        Dense plan (built on first access).
    cost : Tensor
        ``<C, P>``.
    converged, n_iter, marginal_error : Tensor
        Per-problem diagnostics (L1 error of both marginals; unbalanced: to their optimality
        targets ``a e^{−φ/ρ_a}``, ``b e^{−ψ/ρ_b}``).
    grad : str
        Gradient mode; in ``"envelope"`` mode only ``value`` is differentiable, backpropagating
        through ``plan``, ``f``, ``g`` or ``cost`` raises a RuntimeError naming the mode to use.
    """

    def __init__(self, *, value, f, g, C_fn, eps, sol, grad, batched, inputs, state=None):
        self._batched = batched
        self._C_fn = C_fn
        self._inputs = inputs
        self.epsilon = eps
        self.grad = grad
        self.value = self._out(value)
        self._f, self._g = f, g
        self.f, self.g = self._out(self._guard(f)), self._out(self._guard(g))
        self.converged = self._out(sol.converged)
        self.n_iter = self._out(sol.n_iter)
        self.marginal_error = self._out(sol.error)
        self.backend = sol.backend
        self.implicit_state = state
        self._plan = None

    def _out(self, t):
        return t if self._batched else t[0]

    def _guard(self, t):
        if self.grad != "envelope":
            return t
        return refuse_grad(
            t, "grad='envelope' differentiates only `value`; use grad='implicit' (or 'unroll') to "
               "backpropagate through the plan, the potentials or the transport cost", self._inputs)

    @property
    def plan(self) -> torch.Tensor:
        if self._plan is None:
            C = self._C_fn()
            if self.grad in ("envelope", "detach"):
                C = C.detach()
            P = _plan(C, self._f, self._g, self.epsilon)
            self._plan = self._out(self._guard(P))
        return self._plan

    @property
    def cost(self) -> torch.Tensor:
        """Transport cost ``<C, P>``."""
        C = self._C_fn()
        if self.grad in ("envelope", "detach"):
            C = C.detach()
        P = self.plan if self._batched else self.plan.unsqueeze(0)
        return self._out((P * C).sum((-1, -2)))

    def __repr__(self) -> str:
        return (f"SinkhornOutput(grad={self.grad!r}, backend={self.backend!r}, value={self.value.detach()}, "
                f"converged={self.converged}, n_iter={self.n_iter})")


def _dual_value(a, b, C, f, g, eps, rho_a=math.inf, rho_b=math.inf):
    """``<a, f> + <b, g> − ε Σ P`` with ``0 · (−inf) = 0`` for zero weights; unbalanced: the dual
    of :func:`otsolve.torch._grad.unbalanced_dual`, written with ``Σ P = Σ a_i b_j e^{(φ_i + ψ_j − C_ij)/ε}``
    so that autograd gives the weights' derivative also at zero weights (their φ is then the
    C-transform of the other side's potential)."""
    if math.isinf(rho_a) and math.isinf(rho_b):
        # mask f / g before multiplying: where(a > 0, a * f, 0) would backpropagate 0 * (-inf) = NaN
        af = (a * torch.where(a > 0, f, torch.zeros_like(f))).sum(-1)
        bg = (b * torch.where(b > 0, g, torch.zeros_like(g))).sum(-1)
        return af + bg - eps * _plan(C, f, g, eps).sum((-1, -2))
    lr = lc = None
    if bool((a == 0).any()) or bool((b == 0).any()):
        lr = torch.logsumexp((g.unsqueeze(-2) - C) / eps, dim=-1)
        lc = torch.logsumexp((f.unsqueeze(-1) - C) / eps, dim=-2)
    phi = side_potential(a, f, eps, lr, damping(eps, rho_a))
    psi = side_potential(b, g, eps, lc, damping(eps, rho_b))
    mass = (a.unsqueeze(-1) * b.unsqueeze(-2)
            * torch.exp((phi.unsqueeze(-1) + psi.unsqueeze(-2) - C) / eps)).sum((-1, -2))
    return unbalanced_dual(a, b, phi, psi, mass, eps, rho_a, rho_b)


def _safe_log(w):
    # log w, −inf where w = 0 with a zero (not NaN) gradient there
    pos = w > 0
    return torch.where(pos, torch.log(torch.where(pos, w, torch.ones_like(w))), torch.full_like(w, -math.inf))


def _unrolled(C, a, b, eps, tol, max_iter, schedule, init, rho_a=math.inf, rho_b=math.inf):
    """Log-domain iterations recorded by autograd (KL-damped when unbalanced, as the core's
    reference sweeps); finished problems are frozen (torch.where)."""
    from ._solve import Solution

    B, n, m = C.shape
    la, lb = _safe_log(a), _safe_log(b)
    if init is not None:
        f, g = init[0].to(C.dtype), init[1].to(C.dtype)
    else:
        f = torch.zeros(B, n, dtype=C.dtype, device=C.device)
        g = torch.zeros(B, m, dtype=C.dtype, device=C.device)
    for e in schedule:
        f, g, _ = _update(C, la, lb, f, g, e, rho_a, rho_b)
    active = torch.ones(B, dtype=torch.bool, device=C.device)
    n_iter = torch.full((B,), len(schedule), dtype=torch.int64, device=C.device)
    err = torch.full((B,), math.inf, dtype=torch.float64, device=C.device)
    conv = torch.zeros(B, dtype=torch.bool, device=C.device)
    for it in range(max_iter + 1):
        f_new, g_new, e = _update(C, la, lb, f, g, eps, rho_a, rho_b)
        with torch.no_grad():
            done = (e <= tol) | ~torch.isfinite(e) | (it == max_iter)
            newly = done & active
            err = torch.where(newly, e.double(), err)
            conv = conv | (newly & (e <= tol))
            active = active & ~done
        if not bool(active.any()):
            break
        keep = active.unsqueeze(-1)
        f, g = torch.where(keep, f_new, f), torch.where(keep, g_new, g)
        n_iter = n_iter + active.long()
    return f, g, Solution(f=f, g=g, n_iter=n_iter, error=err, converged=conv, backend="torch-unroll")


def _solve(*, a, b, eps, grad, tol, max_iter, scaling, init, compiled, state,
           C=None, x=None, y=None, cost=None, batched=True, inputs=(), n_threads=0,
           symmetric=False, value_tol=None, stage_tol=1e-2, epsilon_init=None, warn=True, kernel_memory=4e9,
           rho_a=math.inf, rho_b=math.inf):
    """Shared driver: batch tensors in, :class:`SinkhornOutput` (batched) out."""
    dense = C is not None
    C_fn = (lambda: C) if dense else (lambda: pairwise_cost(x, y, cost))
    spec = SolveSpec(eps=eps, tol=tol, max_iter=max_iter, cost=cost, scaling=scaling,
                     compiled=compiled, init=init, n_threads=int(n_threads), symmetric=bool(symmetric),
                     value_tol=value_tol, stage_tol=stage_tol, epsilon_init=epsilon_init,
                     kernel_memory=kernel_memory, rho_a=rho_a, rho_b=rho_b)
    if grad in ("envelope", "detach"):
        if grad == "detach":
            a, b = a.detach(), b.detach()
            C = None if C is None else C.detach()
            x = None if x is None else x.detach()
            y = None if y is None else y.detach()
        value = envelope_value(spec, a, b, C, x, y)
        sol = spec.solution
        f, g = sol.f, sol.g
    else:
        Cd = C if dense else pairwise_cost(x, y, cost)
        if grad == "implicit":
            state = state if state is not None else ImplicitState()
            f, g = implicit_potentials(spec, state, Cd, a, b)
            sol = spec.solution
        else:  # unroll
            stages = annealing_schedule(core_problem(a, b, eps, None if C is None else C, x, y, cost,
                                                     rho_a=rho_a, rho_b=rho_b), eps, scaling)
            f, g, sol = _unrolled(Cd, a, b, eps, tol, max_iter, stages, init, rho_a, rho_b)
        value = _dual_value(a, b, Cd, f, g, eps, rho_a, rho_b)
        C_fn = lambda: Cd  # noqa: E731  (reuse the differentiable cost matrix)
    out = SinkhornOutput(value=value, f=f, g=g, C_fn=C_fn, eps=eps, sol=sol, grad=grad,
                         batched=batched, inputs=inputs, state=state)
    if warn and not bool(sol.converged.all()):
        import warnings

        k = int((~sol.converged).sum())
        warnings.warn(
            f"otsolve.torch: {k} of {sol.converged.numel()} Sinkhorn problem(s) did not reach tol={tol:g} "
            f"in max_iter={max_iter} iterations (largest marginal error {float(sol.error.max()):.3g}); "
            "increase max_iter or epsilon", RuntimeWarning, stacklevel=3)
    return out


def sinkhorn(
    a: torch.Tensor | None,
    b: torch.Tensor | None,
    C: torch.Tensor,
    epsilon: float,
    *,
    grad: str = "envelope",
    tol: float | None = None,
    max_iter: int = 1000,
    epsilon_scaling: float | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None,
    compiled: bool = True,
    implicit_state: ImplicitState | None = None,
    n_threads: int = 0,
    backend: str | None = None,
    rho_a: float | None = None,
    rho_b: float | None = None,
) -> SinkhornOutput:
    """Entropic OT between weights ``a``, ``b`` for the cost ``C``, differentiable in torch.

    Solves ``min_P <C, P> + ε Σ P log P`` over plans with marginals ``a``, ``b`` (log-domain
    Sinkhorn, Cuturi 2013) and attaches gradients according to ``grad``. With ``rho_a`` /
    ``rho_b``: unbalanced OT, ``min_P <C, P> + ε KL(P | a⊗b) + ρ_a KL(P1 | a) + ρ_b KL(Pᵀ1 | b)``
    (Chizat et al. 2018; the core driver's KL-damped updates).

    Parameters
    ----------
    a, b : Tensor (n,), (m,) or (B, n), (B, m), or None
        Nonnegative weights of equal mass (any masses when a marginal is relaxed); None means
        uniform.
    C : Tensor (n, m) or (B, n, m)
        Cost matrices (float32 or float64, CPU or CUDA). A batch is solved with per-problem
        convergence: problems that have converged stop costing anything.
    epsilon : float
        Entropic regularization ε (multiplies Σ P log P).
    grad : {"envelope", "implicit", "unroll", "detach"}
        ``"envelope"``: gradient of ``value`` only (∂/∂C = P, ∂/∂a = centred f, ∂/∂b = centred g),
        no extra solve. ``"implicit"``: value, plan and potentials through the optimality
        conditions, one CG solve per backward pass (warm-started through ``implicit_state``);
        costs O(nm) memory. ``"unroll"``: autograd through every iteration, O(iterations · nm)
        memory — for small problems. ``"detach"``: no gradients.
    tol : float, optional
        L1 tolerance on both marginals (default 1e-9 in float64, 1e-6 in float32).
    max_iter : int
        Iteration cap (per problem).
    epsilon_scaling : float, optional
        Decay in (0, 1) of the core solver's ε-scaling (:class:`otsolve.Sinkhorn`'s
        ``epsilon_scaling``): stages from the cost's range down to ε, each warm-starting the next.
    init : (Tensor, Tensor), optional
        Warm-start potentials ``(f, g)`` with the batch shape of the problem.
    compiled : bool, default True
        The forward solve is the core :class:`otsolve.Sinkhorn` driver on views of the tensors
        (CPU tensors: NumPy without a copy, C++ kernels; CUDA tensors: CuPy through DLPack, CUDA
        kernels). False uses the NumPy reference kernels (CPU tensors; for checks).
    backend : str, optional
        Deprecated spelling of ``compiled`` ("auto"/"compiled" mean ``compiled=True``).
    implicit_state : ImplicitState, optional
        CG settings and warm start of the implicit backward pass (reuse one across steps).
    n_threads : int
        Threads of the compiled kernels (0 = all; problems below 500×500 use one thread).
    rho_a, rho_b : float, optional
        KL relaxation strengths of the row / column marginals, in cost units (None or ``inf``:
        hard constraint). ``value`` is then the unbalanced objective (see :class:`SinkhornOutput`)
        and its gradients are the envelope formulas of :mod:`otsolve.torch._grad`.

    Returns
    -------
    SinkhornOutput

    Raises
    ------
    ValueError
        For bad shapes, dtypes, devices, weights, ε, or ``epsilon`` requiring grad.
    """
    grad = _mode(grad)
    eps = _eps(epsilon)
    C = _as_float(C, "C")
    if C.ndim not in (2, 3):
        raise ValueError(f"C must be (n, m) or (B, n, m), got shape {tuple(C.shape)}")
    batched = C.ndim == 3
    Cb = C if batched else C.unsqueeze(0)
    B, n, m = Cb.shape
    if n == 0 or m == 0 or B == 0:
        raise ValueError(f"C is empty (shape {tuple(C.shape)})")
    _check_finite(Cb, "C")
    a_ = _weights(a, B, n, batched, Cb, "a")
    b_ = _weights(b, B, m, batched, Cb, "b")
    rho_a, rho_b = _rho(rho_a, "rho_a"), _rho(rho_b, "rho_b")
    _check_mass(a_, b_, rho_a, rho_b)
    tol = _default_tol(Cb.dtype, a_, b_) if tol is None else check_tol(tol)
    init = _init(init, B, n, m, batched)
    compiled = _check_compiled(compiled, backend, Cb)
    return _solve(a=a_, b=b_, eps=eps, grad=grad, tol=tol, max_iter=check_positive_int(max_iter, "max_iter", 0),
                  scaling=_scaling(epsilon_scaling), init=init, compiled=compiled,
                  state=implicit_state, C=Cb, batched=batched, inputs=(a, b, C),
                  n_threads=check_n_threads(n_threads), rho_a=rho_a, rho_b=rho_b)


def _scaling(s):
    if s is None:
        return None
    s = float(s)
    if not 0.0 < s < 1.0:
        raise ValueError(f"epsilon_scaling must be in (0, 1), got {s!r}")
    return s


def _check_compiled(compiled: Any, backend: str | None, ref: torch.Tensor) -> bool:
    """``compiled`` as a bool; ``backend`` is its deprecated spelling."""
    if backend is not None:
        import warnings  # noqa: PLC0415

        if backend not in ("auto", "compiled", "torch"):
            raise ValueError(f"backend must be 'auto' or 'compiled' (deprecated; use compiled=True/False), got {backend!r}")
        warnings.warn("otsolve.torch: `backend` is deprecated, use `compiled` (the forward solve is always the "
                      "core Sinkhorn driver; backend='torch' no longer exists and runs it too)",
                      DeprecationWarning, stacklevel=3)
        compiled = True
    if not isinstance(compiled, (bool, np.bool_)):
        raise ValueError(f"compiled must be True or False, got {compiled!r}")
    if not compiled and ref.device.type != "cpu":
        raise ValueError(f"compiled=False (the NumPy reference) runs on CPU tensors; got a tensor on {ref.device}")
    return bool(compiled)


def _init(init, B, n, m, batched):
    if init is None:
        return None
    try:
        f, g = init
    except (TypeError, ValueError):
        raise ValueError("init must be a pair (f, g) of potentials") from None
    f, g = torch.as_tensor(f).detach(), torch.as_tensor(g).detach()
    if not batched:
        f, g = f.unsqueeze(0), g.unsqueeze(0)
    if tuple(f.shape) != (B, n) or tuple(g.shape) != (B, m):
        raise ValueError(f"init potentials have shapes {tuple(f.shape)}, {tuple(g.shape)}; expected ({B}, {n}), ({B}, {m})")
    if bool(torch.isnan(f).any() or torch.isnan(g).any()):
        raise ValueError("init potentials contain NaN")
    return f, g


def _entropy_term(w: torch.Tensor) -> torch.Tensor:
    """``<w, log w>`` with 0 log 0 = 0 (differentiable)."""
    return torch.special.xlogy(w, w).sum(-1)


def _points(x: Any, name: str) -> torch.Tensor:
    x = _as_float(x, name)
    if x.ndim == 1:
        x = x.unsqueeze(-1)  # 1-D samples, as GeomLoss accepts
    if x.ndim not in (2, 3):
        raise ValueError(f"{name} must be (n, d) or (B, n, d), got shape {tuple(x.shape)}")
    if x.shape[-2] == 0:
        raise ValueError(f"{name} has no points (shape {tuple(x.shape)})")
    _check_finite(x, name)
    return x


def sinkhorn_divergence(
    x: torch.Tensor,
    y: torch.Tensor,
    epsilon: float,
    *,
    a: torch.Tensor | None = None,
    b: torch.Tensor | None = None,
    cost: CostSpec = "sqeuclidean",
    debias: bool = True,
    grad: str = "envelope",
    tol: float | None = None,
    max_iter: int = 1000,
    epsilon_scaling: float | None = None,
    compiled: bool = True,
    implicit_state: ImplicitState | None = None,
    init: dict | None = None,
    return_outputs: bool = False,
    n_threads: int = 0,
    backend: str | None = None,
    loss_tol: float | None = None,
    stage_tol: float = 1e-2,
    epsilon_init: float | None = None,
    kernel_memory: float = 4e9,
    rho: float | None = None,
):
    """Sinkhorn divergence between weighted point clouds (Feydy et al., AISTATS 2019).

    ``OT_ε(a, b) = min_P <C, P> + ε KL(P | a ⊗ b)`` and, with ``debias=True``,
    ``S_ε = OT_ε(a, b) − ½ OT_ε(a, a) − ½ OT_ε(b, b)`` — GeomLoss's ``SamplesLoss("sinkhorn")``
    convention (for ``cost="half_sqeuclidean"``, ``ε = blur**2`` with ``p=2``). The KL form differs
    from the ``Σ P log P`` form of :func:`sinkhorn` by ``ε(<a, log a> + <b, log b>)``, a constant
    that cancels in the debiased divergence.

    Unbalanced (``rho`` finite; Séjourné et al. 2019, GeomLoss's ``reach = rho**(1/p)``):
    ``OT_ε,ρ(a, b) = min_P <C, P> + ε KL(P | a⊗b) + ρ KL(P1 | a) + ρ KL(Pᵀ1 | b) + ε ((|a| + |b|)/2 − |a||b|)``
    — the last constant (zero for probability vectors) is GeomLoss's: its value is then
    ``(ρ + ε/2)(<a, 1 − e^{−φ/ρ}> + <b, 1 − e^{−ψ/ρ}>)`` at the optimum for any masses, and the
    debiased ``OT(a, b) − ½OT(a, a) − ½OT(b, b)`` is Séjourné et al.'s divergence, which carries
    ``+ ε/2 (|a| − |b|)²`` relative to the plain objectives.

    Parameters
    ----------
    x, y : Tensor (n, d), (m, d) or (B, n, d), (B, m, d)
        Point clouds (float32 or float64, CPU or CUDA).
    epsilon : float
        Entropic regularization ε.
    a, b : Tensor, optional
        Weights (uniform when None), probability vectors.
    cost : {"sqeuclidean", "half_sqeuclidean", "euclidean"} or callable
        Ground cost; a callable ``(x, y) -> C`` works on batches ``(B, n, d)`` and uses the torch path.
    debias, grad, tol, max_iter, epsilon_scaling, compiled, implicit_state, n_threads, backend
        As in :func:`sinkhorn`; ``grad="envelope"`` keeps memory O(n + m) on the CPU kernels.
    init : dict, optional
        Warm starts ``{"xy": (f, g), "xx": ..., "yy": ...}`` (batch shapes), e.g. from the previous
        training step.
    return_outputs : bool
        Also return the dict of :class:`SinkhornOutput` of each term.
    loss_tol : float, optional
        Speed/accuracy knob in the loss's units: each OT term stops when its value changed by at
        most ``loss_tol / 2`` over a tenfold decrease of its marginal tolerance (the core's
        ``value_tol``; the divergence is xy − ½ xx − ½ yy, so its error is about ``loss_tol``
        or less). ``tol`` is then the finest marginal tolerance. None (default): stop on the
        marginal tolerance ``tol`` alone (accurate, slower).
    kernel_memory : float, default 4e9
        Bytes the CPU kernels may spend on a materialised cost and stored Gibbs kernel (2 n m
        entries; ~3.5x faster sweeps). Larger problems are computed on the fly, O(n + m) memory;
        ``kernel_memory=0`` forces that (e.g. to stay within a memory budget).
    stage_tol, epsilon_init
        The core's ε-scaling options (:class:`otsolve.Sinkhorn`): tolerance of the intermediate
        stages, first ε (default: the cost range of the clouds, i.e. their squared diameter).
    rho : float, optional
        Unbalanced OT: strength of the KL relaxation of both marginals, in cost units (None or
        ``inf``: balanced). Weights of any (positive) total masses are then allowed.

    Notes
    -----
    The self-transport terms OT(a, a) and OT(b, b) are solved as symmetric problems (the core's
    ``BatchedLinearProblem(symmetric=True)``: one potential, averaged updates), which converge in
    a handful of iterations where alternating updates need hundreds at small ε — from a cold
    start at the target ε: ``epsilon_scaling`` applies to the OT(a, b) term only (the schedule
    would cost the symmetric terms one or more iterations per stage, 70-680 in all).

    Returns
    -------
    Tensor
        Shape () or (B,).
    """
    grad = _mode(grad)
    eps = _eps(epsilon)
    cost = resolve_cost(cost)
    x, y = _points(x, "x"), _points(y, "y")
    if x.ndim != y.ndim:
        raise ValueError(f"x and y must both be batched or both unbatched, got shapes {tuple(x.shape)}, {tuple(y.shape)}")
    if x.dtype != y.dtype:
        raise ValueError(f"x has dtype {x.dtype} but y has {y.dtype}; convert explicitly")
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}")
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y have different dimensions ({x.shape[-1]} vs {y.shape[-1]})")
    batched = x.ndim == 3
    xb, yb = (x, y) if batched else (x.unsqueeze(0), y.unsqueeze(0))
    if xb.shape[0] != yb.shape[0]:
        raise ValueError(f"x and y have different batch sizes ({xb.shape[0]} vs {yb.shape[0]})")
    B, n, m = xb.shape[0], xb.shape[1], yb.shape[1]
    a_ = _weights(a, B, n, batched, xb, "a")
    b_ = _weights(b, B, m, batched, xb, "b")
    rho = _rho(rho, "rho")
    _check_mass(a_, b_, rho, rho)
    tol = _default_tol(xb.dtype, a_, b_) if tol is None else check_tol(tol)
    compiled = _check_compiled(compiled, backend, xb)
    scaling = _scaling(epsilon_scaling)
    init = init or {}
    if loss_tol is not None:
        loss_tol = check_tol(loss_tol, "loss_tol")
    stage_tol = check_tol(stage_tol, "stage_tol")
    if epsilon_init is not None:
        epsilon_init = check_epsilon(epsilon_init, "epsilon_init")
    common = dict(eps=eps, grad=grad, tol=tol, max_iter=check_positive_int(max_iter, "max_iter", 0), scaling=scaling,
                  compiled=compiled, state=implicit_state, cost=cost, batched=True,
                  n_threads=check_n_threads(n_threads), stage_tol=stage_tol, epsilon_init=epsilon_init,
                  value_tol=None if loss_tol is None else 0.5 * loss_tol, kernel_memory=float(kernel_memory),
                  rho_a=rho, rho_b=rho)
    inputs = (x, y, a, b)
    sym = grad != "unroll"  # (the unrolled mode records its own iterations)

    def opts(k):
        # A warm start (e.g. the previous training step) is already at the target ε: the terms
        # that have one skip the ε-schedule. The symmetric self-transport terms skip it too: their
        # averaged updates converge from a cold start at the target ε in <= 21 iterations (randn,
        # uniform, bimodal, duplicated and wide clouds, p = 1 and 2, blur 0.01-0.1, balanced or
        # not), where the ε-schedule costs 70-680 (one or more per stage).
        if scaling is not None and (init.get(k) is not None or (k != "xy" and sym)):
            return dict(common, scaling=None)
        return common
    outs = {"xy": _solve(a=a_, b=b_, x=xb, y=yb, init=init.get("xy"), inputs=inputs, **opts("xy"))}
    balanced = math.isinf(rho)

    def ot(k, u, v):  # OT_ε(u, v) of the docstring from a term's value
        if balanced:  # Σ P log P form -> KL form
            return outs[k].value - eps * (_entropy_term(u) + _entropy_term(v))
        # unbalanced value = the KL-form objective; GeomLoss's constant (differentiable in u, v)
        mu, mv = u.sum(-1), v.sum(-1)
        return outs[k].value + eps * (0.5 * (mu + mv) - mu * mv)

    val = ot("xy", a_, b_)
    if debias:
        outs["xx"] = _solve(a=a_, b=a_, x=xb, y=xb, init=init.get("xx"), inputs=inputs, symmetric=sym, **opts("xx"))
        outs["yy"] = _solve(a=b_, b=b_, x=yb, y=yb, init=init.get("yy"), inputs=inputs, symmetric=sym, **opts("yy"))
        if balanced:  # the KL constants ε<a, log a>, ε<b, log b> cancel between the three terms
            val = outs["xy"].value - 0.5 * (outs["xx"].value + outs["yy"].value)
        else:
            val = val - 0.5 * (ot("xx", a_, a_) + ot("yy", b_, b_))
    val = val if batched else val[0]
    return (val, outs) if return_outputs else val


class TermInfo:
    """Detached record of one OT term of a loss call: potentials ``_f``, ``_g`` (warm starts),
    ``n_iter``, ``marginal_error``, ``converged`` (tensors with a batch axis), no graph."""

    def __init__(self, f, g, n_iter, marginal_error, converged) -> None:
        self._f, self._g = f, g
        self.n_iter, self.marginal_error, self.converged = n_iter, marginal_error, converged

    @classmethod
    def of(cls, out: "SinkhornOutput") -> "TermInfo":
        return cls(out._f.detach(), out._g.detach(), out.n_iter.detach(), out.marginal_error.detach(),
                   out.converged.detach())

    def __repr__(self) -> str:
        return f"TermInfo(n_iter={self.n_iter.tolist()}, marginal_error={self.marginal_error.tolist()})"


class SinkhornLoss(torch.nn.Module):
    """Sinkhorn divergence between point clouds as an ``nn.Module`` (GeomLoss-style calls).

    ``loss(x, y)`` (uniform weights) or ``loss(a, x, b, y)``; batches ``(B, n, d)`` give ``(B,)``.
    See :func:`sinkhorn_divergence` for the definition and the parameters. With
    ``cost="half_sqeuclidean"`` the value equals GeomLoss's
    ``SamplesLoss("sinkhorn", p=2, blur=epsilon**0.5, debias=debias)`` at convergence.

    Parameters
    ----------
    epsilon : float
        Entropic regularization ε.
    cost : str or callable
        "sqeuclidean" (default), "half_sqeuclidean", "euclidean" or ``(x, y) -> C``.
    debias : bool
        Subtract the self-transport terms (a divergence: zero iff the clouds coincide).
    grad : str
        "envelope" (default), "implicit", "unroll" or "detach".
    warm_start : bool
        Start each call from the potentials of the previous call for each term whose shapes
        (batch size, cloud sizes), dtype and device match (the others start cold)
        (training loops move the clouds a little per step, so fewer iterations are needed).
    rho : float, optional
        Unbalanced OT (KL-relaxed marginals of strength ρ, cost units; None: balanced). See
        :func:`sinkhorn_divergence`.
    **options
        ``tol``, ``max_iter``, ``epsilon_scaling``, ``compiled``, ``implicit_state``, ``n_threads``,
        ``loss_tol``, ``stage_tol``, ``epsilon_init`` (``backend``: deprecated spelling of
        ``compiled``).

    Notes
    -----
    The module keeps no autograd graph between calls: ``last_outputs`` holds detached
    :class:`TermInfo` records (so ``copy.deepcopy``, ``torch.save`` and ``state_dict`` work after
    a forward pass).
    """

    def __init__(self, epsilon: float = 0.05, cost: CostSpec = "sqeuclidean", debias: bool = True,
                 grad: str = "envelope", warm_start: bool = False, rho: float | None = None,
                 **options: Any) -> None:
        super().__init__()
        self.epsilon = _eps(epsilon)
        self.rho = _rho(rho, "rho")
        self.cost = resolve_cost(cost)
        self.debias = bool(debias)
        self.grad = _mode(grad)
        self.warm_start = bool(warm_start)
        allowed = {"tol", "max_iter", "epsilon_scaling", "compiled", "backend", "implicit_state", "n_threads",
                   "loss_tol", "stage_tol", "epsilon_init", "kernel_memory"}
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        if options.get("tol") is not None:  # bad settings fail here, not at the first call
            options["tol"] = check_tol(options["tol"])
        if "max_iter" in options:
            options["max_iter"] = check_positive_int(options["max_iter"], "max_iter", 0)
        if "n_threads" in options:
            options["n_threads"] = check_n_threads(options["n_threads"])
        if self.grad == "implicit" and options.get("implicit_state") is None:
            options["implicit_state"] = ImplicitState()  # CG warm start across training steps
        self.options = options
        # detached per-term diagnostics and warm-start potentials of the last call (no autograd
        # graph is kept between calls: deepcopy, torch.save and state_dict work after a forward)
        self.last_outputs: dict[str, TermInfo] | None = None

    def forward(self, *args: torch.Tensor) -> torch.Tensor:  # noqa: D102
        if len(args) == 2:
            a, x, b, y = None, args[0], None, args[1]
        elif len(args) == 4:
            a, x, b, y = args
        else:
            raise ValueError(f"SinkhornLoss takes (x, y) or (a, x, b, y), got {len(args)} arguments")
        init = None
        if self.warm_start and self.last_outputs is not None:
            # each term's potentials are reused only if that term's problem has the same shapes,
            # dtype and device (a new batch or cloud size drops them: they belong to other problems)
            def bn(t):
                return tuple(t.shape[:-1]) if t.ndim == 3 else (1, t.shape[0])

            want = {"xy": (bn(x), bn(y)), "xx": (bn(x), bn(x)), "yy": (bn(y), bn(y))}
            init = {k: (o._f.detach(), o._g.detach()) for k, o in self.last_outputs.items()
                    if (tuple(o._f.shape), tuple(o._g.shape)) == want.get(k)
                    and o._f.dtype == x.dtype and o._f.device == x.device}
        val, outs = sinkhorn_divergence(
            x, y, self.epsilon, a=a, b=b, cost=self.cost, debias=self.debias, grad=self.grad,
            init=init, return_outputs=True, rho=self.rho, **self.options)
        self.last_outputs = {k: TermInfo.of(o) for k, o in outs.items()}
        return val

    def extra_repr(self) -> str:  # noqa: D102
        unb = "" if math.isinf(self.rho) else f", rho={self.rho}"
        return f"epsilon={self.epsilon}, cost={self.cost!r}, debias={self.debias}, grad={self.grad!r}{unb}"
