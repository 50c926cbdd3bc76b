"""Kernel sets of the Sinkhorn driver: what differs by device, behind one small interface.

The driver (:func:`otsolve.solvers.sinkhorn.run_sinkhorn`) owns the ε-schedule, stopping, fallbacks,
the settling pass and the result. It sees a batch of B same-size problems (B = 1 for a
:class:`~otsolve.LinearProblem`) through a kernel set:

``new_potentials(init)``
    working (B, n), (B, m) potentials (zeros, or a warm start);
``iterate(ids, f, g, eps, budgets, tol, omega, log_sweeps=False)``
    Sinkhorn updates of problems ``ids`` until each one's L1 marginal error <= tol, its own
    budget is spent or it diverges, with the over-relaxation rule of
    :class:`otsolve.kernels.reference.Relaxation`; returns ``(n_iter, status, errors)`` per
    problem (status 0 converged, 1 budget, 2 diverged, 3 stored kernel underflowed);
``iterate_symmetric(ids, f, eps, budgets, tol)``
    for a symmetric batch (``batch.symmetric``: cost C(x, x), b = a), the averaged symmetric
    updates ``f <- (f + T(f)) / 2`` of the one potential (g = f); same returns as ``iterate``;
``measure(f, g, eps, ids)``
    exact (marginal L1 error, <C, P>, Σ P log P) of the plans of (f, g), float64 NumPy arrays;
    also records each measured plan's mass Σ P in ``masses`` (B,) and its objective in
    ``values`` (B,) (:func:`otsolve.problems.marginals.primal_value`);
``dual_values(f, g, eps, ids)``
    dual values (:func:`otsolve.problems.marginals.dual_value`; balanced:
    ``<a, f> + <b, g> - ε Σ P``), float64 NumPy, for stopping on the value;

Unbalanced batches (``batch.rho_a`` / ``batch.rho_b`` finite) use the same calls: the kernels
damp their updates and measure the error to the marginal targets
(:mod:`otsolve.problems.marginals`).
``plan(p, f, g, eps)``
    the dense plan of problem p.

Kernel sets: :class:`HostKernels` over the C++ kernels (``compiled=True``) or their NumPy
reference (``compiled=False``), and :class:`~otsolve.backends.cupy_sinkhorn.CudaKernels` over the
CUDA passes through CuPy. The geometry supplies the operands (``kernel_operands``).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from ..kernels import get_sinkhorn_kernels
from ..problems.marginals import dual_value, marginal_residual, primal_value

__all__ = ["ProblemBatch", "HostKernels", "make_sinkhorn_kernels"]


@dataclass
class ProblemBatch:
    """B problems as the kernel sets see them: per-problem geometries, weights (B, n), (B, m)
    in the geometries' array library, and optionally the stacked operands of the CUDA passes."""

    geometry: Callable[[int], Any]  # p -> Geometry / PointCloud
    a: Any
    b: Any
    B: int
    n: int
    m: int
    dtype: Any
    xp: Any
    stacked: tuple | None = None  # ("dense", C (B,n,m)) or ("pointcloud", X, Y, kind, scale)
    symmetric: bool = False  # OT(a, a) on a symmetric cost: one potential, f = g
    rho_a: float = float("inf")  # KL relaxation of the row marginal (inf = hard constraint)
    rho_b: float = float("inf")

    @property
    def balanced(self) -> bool:
        return self.rho_a == float("inf") and self.rho_b == float("inf")

    @classmethod
    def of(cls, problem) -> "ProblemBatch":
        """The batch view of a LinearProblem (B = 1) or a BatchedLinearProblem."""
        if hasattr(problem, "geometry") and callable(problem.geometry):  # BatchedLinearProblem
            if problem.cost is not None:
                stacked: tuple = ("dense", problem.cost)
            else:
                stacked = ("pointcloud", problem.x, problem.y, problem.kind, problem.kernel_scale)
            return cls(problem.geometry, problem.a, problem.b, problem.B, problem.n, problem.m,
                       problem.dtype, problem.xp, stacked, bool(getattr(problem, "symmetric", False)),
                       problem.rho_a, problem.rho_b)
        geom = problem.geom
        n, m = geom.shape
        return cls(lambda p: geom, problem.a[None], problem.b[None], 1, n, m, problem.dtype, geom.xp,
                   rho_a=problem.rho_a, rho_b=problem.rho_b)

    def cost_range(self) -> float:
        """Largest cost range over the problems (start of ε-scaling)."""
        return max(self.geometry(p).cost_range() for p in range(self.B))


def _log(w) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.log(np.asarray(w, dtype=np.float64))


class HostKernels:
    """CPU kernel set: the fused C++ passes (``compiled=True``) or their NumPy reference.

    Problems of a batch run one after the other through the single-problem kernels (on the CPU
    this beats batching: each pass already uses every core). Potentials are float64 NumPy arrays.
    Dense costs whose Gibbs kernel fits in ``kernel_memory`` bytes use the stabilised
    kernel-domain mode (``mode="auto"``/``"scaling"``); point clouds whose cost and kernel fit are
    materialised once (3.5x faster than computing the cost in every sweep at n = 4000, d = 2).
    """

    def __init__(self, batch: ProblemBatch, *, compiled: bool = True, n_threads: int = 0,
                 mode: str = "auto", kernel_memory: float = 4e9) -> None:
        self.batch = batch
        self.K = get_sinkhorn_kernels(compiled)
        self.n_threads = int(n_threads)
        self.mode = mode
        self.kernel_memory = float(kernel_memory)
        self.log_a, self.log_b = _log(batch.a), _log(batch.b)
        self._a64 = np.asarray(batch.a, dtype=np.float64)
        self._b64 = np.asarray(batch.b, dtype=np.float64)
        itemsize = np.dtype(batch.dtype).itemsize
        nm_bytes = batch.n * batch.m * itemsize
        # point clouds: materialise the costs that fit (cost + kernel: 2 n m entries each)
        self._materialise = mode == "scaling" or (mode == "auto" and 2 * nm_bytes * batch.B <= self.kernel_memory)
        # the kernel-domain (scaling) mode, balanced or unbalanced (damped updates there too)
        self._use_scaling = mode == "scaling" or (mode == "auto" and nm_bytes <= self.kernel_memory)
        self._operands: dict[int, tuple[str, tuple]] = {}
        self._workspace: np.ndarray | None = None
        self._exact: dict = {}
        self.masses = np.full(batch.B, np.nan)  # Σ P of the plans last measured (measure)
        self.values = np.full(batch.B, np.nan)  # their objectives (primal_value)

    # -- operands ------------------------------------------------------------------------------
    def operands(self, p: int) -> tuple[str, tuple]:
        """The kernels' operands of problem p (cached when materialised)."""
        if p in self._operands:
            return self._operands[p]
        geom = self.batch.geometry(p)
        kind, args = geom.kernel_operands()
        if kind == "pointcloud" and self.mode != "log" and self._materialise:
            kind, args = "dense", (np.ascontiguousarray(geom.cost_matrix),)
        if kind == "dense" or self.batch.B == 1:
            self._operands[p] = (kind, args)
        return kind, args

    def _scaling_workspace(self, C: np.ndarray) -> np.ndarray | None:
        if not self._use_scaling:
            return None
        if self._workspace is None or self._workspace.shape != C.shape or self._workspace.dtype != C.dtype:
            self._workspace = np.empty_like(C)
        return self._workspace

    # -- the interface -------------------------------------------------------------------------
    def new_potentials(self, init: Any):
        from ..solvers._common import initial_potentials  # noqa: PLC0415

        B, n, m = self.batch.B, self.batch.n, self.batch.m
        return initial_potentials(init, n, m, xp=np, dtype=np.float64, batch=B)

    def iterate(self, ids: Sequence[int], f, g, eps: float, budgets, tol: float, omega: float | None,
                log_sweeps: bool = False):
        om = -1.0 if omega is None else float(omega)
        its, sts, errs = [], [], []
        for p, budget in zip(ids, budgets):
            kind, args = self.operands(int(p))
            fp, gp, la, lb = f[p], g[p], self.log_a[p], self.log_b[p]
            work = None if (log_sweeps or kind != "dense") else self._scaling_workspace(args[0])
            if work is not None:
                it, st, e = self.K.sinkhorn_scaling_dense(args[0], la, lb, fp, gp, eps, int(budget), tol,
                                                          self.n_threads, work, 50.0, om, self.batch.rho_a,
                                                          self.batch.rho_b)
            else:
                run = self.K.sinkhorn_dense if kind == "dense" else self.K.sinkhorn_pointcloud
                it, st, e = run(*args, la, lb, fp, gp, eps, int(budget), tol, self.n_threads, om, self.batch.rho_a,
                                self.batch.rho_b)
            its.append(it)
            sts.append(st)
            errs.append(list(e))
        return np.asarray(its, dtype=np.int64), np.asarray(sts, dtype=np.int64), errs

    def iterate_symmetric(self, ids: Sequence[int], f, eps: float, budgets, tol: float):
        its, sts, errs = [], [], []
        for p, budget in zip(ids, budgets):
            kind, args = self.operands(int(p))
            if kind == "dense" and self._use_scaling and self.batch.balanced:
                # stored Gibbs kernel: no exp per iteration; hands back to log sweeps on underflow
                it, st, e = self.K.symmetric_scaling_dense(args[0], self.log_a[p], f[p], eps, int(budget), tol,
                                                           self.n_threads, self._scaling_workspace(args[0]), 50.0)
            else:
                run = self.K.symmetric_dense if kind == "dense" else self.K.symmetric_pointcloud
                it, st, e = run(*args, self.log_a[p], f[p], eps, int(budget), tol, self.n_threads,
                                self.batch.rho_a)
            its.append(it)
            sts.append(st)
            errs.append(list(e))
        return np.asarray(its, dtype=np.int64), np.asarray(sts, dtype=np.int64), errs

    def _exact_operands(self, p: int) -> tuple[str, tuple]:
        """Operands of the final measure in float64: the float32 kernels' own sums carry ~1e-7
        (absolute, in the L1 error) of rounding, too much to decide ``converged`` near tol."""
        kind, args = self._operands[p] if p in self._operands else self.batch.geometry(p).kernel_operands()
        if args[0].dtype == np.float64:
            return kind, args
        if kind == "pointcloud":  # O((n + m) d): the distances are then computed in float64
            return kind, (args[0].astype(np.float64), args[1].astype(np.float64)) + tuple(args[2:])
        key = ("exact", p)
        if key not in self._exact:
            C = args[0]
            if C.size * 8 > self.kernel_memory:  # no room for a float64 copy: the float32 sums
                return kind, args
            self._exact = {key: np.asarray(C, dtype=np.float64)}  # one problem's copy at a time
        return kind, (self._exact[key],)

    def measure(self, f, g, eps: float, ids: Sequence[int]):
        merr, cost, plogp = (np.empty(len(ids)) for _ in range(3))
        for c, p in enumerate(ids):
            p = int(p)
            kind, args = self._exact_operands(p)
            row, col = np.empty(self.batch.n), np.empty(self.batch.m)
            fn = self.K.plan_stats_dense if kind == "dense" else self.K.plan_stats_pointcloud
            cost[c], plogp[c] = fn(*args, f[p], g[p], eps, row, col, self.n_threads)
            a, b, bt = self._a64[p], self._b64[p], self.batch
            f64, g64 = np.asarray(f[p], dtype=np.float64), np.asarray(g[p], dtype=np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                merr[c] = float(marginal_residual(row, col, f64, g64, a, b, eps, bt.rho_a, bt.rho_b))
                self.values[p] = float(primal_value(cost[c], plogp[c], row, col, a, b, eps, bt.rho_a, bt.rho_b))
            self.masses[p] = float(row.sum())
        return merr, cost, plogp

    def dual_values(self, f, g, eps: float, ids: Sequence[int]) -> np.ndarray:
        """Dual values (:func:`~otsolve.problems.marginals.dual_value`) of problems ``ids`` (float64)."""
        out = np.empty(len(ids))
        for c, p in enumerate(ids):
            p = int(p)
            kind, args = self._exact_operands(p)
            row, col = np.empty(self.batch.n), np.empty(self.batch.m)
            fn = self.K.plan_stats_dense if kind == "dense" else self.K.plan_stats_pointcloud
            fn(*args, f[p], g[p], eps, row, col, self.n_threads)
            a, b, bt = self._a64[p], self._b64[p], self.batch
            with np.errstate(invalid="ignore", over="ignore"):
                out[c] = float(dual_value(np.asarray(f[p], dtype=np.float64), np.asarray(g[p], dtype=np.float64),
                                          a, b, row.sum(), eps, bt.rho_a, bt.rho_b))
        return out

    def plan(self, p: int, f, g, eps: float, dtype):
        return self.batch.geometry(p).plan_from_potentials(f[p], g[p], eps, dtype)


def make_sinkhorn_kernels(batch: ProblemBatch, *, compiled: bool = True, n_threads: int = 0,
                          mode: str = "auto", kernel_memory: float = 4e9):
    """The kernel set for the batch's array library: CUDA passes for CuPy arrays (with
    ``compiled=True``), the host kernels otherwise."""
    if batch.xp is not np:
        if not compiled:
            raise ValueError("compiled=False (the NumPy reference) runs on host arrays; move the problem "
                             "to NumPy first")
        from .cupy_sinkhorn import CudaKernels  # noqa: PLC0415

        return CudaKernels(batch)
    return HostKernels(batch, compiled=compiled, n_threads=n_threads, mode=mode, kernel_memory=kernel_memory)
