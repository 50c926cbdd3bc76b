"""Recycled (deflated) preconditioned CG for sequences of SPD systems.

Deflated CG: Saad, Yeung, Erhel, Guyomarc'h, SIAM J. Sci. Comput. 21(5), 2000; recycling the
deflation space by Rayleigh-Ritz on [W, first search directions]: Parks et al. 2006 (§ on
RCG), Wang, de Sturler, Paulino 2007. Invariants: ``W^T r = 0`` and ``(AW)^T p = 0``.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import scipy.linalg as sla

from ._ops import SolveStats, blas_single_thread, finish, prepare, scale_problem
from ._recycle import RecycleSpace

__all__ = ["rcg"]


def _rcg(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, k=20, ell=None,
         recycle: RecycleSpace | None = None, callback: Callable | None = None,
         reuse_AW: bool = True, augment: np.ndarray | None = None) -> tuple[np.ndarray, int, SolveStats]:
    t_start = time.perf_counter()
    Aop, Mop, b, x, dtype, rtol, atol, maxiter = prepare(A, b, x0, M, rtol, atol, maxiter)
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    ell = max(2 * k, 10) if ell is None else int(ell)
    if ell < 0:
        raise ValueError(f"ell must be >= 0, got {ell!r}")
    if recycle is not None and not isinstance(recycle, RecycleSpace):
        raise ValueError(f"recycle must be an otsolve.krylov.RecycleSpace or None, got {type(recycle).__name__}")
    n = b.shape[0]
    st = SolveStats()
    # scale-invariant: work on b / s (s a power of two, exact), return s * y (see scale_problem)
    s_b, b, x, atol = scale_problem(b, x, atol)
    if s_b == 0.0:  # b = 0: x = 0 is the exact solution, whatever x0
        x = np.zeros_like(x)
        st.converged, st.residual, st.message = True, 0.0, "b = 0: x = 0 is exact"
        if recycle is not None:
            recycle.last_stats = st
        st.time = time.perf_counter() - t_start
        return x, 0, st
    bnorm = float(np.linalg.norm(b))
    tol = max(rtol * bnorm, atol)

    W = AW = None
    if recycle is not None and recycle.k > 0 and recycle.method == "rcg" and recycle.U.shape[1] == n:
        W = recycle.U.astype(dtype, copy=False)
        if reuse_AW and recycle.A_ref is A and recycle.AU is not None:
            AW = recycle.AU
        else:
            AW = np.ascontiguousarray(np.asarray(Aop.mat(W.T)).T)  # k mat-vecs, one sparse matmat
    if augment is not None:
        # previous solutions join the deflation space (one mat-vec each): the initial Galerkin
        # projection then also minimises the A-norm error over span(W, previous solutions)
        aug = np.asarray(augment, dtype=dtype).reshape(-1, n)
        mx = np.max(np.abs(aug), axis=1) if aug.size else np.zeros(0)
        ok = np.isfinite(mx) & (mx > 0)
        aug = aug[ok] / mx[ok, None]
        if aug.shape[0]:
            aug /= np.linalg.norm(aug, axis=1)[:, None]
            Aaug = np.ascontiguousarray(np.asarray(Aop.mat(aug.T)).T)
            W = aug if W is None else np.concatenate([W, aug])
            AW = Aaug if AW is None else np.concatenate([AW, Aaug])
    r = b.copy() if (x0 is None or not np.any(x)) else b - Aop(x)
    Ecf = None
    if W is not None:
        E = W.conj() @ AW.T
        E = 0.5 * (E + E.conj().T)
        try:
            Ecf = sla.cho_factor(E)
            d = np.abs(np.diag(Ecf[0]))
            if d.min() <= 1e-4 * d.max():  # cond(E) > 1e8: cancellation would swamp deflation
                raise np.linalg.LinAlgError
        except np.linalg.LinAlgError:
            # nearly dependent or not A-definite: keep the well-conditioned positive part, E = I
            ev, V = np.linalg.eigh(E)
            keep = ev > 1e-8 * max(ev.max(), 0.0) if ev.size and ev.max() > 0 else np.zeros(ev.shape, bool)
            if np.any(keep):
                T = (V[:, keep] / np.sqrt(ev[keep])).T
                W, AW = T @ W, T @ AW
                Ecf = sla.cho_factor(np.eye(W.shape[0], dtype=dtype))
            else:
                W = AW = None  # the space is not A-definite for this matrix: drop it
    if W is not None:
        x += W.T @ sla.cho_solve(Ecf, W.conj() @ r)
        r = b - Aop(x)  # W^T r = 0 from here on

    def deflate(z):  # always a new array: p must never alias r
        return z - W.T @ sla.cho_solve(Ecf, AW.conj() @ z) if W is not None else z.copy()

    P_store = np.empty((ell, n), dtype=dtype) if (recycle is not None and k > 0) else None
    AP_store = np.empty_like(P_store) if P_store is not None else None
    nst = 0
    z = Mop(r) if Mop is not None else r
    p = deflate(z)
    rz = np.vdot(r, z).real
    rnorm = float(np.linalg.norm(r))
    why = ""
    while True:
        if rnorm <= tol:
            rt = b - Aop(x)
            tn = float(np.linalg.norm(rt))
            if tn <= tol:
                rnorm = tn
                st.converged = True
                break
            r, rnorm = rt, tn  # recurrence drifted: restart the direction from the true residual
            z = Mop(r) if Mop is not None else r
            p = deflate(z)
            rz = np.vdot(r, z).real
            if st.iterations >= maxiter:
                why = "maxiter reached"
                break
        if st.iterations >= maxiter:
            why = "maxiter reached"
            break
        q = Aop(p)
        pq = np.vdot(p, q).real
        if not (pq > 0) or not np.isfinite(pq):
            why = "breakdown: p^T A p <= 0 (A or M not positive definite?)"
            break
        if P_store is not None and nst < ell:
            P_store[nst], AP_store[nst] = p, q
            nst += 1
        alpha = rz / pq
        x += alpha * p
        r -= alpha * q
        st.iterations += 1
        rnorm = float(np.linalg.norm(r))
        st.history.append(rnorm / bnorm if bnorm else rnorm)
        if callback is not None:
            callback(rnorm / bnorm if bnorm else rnorm)
        if rnorm <= tol:
            continue
        z = Mop(r) if Mop is not None else r
        rz_new = np.vdot(r, z).real
        p = deflate(z + (rz_new / rz) * p)  # deflating z + βp equals z + βp - W E^{-1} AW^T z
        rz = rz_new
        if not np.isfinite(rz) or rz <= 0 and rnorm > tol:
            why = "breakdown: r^T M^{-1} r <= 0 (preconditioner not positive definite?)"
            break

    st.cycles = 1
    x, info = finish(st, "rcg", Aop, Mop, b, x, s_b, tol, rnorm, bnorm, rtol, why)
    if recycle is not None and k > 0:
        # Rayleigh-Ritz on Z = [W, P_ell] with the stored products (no extra mat-vecs)
        parts = [P_store[:nst]]
        aparts = [AP_store[:nst]]
        if W is not None:
            parts.insert(0, W)
            aparts.insert(0, AW)
        Zr = np.concatenate(parts) if parts else None
        if Zr is not None and Zr.shape[0] > 0:
            AZr = np.concatenate(aparts)
            # AZ rows give A on the new space exactly: keep A W_new for the same matrix
            G = Zr.conj() @ Zr.T
            T = Zr.conj() @ AZr.T
            T = 0.5 * (T + T.conj().T)
            ev, Q = np.linalg.eigh(0.5 * (G + G.conj().T))
            keep = ev > 1e-12 * ev.max() if ev.size else ev > 0
            if np.any(keep):
                S = Q[:, keep] / np.sqrt(ev[keep])
                theta, Y = np.linalg.eigh(S.conj().T @ T @ S)
                Y = (S @ Y)[:, theta > 0][:, :k]
                if Y.shape[1]:
                    recycle.U = np.ascontiguousarray(Y.T @ Zr)
                    recycle.AU = np.ascontiguousarray(Y.T @ AZr)
                    recycle.A_ref, recycle.M_ref, recycle.method = A, M, "rcg"
        recycle.last_stats = st
    st.info = info
    st.recycle_dim = 0 if W is None else W.shape[0]
    st.time = time.perf_counter() - t_start
    return x, info, st


def rcg(A: Any, b: Any, x0: Any = None, *, rtol: float = 1e-5, atol: float = 0.0,
        maxiter: int | None = None, M: Any = None, k: int = 20, ell: int | None = None,
        recycle: RecycleSpace | None = None,
        callback: Callable[[float], Any] | None = None) -> tuple[np.ndarray, int]:
    """Solve an SPD system ``A x = b`` by deflated/recycled preconditioned CG.

    Parameters
    ----------
    A : ndarray, sparse matrix or LinearOperator, SPD
    b : ndarray (n,)
    x0 : ndarray, optional
    rtol, atol : float
        Stop when ``||b - A x|| <= max(rtol ||b||, atol)`` (true residual confirmed at exit).
    maxiter : int, optional
        Maximum CG iterations (default ``10 n``).
    M : optional
        SPD preconditioner applying ``M^{-1}`` (SciPy convention).
    k : int
        Dimension of the recycled deflation space W.
    ell : int, optional
        Number of leading search directions kept for the Rayleigh-Ritz update (default 2k).
    recycle : RecycleSpace, optional
        Read (``A W`` recomputed with k mat-vecs for a new matrix) and updated in place.
    callback : callable, optional
        Called after every iteration with the relative residual.

    Returns
    -------
    x : ndarray
    info : int
        0 on convergence; otherwise the iterations taken (with a ``KrylovWarning``); a
        breakdown (``p^T A p <= 0``: A not SPD) also returns ``info > 0``.

    References
    ----------
    Y. Saad, M. Yeung, J. Erhel, F. Guyomarc'h, "A deflated version of the conjugate gradient
    algorithm", SIAM J. Sci. Comput. 21(5):1909-1926, 2000; M. L. Parks et al., SIAM J. Sci.
    Comput. 28(5):1651-1674, 2006.
    """
    with blas_single_thread():  # memory-bound block products: threads only oversubscribe
        x, info, _ = _rcg(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, k=k, ell=ell,
                          recycle=recycle, callback=callback)
    return x, info
