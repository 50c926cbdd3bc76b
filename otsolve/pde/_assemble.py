"""Vectorised assembly of the symmetric finite-volume stencil for -∇·(K∇u) on a node grid."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["diffusion_matrix", "to_grid"]


def _face(Ka: np.ndarray, Kb: np.ndarray, mean: str) -> np.ndarray:
    if mean == "harmonic":
        return 2.0 * Ka * Kb / (Ka + Kb)
    if mean == "arithmetic":
        return 0.5 * (Ka + Kb)
    raise ValueError(f"mean must be 'harmonic' or 'arithmetic', got {mean!r}")


def diffusion_matrix(K: np.ndarray, f, h: float, g: np.ndarray | None = None,
                     mean: str = "harmonic") -> tuple[sp.csr_matrix, np.ndarray]:
    """Assemble ``A u = h² f + (boundary terms)`` for -∇·(K∇u) = f, Dirichlet u = g on the boundary.

    ``K`` is given at the nodes of an s×s (or s×s×s) grid; the unknowns are the ``(s-2)^d``
    interior nodes (C order). Face coefficients are the harmonic (or arithmetic) mean of the
    two nodes, so row P's coefficient of u_E equals row E's coefficient of u_P: the matrix is
    symmetric, an irreducibly diagonally dominant M-matrix, hence SPD. A boundary neighbour's
    face coefficient stays on the diagonal; its known value moves to the right-hand side.
    """
    K = np.asarray(K, dtype=np.float64)
    d, s = K.ndim, K.shape[0]
    if d not in (2, 3) or any(t != s for t in K.shape):
        raise ValueError(f"K must be an s×s or s×s×s grid, got shape {K.shape}")
    if s < 3:
        raise ValueError(f"the grid needs at least 3 nodes per side, got {s}")
    if not np.all(np.isfinite(K)) or np.any(K <= 0):
        raise ValueError("K must be finite and positive")
    m = s - 2
    inner = (slice(1, -1),) * d
    idx = np.arange(m ** d).reshape((m,) * d)
    diag = np.zeros((m,) * d)
    rhs = np.broadcast_to(np.asarray(f, dtype=np.float64), K.shape)[inner] * h * h
    rhs = np.array(rhs, dtype=np.float64)
    rows, cols, vals = [], [], []
    for ax in range(d):
        lo = [slice(None)] * d
        hi = [slice(None)] * d
        lo[ax], hi[ax] = slice(0, -1), slice(1, None)
        Kf = _face(K[tuple(lo)], K[tuple(hi)], mean)  # face i between nodes i and i+1 along ax
        sel_minus = list(inner)
        sel_plus = list(inner)
        sel_minus[ax] = slice(0, m)      # face between node i-1 and i, i = 1..s-2
        sel_plus[ax] = slice(1, m + 1)   # face between node i and i+1
        Km, Kp = Kf[tuple(sel_minus)], Kf[tuple(sel_plus)]
        diag += Km + Kp
        # interior-interior couplings along ax (the shared face gives both entries: symmetric)
        a = [slice(None)] * d
        bsl = [slice(None)] * d
        a[ax], bsl[ax] = slice(0, m - 1), slice(1, m)
        i0, i1 = idx[tuple(a)].ravel(), idx[tuple(bsl)].ravel()
        w = Kp[tuple(a)].ravel()
        rows += [i0, i1]
        cols += [i1, i0]
        vals += [-w, -w]
        if g is not None:
            gi = np.asarray(g, dtype=np.float64)
            first = [slice(None)] * d
            last = [slice(None)] * d
            first[ax], last[ax] = slice(0, 1), slice(m - 1, m)
            gm = list(inner)
            gp = list(inner)
            gm[ax], gp[ax] = slice(0, 1), slice(s - 1, s)
            rhs[tuple(first)] += Km[tuple(first)] * gi[tuple(gm)]
            rhs[tuple(last)] += Kp[tuple(last)] * gi[tuple(gp)]
    N = m ** d
    rows.append(np.arange(N))
    cols.append(np.arange(N))
    vals.append(diag.ravel())
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(N, N))
    A.sum_duplicates()
    A.sort_indices()
    return A, rhs.ravel()


def to_grid(u: np.ndarray, s: int, d: int = 2, g: np.ndarray | None = None) -> np.ndarray:
    """Put interior unknowns back on the full node grid (boundary values from ``g``, else 0)."""
    out = np.zeros((s,) * d, dtype=u.dtype) if g is None else np.array(g, dtype=u.dtype)
    out[(slice(1, -1),) * d] = u.reshape((s - 2,) * d)
    return out
