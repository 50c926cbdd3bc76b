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

__all__ = ["sort_systems", "partition_systems", "path_length", "solve_sequence", "hilbert_index", "hilbert_key",
           "make_preconditioner"]


def _as_keys(params: Any, name: str = "params") -> np.ndarray:
    if isinstance(params, np.ndarray) or hasattr(params, "__array__") and not isinstance(params, (list, tuple)):
        X = np.asarray(params)
        if X.ndim == 0:
            raise ValueError(f"{name} must hold one key per system (an array (N, ...)), got a scalar")
        if X.shape[0] == 0:
            raise ValueError(f"{name} is empty: there are no systems to sort")
        X = X.reshape(X.shape[0], -1)
    else:
        try:
            items = [np.asarray(p, dtype=np.float64).ravel() for p in params]
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name} must be an array (N, ...) or a sequence of N numeric arrays: {e}") from None
        if not items:
            raise ValueError(f"{name} is empty: there are no systems to sort")
        sizes = {a.size for a in items}
        if len(sizes) != 1:
            raise ValueError(f"every system's parameters must have the same size, got sizes {sorted(sizes)}")
        X = np.stack(items)
    if X.dtype.kind not in "fiu":
        raise ValueError(f"{name} must be a real numeric array (N, ...), got dtype {X.dtype}")
    if X.shape[1] == 0:
        raise ValueError(f"{name} has {X.shape[0]} systems but each key is empty (shape {X.shape})")
    X = np.asarray(X, dtype=np.float64)  # a copy for ints; floats are only read, never mutated
    if not np.all(np.isfinite(X)):
        bad = int(np.flatnonzero(~np.all(np.isfinite(X), axis=1))[0])
        raise ValueError(f"{name} contains non-finite values (NaN or inf), first in system {bad}")
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


def _pca(X: np.ndarray, d: int, rng: np.random.Generator) -> np.ndarray:
    """Coordinates of the rows of ``X`` on (approximately) their ``d`` leading principal axes.

    Randomised range finder with 4 power iterations (Halko, Martinsson, Tropp 2011): O(N p d).
    Returns ``X`` centred (no projection) when ``p <= d``.
    """
    Xc = X - X.mean(axis=0)
    p = X.shape[1]
    if p <= d:
        return Xc
    Q = rng.standard_normal((p, min(d + 4, p)))
    for _ in range(4):
        Q, _ = np.linalg.qr(Xc.T @ (Xc @ Q))
    Y = Xc @ Q
    # rotate to the principal axes of the small sketch and keep the d largest
    _, _, Vt = np.linalg.svd(Y, full_matrices=False)
    return Y @ Vt[:d].T


def _nn_chain(Y: np.ndarray, start: int, X: np.ndarray | None = None, cand: int = 16) -> np.ndarray:
    """Greedy nearest-neighbour chain with a KD tree: the order of :func:`_greedy` in
    O(N log N) expected time for low-dimensional keys.

    The tree holds every unvisited point (it may also hold visited ones); the ``k`` nearest
    tree points of the current one come back sorted, so the first unvisited among them is the
    exact nearest unvisited point; ``k`` grows (×4) until one is found. The tree is rebuilt on
    the unvisited points when more than half of its points are visited, so queries never wade
    through more visited points than unvisited ones: O(log N) rebuilds of O(N log N).

    With ``X`` (full keys, when ``Y`` is a reduced embedding) the ``cand`` nearest unvisited
    candidates in ``Y`` are re-ranked by their exact distance in ``X``.
    """
    from scipy.spatial import cKDTree

    N = Y.shape[0]
    visited = np.zeros(N, dtype=bool)
    order = np.empty(N, dtype=np.int64)
    alive = np.arange(N)
    tree = cKDTree(Y)
    unvisited_in_tree = N
    cur = int(start)
    for t in range(N):
        order[t] = cur
        visited[cur] = True
        unvisited_in_tree -= 1
        if t == N - 1:
            break
        if unvisited_in_tree * 2 < alive.size and alive.size > 64:
            alive = np.flatnonzero(~visited)
            tree = cKDTree(Y[alive])
            unvisited_in_tree = alive.size
        k = cand if X is not None else 8
        while True:
            kk = min(k, alive.size)
            _, j = tree.query(Y[cur], k=kk)
            idx = alive[np.atleast_1d(j)]
            idx = idx[~visited[idx]]
            if idx.size or kk == alive.size:
                break
            k *= 4
        if X is not None and idx.size > 1:
            idx = idx[:cand]
            dd = X[idx] - X[cur]
            cur = int(idx[np.argmin(np.einsum("ij,ij->i", dd, dd))])
        else:
            cur = int(idx[0])
    return order


def _quantile_normalise(Y: np.ndarray) -> np.ndarray:
    """Each coordinate replaced by its rank / N (uniform on [0, 1)): skewed or badly scaled
    coordinates use the curve's cells evenly."""
    N = Y.shape[0]
    R = np.empty_like(Y)
    for j in range(Y.shape[1]):
        R[np.argsort(Y[:, j], kind="stable"), j] = np.arange(N) / N
    return R


def hilbert_key(U: np.ndarray, bits: int | None = None) -> np.ndarray:
    """Index along a d-dimensional Hilbert curve of points in the unit cube ``[0, 1]^d``.

    Skilling's transpose algorithm ("Programming the Hilbert curve", AIP Conf. Proc. 707, 2004),
    vectorised over the points; ``bits`` per axis (default ``63 // d``, so the key fits int64).
    Points close on the curve are close in space.
    """
    U = np.asarray(U, dtype=np.float64)
    if U.ndim != 2 or U.shape[1] < 1:
        raise ValueError(f"U must be an (N, d) array, got shape {U.shape}")
    d = U.shape[1]
    if d > 63:
        raise ValueError(f"at most 63 dimensions, got {d} (reduce the keys first)")
    bits = 63 // d if bits is None else int(bits)
    if bits < 1 or bits * d > 63:
        raise ValueError(f"bits must be in [1, {63 // d}] for d = {d}, got {bits}")
    n = 1 << bits
    X = np.clip(np.floor(U * n), 0, n - 1).astype(np.int64)
    M = 1 << (bits - 1)
    q = M
    while q > 1:  # inverse undo excess work
        P = q - 1
        for i in range(d):
            hit = (X[:, i] & q) != 0
            X[hit, 0] ^= P
            miss = ~hit
            t = (X[miss, 0] ^ X[miss, i]) & P
            X[miss, 0] ^= t
            X[miss, i] ^= t
        q >>= 1
    for i in range(1, d):  # Gray encode
        X[:, i] ^= X[:, i - 1]
    t = np.zeros(X.shape[0], dtype=np.int64)
    q = M
    while q > 1:
        hit = (X[:, d - 1] & q) != 0
        t[hit] ^= q - 1
        q >>= 1
    X ^= t[:, None]
    h = np.zeros(X.shape[0], dtype=np.int64)
    for b in range(bits - 1, -1, -1):  # interleave the transposed bits, most significant first
        for i in range(d):
            h = (h << 1) | ((X[:, i] >> b) & 1)
    return h


def hilbert_index(xy: np.ndarray, bits: int = 16) -> np.ndarray:
    """Index along a 2-D Hilbert curve of points in the unit square (see :func:`hilbert_key`)."""
    return hilbert_key(np.asarray(xy, dtype=np.float64).reshape(-1, 2), bits=bits)


def _curve_order(X: np.ndarray, dims: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Hilbert-curve order of the quantile-normalised ``dims``-D PCA embedding; also the embedding."""
    Y = _pca(X, dims, rng)
    return np.argsort(hilbert_key(_quantile_normalise(Y)), kind="stable"), Y


def _hilbert(X: np.ndarray, group_size: int, dims: int, rng: np.random.Generator) -> np.ndarray:
    """Hilbert order refined by greedy chains within consecutive groups (Wang et al.'s recipe
    for large N: reduce, cut along a Hilbert curve, sort greedily within each cell)."""
    N = X.shape[0]
    order, _ = _curve_order(X, dims, rng)
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


_METHODS = ("nn", "greedy", "hilbert", "none")


def sort_systems(params: Any, method: str = "nn", *, start: int = 0, group_size: int = 1000,
                 dims: int = 8, rng: Any = None) -> np.ndarray:
    """Order systems so that neighbours have close parameters (SKR, Wang et al. ICLR 2024).

    Parameters
    ----------
    params : array (N, ...) or sequence of N arrays of equal size
        One key per system (e.g. the coefficient field); distances are Euclidean
        (Frobenius) on the flattened keys. Never modified.
    method : {"nn", "greedy", "hilbert", "none"}
        ``nn`` (default): the greedy nearest-neighbour chain of Algorithm 1 computed with a KD
        tree (O(N log N) expected). For keys of at most ``dims`` numbers it is the exact
        greedy chain; longer keys (coefficient fields) are reduced to ``dims`` PCA coordinates
        to find 16 candidates, which are re-ranked by their exact distance.
        ``greedy``: the exact chain by dense distances (O(N² p); the reference).
        ``hilbert``: Hilbert-curve order of the quantile-normalised ``dims``-D PCA coordinates,
        refined by greedy chains within consecutive groups of ``group_size``.
        ``none``: identity.
    start : int
        First system of the chain (``nn``, ``greedy``).
    dims : int
        Reduced dimension for ``nn`` / ``hilbert`` (1 to 63).
    rng : numpy.random.Generator or int, optional
        Randomness of the PCA sketch (default: a fixed seed, so the order is reproducible).

    Returns
    -------
    perm : ndarray of int (N,)
        Solve order: system ``perm[0]`` first.

    Raises
    ------
    ValueError
        Empty ``params``, non-finite or non-numeric keys, keys of unequal size, bad
        ``method`` / ``start`` / ``dims``.

    See Also
    --------
    partition_systems : chunks along a Hilbert curve for sorting on many workers.
    """
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    X = _as_keys(params)
    N = X.shape[0]
    if isinstance(start, bool) or not isinstance(start, (int, np.integer)) or not 0 <= start < N:
        raise ValueError(f"start must be an integer in [0, {N}), got {start!r}")
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or not 1 <= dims <= 63:
        raise ValueError(f"dims must be an integer in [1, 63], got {dims!r}")
    rng = np.random.default_rng(0 if rng is None else rng)
    if method == "none" or N == 1:
        return np.arange(N)
    if method == "greedy":
        return _greedy(X, int(start))
    if method == "hilbert":
        if isinstance(group_size, bool) or not isinstance(group_size, (int, np.integer)) or group_size < 1:
            raise ValueError(f"group_size must be an integer >= 1, got {group_size!r}")
        return _hilbert(X, int(group_size), int(dims), rng)
    if X.shape[1] <= dims:
        return _nn_chain(X, int(start))
    return _nn_chain(_pca(X, int(dims), rng), int(start), X)


def partition_systems(params: Any, chunk_size: int, *, dims: int = 8, rng: Any = None) -> list[np.ndarray]:
    """Cut N systems into chunks of close parameters, for sorting on many workers.

    The systems are ordered along a Hilbert curve through their quantile-normalised ``dims``-D
    PCA coordinates (O(N log N), vectorised) and cut into consecutive chunks of ``chunk_size``.
    Each worker then orders its own chunk with :func:`sort_systems` and solves it with one
    recycling solver; only the keys' reduction and one ``argsort`` run on the client.
    (The scaling recipe of Wang et al., ICLR 2024: "fractal division" along a Hilbert curve,
    greedy sorting within each cell.)

    Parameters
    ----------
    params : array (N, ...) or sequence of N arrays of equal size
    chunk_size : int
        Systems per chunk (the last chunk may be smaller).
    dims : int
        Reduced dimension (1 to 63).
    rng : numpy.random.Generator or int, optional
        Randomness of the PCA sketch (default: a fixed seed).

    Returns
    -------
    chunks : list of ndarray of int
        Indices of the systems in each chunk, chunks in curve order (neighbouring chunks hold
        neighbouring parameters). Every system is in exactly one chunk.

    Examples
    --------
    >>> import numpy as np
    >>> from otsolve.krylov import partition_systems, sort_systems
    >>> P = np.random.default_rng(0).random((1000, 8))
    >>> chunks = partition_systems(P, 100)
    >>> order = np.concatenate([c[sort_systems(P[c])] for c in chunks])  # one chunk per worker
    >>> sorted(order.tolist()) == list(range(1000))
    True
    """
    X = _as_keys(params)
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size!r}")
    if isinstance(dims, bool) or not isinstance(dims, (int, np.integer)) or not 1 <= dims <= 63:
        raise ValueError(f"dims must be an integer in [1, 63], got {dims!r}")
    order, _ = _curve_order(X, int(dims), np.random.default_rng(0 if rng is None else rng))
    return [order[i: i + chunk_size] for i in range(0, X.shape[0], int(chunk_size))]


def path_length(params: Any, order: Any) -> float:
    """Total Euclidean distance between consecutive keys in ``order`` (a sort's quality)."""
    X = _as_keys(params)
    o = np.asarray(order)
    if o.shape != (X.shape[0],) or not np.array_equal(np.sort(o), np.arange(X.shape[0])):
        raise ValueError("order must be a permutation of range(N)")
    D = np.diff(X[o], axis=0)
    return float(np.sum(np.sqrt(np.einsum("ij,ij->i", D, D))))


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
        ``True``: the default order of :func:`sort_systems` (``"nn"``, the greedy chain via a
        KD tree); a string names a :func:`sort_systems` method; ``False``: generation order.
    solver : RecyclingSolver, optional
        Default ``RecyclingSolver("gcrodr")`` (restart 80, k 30); its space and statistics
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
        method = "nn" if sort is True else str(sort)
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
