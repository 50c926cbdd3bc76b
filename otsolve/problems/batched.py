"""B OT problems of one size, solved together by the same Sinkhorn driver (B > 1).

Example
-------
>>> import numpy as np
>>> import otsolve
>>> rng = np.random.default_rng(0)
>>> prob = otsolve.BatchedLinearProblem(x=rng.random((8, 50, 2)), y=rng.random((8, 60, 2)), epsilon=0.05)
>>> res = otsolve.Sinkhorn(tol=1e-9)(prob)
>>> res.f.shape, bool(res.converged_each.all())
((8, 50), True)

References
----------
M. Cuturi, "Sinkhorn distances", NeurIPS 2013; the per-problem masks answer POT's ``ot.batch``
stopping only when the worst problem converges (spec interface.md §4.3).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import as_float_array, check_cost_overflow, check_epsilon, check_finite, check_same_mass
from ..geometry import COSTS, Geometry, PointCloud
from .marginals import check_rho

__all__ = ["BatchedLinearProblem"]


def _namespace(*arrays: Any):
    from ..backends import get_namespace  # noqa: PLC0415

    return get_namespace(*arrays)


def _as_float(xp, arr, name: str, ndim: int):
    """The shared checks of :mod:`otsolve._validation`, on ``xp`` arrays."""
    arr = as_float_array(xp.asarray(arr), name, ndim=ndim)
    check_finite(arr, name)
    return arr


class BatchedLinearProblem:
    r"""B OT problems of one size ``n x m``: a leading batch axis on every array.

    Parameters
    ----------
    cost : array (B, n, m), optional
        Dense costs. Give either ``cost`` or the point clouds ``x`` (and ``y``).
    a, b : array (B, n) / (B, m), or (n,) / (m,) shared by all problems, optional
        Nonnegative weights with equal sums per problem; uniform if omitted.
    epsilon : float
        Entropic regularisation ε (multiplies Σ P log P), shared by the batch.
    x, y : array (B, n, d), (B, m, d), optional
        Point clouds (``y`` defaults to ``x``); the cost is computed on the fly by the compiled
        (CPU) and CUDA kernels.
    cost_fn : {"sqeuclidean", "half_sqeuclidean", "euclidean"}
    scale_cost : float, default 1.0
        Multiplier of the cost.

    symmetric : bool, default False
        The problems are OT(a, a) on a symmetric cost (``y`` omitted, ``b`` omitted or equal to
        ``a``; a dense ``cost`` must be symmetric): the optimal potentials then coincide (f = g)
        and the Sinkhorn driver keeps one potential with the averaged symmetric update
        ``f <- (f + T(f)) / 2``, which converges in a handful of iterations where alternating
        updates need hundreds (the self-transport terms of the Sinkhorn divergence; Feydy et
        al., AISTATS 2019).
    rho_a, rho_b : float, optional
        KL relaxation of the marginals, shared by the batch (see :class:`~otsolve.LinearProblem`);
        None / ``inf`` = balanced. A symmetric batch uses ``rho_a`` for both sides.

    Notes
    -----
    NumPy and CuPy arrays are accepted (not mixed); float32 is kept. Solve with
    :class:`~otsolve.Sinkhorn` (each problem stops at its own tolerance).
    """

    def __init__(self, cost: Any = None, a: Any = None, b: Any = None, epsilon: float | None = None, *,
                 x: Any = None, y: Any = None, cost_fn: str = "sqeuclidean", scale_cost: float = 1.0,
                 symmetric: bool = False, rho_a: float | None = None, rho_b: float | None = None) -> None:
        if (cost is None) == (x is None):
            raise ValueError("give either cost (B, n, m) or point clouds x (B, n, d)")
        self.cost: Any
        self.x: Any
        self.y: Any
        xp = _namespace(cost, a, b, x, y)
        self.xp = xp
        s = float(scale_cost)
        if not np.isfinite(s) or s <= 0:
            raise ValueError(f"scale_cost must be a positive finite number, got {scale_cost!r}")
        self.scale = s
        self.cost_fn = cost_fn
        if cost is not None:
            C = _as_float(xp, cost, "cost", 3)
            C = C * C.dtype.type(s) if s != 1.0 else C
            self.cost, self.x, self.y = xp.ascontiguousarray(C), None, None
            self.B, self.n, self.m = (int(t) for t in C.shape)
            dtype = C.dtype
        else:
            compiled_costs = sorted(k for k, v in COSTS.items() if v.kernel_kind is not None)
            if cost_fn not in compiled_costs:
                raise ValueError(f"unknown cost_fn {cost_fn!r}; known: {compiled_costs}")
            X = _as_float(xp, x, "x", 3)
            Y = X if y is None else _as_float(xp, y, "y", 3)
            if X.shape[0] != Y.shape[0] or X.shape[2] != Y.shape[2]:
                raise ValueError(f"x and y must be (B, n, d) and (B, m, d), got {X.shape} and {Y.shape}")
            if X.dtype != Y.dtype:
                raise ValueError(f"x and y have different dtypes: {X.dtype} vs {Y.dtype}")
            check_cost_overflow(X, Y, cost_fn, s)
            self.cost, self.x, self.y = None, xp.ascontiguousarray(X), xp.ascontiguousarray(Y)
            spec = COSTS[cost_fn]
            self.kind = int(spec.kernel_kind)  # type: ignore[arg-type]  # compiled costs only
            self.kernel_scale = spec.multiplier * s
            self.B, self.n, self.m = int(X.shape[0]), int(X.shape[1]), int(Y.shape[1])
            dtype = X.dtype
        self.dtype = dtype
        self.a = self._weights(a, self.n, "a")
        self.b = self._weights(b, self.m, "b")
        self.rho_a, self.rho_b = check_rho(rho_a, "rho_a"), check_rho(rho_b, "rho_b")
        self.symmetric = bool(symmetric)
        if self.symmetric:
            if rho_b is not None and self.rho_b != self.rho_a:
                raise ValueError("symmetric=True: rho_b must be omitted or equal to rho_a")
            self.rho_b = self.rho_a
        if self.is_balanced:
            # equal masses per problem (rounding-level gaps rescaled, as for a single LinearProblem)
            self.b = xp.ascontiguousarray(check_same_mass(self.a, self.b))
        if self.symmetric:
            if x is not None and y is not None and y is not x:
                raise ValueError("symmetric=True: give the point clouds x only (the cost is C(x, x))")
            if self.n != self.m:
                raise ValueError(f"symmetric=True needs square problems, got n={self.n}, m={self.m}")
            if b is not None and not bool(xp.all(self.b == self.a)):
                raise ValueError("symmetric=True: b must be omitted or equal to a")
            self.b = self.a
            if self.cost is not None and not bool(xp.allclose(self.cost, self.cost.transpose(0, 2, 1))):
                raise ValueError("symmetric=True: the cost matrices must be symmetric")
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
    def is_balanced(self) -> bool:
        """Both marginals are hard constraints (``rho_a = rho_b = inf``)."""
        return self.rho_a == np.inf and self.rho_b == np.inf

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.B, self.n, self.m)

    def geometry(self, p: int) -> Geometry | PointCloud:
        """Problem ``p``'s geometry (views of the batch's arrays, no copy and no re-validation)."""
        if self.cost is not None:
            return Geometry._trusted(self.cost[p])
        return PointCloud._trusted(self.x[p], self.y[p], self.cost_fn, self.scale)

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

    def to_namespace(self, xp: Any) -> "BatchedLinearProblem":
        """The same batch with its arrays in array library ``xp`` (numpy or cupy)."""
        new = object.__new__(BatchedLinearProblem)
        new.__dict__.update(self.__dict__)
        host = (lambda v: None if v is None else xp.asarray(v.get() if hasattr(v, "get") else v))
        new.cost, new.x, new.y, new.a, new.b = (host(v) for v in (self.cost, self.x, self.y, self.a, self.b))
        new.xp = xp
        return new

    def cost_matrix(self, idx=None):
        """Dense costs (B', n, m) of the problems ``idx`` (all by default)."""
        xp = self.xp
        if self.cost is not None:
            return self.cost if idx is None else self.cost[idx]
        ids = range(self.B) if idx is None else idx
        return xp.stack([self.geometry(int(p)).cost_matrix for p in ids])

    def __repr__(self) -> str:
        unb = "" if self.is_balanced else f", rho_a={self.rho_a}, rho_b={self.rho_b}"
        return (f"BatchedLinearProblem(B={self.B}, n={self.n}, m={self.m}, epsilon={self.epsilon}{unb}, "
                f"dtype={self.dtype})")
