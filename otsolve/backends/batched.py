"""Batched entropic OT: B problems of the same size solved together, per-problem convergence.

Written against an array namespace ``xp`` so the same code runs on NumPy (CPU, tested there) and
CuPy; on CuPy the fused CUDA passes of :mod:`otsolve.backends.cupy_sinkhorn` are used by default
(``use_kernels=True``), launched only over the problems still running.

Example
-------
>>> import numpy as np
>>> from otsolve.backends import BatchedLinearProblem, BatchedSinkhorn
>>> rng = np.random.default_rng(0)
>>> prob = BatchedLinearProblem(x=rng.random((8, 50, 2)), y=rng.random((8, 60, 2)), epsilon=0.05)
>>> res = BatchedSinkhorn(tol=1e-9)(prob)
>>> res.f.shape, bool(res.converged_each.all())
((8, 50), True)

References
----------
M. Cuturi, "Sinkhorn distances", NeurIPS 2013; the per-problem masks answer POT's ``ot.batch``
stopping only when the worst problem converges (spec interface.md §4.3).
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from .._validation import as_float_array, check_epsilon, check_finite
from ..solvers._common import default_tol
from ..solvers.result import OTResult
from . import get_namespace, is_cupy

__all__ = ["BatchedLinearProblem", "BatchedSinkhorn", "batched_logsumexp"]

_KINDS = {"sqeuclidean": (0, 1.0), "half_sqeuclidean": (0, 0.5), "euclidean": (1, 1.0)}


def _as_float(xp, arr, name: str, ndim: int):
    """The shared checks of :mod:`otsolve._validation`, on ``xp`` arrays."""
    arr = as_float_array(xp.asarray(arr), name, ndim=ndim)
    check_finite(arr, name)
    return arr


class BatchedLinearProblem:
    r"""B balanced OT problems of one size ``n x m``: a leading batch axis on every array.

    Parameters
    ----------
    cost : array (B, n, m), optional
        Dense costs. Give either ``cost`` or the point clouds ``x`` (and ``y``).
    a, b : array (B, n) / (B, m), or (n,) / (m,) shared by all problems, optional
        Nonnegative weights with equal sums per problem; uniform if omitted.
    epsilon : float
        Entropic regularisation ε (multiplies Σ P log P), shared by the batch.
    x, y : array (B, n, d), (B, m, d), optional
        Point clouds (``y`` defaults to ``x``); the cost is computed on the fly by the CUDA
        kernels and materialised per batch on NumPy.
    cost_fn : {"sqeuclidean", "half_sqeuclidean", "euclidean"}
    scale_cost : float, default 1.0
        Multiplier of the cost.

    NumPy and CuPy arrays are accepted (not mixed); float32 is kept.
    """

    def __init__(self, cost: Any = None, a: Any = None, b: Any = None, epsilon: float | None = None, *,
                 x: Any = None, y: Any = None, cost_fn: str = "sqeuclidean", scale_cost: float = 1.0) -> None:
        if (cost is None) == (x is None):
            raise ValueError("give either cost (B, n, m) or point clouds x (B, n, d)")
        xp = get_namespace(cost, a, b, x, y)
        self.xp = xp
        s = float(scale_cost)
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"scale_cost must be a positive finite number, got {scale_cost!r}")
        self.scale = s
        if cost is not None:
            C = _as_float(xp, cost, "cost", 3)
            self.cost, self.x, self.y = (C * C.dtype.type(s) if s != 1.0 else C), None, None
            self.B, self.n, self.m = (int(t) for t in C.shape)
            dtype = C.dtype
        else:
            if cost_fn not in _KINDS:
                raise ValueError(f"unknown cost_fn {cost_fn!r}; known: {sorted(_KINDS)}")
            X = _as_float(xp, x, "x", 3)
            Y = X if y is None else _as_float(xp, y, "y", 3)
            if X.shape[0] != Y.shape[0] or X.shape[2] != Y.shape[2]:
                raise ValueError(f"x and y must be (B, n, d) and (B, m, d), got {X.shape} and {Y.shape}")
            if X.dtype != Y.dtype:
                raise ValueError(f"x and y have different dtypes: {X.dtype} vs {Y.dtype}")
            self.cost, self.x, self.y = None, X, Y
            self.kind, mult = _KINDS[cost_fn]
            self.kernel_scale = mult * s
            self.B, self.n, self.m = int(X.shape[0]), int(X.shape[1]), int(Y.shape[1])
            dtype = X.dtype
        self.dtype = dtype
        self.a = self._weights(a, self.n, "a")
        self.b = self._weights(b, self.m, "b")
        sa, sb = self.a.sum(axis=1), self.b.sum(axis=1)
        rtol = 1e-6 if dtype == np.float64 else 1e-4
        bad = xp.abs(sa - sb) > rtol * xp.maximum(sa, sb)
        if bool(bad.any()):
            p = int(xp.argmax(bad))
            raise ValueError(f"a and b have different total masses in problem {p} ({float(sa[p])!r} vs "
                             f"{float(sb[p])!r}); balanced OT needs equal masses")
        if epsilon is None:
            raise ValueError("BatchedLinearProblem needs epsilon > 0")
        self.epsilon = check_epsilon(epsilon)

    def _weights(self, w, size: int, name: str):
        xp = self.xp
        if w is None:
            return xp.full((self.B, size), 1.0 / size, dtype=self.dtype)
        w = _as_float(xp, w, name, xp.asarray(w).ndim).astype(self.dtype, copy=False)
        if w.ndim == 1:
            w = xp.broadcast_to(w, (self.B, size))
        if w.shape != (self.B, size):
            raise ValueError(f"{name} must have shape ({self.B}, {size}) or ({size},), got {tuple(w.shape)}")
        if bool((w < 0).any()):
            raise ValueError(f"{name} has negative entries; weights must be >= 0")
        if bool((w.sum(axis=1) <= 0).any()):
            raise ValueError(f"{name} has a problem with zero total mass")
        return xp.ascontiguousarray(w)

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.B, self.n, self.m)

    def subset(self, idx) -> "BatchedLinearProblem":
        """The problems ``idx`` (an integer array) as a new batch (already validated: no checks)."""
        xp = self.xp
        sub = object.__new__(BatchedLinearProblem)
        sub.__dict__.update(self.__dict__)
        take = (lambda v: None if v is None else xp.ascontiguousarray(v[idx]))
        sub.cost, sub.x, sub.y = take(self.cost), take(self.x), take(self.y)
        sub.a, sub.b = take(self.a), take(self.b)
        sub.B = int(len(idx))
        return sub

    def cost_matrix(self, idx=None):
        """Dense costs (B', n, m) of the problems ``idx`` (all by default)."""
        xp = self.xp
        if self.cost is not None:
            return self.cost if idx is None else self.cost[idx]
        X = self.x if idx is None else self.x[idx]
        Y = self.y if idx is None else self.y[idx]
        d2 = xp.zeros((X.shape[0], self.n, self.m), dtype=self.dtype)
        for k in range(X.shape[2]):
            d2 += (X[:, :, None, k] - Y[:, None, :, k]) ** 2
        if self.kind == 1:
            d2 = xp.sqrt(d2)
        return d2 * self.dtype.type(self.kernel_scale)

    def __repr__(self) -> str:
        return f"BatchedLinearProblem(B={self.B}, n={self.n}, m={self.m}, epsilon={self.epsilon}, dtype={self.dtype})"


def batched_logsumexp(xp, v, axis: int):
    """log Σ exp(v) along ``axis``, max-shifted; all -inf slices give -inf (no NaN)."""
    mx = v.max(axis=axis, keepdims=True)
    mx = xp.where(xp.isfinite(mx), mx, 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        s = xp.exp(v - mx).sum(axis=axis)
        return xp.log(s) + xp.squeeze(mx, axis=axis)


@dataclass(frozen=True)
class BatchedSinkhorn:
    """Log-domain Sinkhorn on a :class:`BatchedLinearProblem` with per-problem convergence.

    Each problem stops when its L1 marginal error ``||P1 - a||_1 + ||P^T 1 - b||_1 <= tol``; it is
    then frozen and removed from the work of later iterations (compacted on NumPy/CuPy, dropped
    from the CUDA launch list). The result holds (B, n) / (B, m) potentials and per-problem
    fields ``converged_each``, ``n_iter_each``, ``marginal_errors``, ``costs``, ``values``.

    Parameters
    ----------
    tol : float, optional
        Default 1e-9 (float64) / 1e-6 (float32).
    max_iter : int, default 10000
    check_every : int, optional
        Iterations between convergence checks on CuPy (each check synchronises the device);
        default: chosen from the problem size. NumPy checks every iteration.
    use_kernels : bool, default True
        On CuPy, use the fused CUDA passes (False: the generic ``xp`` code, for checks).
    warn : bool, default True
        RuntimeWarning when some problem does not converge.
    """

    tol: float | None = None
    max_iter: int = 10_000
    check_every: int | None = None
    use_kernels: bool = True
    warn: bool = True

    method = "batched_sinkhorn"

    def __post_init__(self) -> None:
        if self.tol is not None and not (np.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"tol must be a positive number, got {self.tol!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 0:
            raise ValueError(f"max_iter must be a nonnegative integer, got {self.max_iter!r}")
        if self.check_every is not None and (not isinstance(self.check_every, (int, np.integer))
                                             or self.check_every < 1):
            raise ValueError(f"check_every must be a positive integer, got {self.check_every!r}")

    def __call__(self, problem: BatchedLinearProblem, init: Any = None) -> OTResult:
        if not isinstance(problem, BatchedLinearProblem):
            raise ValueError(f"expected a BatchedLinearProblem, got {type(problem).__name__}")
        xp = problem.xp
        B, n, m = problem.shape
        dtype = problem.dtype
        tol = default_tol(dtype) if self.tol is None else float(self.tol)
        f, g = self._init(xp, init, B, n, m, dtype)
        t0 = time.perf_counter()
        n_iter, status, errs, merr, costs, values = self._run(problem, f, g, tol)
        # The stopping test measures the rows of the iterate (its columns are exact up to
        # rounding); the final exact error can land just above tol (float32 column rounding).
        # A few more iterations at a tighter tol settle those problems, and only those.
        for _ in range(3):
            redo = np.flatnonzero((status == 0) & ~(merr <= tol) & (n_iter < self.max_iter))
            if not redo.size:
                break
            budget = int(min(10, self.max_iter - n_iter[redo].max()))
            if budget <= 0:
                break
            fs, gs = f[redo].copy(), g[redo].copy()
            again = replace(self, max_iter=budget, warn=False)
            n2, st2, e2, m2, c2, v2 = again._run(problem.subset(redo), fs, gs, 0.5 * tol)
            f[redo], g[redo] = fs, gs
            n_iter[redo] += n2
            status[redo] = np.where(st2 == 2, 2, 0)
            merr[redo], costs[redo], values[redo] = m2, c2, v2
            for c, p in enumerate(redo):
                errs[p].extend(e2[c])
        if is_cupy(f):
            xp.cuda.get_current_stream().synchronize()
        elapsed = time.perf_counter() - t0
        converged = np.isfinite(merr) & (merr <= tol) & (status != 2)
        st_names = np.where(converged, "converged", np.where((status == 2) | ~np.isfinite(merr),
                                                             "diverged", "max_iter"))
        n_bad = int((~converged).sum())
        message = (f"all {B} problems converged (max marginal L1 error {merr.max():.3g} <= tol {tol:.3g})"
                   if n_bad == 0 else f"{n_bad} of {B} problems did not reach tol {tol:.3g} (max_iter="
                   f"{self.max_iter}; worst marginal L1 error {np.nanmax(merr):.3g})")
        if n_bad and self.warn:
            warnings.warn(f"BatchedSinkhorn: {message}", RuntimeWarning, stacklevel=2)
        # per-iteration history of the worst running problem
        L = max((len(e) for e in errs), default=0)
        hist = np.full((B, L), np.nan)
        for p, e in enumerate(errs):
            hist[p, : len(e)] = e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            worst = np.nanmax(hist, axis=0) if L else np.zeros(0)
        eps = problem.epsilon

        def plan():
            Cb = problem.cost_matrix()
            return xp.exp((f[:, :, None] + g[:, None, :] - Cb) / dtype.type(eps) - 1)

        return OTResult(
            method=self.method, f=f, g=g, cost=float(costs.sum()), value=float(values.sum()),
            converged=bool(converged.all()), n_iter=int(n_iter.max(initial=0)),
            marginal_error=float(merr.max()), errors=worst, message=message,
            status="converged" if n_bad == 0 else "partial", epsilon=eps, plan_fn=plan,
            converged_each=converged, n_iter_each=n_iter, marginal_errors=merr, costs=costs,
            values=values, status_each=st_names, errors_each=errs, time=elapsed,
            backend="cupy" if is_cupy(f) else "numpy",
        )

    # ----------------------------------------------------------------------------------------
    def _run(self, problem, f, g, tol):
        """(n_iter, status, errors, marginal errors, costs, values) per problem; f, g updated."""
        if is_cupy(f) and self.use_kernels:
            return self._run_cuda(problem, f, g, tol)
        return self._run_xp(problem, f, g, tol)

    @staticmethod
    def _init(xp, init, B, n, m, dtype):
        if init is None:
            return xp.zeros((B, n), dtype=dtype), xp.zeros((B, m), dtype=dtype)
        f, g = (init.f, init.g) if hasattr(init, "f") else init
        f = xp.array(xp.asarray(f), dtype=dtype)
        g = xp.array(xp.asarray(g), dtype=dtype)
        if f.shape != (B, n) or g.shape != (B, m):
            raise ValueError(f"init potentials have shapes {f.shape}, {g.shape}; expected ({B}, {n}), ({B}, {m})")
        if bool(xp.isnan(f).any() | xp.isnan(g).any()):
            raise ValueError("init potentials contain NaN")
        return f, g

    def _run_xp(self, problem, f, g, tol):
        """Generic array code: every iteration measures the error of the current iterate (rows;
        columns are exact after a column update), freezes the problems at tol, updates the rest."""
        xp = problem.xp
        B = problem.B
        eps = problem.epsilon
        T = problem.dtype.type
        with np.errstate(divide="ignore"):
            log_a, log_b = xp.log(problem.a), xp.log(problem.b)
        a = problem.a
        n_iter = np.zeros(B, dtype=np.int64)
        status = np.ones(B, dtype=np.int64)
        errs: list[list[float]] = [[] for _ in range(B)]
        active = np.arange(B)
        check = 1 if xp is np else (self.check_every or 10)
        C = problem.cost_matrix(active)
        pending = []  # (iteration-in-block, device errors) between checks on CuPy
        it = 0
        while active.size:
            lse_r = batched_logsumexp(xp, (g[active][:, None, :] - C) / T(eps), axis=2)
            fa = f[active]
            with np.errstate(over="ignore", invalid="ignore"):
                mass = xp.exp(xp.minimum(fa / T(eps) - 1 + lse_r, T(np.log(np.finfo(problem.dtype).max))))
                mass = xp.where(xp.isneginf(fa), 0, mass)
            err = xp.abs(mass - a[active]).sum(axis=1)
            pending.append(err)
            stop = np.zeros(active.size, dtype=bool)
            if len(pending) >= check or it >= self.max_iter:
                E = np.stack([np.asarray(e.get() if is_cupy(e) else e, dtype=float) for e in pending])
                pending = []
                for c, p in enumerate(active):
                    errs[p].extend(E[:, c].tolist())
                    if not np.all(np.isfinite(E[:, c])):
                        status[p], stop[c] = 2, True
                    elif E[-1, c] <= tol:
                        status[p], stop[c] = 0, True
                    elif it >= self.max_iter:
                        stop[c] = True
            if it >= self.max_iter:
                break
            if stop.any():  # compact: finished problems leave the work arrays
                keep = ~stop
                active, C, lse_r = active[keep], C[keep], lse_r[keep]
                if not active.size:
                    break
            fa = T(eps) * (log_a[active] + 1 - lse_r)
            fa = xp.where(xp.isneginf(log_a[active]), -xp.inf, fa).astype(problem.dtype, copy=False)
            f[active] = fa
            lse_c = batched_logsumexp(xp, (fa[:, :, None] - C) / T(eps), axis=1)
            ga = T(eps) * (log_b[active] + 1 - lse_c)
            g[active] = xp.where(xp.isneginf(log_b[active]), -xp.inf, ga).astype(problem.dtype, copy=False)
            n_iter[active] += 1
            it += 1
        merr, costs, values = self._stats_xp(problem, f, g)
        return n_iter, status, errs, merr, costs, values

    @staticmethod
    def _stats_xp(problem, f, g):
        xp = problem.xp
        eps = problem.epsilon
        merr, costs, values = (np.zeros(problem.B) for _ in range(3))
        step = max(1, (1 << 24) // (problem.n * problem.m))  # ~16M entries per block of problems
        for s in range(0, problem.B, step):
            idx = np.arange(s, min(problem.B, s + step))
            C = problem.cost_matrix(idx).astype(xp.float64)
            L = (f[idx].astype(xp.float64)[:, :, None] + g[idx].astype(xp.float64)[:, None, :] - C) / eps - 1
            with np.errstate(over="ignore", invalid="ignore"):
                P = xp.exp(L)
                plogp = xp.where(P > 0, P * L, 0).sum(axis=(1, 2))
            row, col = P.sum(axis=2), P.sum(axis=1)
            me = xp.abs(row - problem.a[idx]).sum(axis=1) + xp.abs(col - problem.b[idx]).sum(axis=1)
            c = (P * C).sum(axis=(1, 2))
            v = c + eps * plogp
            for dst, src in ((merr, me), (costs, c), (values, v)):
                dst[idx] = src.get() if is_cupy(src) else src
        return merr, costs, values

    def _run_cuda(self, problem, f, g, tol):
        import cupy as cp  # noqa: PLC0415

        from .cupy_sinkhorn import CudaGeometry, CudaSinkhornEngine, finish_stats, sinkhorn_loop

        with cp.cuda.Device(f.device.id):
            if problem.cost is not None:
                geo = CudaGeometry(C=problem.cost)
            else:
                geo = CudaGeometry(X=problem.x, Y=problem.y, kind=problem.kind, scale=problem.kernel_scale)
            engine = CudaSinkhornEngine(geo)
            a = cp.ascontiguousarray(problem.a)
            b = cp.ascontiguousarray(problem.b)
            log_a, log_b = cp.log(a), cp.log(b)
            ids = np.arange(problem.B, dtype=np.int32)
            lr = sinkhorn_loop(engine, log_a, log_b, f, g, problem.epsilon, int(self.max_iter), tol, ids,
                               self.check_every)
            merr, costs, values = finish_stats(engine, f, g, a, b, problem.epsilon, cp.asarray(ids))
        return lr.n_iter, lr.status, lr.errors, merr, costs, values
