"""Helpers shared by the entropic solvers: warm starts, warnings, plan statistics."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..geometry import Geometry, PointCloud
from ..kernels import get_sinkhorn_kernels
from ..problems import LinearProblem

__all__ = [
    "is_cupy_problem",
    "sinkhorn_outcome",
    "default_tol",
    "initial_potentials",
    "safe_log",
    "compiled_cost_args",
    "plan_statistics",
    "dense_plan",
    "warn_not_converged",
]


def is_cupy_problem(problem: LinearProblem) -> bool:
    """True when the problem's arrays live on the GPU (CuPy)."""
    return type(problem.a).__module__.startswith("cupy")


def default_tol(dtype) -> float:
    """Default L1 marginal tolerance: 1e-9 in float64, 1e-6 in float32."""
    return 1e-9 if np.dtype(dtype) == np.float64 else 1e-6


def safe_log(w: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(w, dtype=np.float64))


def initial_potentials(init: Any, n: int, m: int, xp: Any = np, dtype: Any = np.float64):
    """Working copies (``xp`` arrays of ``dtype``) of a warm start ``(f, g)`` / OTResult, or zeros."""
    if init is None:
        return xp.zeros(n, dtype=dtype), xp.zeros(m, dtype=dtype)
    if hasattr(init, "f") and hasattr(init, "g"):
        f, g = init.f, init.g
    else:
        try:
            f, g = init
        except (TypeError, ValueError):
            raise ValueError("init must be (f, g) or an OTResult") from None
    f = xp.array(xp.asarray(f), dtype=dtype).reshape(-1)
    g = xp.array(xp.asarray(g), dtype=dtype).reshape(-1)
    if f.shape != (n,) or g.shape != (m,):
        raise ValueError(f"init potentials have shapes {f.shape}, {g.shape}; expected ({n},), ({m},)")
    if bool(xp.isnan(f).any() | xp.isnan(g).any() | xp.isposinf(f).any() | xp.isposinf(g).any()):
        raise ValueError("init potentials contain NaN or +inf")
    return f, g


def compiled_cost_args(geom: Geometry | PointCloud) -> tuple[str, tuple]:
    """("dense", (C,)) or ("pointcloud", (X, YT, kind, scale)) for the kernels."""
    if isinstance(geom, PointCloud) and geom.kernel_kind is not None:
        X = np.ascontiguousarray(geom.x)
        YT = np.ascontiguousarray(geom.y.T)
        return "pointcloud", (X, YT, int(geom.kernel_kind), float(geom.kernel_scale))
    return "dense", (np.ascontiguousarray(geom.cost_matrix),)


def plan_statistics(geom, f, g, eps: float, compiled: bool = True, n_threads: int = 0):
    """(row marginal, column marginal, <C,P>, sum P log P) of the plan of (f, g)."""
    K = get_sinkhorn_kernels(compiled)
    n, m = geom.shape
    row, col = np.empty(n), np.empty(m)
    kind, args = compiled_cost_args(geom)
    fn = K.plan_stats_dense if kind == "dense" else K.plan_stats_pointcloud
    cost, plogp = fn(*args, f, g, eps, row, col, n_threads)
    return row, col, cost, plogp


def dense_plan(geom, f, g, eps: float, dtype) -> np.ndarray:
    """Dense plan exp((f_i + g_j - C_ij)/eps - 1), built block by block."""
    n, m = geom.shape
    P = np.empty((n, m), dtype=dtype)
    for s, blk in geom.iter_row_blocks():
        L = (f[s : s + blk.shape[0], None] + g[None, :] - np.asarray(blk, dtype=np.float64)) / eps - 1.0
        with np.errstate(over="ignore"):
            P[s : s + blk.shape[0]] = np.exp(L)
    return P


def sinkhorn_outcome(merr: float, tol: float, status: int, max_iter: int) -> tuple[bool, str, str]:
    """(converged, status name, message) of a Sinkhorn solve from its exact final marginal error
    and the iterations' status (0 converged, 1 budget, 2 diverged); CPU and GPU alike."""
    converged = bool(np.isfinite(merr) and merr <= tol and status != 2)
    if converged:
        return True, "converged", f"marginal L1 error {merr:.3g} <= tol {tol:.3g}"
    if status == 2 or not np.isfinite(merr):
        return False, "diverged", "potentials became non-finite"
    return False, "max_iter", f"reached max_iter={max_iter} with marginal L1 error {merr:.3g} > tol {tol:.3g}"


def warn_not_converged(method: str, message: str) -> None:
    warnings.warn(f"{method}: {message}", RuntimeWarning, stacklevel=3)


def marginal_l1(problem: LinearProblem, row, col) -> float:
    return float(np.abs(row - np.asarray(problem.a, dtype=np.float64)).sum()
                 + np.abs(col - np.asarray(problem.b, dtype=np.float64)).sum())
