"""Plain NumPy references for the compiled kernels (same signatures as ``otsolve._ext_sinkhorn``).

They define what the C++ kernels must compute; tests compare the two on random inputs.
Plan convention: ``P_ij = exp((f_i + g_j - C_ij)/eps - 1)``.
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

__all__ = [
    "sinkhorn_dense",
    "sinkhorn_pointcloud",
    "plan_stats_dense",
    "plan_stats_pointcloud",
    "pointcloud_cost",
]


def pointcloud_cost(X, YT, kind: int, scale: float):
    """Cost matrix of the compiled point-cloud kernels: kind 0 = sqeuclidean, 1 = euclidean."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(YT, dtype=np.float64).T
    d2 = ((X[:, None, :] - Y[None, :, :]) ** 2).sum(-1)
    if kind == 1:
        d2 = np.sqrt(d2)
    elif kind != 0:
        raise ValueError("unknown cost kind")
    return d2 * scale


def sinkhorn_dense(C, log_a, log_b, f, g, eps, max_iter, tol, n_threads=0):
    """Log-domain Sinkhorn updating ``f``, ``g`` in place.

    Returns ``(n_iter, status, errors)``: ``errors[k]`` is the L1 marginal error of the iterate
    after k updates (its columns are exact after a g-update, so it is the row error); status
    0 = converged (error <= tol), 1 = max_iter, 2 = diverged.
    """
    C = np.asarray(C, dtype=np.float64)
    a = np.exp(log_a)
    errors: list[float] = []
    for it in range(max_iter + 1):
        lse = logsumexp((g[None, :] - C) / eps, axis=1)
        with np.errstate(over="ignore"):
            row_mass = np.exp(np.minimum(f / eps - 1.0 + lse, 709.0))
        err = float(np.abs(row_mass - a).sum())
        errors.append(err)
        if not np.isfinite(err) and it > 0 and not (np.isfinite(f).all() and np.isfinite(g).all()):
            return it, 2, errors
        if err <= tol:
            return it, 0, errors
        if it == max_iter:
            break
        f[:] = eps * (log_a + 1.0 - lse)
        g[:] = eps * (log_b + 1.0 - logsumexp((f[:, None] - C) / eps, axis=0))
    return max_iter, 1, errors


def sinkhorn_pointcloud(X, YT, kind, scale, log_a, log_b, f, g, eps, max_iter, tol, n_threads=0):
    return sinkhorn_dense(pointcloud_cost(X, YT, kind, scale), log_a, log_b, f, g, eps, max_iter, tol)


def plan_stats_dense(C, f, g, eps, row, col, n_threads=0):
    """Fill ``row``/``col`` with the marginals of the plan; return (<C,P>, sum P log P)."""
    C = np.asarray(C, dtype=np.float64)
    L = (f[:, None] + g[None, :] - C) / eps - 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        P = np.exp(L)
        plogp = np.where(P > 0, P * L, 0.0)
    row[:] = P.sum(1)
    col[:] = P.sum(0)
    return float((P * C).sum()), float(plogp.sum())


def plan_stats_pointcloud(X, YT, kind, scale, f, g, eps, row, col, n_threads=0):
    return plan_stats_dense(pointcloud_cost(X, YT, kind, scale), f, g, eps, row, col)
