"""Sinkhorn-Newton-Sparse on the GPU (CuPy arrays in and out, CUDA kernels).

``SinkhornNewtonSparse.__call__`` dispatches here for CuPy problems. Same algorithm and options as
the CPU solver (``otsolve/solvers/sns.py``; spec ``sinkhorn_sns.md`` §4): Sinkhorn warm-up with the
fused passes of :mod:`otsolve.backends.cupy_sinkhorn`, then Newton steps where

* the plan's marginals and mass come from one row and one column pass (no n x m plan stored;
  point clouds keep their on-the-fly cost),
* the sparsified Hessian (exact diagonal + the ``k_row`` largest entries of each row of P, the
  same block on both sides) is assembled into CSR by ``topk_rows_*`` in ``csrc/cuda/sns.cu``,
* ``M~ dz = eps grad F`` is solved by Jacobi-preconditioned CG with the ``hess_matvec_csr``
  kernel (the residual is read back every 10 iterations only),
* the step is chosen by Armijo backtracking on F (overflow = rejection).

The Newton stage's decisions (best iterate, patience, denser ``k_row``, forcing term, direct
solves after a CG stall) are :class:`otsolve.solvers.sns.NewtonState`, shared with the CPU
solver. Difference: ``k_row`` is at most 32 (the register top-k of the kernel).

References
----------
X. Tang et al., "Accelerating Sinkhorn Algorithm with Sparse Newton Iterations", ICLR 2024.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any

import numpy as np

from ..geometry import PointCloud
from ..solvers._common import default_tol
from ..solvers.result import OTResult
from .cuda_kernels import get_kernel
from ..solvers.sns import _ALPHA_MIN, _ARMIJO_C, _DENSE_KEPT, _PATIENCE, NewtonState, direct_newton_solve
from .cupy_sinkhorn import CudaGeometry, CudaSinkhornEngine, _as_device_potentials, sinkhorn_loop

__all__ = ["solve_sns_cupy", "sparsified_hessian", "hessian_matvec", "K_MAX"]

K_MAX = 32


def _k_template(k: int) -> int:
    for K in (8, 16, 32):
        if k <= K:
            return K
    raise ValueError(f"k_row must be <= {K_MAX} on the GPU, got {k}")


def sparsified_hessian(geo: CudaGeometry, f, g, eps: float, k: int):
    """CSR (indptr, indices, data) of the ``k`` largest entries of each row of the plan of
    (f, g) (1-D potentials of problem 0), rows sorted by decreasing value."""
    import cupy as cp  # noqa: PLC0415

    n, m = geo.n, geo.m
    k = int(min(k, m))
    K = _k_template(k)
    T = geo.dtype.type
    data = cp.empty(n * k, dtype=geo.dtype)
    indices = cp.empty(n * k, dtype=cp.int32)
    grid, block = (math.ceil(n / 2), 1, 1), (64, 1, 1)  # 2 warps per block, one row per warp
    if geo.dense:
        kern = get_kernel("sns.cu", "topk_rows_dense", geo.dtype, K)
        kern(grid, block, (geo.C, f, g, np.int64(n), np.int64(m), T(eps), np.int32(k), data, indices))
    else:
        kern = get_kernel("sns.cu", "topk_rows_pointcloud", geo.dtype, K)
        kern(grid, block, (geo.X, geo.YT, np.int32(geo.d), np.int32(geo.kind), T(geo.scale), f, g,
                           np.int64(n), np.int64(m), T(eps), np.int32(k), data, indices))
    indptr = cp.arange(0, n * k + 1, k, dtype=cp.int32)
    return indptr, indices, data


def hessian_matvec(indptr, indices, data, r, c, zx, zy, eta: float = 1.0):
    """``eta * M~ z`` for ``M~ = [[diag(r), P~], [P~^T, diag(c)]]`` (P~ in CSR): (yx, yy)."""
    import cupy as cp  # noqa: PLC0415

    n = int(r.size)
    T = r.dtype.type
    yx = cp.empty_like(zx)
    yy = (T(eta) * c * zy).astype(r.dtype, copy=False)
    kern = get_kernel("sns.cu", "hess_matvec_csr", r.dtype)
    kern((math.ceil(n / 256), 1, 1), (256, 1, 1), (indptr, indices, data, r, zx, zy, np.int64(n), T(eta), yx, yy))
    return yx, yy


def _pcg(csr, r, c, rhs_x, rhs_y, x0x, x0y, rtol: float, maxiter: int):
    """Jacobi-PCG on M~ z = rhs, warm-started; (zx, zy, iterations, relative residual)."""
    import cupy as cp  # noqa: PLC0415

    tiny = 1e-300 if r.dtype == np.float64 else 1e-30
    dinv_x, dinv_y = 1.0 / (r + tiny), 1.0 / (c + tiny)
    zx, zy = x0x.copy(), x0y.copy()
    ax, ay = hessian_matvec(*csr, r, c, zx, zy)
    rx, ry = rhs_x - ax, rhs_y - ay
    bnorm = float(cp.sqrt((rhs_x * rhs_x).sum() + (rhs_y * rhs_y).sum()))
    if bnorm == 0.0:
        return zx, zy, 0, 0.0
    sx, sy = dinv_x * rx, dinv_y * ry
    px, py = sx.copy(), sy.copy()
    rz = (rx * sx).sum() + (ry * sy).sum()  # device scalars: no sync per iteration
    it, rel = 0, np.inf
    while it < maxiter:
        qx, qy = hessian_matvec(*csr, r, c, px, py)
        alpha = rz / ((px * qx).sum() + (py * qy).sum())
        zx += alpha * px
        zy += alpha * py
        rx -= alpha * qx
        ry -= alpha * qy
        it += 1
        if it % 10 == 0 or it == maxiter:
            rel = float(cp.sqrt((rx * rx).sum() + (ry * ry).sum())) / bnorm
            if not np.isfinite(rel) or rel <= rtol:
                break
        sx, sy = dinv_x * rx, dinv_y * ry
        rz_new = (rx * sx).sum() + (ry * sy).sum()
        beta = rz_new / rz
        rz = rz_new
        px = sx + beta * px
        py = sy + beta * py
    return zx, zy, it, rel


def solve_sns_cupy(solver, problem, init: Any = None) -> OTResult:
    """Run :class:`~otsolve.SinkhornNewtonSparse` (options tol, max_iter, n_sinkhorn, switch_tol,
    auto_switch, k_row, density, cg_rtol, cg_maxiter, max_sinkhorn, warn) on a CuPy problem; f, g
    and the plan are CuPy arrays of the problem's dtype on its device."""
    import cupy as cp  # noqa: PLC0415

    eps = problem.require_epsilon()
    geom = problem.geom
    n_full, m_full = geom.shape
    dtype = problem.dtype
    T = dtype.type
    tol = default_tol(dtype) if solver.tol is None else float(solver.tol)
    with cp.cuda.Device(problem.a.device.id):
        f0, g0 = _as_device_potentials(init, n_full, m_full, dtype)
        rs, cs = cp.flatnonzero(problem.a > 0), cp.flatnonzero(problem.b > 0)
        full = rs.size == n_full and cs.size == m_full
        if isinstance(geom, PointCloud) and geom.kernel_kind is not None:
            X, Y = (geom.x, geom.y) if full else (geom.x[rs], geom.y[cs])
            geo = CudaGeometry(X=X[None], Y=Y[None], kind=geom.kernel_kind, scale=geom.kernel_scale)
        else:
            C = geom.cost_matrix if full else geom.cost_matrix[rs][:, cs]
            geo = CudaGeometry(C=C[None])
        n, m = geo.n, geo.m
        a = problem.a[rs].astype(dtype)
        b = problem.b[cs].astype(dtype)
        log_a, log_b = cp.log(a)[None], cp.log(b)[None]
        x = f0[rs].copy()[None]
        y = g0[cs].copy()[None]
        x[~cp.isfinite(x)] = 0
        y[~cp.isfinite(y)] = 0
        engine = CudaSinkhornEngine(geo)
        ids = np.zeros(1, dtype=np.int32)
        act = cp.asarray(ids)
        k = math.ceil(solver.density * m) if getattr(solver, "density", None) is not None else solver.k_row
        k = int(min(max(k, 1), m, K_MAX))
        cg_maxiter = solver.cg_maxiter or max(500, n + m)
        # the passes measure the row error only (columns exact up to rounding), as on the CPU
        tol_sk = max(tol - 16 * (n + m) * np.finfo(float).eps * float(a.sum()), 0.5 * tol)
        errors: list[float] = []
        rec = dict(n_sinkhorn=0, n_newton=0, cg_iterations=[], cg_residuals=[], step_sizes=[], kept_mass=[],
                   fallbacks=[], newton_times=[], sinkhorn_time=0.0, direct_solves=0)
        sk_budget = [int(solver.max_sinkhorn)]
        t0 = time.perf_counter()

        def sinkhorn(iters: int, stop_tol: float, omega: float | None = 1.0) -> tuple[float, int]:
            """Up to ``iters`` iterations in place (omega None: adaptive over-relaxation);
            (last measured error, status 0 converged / 1 budget / 2 diverged)."""
            iters = min(iters, sk_budget[0])
            if iters <= 0:
                return np.inf, 1
            lr = sinkhorn_loop(engine, log_a, log_b, x, y, eps, iters, stop_tol, ids, omega=omega)
            it = int(lr.n_iter[0])
            sk_budget[0] -= it
            rec["n_sinkhorn"] += it
            errors.extend(lr.errors[0])
            return (float(lr.errors[0][-1]) if lr.errors[0] else np.inf), int(lr.status[0])

        def stats(xx, yy):
            """Row and column marginals of the plan of (xx, yy) (geometry dtype), its mass."""
            row, col, _ = engine.plan_stats(xx, yy, eps, act)
            r0 = row[0]
            return r0.astype(dtype), col[0].astype(dtype), float(r0.sum())

        def line_search(row, mass0, gx, gy, dzx, dzy, slope, err):
            """Armijo backtracking on F (spec §4.3), as the CPU solver; (alpha, row, col, mass) or None."""
            ax, by = float((a * x[0]).sum()), float((b * y[0]).sum())
            adx, bdy = float((a * dzx).sum()), float((b * dzy).sum())
            F0 = -eps * mass0 + ax + by
            noise = 64 * np.finfo(float).eps * (abs(ax) + abs(by) + eps * mass0 + abs(F0))
            alpha = 1.0
            while alpha >= _ALPHA_MIN:
                rt, ct, mass = stats(x + T(alpha) * dzx, y + T(alpha) * dzy)
                if np.isfinite(mass):  # an overflowing trial is rejected
                    F = -eps * mass + ax + by + alpha * (adx + bdy)
                    if F >= F0 + _ARMIJO_C * alpha * slope:
                        return alpha, rt, ct, mass
                    if F >= F0 - noise and float(cp.abs(a - rt).sum() + cp.abs(b - ct).sum()) < err:
                        return alpha, rt, ct, mass
                alpha *= 0.5
            return None

        status, message = "max_iter", f"reached max_iter={solver.max_iter} Newton steps"
        # ---- stage 1: Sinkhorn warm-up (plain, as in the paper), automatic switch ----------------
        stop1 = max(tol_sk, solver.switch_tol or 0.0)
        err, st = sinkhorn(solver.n_sinkhorn, stop1)
        if st != 2 and err > tol and solver.auto_switch and solver.n_sinkhorn >= 6 and err > stop1:
            e = errors[-6:]
            if len(e) == 6 and e[0] > 0 and e[-1] > 0:
                kappa = (e[-1] / e[0]) ** 0.2
                if kappa < 1.0:
                    need = math.log(tol / e[-1]) / math.log(kappa)
                    if need <= 3 * solver.n_sinkhorn:
                        err, st = sinkhorn(int(math.ceil(1.5 * need)) + 5, tol_sk, None)
        rec["sinkhorn_time"] = time.perf_counter() - t0
        state = NewtonState(n, m, x, y)
        if st == 2:
            status, message = "diverged", "Sinkhorn stage produced non-finite potentials"
        elif err <= tol_sk:
            status, message = "converged", "converged in the Sinkhorn stage"
            state.best = (err, x, y)
        else:
            # ---- stage 2: Newton with a sparsified Hessian (same rules as the CPU solver) -------
            row, col, mass = stats(x, y)
            csr = sparsified_hessian(geo, x[0], y[0], eps, k)
            kept0 = float(csr[2].sum()) / mass if mass > 0 else 1.0
            if solver.auto_switch and kept0 < _DENSE_KEPT:
                # diffuse plan: the sparse Newton model is poor; over-relaxed Sinkhorn goes first
                err_sk, st = sinkhorn(max(10 * solver.n_sinkhorn, 100), tol_sk, None)
                rec["fallbacks"].append(f"dense plan (top-{k} entries per row hold {kept0:.2f} of the mass): ran "
                                        f"over-relaxed Sinkhorn iterations first (error {err_sk:.3g})")
                row, col, mass = stats(x, y)
                csr = None
            dzx, dzy = cp.zeros(n, dtype=dtype), cp.zeros(m, dtype=dtype)
            while True:
                gx, gy = a - row, b - col
                err = float(cp.abs(gx).sum() + cp.abs(gy).sum())
                rec["newton_times"].append(time.perf_counter() - t0)
                errors.append(err)
                state.observe(err, rec["n_newton"], x, y)
                if err <= tol:
                    status, message = "converged", "converged in the Newton stage"
                    break
                if rec["n_newton"] >= solver.max_iter:
                    break
                denser = state.denser_k(err, k, min(m, K_MAX), rec["kept_mass"], solver.adaptive_k)
                if denser is not None:
                    k, csr = denser[0], None
                    rec["fallbacks"].append(f"Newton step {rec['n_newton']}: {denser[1]}")
                fail, stagnated = None, False
                if not np.isfinite(err):
                    fail = "non-finite marginal error"
                elif state.stagnated:
                    fail, stagnated = f"no new smallest marginal error in {_PATIENCE} Newton steps", True
                else:
                    if csr is None:
                        csr = sparsified_hessian(geo, x[0], y[0], eps, k)
                    rec["kept_mass"].append(float(csr[2].sum()) / mass if mass > 0 else 0.0)
                    rtol = state.cg_rtol(solver.cg_rtol, err)

                    def direct():
                        """The projected system solved on the host (CG stalls on it)."""
                        kk = int(csr[1].size) // n
                        rhs = cp.concatenate([T(eps) * gx, T(eps) * gy]).get()
                        return direct_newton_solve(row.get(), col.get(), csr[1].get().reshape(n, kk),
                                                   csr[2].get().reshape(n, kk), rhs)

                    z = direct() if state.solve_directly_first(rec["direct_solves"]) else None
                    if z is None:
                        dzx, dzy, its, res = _pcg(csr, row, col, T(eps) * gx, T(eps) * gy, dzx, dzy, rtol,
                                                  cg_maxiter)
                        rec["cg_iterations"].append(int(its))
                        rec["cg_residuals"].append(float(res))
                        if state.solve_directly_after(res, rtol):
                            z = direct()
                    if z is not None:
                        dzx, dzy = cp.asarray(z[:n].astype(dtype)), cp.asarray(z[n:].astype(dtype))
                        rec["direct_solves"] += 1
                    shift = (dzx.sum() - dzy.sum()) / (n + m)  # gauge direction (1, -1) out
                    dzx -= shift
                    dzy += shift
                    slope = float((gx * dzx).sum() + (gy * dzy).sum())
                    if not (bool(cp.isfinite(dzx).all() & cp.isfinite(dzy).all()) and slope > 0):
                        fail = "CG gave no ascent direction"
                    else:
                        found = line_search(row, mass, gx, gy, dzx, dzy, slope, err)
                        if found is None:
                            fail = "line search found no acceptable step"
                        else:
                            alpha, row, col, mass = found
                            x += T(alpha) * dzx
                            y += T(alpha) * dzy
                            csr = None
                            rec["step_sizes"].append(alpha)
                            rec["n_newton"] += 1
                            if alpha < 1.0:
                                dzx *= T(alpha)  # warm start of the next solve
                                dzy *= T(alpha)
                            continue
                # fallback: a Sinkhorn block from the current iterate (F only increases along
                # accepted steps and Sinkhorn steps); a model that gave no step is made denser
                rec["n_newton"] += 1
                k_new = min(2 * k, m, K_MAX) if not stagnated else k
                if sk_budget[0] <= 0:
                    status, message = "fallback_exhausted", f"{fail}; Sinkhorn budget exhausted"
                    break
                x_keep, y_keep = x.copy(), y.copy()
                err_sk, st = sinkhorn(max(solver.n_sinkhorn, 10), tol_sk, None)
                rec["fallbacks"].append(f"Newton step {rec['n_newton']}: {fail}; ran Sinkhorn iterations (error "
                                        f"{err_sk:.3g})" + (f", k_row {k} -> {k_new}" if k_new != k else ""))
                if st == 2:
                    x[...], y[...] = x_keep, y_keep
                k, csr = k_new, None
                dzx, dzy = cp.zeros(n, dtype=dtype), cp.zeros(m, dtype=dtype)
                state.restart()
                row, col, mass = stats(x, y)
                if not np.isfinite(mass):
                    x[...], y[...] = state.best[1], state.best[2]
                    row, col, mass = stats(x, y)
        x, y = state.best[1], state.best[2]
        elapsed = time.perf_counter() - t0

        f_full = cp.full(n_full, -cp.inf, dtype=dtype)
        g_full = cp.full(m_full, -cp.inf, dtype=dtype)
        f_full[rs], g_full[cs] = x[0], y[0]
        # exact statistics on the full problem (zero-weight rows/columns included)
        geo_full = CudaGeometry.from_geometry(geom)
        eng_full = CudaSinkhornEngine(geo_full)
        from .cupy_sinkhorn import finish_stats  # noqa: PLC0415

        merr, cost, value = finish_stats(eng_full, f_full[None], g_full[None], problem.a.astype(dtype)[None],
                                         problem.b.astype(dtype)[None], eps, act)
    merr0 = float(merr[0])
    converged = bool(np.isfinite(merr0) and merr0 <= tol)
    if converged:
        status, message = "converged", f"marginal L1 error {merr0:.3g} <= tol {tol:.3g}"
    else:
        message = f"{message}; marginal L1 error {merr0:.3g} > tol {tol:.3g}"
        if solver.warn:
            warnings.warn(f"SinkhornNewtonSparse: {message}", RuntimeWarning, stacklevel=3)

    def plan():
        with cp.cuda.Device(f_full.device.id):
            Cf = geo_full.cost_block(0)
            return cp.exp((f_full[:, None] + g_full[None, :] - Cf) / T(eps) - 1).astype(dtype, copy=False)

    return OTResult(
        method=solver.method, f=f_full, g=g_full, cost=float(cost[0]), value=float(value[0]),
        converged=converged, n_iter=rec["n_sinkhorn"] + rec["n_newton"], marginal_error=merr0,
        errors=errors, message=message, status=status, epsilon=eps, plan_fn=plan,
        n_sinkhorn=rec["n_sinkhorn"], n_newton=rec["n_newton"], cg_iterations=rec["cg_iterations"],
        cg_residuals=rec["cg_residuals"], direct_solves=rec["direct_solves"], step_sizes=rec["step_sizes"], nnz_per_row=k,
        kept_mass=rec["kept_mass"], fallbacks=rec["fallbacks"], newton_times=rec["newton_times"], sinkhorn_time=rec["sinkhorn_time"],
        time=elapsed, backend="cupy",
    )
