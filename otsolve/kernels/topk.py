"""Per-column top-k operators of sparsity-constrained OT (numba kernels + NumPy references).

Liu, Puigcerver & Blondel, "Sparsity-Constrained Optimal Transport", ICLR 2023 (arXiv 2209.15466).
With ``Omega_k(t) = (gamma/2)||t||^2 + indicator{||t||_0 <= k}`` per column, the two conjugates are

* dual:  ``delta_k(s) = (1/(2 gamma)) sum_{i in topk(s)} [s_i]_+^2``, gradient ``[s_i]_+/gamma`` on
  the top-k, 0 elsewhere;
* semi-dual: ``max_{k,b}(x) = <y, x> - (gamma b/2)||y||^2`` with
  ``y = SparseSimplexProj_k(x / (gamma b))`` (greedy top-k then simplex projection, exact by
  Kyrillidis et al., ICML 2013), gradient ``y``.

Layout: the kernels work on ``CT``, the cost **transposed** (one contiguous row per plan column), so
that each column is one cache-friendly pass; the numba versions run the columns in parallel
(``numba.prange``). The plan comes back in a padded sparse format: ``idx[j, r]`` (row index, -1 for
an unused slot) and ``tval[j, r]`` (plan value) for the at most ``k`` entries of column ``j``.

Ties at the k-th position are broken deterministically: the lowest index wins.

The ``*_ref`` functions are plain NumPy references with the same signatures (tests compare them).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

try:
    import numba
    from numba import njit, prange

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - numba is a hard dependency, kept optional for safety
    HAVE_NUMBA = False

__all__ = [
    "dual_columns",
    "semi_dual_columns",
    "scatter_rows",
    "dual_columns_ref",
    "semi_dual_columns_ref",
    "scatter_rows_ref",
    "get_topk_kernels",
    "topk_relu_sq",
    "sparse_simplex_max",
    "projection_sparse_simplex",
    "HAVE_NUMBA",
]

# below this k the selection keeps a sorted insertion buffer (O(n) for typical data);
# above it one partial selection (np.partition) finds the k-th value, then ties are resolved
_SMALL_K = 24
# cost entries from which the kernels run the columns in parallel. One evaluation at n = m = 1000
# takes ~2 ms serially; numba's parallel region cost 5-48 ms per call on a shared 2-core machine
# (bench/results/sparse_ot.md), so parallelism only pays for much larger problems.
PARALLEL_MIN_SIZE = 1 << 22


# ------------------------------------------------------------------------------------------
# numba kernels
# ------------------------------------------------------------------------------------------
if HAVE_NUMBA:

    @njit(cache=True, inline="always")
    def _insert(v, i, cnt, k, vbuf, ibuf):
        """Insert (v, i) in the descending buffer; equal values keep earlier indices first."""
        if cnt < k:
            p = cnt
            cnt += 1
        else:
            p = k - 1
        while p > 0 and vbuf[p - 1] < v:
            vbuf[p] = vbuf[p - 1]
            ibuf[p] = ibuf[p - 1]
            p -= 1
        vbuf[p] = v
        ibuf[p] = i
        return cnt

    @njit(cache=True)
    def _topk_sorted(x, k, vbuf, ibuf, positive_only):
        """The ``k`` largest entries of ``x`` in descending order (lowest index first on ties).

        With ``positive_only`` entries <= 0 are skipped (fewer may come back). Returns the count.
        """
        n = x.shape[0]
        cnt = 0
        if k <= _SMALL_K or k * 8 >= n * 7:
            if k * 8 >= n * 7 and k > _SMALL_K:
                # nearly everything is kept: one stable sort
                order = np.argsort(-x, kind="mergesort")
                for r in range(n):
                    i = order[r]
                    if positive_only and not x[i] > 0.0:
                        break
                    if cnt == k:
                        break
                    vbuf[cnt] = x[i]
                    ibuf[cnt] = i
                    cnt += 1
                return cnt
            for i in range(n):
                v = x[i]
                if positive_only and not v > 0.0:
                    continue
                if cnt < k or v > vbuf[cnt - 1]:
                    cnt = _insert(v, i, cnt, k, vbuf, ibuf)
            return cnt
        # large k: the k-th largest value by partial selection, then collect in index order
        thr = np.partition(x, n - k)[n - k]
        for i in range(n):
            if x[i] > thr:
                vbuf[cnt] = x[i]
                ibuf[cnt] = i
                cnt += 1
        for i in range(n):
            if cnt == k:
                break
            if x[i] == thr:
                vbuf[cnt] = x[i]
                ibuf[cnt] = i
                cnt += 1
        # stable descending sort of the selection keeps index order among equal values
        order = np.argsort(-vbuf[:cnt], kind="mergesort")
        v2 = vbuf[:cnt][order]
        i2 = ibuf[:cnt][order]
        vbuf[:cnt] = v2
        ibuf[:cnt] = i2
        if positive_only:
            c = 0
            while c < cnt and vbuf[c] > 0.0:
                c += 1
            cnt = c
        return cnt

    @njit(cache=True)
    def _dual_column(j, alpha, beta, CT, k, gamma, idx, tval, out):
        """Column ``j`` of the dual operator, ``s_j = alpha + beta_j - c_j``."""
        n = CT.shape[1]
        x = np.empty(n)
        for i in range(n):
            x[i] = alpha[i] + beta[j] - CT[j, i]
        vbuf = np.empty(max(k, 1))
        ibuf = np.empty(max(k, 1), dtype=np.int64)
        cnt = _topk_sorted(x, k, vbuf, ibuf, True)
        s = 0.0
        for r in range(k):
            if r < cnt:
                v = vbuf[r]
                s += v * v
                idx[j, r] = ibuf[r]
                tval[j, r] = v / gamma
            else:
                idx[j, r] = -1
                tval[j, r] = 0.0
        out[j] = s / (2.0 * gamma)

    @njit(cache=True)
    def _semi_dual_column(j, alpha, b, CT, k, gamma, idx, tval, beta_out, out):
        """Column ``j`` of the semi-dual operator, ``x_j = alpha - c_j`` with mass ``b_j``."""
        n = CT.shape[1]
        x = np.empty(n)
        for i in range(n):
            x[i] = alpha[i] - CT[j, i]
        bj = b[j]
        if not bj > 0.0:
            # no mass: no entries, and a potential that keeps the column empty
            mx = -np.inf
            for i in range(n):
                if x[i] > mx:
                    mx = x[i]
            beta_out[j] = -mx
            for r in range(k):
                idx[j, r] = -1
                tval[j, r] = 0.0
            out[j] = 0.0
            return
        vbuf = np.empty(max(k, 1))
        ibuf = np.empty(max(k, 1), dtype=np.int64)
        cnt = _topk_sorted(x, k, vbuf, ibuf, False)
        scale = gamma * bj
        # rho = #{r : u_r - (sum_{i<=r} u_i - 1)/r > 0}; the condition holds on a prefix
        csum = 0.0
        theta = 0.0
        for r in range(cnt):
            u = vbuf[r] / scale
            csum += u
            t = (csum - 1.0) / (r + 1)
            if u - t > 0.0:
                theta = t
        val = 0.0
        for r in range(k):
            p = vbuf[r] / scale - theta if r < cnt else 0.0
            if p > 0.0:
                val += p * vbuf[r] - 0.5 * scale * p * p
                idx[j, r] = ibuf[r]
                tval[j, r] = bj * p
            else:
                idx[j, r] = -1
                tval[j, r] = 0.0
        beta_out[j] = -scale * theta
        out[j] = val

    # Two drivers per operator: parallel over columns, and serial. A parallel region costs a
    # thread wake-up (tens of microseconds, milliseconds on an oversubscribed machine) that
    # dominates small problems, so the dispatchers go parallel only for large ones.
    @njit(cache=True, parallel=True)
    def _dual_par(alpha, beta, CT, k, gamma, idx, tval):
        out = np.zeros(CT.shape[0])
        for j in prange(CT.shape[0]):
            _dual_column(j, alpha, beta, CT, k, gamma, idx, tval, out)
        return out

    @njit(cache=True)
    def _dual_ser(alpha, beta, CT, k, gamma, idx, tval):
        out = np.zeros(CT.shape[0])
        for j in range(CT.shape[0]):
            _dual_column(j, alpha, beta, CT, k, gamma, idx, tval, out)
        return out

    @njit(cache=True, parallel=True)
    def _semi_par(alpha, b, CT, k, gamma, idx, tval, beta_out):
        out = np.zeros(CT.shape[0])
        for j in prange(CT.shape[0]):
            _semi_dual_column(j, alpha, b, CT, k, gamma, idx, tval, beta_out, out)
        return out

    @njit(cache=True)
    def _semi_ser(alpha, b, CT, k, gamma, idx, tval, beta_out):
        out = np.zeros(CT.shape[0])
        for j in range(CT.shape[0]):
            _semi_dual_column(j, alpha, b, CT, k, gamma, idx, tval, beta_out, out)
        return out

    def dual_columns(alpha, beta, CT, k, gamma, idx, tval):
        """Dual operator on every column ``s_j = alpha + beta_j - c_j`` (``CT`` is (m, n)).

        Fills ``idx``/``tval`` (shape (m, k)) with the plan ``[s_ij]_+/gamma`` on the top-k rows
        (padding: index -1, value 0) and returns the per-column values ``delta_k(s_j)``.
        numba, parallel over columns for large inputs.
        """
        fn = _dual_par if CT.size >= PARALLEL_MIN_SIZE else _dual_ser
        return fn(alpha, beta, CT, k, gamma, idx, tval)

    def semi_dual_columns(alpha, b, CT, k, gamma, idx, tval, beta_out):
        """Semi-dual operator on every column ``x_j = alpha - c_j`` with mass ``b_j``.

        Fills ``idx``/``tval`` with the plan ``b_j * SparseSimplexProj_k(x_j/(gamma b_j))`` (exactly
        ``b_j`` mass, at most ``k`` nonzeros), ``beta_out[j] = -gamma b_j theta_j`` (the column
        potential for which ``T_ij = [alpha_i + beta_j - C_ij]_+/gamma`` on the support) and
        returns the per-column values ``max_{k,b_j}(x_j)``. numba, parallel for large inputs.
        """
        fn = _semi_par if CT.size >= PARALLEL_MIN_SIZE else _semi_ser
        return fn(alpha, b, CT, k, gamma, idx, tval, beta_out)

    @njit(cache=True)
    def scatter_rows(idx, tval, n):
        """Row sums ``T 1`` of the padded sparse plan (serial: no write races)."""
        row = np.zeros(n)
        m, k = idx.shape
        for j in range(m):
            for r in range(k):
                i = idx[j, r]
                if i >= 0:
                    row[i] += tval[j, r]
        return row


# ------------------------------------------------------------------------------------------
# NumPy references (same signatures)
# ------------------------------------------------------------------------------------------
def _topk_sorted_ref(x: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k largest entries, descending, lowest index first on ties."""
    order = np.argsort(-x, kind="stable")
    return order[:k]


def dual_columns_ref(alpha, beta, CT, k, gamma, idx, tval):
    """NumPy reference of :func:`dual_columns`."""
    m, n = CT.shape
    out = np.zeros(m)
    for j in range(m):
        x = alpha + beta[j] - CT[j]
        sel = _topk_sorted_ref(x, k)
        sel = sel[x[sel] > 0]
        idx[j] = -1
        tval[j] = 0.0
        idx[j, : sel.size] = sel
        tval[j, : sel.size] = x[sel] / gamma
        out[j] = float(np.sum(x[sel] ** 2)) / (2.0 * gamma)
    return out


def _project_sorted_ref(u: np.ndarray) -> tuple[np.ndarray, float]:
    """Simplex projection of an already sorted (descending) vector: (p, theta)."""
    css = np.cumsum(u) - 1.0
    r = np.arange(1, u.size + 1)
    rho = int(np.count_nonzero(u - css / r > 0))
    theta = css[rho - 1] / rho
    return np.maximum(u - theta, 0.0), float(theta)


def semi_dual_columns_ref(alpha, b, CT, k, gamma, idx, tval, beta_out):
    """NumPy reference of :func:`semi_dual_columns`."""
    m, n = CT.shape
    out = np.zeros(m)
    for j in range(m):
        x = alpha - CT[j]
        idx[j] = -1
        tval[j] = 0.0
        if not b[j] > 0:
            beta_out[j] = -x.max()
            continue
        scale = gamma * b[j]
        sel = _topk_sorted_ref(x, k)
        p, theta = _project_sorted_ref(x[sel] / scale)
        keep = p > 0
        nk = int(keep.sum())
        idx[j, :nk] = sel[keep]
        tval[j, :nk] = b[j] * p[keep]
        beta_out[j] = -scale * theta
        out[j] = float(p @ x[sel] - 0.5 * scale * p @ p)
    return out


def scatter_rows_ref(idx, tval, n):
    """NumPy reference of :func:`scatter_rows`."""
    mask = idx >= 0
    return np.bincount(idx[mask], weights=tval[mask], minlength=n).astype(np.float64)


_REF = SimpleNamespace(dual_columns=dual_columns_ref, semi_dual_columns=semi_dual_columns_ref,
                       scatter_rows=scatter_rows_ref)
_NUMBA = (SimpleNamespace(dual_columns=dual_columns, semi_dual_columns=semi_dual_columns,
                          scatter_rows=scatter_rows) if HAVE_NUMBA else _REF)


def get_topk_kernels(compiled: bool = True) -> SimpleNamespace:
    """Namespace with ``dual_columns``, ``semi_dual_columns``, ``scatter_rows``.

    ``compiled=True`` gives the numba kernels (parallel over columns), ``False`` the references.
    """
    return _NUMBA if compiled else _REF


# ------------------------------------------------------------------------------------------
# Dense per-column operators (public, for checks and for users composing their own solvers)
# ------------------------------------------------------------------------------------------
def _check_k(k, n: int) -> int:
    from .._validation import check_positive_int

    return min(check_positive_int(k, "k"), n)


def _dense_from_padded(idx, tval, n):
    m = idx.shape[0]
    G = np.zeros((n, m))
    cols = np.repeat(np.arange(m), idx.shape[1])
    flat = idx.ravel()
    keep = flat >= 0
    G[flat[keep], cols[keep]] = tval.ravel()[keep]
    return G


def topk_relu_sq(X, k: int, gamma: float = 1.0, compiled: bool = True):
    """Dual operator ``delta_k`` applied to every column of ``X`` (shape (n, m)).

    Returns ``(val, G)``: ``val[j] = (1/(2 gamma)) sum_{i in topk(X[:, j])} [X_ij]_+^2`` and its
    gradient ``G`` (``[X_ij]_+/gamma`` on the top-k rows of column j, else 0).
    """
    X = np.asarray(X, dtype=np.float64)
    n, m = X.shape
    k = _check_k(k, n)
    CT = np.ascontiguousarray(-X.T)
    idx = np.empty((m, k), dtype=np.int64)
    tval = np.empty((m, k))
    val = get_topk_kernels(compiled).dual_columns(np.zeros(n), np.zeros(m), CT, k, float(gamma), idx, tval)
    return val, _dense_from_padded(idx, tval, n)


def sparse_simplex_max(X, b, k: int, gamma: float = 1.0, compiled: bool = True):
    """Semi-dual operator ``max_{k,b_j}`` on every column of ``X`` (shape (n, m)).

    Returns ``(val, G)`` with ``val[j] = <y_j, X[:, j]> - (gamma b_j/2)||y_j||^2`` and the
    gradient ``G[:, j] = y_j = SparseSimplexProj_k(X[:, j]/(gamma b_j))``.
    """
    X = np.asarray(X, dtype=np.float64)
    n, m = X.shape
    k = _check_k(k, n)
    b = np.broadcast_to(np.asarray(b, dtype=np.float64), (m,)).copy()
    CT = np.ascontiguousarray(-X.T)
    idx = np.empty((m, k), dtype=np.int64)
    tval = np.empty((m, k))
    beta = np.empty(m)
    val = get_topk_kernels(compiled).semi_dual_columns(np.zeros(n), b, CT, k, float(gamma), idx, tval, beta)
    with np.errstate(divide="ignore", invalid="ignore"):
        G = _dense_from_padded(idx, tval, n) / np.where(b > 0, b, 1.0)
    return val, G


def projection_sparse_simplex(V, k: int, z: float = 1.0, compiled: bool = True):
    """Per-column projection onto ``{p >= 0, sum p = z, ||p||_0 <= k}`` (columns of ``V``, (n, m)).

    Greedy top-k selection followed by the simplex projection is exact (Kyrillidis, Becker,
    Cevher & Koch, "Sparse projections onto the simplex", ICML 2013).
    """
    V = np.asarray(V, dtype=np.float64)
    squeeze = V.ndim == 1
    if squeeze:
        V = V[:, None]
    n, m = V.shape
    k = _check_k(k, n)
    # z * Proj_k(V / z) is the projection onto the z-simplex; the kernel computes b Proj(x/(gamma b))
    b = np.full(m, float(z))
    CT = np.ascontiguousarray(-V.T)
    idx = np.empty((m, k), dtype=np.int64)
    tval = np.empty((m, k))
    get_topk_kernels(compiled).semi_dual_columns(np.zeros(n), b, CT, k, 1.0, idx, tval, np.empty(m))
    P = _dense_from_padded(idx, tval, n)
    return P[:, 0] if squeeze else P
