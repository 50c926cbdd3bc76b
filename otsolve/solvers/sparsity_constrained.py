"""Sparsity-constrained optimal transport: at most k nonzeros per column of the plan.

T. Liu, J. Puigcerver, M. Blondel, "Sparsity-Constrained Optimal Transport", ICLR 2023
(arXiv 2209.15466). The primal

    min_{T in U(a, b), ||t_j||_0 <= k for all j}  <T, C> + (gamma/2) ||T||_F^2

is non-convex; we maximize its dual or semi-dual (closed-form per-column conjugates, see
:mod:`otsolve.kernels.topk`) with L-BFGS (SciPy) and read the plan off the gradient. The plan is
k-sparse per column *by construction*; its marginals hold only at a point of differentiability,
which small k usually does not reach, so both marginal errors are reported, never assumed.
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp
from scipy.optimize import minimize

from .._validation import check_epsilon, check_memory, check_positive_int, renamed_kwarg
from ..kernels.topk import get_topk_kernels
from ..problems import LinearProblem
from ._common import is_cupy_problem, require_balanced, warn_not_converged
from .result import OTResult

__all__ = ["SparsityConstrainedOT", "ScotObjective", "SCOT_POTENTIALS_CONVENTION"]

SCOT_POTENTIALS_CONVENTION = (
    "T_ij = max(f_i + g_j - C_ij, 0) / gamma on the top-k rows of column j (0 elsewhere)"
)
_FORMULATIONS = ("semi_dual", "dual")
_AXES = ("col", "row")
_OPTIMIZERS = ("lbfgs", "adam")


class ScotObjective:
    """Value and gradient of the SCOT dual / semi-dual for one (oriented) problem.

    ``C`` is (n, m) with the sparsity on its columns; the kernels read the transposed copy.
    Calling it returns ``(-objective, -gradient)`` (SciPy minimizes). After each call ``idx``,
    ``tval`` (padded sparse plan), ``row`` (``T1``) and, for the semi-dual, ``beta`` hold the
    plan of the last evaluated point.
    """

    def __init__(self, C: np.ndarray, a: np.ndarray, b: np.ndarray, k: int, gamma: float,
                 formulation: str, compiled: bool = True) -> None:
        self.CT = np.ascontiguousarray(np.asarray(C, dtype=np.float64).T)
        self.a = np.asarray(a, dtype=np.float64)
        self.b = np.asarray(b, dtype=np.float64)
        self.n, self.m = self.CT.shape[1], self.CT.shape[0]
        self.k = int(min(k, self.n))  # k >= n: the constraint is void (quadratic OT operators)
        self.gamma = float(gamma)
        self.formulation = formulation
        self.K = get_topk_kernels(compiled)
        self.idx = np.empty((self.m, self.k), dtype=np.int64)
        self.tval = np.empty((self.m, self.k))
        self.beta = np.zeros(self.m)
        self.row = np.zeros(self.n)
        self.n_evals = 0
        self.grad_l1: list[float] = []

    @property
    def size(self) -> int:
        return self.n + (self.m if self.formulation == "dual" else 0)

    def evaluate(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """Objective (to maximize) and its gradient at ``x`` (``alpha`` or ``[alpha, beta]``)."""
        n = self.n
        self.n_evals += 1
        if self.formulation == "dual":
            alpha, beta = x[:n], x[n:]
            cols = self.K.dual_columns(alpha, beta, self.CT, self.k, self.gamma, self.idx, self.tval)
            self.beta = beta
            row = self.K.scatter_rows(self.idx, self.tval, n)
            colsum = self.tval.sum(axis=1)
            val = float(alpha @ self.a + beta @ self.b - cols.sum())
            grad = np.concatenate([self.a - row, self.b - colsum])
        else:
            alpha = x
            cols = self.K.semi_dual_columns(alpha, self.b, self.CT, self.k, self.gamma, self.idx,
                                            self.tval, self.beta)
            row = self.K.scatter_rows(self.idx, self.tval, n)
            val = float(alpha @ self.a - self.b @ cols)
            grad = self.a - row
        self.row = row
        self.grad_l1.append(float(np.abs(grad).sum()))
        return val, grad

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        val, grad = self.evaluate(x)
        return -val, -grad


def _one_blas_thread():
    """Limit BLAS to one thread while L-BFGS-B runs.

    L-BFGS-B calls BLAS on vectors of the problem's size; a multi-threaded OpenBLAS wakes its
    threads for each of these tiny calls, which cost 1000x more than the work on a busy machine
    (measured: 1.1 s instead of 1 ms of L-BFGS-B bookkeeping for 100 iterations at n = 120).
    """
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - optional (ships with scikit-learn)
        return contextlib.nullcontext()
    return threadpool_limits(1, user_api="blas")


def _lbfgs(obj: ScotObjective, x0: np.ndarray, tol: float, max_iter: int, history: int):
    with _one_blas_thread():
        res = minimize(obj, x0, method="L-BFGS-B", jac=True, tol=tol,
                       options=dict(maxiter=max_iter, maxcor=history))
    return res.x, bool(res.success), int(res.nit), int(res.status), str(res.message)


def _adam(obj: ScotObjective, x0: np.ndarray, lr: float, n_steps: int, tol: float):
    """Plain Adam ascent for a fixed number of steps (the V-MoE routers' optimizer).

    Returns ``(x, ok, n_steps_done, code, message, start_value)``; ``start_value`` is the
    objective at ``x0`` (an ascent that ends below it diverged: the step ``lr`` is too large).
    """
    x = x0.copy()
    m1 = np.zeros_like(x)
    m2 = np.zeros_like(x)
    b1, b2, eps = 0.9, 0.999, 1e-8
    v0 = np.nan
    for t in range(1, n_steps + 1):
        val, g = obj.evaluate(x)
        if t == 1:
            v0 = val
        if obj.grad_l1[-1] <= tol:
            return x, True, t - 1, 0, "gradient L1 norm <= tol", v0
        m1 = b1 * m1 + (1 - b1) * g
        m2 = b2 * m2 + (1 - b2) * g * g
        x = x + lr * (m1 / (1 - b1**t)) / (np.sqrt(m2 / (1 - b2**t)) + eps)
    return x, False, n_steps, 1, f"ran the fixed {n_steps} Adam steps", v0


def adam_diverged(value: float, start_value: float) -> bool:
    """An Adam ascent that ends at a non-finite value, or clearly below its starting value (by
    more than 1% of ``1 + |start|``: a start that is already near the optimum may lose a little
    to Adam's noise), diverged."""
    return not np.isfinite(value) or value < start_value - 1e-2 * (1.0 + abs(start_value))


def check_lr(lr: Any, scale: float, name: str = "lr") -> float:
    """An Adam step: positive, finite and not absurdly larger than the potentials' scale.

    Each Adam step moves every potential by about ``lr``; the optimal potentials lie within
    about ``scale`` (cost range + gamma * largest mass) of the start, so ``lr > 1e3 * scale``
    throws the iterate far outside, where the plan is empty (every token dropped).
    """
    lr = check_epsilon(lr, name)
    if lr > 1e3 * scale:
        raise ValueError(
            f"{name}={lr!r} is far larger than the scale of the dual potentials (~{scale:.3g}: cost range + "
            f"gamma x largest mass): every Adam step would move them by ~{name} and empty the plan; "
            f"use {name} <= {1e3 * scale:.3g} (typically 1e-3 .. 1e-1 x that scale)")
    return lr


@dataclass(frozen=True)
class SparsityConstrainedOT:
    r"""Sparsity-constrained OT (SCOT): quadratic regularization and at most ``k`` nonzeros per column.

    Solves :math:`\min_{T \in U(a,b),\ \|t_j\|_0 \le k} \langle T, C\rangle + \tfrac{\gamma}{2}\|T\|_F^2`
    through its dual or semi-dual (Liu, Puigcerver & Blondel, ICLR 2023), maximized by L-BFGS.

    Parameters
    ----------
    k : int
        Maximum number of nonzeros in every column (every row with ``axis="row"``); ``k >= n``
        gives quadratically regularized OT. ``k = 1`` makes the semi-dual the unregularized OT
        semi-dual (plus the constant ``(gamma/2)||b||^2``).
    gamma : float
        Quadratic regularization ``gamma > 0`` (POT's ``reg``), in cost units. The problem's
        ``epsilon`` is not used.
    formulation : {"semi_dual", "dual"}, default "semi_dual"
        The semi-dual optimizes the row potential only and its plan has the column marginals
        exactly; the dual optimizes both potentials (neither marginal is exact before the end).
    axis : {"col", "row"}, default "col"
        Which side of the plan is sparse (``"row"``: at most k nonzeros per row; solved on the
        transposed problem).
    tol : float, default 1e-9
        L-BFGS-B tolerance (SciPy's ``tol``: relative objective decrease and projected gradient).
    max_iter : int, default 1000
        L-BFGS iterations, at most (SciPy's ``maxiter``); with ``optimizer="adam"`` the fixed
        number of Adam steps.
    optimizer : {"lbfgs", "adam"}, default "lbfgs"
        ``"adam"`` runs a fixed number of Adam steps (``lr``), as the V-MoE routers do.
    lr : float, default 1e-2
        Adam step size (positive; more than 1e3 x the potentials' scale is refused). An Adam run
        that ends clearly below its starting objective is reported as ``status="diverged"``.
    history : int, default 10
        L-BFGS memory.
    compiled : bool, default True
        numba kernels (parallel over columns); False: the NumPy references.
    warn : bool, default True
        RuntimeWarning when the optimizer does not report convergence.
    learning_rate : float, optional
        Deprecated old name of ``lr``.

    Returns (from ``__call__``)
    ---------------------------
    OTResult
        ``plan_sparse`` (CSC for columns, CSR for rows; at most k entries per column / row),
        ``plan`` (dense, built on first access), ``f``, ``g`` (for the semi-dual ``g`` is
        recovered from the projection threshold, ``g_j = -gamma b_j theta_j``), ``value`` (the
        dual / semi-dual objective reached, a lower bound on the primal optimum), ``cost``
        (``<C, T>``), ``primal_value`` (``<C,T> + gamma/2 ||T||^2``), ``marginal_error_a``,
        ``marginal_error_b`` (L1), ``converged`` (L-BFGS status), ``n_evals``.

    Notes
    -----
    For small k the objectives are non-smooth (ties at the k-th largest entry); L-BFGS then
    often stops at a point that is not a maximizer and the recovered plan misses the row
    marginals (the k-sparsity is always exact). Larger k or gamma make the problem smoother and the
    plan closer to feasible, at the price of density. The potentials follow
    ``T_ij = [f_i + g_j - C_ij]_+ / gamma`` on the selected entries.

    References
    ----------
    T. Liu, J. Puigcerver, M. Blondel, "Sparsity-Constrained Optimal Transport", ICLR 2023.
    M. Blondel, V. Seguy, A. Rolet, "Smooth and Sparse Optimal Transport", AISTATS 2018.
    A. Kyrillidis, S. Becker, V. Cevher, C. Koch, "Sparse projections onto the simplex", ICML 2013.
    """

    k: int
    gamma: float
    formulation: str = "semi_dual"
    axis: str = "col"
    tol: float = 1e-9
    max_iter: int = 1000
    optimizer: str = "lbfgs"
    lr: float = 1e-2
    history: int = 10
    compiled: bool = True
    warn: bool = True
    learning_rate: float | None = field(default=None, repr=False, compare=False)

    method = "sparsity_constrained"

    def __post_init__(self) -> None:
        check_positive_int(self.k, "k")
        check_epsilon(self.gamma, "gamma")
        if self.formulation not in _FORMULATIONS:
            raise ValueError(f"formulation must be one of {_FORMULATIONS}, got {self.formulation!r}")
        if self.axis not in _AXES:
            raise ValueError(f"axis must be one of {_AXES}, got {self.axis!r}")
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if not (np.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"tol must be a positive number, got {self.tol!r}")
        check_positive_int(self.max_iter, "max_iter")
        check_positive_int(self.history, "history")
        if self.learning_rate is not None:  # deprecated alias of lr
            lr = renamed_kwarg(None, self.learning_rate, "lr", "learning_rate", stacklevel=4)
            object.__setattr__(self, "lr", lr)
            object.__setattr__(self, "learning_rate", None)
        check_epsilon(self.lr, "lr")

    # ------------------------------------------------------------------------------------
    def _init(self, init: Any, n: int, m: int) -> np.ndarray:
        """Starting point (alpha or [alpha, beta]) in the oriented problem; zeros by default."""
        size = n + (m if self.formulation == "dual" else 0)
        if init is None:
            return np.zeros(size)
        if hasattr(init, "f") and hasattr(init, "g"):
            f, g = init.f, init.g
        elif isinstance(init, tuple) and len(init) == 2:
            f, g = init
        else:
            f, g = init, None
        f = np.asarray(f, dtype=np.float64).reshape(-1)
        g = None if g is None else np.asarray(g, dtype=np.float64).reshape(-1)
        if self.axis == "row":
            f, g = g, f
        if f is None or f.shape != (n,) or (self.formulation == "dual" and (g is None or g.shape != (m,))):
            raise ValueError("init must be an OTResult, (f, g) with the problem's sizes, or f for the semi-dual")
        x0 = f if self.formulation == "semi_dual" else np.concatenate([f, g])
        if not np.all(np.isfinite(x0)):
            raise ValueError("init potentials contain NaN or inf")
        return x0.copy()

    def __call__(self, problem: LinearProblem, init: Any = None) -> OTResult:
        if not isinstance(problem, LinearProblem):
            raise ValueError(f"expected a LinearProblem, got {type(problem).__name__}")
        require_balanced(problem, "SparsityConstrainedOT")
        if is_cupy_problem(problem):
            return self._solve_on_host(problem, init)
        self._check_memory(problem)
        C = np.asarray(problem.geom.cost_matrix, dtype=np.float64)
        a = np.asarray(problem.a, dtype=np.float64)
        b = np.asarray(problem.b, dtype=np.float64)
        if self.axis == "row":  # row sparsity = column sparsity of the transposed problem
            C, a, b = C.T, b, a
        n, m = C.shape
        obj = ScotObjective(C, a, b, self.k, self.gamma, self.formulation, self.compiled)
        x0 = self._init(init, n, m)

        t0 = time.perf_counter()
        if self.optimizer == "lbfgs":
            x, ok, nit, code, msg = _lbfgs(obj, x0, float(self.tol), int(self.max_iter), int(self.history))
        else:
            scale = float(C.max() - C.min()) + self.gamma * float(max(a.max(), b.max()))
            x, ok, nit, code, msg, v0 = _adam(obj, x0, check_lr(self.lr, scale), int(self.max_iter),
                                              float(self.tol))
        value, _ = obj.evaluate(x)  # leaves the plan of the returned point in obj
        if self.optimizer == "adam" and adam_diverged(value, v0):
            ok, code = False, 2
            msg = (f"Adam diverged: the objective went from {v0:.6g} to {value:.6g} in {nit} steps; "
                   f"lower lr (now {self.lr:g})")
        elapsed = time.perf_counter() - t0

        alpha = x[:n]
        beta = x[n:].copy() if self.formulation == "dual" else obj.beta.copy()
        idx, tval = obj.idx, obj.tval
        keep = idx >= 0
        rows = idx[keep]
        cols = np.nonzero(keep)[0]
        data = tval[keep]
        cost = float(data @ C[rows, cols])
        sq = float(data @ data)
        err_rows = float(np.abs(obj.row - a).sum())
        err_cols = float(np.abs(np.bincount(cols, weights=data, minlength=m) - b).sum())

        out_dtype = problem.dtype
        plan = sp.csc_matrix((data.astype(out_dtype), (rows, cols)), shape=(n, m))
        if self.axis == "row":
            plan = plan.T.tocsr()  # at most k per row of the user's plan
            err_a, err_b = err_cols, err_rows
            f, g = beta, alpha
        else:
            err_a, err_b = err_rows, err_cols
            f, g = alpha, beta
        merr = err_a + err_b

        status = {0: "converged", 1: "max_iter"}.get(code, "stalled")
        if self.optimizer == "adam" and code == 2:
            status = "diverged"
        message = (f"{msg}; marginal L1 errors: a {err_a:.3g}, b {err_b:.3g}")
        if not ok and self.warn:
            warn_not_converged("SparsityConstrainedOT", message)
        res = OTResult(
            method=self.method,
            f=f.astype(out_dtype),
            g=g.astype(out_dtype),
            cost=cost,
            value=value,
            converged=ok,
            n_iter=nit,
            marginal_error=merr,
            errors=obj.grad_l1,
            message=message,
            status=status,
            plan_fn=lambda: plan.toarray(),
            plan_sparse=plan,
            marginal_error_a=err_a,
            marginal_error_b=err_b,
            primal_value=cost + 0.5 * self.gamma * sq,
            k=self.k,
            gamma=float(self.gamma),
            formulation=self.formulation,
            axis=self.axis,
            optimizer=self.optimizer,
            n_evals=obj.n_evals,
            time=elapsed,
        )
        res.potentials_convention = SCOT_POTENTIALS_CONVENTION
        return res

    def _check_memory(self, problem: LinearProblem) -> None:
        """Refuse, before allocating, a problem whose dense float64 cost and its transposed copy
        (what the top-k kernels read) cannot fit in the available memory."""
        n, m = problem.shape
        item = np.dtype(problem.dtype).itemsize
        online = bool(getattr(problem.geom, "is_online", False))
        need = 8.0 * n * m  # the transposed float64 copy the kernels read
        if online:  # the cost is materialised first
            need += item * n * m
        if item != 8:  # and converted to float64
            need += 8.0 * n * m
        check_memory(need, f"SparsityConstrainedOT on a {n} x {m} problem (dense float64 cost and its "
                     "transposed copy)", "the solver needs the dense cost; use a smaller problem or "
                     "Sinkhorn on a PointCloud (O(n + m) memory)")

    def _solve_on_host(self, problem: LinearProblem, init: Any) -> OTResult:
        """CuPy problem: solved on the host (the top-k kernels and L-BFGS-B are CPU code), the
        answer returned as CuPy arrays on the problem's device: f, g, the dense plan and
        ``plan_sparse`` (a ``cupyx.scipy.sparse`` matrix). ``result.backend`` says so."""
        import cupy as cp  # noqa: PLC0415
        import cupyx.scipy.sparse as cusp  # noqa: PLC0415

        from ..geometry import Geometry  # noqa: PLC0415

        host = LinearProblem(Geometry(problem.geom.cost_matrix.get()), problem.a.get(), problem.b.get(),
                             epsilon=problem.epsilon)
        if init is not None:
            fi, gi = (init.f, init.g) if hasattr(init, "f") else init
            init = tuple(v.get() if hasattr(v, "get") and not isinstance(v, np.ndarray) else v for v in (fi, gi))
        res = self(host, init)
        with cp.cuda.Device(problem.a.device.id):
            res.f, res.g = cp.asarray(res.f), cp.asarray(res.g)
            sparse = res._extra["plan_sparse"]
            res._extra["plan_sparse"] = (cusp.csr_matrix(sparse) if sparse.format == "csr"
                                         else cusp.csc_matrix(sparse))
        device = problem.a.device.id

        def plan():
            with cp.cuda.Device(device):
                return cp.asarray(sparse.toarray())

        res._plan, res._plan_fn = None, plan
        res._extra["backend"] = "cupy (solved on the host)"
        return res
