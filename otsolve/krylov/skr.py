"""Sorting Krylov Recycling (SKR): order similar systems next to each other, then recycle.

H. Wang et al., "Accelerating Data Generation for Neural Operators via Krylov Subspace
Recycling", ICLR 2024 (Algorithm 1: greedy nearest-neighbour chain on the parameters).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from .solver import RecyclingSolver

__all__ = ["sort_systems", "solve_sequence", "hilbert_index", "make_preconditioner"]


def _as_keys(params: Any) -> np.ndarray:
    if isinstance(params, np.ndarray):
        X = params
        if X.ndim == 0:
            raise ValueError("params must hold one key per system")
        X = X.reshape(X.shape[0], -1)
    else:
        items = [np.asarray(p, dtype=np.float64).ravel() for p in params]
        if not items:
            raise ValueError("params is empty")
        sizes = {a.size for a in items}
        if len(sizes) != 1:
            raise ValueError(f"every system's parameters must have the same size, got sizes {sorted(sizes)}")
        X = np.stack(items)
    if X.dtype.kind not in "fiu" or X.size == 0:
        raise ValueError("params must be a non-empty real array (N, ...)")
    X = np.asarray(X, dtype=np.float64)  # a copy for ints; floats are only read, never mutated
    if not np.all(np.isfinite(X)):
        raise ValueError("params contains non-finite values")
    return X


def _greedy(X: np.ndarray, start: int = 0) -> np.ndarray:
    """Nearest-neighbour open path (Algorithm 1 of Wang et al.): O(N² p) via Gram products."""
    N = X.shape[0]
    sq = np.einsum("ij,ij->i", X, X)
    visited = np.zeros(N, dtype=bool)
    order = np.empty(N, dtype=np.int64)
    cur = start
    full = X @ X.T if N <= 4096 else None  # one BLAS gemm when it fits (≤ 128 MiB)
    for t in range(N):
        order[t] = cur
        visited[cur] = True
        if t == N - 1:
            break
        dots = full[cur] if full is not None else X @ X[cur]
        d2 = sq - 2.0 * dots  # ||x_j||² - 2<x_j, x_cur> (+ const): same argmin as the distance
        d2[visited] = np.inf
        cur = int(np.argmin(d2))
    return order


def hilbert_index(xy: np.ndarray, bits: int = 16) -> np.ndarray:
    """Index along a 2-D Hilbert curve of points in the unit square (vectorised)."""
    n = 1 << bits
    q = np.clip((np.asarray(xy, dtype=np.float64) * (n - 1)).round().astype(np.int64), 0, n - 1)
    x, y = q[:, 0].copy(), q[:, 1].copy()
    d = np.zeros(len(q), dtype=np.int64)
    s = n >> 1
    while s > 0:
        rx = ((x & s) > 0).astype(np.int64)
        ry = ((y & s) > 0).astype(np.int64)
        d += s * s * ((3 * rx) ^ ry)
        # rotate the quadrant
        flip = ry == 0
        swap = flip & (rx == 1)
        x = np.where(swap, n - 1 - x, x)
        y = np.where(swap, n - 1 - y, y)
        x, y = np.where(flip, y, x), np.where(flip, x, y)
        s >>= 1
    return d


def _hilbert(X: np.ndarray, group_size: int) -> np.ndarray:
    """Space-filling order on a 2-D PCA embedding, refined by greedy chains within groups.

    The scaling recipe of Wang et al. (§ "sorting for large N"): reduce, cut along a Hilbert
    curve, sort greedily within each cell. O(N p) + O(N · group_size · p).
    """
    N = X.shape[0]
    Xc = X - X.mean(axis=0)
    if N > 2:
        # 2 principal directions by a few power iterations on a random start (cheap for large p)
        rng = np.random.default_rng(0)
        Q = rng.standard_normal((X.shape[1], 2))
        for _ in range(4):
            Q, _ = np.linalg.qr(Xc.T @ (Xc @ Q))
        emb = Xc @ Q
    else:
        emb = np.zeros((N, 2))
    lo, hi = emb.min(axis=0), emb.max(axis=0)
    emb = (emb - lo) / np.where(hi > lo, hi - lo, 1.0)
    order = np.argsort(hilbert_index(emb), kind="stable")
    if group_size <= 1:
        return order
    out = []
    prev = None
    for g0 in range(0, N, group_size):
        idx = order[g0: g0 + group_size]
        Xi = X[idx]
        start = 0 if prev is None else int(np.argmin(np.sum((Xi - prev) ** 2, axis=1)))
        sub = idx[_greedy(Xi, start)]
        out.append(sub)
        prev = X[sub[-1]]
    return np.concatenate(out)


def sort_systems(params: Any, method: str = "greedy", *, start: int = 0, group_size: int = 1000) -> np.ndarray:
    """Order systems so that neighbours have close parameters (SKR, Wang et al. ICLR 2024).

    Parameters
    ----------
    params : array (N, ...) or sequence of N arrays of equal size
        One key per system (e.g. the coefficient field); distances are Euclidean
        (Frobenius) on the flattened keys. Never modified.
    method : {"greedy", "hilbert", "none"}
        ``greedy``: nearest-neighbour chain from ``start`` (Algorithm 1; O(N²) distances).
        ``hilbert``: Hilbert-curve order of a 2-D PCA embedding, greedy within consecutive
        groups of ``group_size`` (for large N). ``none``: identity.

    Returns
    -------
    perm : ndarray of int (N,)
        Solve order: system ``perm[0]`` first.
    """
    X = _as_keys(params)
    N = X.shape[0]
    if not 0 <= int(start) < N:
        raise ValueError(f"start must be in [0, {N}), got {start!r}")
    if method == "greedy":
        return _greedy(X, int(start))
    if method == "hilbert":
        return _hilbert(X, int(group_size))
    if method == "none":
        return np.arange(N)
    raise ValueError(f"method must be 'greedy', 'hilbert' or 'none', got {method!r}")


def make_preconditioner(A: Any, kind: str | Callable | None):
    """``None``, ``"jacobi"``, ``"ilu"`` (``spilu``, drop_tol 1e-4, fill 10) or a callable ``A -> M``."""
    if kind is None or kind == "none":
        return None
    if callable(kind):
        return kind(A)
    A = sp.csr_matrix(A)
    if kind == "jacobi":
        d = A.diagonal()
        if np.any(d == 0):
            raise ValueError("Jacobi preconditioner: A has zero diagonal entries")
        return sp.diags(1.0 / d).tocsr()
    if kind == "ilu":
        ilu = spla.spilu(A.tocsc(), drop_tol=1e-4, fill_factor=10)
        return spla.LinearOperator(A.shape, matvec=ilu.solve, dtype=A.dtype)
    raise ValueError(f"preconditioner must be None, 'jacobi', 'ilu' or a callable, got {kind!r}")


def _unpack(item) -> tuple[Any, Any, Any]:
    if hasattr(item, "A") and hasattr(item, "b"):
        return item.A, item.b, getattr(item, "params", None)
    if isinstance(item, (tuple, list)) and len(item) in (2, 3):
        return item[0], item[1], item[2] if len(item) == 3 else None
    raise ValueError("each system must be a PDESystem-like object (A, b, params) or a tuple (A, b[, params])")


def solve_sequence(systems: Iterable[Any], sort: bool | str = True, solver: RecyclingSolver | None = None, *,
                   keys: Any = None, precond: Any = None, return_stats: bool = False):
    """Solve systems in a recycling-friendly order and return solutions in the caller's order.

    Parameters
    ----------
    systems : iterable of PDESystem or (A, b[, params]) tuples
    sort : bool or str
        ``True`` / ``"greedy"``: SKR greedy order on the parameters; ``"hilbert"``: the large-N
        order; ``False``: generation order.
    solver : RecyclingSolver, optional
        Default ``RecyclingSolver("gcrodr", restart=40, k=20)``; its space and statistics
        persist after the call.
    keys : array (N, ...), optional
        Sorting keys overriding the systems' params.
    precond : None, "jacobi", "ilu" or callable A -> M
        Preconditioner built per system (its setup time is included in ``stats["time"]``).
    return_stats : bool
        Also return a dict with the order, the sort time and per-system counters in caller order.

    Returns
    -------
    X : ndarray (N, n) (or a list if sizes differ)[, stats]
    """
    items = [_unpack(s) for s in systems]
    N = len(items)
    if N == 0:
        raise ValueError("systems is empty")
    solver = RecyclingSolver() if solver is None else solver
    if not isinstance(solver, RecyclingSolver):
        raise ValueError(f"solver must be a RecyclingSolver, got {type(solver).__name__}")
    t0 = time.perf_counter()
    if sort:
        method = "greedy" if sort is True else str(sort)
        ks = keys if keys is not None else [it[2] for it in items]
        if keys is None and any(k is None for k in ks):
            raise ValueError("sorting needs params for every system (or pass keys=)")
        perm = sort_systems(ks, method=method)
        if perm.shape[0] != N:
            raise ValueError(f"keys has {perm.shape[0]} entries for {N} systems")
    else:
        perm = np.arange(N)
    t_sort = time.perf_counter() - t0
    out: list[Any] = [None] * N
    first = len(solver.stats["iterations"])
    setup = []
    for i in perm:
        A, b, _ = items[i]
        ts = time.perf_counter()
        M = make_preconditioner(A, precond)
        setup.append(time.perf_counter() - ts)
        out[i] = solver.solve(A, b, M=M)
    sizes = {x.shape[0] for x in out}
    X = np.stack(out) if len(sizes) == 1 else out
    if not return_stats:
        return X
    inv = np.empty(N, dtype=np.int64)
    inv[perm] = np.arange(N)
    per = {f: np.asarray(v[first:])[inv] for f, v in solver.stats.items()}
    per["precond_setup_time"] = np.asarray(setup)[inv]
    return X, {"order": perm, "sort_time": t_sort, **per}
