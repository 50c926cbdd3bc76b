"""GCRO-DR(m, k): restarted GMRES with deflated restarting and a recycled subspace.

Parks, de Sturler, Mackey, Johnson, Maiti, "Recycling Krylov subspaces for sequences of linear
systems", SIAM J. Sci. Comput. 28(5):1651-1674, 2006. Right preconditioning, so the residual
that is minimised is the true residual ``b - A x``.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np
import scipy.linalg as sla

from ._ops import SolveStats, blas_single_thread, finish, prepare, scale_problem
from ._recycle import RecycleSpace

__all__ = ["gcrodr"]

_REORTH = 0.1  # selective re-orthogonalisation: repeat Gram-Schmidt only after a 10x norm drop


def _pivoted_qr(Y: np.ndarray, rel: float = 1e-12):
    """Reduced pivoted QR of the columns of ``Y``; return (Q, R, piv) truncated to numerical rank."""
    Q, R, piv = sla.qr(Y, mode="economic", pivoting=True)
    d = np.abs(np.diag(R))
    if d.size == 0 or d[0] == 0:
        return Q[:, :0], R[:0, :0], piv[:0]
    r = int(np.sum(d > rel * d[0]))
    return Q[:, :r], R[:r, :r], piv[:r]


def _cholqr2_rows(X: np.ndarray, maxcond: float = 1e6):
    """Cholesky QR applied twice to the rows of ``X`` (k x n): return ``T`` (k x k) with ``T X``
    orthonormal rows (``(T X)(T X)^H = I``), or ``None`` when ``X`` is too ill-conditioned for
    it (the caller then falls back to pivoted Householder QR). Two Gram products and two small
    triangular solves instead of a Householder QR of an n x k matrix."""
    k = X.shape[0]
    if k == 0:
        return None
    T = np.eye(k, dtype=X.dtype)
    Y = X
    for _ in range(2):
        Gm = Y @ Y.conj().T
        try:
            L = np.linalg.cholesky(Gm)
        except np.linalg.LinAlgError:
            return None
        dL = np.abs(np.diag(L))
        if not np.all(np.isfinite(dL)) or dL.min() <= dL.max() / maxcond:
            return None
        Linv = sla.solve_triangular(L, np.eye(k, dtype=X.dtype), lower=True, check_finite=False)
        T = Linv @ T
        Y = T @ X
    return T


def _select_ritz(theta: np.ndarray, Z: np.ndarray, k: int, real: bool) -> np.ndarray:
    """Columns of ``Z`` for the ``k`` smallest |theta|; for real problems complex-conjugate
    pairs are kept together (k may grow by one) and replaced by their real and imaginary parts."""
    mag = np.abs(theta)
    mag[~np.isfinite(mag)] = np.inf
    order = np.argsort(mag, kind="stable")
    order = order[np.isfinite(mag[order])]
    sel = list(order[:k])
    if not real:
        return Z[:, sel]
    tol = 1e-10 * max(1.0, float(np.max(mag[order])) if order.size else 1.0)
    # keep a complex-conjugate pair whole
    if sel and abs(theta[sel[-1]].imag) > tol:
        last = sel[-1]
        partner = [i for i in order[k:] if abs(theta[i] - np.conj(theta[last])) <= 1e3 * tol]
        if partner and not any(abs(theta[i] - np.conj(theta[last])) <= 1e3 * tol for i in sel[:-1]):
            sel.append(partner[0])
    cols, done = [], set()
    for i in sel:
        if i in done:
            continue
        z = Z[:, i]
        if abs(theta[i].imag) <= tol:
            cols.append(z.real)
        else:
            cols.append(z.real)
            cols.append(z.imag)
            # its conjugate partner spans the same real space
            for j in sel:
                if j != i and abs(theta[j] - np.conj(theta[i])) <= 1e3 * tol:
                    done.add(j)
        done.add(i)
    return np.array(cols).T if cols else Z[:, :0].real


def _givens(a, b):
    """Rotation (c real, s) with c*a + s*b = rho and -conj(s)*a + c*b = 0, for b real >= 0."""
    if b == 0:
        return 1.0, 0.0, a
    if a == 0:
        return 0.0, 1.0, b
    aa = abs(a)
    rho = (aa * aa + b * b) ** 0.5
    ph = a / aa
    return aa / rho, ph * b / rho, ph * rho


def _gcrodr(A, b, x0=None, *, rtol=1e-5, atol=0.0, maxiter=None, M=None, restart=40, k=20,
            recycle: RecycleSpace | None = None, callback: Callable | None = None,
            reuse_C: bool = True, shrink: bool = False,
            augment: np.ndarray | None = None) -> tuple[np.ndarray, int, SolveStats]:
    t_start = time.perf_counter()
    Aop, Mop, b, x, dtype, rtol, atol, maxiter = prepare(A, b, x0, M, rtol, atol, maxiter)
    if isinstance(restart, bool) or not isinstance(restart, (int, np.integer)) or restart < 1:
        raise ValueError(f"restart must be an integer >= 1, got {restart!r}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"k must be an integer >= 0, got {k!r}")
    if k >= restart:
        raise ValueError(f"the recycle dimension k={k} must be smaller than restart={restart}")
    if recycle is not None and not isinstance(recycle, RecycleSpace):
        raise ValueError(f"recycle must be an otsolve.krylov.RecycleSpace or None, got {type(recycle).__name__}")
    n, m = b.shape[0], int(restart)
    m = min(m, n)
    k = min(int(k), max(m - 1, 0))
    real = dtype.kind == "f"
    eps = np.finfo(dtype).eps
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
    if bnorm == 0.0 and atol == 0.0:
        tol = 0.0
    precond = Mop is not None

    # --- bring in the recycled space (Parks et al. step B) ---------------------------------------
    U = C = Upre = None
    if recycle is not None and recycle.k > 0 and recycle.method == "gcrodr" and recycle.U.shape[1] == n:
        U = recycle.U.astype(dtype, copy=True)
        Upre = recycle.U_pre.astype(dtype, copy=True) if (precond and recycle.U_pre is not None) else None
        if precond and Upre is None:
            Upre = U.copy()  # no preconditioned coordinates known: approximate (only steers the refresh)
        if reuse_C and recycle.A_ref is A and recycle.C is not None:
            C = recycle.C.astype(dtype, copy=True)  # same matrix: A U = C still holds
        else:
            AU = Aop.mat(U.T)  # k mat-vecs, one compiled sparse matmat
            X = np.asarray(AU, dtype=dtype).T  # rows A u_i
            T = _cholqr2_rows(X)
            if T is not None:  # C = T X orthonormal rows (two BLAS-3 Cholesky-QR passes)
                C = T @ X
                U = T @ U
                if Upre is not None:
                    Upre = T @ Upre
            else:  # ill-conditioned or rank-deficient A U: pivoted Householder QR, truncated
                Q, R, piv = _pivoted_qr(np.asarray(AU))
                Rinv_T = sla.solve_triangular(R, np.eye(R.shape[0], dtype=dtype), lower=False).T
                C = np.ascontiguousarray(Q.T)
                U = Rinv_T @ U[piv]
                if Upre is not None:
                    Upre = Rinv_T @ Upre[piv]
            if C.shape[0] == 0:
                U = C = Upre = None

    if x0 is None or not np.any(x):
        r = b.copy()
    else:
        r = b - Aop(x)
    if C is not None:
        c = C.conj() @ r
        x += U.T @ c
        r -= C.T @ c
    if augment is not None:
        # extra directions (the previous solutions of the sequence; one mat-vec each): the initial
        # guess then minimises the residual over span(U, augment), like SciPy gcrotmk's (None, x)
        # pairs. They are made orthogonal to C (so r stays orthogonal to C), used for this
        # projection only and dropped: they take no Arnoldi steps and never enter the
        # harmonic-Ritz refresh (their preconditioned coordinates are unknown).
        Y = np.asarray(augment, dtype=dtype).reshape(-1, n)
        mx = np.max(np.abs(Y), axis=1) if Y.size else np.zeros(0)
        ok = np.isfinite(mx) & (mx > 0)
        Y = Y[ok] / mx[ok, None]  # scaled by their max first: a 1e200-sized solution must not overflow
        if Y.shape[0]:
            AY = np.asarray(Aop.mat(Y.T), dtype=dtype).T
            if C is not None:
                n0 = np.linalg.norm(AY, axis=1)
                G = AY @ C.conj().T  # (a, kc): coefficients of A y on C
                AY = AY - G @ C
                Y = Y - G @ U
                # a direction (nearly) inside span(U) is left to cancellation noise, and then
                # A (y - G U) and A y - G C no longer agree: keep only well-separated ones
                keep = np.linalg.norm(AY, axis=1) > 1e-6 * n0
                AY, Y = AY[keep], Y[keep]
            Q, R, piv = _pivoted_qr(AY.T, rel=1e-8) if AY.shape[0] else (None, None, None)
            if Q is not None and Q.shape[1]:
                c = Q.conj().T @ r
                x += (sla.solve_triangular(R, c, lower=False)) @ Y[piv]
                r -= Q @ c

    # --- storage: rows 0..kc-1 of W hold C, the Arnoldi vectors follow ---------------------------
    W = np.empty((k + m + 1, n), dtype=dtype)
    W2 = np.empty_like(W) if k else None  # ping-pong buffer: the refreshed C is written here by gemm
    Z = np.empty((m, n), dtype=dtype) if precond else None
    H = np.zeros((k + m + 1, m), dtype=dtype)  # rows 0..kc-1: B = C^H A V; then Hbar
    kc = 0 if C is None else C.shape[0]
    if kc:
        W[:kc] = C
    CtU = None  # C^H U (U_pre when preconditioned), kept for the harmonic Ritz problem
    info, breakdown, verify_fail = 0, False, 0
    rnorm = float(np.linalg.norm(r))
    why = ""

    while True:
        if rnorm <= tol:
            # confirm with the true residual: the recurrence can drift
            rt = b - Aop(x)
            tn = float(np.linalg.norm(rt))
            if tn <= tol or tol == 0.0 and tn == 0.0:
                rnorm = tn
                st.converged = True
                break
            verify_fail += 1
            r = rt
            if kc:
                c = W[:kc].conj() @ r
                x += U.T @ c
                r -= W[:kc].T @ c
            rnorm = float(np.linalg.norm(r))
            if verify_fail > 3 or rnorm <= tol:
                why = "residual recurrence lost accuracy"
                break
        if st.iterations >= maxiter:
            why = "maxiter reached"
            break
        if breakdown:
            why = "Krylov breakdown (singular or inconsistent system)"
            break
        # --- one cycle: Arnoldi with (I - C C^H) A M^{-1} for m - kc steps (step C.1) -------------
        steps = min(m - kc, maxiter - st.iterations)
        if steps < 1:  # k fills the basis (tiny n): shrink the recycled space
            kc, U, Upre = 0, None, None
            steps = min(m, maxiter - st.iterations)
        beta = rnorm
        W[kc] = r / beta
        H[: kc + steps + 1, :steps] = 0
        g = [0j if not real else 0.0] * (steps + 1)
        g[0] = beta
        cs, sn = [], []
        j = 0
        for j in range(steps):
            v = W[kc + j]
            if precond:
                z = Mop(v)
                Z[j] = z
                w = np.asarray(Aop(z), dtype=dtype).reshape(-1)
            else:
                w = np.asarray(Aop(v), dtype=dtype).reshape(-1)
            nb = kc + j + 1
            basis = W[:nb]
            # block classical Gram-Schmidt (one gemv each way instead of a per-vector loop), repeated
            # once only after severe cancellation (norm drop > 1/_REORTH) - the products are memory
            # bound; the DGKS threshold 1/sqrt(2) fired on most steps without changing convergence
            w0 = float(np.linalg.norm(w))
            h = basis @ w if real else (basis @ w.conj()).conj()
            w -= basis.T @ h
            hn = float(np.linalg.norm(w))
            if hn < _REORTH * w0:
                h2 = basis @ w if real else (basis @ w.conj()).conj()
                w -= basis.T @ h2
                h += h2
                hn = float(np.linalg.norm(w))
            H[:nb, j] = h
            H[nb, j] = hn
            st.iterations += 1
            if hn > eps * max(1.0, float(np.linalg.norm(h))) * 10:
                W[nb] = w / hn
            else:
                W[nb] = 0.0
                breakdown = True
            # Givens update of the small least-squares problem on Hbar (rows kc..)
            col = H[kc: kc + j + 2, j].tolist()
            for i in range(j):
                c_, s_ = cs[i], sn[i]
                t = c_ * col[i] + s_ * col[i + 1]
                col[i + 1] = (-s_ if real else -s_.conjugate()) * col[i] + c_ * col[i + 1]
                col[i] = t
            c_, s_, rho = _givens(col[j], float(hn))
            cs.append(c_)
            sn.append(s_)
            col[j], col[j + 1] = rho, 0.0
            g[j + 1] = (-s_ if real else -s_.conjugate()) * g[j]
            g[j] = c_ * g[j]
            res = abs(g[j + 1])
            st.history.append(res / bnorm if bnorm else res)
            if callback is not None:
                callback(res / bnorm if bnorm else res)
            if res <= tol or breakdown:
                j += 1
                break
        else:
            j = steps
        st.cycles += 1
        # --- solve the small problem; y_U = -D^{-1} B y_V drops out of the update (step C.3) -------
        Hbar = H[kc: kc + j + 1, :j]
        yv = sla.lstsq(Hbar, np.asarray(beta * np.eye(j + 1, 1, dtype=dtype)[:, 0]), cond=None,
                       lapack_driver="gelsy")[0]
        upd = (Z[:j] if precond else W[kc: kc + j]).T @ yv
        if kc:
            upd -= U.T @ (H[:kc, :j] @ yv)
        x += upd
        r -= W[kc: kc + j + 1].T @ (Hbar @ yv)
        rnorm = float(np.linalg.norm(r))
        if k == 0 or j == 0:
            continue
        # --- refresh the recycled space by harmonic Ritz vectors (step C.4 / A.2-3) ---------------
        mm = kc + j
        G = np.zeros((mm + 1, mm), dtype=dtype)
        WhV = np.zeros((mm + 1, mm), dtype=dtype)
        if kc:
            Uref = Upre if precond else U
            unorm = np.linalg.norm(Uref, axis=1)
            d = 1.0 / unorm
            G[:kc, :kc] = np.diag(d)
            G[:kc, kc:] = H[:kc, :j]
            # W^H [U D, V]: the C^H U block is carried from the last refresh (small algebra), only
            # the new Arnoldi rows need an n-sized product
            Wv = W[kc: mm + 1]
            WhV[kc:, :kc] = ((Wv @ Uref.T) if real else (Wv.conj() @ Uref.T)) * d
            if CtU is None or CtU.shape != (kc, kc):
                CtU = (W[:kc] @ Uref.T) if real else (W[:kc].conj() @ Uref.T)
            WhV[:kc, :kc] = CtU * d
        G[kc:, kc:] = Hbar
        WhV[kc: kc + j, kc:] = np.eye(j, dtype=dtype)
        GH = G.conj().T
        try:
            theta, P = sla.eig(GH @ G, GH @ WhV, check_finite=False)
        except (np.linalg.LinAlgError, ValueError):
            continue  # keep the old space; correctness does not depend on it
        P = _select_ritz(theta, P, min(k, mm), real)[:, : m - 1]  # a kept pair must leave room
        if P.shape[1] == 0:
            continue
        P = P.astype(dtype, copy=False)
        Q, R, piv = _pivoted_qr(G @ P)
        if Q.shape[1] == 0:
            continue
        P = P[:, piv]
        coef = sla.solve_triangular(R, np.eye(R.shape[0], dtype=dtype), lower=False)  # R^{-1}
        PR = P @ coef  # (mm, k')
        # V-hat = [U D, V_j] in solution space (U, Z) and preconditioned space (U_pre, V);
        # every product is (k' x .) @ (. x n) on row-stored vectors: no transposed copies
        topT = (PR[:kc] * d[:, None]).T if kc else None  # (k', kc)
        PRt = np.ascontiguousarray(PR[kc:].T)  # (k', j)
        newU = PRt @ (Z[:j] if precond else W[kc: kc + j])
        if kc:
            newU += topT @ U
        if precond:
            newUpre = PRt @ W[kc: kc + j]
            if kc:
                newUpre += topT @ Upre
            Upre = newUpre
        U = newU
        kn = Q.shape[1]
        # C_new = W Q, written straight into the other buffer (its rows kn.. get the next Arnoldi basis)
        QT = np.ascontiguousarray(Q.T)
        np.matmul(QT, W[: mm + 1], out=W2[:kn])
        W, W2 = W2, W
        # C_new^H U_new = Q^H (W^H V-hat) P R^{-1}: exact in exact arithmetic, no n-sized product
        CtU = (Q.conj().T @ WhV) @ PR
        kc = kn
        # keep r orthogonal to the new C (exact in exact arithmetic, enforced against drift)
        c = W[:kc] @ r if real else W[:kc].conj() @ r
        r -= W[:kc].T @ c
        x += U.T @ c
        rnorm = float(np.linalg.norm(r))

    x, info = finish(st, "gcrodr", Aop, Mop, b, x, s_b, tol, rnorm, bnorm, rtol, why)
    st.info = info
    st.recycle_dim = kc
    if recycle is not None and kc:
        # optional: carry no more vectors than Arnoldi steps this solve needed (cf. HPDDM shrinking
        # the space when a solve converges in < k steps): with a strong preconditioner the k
        # mat-vecs for A U can exceed the work the space saves; off by default because cutting
        # columns can drop deflated directions that the next solve needs
        keep = min(kc, max(st.iterations, 1)) if shrink else kc
        U = U[:keep]
        Upre = Upre[:keep] if Upre is not None else None
        kc = keep
        recycle.U, recycle.C, recycle.U_pre = U, np.ascontiguousarray(W[:kc]), Upre
        recycle.A_ref, recycle.M_ref, recycle.method = A, M, "gcrodr"
    if recycle is not None:
        recycle.last_stats = st
    st.time = time.perf_counter() - t_start
    return x, info, st


def gcrodr(A: Any, b: Any, x0: Any = None, *, rtol: float = 1e-5, atol: float = 0.0,
           maxiter: int | None = None, M: Any = None, restart: int = 40, k: int = 20,
           recycle: RecycleSpace | None = None,
           callback: Callable[[float], Any] | None = None) -> tuple[np.ndarray, int]:
    """Solve ``A x = b`` by GCRO-DR(m, k) (Parks et al. 2006) with an optional recycled space.

    Parameters
    ----------
    A : ndarray, sparse matrix or LinearOperator, shape (n, n)
    b : ndarray, shape (n,)
    x0 : ndarray, optional
        Initial guess (default zero).
    rtol, atol : float
        Stop when ``||b - A x|| <= max(rtol * ||b||, atol)`` (true residual, checked at exit).
    maxiter : int, optional
        Maximum number of Arnoldi steps over all cycles (default ``10 n``).
    M : ndarray, sparse matrix or LinearOperator, optional
        Right preconditioner: applies ``M^{-1}`` (as in SciPy, ``M`` approximates ``A^{-1}``).
    restart : int
        Maximum basis size ``m`` per cycle (recycled vectors included).
    k : int
        Recycled dimension, ``0 <= k < restart``; ``k = 0`` is GMRES(m).
    recycle : RecycleSpace, optional
        The recycled space: read on entry (recomputing ``C = A U`` if ``A`` is a different
        object than the one it was built with) and updated in place on exit. ``None`` means
        deflated restarting within this solve only (GMRES-DR).
    callback : callable, optional
        Called after every Arnoldi step with the relative residual norm of the small problem.

    Returns
    -------
    x : ndarray
    info : int
        0 on convergence, else the number of Arnoldi steps taken (a ``KrylovWarning`` is
        issued; ``x`` is the best iterate, never reported as converged).

    References
    ----------
    M. L. Parks, E. de Sturler, G. Mackey, D. D. Johnson, S. Maiti, SIAM J. Sci. Comput.
    28(5):1651-1674, 2006.
    """
    with blas_single_thread():  # memory-bound block products: threads only oversubscribe
        x, info, _ = _gcrodr(A, b, x0, rtol=rtol, atol=atol, maxiter=maxiter, M=M, restart=restart,
                             k=k, recycle=recycle, callback=callback)
    return x, info
