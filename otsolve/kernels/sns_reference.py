"""NumPy references of the Sinkhorn-Newton-Sparse kernels (same signatures as ``otsolve._ext_sns``).

They define what the C++ kernels in ``csrc/sns_kernels.hpp`` compute; tests compare the two.

Conventions (docs/sns.md): potentials ``x, y`` in cost units, plan
``P_ij = exp((x_i + y_j - C_ij)/eps - 1)``. Kernels evaluate the plan at the trial point
``(x + alpha dx, y + alpha dy)`` so that a line-search trial and the next Newton system are the
same pass. The sparsified off-diagonal block keeps ``k`` entries per row (the ``k`` largest of
``P``), stored as a CSR matrix with a fixed row length (``kidx``/``kval`` of shape ``(n, k)``,
row pointer ``k * i``) plus its transpose as an ordinary CSR matrix (``tptr``, ``tidx``,
``tval``) so both products of the symmetric matvec are gathers.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "OVERFLOW_EXPONENT",
    "sns_form_system",
    "sns_line_eval",
    "sns_matvec",
    "sns_pcg",
    "sns_plan_stats",
]

# Largest exponent accepted in a trial plan: exp(700) * n * m stays finite in float64.
OVERFLOW_EXPONENT = 700.0


def _exponents(C, x, y, dx, dy, alpha, eps):
    xt = np.asarray(x, dtype=np.float64) + alpha * np.asarray(dx, dtype=np.float64)
    yt = np.asarray(y, dtype=np.float64) + alpha * np.asarray(dy, dtype=np.float64)
    return (xt[:, None] + yt[None, :] - np.asarray(C, dtype=np.float64)) / eps - 1.0


def sns_line_eval(C, x, y, dx, dy, alpha, eps, row, col, n_threads=0):
    """Marginals of the plan at ``(x + alpha dx, y + alpha dy)``.

    Fills ``row`` (P1) and ``col`` (P^T 1); returns ``(mass, lmax)`` with ``mass = sum P`` and
    ``lmax`` the largest exponent. When ``lmax > OVERFLOW_EXPONENT`` the trial is rejected:
    ``mass`` is ``inf`` and ``row``/``col`` are left unspecified.
    """
    L = _exponents(C, x, y, dx, dy, alpha, eps)
    lmax = float(L.max())
    if not lmax <= OVERFLOW_EXPONENT:  # also catches NaN
        return float("inf"), lmax
    P = np.exp(L)
    row[:] = P.sum(1)
    col[:] = P.sum(0)
    return float(row.sum()), lmax


def sns_plan_stats(C, x, y, eps, row, col, n_threads=0):
    """Exact statistics of the plan of ``(x, y)``: fills ``row`` (P1) and ``col`` (P^T 1);
    returns ``(mass, cost)`` with ``cost = <C, P>``; ``mass`` is ``inf`` when an exponent exceeds
    :data:`OVERFLOW_EXPONENT` (then ``row``/``col``/``cost`` are unspecified)."""
    L = _exponents(C, x, y, 0.0, 0.0, 0.0, eps)
    if not float(L.max()) <= OVERFLOW_EXPONENT:
        row[:] = np.inf
        col[:] = np.inf
        return float("inf"), float("inf")
    P = np.exp(L)
    row[:] = P.sum(1)
    col[:] = P.sum(0)
    return float(row.sum()), float((P * np.asarray(C, dtype=np.float64)).sum())


def _transpose(kidx, kval, m, tptr, tidx, tval):
    n, k = kidx.shape
    rows = np.repeat(np.arange(n), k)
    cols = kidx.reshape(-1)
    order = np.argsort(cols, kind="stable")  # stable: row order inside each column
    counts = np.bincount(cols, minlength=m)
    tptr[0] = 0
    np.cumsum(counts, out=tptr[1:])
    tidx[:] = rows[order]
    tval[:] = kval.reshape(-1)[order]


def sns_form_system(C, x, y, dx, dy, alpha, eps, row, col, kidx, kval, tptr, tidx, tval, n_threads=0):
    """Plan at the trial point, its marginals and the kept off-diagonal entries in one pass.

    Fills ``row``/``col`` as :func:`sns_line_eval`, ``kidx``/``kval`` (shape ``(n, k)``) with
    the column indices and values of the ``k`` largest entries of each row of ``P`` (ties: the
    smaller column index first), and ``tptr`` (m + 1), ``tidx``/``tval`` (n k) with the
    transpose of that sparse matrix (rows in increasing order inside each column).
    Returns ``(mass, lmax, kept)`` with ``kept`` the total kept mass (``inf`` on overflow).
    """
    C = np.asarray(C)
    m = C.shape[1]
    k = kidx.shape[1]
    mass, lmax = sns_line_eval(C, x, y, dx, dy, alpha, eps, row, col)
    if not np.isfinite(mass):
        return mass, lmax, float("inf")
    if k == 0:
        _transpose(kidx, kval, m, tptr, tidx, tval)
        return mass, lmax, 0.0
    L = _exponents(C, x, y, dx, dy, alpha, eps)
    # Largest k per row; ties broken by the column index (a stable sort of -L).
    order = np.argsort(-L, axis=1, kind="stable")[:, :k]
    order.sort(axis=1)
    kidx[:] = order
    kval[:] = np.exp(np.take_along_axis(L, order, axis=1))
    _transpose(kidx, kval, m, tptr, tidx, tval)
    return mass, lmax, float(kval.sum())


def sns_matvec(row, col, kidx, kval, tptr, tidx, tval, v, out, n_threads=0):
    """``out = M v`` with ``M = [[diag(row), P~], [P~^T, diag(col)]]`` (``v``, ``out``: n + m)."""
    n = row.shape[0]
    vx, vy = v[:n], v[n:]
    out[:n] = row * vx + (kval * vy[kidx]).sum(1)
    counts = np.diff(tptr)
    colsum = np.zeros(col.shape[0])
    np.add.at(colsum, np.repeat(np.arange(col.shape[0]), counts), tval * vx[tidx])
    out[n:] = col * vy + colsum


def _project(v, n):
    """Remove the component along the gauge direction (1_n, -1_m), in place."""
    c = (v[:n].sum() - v[n:].sum()) / v.shape[0]
    v[:n] -= c
    v[n:] += c


def sns_pcg(row, col, kidx, kval, tptr, tidx, tval, rhs, z, rtol, maxiter, n_threads=0):
    """Projected Jacobi-preconditioned CG for ``M z = rhs`` (``M`` as in :func:`sns_matvec`).

    The gauge direction ``v = (1_n, -1_m)`` (the null vector of the exact Hessian, an almost
    null vector of the sparsified one when little mass is dropped) is projected out: the solve is
    ``Pi M Pi z = Pi rhs`` on the complement of ``v`` with the preconditioner
    ``Pi D^-1 Pi``, ``D = diag(M) + tiny``, so the near-singular direction cannot slow CG down.
    ``z`` holds the warm start on entry and the solution (orthogonal to ``v``) on exit. Stops when
    ``||Pi (rhs - M z)||_2 <= rtol ||Pi rhs||_2`` or after ``maxiter`` iterations; returns
    ``(iterations, relative residual)``.
    """
    n = row.shape[0]
    dinv = 1.0 / (np.concatenate([row, col]) + 1e-300)
    _project(z, n)
    b = rhs.copy()
    _project(b, n)
    bnorm = float(np.linalg.norm(b))
    if bnorm == 0.0:
        z[:] = 0.0
        return 0, 0.0
    r = np.empty_like(rhs)
    sns_matvec(row, col, kidx, kval, tptr, tidx, tval, z, r)
    r = b - r
    _project(r, n)
    rnorm = float(np.linalg.norm(r))
    if rnorm <= rtol * bnorm:
        return 0, rnorm / bnorm
    s = dinv * r
    _project(s, n)
    p = s.copy()
    rs = float(r @ s)
    q = np.empty_like(rhs)
    it = 0
    while it < maxiter:
        sns_matvec(row, col, kidx, kval, tptr, tidx, tval, p, q)
        _project(q, n)
        pq = float(p @ q)
        if not pq > 0.0:  # breakdown (M singular on p, or NaN): stop with what we have
            break
        a = rs / pq
        z += a * p
        r -= a * q
        it += 1
        rnorm = float(np.linalg.norm(r))
        if rnorm <= rtol * bnorm:
            break
        s = dinv * r
        _project(s, n)
        rs_new = float(r @ s)
        p *= rs_new / rs
        p += s
        rs = rs_new
    return it, rnorm / bnorm
