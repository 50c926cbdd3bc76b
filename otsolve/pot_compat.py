"""POT-compatible ``sinkhorn`` / ``sinkhorn2``: change ``import ot`` to ``import otsolve`` and keep the call.

Both accept POT 0.9.7's whole signature (``method``, ``numItermax``, ``stopThr``, ``verbose``,
``log``, ``warn``, ``warmstart`` and the method-specific keywords) and every POT method; all
methods run otsolve's one log-domain Sinkhorn driver (they have the same fixed point, the unique
entropic plan), so none of them overflows. Arrays of any library (NumPy, CuPy, PyTorch, JAX)
come back as arrays of the same library, device and dtype (:mod:`otsolve._arrays`); a torch
``sinkhorn2`` is differentiable. Differences from POT are listed in ``docs/pot.md``.
"""
from __future__ import annotations

import warnings
from numbers import Real
from typing import Any

import numpy as np

from . import _arrays
from ._validation import check_epsilon, check_finite, check_weights
from .problems import BatchedLinearProblem, LinearProblem
from .solvers.sinkhorn import Sinkhorn

__all__ = ["sinkhorn", "sinkhorn2", "sinkhorn_unbalanced", "sinkhorn_unbalanced2", "SINKHORN_METHODS",
           "SINKHORN2_METHODS", "UNBALANCED_METHODS", "reachable_stopthr"]

#: the ``method`` values of POT 0.9.7's ``ot.sinkhorn`` and ``ot.sinkhorn2``
SINKHORN_METHODS = ("sinkhorn", "sinkhorn_log", "greenkhorn", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling")
SINKHORN2_METHODS = ("sinkhorn", "sinkhorn_log", "sinkhorn_stabilized")

# POT's method-specific keywords (consumed here); other keywords must be otsolve.Sinkhorn options
_POT_KWARGS = {"tau", "print_period", "epsilon0", "numInnerItermax"}
_SINKHORN_OPTIONS = {"epsilon_scaling", "epsilon_init", "stage_tol", "omega", "mode", "kernel_memory",
                     "n_threads", "compiled"}
# POT's non-convergence warning (a UserWarning, emitted by every Sinkhorn variant)
POT_NOT_CONVERGED = ("Sinkhorn did not converge. You might want to increase the number of iterations "
                     "`numItermax` or the regularization parameter `reg`.")


def _check_method(method: Any, allowed: tuple[str, ...]) -> str:
    if not isinstance(method, str) or method.lower() not in allowed:
        # POT's message, plus the list
        raise ValueError(f"Unknown method '{method}'. Known methods: {', '.join(allowed)}.")
    return method.lower()


def _check_reg(reg: Any) -> float:
    if _arrays.requires_grad(reg):
        raise ValueError("reg requires grad; no gradient is taken with respect to reg: pass a float")
    try:
        r = float(_arrays.to_numpy(reg)) if not isinstance(reg, Real) else float(reg)
    except (TypeError, ValueError):
        raise ValueError(f"reg must be a nonnegative number, got {reg!r}") from None
    if not np.isfinite(r) or r < 0:
        raise ValueError(f"reg must be a finite number >= 0, got {reg!r}")
    return r


def reachable_stopthr(dtype: Any, mass: float = 1.0) -> float:
    """Smallest tolerance the arithmetic of ``dtype`` reliably reaches (float32: ~1e-6 for unit mass).

    The plan's marginals are sums of entries rounded in ``dtype``; below ~8 ulps of the total mass
    the measured error is rounding, not distance to the solution (the same rule as the core's).
    """
    return 8.0 * float(np.finfo(np.dtype(dtype)).eps) * float(mass) * (1 + 1e-3)  # margin: mass rounding


def _check_stop(stopThr: Any, dtype: np.dtype, mass: float) -> float:
    try:
        t = float(stopThr)
    except (TypeError, ValueError):
        raise ValueError(f"stopThr must be a number >= 0, got {stopThr!r}") from None
    if not t >= 0 or not np.isfinite(t):
        raise ValueError(f"stopThr must be a finite number >= 0, got {stopThr!r}")
    floor = reachable_stopthr(dtype, mass)
    if t == 0:
        # POT's stopThr=0 never stops early; otsolve stops at the rounding level (the nearest
        # meaningful tolerance): with numItermax too small to get there it warns, as POT does
        return floor
    if t < floor:
        warnings.warn(
            f"stopThr={t:g} is below what {dtype.name} arithmetic can reach (~{floor:.2g}: the plan's "
            f"marginals are rounded at ~{np.finfo(dtype).eps:.1g} relative); using stopThr={floor:.2g}."
            + (" Pass float64 arrays for a tighter tolerance." if dtype == np.float32 else ""),
            UserWarning, stacklevel=5)
        return floor
    return t


def _cost_matrix(M):
    """``M`` as a non-empty 2-D core array (integers as float64), or a ValueError saying why."""
    Mc = _arrays.to_core(M)
    if Mc.ndim != 2:
        hint = (" For 1-D samples x, y build the cost with otsolve.pot.dist(x.reshape(-1, 1), "
                "y.reshape(-1, 1)).") if Mc.ndim == 1 else ""
        raise ValueError(f"M must be a 2-D cost matrix of shape (len(a), len(b)), got shape {tuple(Mc.shape)}.{hint}")
    if Mc.dtype.kind in "biu":
        Mc = Mc.astype(np.float64)
    if Mc.shape[0] == 0 or Mc.shape[1] == 0:
        raise ValueError(f"M is empty (shape {tuple(Mc.shape)})")
    return Mc


class _Prepared:
    """Inputs of one call in core arrays (NumPy / CuPy) plus what to convert back to."""

    def __init__(self, a, b, M, reg, method, numItermax, stopThr, warmstart, kwargs):
        self.method = method
        self.info = _arrays.array_info(*(x for x in (M, a, b) if not _arrays.is_empty(x)))
        self.grad = _arrays.requires_grad(a, b, M)
        self.inputs = (a, b, M)
        Mc = _cost_matrix(M)
        n, m = Mc.shape
        dt = Mc.dtype
        xp = np if isinstance(Mc, np.ndarray) else _arrays.array_info(Mc).xp
        self.a = xp.full(n, 1.0 / n, dtype=dt) if _arrays.is_empty(a) else _arrays.to_core(a).astype(dt, copy=False)
        self.b = xp.full(m, 1.0 / m, dtype=dt) if _arrays.is_empty(b) else _arrays.to_core(b).astype(dt, copy=False)
        if self.a.ndim != 1 or self.a.shape[0] != n:
            raise ValueError(f"a must have shape ({n},) to match M {tuple(Mc.shape)}, got {tuple(self.a.shape)}")
        if self.b.ndim not in (1, 2) or self.b.shape[0] != m:
            raise ValueError(f"b must have shape ({m},) or ({m}, k) to match M {tuple(Mc.shape)}, "
                             f"got {tuple(self.b.shape)}")
        self.M = Mc
        self.n_hists = self.b.shape[1] if self.b.ndim == 2 else 0
        self.reg = _check_reg(reg)
        self.dtype = np.dtype(str(dt))
        mass = float(_arrays.to_numpy(self.a).astype(np.float64).sum())
        self.tol = _check_stop(stopThr, self.dtype, mass)
        # other keywords are ignored, as POT's Sinkhorn functions do (**kwargs): POT's own callers
        # (e.g. its Gromov-Wasserstein solvers) pass keywords meant for other solvers
        opts = {k: v for k, v in kwargs.items() if k in _SINKHORN_OPTIONS}
        max_iter = int(numItermax)
        if max_iter < 0:
            raise ValueError(f"numItermax must be >= 0, got {numItermax!r}")
        if method == "sinkhorn_epsilon_scaling":
            # POT: numItermax outer ε-steps of numInnerItermax inner iterations, ε from epsilon0 down
            max_iter = max(max_iter, 35) * int(kwargs.get("numInnerItermax", 100))
            opts.setdefault("epsilon_scaling", True)
            if "epsilon0" in kwargs:
                opts.setdefault("epsilon_init", float(kwargs["epsilon0"]))
        self.max_iter = max_iter
        self.opts = opts
        self.inits = self._warmstart(warmstart)

    def _warmstart(self, warmstart):
        """POT's warm start as otsolve potentials ``(f, g)`` per problem (None: cold start).

        POT's plan is ``exp(log_u_i + log_v_j - M_ij / reg)`` (sinkhorn, sinkhorn_log, greenkhorn:
        warmstart = (log u, log v)) or ``exp((alpha_i + beta_j - M_ij) / reg)`` (stabilized,
        epsilon scaling: warmstart = (alpha, beta)); otsolve's is ``exp((f_i + g_j - M_ij)/reg - 1)``.
        """
        k = max(self.n_hists, 1)
        if warmstart is None:
            return [None] * k
        reg = self.reg if self.reg > 0 else 1.0
        cost_units = self.method in ("sinkhorn_stabilized", "sinkhorn_epsilon_scaling")

        def conv(u, v):
            u = _arrays.to_numpy(u).astype(np.float64)
            v = _arrays.to_numpy(v).astype(np.float64)
            if cost_units:
                return u + reg / 2, v + reg / 2
            return reg * (u + 0.5), reg * (v + 0.5)

        if self.n_hists and isinstance(warmstart, (list, tuple)) and len(warmstart) == self.n_hists and all(
                w is None or isinstance(w, (list, tuple)) for w in warmstart):
            return [None if w is None else conv(*w) for w in warmstart]  # sinkhorn_log: one pair per histogram
        try:
            u, v = warmstart
        except (TypeError, ValueError):
            raise ValueError("warmstart must be a pair (log u, log v) of arrays (POT's dual potentials)") from None
        u, v = _arrays.to_numpy(u), _arrays.to_numpy(v)
        if self.n_hists:
            cols = [(u[:, i] if u.ndim == 2 else u, v[:, i] if v.ndim == 2 else v) for i in range(self.n_hists)]
            return [conv(*c) for c in cols]
        return [conv(u, v)]

    def b_col(self, k: int):
        return self.b[:, k] if self.n_hists else self.b


def _solve_core(p: _Prepared, k: int, warn: bool):
    """One problem (column k of b) by otsolve's Sinkhorn (or exact OT for reg=0)."""
    b = p.b_col(k)
    if p.reg == 0:
        from .solvers.exact import ExactOT  # noqa: PLC0415

        return ExactOT(warn=False)(LinearProblem(p.M, p.a, b))
    prob = LinearProblem(p.M, p.a, b, epsilon=p.reg)
    solver = Sinkhorn(tol=p.tol, max_iter=p.max_iter, warn=False, **p.opts)
    return solver(prob, init=p.inits[k])


def _solve_torch(p: _Prepared, k: int):
    """One problem through the torch layer (differentiable plan and cost, implicit gradients)."""
    import torch  # noqa: PLC0415

    from .torch import sinkhorn as torch_sinkhorn  # noqa: PLC0415

    a, b, M = p.inputs
    M = torch.as_tensor(M)
    dt, dev = M.dtype if M.is_floating_point() else torch.float64, M.device
    M = M.to(dt)
    n, m = M.shape
    a = torch.full((n,), 1.0 / n, dtype=dt, device=dev) if _arrays.is_empty(a) else torch.as_tensor(a).to(dt)
    b = torch.full((m,), 1.0 / m, dtype=dt, device=dev) if _arrays.is_empty(b) else torch.as_tensor(b).to(dt)
    if p.n_hists:
        b = b[:, k]
    init = p.inits[k]
    if init is not None:
        init = (torch.as_tensor(init[0], dtype=dt, device=dev), torch.as_tensor(init[1], dtype=dt, device=dev))
    scaling = p.opts.get("epsilon_scaling")
    scaling = (0.5 if scaling is True else float(scaling)) if scaling else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # reported POT's way by the caller
        out = torch_sinkhorn(a, b, M, p.reg, grad="implicit", tol=p.tol, max_iter=max(p.max_iter, 1),
                             epsilon_scaling=scaling, init=init)
    return out


class _Outcome:
    """What the log and return values need, from a core OTResult or a torch SinkhornOutput."""

    def __init__(self, res, torch_out=None):
        self.res, self.t = res, torch_out
        if torch_out is None:
            self.f, self.g = _arrays.to_numpy(res.f).astype(np.float64), _arrays.to_numpy(res.g).astype(np.float64)
            self.converged, self.n_iter = res.converged, res.n_iter
            self.errors = [float(e) for e in res.errors]
            self.diverged = res.status == "diverged"
        else:
            self.f = torch_out.f.detach().cpu().double().numpy()
            self.g = torch_out.g.detach().cpu().double().numpy()
            self.converged, self.n_iter = bool(torch_out.converged), int(torch_out.n_iter)
            self.errors = [float(torch_out.marginal_error)]
            self.diverged = not np.isfinite(self.errors[-1])
        self.f, self.g = _balanced_gauge(self.f, self.g)


def _balanced_gauge(f, g):
    """``(f - t, g + t)`` with equal means of the finite entries: the potentials are defined up to
    this shift, and a fixed choice makes every path (core, torch layer) report the same ones."""
    ff, gf = f[np.isfinite(f)], g[np.isfinite(g)]
    if ff.size == 0 or gf.size == 0:
        return f, g
    t = 0.5 * (ff.mean() - gf.mean())
    return f - t, g + t


def _run(a, b, M, reg, method, numItermax, stopThr, verbose, warn, warmstart, kwargs, allowed):
    method = _check_method(method, allowed)
    p = _Prepared(a, b, M, reg, method, numItermax, stopThr, warmstart, kwargs)
    if p.reg == 0:
        warnings.warn("reg=0 is unregularized OT, which Sinkhorn cannot solve (POT overflows here); solved "
                      "exactly with the network simplex instead (otsolve.pot.emd)", UserWarning, stacklevel=3)
    use_torch = p.grad and p.reg > 0
    outs = []
    for k in range(max(p.n_hists, 1)):
        if use_torch:
            t = _solve_torch(p, k)
            outs.append(_Outcome(None, t))
        else:
            outs.append(_Outcome(_solve_core(p, k, warn)))
    for k, o in enumerate(outs):
        if verbose:
            _print_errors(o, k if p.n_hists else None)
        if o.diverged:
            warnings.warn(f"Warning: numerical errors at iteration {o.n_iter}", UserWarning, stacklevel=3)
        elif not o.converged and warn and p.reg > 0:
            warnings.warn(POT_NOT_CONVERGED, UserWarning, stacklevel=3)
    return p, outs


def _print_errors(o: _Outcome, k: int | None) -> None:
    # POT's verbose table (otsolve measures the L1 error of both marginals every iteration)
    if k is not None:
        print(f"histogram {k}")
    print("{:5s}|{:12s}".format("It.", "Err") + "\n" + "-" * 19)
    for i, e in enumerate(o.errors):
        if i % 10 == 0 or i == len(o.errors) - 1:
            print("{:5d}|{:8e}|".format(i, e))


def _log(p: _Prepared, outs: list[_Outcome]) -> dict:
    """POT's log dictionary for ``p.method`` (keys as POT 0.9.7 returns them) plus otsolve's
    ``f``, ``g`` (cost units) and ``result`` (the OTResult, or a list of them for several b)."""
    reg = p.reg if p.reg > 0 else 1.0
    multi = bool(p.n_hists)

    def stack(vals):
        return np.stack(vals, 1) if multi else vals[0]

    f = stack([o.f for o in outs])
    g = stack([o.g for o in outs])
    log_u, log_v = f / reg - 0.5, g / reg - 0.5
    with np.errstate(over="ignore"):
        u, v = np.exp(log_u), np.exp(log_v)
    err = outs[0].errors if not multi else [o.errors[-1] if o.errors else np.nan for o in outs]
    niter = max(o.n_iter for o in outs)
    back = lambda x: _arrays.from_core(x, p.info)  # noqa: E731
    meth = p.method
    if meth == "sinkhorn":
        log = {"err": err, "niter": niter, "u": back(u), "v": back(v)}
    elif meth == "sinkhorn_log":
        log = {"log_u": back(log_u), "log_v": back(log_v), "u": back(u), "v": back(v)}
        if not multi:
            log = {"err": err, "niter": niter, **log}
    elif meth == "greenkhorn":
        log = {"n_iter": niter, "u": back(u), "v": back(v)}
    elif meth == "sinkhorn_stabilized":
        alpha, beta = back(reg * log_u), back(reg * log_v)
        log = {"err": err, "n_iter": niter, "logu": back(log_u), "logv": back(log_v), "alpha": alpha,
               "beta": beta, "warmstart": (alpha, beta)}
    else:  # sinkhorn_epsilon_scaling
        alpha, beta = back(reg * log_u), back(reg * log_v)
        log = {"err": err, "alpha": alpha, "beta": beta, "warmstart": (alpha, beta), "niter": niter}
    log.setdefault("log_u", back(log_u))  # otsolve extras, the same for every method
    log.setdefault("log_v", back(log_v))
    log["f"], log["g"] = back(f), back(g)
    results = [o.res if o.t is None else o.t for o in outs]
    log["result"] = results if multi else results[0]
    return log


def _costs(p: _Prepared, outs: list[_Outcome]):
    """<M, P> per problem in the input's library (0-d, or (k,) for several b)."""
    if outs[0].t is not None:  # torch, differentiable
        import torch  # noqa: PLC0415

        vals = [o.t.cost for o in outs]
        return torch.stack(vals) if p.n_hists else vals[0]
    costs = np.asarray([o.res.cost for o in outs], dtype=p.dtype)
    if p.n_hists:
        return _arrays.from_core(costs, p.info)
    if p.info.library == "numpy":
        return p.dtype.type(costs[0])  # POT returns a NumPy scalar
    return _arrays.from_core(costs[0], p.info)


def sinkhorn(a, b, M, reg: float, method: str = "sinkhorn", numItermax: int = 1000, stopThr: float = 1e-9,
             verbose: bool = False, log: bool = False, warn: bool = True, warmstart: Any = None, **kwargs: Any):
    r"""Entropic OT plan with POT 0.9.7's ``ot.sinkhorn`` signature, methods and return values.

    Solves :math:`\min_P \langle M, P\rangle + \mathrm{reg} \sum_{ij} P_{ij} \log P_{ij}` over plans
    with marginals ``a``, ``b`` (Cuturi 2013) by otsolve's log-domain Sinkhorn.

    Parameters
    ----------
    a : array (n,) or []
        Source weights ([] or None: uniform).
    b : array (m,), (m, k) or []
        Target weights; with k columns, k problems are solved and their losses ``<M, P_k>``
        returned (as POT does).
    M : array (n, m)
        Cost matrix (NumPy, CuPy, PyTorch or JAX; the output has the same library, device, dtype).
    reg : float
        Entropic weight ε > 0. ``reg=0`` warns and solves unregularized OT exactly (network simplex).
    method : {"sinkhorn", "sinkhorn_log", "greenkhorn", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling"}
        Accepted for compatibility; all run the same stable log-domain iterations (they share the
        fixed point). "sinkhorn_epsilon_scaling" anneals ε (from ``epsilon0`` when given).
    numItermax : int
        Iteration budget (for "sinkhorn_epsilon_scaling", ``numItermax * numInnerItermax``).
    stopThr : float
        Tolerance on the L1 error of both marginals (POT: L2 of the column marginal; the L1 test is
        stricter). Values below :func:`reachable_stopthr` (float32: ~1e-6) are clamped to it with
        a UserWarning; ``0`` means that level, silently (POT runs all ``numItermax`` iterations).
    verbose : bool
        Print the error table.
    log : bool
        Also return POT's log dict for the method (e.g. ``err``, ``niter``, ``u``, ``v``; ``log_u``,
        ``log_v`` for "sinkhorn_log"; ``logu``, ``logv``, ``alpha``, ``beta``, ``warmstart`` for
        "sinkhorn_stabilized"), plus otsolve's ``log_u``, ``log_v`` (every method), ``f``, ``g``
        (cost units) and ``result``.
    warn : bool
        UserWarning (POT's text) when the tolerance is not reached.
    warmstart : (array, array), optional
        POT's warm start: ``(log u, log v)`` (``(alpha, beta)`` for the stabilized and
        ε-scaling methods), e.g. ``log["warmstart"]`` or ``(log["log_u"], log["log_v"])``.
    **kwargs
        POT's ``tau``, ``print_period`` (ignored: otsolve needs no absorption threshold),
        ``epsilon0``, ``numInnerItermax``; or :class:`otsolve.Sinkhorn` options (``omega``,
        ``epsilon_scaling``, ...). Other keywords are ignored, as POT does.

    Returns
    -------
    P : array (n, m), or losses (k,) when ``b`` has k columns
    log : dict, only when ``log=True``

    References
    ----------
    M. Cuturi, "Sinkhorn Distances: Lightspeed Computation of Optimal Transport", NeurIPS 2013.
    """
    p, outs = _run(a, b, M, reg, method, numItermax, stopThr, verbose, warn, warmstart, kwargs, SINKHORN_METHODS)
    if p.n_hists:
        out = _costs(p, outs)
    elif outs[0].t is not None:
        out = outs[0].t.plan
    else:
        out = _arrays.from_core(outs[0].res.plan, p.info)
    return (out, _log(p, outs)) if log else out


def sinkhorn2(a, b, M, reg: float, method: str = "sinkhorn", numItermax: int = 1000, stopThr: float = 1e-9,
              verbose: bool = False, log: bool = False, warn: bool = False, warmstart: Any = None, **kwargs: Any):
    r"""Entropic OT loss ``<M, P>`` with POT 0.9.7's ``ot.sinkhorn2`` signature (``warn=False`` by default,
    as POT).

    Same parameters as :func:`sinkhorn`; ``method`` is one of "sinkhorn", "sinkhorn_log",
    "sinkhorn_stabilized" (POT rejects the others here too). Returns a 0-d value (a NumPy scalar
    for NumPy input) or ``k`` values for ``b`` of shape ``(m, k)``. With torch tensors that
    require grad the loss is differentiable with respect to ``a``, ``b`` and ``M``: gradients of
    ``<M, P*>`` through the optimality conditions (implicit differentiation, the value POT's
    unrolled autodiff converges to; gradients in ``a``, ``b`` are defined up to a constant
    shift, since ``sum(a) = sum(b)``).
    """
    p, outs = _run(a, b, M, reg, method, numItermax, stopThr, verbose, warn, warmstart, kwargs, SINKHORN2_METHODS)
    out = _costs(p, outs)
    return (out, _log(p, outs)) if log else out


# ----------------------------------------------------------------------------------------------
# Unbalanced OT: POT 0.9.7's ot.unbalanced.sinkhorn_unbalanced / sinkhorn_unbalanced2
# ----------------------------------------------------------------------------------------------
#: the ``method`` values of POT 0.9.7's ``ot.unbalanced.sinkhorn_unbalanced`` (all run the same driver)
UNBALANCED_METHODS = ("sinkhorn", "sinkhorn_stabilized", "sinkhorn_translation_invariant", "sinkhorn_reg_scaling")
UNBALANCED_NOT_CONVERGED = ("Unbalanced Sinkhorn did not converge: marginal L1 residual {err:.3g} > tol {tol:.3g} "
                            "after {n_iter} iterations. You might want to increase `numItermax`, the entropic "
                            "regularization `reg`, or lower `reg_m`.")
_LOG_1E300 = float(np.log(1e-300))  # POT's logu = log(u + 1e-300)


def _reg_m_pair(reg_m: Any) -> tuple[float, float]:
    """POT's ``reg_m`` (a number, or an indexable of length 1 or 2, possibly a backend array) as
    ``(rho_a, rho_b)``; each > 0 (``inf`` = hard marginal constraint)."""
    if _arrays.requires_grad(reg_m):
        raise ValueError("reg_m requires grad; no gradient is taken with respect to reg_m: pass a float")
    if isinstance(reg_m, (list, tuple)):
        vals = list(reg_m)
    elif isinstance(reg_m, Real):
        vals = [reg_m]
    else:
        try:
            arr = np.asarray(_arrays.to_numpy(reg_m), dtype=np.float64)
        except (TypeError, ValueError):
            raise ValueError(f"reg_m must be a number or a pair of numbers, got {reg_m!r}") from None
        if arr.ndim > 1:
            raise ValueError(f"reg_m must be a number or a pair of numbers, got shape {tuple(arr.shape)}")
        vals = [float(x) for x in arr.reshape(-1)]
    if len(vals) not in (1, 2):
        raise ValueError(f"reg_m must be a scalar or an indexable object of length 1 or 2, got length {len(vals)}")
    out = []
    for v in vals:
        try:
            r = float(np.asarray(_arrays.to_numpy(v), dtype=np.float64)) if not isinstance(v, Real) else float(v)
        except (TypeError, ValueError):
            raise ValueError(f"reg_m entries must be numbers, got {v!r}") from None
        if not r > 0:  # also NaN
            raise ValueError(f"reg_m must be > 0 (the strength of the KL marginal penalty; float('inf') for a hard "
                             f"marginal constraint), got {reg_m!r}")
        out.append(r)
    return (out[0], out[0]) if len(out) == 1 else (out[0], out[1])


class _UnbalancedInputs:
    """One ``sinkhorn_unbalanced`` call in core arrays (NumPy / CuPy), mapped onto otsolve's problem.

    otsolve solves ``<C, P> + reg KL(P | a⊗b) + rho_a KL(P1 | a) + rho_b KL(Pᵀ1 | b)``. POT's other
    references ``r`` (``reg_type="entropy"``: r = 1; a custom ``c``) change the objective by
    ``reg <P, log(a⊗b / r)>`` up to a constant, so they are the same problem on the cost
    ``C = M + reg log(a_i b_j / r_ij)``; the plan is unchanged, the linear cost is ``<M, P>``.
    """

    def __init__(self, a, b, M, reg, reg_m, method, reg_type, c, warmstart, numItermax, stopThr, kwargs):
        if not isinstance(method, str) or method.lower() not in UNBALANCED_METHODS:
            raise ValueError(f"Unknown method '{method}'. Known methods: {', '.join(UNBALANCED_METHODS)}.")
        self.method = method.lower()
        if self.method == "sinkhorn_reg_scaling":  # POT: the same warning, then classic Sinkhorn
            warnings.warn("Method not implemented yet (as in POT): method='sinkhorn_reg_scaling' runs the "
                          "log-domain Sinkhorn; pass epsilon_scaling=True for ε-scaling", UserWarning, stacklevel=4)
        if not isinstance(reg_type, str) or reg_type.lower() not in ("kl", "entropy"):
            raise ValueError(f"reg_type must be 'kl' (KL(P | a b^T), the default) or 'entropy' (KL(P | 1)), "
                             f"got {reg_type!r}")
        self.reg_type = reg_type.lower()
        self.info = _arrays.array_info(*(x for x in (M, a, b, c) if not _arrays.is_empty(x)))
        # torch tensors that require grad: solved by the torch layer (same core driver, implicit gradients)
        self.grad = _arrays.requires_grad(a, b, M, c)
        self.raw = (a, b, M, c)
        Mc = _cost_matrix(M)
        n, m = Mc.shape
        check_finite(Mc, "M")
        xp = np if isinstance(Mc, np.ndarray) else _arrays._cupy()
        self.xp, self.M, self.dtype = xp, Mc, np.dtype(str(Mc.dtype))
        dt = Mc.dtype
        self.a = (xp.full(n, 1.0 / n, dtype=dt) if _arrays.is_empty(a)
                  else check_weights(xp.asarray(_arrays.to_core(a)).astype(dt, copy=False), n, "a"))
        if _arrays.is_empty(b):
            bc = xp.full(m, 1.0 / m, dtype=dt)
        else:
            bc = xp.asarray(_arrays.to_core(b)).astype(dt, copy=False)
            if bc.ndim not in (1, 2) or bc.shape[0] != m:
                raise ValueError(f"b must have shape ({m},) or ({m}, n_hists) to match M {(n, m)}, "
                                 f"got {tuple(bc.shape)}")
            for k in range(bc.shape[1] if bc.ndim == 2 else 1):
                check_weights(bc[:, k] if bc.ndim == 2 else bc, m, "b" if bc.ndim == 1 else f"b[:, {k}]")
        self.b = bc
        self.n_hists = int(bc.shape[1]) if bc.ndim == 2 else 0
        if _arrays.requires_grad(reg):
            raise ValueError("reg requires grad; no gradient is taken with respect to reg: pass a float")
        self.reg = check_epsilon(reg.item() if hasattr(reg, "item") else reg, "reg")
        self.rho_a, self.rho_b = _reg_m_pair(reg_m)
        self.c = self._reference(c)
        self.costs = self._costs()
        max_iter = numItermax
        if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
            raise ValueError(f"numItermax must be an integer >= 0, got {numItermax!r}")
        self.max_iter = int(max_iter)
        mass_a = float(_arrays.to_numpy(self.a.sum()))
        mass_b = np.atleast_1d(_arrays.to_numpy(bc.sum(axis=0))).astype(np.float64)
        self.tol = self._tol(stopThr, mass_a, mass_b)
        self.opts = {k: v for k, v in kwargs.items() if k in _SINKHORN_OPTIONS}
        self.warn = bool(kwargs.get("warn", True))
        self.inits = self._warmstart(warmstart)

    # the reference measure of the entropic term ------------------------------------------------
    def _reference(self, c):
        """None for ``a⊗b`` (otsolve's own reference), else the (n, m) reference ``r``."""
        xp, (n, m) = self.xp, self.M.shape
        if self.n_hists:
            # POT uses K = exp(-M / reg), i.e. the reference 1, whatever reg_type and c are
            if self.reg_type == "kl":
                warnings.warn("several histograms b: the entropic term is reg * KL(P | 1) (reg_type='entropy'), as "
                              "in POT, whose multi-histogram solver implements only that", UserWarning, stacklevel=4)
            if c is not None:
                warnings.warn("c is ignored with several histograms b (as in POT)", UserWarning, stacklevel=4)
            return "ones"
        if self.reg_type == "entropy":
            if c is not None:
                warnings.warn("reg_type='entropy': c is replaced by the matrix of ones (as in POT)", UserWarning,
                              stacklevel=4)
            return "ones"
        if c is None:
            return None
        cc = xp.asarray(_arrays.to_core(c)).astype(self.M.dtype, copy=False)
        if cc.shape != (n, m):
            raise ValueError(f"c must have the shape of M {(n, m)}, got {tuple(cc.shape)}")
        check_finite(cc, "c")
        if bool(xp.any(cc < 0)):
            raise ValueError("c (the reference measure) has negative entries")
        ab = self.a[:, None] * self.b[None, :]
        if bool(xp.any((cc <= 0) & (ab > 0))):
            raise ValueError("c (the reference measure) must be > 0 wherever a_i b_j > 0: a zero entry forbids "
                             "transport there (infinite cost), which otsolve does not represent")
        return cc

    def _costs(self):
        return _equivalent_costs(self.xp, self.M, self.a, self.columns(self.b), self.c, self.reg)

    def columns(self, b) -> list:
        """The target histogram(s) as a list of (m,) arrays."""
        return [b[:, k] for k in range(self.n_hists)] if self.n_hists else [b]

    def _tol(self, stopThr, mass_a: float, mass_b) -> float:
        """POT's stopThr (relative change of the scalings) as otsolve's tol (L1 residual of the
        marginals to their targets): ``stopThr`` times the larger mass ``max(|a|, |b|)``."""
        try:
            t = float(stopThr)
        except (TypeError, ValueError):
            raise ValueError(f"stopThr must be a number >= 0, got {stopThr!r}") from None
        if not t >= 0 or not np.isfinite(t):
            raise ValueError(f"stopThr must be a finite number >= 0, got {stopThr!r}")
        scale = max(mass_a, float(mass_b.max()))
        floor = reachable_stopthr(self.dtype, scale)
        tol = t * scale
        if t == 0:
            return floor
        if tol < floor:
            warnings.warn(f"stopThr={t:g} is below what {self.dtype.name} arithmetic can reach (marginal residual "
                          f"~{floor:.2g}); using that level instead", UserWarning, stacklevel=4)
            return floor
        return tol

    def _warmstart(self, warmstart):
        """POT's warm start ``(log u, log v)`` (P = u_i r_ij exp(-M_ij / reg) v_j) as otsolve's
        potentials: ``f = reg (log u + log a + 1/2)``, ``g = reg (log v + log b + 1/2)``."""
        k = max(self.n_hists, 1)
        if warmstart is None:
            return None
        try:
            u, v = warmstart
        except (TypeError, ValueError):
            raise ValueError("warmstart must be a pair (log u, log v) of arrays (POT's dual potentials)") from None
        u = np.asarray(_arrays.to_numpy(u), dtype=np.float64)
        v = np.asarray(_arrays.to_numpy(v), dtype=np.float64)
        n, m = self.M.shape
        if u.shape[0] != n or v.shape[0] != m or u.ndim > 2 or v.ndim > 2:
            raise ValueError(f"warmstart (log u, log v) must have lengths ({n}, {m}), got shapes "
                             f"{tuple(u.shape)}, {tuple(v.shape)}")
        if not (np.isfinite(u).all() and np.isfinite(v).all()):
            raise ValueError("warmstart (log u, log v) has non-finite entries")
        a = _arrays.to_numpy(self.a).astype(np.float64)
        b = _arrays.to_numpy(self.b).astype(np.float64)
        fs, gs = [], []
        with np.errstate(divide="ignore"):
            for i in range(k):
                ui = u[:, i] if u.ndim == 2 else u
                vi = v[:, i] if v.ndim == 2 else v
                bi = b[:, i] if self.n_hists else b
                fs.append(np.where(a > 0, self.reg * (ui + np.log(np.where(a > 0, a, 1.0)) + 0.5), -np.inf))
                gs.append(np.where(bi > 0, self.reg * (vi + np.log(np.where(bi > 0, bi, 1.0)) + 0.5), -np.inf))
        if self.n_hists:
            return np.stack(fs), np.stack(gs)
        return fs[0], gs[0]

    # solve --------------------------------------------------------------------------------------
    def problem(self) -> LinearProblem | BatchedLinearProblem:
        if not self.n_hists:
            return LinearProblem(self.costs[0], self.a, self.b, epsilon=self.reg, rho_a=self.rho_a, rho_b=self.rho_b)
        xp = self.xp
        return BatchedLinearProblem(cost=xp.stack(self.costs), a=self.a, b=xp.ascontiguousarray(self.b.T),
                                    epsilon=self.reg, rho_a=self.rho_a, rho_b=self.rho_b)

    def solve(self):
        solver = Sinkhorn(tol=self.tol, max_iter=self.max_iter, warn=False, **self.opts)
        return solver(self.problem(), init=self.inits)

    def solve_torch(self):
        """The same problem through :func:`otsolve.torch.sinkhorn` (the core driver; the plan is
        differentiable in ``a``, ``b``, ``M``, ``c`` by implicit differentiation of the optimality
        conditions, the limit of POT's unrolled autodiff). Returns (SinkhornOutput, torch arrays)."""
        import torch  # noqa: PLC0415

        from .torch import sinkhorn as torch_sinkhorn  # noqa: PLC0415

        a, b, M, c = self.raw
        Mt = torch.as_tensor(M)
        dt = Mt.dtype if Mt.is_floating_point() else torch.float64
        Mt, dev = Mt.to(dt), Mt.device
        n, m = Mt.shape
        at = torch.full((n,), 1.0 / n, dtype=dt, device=dev) if _arrays.is_empty(a) else torch.as_tensor(a).to(dt)
        bt = torch.full((m,), 1.0 / m, dtype=dt, device=dev) if _arrays.is_empty(b) else torch.as_tensor(b).to(dt)
        ct = self.c if self.c is None or isinstance(self.c, str) else torch.as_tensor(c).to(dt)
        cols = self.columns(bt)
        costs = _equivalent_costs(torch, Mt, at, cols, ct, self.reg)
        init = self.inits
        if init is not None:
            init = tuple(torch.as_tensor(x, dtype=dt, device=dev) for x in init)
        scaling = self.opts.get("epsilon_scaling")
        scaling = (0.5 if scaling is True else float(scaling)) if scaling else None
        kw = dict(grad="implicit", tol=self.tol, max_iter=self.max_iter, epsilon_scaling=scaling, init=init,
                  rho_a=self.rho_a, rho_b=self.rho_b, compiled=bool(self.opts.get("compiled", True)),
                  n_threads=int(self.opts.get("n_threads", 0)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # reported POT's way by the caller
            if self.n_hists:
                K = self.n_hists
                out = torch_sinkhorn(at.unsqueeze(0).expand(K, n), bt.T, torch.stack(costs), self.reg, **kw)
            else:
                out = torch_sinkhorn(at, bt, costs[0], self.reg, **kw)
        return out, dict(xp=torch, M=Mt, a=at, cols=cols, c=ct)


def _equivalent_costs(xp, M, a, cols, c, reg: float) -> list:
    """The cost(s) of otsolve's problem for POT's reference ``c``: M itself for ``a⊗b`` (c None),
    else ``M + reg (log a_i + log b_j - log c_ij)`` (c = "ones": the reference 1), one (n, m) cost
    per histogram; entries where ``a_i b_j = 0`` get no shift (their plan entries are 0 anyway).
    NumPy, CuPy or torch (differentiable) arrays."""
    if c is None:
        return [M]
    la = xp.log(xp.where(a > 0, a, 1.0))
    out = []
    for bk in cols:
        lb = xp.log(xp.where(bk > 0, bk, 1.0))
        shift = la[:, None] + lb[None, :]
        if not isinstance(c, str):
            ab = (a[:, None] > 0) & (bk[None, :] > 0)
            shift = shift - xp.where(ab, xp.log(xp.where(ab, c, 1.0)), 0.0)
        out.append(M + reg * shift)
    return out


def _kl_pot(xp, p, q):
    """POT's ``nx.kl_div(p, q)`` = Σ p log(p/q + 1e-16) (no mass terms), with 0 log 0 = 0 (POT: NaN)."""
    pos = p > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        t = p * xp.log(xp.where(pos, p, 1.0) / xp.where(pos, q, 1.0) + 1e-16)
    return xp.where(pos, t, 0.0).sum()


class _UnbalancedOutcome:
    """Plan(s), POT's costs and log of a solved :class:`_UnbalancedInputs`."""

    def __init__(self, p: _UnbalancedInputs, res, arrays: dict | None = None):
        """``res``: the core's OTResult (core arrays), or the torch layer's SinkhornOutput with
        ``arrays`` (its torch ``M``, ``a``, ``cols``, ``c``; the plan and costs then differentiable)."""
        self.p, self.res, self.torch = p, res, arrays is not None
        if arrays is None:
            arrays = dict(xp=p.xp, M=p.M, a=p.a, cols=p.columns(p.b), c=p.c)
        self.xp, self.M, self.a, self.cols, self.c = (arrays[k] for k in ("xp", "M", "a", "cols", "c"))
        multi = bool(p.n_hists)
        self.plans = res.plan  # (n, m) or (K, n, m)
        if self.torch:
            self.converged = np.atleast_1d(res.converged.detach().cpu().numpy()).astype(bool)
            self.n_iters = np.atleast_1d(res.n_iter.detach().cpu().numpy())
            self.errors = np.atleast_1d(res.marginal_error.detach().cpu().double().numpy())
            self.history = [float(self.errors.max())]
            self.diverged = ~np.isfinite(self.errors)
        elif multi:
            self.converged = np.asarray(res.converged_each, dtype=bool)
            self.n_iters = np.asarray(res.n_iter_each)
            self.errors = np.asarray(res.marginal_errors, dtype=float)
        else:
            self.converged = np.array([res.converged])
            self.n_iters = np.array([res.n_iter])
            self.errors = np.array([res.marginal_error])
        if not self.torch:
            self.history = [float(e) for e in res.errors]
            self.diverged = np.atleast_1d(np.asarray(getattr(res, "status_each", res.status)) == "diverged")
        self.linear = self.xp.einsum("ij,kij->k", self.M, self.plans) if multi else (self.M * self.plans).sum()

    def total(self):
        """POT's ``total_cost``: <M, P> + reg kl(P, r) + reg_m1 kl(P1, a) + reg_m2 kl(Pᵀ1, b)
        (``kl`` without mass terms, as POT computes it), one per histogram."""
        p, xp, a, c = self.p, self.xp, self.a, self.c
        plans = self.plans if p.n_hists else self.plans[None]
        out = []
        for P, bk in zip(plans, self.cols):
            r = a[:, None] * bk[None, :] if c is None else xp.ones_like(P) if isinstance(c, str) else c
            t = (self.M * P).sum() + p.reg * _kl_pot(xp, P, r)
            if np.isfinite(p.rho_a):
                t = t + p.rho_a * _kl_pot(xp, P.sum(1), a)
            if np.isfinite(p.rho_b):
                t = t + p.rho_b * _kl_pot(xp, P.sum(0), bk)
            out.append(t)
        return xp.stack(out) if p.n_hists else out[0]

    def report(self, verbose: bool) -> None:
        p = self.p
        if verbose:
            print("{:5s}|{:12s}".format("It.", "Err") + "\n" + "-" * 19)
            hist = self.history
            for i, e in enumerate(hist):
                if i % 10 == 0 or i == len(hist) - 1:
                    print("{:5d}|{:8e}|".format(i, e))
        if self.diverged.any():
            warnings.warn(f"Numerical errors at iteration {int(self.n_iters.max())}", UserWarning, stacklevel=4)
        elif not self.converged.all() and p.warn:
            bad = ~self.converged
            warnings.warn(UNBALANCED_NOT_CONVERGED.format(err=float(np.nanmax(self.errors[bad])), tol=p.tol,
                                                          n_iter=int(self.n_iters[bad].max())),
                          UserWarning, stacklevel=4)

    def value(self, x):
        """A cost (0-d, or (K,)) in the caller's library: a NumPy scalar for NumPy input, as POT."""
        p = self.p
        if self.torch:
            return x  # already the caller's tensor (differentiable)
        if p.info.library == "numpy" and not p.n_hists:
            return p.dtype.type(_arrays.to_numpy(x))
        return _arrays.from_core(x, p.info)

    def plan_out(self):
        """The plan (one histogram) or the linear costs (several), in the caller's library."""
        x = self.linear if self.p.n_hists else self.plans
        return x if self.torch else _arrays.from_core(x, self.p.info)

    def log(self) -> dict:
        """POT's log: ``err``, ``logu``, ``logv`` (+ ``cost``, ``total_cost`` for one histogram) and
        otsolve's ``result`` (the OTResult)."""
        p, res = self.p, self.res
        multi = bool(p.n_hists)
        f = np.asarray(_arrays.to_numpy(res.f), dtype=np.float64)  # (detached views for torch)
        g = np.asarray(_arrays.to_numpy(res.g), dtype=np.float64)
        a = _arrays.to_numpy(p.a).astype(np.float64)
        b = _arrays.to_numpy(p.b).astype(np.float64)
        b = b.T if multi else b
        fs, gs = (f, g) if multi else (f[None], g[None])
        bs = b if multi else b[None]
        lus, lvs = [], []
        for fk, gk, bk in zip(fs, gs, bs):
            if np.isinf(p.rho_a) and np.isinf(p.rho_b):
                fk, gk = _balanced_gauge(fk, gk)  # only log u ⊕ log v is determined
            with np.errstate(divide="ignore", invalid="ignore"):
                xu = np.where(a > 0, fk / p.reg - np.log(np.where(a > 0, a, 1.0)) - 0.5, -np.inf)
                xv = np.where(bk > 0, gk / p.reg - np.log(np.where(bk > 0, bk, 1.0)) - 0.5, -np.inf)
            lus.append(np.logaddexp(xu, _LOG_1E300))
            lvs.append(np.logaddexp(xv, _LOG_1E300))
        logu = np.stack(lus, 1) if multi else lus[0]
        logv = np.stack(lvs, 1) if multi else lvs[0]
        back = lambda x: _arrays.from_core(x, p.info)  # noqa: E731
        log: dict[str, Any] = {"err": list(self.history), "logu": back(logu), "logv": back(logv)}
        if not multi:
            log["cost"] = self.value(self.linear)
            log["total_cost"] = self.value(self.total())
        log["result"] = res
        return log


def _unbalanced(a, b, M, reg, reg_m, method, reg_type, c, warmstart, numItermax, stopThr, verbose, kwargs):
    p = _UnbalancedInputs(a, b, M, reg, reg_m, method, reg_type, c, warmstart, numItermax, stopThr, kwargs)
    out = _UnbalancedOutcome(p, *p.solve_torch()) if p.grad else _UnbalancedOutcome(p, p.solve())
    out.report(verbose)
    return p, out


def sinkhorn_unbalanced(a, b, M, reg: float, reg_m: Any, method: str = "sinkhorn", reg_type: str = "kl", c: Any = None,
                        warmstart: Any = None, numItermax: int = 1000, stopThr: float = 1e-6, verbose: bool = False,
                        log: bool = False, **kwargs: Any):
    r"""Unbalanced entropic OT plan with POT 0.9.7's ``ot.unbalanced.sinkhorn_unbalanced`` signature.

    Solves (Chizat et al. 2018; Frogner et al. 2015)

    .. math::
        \min_{P \ge 0} \langle M, P\rangle + \mathrm{reg}\,\mathrm{KL}(P | c)
        + \mathrm{reg_{m1}} \mathrm{KL}(P 1 | a) + \mathrm{reg_{m2}} \mathrm{KL}(P^T 1 | b)

    by otsolve's log-domain Sinkhorn driver (:class:`otsolve.Sinkhorn` on a
    :class:`otsolve.LinearProblem` with ``rho_a = reg_m1``, ``rho_b = reg_m2``); the updates are
    the balanced ones damped by ``reg_m / (reg_m + reg)``, so no variant overflows.

    Parameters
    ----------
    a : array (n,) or []
        Source weights, any nonnegative masses ([] or None: uniform ``1/n``).
    b : array (m,), (m, k) or []
        Target weights ([]: uniform); with k columns, k problems are solved (one batch) and their
        linear costs ``<M, P_k>`` returned, as POT does. POT's multi-histogram solver uses the
        reference ``c = 1`` (``reg_type="entropy"``) whatever ``reg_type`` and ``c`` are; so
        does this function (with a UserWarning when ``reg_type="kl"`` or ``c`` is given).
    M : array (n, m)
        Cost matrix (NumPy, CuPy, PyTorch or JAX; outputs have its library, device and dtype).
    reg : float
        Entropic weight ε > 0.
    reg_m : float or pair
        Marginal relaxation ``(reg_m1, reg_m2)`` > 0; a scalar (or length-1 object) for both
        sides; ``float("inf")`` makes that marginal a hard constraint (semi-relaxed OT; both inf
        is balanced entropic OT, which needs equal masses).
    method : {"sinkhorn", "sinkhorn_stabilized", "sinkhorn_translation_invariant", "sinkhorn_reg_scaling"}
        Accepted for compatibility: all run the same log-domain iterations (same fixed point).
        "sinkhorn_reg_scaling" warns "not implemented", as POT does (pass ``epsilon_scaling=True``
        for ε-scaling).
    reg_type : {"kl", "entropy"}
        Reference of the entropic term: ``c = a b^T`` ("kl", default) or ``c = 1`` ("entropy").
        Both, and a custom ``c``, are the same problem as otsolve's on the cost
        ``M + reg log(a_i b_j / c_ij)``, which is what is solved (the plan and the returned costs
        are those of the problem above).
    c : array (n, m), optional
        Custom reference measure (reg_type="kl" only); must be > 0 wherever ``a_i b_j > 0``.
    warmstart : (array, array), optional
        POT's ``(log u, log v)`` (the plan is ``u_i c_ij exp(-M_ij / reg) v_j``), e.g.
        ``(log["logu"], log["logv"])``.
    numItermax : int
        Iteration budget (one iteration updates both potentials).
    stopThr : float
        Stopping tolerance, **not on the same quantity as POT's**: POT stops when the relative change
        of the scalings ``u``, ``v`` falls below ``stopThr``; otsolve stops when the L1 distance of
        the plan's marginals to their optimality targets ``a exp(-φ/reg_m1)``, ``b exp(-ψ/reg_m2)``
        (zero exactly at the solution; ``a``, ``b`` on a hard side) is at most
        ``stopThr * max(|a|, |b|)`` (a relative residual; for unit masses, ``stopThr``), measured on
        the returned plan. A value below what the dtype can reach is raised to that level (with a
        UserWarning); ``0`` means that level.
    verbose : bool
        Print the residual table.
    log : bool
        Also return POT's log dict: ``err`` (residual per iteration), ``logu``, ``logv`` (POT's
        ``log(u + 1e-300)``), and for one histogram ``cost`` (``<M, P>``) and ``total_cost``
        (POT's formula, see :func:`sinkhorn_unbalanced2`); plus otsolve's ``result`` (OTResult
        with ``converged``, ``marginal_error``, ``n_iter``, ``value``).
    **kwargs
        :class:`otsolve.Sinkhorn` options (``omega``, ``epsilon_scaling``, ``compiled``,
        ``n_threads``, ...) and ``warn`` (default True: UserWarning when ``stopThr`` is not
        reached; POT's classic method says nothing). Other keywords (POT's ``tau``) are ignored.

    Returns
    -------
    P : array (n, m), or the linear costs (k,) when ``b`` has k columns
    log : dict, only when ``log=True``

    Notes
    -----
    Torch tensors that require grad are solved by :func:`otsolve.torch.sinkhorn` (the same core
    driver) with implicit gradients: the plan, the costs and ``total_cost`` are differentiable in
    ``a``, ``b``, ``M`` and ``c``, with the gradients POT's autodiff through its iterations
    converges to (``logu``, ``logv`` are detached).

    Raises
    ------
    ValueError
        Unknown ``method`` / ``reg_type``; ``reg <= 0``; ``reg_m <= 0`` or NaN; NaN / inf in ``M``,
        ``a``, ``b``, ``c``; negative weights; both ``reg_m`` infinite with unequal masses.

    References
    ----------
    L. Chizat, G. Peyré, B. Schmitzer, F.-X. Vialard, "Scaling algorithms for unbalanced optimal
    transport problems", Math. Comp. 87 (2018). C. Frogner, C. Zhang, H. Mobahi, M. Araya-Polo,
    T. Poggio, "Learning with a Wasserstein loss", NeurIPS 2015. T. Séjourné, J. Feydy,
    F.-X. Vialard, A. Trouvé, G. Peyré, "Sinkhorn divergences for unbalanced optimal transport",
    arXiv:1910.12958 (2019).
    """
    p, out = _unbalanced(a, b, M, reg, reg_m, method, reg_type, c, warmstart, numItermax, stopThr, verbose, kwargs)
    ret = out.plan_out()
    return (ret, out.log()) if log else ret


def sinkhorn_unbalanced2(a, b, M, reg: float, reg_m: Any, method: str = "sinkhorn", reg_type: str = "kl",
                         c: Any = None, warmstart: Any = None, returnCost: str = "linear", numItermax: int = 1000,
                         stopThr: float = 1e-6, verbose: bool = False, log: bool = False, **kwargs: Any):
    r"""Unbalanced entropic OT loss with POT 0.9.7's ``ot.unbalanced.sinkhorn_unbalanced2`` signature.

    Same problem and parameters as :func:`sinkhorn_unbalanced`. ``returnCost="linear"`` (default)
    returns ``<M, P>``; ``"total"`` returns POT's ``total_cost``
    ``<M, P> + reg kl(P, c) + reg_m1 kl(P1, a) + reg_m2 kl(Pᵀ1, b)`` with POT's
    ``kl(p, q) = Σ p log(p/q + 1e-16)`` (no ``- p + q`` mass terms, so this is the objective up to
    those terms; otsolve's own objective is ``log["result"].value``; entries with ``p = 0`` count
    0 where POT's formula gives NaN). Returns a 0-d value (a NumPy scalar for NumPy input), or
    ``k`` values for ``b`` of shape (m, k) (there POT ignores ``returnCost`` and returns the linear
    costs; otsolve honours ``"total"``). ``log=True`` adds the log of :func:`sinkhorn_unbalanced`.
    """
    if returnCost not in ("linear", "total"):
        raise ValueError(f"Unknown returnCost = {returnCost}; use 'linear' or 'total'")
    p, out = _unbalanced(a, b, M, reg, reg_m, method, reg_type, c, warmstart, numItermax, stopThr, verbose, kwargs)
    cost = out.value(out.linear if returnCost == "linear" else out.total())
    return (cost, out.log()) if log else cost
