"""Exact (unregularized) OT by POT's network simplex, with otsolve's result and diagnostics."""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..problems import LinearProblem
from ._common import require_balanced
from .result import OTResult

__all__ = ["ExactOT"]

_CODES = {0: "infeasible", 1: "converged", 2: "unbounded", 3: "max_iter"}


def _pot_emd():
    """POT's ``emd`` from its defining module (unaffected when ``ot.emd`` is monkeypatched, e.g. to
    ``otsolve.pot.emd``, which calls this solver)."""
    try:
        from ot.lp._network_simplex import emd  # noqa: PLC0415
    except ImportError:  # pragma: no cover - other POT layouts
        from ot.lp import emd  # noqa: PLC0415
    return emd


def _host(x: Any) -> np.ndarray:
    return x.get() if type(x).__module__.startswith("cupy") else np.asarray(x)


@dataclass(frozen=True)
class ExactOT:
    """Exact OT ``min_P <C, P>`` over plans with marginals ``a``, ``b`` (no regularization).

    Runs POT's network simplex (``ot.emd``, Bonneel et al. 2011), a maintained C++ solver, and
    wraps its output in :class:`~otsolve.OTResult`. ``problem.epsilon`` is ignored. CuPy problems
    are solved on the host and returned as CuPy arrays.

    Parameters
    ----------
    max_iter : int, optional
        Network-simplex pivots (POT's ``numItermax``); default ``max(100000, 10 n m)``.
    tol : float, optional
        ``converged`` also requires the returned plan's L1 marginal error ``<= tol``
        (default 1e-9 times the mass in float64, 1e-6 in float32).
    n_threads : int, default 1
        POT's ``numThreads`` (OpenMP threads of the simplex, where POT was built with them).
    warn : bool, default True
        RuntimeWarning when the simplex does not reach optimality.

    Notes
    -----
    The result has ``plan`` (dense, a vertex of the transport polytope: at most ``n + m - 1``
    nonzeros), ``f``, ``g`` (Kantorovich duals in cost units: ``f_i + g_j <= C_ij`` with equality
    on the plan's support, centred by POT), ``cost = value = <C, P>``, ``converged`` (POT's
    status is optimal and the marginal error is within ``tol``), ``status`` ("converged",
    "max_iter", "infeasible", "unbounded") and ``marginal_error`` measured on the returned plan.
    ``n_iter`` is 0: POT does not report its pivot count.

    References
    ----------
    N. Bonneel, M. van de Panne, S. Paris, W. Heidrich, "Displacement interpolation using
    Lagrangian mass transport", ACM Trans. Graph. 30(6), 2011. R. Flamary et al., "POT: Python
    Optimal Transport", JMLR 22(78), 2021.
    """

    max_iter: int | None = None
    tol: float | None = None
    n_threads: int = 1
    warn: bool = True

    method = "emd"

    def __post_init__(self) -> None:
        if self.max_iter is not None and (isinstance(self.max_iter, bool) or not isinstance(
                self.max_iter, (int, np.integer)) or self.max_iter < 1):
            raise ValueError(f"max_iter must be a positive integer or None, got {self.max_iter!r}")
        if self.tol is not None and not (np.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"tol must be a positive number, got {self.tol!r}")
        if isinstance(self.n_threads, bool) or not isinstance(self.n_threads, (int, np.integer)) or self.n_threads < 1:
            raise ValueError(f"n_threads must be a positive integer, got {self.n_threads!r}")

    def __call__(self, problem: LinearProblem, init: Any = None) -> OTResult:
        if not isinstance(problem, LinearProblem):
            raise ValueError(f"expected a LinearProblem, got {type(problem).__name__}")
        require_balanced(problem, "EMD (exact OT)")
        on_gpu = type(problem.a).__module__.startswith("cupy")
        dtype = np.dtype(str(problem.dtype))
        C = np.ascontiguousarray(_host(problem.geom.cost_matrix), dtype=np.float64)
        a = np.ascontiguousarray(_host(problem.a), dtype=np.float64)
        b = np.ascontiguousarray(_host(problem.b), dtype=np.float64)
        n, m = C.shape
        b = b * (a.sum() / b.sum())  # masses agree to rounding (LinearProblem checked); POT wants them equal
        potentials_init = None
        if init is not None:
            f0, g0 = (init.f, init.g) if hasattr(init, "f") else init
            potentials_init = (np.asarray(_host(f0), dtype=np.float64), np.asarray(_host(g0), dtype=np.float64))
        max_iter = self.max_iter if self.max_iter is not None else max(100_000, 10 * n * m)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # POT's "numItermax reached": reported below
            P, log = _pot_emd()(a, b, C, numItermax=int(max_iter), log=True, numThreads=int(self.n_threads),
                            potentials_init=potentials_init)
        code = int(log["result_code"])
        merr = float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())
        tol = self.tol if self.tol is not None else (1e-9 if dtype == np.float64 else 1e-6) * max(float(a.sum()), 1.0)
        status = _CODES.get(code, "failed")
        converged = code == 1 and np.isfinite(merr) and merr <= tol
        if converged:
            message = f"optimal (network simplex); marginal L1 error {merr:.3g} <= tol {tol:.3g}"
        elif code == 1:
            status = "inaccurate"
            message = f"optimal basis, but the plan's marginal L1 error {merr:.3g} > tol {tol:.3g}"
        else:
            message = f"network simplex stopped: {log.get('warning') or status}"
            if code == 3:
                message += f" (max_iter={max_iter}; increase max_iter)"
        if not converged and self.warn:
            warnings.warn(f"ExactOT: {message}", RuntimeWarning, stacklevel=2)
        cost = float(np.sum(P * C))
        f, g = log["u"].astype(dtype), log["v"].astype(dtype)
        plan = P.astype(dtype)
        if on_gpu:
            import cupy  # noqa: PLC0415

            f, g, plan = cupy.asarray(f), cupy.asarray(g), cupy.asarray(plan)
        return OTResult(method=self.method, f=f, g=g, cost=cost, value=cost, converged=converged, n_iter=0,
                        marginal_error=merr, errors=[merr], message=message, status=status, epsilon=None,
                        plan=plan, result_code=code)
