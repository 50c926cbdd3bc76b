"""POT-shaped module: ``import otsolve.pot as ot`` and keep POT's everyday calls.

``solve``, ``solve_sample``, ``emd``, ``emd2``, ``dist``, ``sinkhorn``, ``sinkhorn2``,
``sinkhorn_unbalanced``, ``sinkhorn_unbalanced2`` (also as ``ot.unbalanced.*``) take POT 0.9.7's
arguments in POT's order and return what POT returns (``solve`` gives POT's own
``ot.utils.OTResult``: ``value``, ``value_linear``, ``plan``, ``potentials``, ``status``, ...;
its ``log["result"]`` holds otsolve's :class:`~otsolve.OTResult` with ``converged``,
``marginal_error`` and the iteration counts). Balanced problems run otsolve's solvers (log-domain
Sinkhorn, exact OT through POT's network simplex, SNS with ``method="sns"``), and so does
entropic unbalanced OT with KL marginal penalties (``solve(..., reg>0, unbalanced=...)``); what
otsolve has no solver for (other unbalanced types, unregularized unbalanced OT, other
regularizers, sliced / Gaussian / low-rank sample solvers, ``c=`` for balanced OT) is forwarded
to POT itself, so every call still works. Arrays of any
library come back in that library, device and dtype; torch values are differentiable. See
``docs/pot.md``.
"""
from __future__ import annotations

import types
import warnings
from typing import Any

import numpy as np

from . import _arrays
from .pot_compat import sinkhorn, sinkhorn2, sinkhorn_unbalanced, sinkhorn_unbalanced2
from .problems import LinearProblem

__all__ = ["solve", "solve_sample", "emd", "emd2", "dist", "sinkhorn", "sinkhorn2", "sinkhorn_unbalanced",
           "sinkhorn_unbalanced2", "unbalanced", "unif", "InputError"]

#: POT's ``ot.unbalanced`` namespace (the entropic solvers: ``ot.unbalanced.sinkhorn_unbalanced(...)``)
unbalanced = types.SimpleNamespace(sinkhorn_unbalanced=sinkhorn_unbalanced,
                                   sinkhorn_unbalanced2=sinkhorn_unbalanced2)


def _ot():
    import ot  # noqa: PLC0415  (POT: a dependency, imported on first use)

    return ot


def _pot_solver(name: str):
    """POT's ``solve`` / ``solve_sample`` from the defining module (forwarding keeps working when
    ``ot.solve`` is monkeypatched to ``otsolve.pot.solve``)."""
    try:
        import ot.solvers._linear as linear  # noqa: PLC0415

        return getattr(linear, name)
    except (ImportError, AttributeError):  # pragma: no cover - other POT layouts
        return getattr(_ot(), name)


def dist(x1, x2=None, metric: str = "sqeuclidean", p: float = 2, w=None):
    """POT's ``ot.dist`` (pairwise cost matrix; squared Euclidean by default), any array library.

    This is POT's own function: otsolve keeps one convention with POT for cost matrices.
    """
    return _ot().dist(x1, x2, metric=metric, p=p, w=w)


def unif(n: int, type_as=None):
    """Uniform weights ``1/n`` (POT's ``ot.unif``)."""
    return _ot().unif(n, type_as=type_as)


# ----------------------------------------------------------------------------------------------
def _attach(value, pairs):
    """``value`` (a torch 0-d tensor) with the gradient ``g`` for each ``(x, g)`` (envelope theorem):
    ``value + Σ <x - x.detach(), g>`` has the same value and gradient ``g`` w.r.t. ``x``."""
    out = value.detach()
    for x, g in pairs:
        if _arrays.requires_grad(x):
            out = out + (x * g.detach()).sum() - (x.detach() * g.detach()).sum()
    return out


def _weights_in(w, n, info, ref):
    if _arrays.is_empty(w):
        return _arrays.from_core(np.full(n, 1.0 / n), info)
    return w


def _exact(a, b, M, max_iter, n_threads, potentials_init):
    """Exact OT of core arrays; (OTResult, plan, u, v) with the result's arrays on the host."""
    from .solvers.exact import ExactOT  # noqa: PLC0415

    res = ExactOT(max_iter=max_iter, n_threads=max(int(n_threads), 1), warn=False)(
        LinearProblem(M, a, b), init=potentials_init)
    return res


class InputError(ValueError, AssertionError):
    """Bad input to :func:`emd` / :func:`emd2`: a ``ValueError`` that is also the ``AssertionError``
    POT raises there, so code written against POT keeps catching it."""


def _pot_lp(name: str):
    try:
        import ot.lp._network_simplex as ns  # noqa: PLC0415  (defining module: robust to monkeypatching)

        return getattr(ns, name)
    except (ImportError, AttributeError):  # pragma: no cover - other POT layouts
        return getattr(_ot(), name)


def _is_sparse(M) -> bool:
    try:
        return bool(_ot().backend.get_backend(M).issparse(M))
    except Exception:  # noqa: BLE001  (not a POT-backend array)
        return False


def _emd_inputs(a, b, M, check_marginals):
    info = _arrays.array_info(*(x for x in (M, a, b) if not _arrays.is_empty(x)))
    Mc = _arrays.to_numpy(M)
    if Mc.ndim != 2:
        raise InputError(f"M must be a 2-D cost matrix of shape (len(a), len(b)), got shape {tuple(Mc.shape)}")
    Mc = Mc.astype(np.float64) if Mc.dtype.kind in "biu" else Mc
    n, m = Mc.shape
    ac = np.full(n, 1.0 / n) if _arrays.is_empty(a) else _arrays.to_numpy(a)
    bc = np.full(m, 1.0 / m) if _arrays.is_empty(b) else _arrays.to_numpy(b)
    if ac.shape != (n,) or bc.shape[0] != m or bc.ndim > 2:
        raise InputError(f"a has length {ac.shape} and b shape {bc.shape}, but M has shape {(n, m)}: a must have "
                         f"length M.shape[0] and b length M.shape[1]")
    if check_marginals:
        mass_b = bc.sum(0)
        if np.any(np.abs(ac.sum() - mass_b) > 1e-6 * max(1.0, float(ac.sum()))):
            raise InputError(f"a and b have different masses ({ac.sum()!r} vs {mass_b!r}); exact OT needs equal "
                             "masses (normalize them, e.g. a / a.sum() and b / b.sum())")
    return info, Mc, ac, bc


def emd(a, b, M, numItermax: int = 100000, log: bool = False, center_dual: bool = True, numThreads: int = 1,
        check_marginals: bool = True, potentials_init=None):
    """Exact OT plan with POT's ``ot.emd`` signature (POT's network simplex through otsolve's
    ``method="emd"`` solver). ``log=True`` adds POT's dict (``cost``, ``u``, ``v``, ``warning``,
    ``result_code``) and otsolve's ``result``. Duals are centred as POT's (``center_dual`` is
    accepted for compatibility). Sparse cost matrices (POT 0.9.7's sparse graphs) are forwarded
    to POT's ``emd``. Bad shapes or unequal masses raise :class:`InputError` (a ValueError and
    POT's AssertionError)."""
    if _is_sparse(M):
        return _pot_lp("emd")(a, b, M, numItermax=numItermax, log=log, center_dual=center_dual,
                              numThreads=numThreads, check_marginals=check_marginals, potentials_init=potentials_init)
    info, Mc, ac, bc = _emd_inputs(a, b, M, check_marginals)
    init = None if potentials_init is None else tuple(_arrays.to_numpy(x) for x in potentials_init)
    res = _exact(ac, bc, Mc, numItermax, numThreads, init)
    _warn_exact(res)
    P = _arrays.from_core(res.plan, info)
    if not log:
        return P
    return P, _emd_log(res, info)


def _warn_exact(res):
    if res.result_code != 1:
        warnings.warn(res.message, UserWarning, stacklevel=3)  # POT warns (UserWarning) too


def _emd_log(res, info):
    return {"cost": res.cost, "u": _arrays.from_core(res.f, info), "v": _arrays.from_core(res.g, info),
            "warning": None if res.result_code == 1 else res.message, "result_code": res.result_code,
            "result": res}


def emd2(a, b, M, processes: int = 1, numItermax: int = 100000, log: bool = False, return_matrix: bool = False,
         center_dual: bool = True, numThreads: int = 1, check_marginals: bool = True, potentials_init=None):
    """Exact OT loss ``<M, P>`` with POT's ``ot.emd2`` signature and returns: the loss, or
    ``[loss, log]`` when ``log`` or ``return_matrix`` (then ``log["G"]`` is the plan); ``b`` of
    shape (m, k) gives a list of k such results, as POT. Torch inputs give a differentiable loss
    (gradients as POT: ``P`` for ``M``, the centred duals ``u - mean(u)``, ``v - mean(v)`` for ``a``
    and ``b``)."""
    if _is_sparse(M):
        return _pot_lp("emd2")(a, b, M, processes=processes, numItermax=numItermax, log=log,
                               return_matrix=return_matrix, center_dual=center_dual, numThreads=numThreads,
                               check_marginals=check_marginals, potentials_init=potentials_init)
    info, Mc, ac, bc = _emd_inputs(a, b, M, check_marginals)
    init = None if potentials_init is None else tuple(_arrays.to_numpy(x) for x in potentials_init)

    def one(k):
        bk = bc[:, k] if bc.ndim == 2 else bc
        res = _exact(ac, bk, Mc, numItermax, numThreads, init)
        _warn_exact(res)
        if _arrays.requires_grad(a, b, M):
            bb = b[:, k] if bc.ndim == 2 else b
            f, g = res.f - res.f.mean(), res.g - res.g.mean()
            val = _attach(_arrays.from_core(np.asarray(res.cost), info),
                          [(M, _arrays.from_core(res.plan, info)), (a, _arrays.from_core(f, info)),
                           (bb, _arrays.from_core(g, info))])
        elif info.library == "numpy":
            val = np.dtype(str(Mc.dtype)).type(res.cost)
        else:
            val = _arrays.from_core(np.asarray(res.cost), info)
        if not (log or return_matrix):
            return val
        lg = _emd_log(res, info)
        lg["cost"] = val
        if return_matrix:
            lg["G"] = _arrays.from_core(res.plan, info)
        return [val, lg]

    if bc.ndim == 2:
        return [one(k) for k in range(bc.shape[1])]
    return one(0)


# ----------------------------------------------------------------------------------------------
_FORWARD_NOTE = "otsolve has no solver for this case; it is forwarded to POT (ot.{})"


def solve(M, a=None, b=None, reg=None, c=None, reg_type="KL", unbalanced=None, unbalanced_type="KL",
          method=None, n_threads: int = 1, max_iter=None, plan_init=None, potentials_init=None, tol=None,
          verbose: bool = False, grad: str = "autodiff"):
    """POT's ``ot.solve(M, a, b, reg=...)``: exact (``reg`` None or 0) or entropic balanced OT.

    Returns POT's ``OTResult`` (``value``, ``value_linear``, ``plan``, ``potentials``,
    ``status``, ``log``), with POT's conventions: entropic ``reg_type="KL"`` (default) gives
    ``value = <M, P> + reg KL(P | a b^T)``, ``"entropy"`` gives ``<M, P> + reg Σ P log P``;
    potentials are POT's ``(log u, log v)`` for entropic OT and the Kantorovich duals (cost units)
    for exact OT. ``log["result"]`` is otsolve's OTResult (``converged``, ``marginal_error``, ...).

    ``method`` may also be an otsolve solver for balanced entropic OT (``"sns"``); ``grad``:
    ``"autodiff"`` (default; exact gradient of the returned values through the optimality
    conditions, the limit of POT's unrolled autodiff), ``"envelope"`` (POT's envelope gradients of
    ``value``), ``"detach"``; ``"last_step"`` is treated as ``"autodiff"``.

    Entropic unbalanced OT with KL penalties (``reg > 0``, ``unbalanced`` a number or a pair,
    ``reg_type="KL"``, ``unbalanced_type="KL"``, optional reference ``c``) runs otsolve's
    Sinkhorn through :func:`sinkhorn_unbalanced` (POT calls its ``sinkhorn_knopp_unbalanced``
    there): ``value`` is POT's ``total_cost``, ``value_linear`` the linear cost ``<M, P>``,
    ``potentials`` POT's ``(log u, log v)``, ``tol`` (default 1e-9) as that function's
    ``stopThr``; torch values and plans are differentiable (implicit gradients, the limit of POT's
    autodiff there, whatever ``grad`` unless ``"detach"``). Other unbalanced types (``"L2"``,
    ``"TV"``), unregularized unbalanced OT, ``c`` for balanced OT and other ``reg_type`` are
    forwarded to POT's ``ot.solve``.
    """
    if _unbalanced_kl(M, a, b, reg, c, reg_type, unbalanced, unbalanced_type, method, grad):
        return _solve_unbalanced(M, a, b, reg, c, unbalanced, potentials_init, max_iter, tol, verbose, grad)
    if (unbalanced is not None or c is not None or isinstance(reg_type, tuple)
            or str(reg_type).lower() not in ("kl", "entropy")):
        return _pot_solver("solve")(M, a, b, reg=reg, c=c, reg_type=reg_type, unbalanced=unbalanced,
                           unbalanced_type=unbalanced_type, method=method, n_threads=n_threads, max_iter=max_iter,
                           plan_init=plan_init, potentials_init=potentials_init, tol=tol, verbose=verbose, grad=grad)
    valid = ("sinkhorn", "sinkhorn_log", "sns")
    if method is not None and str(method).lower() not in valid:
        raise ValueError(f"Unknown method={method} for solve, must be in {list(valid)} (or None)")
    if grad not in ("autodiff", "envelope", "detach", "last_step", "implicit"):
        raise ValueError(f"grad must be 'autodiff', 'envelope', 'last_step' or 'detach', got {grad!r}")
    ot = _ot()
    nx = ot.backend.get_backend(*(x for x in (M, a, b) if x is not None))
    info = _arrays.array_info(*(x for x in (M, a, b) if x is not None))
    n, m = M.shape if getattr(M, "ndim", 2) == 2 else (None, None)
    if n is None:
        raise ValueError(f"M must be a 2-D cost matrix, got shape {tuple(M.shape)}")
    a = _weights_in(a, n, info, M) if a is None else a
    b = _weights_in(b, m, info, M) if b is None else b
    reg = 0.0 if reg is None else reg
    if float(reg) == 0:
        if grad == "detach":
            M, a, b = nx.detach(M, a, b)
        value_linear, lg = emd2(a, b, M, numItermax=1000000 if max_iter is None else max_iter, log=True,
                                return_matrix=True, numThreads=n_threads, potentials_init=potentials_init)
        return ot.utils.OTResult(potentials=(lg["u"], lg["v"]), value=value_linear, value_linear=value_linear,
                                 plan=lg["G"], status="Converged" if lg["warning"] is None else lg["warning"],
                                 backend=nx, log=lg)
    max_iter = 1000 if max_iter is None else max_iter
    if grad == "last_step" and max_iter == 0:
        raise ValueError("The maximum number of iterations must be greater than 0 when using grad=last_step.")
    tol = 1e-9 if tol is None else tol
    if grad in ("envelope", "detach"):
        M0, a0, b0 = M, a, b
        M, a, b = nx.detach(M, a, b)
    init = None if potentials_init is None else potentials_init
    if method is not None and str(method).lower() == "sns":
        plan, lg = _solve_sns(a, b, M, float(reg), max_iter, tol, info)
    else:
        plan, lg = sinkhorn(a, b, M, reg, method="sinkhorn_log", numItermax=max_iter, stopThr=tol, verbose=verbose,
                            log=True, warn=True, warmstart=init)
    potentials = (lg["log_u"], lg["log_v"])
    value_linear = nx.sum(M * plan)
    if str(reg_type).lower() == "entropy":
        value = value_linear + reg * nx.sum(plan * nx.log(plan + 1e-16))
    else:
        value = value_linear + reg * nx.kl_div(plan, a[:, None] * b[None, :] + 1e-15)
    if grad == "envelope" and _arrays.requires_grad(M0, a0, b0):
        lu, lv = potentials
        value = _attach(value, [(M0, plan), (a0, reg * (lu - lu.mean())), (b0, reg * (lv - lv.mean()))])
    return ot.utils.OTResult(potentials=potentials, value=value, value_linear=value_linear, plan=plan,
                             status="Converged" if _converged(lg) else "Not converged", backend=nx, log=lg)


def _unbalanced_kl(M, a, b, reg, c, reg_type, unbalanced, unbalanced_type, method, grad) -> bool:
    """Whether ``solve``'s arguments are entropic KL-unbalanced OT that otsolve's Sinkhorn solves."""
    if unbalanced is None or reg is None or isinstance(reg_type, tuple) or str(reg_type).lower() != "kl":
        return False
    if not isinstance(unbalanced_type, str) or unbalanced_type.lower() != "kl":
        return False
    if method is not None and str(method).lower() not in ("sinkhorn", "sinkhorn_log"):
        return False
    try:
        if not float(_arrays.to_numpy(reg)) > 0:
            return False
    except (TypeError, ValueError):
        return False
    return True


def _solve_unbalanced(M, a, b, reg, c, unbalanced, potentials_init, max_iter, tol, verbose, grad):
    """POT's entropic KL-unbalanced branch of ``ot.solve`` by :func:`sinkhorn_unbalanced`."""
    ot = _ot()
    nx = ot.backend.get_backend(*(x for x in (M, a, b, c) if x is not None))
    if grad == "detach":
        M, a, b = (None if x is None else nx.detach(x) for x in (M, a, b))
        c = None if c is None else nx.detach(c)
    reg_f = float(_arrays.to_numpy(reg))
    plan, lg = sinkhorn_unbalanced(a, b, M, reg_f, unbalanced, reg_type="kl", c=c, warmstart=potentials_init,
                                   numItermax=1000 if max_iter is None else max_iter,
                                   stopThr=1e-9 if tol is None else tol, verbose=verbose, log=True)
    return ot.utils.OTResult(potentials=(lg["logu"], lg["logv"]), value=lg["total_cost"], value_linear=lg["cost"],
                             plan=plan, status="Converged" if _converged(lg) else "Not converged", backend=nx,
                             log=lg)


def _converged(lg) -> bool:
    return bool(getattr(lg.get("result"), "converged", False))


def _solve_sns(a, b, M, reg, max_iter, tol, info):
    """Balanced entropic OT by otsolve's Sinkhorn-Newton-Sparse, in POT's log format."""
    from .solvers.sns import SinkhornNewtonSparse  # noqa: PLC0415

    if _arrays.requires_grad(a, b, M):
        raise ValueError("method='sns' does not differentiate; use method=None (Sinkhorn) or grad='detach'")
    Mc = _arrays.to_numpy(M)
    prob = LinearProblem(Mc, _arrays.to_numpy(a), _arrays.to_numpy(b), epsilon=reg)
    res = SinkhornNewtonSparse(tol=tol)(prob)
    f, g = np.asarray(res.f, dtype=np.float64), np.asarray(res.g, dtype=np.float64)
    log_u, log_v = f / reg - 0.5, g / reg - 0.5
    back = lambda x: _arrays.from_core(x, info)  # noqa: E731
    lg = {"err": list(res.errors), "niter": res.n_iter, "log_u": back(log_u), "log_v": back(log_v),
          "u": back(np.exp(log_u)), "v": back(np.exp(log_v)), "f": back(f), "g": back(g), "result": res}
    return back(res.plan), lg


def solve_sample(X_a, X_b, a=None, b=None, metric="sqeuclidean", reg=None, c=None, reg_type="KL", unbalanced=None,
                 unbalanced_type="KL", lazy=False, batch_size=None, method=None, n_threads=1, max_iter=None,
                 plan_init=None, rank=100, scaling=0.95, potentials_init=None, X_init=None, tol=None, verbose=False,
                 grad="autodiff", random_state=None, debias=False, n_projections=50, projections=None, scaler=None):
    """POT's ``ot.solve_sample(X_a, X_b, a, b, metric=..., reg=...)``.

    Without ``lazy`` or a sample ``method`` it builds ``M = dist(X_a, X_b, metric)`` and calls
    :func:`solve` (otsolve's solvers). ``debias=True`` gives the Sinkhorn divergence
    ``OT(a, b) - (OT(a, a) + OT(b, b)) / 2`` as POT. Lazy and sample-specific methods ("1d",
    "sliced", "gaussian", "lowrank", "factored", "nystroem", "geomloss", ...) are forwarded to
    POT's ``ot.solve_sample``.
    """
    if lazy or method is not None or (debias and debias is not True) or scaler is not None:
        return _pot_solver("solve_sample")(
            X_a, X_b, a=a, b=b, metric=metric, reg=reg, c=c, reg_type=reg_type, unbalanced=unbalanced,
            unbalanced_type=unbalanced_type, lazy=lazy, batch_size=batch_size, method=method, n_threads=n_threads,
            max_iter=max_iter, plan_init=plan_init, rank=rank, scaling=scaling, potentials_init=potentials_init,
            X_init=X_init, tol=tol, verbose=verbose, grad=grad, random_state=random_state, debias=debias,
            n_projections=n_projections, projections=projections, scaler=scaler)
    kw = dict(reg=reg, c=c, reg_type=reg_type, unbalanced=unbalanced, unbalanced_type=unbalanced_type,
              n_threads=n_threads, max_iter=max_iter, plan_init=plan_init, potentials_init=potentials_init, tol=tol,
              verbose=verbose, grad=grad)
    if debias:
        kw["potentials_init"] = None
        ab = solve(dist(X_a, X_b, metric), a, b, **kw)
        aa = solve(dist(X_a, X_a, metric), a, a, **kw)
        bb = solve(dist(X_b, X_b, metric), b, b, **kw)
        ot = _ot()
        nx = ot.backend.get_backend(X_a, X_b)
        return ot.utils.OTResult(
            value=ab.value - 0.5 * (aa.value + bb.value),
            value_linear=ab.value_linear - 0.5 * (aa.value_linear + bb.value_linear),
            plan=ab.plan, potentials=ab.potentials, status=ab.status, backend=nx,
            log={"res_aa": aa, "res_bb": bb, "res_ab": ab})
    return solve(dist(X_a, X_b, metric), a, b, **kw)
