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
from .problems import LinearProblem
from .solvers.sinkhorn import Sinkhorn

__all__ = ["sinkhorn", "sinkhorn2", "SINKHORN_METHODS", "SINKHORN2_METHODS", "reachable_stopthr"]

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


class _Prepared:
    """Inputs of one call in core arrays (NumPy / CuPy) plus what to convert back to."""

    def __init__(self, a, b, M, reg, method, numItermax, stopThr, warmstart, kwargs):
        self.method = method
        self.info = _arrays.array_info(*(x for x in (M, a, b) if not _arrays.is_empty(x)))
        self.grad = _arrays.requires_grad(a, b, M)
        self.inputs = (a, b, M)
        Mc = _arrays.to_core(M)
        if Mc.ndim != 2:
            hint = (" For 1-D samples x, y build the cost with otsolve.pot.dist(x.reshape(-1, 1), "
                    "y.reshape(-1, 1)).") if Mc.ndim == 1 else ""
            raise ValueError(f"M must be a 2-D cost matrix of shape (len(a), len(b)), got shape {tuple(Mc.shape)}.{hint}")
        if Mc.dtype.kind in "biu":
            Mc = Mc.astype(np.float64)
        n, m = Mc.shape
        if n == 0 or m == 0:
            raise ValueError(f"M is empty (shape {tuple(Mc.shape)})")
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
