"""Sinkhorn-Newton-Sparse (SNS): Sinkhorn warm-up, then Newton steps with a sparsified Hessian.

Tang, Shavlovsky, Rahmanian, Tardini, Thekumparampil, Xiao, Ying, "Accelerating Sinkhorn
Algorithm with Sparse Newton Iterations", ICLR 2024 (arXiv 2401.12253). The robustness rules
(exact diagonal, symmetric per-row sparsification, overflow-rejecting line search, automatic
switch and fallbacks) follow the project spec ``specs/sinkhorn_sns.md``.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from ..kernels import get_sinkhorn_kernels
from ..kernels import sns_reference
from ..problems import LinearProblem
from ._common import (
    default_tol,
    dense_plan,
    initial_potentials,
    is_cupy_problem,
    marginal_l1,
    plan_statistics,
    safe_log,
    warn_not_converged,
)
from .result import OTResult

__all__ = ["SinkhornNewtonSparse", "get_sns_kernels", "direct_newton_solve"]

try:  # built by `pip install .` from csrc/_ext_sns.cpp
    from .. import _ext_sns as _compiled_sns
except ImportError:  # pragma: no cover - source checkout without a build
    _compiled_sns = None

# Armijo sufficient-increase constant and the smallest step tried before giving up.
_ARMIJO_C = 1e-4
_ALPHA_MIN = 2.0**-30
# Newton steps without a new smallest marginal error before a Sinkhorn block is run (the
# error of Newton iterates on F is not monotone, so one bad step is no evidence).
_PATIENCE = 5
# Kept-mass fraction below which the plan counts as dense for the automatic switch.
_DENSE_KEPT = 0.9
# Inexact-Newton forcing term: CG relative residual min(_FORCING_MAX, err**_FORCING_POW).
_FORCING_MAX = 1e-1
_FORCING_POW = 0.5
# Up to this n + m, a Newton system that CG leaves above its tolerance is solved directly (dense
# Cholesky, ~0.2 s at 3000): near-permutation plans (small n, large eta) make M~ so ill-conditioned
# that Jacobi-PCG stalls, and SNS then stalls with it.
DIRECT_MAX = 3000


class NewtonState:
    """Bookkeeping and decisions of the Newton stage, one copy for the CPU and GPU solvers.

    Tracks the best iterate (smallest marginal error), the steps since it (patience), the recent
    errors (slow linear rate -> denser Hessian), and whether CG has stalled on this problem
    (then the systems are solved directly, see :func:`direct_newton_solve`).
    """

    def __init__(self, n: int, m: int, x, y, err: float = np.inf) -> None:
        self.best = (err, x.copy(), y.copy())
        self.bad_steps = 0
        self.step_errs: list[float] = []
        self.small = n + m <= DIRECT_MAX

    def observe(self, err: float, n_newton: int, x, y) -> None:
        """Record the error of the current iterate (x, y)."""
        if err < self.best[0]:
            self.best, self.bad_steps = (err, x.copy(), y.copy()), 0
        elif n_newton > 0:
            self.bad_steps += 1

    def denser_k(self, err: float, k: int, k_cap: int, kept_mass: list, adaptive: bool):
        """(new k_row, message) when convergence is linear and slow (error x0.5 or worse per
        step over 3 steps) while the kept block misses mass; else None."""
        e = self.step_errs
        e.append(err)
        if not (adaptive and len(e) >= 4 and e[-1] > 0.125 * e[-4] and k < k_cap and kept_mass
                and kept_mass[-1] < 0.999):
            return None
        k_new = min(2 * k, k_cap)
        msg = (f"slow convergence (error x{(e[-1] / e[-4]) ** (1 / 3):.2f} per step, kept mass "
               f"{kept_mass[-1]:.3f}); k_row {k} -> {k_new}")
        self.step_errs = []
        return k_new, msg

    @property
    def stagnated(self) -> bool:
        return self.bad_steps >= _PATIENCE

    def restart(self) -> None:
        """After a Sinkhorn fallback block."""
        self.bad_steps, self.step_errs = 0, []

    @staticmethod
    def cg_rtol(cg_rtol: float, err: float) -> float:
        """Inexact Newton: a loose forcing term far from the optimum saves CG iterations."""
        return max(cg_rtol, min(_FORCING_MAX, err ** _FORCING_POW))

    def solve_directly_first(self, direct_solves: int) -> bool:
        """A direct solve was needed at an earlier step: the later (equally ill-conditioned)
        systems go straight to it instead of spending cg_maxiter on CG first."""
        return self.small and direct_solves > 0

    def solve_directly_after(self, res: float, rtol: float) -> bool:
        """CG ended above its tolerance on a problem small enough for the direct solve."""
        return self.small and not res <= rtol


def direct_newton_solve(row, col, kidx, kval, rhs) -> np.ndarray | None:
    """Solve the sparsified Newton system as projected CG does, but directly; None on failure.

    ``M~ = [[diag(row), P~], [P~^T, diag(col)]]`` with ``P~`` given per row by the kept columns
    ``kidx`` (n, k) and values ``kval``. With ``v = (1_n, -1_m)`` (the gauge direction, spec
    sinkhorn_sns.md §3) and ``Pi`` the projection onto its complement, returns the ``z`` with
    ``Pi M~ Pi z = Pi rhs`` and ``v . z = 0``: a dense Cholesky solve of
    ``Pi M~ Pi + s v v^T / (n + m)`` (positive definite; ``s`` = mean diagonal keeps it scaled).
    """
    from scipy.linalg import LinAlgError, cho_factor, cho_solve  # noqa: PLC0415

    row, col = np.asarray(row, dtype=np.float64), np.asarray(col, dtype=np.float64)
    n, m = row.size, col.size
    N = n + m
    M = np.zeros((N, N))
    M[np.arange(n), np.arange(n)] = row
    M[n + np.arange(m), n + np.arange(m)] = col
    ii = np.repeat(np.arange(n), kidx.shape[1])
    jj = n + np.asarray(kidx, dtype=np.int64).ravel()
    vv = np.asarray(kval, dtype=np.float64).ravel()
    np.add.at(M, (ii, jj), vv)
    np.add.at(M, (jj, ii), vv)
    v = np.concatenate([np.ones(n), -np.ones(m)])
    Mv = M @ v
    vMv = float(v @ Mv)
    # Pi M Pi = M - (Mv v^T + v Mv^T)/N + (v^T M v) v v^T / N^2, plus s v v^T / N
    s = float(np.mean(np.diag(M))) or 1.0
    A = M - (np.outer(Mv, v) + np.outer(v, Mv)) / N + (vMv / N**2 + s / N) * np.outer(v, v)
    b = np.asarray(rhs, dtype=np.float64)
    b = b - (b @ v) / N * v
    try:
        z = cho_solve(cho_factor(A, lower=True, check_finite=False), b, check_finite=False)
    except (LinAlgError, ValueError):
        return None
    return z if np.all(np.isfinite(z)) else None


def get_sns_kernels(compiled: bool = True) -> ModuleType:
    """Module with ``sns_form_system``, ``sns_line_eval``, ``sns_matvec``, ``sns_pcg``.

    The compiled C++ module when built (and ``compiled``), else the NumPy reference
    :mod:`otsolve.kernels.sns_reference` (same signatures).
    """
    if compiled and _compiled_sns is not None:
        return _compiled_sns
    return sns_reference


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_pos(value: Any, name: str, upper: float | None = None) -> None:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value <= 0 or (upper is not None and value > upper):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must be a positive number{bound}, got {value!r}")


class _System:
    """Buffers of one Newton system: marginals, kept entries and their transpose."""

    def __init__(self, n: int, m: int, k: int) -> None:
        self.row, self.col = np.empty(n), np.empty(m)
        self.kidx = np.empty((n, k), dtype=np.int64)
        self.kval = np.empty((n, k))
        self.tptr = np.empty(m + 1, dtype=np.int64)
        self.tidx = np.empty(n * k, dtype=np.int64)
        self.tval = np.empty(n * k)
        self.mass = self.kept = float("nan")

    def form(self, K, C, x, y, dx, dy, alpha, eps, n_threads) -> bool:
        """Evaluate the plan at x + alpha dx, y + alpha dy; False when it overflows."""
        self.mass, _, self.kept = K.sns_form_system(
            C, x, y, dx, dy, alpha, eps, self.row, self.col, self.kidx, self.kval, self.tptr,
            self.tidx, self.tval, n_threads)
        return bool(np.isfinite(self.mass))

    def arrays(self):
        return self.row, self.col, self.kidx, self.kval, self.tptr, self.tidx, self.tval


@dataclass(frozen=True)
class SinkhornNewtonSparse:
    r"""Entropic OT by Sinkhorn-Newton-Sparse (Tang et al., ICLR 2024).

    Stage 1 runs log-domain Sinkhorn (the fused kernels of :class:`~otsolve.Sinkhorn`). Stage 2
    takes Newton ascent steps on the concave dual (Lyapunov) potential

    .. math:: F(x, y) = -\varepsilon \sum_{ij} P_{ij} + \langle a, x\rangle + \langle b, y\rangle,
              \quad P_{ij} = \exp((x_i + y_j - C_{ij})/\varepsilon - 1),

    whose Hessian is :math:`-\tfrac1\varepsilon M(P)`, :math:`M = [[\mathrm{diag}(P1), P],
    [P^T, \mathrm{diag}(P^T1)]]`. The diagonal of ``M`` is kept exact; the off-diagonal block is
    replaced by the ``k_row`` largest entries of each row of ``P`` (same block on both sides, so
    the system stays symmetric and positive semi-definite). ``M~ dz = eps * grad F`` is solved by
    Jacobi-preconditioned CG (warm-started, gauge direction ``(1, -1)`` projected out), and the
    step is chosen by Armijo backtracking that treats an overflowing plan as a rejection.

    Parameters
    ----------
    tol : float, optional
        Stop when ``||P1 - a||_1 + ||P^T 1 - b||_1 <= tol``. Default 1e-9 (float64), 1e-6 (float32).
    max_iter : int, default 100
        Newton-step budget.
    n_sinkhorn : int, default 20
        Sinkhorn warm-up iterations (the paper's N1; 0 is allowed). Also the length of the
        Sinkhorn block run by a fallback.
    switch_tol : float, optional
        Switch to Newton earlier, as soon as the Sinkhorn error is ``<= switch_tol``.
    auto_switch : bool, default True
        After the warm-up, keep running Sinkhorn while its measured linear rate predicts
        convergence within ``3 * n_sinkhorn`` more iterations, and run a block of
        ``max(10 * n_sinkhorn, 100)`` over-relaxed Sinkhorn iterations before Newton when the
        kept block holds less than 90 % of the plan's mass (dense plans, large ε: Newton with a
        sparse Hessian would not pay off there). False: switch after exactly ``n_sinkhorn``.
    k_row : int, default 10
        Off-diagonal entries of ``P`` kept per row.
    density : float, optional
        Alternative to ``k_row``: keep ``ceil(density * m)`` entries per row (the paper's λ ≈ 2/n
        corresponds to ``density = 2 / n``).
    adaptive_k : bool, default True
        Double ``k_row`` when the Newton stage converges slowly (error ratio > 0.5 per step over
        3 steps) while the kept block misses more than 0.1 % of the plan's mass (dense plans,
        large ε). Failed steps always make the Hessian denser.
    cg_rtol : float, default 1e-10
        Floor of the CG relative residual; the forcing term of step k is
        ``max(cg_rtol, min(0.1, sqrt(err_k)))`` (inexact Newton: loose far from the optimum).
    cg_maxiter : int, optional
        CG iterations per Newton step (default ``max(500, n + m)``). When CG ends above its
        tolerance and ``n + m <= 3000``, the step's system is solved directly instead, and so are
        the later steps' (dense Cholesky; counted in ``result.direct_solves``): near-permutation
        plans at small n make the sparsified Hessian too ill-conditioned for Jacobi-PCG.
    max_sinkhorn : int, default 10000
        Total Sinkhorn iterations (warm-up, automatic extension and fallbacks together).
    n_threads : int, default 0
        OpenMP threads of the compiled kernels (0 = all).
    compiled : bool, default True
        Use the compiled kernels (False: the NumPy references, for checks).
    warn : bool, default True
        Emit a RuntimeWarning when the solve does not converge.

    Notes
    -----
    Potentials are defined up to ``(f + t, g - t)``. Rows or columns with zero weight are removed
    before solving (their potentials are ``-inf``). The plan is dense during the solve (O(nm)
    memory and time per Newton step); point clouds are materialised.

    When a Newton step fails (no acceptable step or no ascent direction: then ``k_row`` is
    doubled too) or no new smallest error comes in 5 Newton steps, the solver runs a block of
    over-relaxed Sinkhorn iterations from the current iterate; each event is listed in
    ``result.fallbacks``. The returned
    iterate is the best one met (smallest marginal error), never worse than the Sinkhorn stage.

    Extra result fields: ``n_sinkhorn``, ``n_newton``, ``cg_iterations`` (per Newton step),
    ``cg_residuals``, ``step_sizes``, ``nnz_per_row`` (final ``k_row``), ``kept_mass`` (fraction
    of the plan's mass kept in the sparsified block, per step), ``fallbacks``, ``newton_times``
    (seconds since the start at each Newton error measurement), ``sinkhorn_time``, ``time``.

    References
    ----------
    X. Tang et al., "Accelerating Sinkhorn Algorithm with Sparse Newton Iterations", ICLR 2024.
    C. Brauer, C. Clason, D. Lorenz, B. Wirth, "A Sinkhorn-Newton method for entropic optimal
    transport", arXiv:1710.06635, 2017.
    """

    tol: float | None = None
    max_iter: int = 100
    n_sinkhorn: int = 20
    switch_tol: float | None = None
    auto_switch: bool = True
    k_row: int = 10
    density: float | None = None
    adaptive_k: bool = True
    cg_rtol: float = 1e-10
    cg_maxiter: int | None = None
    max_sinkhorn: int = 10_000
    n_threads: int = 0
    compiled: bool = True
    warn: bool = True

    method = "sns"

    def __post_init__(self) -> None:
        if self.tol is not None:
            _check_pos(self.tol, "tol")
        _check_int(self.max_iter, "max_iter", 0)
        _check_int(self.n_sinkhorn, "n_sinkhorn", 0)
        if self.switch_tol is not None:
            _check_pos(self.switch_tol, "switch_tol")
        _check_int(self.k_row, "k_row", 1)
        if self.density is not None:
            _check_pos(self.density, "density", upper=1.0)
        _check_pos(self.cg_rtol, "cg_rtol", upper=1.0)
        if self.cg_maxiter is not None:
            _check_int(self.cg_maxiter, "cg_maxiter", 1)
        _check_int(self.max_sinkhorn, "max_sinkhorn", 0)
        _check_int(self.n_threads, "n_threads", 0)

    # ------------------------------------------------------------------------------------
    def __call__(self, problem: LinearProblem, init: Any = None) -> OTResult:
        if not isinstance(problem, LinearProblem):
            raise ValueError(f"expected a LinearProblem, got {type(problem).__name__}")
        if is_cupy_problem(problem):  # GPU path (CuPy backend)
            from ..backends.cupy_sns import solve_sns_cupy

            return solve_sns_cupy(self, problem, init)
        eps = problem.require_epsilon()
        geom = problem.geom
        n, m = geom.shape
        tol = default_tol(problem.dtype) if self.tol is None else float(self.tol)
        f, g = initial_potentials(init, n, m)
        a = np.asarray(problem.a, dtype=np.float64)
        b = np.asarray(problem.b, dtype=np.float64)
        # Zero-mass rows/columns carry no plan mass: solve on the support, their potentials are
        # -inf (the Newton system would have empty rows there and be singular).
        rs, cs = np.flatnonzero(a > 0), np.flatnonzero(b > 0)
        C = np.asarray(geom.cost_matrix)
        if rs.size < n or cs.size < m:
            C = C[np.ix_(rs, cs)]
        C = np.ascontiguousarray(C)
        x, y = f[rs].copy(), g[cs].copy()
        x[~np.isfinite(x)] = 0.0  # a -inf warm start on the support is meaningless
        y[~np.isfinite(y)] = 0.0

        t0 = time.perf_counter()
        out = self._solve(C, a[rs], b[cs], eps, x, y, tol, t0)
        elapsed = time.perf_counter() - t0

        f_full = np.full(n, -np.inf)
        g_full = np.full(m, -np.inf)
        f_full[rs], g_full[cs] = out["x"], out["y"]
        nt = self.n_threads or (1 if n * m < (1 << 20) else 0)
        row, col, cost, plogp = plan_statistics(geom, f_full, g_full, eps, self.compiled, nt)
        merr = marginal_l1(problem, row, col)
        converged = bool(np.isfinite(merr) and merr <= tol)
        if converged:
            status, message = "converged", f"marginal L1 error {merr:.3g} <= tol {tol:.3g}"
        else:
            status = out["status"]
            message = f"{out['message']}; marginal L1 error {merr:.3g} > tol {tol:.3g}"
        if not converged and self.warn:
            warn_not_converged("SinkhornNewtonSparse", message)
        out_dtype = problem.dtype
        return OTResult(
            method=self.method,
            f=f_full.astype(out_dtype),
            g=g_full.astype(out_dtype),
            cost=cost,
            value=cost + eps * plogp,
            converged=converged,
            n_iter=out["n_sinkhorn"] + out["n_newton"],
            marginal_error=merr,
            errors=out["errors"],
            message=message,
            status=status,
            epsilon=eps,
            plan_fn=lambda: dense_plan(geom, f_full, g_full, eps, out_dtype),
            n_sinkhorn=out["n_sinkhorn"],
            n_newton=out["n_newton"],
            cg_iterations=out["cg_iterations"],
            cg_residuals=out["cg_residuals"],
            direct_solves=out["direct_solves"],
            step_sizes=out["step_sizes"],
            nnz_per_row=out["k_row"],
            kept_mass=out["kept_mass"],
            fallbacks=out["fallbacks"],
            newton_times=out["newton_times"],
            sinkhorn_time=out["sinkhorn_time"],
            time=elapsed,
        )

    # ------------------------------------------------------------------------------------
    def _solve(self, C, a, b, eps, x, y, tol, t0) -> dict:
        n, m = C.shape
        SK = get_sinkhorn_kernels(self.compiled)
        K = get_sns_kernels(self.compiled)
        # Below ~1M entries a pass takes about a millisecond and OpenMP barriers (badly hurt
        # when the cores are shared) cost more than the second core gains: one thread.
        nt = self.n_threads or (1 if n * m < (1 << 20) else 0)
        log_a, log_b = safe_log(a), safe_log(b)
        k = math.ceil(self.density * m) if self.density is not None else self.k_row
        k = int(min(max(k, 1), m))
        cg_maxiter = self.cg_maxiter or max(500, n + m)
        # The Sinkhorn kernel measures the row error only (columns exact up to rounding).
        tol_sk = max(tol - 16 * (n + m) * np.finfo(float).eps * float(a.sum()), 0.5 * tol)
        errors: list[float] = []
        rec = dict(n_sinkhorn=0, n_newton=0, cg_iterations=[], cg_residuals=[], step_sizes=[],
                   kept_mass=[], fallbacks=[], newton_times=[], sinkhorn_time=0.0, direct_solves=0)
        sk_budget = [int(self.max_sinkhorn)]

        # Sinkhorn blocks use the lead's stabilized kernel-domain iterations (Gibbs kernel stored
        # once, no exp per iteration) when it fits in memory; they hand back (status 3) when the
        # stored kernel underflows, and a few log-domain sweeps then bring the potentials close.
        use_scaling = hasattr(SK, "sinkhorn_scaling_dense") and C.size * C.itemsize <= 2e9
        workspace: list = [None]

        def record(it: int, errs) -> None:
            # errs[i] is the error of the i-th iterate of the call, measured at the start of its
            # sweep; the final iterate of a call that stops at its budget is measured by the next
            # call (or by the Newton stage), so one entry per iterate overall.
            sk_budget[0] -= it
            rec["n_sinkhorn"] += it
            errors.extend(errs)

        def sinkhorn(iters: int, stop_tol: float, omega: float = 1.0) -> tuple[float, int]:
            """Run up to ``iters`` Sinkhorn iterations in place; (error, kernel status).

            ``omega = 1`` is plain Sinkhorn (the warm-up, as in the paper); ``omega <= 0`` lets
            the kernel over-relax adaptively (used where Sinkhorn only has to make progress).
            """
            left = min(iters, sk_budget[0])
            err_last, st = float("inf"), 1
            for attempt in range(3):
                if left <= 0:
                    break
                # the kernel-domain pass pays off only over several iterations (one exp pass
                # fills the stored kernel)
                if use_scaling and left >= 8 and attempt < 2:
                    if workspace[0] is None:
                        workspace[0] = np.empty_like(C)
                    it, st, errs = SK.sinkhorn_scaling_dense(C, log_a, log_b, x, y, eps, left,
                                                             stop_tol, nt, workspace[0], 50.0, omega)
                    record(it, errs)
                    left -= it
                    err_last = float(errs[-1]) if len(errs) else err_last  # last measured
                    if st != 3:
                        return err_last, st
                    n_log = min(10, left)  # underflow: a few log-domain sweeps, then retry
                else:
                    n_log = left
                it, st, errs = SK.sinkhorn_dense(C, log_a, log_b, x, y, eps, n_log, stop_tol, nt, omega)
                record(it, errs)
                left -= it
                err_last = float(errs[-1]) if len(errs) else err_last
                if st != 1:
                    return err_last, st
            return err_last, st

        def finish(status: str, message: str, xb, yb) -> dict:
            rec.update(x=xb, y=yb, status=status, message=message, errors=errors, k_row=k)
            return rec

        # ---- stage 1: Sinkhorn warm-up ------------------------------------------------------
        stop1 = max(tol_sk, self.switch_tol or 0.0)
        err, st = sinkhorn(self.n_sinkhorn, stop1)
        if st == 2:
            return finish("diverged", "Sinkhorn stage produced non-finite potentials", x, y)
        if err > tol and self.auto_switch and self.n_sinkhorn >= 6 and err > stop1:
            # Predict the remaining Sinkhorn iterations from the measured linear rate (last 5
            # steps). If plain Sinkhorn would finish within 3 * n_sinkhorn more iterations (dense
            # plans, large eps), a Newton stage cannot pay off: finish with (over-relaxed)
            # Sinkhorn. The plain rate is used on purpose: early rates are optimistic, and an
            # over-relaxation estimate from them sent near-permutation problems (which need
            # Newton) into long Sinkhorn runs.
            e = errors[-6:]
            if len(e) == 6 and e[0] > 0 and e[-1] > 0:
                kappa = (e[-1] / e[0]) ** 0.2
                if kappa < 1.0:
                    need = math.log(tol / e[-1]) / math.log(kappa)
                    if need <= 3 * self.n_sinkhorn:
                        err, st = sinkhorn(int(math.ceil(1.5 * need)) + 5, tol_sk, -1.0)
        rec["sinkhorn_time"] = time.perf_counter() - t0
        if err <= tol_sk:
            return finish("converged", "converged in the Sinkhorn stage", x, y)

        # ---- stage 2: Newton with a sparsified Hessian --------------------------------------
        sys_cur, sys_try = _System(n, m, k), _System(n, m, k)
        zero_n, zero_m = np.zeros(n), np.zeros(m)
        if not sys_cur.form(K, C, x, y, zero_n, zero_m, 0.0, eps, nt):
            # Only reachable from a warm start without warm-up: Sinkhorn's x-update ignores x.
            err_sk, st = sinkhorn(max(self.n_sinkhorn, 10), tol_sk, -1.0)
            rec["fallbacks"].append(f"the plan overflows at the starting point; ran Sinkhorn "
                                    f"iterations (error {err_sk:.3g})")
            if st == 2 or not sys_cur.form(K, C, x, y, zero_n, zero_m, 0.0, eps, nt):
                return finish("diverged", "the plan overflows at the Sinkhorn iterate", x, y)
        kept0 = sys_cur.kept / sys_cur.mass if sys_cur.mass > 0 else 1.0
        if self.auto_switch and kept0 < _DENSE_KEPT:
            # The kept block misses most of the plan's mass: a sparse Newton model is poor here
            # (diffuse plans, e.g. W2 on images at moderate eps), while over-relaxed Sinkhorn
            # converges fast. Give Sinkhorn a block first; Newton continues from its iterate.
            n_block = max(10 * self.n_sinkhorn, 100)
            err_sk, st = sinkhorn(n_block, tol_sk, -1.0)
            rec["fallbacks"].append(
                f"dense plan (top-{k} entries per row hold {kept0:.2f} of the mass): ran "
                f"over-relaxed Sinkhorn iterations first (error {err_sk:.3g})")
            if st == 2 or not sys_cur.form(K, C, x, y, zero_n, zero_m, 0.0, eps, nt):
                return finish("diverged", "Sinkhorn block produced non-finite potentials", x, y)
        state = NewtonState(n, m, x, y)
        dz = np.zeros(n + m)
        status, message = "max_iter", f"reached max_iter={self.max_iter} Newton steps"
        while True:
            grad = np.concatenate([a - sys_cur.row, b - sys_cur.col])
            err = float(np.abs(grad).sum())
            rec["newton_times"].append(time.perf_counter() - t0)
            errors.append(err)
            state.observe(err, rec["n_newton"], x, y)
            if err <= tol:
                status, message = "converged", "converged in the Newton stage"
                break
            if rec["n_newton"] >= self.max_iter:
                break
            # Slow linear convergence with a lot of mass dropped: the plan is not sparse enough
            # for k_row (large eps); a denser Hessian restores the Newton rate.
            denser = state.denser_k(err, k, m, rec["kept_mass"], self.adaptive_k)
            if denser is not None:
                k = denser[0]
                rec["fallbacks"].append(f"Newton step {rec['n_newton']}: {denser[1]}")
                sys_cur, sys_try = _System(n, m, k), _System(n, m, k)
                sys_cur.form(K, C, x, y, zero_n, zero_m, 0.0, eps, nt)
            fail, stagnated = None, False
            if state.stagnated:
                fail, stagnated = f"no new smallest marginal error in {_PATIENCE} Newton steps", True
            else:
                rec["kept_mass"].append(sys_cur.kept / sys_cur.mass if sys_cur.mass > 0 else 0.0)
                rtol = state.cg_rtol(self.cg_rtol, err)

                def direct():
                    return direct_newton_solve(sys_cur.row, sys_cur.col, sys_cur.kidx, sys_cur.kval, eps * grad)

                z_direct = direct() if state.solve_directly_first(rec["direct_solves"]) else None
                if z_direct is None:
                    its, res = K.sns_pcg(*sys_cur.arrays(), eps * grad, dz, rtol, cg_maxiter, nt)
                    rec["cg_iterations"].append(int(its))
                    rec["cg_residuals"].append(float(res))
                    if state.solve_directly_after(res, rtol):
                        z_direct = direct()
                if z_direct is not None:
                    dz[:] = z_direct
                    rec["direct_solves"] += 1
                shift = (dz[:n].sum() - dz[n:].sum()) / (n + m)  # gauge (1, -1) projected out
                dz[:n] -= shift
                dz[n:] += shift
                dx, dy = dz[:n], dz[n:]
                slope = float(grad @ dz)
                if not (np.all(np.isfinite(dz)) and slope > 0):
                    fail = "CG gave no ascent direction"
                else:
                    alpha = self._line_search(K, C, a, b, eps, x, y, dx, dy, slope, err,
                                              sys_cur, sys_try, nt)
                    if alpha is None:
                        fail = "line search found no acceptable step"
                    else:
                        x += alpha * dx
                        y += alpha * dy
                        sys_cur, sys_try = sys_try, sys_cur
                        rec["step_sizes"].append(alpha)
                        rec["n_newton"] += 1
                        if alpha < 1.0:
                            dz *= alpha  # warm start of the next solve
                        continue
            # ---- fallback: a Sinkhorn block from the current iterate (F only increases along
            # accepted steps and Sinkhorn steps, so no progress is thrown away); a Hessian model
            # that gave no acceptable step is made denser.
            rec["n_newton"] += 1
            k_new = min(2 * k, m) if stagnated is False else k
            if sk_budget[0] <= 0:
                status, message = "fallback_exhausted", f"{fail}; Sinkhorn budget exhausted"
                break
            x_keep, y_keep = x.copy(), y.copy()
            err_sk, st = sinkhorn(max(self.n_sinkhorn, 10), tol_sk, -1.0)
            rec["fallbacks"].append(
                f"Newton step {rec['n_newton']}: {fail}; ran Sinkhorn iterations (error "
                f"{err_sk:.3g})" + (f", k_row {k} -> {k_new}" if k_new != k else ""))
            if st == 2:
                x[:], y[:] = x_keep, y_keep
            if k_new != k:
                k = k_new
                sys_cur, sys_try = _System(n, m, k), _System(n, m, k)
            dz = np.zeros(n + m)
            state.restart()
            if not sys_cur.form(K, C, x, y, zero_n, zero_m, 0.0, eps, nt):
                x[:], y[:] = state.best[1], state.best[2]
                sys_cur.form(K, C, x, y, zero_n, zero_m, 0.0, eps, nt)
        err_b, xb, yb = state.best
        return finish(status, message, xb, yb)

    def _line_search(self, K, C, a, b, eps, x, y, dx, dy, slope, err, sys_cur, sys_try, nt):
        """Armijo backtracking on F; fills ``sys_try`` at the accepted step, or returns None.

        A trial whose plan overflows is rejected. Near the optimum F changes at rounding level
        (spec §4.3), so a step whose F is within rounding of F(z) is accepted when it lowers the
        marginal error.
        """
        ax, by = float(a @ x), float(b @ y)
        adx, bdy = float(a @ dx), float(b @ dy)
        F0 = -eps * sys_cur.mass + ax + by
        noise = 64 * np.finfo(float).eps * (abs(ax) + abs(by) + eps * sys_cur.mass + abs(F0))
        alpha = 1.0
        while alpha >= _ALPHA_MIN:
            if sys_try.form(K, C, x, y, dx, dy, alpha, eps, nt):
                F = -eps * sys_try.mass + ax + by + alpha * (adx + bdy)
                if F >= F0 + _ARMIJO_C * alpha * slope:
                    return alpha
                if F >= F0 - noise:
                    e = float(np.abs(a - sys_try.row).sum() + np.abs(b - sys_try.col).sum())
                    if e < err:
                        return alpha
            alpha *= 0.5
        return None
