"""Sinkhorn-Newton-Sparse (SNS): Sinkhorn warm-up, then Newton steps with a sparsified Hessian.

Tang, Shavlovsky, Rahmanian, Tardini, Thekumparampil, Xiao, Ying, "Accelerating Sinkhorn
Algorithm with Sparse Newton Iterations", ICLR 2024 (arXiv 2401.12253). The robustness rules
(exact diagonal, symmetric per-row sparsification, overflow-rejecting line search, automatic
switch and fallbacks) follow the project spec ``specs/sinkhorn_sns.md``.

This module is the one SNS driver (warm-up, switch rule, Newton steps, line search, adaptive
``k_row``, patience, forcing term, direct-solve rule, fail-fast rule, best iterate, result) for
every device; what differs by device is a kernel set of :mod:`otsolve.backends.sns_kernels`
(C++ or NumPy on the CPU, CUDA through CuPy on the GPU). The Sinkhorn blocks go through
:class:`otsolve.Sinkhorn`'s public interface.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import InsufficientMemoryError, check_n_threads
from ..backends.sns_kernels import (
    DIRECT_MAX,
    CudaSNSKernels,
    HostSNSKernels,
    direct_newton_solve,
    get_sns_kernels,
)
from ..problems import LinearProblem
from ._common import default_tol, initial_potentials, is_cupy_problem, require_balanced, warn_not_converged
from .result import OTResult

__all__ = ["SinkhornNewtonSparse", "get_sns_kernels", "direct_newton_solve", "NewtonState"]

# Armijo sufficient-increase constant and the smallest step tried before giving up.
_ARMIJO_C = 1e-4
_ALPHA_MIN = 2.0**-30
# Largest change of a potential, in units of eps, tried first by the line search.
_MAX_SHIFT = 100.0
# Newton steps without a new smallest marginal error before a Sinkhorn block is run (the
# error of Newton iterates on F is not monotone, so one bad step is no evidence).
_PATIENCE = 5
# Kept-mass fraction below which the plan counts as dense for the automatic switch.
_DENSE_KEPT = 0.9
# Inexact-Newton forcing term: CG relative residual min(_FORCING_MAX, err**_FORCING_POW).
_FORCING_MAX = 1e-1
_FORCING_POW = 0.5
# Bytes the Sinkhorn blocks may spend on a stored Gibbs kernel (Sinkhorn's own default).
_KERNEL_MEMORY = 4e9


class NewtonState:
    """Bookkeeping and decisions of the Newton stage.

    Tracks the best iterate (smallest marginal error), the steps since it (patience), the recent
    errors (slow linear rate -> denser Hessian), whether CG has stalled on this problem (then the
    systems are solved directly) and the fallbacks in a row (fail fast).
    """

    def __init__(self, n: int, m: int, x, y, err: float = np.inf) -> None:
        self.best = (err, x.copy(), y.copy())
        self.bad_steps = 0
        self.step_errs: list[float] = []
        self.small = n + m <= DIRECT_MAX
        self.failures = 0
        self._fail_ref = np.inf  # smallest error at the previous fallback

    def observe(self, err: float, n_newton: int, x, y, after_newton_step: bool = False) -> None:
        """Record the error of the current iterate (x, y)."""
        if err < self.best[0]:
            self.best, self.bad_steps = (err, x.copy(), y.copy()), 0
            if after_newton_step:
                self.failures = 0
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

    def fallback(self) -> int:
        """Count a fallback (failed Newton step or stagnation); returns the fallbacks in a row
        without progress: the count restarts when a Newton step reached a new smallest error
        (:meth:`observe`) or the smallest error halved since the previous fallback (the
        Sinkhorn blocks in between are making real progress)."""
        if self.best[0] <= 0.5 * self._fail_ref:
            self.failures = 0
        self._fail_ref = self.best[0]
        self.failures += 1
        return self.failures

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


def _check_int(value: Any, name: str, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")


def _check_pos(value: Any, name: str, upper: float | None = None) -> None:
    ok = isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)
    if not ok or not np.isfinite(value) or value <= 0 or (upper is not None and value > upper):
        bound = f" and <= {upper}" if upper is not None else ""
        raise ValueError(f"{name} must be a positive number{bound}, got {value!r}")


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB ({int(nbytes):,} bytes)"


def _host(v):
    return v.get() if hasattr(v, "get") else v


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
    max_fallbacks : int, default 10
        Fail fast: give up (status ``"newton_failed"``) after this many fallbacks in a row
        without progress (see Notes).
    max_memory : float, optional
        Bytes the solve may allocate (the dense cost of the Newton stage when it is not already
        a dense matrix, the Newton systems, the direct-solve matrices; the Sinkhorn blocks' stored
        kernel is only used within what is left). Default: the memory available now (Linux
        ``MemAvailable``; on the GPU the device's free memory). A solve that cannot fit raises
        :class:`ValueError` (``otsolve.InsufficientMemoryError``) naming the bytes needed and the
        limit, before anything large is allocated.
    n_threads : int, default 0
        OpenMP threads of the compiled kernels (0 = all; capped at the machine's cores).
    compiled : bool, default True
        Use the compiled kernels (False: the NumPy references, for checks; CuPy problems are then
        solved on the host and handed back as CuPy arrays).
    warn : bool, default True
        Emit a RuntimeWarning when the solve does not converge.

    Notes
    -----
    One driver runs on every device: the CPU kernels (C++/OpenMP, or the NumPy reference) and
    the CUDA kernels through CuPy (CuPy problems; point clouds keep their on-the-fly cost there,
    ``k_row <= 32``) are kernel sets of :mod:`otsolve.backends.sns_kernels`. The Sinkhorn blocks
    are :class:`~otsolve.Sinkhorn` solves warm-started from the current iterate.

    Potentials are defined up to ``(f + t, g - t)``. Rows or columns with zero weight are removed
    before solving (their potentials are ``-inf``). On the CPU the plan is dense during the solve
    (O(nm) memory and time per Newton step); point clouds are materialised, within
    ``max_memory``.

    When a Newton step fails (no acceptable step or no ascent direction: then ``k_row`` is
    doubled too) or no new smallest error comes in 5 Newton steps, the solver runs a block of
    over-relaxed Sinkhorn iterations from the current iterate; each event is listed in
    ``result.fallbacks``. After ``max_fallbacks`` such fallbacks in a row, with no Newton step
    reaching a new smallest error and the smallest error not halving in between, SNS gives up (status ``"newton_failed"``, ``converged=False``, a
    RuntimeWarning): ε is too small for Newton steps from this start (the plan's entries span
    more than the floating-point range, line searches and direct solves fail); the message
    gives ε relative to the cost range and suggests :class:`~otsolve.Sinkhorn` with
    ``epsilon_scaling=True`` or a larger ε. The returned iterate is the best one met (smallest
    marginal error), never worse than the Sinkhorn stage. ``converged`` is True only when the
    marginal L1 error of the returned plan, recomputed from scratch, is finite and ``<= tol``.

    Extra result fields: ``n_sinkhorn``, ``n_newton``, ``cg_iterations`` (per Newton step),
    ``cg_residuals``, ``direct_solves``, ``step_sizes``, ``nnz_per_row`` (final ``k_row``),
    ``kept_mass`` (fraction of the plan's mass kept in the sparsified block, per step),
    ``fallbacks``, ``newton_times`` (seconds since the start at each Newton error measurement),
    ``sinkhorn_time``, ``time``, ``tol``, ``backend`` ("numpy" or "cupy").

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
    max_fallbacks: int = 10
    max_memory: float | None = None
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
        _check_int(self.max_fallbacks, "max_fallbacks", 1)
        if self.max_memory is not None:
            _check_pos(self.max_memory, "max_memory")
        object.__setattr__(self, "n_threads", check_n_threads(self.n_threads))

    # ------------------------------------------------------------------------------------
    def __call__(self, problem: LinearProblem, init: Any = None) -> OTResult:
        if not isinstance(problem, LinearProblem):
            raise ValueError(f"expected a LinearProblem, got {type(problem).__name__}")
        require_balanced(problem, "SNS")
        eps = problem.require_epsilon()
        on_gpu = is_cupy_problem(problem)
        if on_gpu and not self.compiled:
            # the NumPy reference runs on the host: solve there, hand the arrays back on the device
            import cupy  # noqa: PLC0415

            host_init = None
            if init is not None:
                f0, g0 = (init.f, init.g) if hasattr(init, "f") and hasattr(init, "g") else init
                host_init = (_host(f0), _host(g0))
            return self(problem.to_namespace(np), host_init).to_namespace(cupy)
        geom = problem.geom
        n_full, m_full = geom.shape
        tol = default_tol(problem.dtype) if self.tol is None else float(self.tol)
        if on_gpu:
            K = CudaSNSKernels(problem, eps)
        else:
            a_h = np.asarray(problem.a)
            b_h = np.asarray(problem.b)
            K = HostSNSKernels(problem, np.flatnonzero(a_h > 0), np.flatnonzero(b_h > 0), eps,
                               compiled=self.compiled, n_threads=self.n_threads)
        f0, g0 = initial_potentials(init, n_full, m_full, xp=K.xp, dtype=K.dtype)
        k = math.ceil(self.density * K.m) if self.density is not None else self.k_row
        k = int(min(max(k, 1), K.k_max))
        self._check_memory(K, k)
        x, y = K.new_potentials(f0, g0)

        t0 = time.perf_counter()
        out = self._solve(K, eps, x, y, tol, k, t0)
        elapsed = time.perf_counter() - t0

        # exact statistics of the returned plan, from scratch (zero-weight rows/columns carry
        # no mass: the support's statistics are the full problem's)
        xb, yb = out["x"], out["y"]
        if out["stats"] is not None:  # measured from scratch by the Sinkhorn solve that made (xb, yb)
            merr, cost, value = out["stats"]
        else:
            row, col, cost = K.measure(xb, yb)
            a_s, b_s = _host(K.a), _host(K.b)
            merr = float(np.abs(row - a_s).sum() + np.abs(col - b_s).sum())
            xh, yh = _host(xb).astype(np.float64), _host(yb).astype(np.float64)
            with np.errstate(invalid="ignore", over="ignore"):
                plogp = (float(xh @ row) + float(yh @ col) - cost) / eps - float(row.sum())
            value = cost + eps * plogp
        converged = bool(np.isfinite(merr) and merr <= tol)
        if converged:
            status, message = "converged", f"marginal L1 error {merr:.3g} <= tol {tol:.3g}"
        else:
            status = out["status"] if out["status"] != "converged" else "max_iter"
            message = f"{out['message']}; marginal L1 error {merr:.3g} > tol {tol:.3g}"
        if not converged and self.warn:
            warn_not_converged("SinkhornNewtonSparse", message)
        out_dtype = problem.dtype
        f_full, g_full = K.full_potentials(xb, yb)

        def plan():
            return geom.plan_from_potentials(f_full, g_full, eps, out_dtype)

        return OTResult(
            method=self.method,
            f=f_full.astype(out_dtype),
            g=g_full.astype(out_dtype),
            cost=float(cost),
            value=float(value),
            converged=converged,
            n_iter=out["n_sinkhorn"] + out["n_newton"],
            marginal_error=merr,
            errors=out["errors"],
            message=message,
            status=status,
            epsilon=eps,
            plan_fn=plan,
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
            tol=tol,
            backend="cupy" if on_gpu else "numpy",
        )

    # ------------------------------------------------------------------------------------
    def _check_memory(self, K, k: int) -> None:
        """Refuse a solve whose allocations cannot fit, before allocating; hand the Sinkhorn
        blocks what is left for a stored kernel."""
        need, avail, where = K.memory(k)
        limit, source = (self.max_memory, "max_memory") if self.max_memory is not None else (
            avail, f"the available {where}")
        if limit is not None and need > limit:
            raise InsufficientMemoryError(
                f"SinkhornNewtonSparse on this {K.n}x{K.m} problem needs about {_gib(need)} "
                f"(the Newton stage holds the dense cost and the sparsified systems) but "
                f"{source} is {_gib(limit)}; use otsolve.Sinkhorn (point clouds: cost computed on "
                f"the fly, O((n + m) d) memory) or a smaller problem, or raise max_memory")
        left = _KERNEL_MEMORY if limit is None else max(0.0, min(_KERNEL_MEMORY, float(limit) - need))
        K.setup(left)

    def _hopeless_message(self, K, eps: float, fail: str, failures: int) -> str:
        try:
            rng = float(K.geom.cost_range())
            rel = f"epsilon = {eps:.3g} is {eps / rng:.2g} x the cost range {rng:.3g}"
        except Exception:  # noqa: BLE001 - a geometry without a cheap range: say less
            rel = f"epsilon = {eps:.3g}"
        return (f"Newton steps fail at this epsilon ({failures} fallbacks in a row without "
                f"progress; last: {fail}): {rel}, too small for Newton steps from this start. Use "
                f"otsolve.Sinkhorn(epsilon_scaling=True) or a larger epsilon (or raise "
                f"max_fallbacks to keep trying)")

    def _solve(self, K, eps: float, x, y, tol: float, k: int, t0: float) -> dict:
        from .sinkhorn import Sinkhorn  # noqa: PLC0415  (public interface only)

        xp = K.xp
        n, m = K.n, K.m
        a, b = K.a, K.b
        cg_maxiter = self.cg_maxiter or max(500, n + m)
        errors: list[float] = []
        rec = dict(n_sinkhorn=0, n_newton=0, cg_iterations=[], cg_residuals=[], step_sizes=[],
                   kept_mass=[], fallbacks=[], newton_times=[], sinkhorn_time=0.0, direct_solves=0)
        sk_budget = [int(self.max_sinkhorn)]
        sk_threads = self.n_threads or (1 if n * m < (1 << 20) else 0)

        def sinkhorn(iters: int, stop_tol: float, omega: float | None = 1.0) -> tuple[float, int, list]:
            """Up to ``iters`` Sinkhorn iterations from (x, y), in place, by otsolve.Sinkhorn;
            (exact error of the new iterate, status 0 converged / 1 budget / 2 diverged, the
            errors of the iterates). ``omega = 1`` is plain Sinkhorn (the warm-up, as in the
            paper), None adaptive over-relaxation (where Sinkhorn only has to make progress)."""
            left = min(iters, sk_budget[0])
            if left <= 0:
                return float("inf"), 1, []
            solver = Sinkhorn(tol=stop_tol, max_iter=left, omega=omega, kernel_memory=K.kernel_memory,
                              n_threads=sk_threads, compiled=self.compiled, warn=False)
            res = solver(K.sinkhorn_problem, init=K.to_sinkhorn(x, y))
            sk_budget[0] -= res.n_iter
            rec["n_sinkhorn"] += res.n_iter
            errs = [float(e) for e in res.errors]
            errors.extend(errs)
            if res.status == "diverged" or not np.isfinite(res.marginal_error):
                return float("inf"), 2, errs
            K.from_sinkhorn(res.f, res.g, x, y)
            # Sinkhorn measured its plan from scratch; when (x, y) hold exactly its potentials
            # (float64) that measurement is the result's, no further pass needed
            last_stats[0] = ((float(res.marginal_error), float(res.cost), float(res.value))
                             if np.dtype(res.f.dtype) == np.float64 else None)
            return float(res.marginal_error), (0 if res.converged else 1), errs

        last_stats: list = [None]

        def finish(status: str, message: str, xb, yb, stats=None) -> dict:
            rec.update(x=xb, y=yb, status=status, message=message, errors=errors, k_row=k,
                       stats=stats)
            return rec

        # ---- stage 1: Sinkhorn warm-up ------------------------------------------------------
        stop1 = max(tol, self.switch_tol or 0.0)
        err, st, errs = sinkhorn(self.n_sinkhorn, stop1)
        if st == 2:
            return finish("diverged", "Sinkhorn stage produced non-finite potentials", x, y)
        if err > tol and self.auto_switch and self.n_sinkhorn >= 6 and err > stop1:
            # Predict the remaining Sinkhorn iterations from the measured linear rate (last 5
            # steps). If plain Sinkhorn would finish within 3 * n_sinkhorn more iterations (dense
            # plans, large eps), a Newton stage cannot pay off: finish with (over-relaxed)
            # Sinkhorn. The plain rate is used on purpose: early rates are optimistic, and an
            # over-relaxation estimate from them sent near-permutation problems (which need
            # Newton) into long Sinkhorn runs.
            e = (errs + [err])[-6:]
            if len(e) == 6 and e[0] > 0 and e[-1] > 0:
                kappa = (e[-1] / e[0]) ** 0.2
                if kappa < 1.0:
                    need = math.log(tol / e[-1]) / math.log(kappa)
                    if need <= 3 * self.n_sinkhorn:
                        err2, st2, _ = sinkhorn(int(math.ceil(1.5 * need)) + 5, tol, None)
                        if st2 != 2:
                            err = err2
        rec["sinkhorn_time"] = time.perf_counter() - t0
        if err <= tol:
            return finish("converged", "converged in the Sinkhorn stage", x, y, last_stats[0])

        # ---- stage 2: Newton with a sparsified Hessian --------------------------------------
        S_cur, S_try = K.new_system(k), K.new_system(k)
        zero_n, zero_m = xp.zeros(n), xp.zeros(m)
        if not K.form(S_cur, x, y, zero_n, zero_m, 0.0):
            # Only reachable from a warm start without warm-up: Sinkhorn's x-update ignores x.
            err_sk, st, _ = sinkhorn(max(self.n_sinkhorn, 10), tol, None)
            rec["fallbacks"].append(f"the plan overflows at the starting point; ran Sinkhorn "
                                    f"iterations (error {err_sk:.3g})")
            if st == 2 or not K.form(S_cur, x, y, zero_n, zero_m, 0.0):
                return finish("diverged", "the plan overflows at the Sinkhorn iterate", x, y)
        K.sparsify(S_cur)
        kept0 = S_cur.kept / S_cur.mass if S_cur.mass > 0 else 1.0
        if self.auto_switch and kept0 < _DENSE_KEPT:
            # The kept block misses most of the plan's mass: a sparse Newton model is poor here
            # (diffuse plans, e.g. W2 on images at moderate eps), while over-relaxed Sinkhorn
            # converges fast. Give Sinkhorn a block first; Newton continues from its iterate.
            err_sk, st, _ = sinkhorn(max(10 * self.n_sinkhorn, 100), tol, None)
            rec["fallbacks"].append(
                f"dense plan (top-{k} entries per row hold {kept0:.2f} of the mass): ran "
                f"over-relaxed Sinkhorn iterations first (error {err_sk:.3g})")
            if st != 2 and err_sk <= tol:
                return finish("converged", "converged in the Sinkhorn stage", x, y, last_stats[0])
            if st == 2 or not K.form(S_cur, x, y, zero_n, zero_m, 0.0):
                return finish("diverged", "Sinkhorn block produced non-finite potentials", x, y)
        state = NewtonState(n, m, x, y)
        dz = xp.zeros(n + m)
        status, message = "max_iter", f"reached max_iter={self.max_iter} Newton steps"
        accepted = False
        while True:
            grad = xp.concatenate([a - S_cur.row, b - S_cur.col])
            err = float(xp.abs(grad).sum())
            rec["newton_times"].append(time.perf_counter() - t0)
            errors.append(err)
            state.observe(err, rec["n_newton"], x, y, after_newton_step=accepted)
            accepted = False
            if err <= tol:
                status, message = "converged", "converged in the Newton stage"
                break
            if rec["n_newton"] >= self.max_iter:
                break
            # Slow linear convergence with a lot of mass dropped: the plan is not sparse enough
            # for k_row (large eps); a denser Hessian restores the Newton rate.
            denser = state.denser_k(err, k, K.k_max, rec["kept_mass"], self.adaptive_k)
            if denser is not None:
                k = denser[0]
                rec["fallbacks"].append(f"Newton step {rec['n_newton']}: {denser[1]}")
                S_cur, S_try = K.new_system(k), K.new_system(k)
                K.form(S_cur, x, y, zero_n, zero_m, 0.0)
            fail, stagnated = None, False
            if not np.isfinite(err):
                fail = "non-finite marginal error"
            elif state.stagnated:
                fail, stagnated = f"no new smallest marginal error in {_PATIENCE} Newton steps", True
            else:
                K.sparsify(S_cur)
                rec["kept_mass"].append(S_cur.kept / S_cur.mass if S_cur.mass > 0 else 0.0)
                rtol = state.cg_rtol(self.cg_rtol, err)
                rhs = eps * grad
                z_direct = K.direct(S_cur, rhs) if state.solve_directly_first(rec["direct_solves"]) else None
                if z_direct is None:
                    its, res = K.pcg(S_cur, rhs, dz, rtol, cg_maxiter)
                    rec["cg_iterations"].append(its)
                    rec["cg_residuals"].append(res)
                    if state.solve_directly_after(res, rtol):
                        z_direct = K.direct(S_cur, rhs)
                if z_direct is not None:
                    dz[...] = z_direct
                    rec["direct_solves"] += 1
                shift = (dz[:n].sum() - dz[n:].sum()) / (n + m)  # gauge (1, -1) projected out
                dz[:n] -= shift
                dz[n:] += shift
                dx, dy = dz[:n], dz[n:]
                slope = float(grad @ dz)
                if not (np.isfinite(slope) and slope > 0):
                    fail = "CG gave no ascent direction"
                else:
                    alpha = self._line_search(K, eps, x, y, dx, dy, slope, err, S_cur, S_try)
                    if alpha is None:
                        fail = "line search found no acceptable step"
                    else:
                        x += alpha * dx
                        y += alpha * dy
                        S_cur, S_try = S_try, S_cur
                        rec["step_sizes"].append(alpha)
                        rec["n_newton"] += 1
                        accepted = True
                        if alpha < 1.0:
                            dz *= alpha  # warm start of the next solve
                        continue
            # ---- fallback: a Sinkhorn block from the current iterate (F only increases along
            # accepted steps and Sinkhorn steps, so no progress is thrown away); a Hessian model
            # that gave no acceptable step is made denser. Fallbacks in a row without a Newton
            # step reaching a new smallest error: epsilon is hopeless for Newton, give up.
            rec["n_newton"] += 1
            if state.fallback() >= self.max_fallbacks:
                status, message = "newton_failed", self._hopeless_message(K, eps, fail, state.failures)
                break
            k_new = min(2 * k, K.k_max) if not stagnated else k
            if sk_budget[0] <= 0:
                status, message = "fallback_exhausted", f"{fail}; Sinkhorn budget exhausted"
                break
            x_keep, y_keep = x.copy(), y.copy()
            err_sk, st, _ = sinkhorn(max(self.n_sinkhorn, 10), tol, None)
            rec["fallbacks"].append(
                f"Newton step {rec['n_newton']}: {fail}; ran Sinkhorn iterations (error "
                f"{err_sk:.3g})" + (f", k_row {k} -> {k_new}" if k_new != k else ""))
            if st == 2:
                x[...], y[...] = x_keep, y_keep
            if k_new != k:
                k = k_new
                S_cur, S_try = K.new_system(k), K.new_system(k)
            dz = xp.zeros(n + m)
            state.restart()
            if not K.form(S_cur, x, y, zero_n, zero_m, 0.0):
                x[...], y[...] = state.best[1], state.best[2]
                K.form(S_cur, x, y, zero_n, zero_m, 0.0)
        _, xb, yb = state.best
        return finish(status, message, xb, yb)

    def _line_search(self, K, eps, x, y, dx, dy, slope, err, S_cur, S_try):
        """Armijo backtracking on F; fills ``S_try`` at the accepted step, or returns None.

        A trial whose plan overflows is rejected. Near the optimum F changes at rounding level
        (spec §4.3), so a step whose F is within rounding of F(z) is accepted when it lowers the
        marginal error.
        """
        xp = K.xp
        a, b = K.a, K.b
        ax, by = float(a @ x), float(b @ y)
        adx, bdy = float(a @ dx), float(b @ dy)
        F0 = -eps * S_cur.mass + ax + by
        noise = 64 * np.finfo(float).eps * (abs(ax) + abs(by) + eps * S_cur.mass + abs(F0))
        # First trial: a full step, or one that changes no exponent (x_i + y_j)/eps by more than
        # 2 * _MAX_SHIFT. When the plan splits into nearly disconnected blocks the sparsified
        # Hessian is nearly singular along their relative shift and |dz| reaches 1e15 eps: a
        # step of a few dozen eps along it is what moves mass between the blocks, far below
        # what halving from 1 reaches.
        big = float(max(xp.abs(dx).max(), xp.abs(dy).max())) / eps
        alpha = 1.0 if not big > _MAX_SHIFT else _MAX_SHIFT / big
        alpha_min = alpha * _ALPHA_MIN
        while alpha >= alpha_min:
            if K.form(S_try, x, y, dx, dy, alpha):
                F = -eps * S_try.mass + ax + by + alpha * (adx + bdy)
                if F >= F0 + _ARMIJO_C * alpha * slope:
                    return alpha
                if F >= F0 - noise:
                    e = float(xp.abs(a - S_try.row).sum() + xp.abs(b - S_try.col).sum())
                    if e < err:
                        return alpha
            alpha *= 0.5
        return None
