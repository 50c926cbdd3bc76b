"""POT-compatible shortcuts: change ``import ot`` to ``import otsolve`` and keep the call."""
from __future__ import annotations

from typing import Any

import numpy as np

from .backends import get_namespace
from .problems import LinearProblem
from .solvers.sinkhorn import Sinkhorn

__all__ = ["sinkhorn", "sinkhorn2"]


def _empty(w: Any) -> bool:
    return w is None or (isinstance(w, (list, tuple)) and len(w) == 0) or getattr(w, "size", 1) == 0


def _solve(a, b, M, reg, numItermax, stopThr, warn, **kwargs):
    # POT's backends: NumPy in -> NumPy out, CuPy in -> CuPy out (empty a / b mean uniform)
    xp = get_namespace(M, *(w for w in (a, b) if not _empty(w)))
    M = xp.asarray(M)
    n, m = M.shape if M.ndim == 2 else (0, 0)
    a = xp.full(n, 1.0 / n, dtype=M.dtype) if _empty(a) else a
    b = xp.full(m, 1.0 / m, dtype=M.dtype) if _empty(b) else b
    prob = LinearProblem(M, a, b, epsilon=reg)
    solver = Sinkhorn(tol=stopThr, max_iter=int(numItermax), warn=warn, **kwargs)
    return solver(prob), xp


def sinkhorn(a, b, M, reg: float, numItermax: int = 1000, stopThr: float = 1e-9, verbose: bool = False,
             log: bool = False, warn: bool = True, **kwargs: Any):
    """Entropic OT plan with POT's ``ot.sinkhorn`` signature and return values.

    ``reg`` is POT's entropic weight (``reg * sum P log P``), ``a``/``b`` may be empty lists for
    uniform weights. Returns the plan, or ``(plan, log)`` with ``log`` holding ``err``, ``niter``,
    ``log_u``, ``log_v``, ``u``, ``v`` (so that ``P = diag(u) exp(-M/reg) diag(v)``) and otsolve's
    ``f``, ``g`` and ``result``. Unlike POT, it is log-domain stable at any ``reg`` and
    ``stopThr`` bounds the L1 error of both marginals (POT: L2 of the second one), which is
    stricter. Extra keyword arguments go to :class:`otsolve.Sinkhorn` (e.g. ``epsilon_scaling``).
    CuPy arrays in give CuPy arrays out (the GPU backend), as with POT's backends.
    """
    res, xp = _solve(a, b, M, reg, numItermax, stopThr, warn, **kwargs)
    if verbose:
        print(res)
    if not log:
        return res.plan
    log_u, log_v = res.f.astype(xp.float64) / reg - 0.5, res.g.astype(xp.float64) / reg - 0.5
    with np.errstate(over="ignore"):
        info = {
            "err": list(res.errors),
            "niter": res.n_iter,
            "log_u": log_u,
            "log_v": log_v,
            "u": xp.exp(log_u),
            "v": xp.exp(log_v),
            "f": res.f,
            "g": res.g,
            "result": res,
        }
    return res.plan, info


def sinkhorn2(a, b, M, reg: float, numItermax: int = 1000, stopThr: float = 1e-9, verbose: bool = False,
              log: bool = False, warn: bool = True, **kwargs: Any):
    """POT's ``ot.sinkhorn2``: the transport cost ``<M, P>`` of the entropic plan."""
    res, xp = _solve(a, b, M, reg, numItermax, stopThr, warn, **kwargs)
    if verbose:
        print(res)
    # a Python float for NumPy input (as before); a 0-d device array for CuPy, as POT's backend
    cost = res.cost if xp is np else xp.asarray(res.cost)
    if log:
        return cost, {"err": list(res.errors), "niter": res.n_iter, "f": res.f, "g": res.g, "result": res}
    return cost
