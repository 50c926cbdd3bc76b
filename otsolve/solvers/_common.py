"""Helpers shared by the entropic solvers: warm starts, warnings, plan statistics."""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..kernels import get_sinkhorn_kernels
from ..problems import LinearProblem

__all__ = [
    "is_cupy_problem",
    "sinkhorn_outcome",
    "default_tol",
    "initial_potentials",
    "safe_log",
    "plan_statistics",
    "dense_plan",
    "warn_not_converged",
]


def is_cupy_problem(problem: LinearProblem) -> bool:
    """True when the problem's arrays live on the GPU (CuPy)."""
    return type(problem.a).__module__.startswith("cupy")


def require_balanced(problem: Any, method: str) -> None:
    """Solvers other than Sinkhorn solve balanced problems only: say so instead of ignoring rho."""
    if not getattr(problem, "is_balanced", True):
        raise ValueError(f"{method} solves balanced problems only (rho_a = rho_b = inf); this problem has "
                         f"KL-relaxed marginals (rho_a={problem.rho_a}, rho_b={problem.rho_b}): use "
                         f"method='sinkhorn'")


def default_tol(dtype) -> float:
    """Default L1 marginal tolerance: 1e-9 in float64, 1e-6 in float32."""
    return 1e-9 if np.dtype(dtype) == np.float64 else 1e-6


def safe_log(w: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(w, dtype=np.float64))


def initial_potentials(init: Any, n: int, m: int, xp: Any = np, dtype: Any = np.float64, batch: int | None = None):
    """Working copies (``xp`` arrays of ``dtype``) of a warm start ``(f, g)`` / OTResult, or zeros.

    With ``batch=B`` the potentials are (B, n), (B, m); a warm start of shapes (n,), (m,) is
    then accepted for B = 1.
    """
    if batch is not None:
        if init is None:
            return xp.zeros((batch, n), dtype=dtype), xp.zeros((batch, m), dtype=dtype)
        f, g = _init_pair(init)
        f, g = xp.array(xp.asarray(f), dtype=dtype), xp.array(xp.asarray(g), dtype=dtype)
        if batch == 1 and f.ndim == 1 and g.ndim == 1:
            f, g = f[None], g[None]
        if f.shape != (batch, n) or g.shape != (batch, m):
            raise ValueError(f"init potentials have shapes {tuple(f.shape)}, {tuple(g.shape)}; expected "
                             f"({batch}, {n}), ({batch}, {m})")
        _check_init_values(xp, f, g)
        return xp.ascontiguousarray(f), xp.ascontiguousarray(g)
    if init is None:
        return xp.zeros(n, dtype=dtype), xp.zeros(m, dtype=dtype)
    f, g = _init_pair(init)
    f = xp.array(xp.asarray(f), dtype=dtype).reshape(-1)
    g = xp.array(xp.asarray(g), dtype=dtype).reshape(-1)
    if f.shape != (n,) or g.shape != (m,):
        raise ValueError(f"init potentials have shapes {f.shape}, {g.shape}; expected ({n},), ({m},)")
    _check_init_values(xp, f, g)
    return f, g


def _init_pair(init: Any):
    if hasattr(init, "f") and hasattr(init, "g"):
        return init.f, init.g
    try:
        f, g = init
    except (TypeError, ValueError):
        raise ValueError("init must be (f, g) or an OTResult") from None
    return f, g


def _check_init_values(xp, f, g) -> None:
    # -inf is meaningful (zero-weight points); NaN and +inf are not
    if bool(xp.isnan(f).any() | xp.isnan(g).any() | xp.isposinf(f).any() | xp.isposinf(g).any()):
        raise ValueError("init potentials contain NaN or +inf")


def plan_statistics(geom, f, g, eps: float, compiled: bool = True, n_threads: int = 0):
    """(row marginal, column marginal, <C,P>, sum P log P) of the plan of (f, g)."""
    K = get_sinkhorn_kernels(compiled)
    n, m = geom.shape
    row, col = np.empty(n), np.empty(m)
    kind, args = geom.kernel_operands()
    fn = K.plan_stats_dense if kind == "dense" else K.plan_stats_pointcloud
    cost, plogp = fn(*args, f, g, eps, row, col, n_threads)
    return row, col, cost, plogp


def dense_plan(geom, f, g, eps: float, dtype):
    """Dense plan exp((f_i + g_j - C_ij)/eps - 1) (the geometry builds it block by block)."""
    return geom.plan_from_potentials(f, g, eps, dtype)


def sinkhorn_outcome(merr: float, tol: float, status: int, max_iter: int,
                     n_iter: int | None = None) -> tuple[bool, str, str]:
    """(converged, status name, message) of a solve from the exact marginal error of what it
    returns and the iterations' status (0 converged, 1 budget, 2 diverged)."""
    converged = bool(np.isfinite(merr) and merr <= tol and status != 2)
    if converged:
        return True, "converged", f"marginal L1 error {merr:.3g} <= tol {tol:.3g}"
    if status == 2 or not np.isfinite(merr):
        return False, "diverged", "potentials became non-finite"
    if n_iter is not None and n_iter < max_iter:
        return False, "stalled", (f"stopped after {n_iter} iterations (max_iter={max_iter}) with marginal L1 error "
                                  f"{merr:.3g} > tol {tol:.3g}: the error no longer decreases (rounding floor)")
    return False, "max_iter", f"reached max_iter={max_iter} with marginal L1 error {merr:.3g} > tol {tol:.3g}"


def warn_not_converged(method: str, message: str) -> None:
    warnings.warn(f"{method}: {message}", RuntimeWarning, stacklevel=3)


def marginal_l1(problem: LinearProblem, row, col) -> float:
    return float(np.abs(row - np.asarray(problem.a, dtype=np.float64)).sum()
                 + np.abs(col - np.asarray(problem.b, dtype=np.float64)).sum())
