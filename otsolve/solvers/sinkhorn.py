"""Log-domain Sinkhorn with ε-scaling, warm starts and over-relaxation: one driver for every
device and for batches.

:func:`run_sinkhorn` is the algorithm (ε-schedule, stopping, the kernel-underflow fallback, the
settling pass, the outcome); what differs by device is a kernel set
(:mod:`otsolve.backends.kernel_sets`): the C++ kernels or their NumPy reference on the CPU, the
CUDA passes through CuPy on the GPU. A :class:`~otsolve.BatchedLinearProblem` is the B > 1 case
of the same driver, each problem stopping at its own tolerance. Unbalanced problems (KL-relaxed
marginals, ``rho_a`` / ``rho_b``) run through the same driver: the kernels damp their updates and
measure the error to the marginal targets (:mod:`otsolve.problems.marginals`).
"""
from __future__ import annotations

import numbers
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from .._validation import check_epsilon
from ..backends.kernel_sets import ProblemBatch, make_sinkhorn_kernels
from ..problems import BatchedLinearProblem, LinearProblem
from ._common import default_tol, sinkhorn_outcome, warn_not_converged
from .result import OTResult

__all__ = ["Sinkhorn", "BatchedSinkhorn", "run_sinkhorn", "SinkhornRun", "cost_range", "epsilon_schedule",
           "reachable_tol"]


def cost_range(geom) -> float:
    """A cheap upper bound of max C - min C (the natural starting ε for ε-scaling)."""
    return geom.cost_range()


def epsilon_schedule(target: float, start: float, decay: float) -> list[float]:
    """Geometric schedule start, start*decay, ... down to ``target`` (always ends at target)."""
    eps = [target]
    e = start
    while e > target / decay * (1 + 1e-12) and len(eps) < 200:
        eps.insert(-1, e)
        e *= decay
    return eps


def reachable_tol(dtype, mass: float = 1.0) -> float:
    """Smallest L1 marginal tolerance the arithmetic of ``dtype`` reliably reaches.

    Marginals are sums of plan entries computed in the cost's precision; below ~8 ulps of the
    total mass the measured error is rounding, not distance to the solution (float32: ~1e-6).
    """
    return 8.0 * float(np.finfo(dtype).eps) * mass


@dataclass
class SinkhornRun:
    """Per-problem outcome of :func:`run_sinkhorn` (arrays of length B)."""

    f: Any
    g: Any
    n_iter: np.ndarray
    status: np.ndarray          # kernel status: 0 converged, 1 budget, 2 diverged
    errors: list                # per problem, the measured L1 error history
    marginal_error: np.ndarray  # exact, of the returned potentials
    cost: np.ndarray
    plogp: np.ndarray
    converged: np.ndarray
    status_names: np.ndarray
    messages: list
    schedule: list
    tol: float                  # requested (or raised to reachable_tol)
    tol_each: np.ndarray        # per problem: tol, or the rounding floor of the returned potentials
    fallbacks: int
    time: float
    mass: Any = None            # Σ P of each returned plan (dual value: <a,f> + <b,g> - ε mass)
    values: Any = None          # objective of each returned plan (primal_value)


def run_sinkhorn(solver: "Sinkhorn", kernels, batch: ProblemBatch, eps: float, init: Any = None) -> SinkhornRun:
    """The Sinkhorn algorithm, written once: ε-schedule, per-problem stopping on the exact L1
    marginal error, the fallback to log-domain sweeps when a stored kernel underflows, a short
    settling pass for problems whose exact error lands just above tol, and the outcome."""
    B, n, m = batch.B, batch.n, batch.m
    mass = float(np.max(np.asarray(kernels_mass(batch))))
    tol = default_tol(batch.dtype) if solver.tol is None else float(solver.tol)
    floor = reachable_tol(batch.dtype, mass)
    if tol < floor:
        warnings.warn(f"Sinkhorn: tol={tol:.3g} is below what {np.dtype(batch.dtype).name} arithmetic can reach "
                      f"(~{floor:.2g} for total mass {mass:.3g}); using tol={floor:.2g}. Solve in float64 for a "
                      f"tighter tolerance.", RuntimeWarning, stacklevel=3)
        tol = floor
    max_iter = int(solver.max_iter)
    f, g = kernels.new_potentials(init)
    if init is not None:  # -inf marks a zero weight; on a positive weight it is no warm start
        xp = batch.xp
        if bool(xp.any(xp.isneginf(f) & (batch.a > 0)) | xp.any(xp.isneginf(g) & (batch.b > 0))):
            raise ValueError("init potentials are -inf where the weights are positive; -inf is only meaningful "
                             "for zero weights")
    if solver.epsilon_scaling:
        decay = 0.5 if solver.epsilon_scaling is True else float(solver.epsilon_scaling)
        start = solver.epsilon_init or batch.cost_range()
        schedule = epsilon_schedule(eps, max(start, eps), decay)
    else:
        schedule = [eps]
    # The kernels' error is exact up to rounding (in the cost's precision); keep a margin so that
    # the error recomputed from scratch (measure) also honours tol.
    # (float32 problems: the kernels sum in float64 over float32 costs, so their error and the exact
    # one differ by ~1e-7 x mass; 0.8 tol keeps that margin without chasing a stalled tail, where
    # randn clouds at blur 0.05 need ~1500 iterations to 8e-7 and >5000 to 5e-7)
    tol_kernel = max(tol - 16 * (n + m) * np.finfo(batch.dtype).eps * mass, 0.8 * tol)

    n_iter = np.zeros(B, dtype=np.int64)
    status = np.ones(B, dtype=np.int64)
    errors: list[list[float]] = [[] for _ in range(B)]
    fallbacks = 0

    symmetric = bool(getattr(batch, "symmetric", False))

    def run(ids, e, stol, omega, log_sweeps=False, cap=None):
        budgets = max_iter - n_iter[ids]
        if cap is not None:
            budgets = np.minimum(budgets, cap)
        if symmetric:  # one potential, averaged updates; g mirrors f
            its, sts, errs = kernels.iterate_symmetric(ids, f, e, budgets, stol)
            g[ids] = f[ids]
        else:
            its, sts, errs = kernels.iterate(ids, f, g, e, budgets, stol, omega, log_sweeps)
        n_iter[ids] += its
        status[ids] = sts
        for p, er in zip(ids, errs):
            errors[p].extend(er)
        return sts

    def run_stage(ids, e, stol):
        nonlocal fallbacks
        while ids.size:
            sts = run(ids, e, stol, solver.omega)
            under = ids[sts == 3]
            if not under.size:
                break
            # the stored kernel underflowed: a few log-domain sweeps bring the potentials close
            fallbacks += int(under.size)
            sts = run(under, e, stol, 1.0, log_sweeps=True, cap=10)
            ids = under[(sts == 1) & (n_iter[under] < max_iter)]

    t0 = time.perf_counter()
    alive = np.arange(B)
    value_tol = getattr(solver, "value_tol", None)
    tol_tgt = np.full(B, tol)  # the marginal tolerance each problem is held to
    for k, e in enumerate(schedule):
        last = k == len(schedule) - 1
        stol = tol_kernel if last else max(solver.stage_tol, tol)
        ids = alive[n_iter[alive] < max_iter]
        if last and value_tol is not None:
            # Stop on the value: the marginal tolerance shrinks by decades from the stage
            # tolerance; a problem stops once its value moved by <= value_tol over the last decade
            # (value errors shrink faster than the decades, so this change bounds the remaining
            # error in practice; the marginal error is measured and reported as usual).
            tau, prev = max(solver.stage_tol, tol), None
            while ids.size and tau > tol:
                run_stage(ids, e, tau)
                tol_tgt[ids] = tau
                ok = ids[status[ids] == 0]
                vals = np.full(B, np.nan)
                if ok.size:  # the dual value: its error is second order in the marginal error
                    vals[ok] = kernels.dual_values(f, g, e, ok)
                if prev is not None:
                    ok = ok[~(np.abs(vals[ok] - prev[ok]) <= value_tol)]
                prev = vals
                ids = ok[n_iter[ok] < max_iter]
                tau = max(tau / 10.0, tol)
            tol_tgt[ids] = tol
        run_stage(ids, e, stol)
        # a stage that ran out of budget or diverged ends the schedule for that problem
        alive = alive[status[alive] == 0]
    everyone = np.arange(B)
    rounds = f.dtype != batch.dtype  # CPU kernels work in float64; float32 problems return float32

    def measure(ids):
        """(error of the working potentials, then of the returned ones (rounded to the problem's
        dtype), <C, P>, Σ P log P): converged is decided on what is returned."""
        work = kernels.measure(f, g, eps, ids)[0] if rounds else None
        if rounds:
            f[ids] = f[ids].astype(batch.dtype)
            g[ids] = g[ids].astype(batch.dtype)
        m, c, pl = kernels.measure(f, g, eps, ids)
        return (m if work is None else work), m, c, pl

    merr_work, merr, cost, plogp = measure(everyone)
    # The stopping test measures the kernels' own error; the exact error can land just above tol
    # (rounding of float32 columns, GPU checks between blocks). A few more plain iterations at a
    # tighter tol settle those problems, and only those.
    for _ in range(3):
        redo = everyone[(status == 0) & ~(merr_work <= tol_tgt) & (n_iter < max_iter)]
        if not redo.size:
            break
        sts = run(redo, eps, 0.5 * float(tol_tgt[redo].min()), 1.0, cap=10)
        status[redo] = np.where(sts == 2, 2, 0)
        merr_work[redo], merr[redo], cost[redo], plogp[redo] = measure(redo)
    # Potentials rounded to float32 represent the plan only to ~ulp(|f|)/ε: where the working
    # potentials meet tol and the rounded ones cannot, tol is raised to that floor, and said.
    tol_each = tol_tgt.copy()
    floor_hit = np.isfinite(merr) & (merr_work <= tol_each) & (merr > tol_each)
    tol_each[floor_hit] = merr[floor_hit] * (1 + 1e-6)
    if floor_hit.any() and solver.tol is not None and solver.warn:
        warnings.warn(f"Sinkhorn: {np.dtype(batch.dtype).name} potentials represent the plan only to an L1 marginal "
                      f"error of {merr[floor_hit].max():.3g} (rounding of the returned potentials at ε={eps:.3g}); "
                      f"tol={tol:.3g} raised to that floor for {int(floor_hit.sum())} problem(s). Solve in float64 "
                      f"for a tighter tolerance.", RuntimeWarning, stacklevel=3)
    elapsed = time.perf_counter() - t0
    outcomes = [sinkhorn_outcome(float(merr[p]), float(tol_each[p]), int(status[p]), max_iter, int(n_iter[p]))
                for p in range(B)]
    messages = [o[2] + (f" (tol {tol:.3g} raised to the {np.dtype(batch.dtype).name} rounding floor of the returned "
                        f"potentials; {merr_work[p]:.3g} before rounding)" if floor_hit[p] else "")
                + (f" (stopped on the value: it changed by <= value_tol={value_tol:.3g} over the last tenfold "
                   f"decrease of the marginal tolerance)" if tol_tgt[p] > tol and o[0] else "")
                for p, o in enumerate(outcomes)]
    return SinkhornRun(
        f=f, g=g, n_iter=n_iter, status=status, errors=errors, marginal_error=merr, cost=cost, plogp=plogp,
        converged=np.array([o[0] for o in outcomes], dtype=bool),
        status_names=np.array([o[1] for o in outcomes]), messages=messages,
        schedule=schedule, tol=tol, tol_each=tol_each, fallbacks=fallbacks, time=elapsed,
        mass=np.array(getattr(kernels, "masses", np.full(B, np.nan)), dtype=np.float64),
        values=np.array(kernels.values, dtype=np.float64))


def kernels_mass(batch: ProblemBatch):
    """Total mass of each problem (host floats; the larger of the two sides when unbalanced)."""
    s = batch.a.sum(axis=1)
    if not batch.balanced:
        s = batch.xp.maximum(s, batch.b.sum(axis=1))
    return s.get() if hasattr(s, "get") else s


@dataclass(frozen=True)
class Sinkhorn:
    """Entropic OT by log-domain Sinkhorn iterations, balanced or unbalanced.

    Each iteration is one fused pass over the cost (exact row log-sum-exp, row update and column
    accumulation together, one exp per entry, all cores), so it is stable for any ε: nothing is
    exponentiated without being shifted by its maximum or bounded by a marginal. Solves a
    :class:`~otsolve.LinearProblem` or a :class:`~otsolve.BatchedLinearProblem` (B problems, each
    stopping at its own tolerance), on NumPy (C++ kernels) or CuPy (CUDA kernels) arrays.

    Unbalanced problems (``rho_a`` / ``rho_b`` finite: KL-relaxed marginals) use the same
    iterations with updates damped by ``ρ / (ρ + ε)`` (Chizat et al. 2018; Séjourné et al.
    2019). Their marginals are not ``a`` and ``b`` but targets fixed by the potentials
    (``a exp(-φ/ρ_a)``, see :mod:`otsolve.problems.marginals`): ``tol`` and ``marginal_error``
    then measure the L1 distance of the plan's marginals to those targets (zero exactly at the
    optimum), and ``value`` is the unbalanced objective
    ``<C, P> + ε KL(P | a⊗b) + ρ_a KL(P1 | a) + ρ_b KL(Pᵀ1 | b)``. They always use log-domain
    sweeps (``mode`` does not apply).

    Parameters
    ----------
    tol : float, optional
        Stop when ``||P1 - a||_1 + ||P^T 1 - b||_1 <= tol``, measured on the returned plan.
        Default 1e-9 for float64 and 1e-6 for float32. A tolerance below what the dtype's
        arithmetic reaches (:func:`reachable_tol`) is raised to it with a warning.
    max_iter : int, default 10000
        Iteration budget of each problem, over all ε-scaling stages (one iteration = one update
        of both potentials).
    epsilon_scaling : bool or float, default False
        Anneal ε geometrically from ``epsilon_init`` to the target, warm-starting each stage
        (Kosowsky & Yuille 1994; Schmitzer 2019). ``True`` uses the decay 0.5; a float in (0, 1)
        is the decay itself. Essential for ε below ~1e-3 times the cost scale.
    epsilon_init : float, optional
        First ε of the schedule (default: the geometry's ``cost_range()``).
    stage_tol : float, default 1e-2
        Tolerance of the intermediate stages of ε-scaling (the last stage uses ``tol``).
    value_tol : float, optional
        Stop on the value instead, in its units (a loss tolerance): the last stage runs to
        marginal tolerances ``stage_tol``, ``stage_tol / 10``, ... (down to ``tol``), measuring
        the dual value ``<a, f> + <b, g> - ε Σ P`` after each (the value the torch losses
        return); a problem stops when its value changed by
        at most ``value_tol`` over the last tenfold decrease. ``converged`` then means: that
        criterion met and the reported marginal error below the marginal tolerance reached.
        The change over a decade bounds the remaining value error when the errors shrink more
        than twofold per decade (observed: 3-100x); it is an estimate, not a certificate.
    omega : float or None, default None
        Over-relaxation ``f <- f + omega (f_sinkhorn - f)`` (Thibault et al. 2021). None picks
        it adaptively from the measured linear rate kappa, ``2 / (1 + sqrt(1 - kappa))``, and
        falls back to plain steps when the error grows (Lehmann et al. 2022); 1.0 is plain
        Sinkhorn.
    mode : {"auto", "log", "scaling"}, default "auto"
        CPU only. "log": log-domain sweeps (one exp per cost entry per iteration). "scaling": for
        dense costs, a stabilized kernel-domain scheme with absorption (Schmitzer 2019) that
        stores the Gibbs kernel once and then iterates without exp; it hands back to log sweeps
        whenever a kernel row or column underflows, so it is exactly as stable. "auto" uses
        "scaling" for dense costs whose kernel fits in ``kernel_memory`` bytes and for point
        clouds whose cost and kernel (``2 n m`` entries) fit (the cost is then materialised
        once), "log" otherwise.
    kernel_memory : float, default 4e9
        Most bytes the "auto" mode may spend on the stored kernel (and, for point clouds, the
        materialised costs).
    n_threads : int, default 0
        OpenMP threads of the CPU kernels (0 = chosen from the problem size).
    compiled : bool, default True
        Use the compiled kernels (C++ on the CPU, CUDA on the GPU). False: the NumPy reference
        (CuPy problems are then solved on the host), for checks.
    warn : bool, default True
        Emit a RuntimeWarning when the solve does not converge.

    References
    ----------
    M. Cuturi, "Sinkhorn distances", NeurIPS 2013. B. Schmitzer, "Stabilized sparse scaling
    algorithms for entropy regularized transport problems", SIAM J. Sci. Comput. 41(3), 2019.
    """

    tol: float | None = None
    max_iter: int = 10_000
    epsilon_scaling: bool | float = False
    epsilon_init: float | None = None
    stage_tol: float = 1e-2
    value_tol: float | None = None
    omega: float | None = None
    mode: str = "auto"
    kernel_memory: float = 4e9
    n_threads: int = 0
    compiled: bool = True
    warn: bool = True

    method = "sinkhorn"

    def __post_init__(self) -> None:
        if self.tol is not None and not (isinstance(self.tol, numbers.Real) and np.isfinite(self.tol) and self.tol > 0):
            raise ValueError(f"tol must be a positive number, got {self.tol!r}")
        if isinstance(self.max_iter, bool) or not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 0:
            raise ValueError(f"max_iter must be a nonnegative integer, got {self.max_iter!r}")
        es = self.epsilon_scaling
        if not isinstance(es, bool) and not (isinstance(es, (float, int)) and 0 < es < 1):
            raise ValueError(f"epsilon_scaling must be a bool or a decay in (0, 1), got {es!r}")
        if self.epsilon_init is not None:
            check_epsilon(self.epsilon_init, "epsilon_init")
        if not (isinstance(self.stage_tol, numbers.Real) and np.isfinite(self.stage_tol) and self.stage_tol > 0):
            raise ValueError(f"stage_tol must be a positive number, got {self.stage_tol!r}")
        vt = self.value_tol
        if vt is not None and not (isinstance(vt, numbers.Real) and np.isfinite(vt) and vt > 0):
            raise ValueError(f"value_tol must be a positive number or None, got {vt!r}")
        if self.omega is not None and not (0 < float(self.omega) < 2):
            raise ValueError(f"omega must be in (0, 2) or None (adaptive), got {self.omega!r}")
        if self.mode not in ("auto", "log", "scaling"):
            raise ValueError(f"mode must be 'auto', 'log' or 'scaling', got {self.mode!r}")
        km = self.kernel_memory
        if isinstance(km, bool) or not isinstance(km, numbers.Real) or not km >= 0:
            raise ValueError(f"kernel_memory must be a number of bytes >= 0, got {km!r}")
        nt = self.n_threads
        if isinstance(nt, bool) or not isinstance(nt, (int, np.integer)) or nt < 0:
            raise ValueError(f"n_threads must be an integer >= 0 (0 = automatic), got {nt!r}")

    # ------------------------------------------------------------------------------------
    def __call__(self, problem: LinearProblem | BatchedLinearProblem, init: Any = None) -> OTResult:
        if not isinstance(problem, (LinearProblem, BatchedLinearProblem)):
            raise ValueError(f"expected a LinearProblem or a BatchedLinearProblem, got {type(problem).__name__}")
        eps = problem.epsilon if isinstance(problem, BatchedLinearProblem) else problem.require_epsilon()
        xp = problem.xp
        if not self.compiled and xp is not np:
            # the NumPy reference runs on the host: solve there, hand the arrays back on the device
            host_init = None if init is None else tuple(_host(v) for v in _pair(init))
            res = self(problem.to_namespace(np), host_init)
            return res.to_namespace(xp)
        batch = ProblemBatch.of(problem)
        kernels = make_sinkhorn_kernels(batch, compiled=self.compiled, n_threads=_threads(self.n_threads),
                                        mode=self.mode, kernel_memory=self.kernel_memory)
        out = run_sinkhorn(self, kernels, batch, eps, init)
        backend = "numpy" if xp is np else "cupy"
        dtype = problem.dtype
        if isinstance(problem, LinearProblem):
            return self._single_result(out, kernels, eps, dtype, backend)
        return self._batched_result(out, kernels, eps, dtype, backend)

    def _single_result(self, out: SinkhornRun, kernels, eps, dtype, backend) -> OTResult:
        converged, message = bool(out.converged[0]), out.messages[0]
        if not converged and self.warn:
            warn_not_converged("Sinkhorn", message)
        f, g = out.f, out.g
        return OTResult(
            method=self.method, f=f[0].astype(dtype), g=g[0].astype(dtype), cost=float(out.cost[0]),
            value=float(out.values[0]), converged=converged, n_iter=int(out.n_iter[0]),
            marginal_error=float(out.marginal_error[0]), errors=out.errors[0], message=message,
            status=str(out.status_names[0]), epsilon=eps, plan_fn=lambda: kernels.plan(0, f, g, eps, dtype),
            epsilon_schedule=out.schedule, time=out.time, kernel_fallbacks=out.fallbacks, tol=float(out.tol_each[0]),
            backend=backend,
        )

    def _batched_result(self, out: SinkhornRun, kernels, eps, dtype, backend) -> OTResult:
        B = len(out.n_iter)
        merr, tol = out.marginal_error, float(out.tol_each.max())
        n_bad = int((~out.converged).sum())
        message = (f"all {B} problems converged (max marginal L1 error {merr.max():.3g} <= tol {tol:.3g})"
                   if n_bad == 0 else f"{n_bad} of {B} problems did not reach tol {tol:.3g} (max_iter="
                   f"{self.max_iter}; worst marginal L1 error {np.nanmax(merr):.3g})")
        if n_bad and self.warn:
            warn_not_converged(type(self).__name__, message)
        # per-iteration history of the worst running problem
        L = max((len(e) for e in out.errors), default=0)
        hist = np.full((B, L), np.nan)
        for p, e in enumerate(out.errors):
            hist[p, : len(e)] = e
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            worst = np.nanmax(hist, axis=0) if L else np.zeros(0)
        f, g = out.f.astype(dtype, copy=False), out.g.astype(dtype, copy=False)
        xp = kernels.batch.xp

        def plan():
            return xp.stack([kernels.plan(p, out.f, out.g, eps, dtype) for p in range(B)])

        values = out.values
        return OTResult(
            method=self.method, f=f, g=g, cost=float(out.cost.sum()), value=float(values.sum()),
            converged=bool(out.converged.all()), n_iter=int(out.n_iter.max(initial=0)),
            marginal_error=float(merr.max()), errors=worst, message=message,
            status="converged" if n_bad == 0 else "partial", epsilon=eps, plan_fn=plan,
            converged_each=out.converged, n_iter_each=out.n_iter, marginal_errors=merr, costs=out.cost,
            values=values, masses=out.mass, status_each=out.status_names, errors_each=out.errors, time=out.time,
            epsilon_schedule=out.schedule, tol=tol, tol_each=out.tol_each, backend=backend,
        )


@dataclass(frozen=True)
class BatchedSinkhorn(Sinkhorn):
    """:class:`Sinkhorn` under the name of the batched solver (kept for existing code): the same
    driver and options, for a :class:`~otsolve.BatchedLinearProblem`.

    The result holds (B, n) / (B, m) potentials and per-problem fields ``converged_each``,
    ``n_iter_each``, ``marginal_errors``, ``costs``, ``values``, ``status_each``,
    ``errors_each``.
    """

    method = "batched_sinkhorn"

    def __call__(self, problem: BatchedLinearProblem, init: Any = None) -> OTResult:  # type: ignore[override]
        if not isinstance(problem, BatchedLinearProblem):
            raise ValueError(f"expected a BatchedLinearProblem, got {type(problem).__name__}")
        return super().__call__(problem, init)


def _threads(n_threads: int) -> int:
    from .._validation import check_n_threads  # noqa: PLC0415

    return check_n_threads(n_threads)


def _pair(init):
    return (init.f, init.g) if hasattr(init, "f") and hasattr(init, "g") else init


def _host(v):
    return v.get() if hasattr(v, "get") else v
