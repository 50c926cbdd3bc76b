"""Log-domain Sinkhorn on the GPU: CuPy arrays in, CuPy arrays out, fused CUDA passes.

The Sinkhorn driver uses :class:`CudaKernels` when the problem's arrays are CuPy arrays. The kernels
(``csrc/cuda/sinkhorn.cu``) run one fused pass per half-iteration over the cost (dense, or point
clouds with the cost computed on the fly, so n = m = 100,000 needs O((n + m) d) memory), and the
same passes serve B problems at once (:mod:`otsolve.backends.batched`) with per-problem
convergence: only the ids in ``active`` are launched.

References
----------
M. Cuturi, "Sinkhorn distances", NeurIPS 2013. B. Schmitzer, "Stabilized sparse scaling
algorithms for entropy regularized transport problems", SIAM J. Sci. Comput. 41(3), 2019.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..kernels.reference import Relaxation as _HostRelaxation
from ..problems.marginals import check_rho, dual_value, marginal_residual, marginal_target, primal_value
from ..solvers._common import initial_potentials
from .cuda_kernels import get_kernel

__all__ = ["CudaGeometry", "CudaSinkhornEngine", "CudaKernels", "LoopResult", "Relaxation", "sinkhorn_loop",
           "check_interval", "finish_stats"]

_MAX_GRID_YZ = 65535  # CUDA's limit on grid.y / grid.z: larger batches are launched in slices


# ------------------------------------------------------------------------------------------
class CudaGeometry:
    """A batch of B same-size costs in the layouts the CUDA kernels read.

    Either ``C`` (B, n, m) dense, or point clouds ``X`` (B, n, d), ``Y`` (B, m, d) with cost
    ``scale * ||x - y||^2`` (``kind=0``) or ``scale * ||x - y||`` (``kind=1``).
    """

    def __init__(self, *, C=None, X=None, Y=None, kind: int = 0, scale: float = 1.0) -> None:
        import cupy as cp  # noqa: PLC0415

        if C is not None:
            self.dense = True
            self.C = cp.ascontiguousarray(C)
            self.B, self.n, self.m = (int(s) for s in self.C.shape)
            self.dtype = self.C.dtype
        else:
            self.dense = False
            self.X = cp.ascontiguousarray(X)
            self.Y = cp.ascontiguousarray(Y)
            self.XT = cp.ascontiguousarray(self.X.transpose(0, 2, 1))
            self.YT = cp.ascontiguousarray(self.Y.transpose(0, 2, 1))
            self.B, self.n, self.d = (int(s) for s in self.X.shape)
            self.m = int(self.Y.shape[1])
            self.kind, self.scale = int(kind), float(scale)
            self.dtype = self.X.dtype

    @classmethod
    def from_geometry(cls, geom) -> "CudaGeometry":
        """Single problem (B = 1) from an otsolve Geometry / PointCloud holding CuPy arrays."""
        kind, args = geom.kernel_operands()
        if kind == "dense":
            return cls(C=args[0][None])
        X, YT, k, scale = args
        return cls(X=X[None], Y=YT.T[None], kind=k, scale=scale)

    def cost_block(self, p: int):
        """Dense cost of problem ``p`` (materialised for point clouds: O(nm) memory)."""
        if self.dense:
            return self.C[p]
        import cupy as cp  # noqa: PLC0415

        x, y = self.X[p], self.Y[p]
        d2 = cp.zeros((self.n, self.m), dtype=self.dtype)
        for k in range(self.d):
            d2 += (x[:, None, k] - y[None, :, k]) ** 2
        if self.kind == 1:
            d2 = cp.sqrt(d2)
        return d2 * self.dtype.type(self.scale)

    @property
    def bytes_per_iteration(self) -> int:
        """Bytes of cost read per Sinkhorn iteration (dense: the matrix twice)."""
        if self.dense:
            return 2 * self.C.size * self.C.itemsize
        return 2 * (self.X.size + self.Y.size) * self.X.itemsize


# ------------------------------------------------------------------------------------------
class CudaSinkhornEngine:
    """Launches the row / column passes of ``sinkhorn.cu`` on a :class:`CudaGeometry`.

    Potentials are (B, n) and (B, m) arrays of the geometry's dtype; ``active`` is an int32 CuPy
    array of the problem ids to process. ``mode=0`` updates the potential and adds the L1 error of
    the entering iterate into ``err_out[p]``; ``mode=1`` writes marginals (and <C, P> per row when
    ``cost_out`` is given) without updating. ``rho`` (update passes): the pass's marginal penalty
    strength, ``inf`` = the balanced update, finite = the KL-damped update of unbalanced OT with
    errors to the marginal targets (:mod:`otsolve.problems.marginals`).
    """

    def __init__(self, geo: CudaGeometry) -> None:
        import cupy as cp  # noqa: PLC0415

        self.cp = cp
        self.geo = geo
        t = geo.dtype
        self.T = t.type
        self._dummy_T = cp.zeros(1, dtype=t)
        self._dummy_d = cp.zeros(1, dtype=cp.float64)
        if geo.dense:
            self.k_row = get_kernel("sinkhorn.cu", "row_pass_dense", t)
            self.k_colp = get_kernel("sinkhorn.cu", "col_partial_dense", t)
            self.k_colf = get_kernel("sinkhorn.cu", "col_finalize", t)
        else:
            self.k_pc = get_kernel("sinkhorn.cu", "row_pass_pointcloud", t)
        self.k_tr = get_kernel("sinkhorn.cu", "translate_pass", t)
        self._parts: dict[tuple[int, int], tuple] = {}
        self._scratch_err = None
        # per-problem over-relaxation factor (1 = plain Sinkhorn), read by the update passes
        self.omega = cp.ones(geo.B, dtype=t)

    # -- helpers ------------------------------------------------------------------------
    def _slices(self, active):
        for s in range(0, int(active.size), _MAX_GRID_YZ):
            yield active[s : s + _MAX_GRID_YZ]

    def _buffers(self, mode, logw, err_out, mass_out, cost_out):
        """Real arrays for every pointer argument (kernels ignore those their mode does not use;
        a mode-0 pass always gets a (B,) error buffer because the kernels index it by problem)."""
        if mode == 1 and mass_out is None:
            raise ValueError("mode 1 needs mass_out")
        if mode == 0 and err_out is None:
            if self._scratch_err is None:
                self._scratch_err = self.cp.zeros(self.geo.B, dtype=self.cp.float64)
            err_out = self._scratch_err
        return (self._dummy_T if logw is None else logw,
                self._dummy_d if err_out is None else err_out,
                self._dummy_T if mass_out is None else mass_out,
                self._dummy_d if cost_out is None else cost_out,
                np.int32(cost_out is not None))

    # -- passes ---------------------------------------------------------------------------
    def row_pass(self, f, g, log_a, eps, active, mode=0, err_out=None, mass_out=None, cost_out=None,
                 rho: float = math.inf):
        """Rows: f from g (mode 0; adds the entering iterate's L1 error into ``err_out[p]``),
        or row marginals into ``mass_out`` and <C, P> per row into ``cost_out`` (mode 1)."""
        geo = self.geo
        logw, err, mass, cost, wc = self._buffers(mode, log_a, err_out, mass_out, cost_out)
        for act in self._slices(active):
            if geo.dense:
                grid = (math.ceil(geo.n / 8), int(act.size), 1)  # one warp per row
                self.k_row(grid, (256, 1, 1), (geo.C, g, logw, f, self.omega, act, np.int64(geo.n),
                                               np.int64(geo.m), self.T(eps), np.float64(rho), np.int32(mode), wc,
                                               err, mass, cost))
            else:
                grid = (math.ceil(geo.n / 32), int(act.size), 1)  # 8 warps x 4 rows per block
                self.k_pc(grid, (256, 1, 1), (geo.X, geo.YT, np.int32(geo.d), np.int32(geo.kind),
                                              self.T(geo.scale), g, logw, f, self.omega, act, np.int64(geo.n),
                                              np.int64(geo.m), self.T(eps), np.float64(rho), np.int32(mode), wc,
                                              np.int32(0),
                                              err, mass, cost, np.int32(0), self._dummy_d))

    def col_pass(self, f, g, log_b, eps, active, mode=0, err_out=None, mass_out=None, cost_out=None,
                 rho: float = math.inf, line_mass=None):
        """Columns: g from f (mode 0; adds the L1 column error of the *resulting* iterate, zero
        without over-relaxation; each column's resulting mass goes to ``line_mass`` (B, m)
        float64 when given), or column marginals into ``mass_out`` (mode 1)."""
        geo = self.geo
        cp = self.cp
        logw, err, mass, cost, wc = self._buffers(mode, log_b, err_out, mass_out, cost_out)
        keep = np.int32(line_mass is not None and mode == 0)
        lm = line_mass if keep else self._dummy_d
        if not geo.dense:  # symmetric roles: the row kernel on (y, x)
            for act in self._slices(active):
                grid = (math.ceil(geo.m / 32), int(act.size), 1)
                self.k_pc(grid, (256, 1, 1), (geo.Y, geo.XT, np.int32(geo.d), np.int32(geo.kind),
                                              self.T(geo.scale), f, logw, g, self.omega, act, np.int64(geo.m),
                                              np.int64(geo.n), self.T(eps), np.float64(rho), np.int32(mode), wc,
                                              np.int32(1),
                                              err, mass, cost, keep, lm))
            return
        for act in self._slices(active):
            na = int(act.size)
            gx = math.ceil(geo.m / 32)
            # enough row chunks to fill the GPU (~16 blocks per SM on 132 SMs), >= 64 rows each
            nchunk = max(1, min(math.ceil(2048 / (gx * na)), max(1, geo.n // 64)))
            rpc = math.ceil(geo.n / nchunk)
            nchunk = math.ceil(geo.n / rpc)
            key = (na, nchunk)
            if key not in self._parts:  # keep one partial buffer (bounded memory)
                size = na * nchunk * geo.m
                self._parts = {key: (cp.empty(size, dtype=geo.dtype), cp.empty(size, dtype=cp.float64),
                                     cp.empty(size, dtype=cp.float64))}
            pmx, ps, pt = self._parts[key]
            self.k_colp((gx, nchunk, na), (32, 8, 1), (geo.C, f, act, np.int64(geo.n), np.int64(geo.m),
                                                       self.T(eps), np.int32(rpc), wc, pmx, ps, pt))
            self.k_colf((math.ceil(geo.m / 256), na, 1), (256, 1, 1),
                        (pmx, ps, pt, np.int32(nchunk), logw, g, self.omega, act, np.int32(na), np.int64(geo.m),
                         self.T(eps), np.float64(rho), np.int32(mode), wc, err, mass, cost, keep, lm))

    def translate(self, f, g, log_a, log_b, eps, active, col_mass, err_out, rho_a: float, rho_b: float):
        """Translation-invariant step of unbalanced problems (Séjourné, Vialard, Peyré, AISTATS
        2022), all on the device: per active problem, ``t`` =
        :func:`~otsolve.problems.marginals.translation` of the total target masses of (f, g),
        ``f += t``, ``g -= t`` (finite entries; the plan is unchanged), and ``err_out[p]`` set to
        the exact column error of the shifted iterate from the column masses ``col_mass`` (B, m)
        that the preceding :meth:`col_pass` kept (``line_mass``)."""
        geo = self.geo
        threads = 1024 if geo.n + geo.m > 16384 else 256  # one block per problem: wider for long lines
        for act in self._slices(active):
            self.k_tr((int(act.size), 1, 1), (threads, 1, 1), (f, g, log_a, log_b, col_mass, act, np.int64(geo.n),
                                                           np.int64(geo.m), self.T(eps), np.float64(rho_a),
                                                           np.float64(rho_b), err_out))

    # -- statistics of the plan --------------------------------------------------------------
    def plan_stats(self, f, g, eps, active):
        """(row marginals (B, n), column marginals (B, m), <C, P> per problem (B,)), float64."""
        cp = self.cp
        geo = self.geo
        row = cp.zeros((geo.B, geo.n), dtype=geo.dtype)
        col = cp.zeros((geo.B, geo.m), dtype=geo.dtype)
        rcost = cp.zeros((geo.B, geo.n), dtype=cp.float64)
        self.row_pass(f, g, None, eps, active, mode=1, mass_out=row, cost_out=rcost)
        self.col_pass(f, g, None, eps, active, mode=1, mass_out=col)
        return row.astype(cp.float64), col.astype(cp.float64), rcost.sum(axis=1)


# ------------------------------------------------------------------------------------------
def check_interval(geo: CudaGeometry, n_active: int) -> int:
    """Iterations between host reads of the error (each read synchronises, ~30 µs): rarely for
    small problems, every iteration when one iteration costs much more than the read."""
    per_problem = geo.bytes_per_iteration / geo.B if geo.dense else 40.0 * geo.n * geo.m / geo.B
    t_iter = 20e-6 + n_active * per_problem / 2.5e12
    return int(min(50, max(1, math.ceil(30e-6 / (0.1 * t_iter)))))


@dataclass
class LoopResult:
    n_iter: np.ndarray            # (B,) iterations done per problem
    status: np.ndarray            # (B,) 0 converged (by the measured error), 1 max_iter, 2 diverged
    errors: list = field(default_factory=list)  # per problem, measured L1 errors


class Relaxation(_HostRelaxation):
    """Over-relaxation factor of one problem, chosen by exactly the CPU kernels' rule
    (:class:`otsolve.kernels.reference.Relaxation`: Thibault et al. 2021, adaptive as in Lehmann
    et al. 2022, refined with Young's relation). ``omega=None`` is adaptive, a number in (0, 2)
    is used as given."""

    def __init__(self, omega: float | None) -> None:
        super().__init__(-1.0 if omega is None else float(omega))


def sinkhorn_loop(engine: CudaSinkhornEngine, log_a, log_b, f, g, eps: float, max_iter: int, tol: float,
                  active_ids: np.ndarray, check_every: int | None = None, omega: float | None = 1.0,
                  budgets: np.ndarray | None = None, rho_a: float = math.inf,
                  rho_b: float = math.inf) -> LoopResult:
    """Sinkhorn iterations on the problems ``active_ids`` until each one's error <= tol.

    ``errors[p][k]`` is the L1 marginal error (rows + columns) of problem p's iterate after k
    updates: to the marginal targets of :func:`otsolve.problems.marginals.marginal_target` when
    ``rho_a`` / ``rho_b`` (KL penalty strengths of the row / column marginals) are finite, to
    the weights when they are ``inf`` (balanced). A problem stops costing work at the first check
    (every ``check_every`` iterations; by default after 1, 2, 4, ... iterations up to
    :func:`check_interval`) after its error falls to ``tol`` (its id leaves the launch list) or
    turns non-finite (diverged). ``omega``: over-relaxation (1 plain, None adaptive per problem). ``budgets``
    (aligned with ``active_ids``): each problem's own iteration budget (default ``max_iter``).

    Unbalanced problems (either ρ finite) take the translation-invariant step after each column
    pass (:meth:`CudaSinkhornEngine.translate`, as :func:`otsolve.kernels.reference.sinkhorn_dense`):
    the potentials are shifted by ``(+t, -t)`` on the device, and the carried column error is
    recomputed exactly for the shifted iterate from the column masses the pass kept.
    """
    cp = engine.cp
    geo = engine.geo
    B = geo.B
    res = LoopResult(np.zeros(B, dtype=np.int64), np.ones(B, dtype=np.int64), [[] for _ in range(B)])
    active = np.asarray(active_ids, dtype=np.int32)
    left = np.zeros(B, dtype=np.int64)
    left[active] = max_iter if budgets is None else np.asarray(budgets, dtype=np.int64)
    active = active[left[active] > 0]
    relax = {int(p): Relaxation(omega) for p in active}
    om_host = np.ones(B)
    for p, r in relax.items():
        om_host[p] = r.omega
    engine.omega[...] = cp.asarray(om_host, dtype=engine.omega.dtype)
    # column error of the entering iterate (the row passes add the rows): one marginal pass for
    # the starting point, whose columns need not be exact (cold or warm start)
    carry = cp.zeros(B, dtype=cp.float64)
    if active.size:
        col = cp.zeros((B, geo.m), dtype=geo.dtype)
        engine.col_pass(f, g, None, eps, cp.asarray(active), mode=1, mass_out=col)
        target = marginal_target(cp.exp(log_b.astype(cp.float64)), g.astype(cp.float64), eps, rho_b)
        dev = cp.abs(col.astype(cp.float64) - target).sum(axis=1)
        carry[...] = cp.where(cp.isfinite(dev), dev, cp.inf)
        carry[cp.asarray(np.setdiff1d(np.arange(B), active))] = 0
    unbalanced = not (math.isinf(rho_a) and math.isinf(rho_b))
    col_mass = cp.zeros((B, geo.m), dtype=cp.float64) if unbalanced and active.size else None
    it = 0
    ramp = 1  # first checks after 1, 2, 4, ... iterations: a warm start stops after one
    while active.size:
        k = check_every or min(ramp, check_interval(geo, int(active.size)))
        ramp *= 2
        k = int(min(k, left[active].min()))
        buf = cp.zeros((k + 1, B), dtype=cp.float64)
        buf[0] = carry
        act_d = cp.asarray(active)
        for q in range(k):
            engine.row_pass(f, g, log_a, eps, act_d, 0, err_out=buf[q], rho=rho_a)      # rows of iterate q
            engine.col_pass(f, g, log_b, eps, act_d, 0, err_out=buf[q + 1], rho=rho_b,  # columns of q + 1
                            line_mass=col_mass)
            if unbalanced:  # (f + t, g - t); buf[q + 1] becomes the shifted iterate's column error
                engine.translate(f, g, log_a, log_b, eps, act_d, col_mass, buf[q + 1], rho_a, rho_b)
        it += k
        host = buf.get()
        carry = buf[k].copy()
        errs = host[:k, active]  # (k, n_active): errors of the iterates entering each step
        keep = []
        changed = False
        for c, p in enumerate(active):
            e = errs[:, c]
            res.errors[p].extend(e.tolist())
            res.n_iter[p] += k
            left[p] -= k
            r = relax[int(p)]
            for v in e:
                r.observe(float(v))
            if r.omega != om_host[p]:
                om_host[p], changed = r.omega, True
            if not np.all(np.isfinite(e)):
                res.status[p] = 2
            elif np.any(e <= tol):
                res.status[p] = 0
            elif left[p] > 0:
                keep.append(p)
        if changed:
            engine.omega[...] = cp.asarray(om_host, dtype=engine.omega.dtype)
        active = np.asarray(keep, dtype=np.int32)
    engine.omega.fill(1)
    return res


def _as_device_potentials(init, n: int, m: int, dtype):
    import cupy as cp  # noqa: PLC0415

    return initial_potentials(init, n, m, xp=cp, dtype=dtype)



def measure_plans(engine: CudaSinkhornEngine, f, g, a, b, eps: float, active, masses=None,
                  rho_a: float = math.inf, rho_b: float = math.inf, values=None):
    """Per-problem (marginal error, <C,P>, Σ P log P) as float64 CuPy arrays (B,); the plans'
    masses Σ P go into ``masses`` and their primal objectives
    (:func:`otsolve.problems.marginals.primal_value`: ``<C,P> + ε Σ P log P`` when balanced) into
    ``values`` when given. The error is :func:`~otsolve.problems.marginals.marginal_residual`:
    the L1 distance of the marginals to the weights (balanced) or to the targets of the
    KL-relaxed sides (``rho_a`` / ``rho_b`` finite)."""
    cp = engine.cp
    row, col, cost = engine.plan_stats(f, g, eps, active)
    mass = row.sum(axis=1)
    if masses is not None:
        masses[...] = mass
    a64, b64 = a.astype(cp.float64), b.astype(cp.float64)
    f64, g64 = f.astype(cp.float64), g.astype(cp.float64)
    merr = marginal_residual(row, col, f64, g64, a64, b64, eps, rho_a, rho_b)
    # Σ P log P = (Σ f r + Σ g c - <C,P>)/ε - Σ P, skipping zero-mass -inf potentials
    fr = cp.where(row > 0, f64 * row, 0.0).sum(axis=1)
    gc = cp.where(col > 0, g64 * col, 0.0).sum(axis=1)
    plogp = (fr + gc - cost) / eps - mass
    if values is not None:
        values[...] = primal_value(cost, plogp, row, col, a64, b64, eps, rho_a, rho_b)
    return merr, cost, plogp


def finish_stats(engine: CudaSinkhornEngine, f, g, a, b, eps: float, active, rho_a: float = math.inf,
                 rho_b: float = math.inf):
    """Per-problem (marginal error, <C,P>, primal value) as float64 NumPy arrays (the value is
    ``<C,P> + ε Σ P log P`` when balanced)."""
    values = engine.cp.zeros(engine.geo.B, dtype=engine.cp.float64)
    merr, cost, _ = measure_plans(engine, f, g, a, b, eps, active, rho_a=rho_a, rho_b=rho_b, values=values)
    return merr.get(), cost.get(), values.get()


# ------------------------------------------------------------------------------------------
class CudaKernels:
    """GPU kernel set of the Sinkhorn driver (see :mod:`otsolve.backends.kernel_sets`): the fused
    CUDA passes over the whole batch, launched only for the problems still running. Potentials
    are (B, n), (B, m) CuPy arrays of the problem's dtype. Unbalanced batches (``batch.rho_a`` /
    ``batch.rho_b`` finite: KL-relaxed marginals) run the same passes with the damped updates."""

    def __init__(self, batch) -> None:
        import cupy as cp  # noqa: PLC0415

        self.cp = cp
        self.batch = batch
        self.device = cp.cuda.Device(batch.a.device.id)
        with self.device:
            if batch.stacked is not None:
                if batch.stacked[0] == "dense":
                    geo = CudaGeometry(C=batch.stacked[1])
                else:
                    _, X, Y, kind, scale = batch.stacked
                    geo = CudaGeometry(X=X, Y=Y, kind=kind, scale=scale)
            else:
                kind, args = batch.geometry(0).kernel_operands()
                if kind == "dense":
                    geo = CudaGeometry(C=args[0][None])
                else:
                    X, YT, k, scale = args
                    geo = CudaGeometry(X=X[None], Y=YT.T[None], kind=k, scale=scale)
            self.geo = geo
            self.engine = CudaSinkhornEngine(geo)
            dtype = batch.dtype
            self.a = cp.ascontiguousarray(batch.a.astype(dtype))
            self.b = cp.ascontiguousarray(batch.b.astype(dtype))
            self.log_a, self.log_b = cp.log(self.a), cp.log(self.b)  # log 0 = -inf: zero weights
        # marginal penalty strengths (inf = balanced); symmetric batches have rho_b = rho_a
        self.rho_a = check_rho(getattr(batch, "rho_a", math.inf), "rho_a")
        self.rho_b = self.rho_a if batch.symmetric else check_rho(getattr(batch, "rho_b", math.inf), "rho_b")
        self.masses = np.full(batch.B, np.nan)  # Σ P of the plans last measured (measure)
        self.values = np.full(batch.B, np.nan)  # their primal objectives (measure)

    def new_potentials(self, init: Any):
        from ..solvers._common import initial_potentials  # noqa: PLC0415

        B, n, m = self.batch.B, self.batch.n, self.batch.m
        with self.device:
            return initial_potentials(init, n, m, xp=self.cp, dtype=self.batch.dtype, batch=B)

    def iterate(self, ids, f, g, eps: float, budgets, tol: float, omega: float | None, log_sweeps: bool = False):
        ids = np.asarray(ids, dtype=np.int32)
        with self.device:
            lr = sinkhorn_loop(self.engine, self.log_a, self.log_b, f, g, eps, int(max(budgets, default=0)), tol,
                               ids, omega=omega, budgets=budgets, rho_a=self.rho_a, rho_b=self.rho_b)
        return lr.n_iter[ids], lr.status[ids], [lr.errors[p] for p in ids]

    def iterate_symmetric(self, ids, f, eps: float, budgets, tol: float):
        """Symmetric problems (g = f): the row pass over C(x, x) with the other potential a copy
        of f and the relaxation 1/2 is exactly the averaged update f <- (f + T(f)) / 2 (T damped
        by ``rho_a`` when finite); the row pass measures the entering iterate's row error
        (columns: the same, by symmetry)."""
        cp = self.cp
        ids = np.asarray(ids, dtype=np.int32)
        B = self.batch.B
        left = np.zeros(B, dtype=np.int64)
        left[ids] = np.asarray(budgets, dtype=np.int64)
        n_iter, status = np.zeros(B, dtype=np.int64), np.ones(B, dtype=np.int64)
        errors: list[list[float]] = [[] for _ in range(B)]
        active = ids[left[ids] > 0]
        eng = self.engine
        with self.device:
            eng.omega.fill(0.5)
            while active.size:
                err = cp.zeros(B, dtype=cp.float64)
                eng.row_pass(f, f.copy(), self.log_a, eps, cp.asarray(active), 0, err_out=err, rho=self.rho_a)
                host = 2.0 * err.get()
                keep = []
                for p in active:  # the pass measured iterate k and applied update k + 1
                    e = float(host[p])
                    errors[p].append(e)
                    n_iter[p] += 1
                    if not np.isfinite(e):
                        status[p] = 2
                    elif e <= tol:
                        status[p] = 0  # (the driver re-measures what it returns)
                    elif n_iter[p] < left[p]:
                        keep.append(p)
                active = np.asarray(keep, dtype=np.int32)
            eng.omega.fill(1)
        return n_iter[ids], status[ids], [errors[p] for p in ids]

    def measure(self, f, g, eps: float, ids):
        """(marginal error, <C, P>, Σ P log P) of problems ``ids``, float64 NumPy arrays; records
        the plans' masses in ``masses`` and primal objectives in ``values``. The error is
        :func:`otsolve.problems.marginals.marginal_residual` (L1 to the weights when balanced)."""
        cp = self.cp
        ids = np.asarray(ids, dtype=np.int32)
        with self.device:
            mass = cp.zeros(self.batch.B, dtype=cp.float64)
            vals = cp.zeros(self.batch.B, dtype=cp.float64)
            merr, cost, plogp = measure_plans(self.engine, f, g, self.a, self.b, eps, cp.asarray(ids), mass,
                                              self.rho_a, self.rho_b, vals)
            self.masses[ids] = mass.get()[ids]
            self.values[ids] = vals.get()[ids]
            return merr.get()[ids], cost.get()[ids], plogp.get()[ids]

    def dual_values(self, f, g, eps: float, ids):
        """Dual values of problems ``ids`` (float64 NumPy):
        :func:`otsolve.problems.marginals.dual_value`, ``<a, f> + <b, g> - ε Σ P`` when balanced."""
        cp = self.cp
        ids = np.asarray(ids, dtype=np.int32)
        with self.device:
            row, _, _ = self.engine.plan_stats(f, g, eps, cp.asarray(ids))
            a64, b64 = self.a.astype(cp.float64), self.b.astype(cp.float64)
            vals = dual_value(f.astype(cp.float64), g.astype(cp.float64), a64, b64, row.sum(axis=1), eps,
                              self.rho_a, self.rho_b)
            return vals.get()[ids]

    def plan(self, p: int, f, g, eps: float, dtype):
        cp = self.cp
        with self.device:
            C = self.geo.cost_block(p)
            L = (f[p][:, None] + g[p][None, :] - C) / dtype.type(eps) - 1
            return cp.exp(L).astype(dtype, copy=False)
