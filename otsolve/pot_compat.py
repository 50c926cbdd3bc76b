"""POT-compatible shortcuts: change ``import ot`` to ``import otsolve`` and keep the call."""
from __future__ import annotations

from typing import Any

import numpy as np

from .problems import LinearProblem
from .solvers.sinkhorn import Sinkhorn

__all__ = ["sinkhorn", "sinkhorn2"]


def _weights(w: Any, n: int, like: np.ndarray):
    if w is None or (hasattr(w, "__len__") and len(w) == 0):
        return np.full(n, 1.0 / n, dtype=like.dtype)
    return w


def _solve(a, b, M, reg, numItermax, stopThr, warn, **kwargs):
    M = np.asarray(M)
    n, m = M.shape if M.ndim == 2 else (0, 0)
    prob = LinearProblem(M, _weights(a, n, M), _weights(b, m, M), epsilon=reg)
    solver = Sinkhorn(tol=stopThr, max_iter=int(numItermax), warn=warn, **kwargs)
    return solver(prob)


def sinkhorn(a, b, M, reg: float, numItermax: int = 1000, stopThr: float = 1e-9, verbose: bool = False,
             log: bool = False, warn: bool = True, **kwargs: Any):
    """Entropic OT plan with POT's ``ot.sinkhorn`` signature and return values.

    ``reg`` is POT's entropic weight (``reg * sum P log P``), ``a``/``b`` may be empty lists for
    uniform weights. Returns the plan, or ``(plan, log)`` with ``log`` holding ``err``, ``niter``,
    ``log_u``, ``log_v``, ``u``, ``v`` (so that ``P = diag(u) exp(-M/reg) diag(v)``) and otsolve's
    ``f``, ``g`` and ``result``. Unlike POT, it is log-domain stable at any ``reg`` and
    ``stopThr`` bounds the L1 error of both marginals (POT: L2 of the second one), which is
    stricter. Extra keyword arguments go to :class:`otsolve.Sinkhorn` (e.g. ``epsilon_scaling``).
    """
    res = _solve(a, b, M, reg, numItermax, stopThr, warn, **kwargs)
    if verbose:
        print(res)
    if not log:
        return res.plan
    f = np.asarray(res.f, dtype=float)
    g = np.asarray(res.g, dtype=float)
    log_u, log_v = f / reg - 0.5, g / reg - 0.5
    with np.errstate(over="ignore"):
        info = {
            "err": list(res.errors),
            "niter": res.n_iter,
            "log_u": log_u,
            "log_v": log_v,
            "u": np.exp(log_u),
            "v": np.exp(log_v),
            "f": res.f,
            "g": res.g,
            "result": res,
        }
    return res.plan, info


def sinkhorn2(a, b, M, reg: float, numItermax: int = 1000, stopThr: float = 1e-9, verbose: bool = False,
              log: bool = False, warn: bool = True, **kwargs: Any):
    """POT's ``ot.sinkhorn2``: the transport cost ``<M, P>`` of the entropic plan."""
    res = _solve(a, b, M, reg, numItermax, stopThr, warn, **kwargs)
    if verbose:
        print(res)
    if log:
        return res.cost, {"err": list(res.errors), "niter": res.n_iter, "f": res.f, "g": res.g, "result": res}
    return res.cost
