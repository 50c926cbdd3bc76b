"""Kernel sets of the Sinkhorn-Newton-Sparse driver: what differs by device, behind one interface.

The driver (:class:`otsolve.SinkhornNewtonSparse`) owns the warm-up, the switch rule, the Newton
steps, the line search, adaptive ``k_row``, patience, the forcing term, the direct-solve rule,
the fail-fast rule, the best iterate and the result. It sees the *support* of a problem (rows and
columns with positive weight, ``n x m``) through a kernel set:

``xp``, ``n``, ``m``, ``dtype``, ``a``, ``b``, ``k_max``, ``geom``
    array namespace, support shape, dtype of the potentials, support weights (float64 ``xp``
    arrays), the largest ``k_row`` the kernels support and the problem's geometry;
``new_system(k)``
    buffers of one Newton system: ``row``, ``col`` (float64 ``xp`` arrays), ``mass``, ``kept``;
``form(S, x, y, dx, dy, alpha) -> bool``
    the plan ``P_ij = exp((x_i + y_j - C_ij)/eps - 1)`` at the trial point
    ``(x + alpha dx, y + alpha dy)``: its marginals and mass into ``S``; False when it overflows
    (a line-search rejection);
``sparsify(S)``
    the ``k`` largest entries of each row of the plan of ``S`` (the off-diagonal block of the
    sparsified Hessian) and their mass ``S.kept`` (the CPU kernels fuse this into ``form``);
``pcg(S, rhs, z, rtol, maxiter) -> (iterations, relative residual)``
    Jacobi-preconditioned CG on ``M~ z = rhs`` with the gauge direction ``(1_n, -1_m)``
    projected out (``z``: warm start in, solution out);
``direct(S, rhs)``
    the same projected system solved directly (dense Cholesky on the host), or None;
``sinkhorn_problem``, ``to_sinkhorn(x, y)``, ``from_sinkhorn(f, g, x, y)``
    the problem the Sinkhorn blocks run on (through ``otsolve.Sinkhorn``'s public interface) and
    the maps between its potentials and the support's;
``measure(x, y) -> (row, col, cost)``
    exact marginals and ``<C, P>`` of the plan of ``(x, y)`` (float64 NumPy), for the result;
``memory() -> (bytes needed, bytes available or None, where)``
    what the Newton stage will allocate, checked before anything is allocated.

Kernel sets: :class:`HostSNSKernels` over the C++ kernels (``otsolve._ext_sns``) or their NumPy
reference (:mod:`otsolve.kernels.sns_reference`), and :class:`CudaSNSKernels` over the CUDA
kernels of ``csrc/cuda/sns.cu`` through CuPy.

References
----------
X. Tang et al., "Accelerating Sinkhorn Algorithm with Sparse Newton Iterations", ICLR 2024.
"""
from __future__ import annotations

import math
from types import ModuleType
from typing import Any

import numpy as np

from .._validation import available_memory, machine_cores
from ..kernels import sns_reference

__all__ = ["HostSNSKernels", "CudaSNSKernels", "get_sns_kernels", "direct_newton_solve",
           "sparsified_hessian", "hessian_matvec", "DIRECT_MAX", "K_MAX"]

try:  # built by `pip install .` from csrc/_ext_sns.cpp
    from .. import _ext_sns as _compiled_sns
except ImportError:  # pragma: no cover - source checkout without a build
    _compiled_sns = None

# Up to this n + m, a Newton system that CG leaves above its tolerance is solved directly (dense
# Cholesky, ~0.2 s at 3000): near-permutation plans (small n, large eta) make M~ so
# ill-conditioned that Jacobi-PCG stalls.
DIRECT_MAX = 3000
# Allocations below this many bytes are not checked against the available memory.
_SMALL = 1 << 26
# Largest k_row of the CUDA top-k kernel (register lists of 8, 16 or 32 entries per lane).
K_MAX = 32


def get_sns_kernels(compiled: bool = True) -> ModuleType:
    """Module with ``sns_form_system``, ``sns_line_eval``, ``sns_matvec``, ``sns_pcg``,
    ``sns_plan_stats``: the compiled C++ module when built (and ``compiled``), else the NumPy
    reference :mod:`otsolve.kernels.sns_reference` (same signatures)."""
    if compiled and _compiled_sns is not None:
        return _compiled_sns
    return sns_reference


def direct_newton_solve(row, col, kidx, kval, rhs) -> np.ndarray | None:
    """Solve the sparsified Newton system as projected CG does, but directly; None on failure.

    ``M~ = [[diag(row), P~], [P~^T, diag(col)]]`` with ``P~`` given per row by the kept columns
    ``kidx`` (n, k) and values ``kval``. With ``v = (1_n, -1_m)`` (the gauge direction, spec
    sinkhorn_sns.md §3) and ``Pi`` the projection onto its complement, returns the ``z`` with
    ``Pi M~ Pi z = Pi rhs`` and ``v . z = 0``: a dense Cholesky solve of
    ``Pi M~ Pi + s v v^T / (n + m)`` (positive definite; ``s`` = mean diagonal keeps it scaled).
    Host (NumPy) arrays in and out.
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
    # Jacobi scaling D^-1/2 A D^-1/2 (a congruence: still positive definite) with entries below
    # 1e-200 of the unit diagonal flushed to zero: when epsilon is far too small the plan spans
    # hundreds of orders of magnitude and subnormal numbers made each factorisation ~200x slower.
    d = np.sqrt(np.diag(A))
    if not (np.all(d > 0) and np.all(np.isfinite(d))):
        return None
    A /= d[:, None]
    A /= d[None, :]
    A[np.abs(A) < 1e-200] = 0.0
    try:
        # one BLAS thread: N <= 3000 takes <= ~0.3 s so, while OpenBLAS's spinning threads made
        # a 500 x 500 factorisation 70x slower (1.5 s) on a loaded 2-core machine
        with _blas_controller().limit(limits=1, user_api="blas"):
            z = cho_solve(cho_factor(A, lower=True, check_finite=False), b / d, check_finite=False) / d
    except (LinAlgError, ValueError):
        return None
    return z if np.all(np.isfinite(z)) else None


_CONTROLLER: list = []


def _blas_controller():
    """A threadpoolctl controller, built once (a context from it costs ~15 us, a fresh
    ``threadpool_limits`` ~3 ms)."""
    if not _CONTROLLER:
        from threadpoolctl import ThreadpoolController  # noqa: PLC0415

        _CONTROLLER.append(ThreadpoolController())
    return _CONTROLLER[0]


def _direct_bytes(n: int, m: int) -> int:
    """Peak memory of :func:`direct_newton_solve` (M, A and the factor), when it can run."""
    N = n + m
    return 3 * N * N * 8 if N <= DIRECT_MAX else 0


# ------------------------------------------------------------------------------------------
class _HostSystem:
    """Buffers of one Newton system: marginals, kept entries and their transpose."""

    def __init__(self, n: int, m: int, k: int) -> None:
        self.k = k
        self.row, self.col = np.empty(n), np.empty(m)
        self.kidx = np.empty((n, k), dtype=np.int64)
        self.kval = np.empty((n, k))
        self.tptr = np.empty(m + 1, dtype=np.int64)
        self.tidx = np.empty(n * k, dtype=np.int64)
        self.tval = np.empty(n * k)
        self.mass = self.kept = float("nan")

    def arrays(self):
        return self.row, self.col, self.kidx, self.kval, self.tptr, self.tidx, self.tval


class HostSNSKernels:
    """CPU kernel set: the C++/OpenMP kernels of ``csrc/sns_kernels.hpp`` (``compiled=True``) or
    their NumPy reference. The cost of the support is held dense (materialised once for point
    clouds); potentials and all Newton vectors are float64 NumPy arrays. ``form`` evaluates the
    plan, its marginals and the kept entries in one pass, so a line-search trial that is
    accepted *is* the next Newton system."""

    xp = np
    dtype = np.dtype(np.float64)

    def __init__(self, problem, rs, cs, eps: float, *, compiled: bool = True, n_threads: int = 0) -> None:
        geom = problem.geom
        self.geom = geom
        n_full, m_full = geom.shape
        self.n, self.m = int(rs.size), int(cs.size)
        self.k_max = self.m
        self.eps = float(eps)
        self.K = get_sns_kernels(compiled)
        self.compiled = self.K is not sns_reference
        # Below ~1M entries a pass takes about a millisecond and OpenMP barriers (badly hurt
        # when the cores are shared) cost more than the second core gains: one thread.
        self.nt = n_threads or (1 if self.n * self.m < (1 << 20) else 0)
        self.n_threads = n_threads
        self._problem, self._rs, self._cs = problem, rs, cs
        self._full = self.n == n_full and self.m == m_full
        self.itemsize = np.dtype(problem.dtype).itemsize
        # a dense geometry's own matrix is used in place; anything else (point clouds, a
        # support smaller than the problem) is materialised as a new n x m array
        self._copies_cost = bool(geom.is_online) or not self._full
        self.a = np.asarray(problem.a, dtype=np.float64)[rs]
        self.b = np.asarray(problem.b, dtype=np.float64)[cs]
        self.C: np.ndarray | None = None
        self.sinkhorn_problem = None

    # -- memory, set-up -----------------------------------------------------------------------
    def memory(self, k: int) -> tuple[int, int | None, str]:
        n, m = self.n, self.m
        need = n * m * self.itemsize if self._copies_cost else 0
        nt = self.nt or machine_cores()
        need += 8 * (3 * m * nt + n + m)  # per-thread buffers of a pass, marginals
        need += 2 * (n * k * 32 + 8 * (m + 1))  # two systems (current, trial)
        need += 8 * 8 * (n + m)  # CG vectors
        need += _direct_bytes(n, m)
        if not self.compiled:
            need += 4 * n * m * 8  # the NumPy reference's float64 temporaries
        # below 64 MiB there is nothing worth checking (and reading /proc/meminfo costs ~0.5 ms)
        return need, (available_memory() if need > _SMALL else None), "memory"

    def setup(self, kernel_memory: float) -> None:
        """Materialise the support's cost and the problem the Sinkhorn blocks run on."""
        from ..geometry import Geometry  # noqa: PLC0415
        from ..problems import LinearProblem  # noqa: PLC0415

        geom = self._problem.geom
        if not self._copies_cost:
            C = geom.kernel_operands()[1][0]
        elif self._full:
            C = geom.cost_matrix
        else:  # block by block: only the support's rows are kept
            rs, cs = self._rs, self._cs
            parts = []
            for s0, blk in geom.iter_row_blocks():
                sel = rs[(rs >= s0) & (rs < s0 + blk.shape[0])] - s0
                if sel.size:
                    parts.append(np.asarray(blk)[sel][:, cs])
            C = np.concatenate(parts)
        self.C = np.ascontiguousarray(C)
        sub = self._problem if (self._full and not self._copies_cost) else LinearProblem(
            Geometry(self.C), self.a.astype(self.C.dtype), self.b.astype(self.C.dtype), epsilon=self.eps)
        self.sinkhorn_problem = sub
        self.kernel_memory = kernel_memory

    # -- potentials between the support and the Sinkhorn problem ---------------------------------
    def new_potentials(self, f, g):
        x, y = np.array(f[self._rs], dtype=np.float64), np.array(g[self._cs], dtype=np.float64)
        x[~np.isfinite(x)] = 0.0  # a -inf warm start on the support is meaningless
        y[~np.isfinite(y)] = 0.0
        return x, y

    def to_sinkhorn(self, x, y):
        return x, y

    def from_sinkhorn(self, f, g, x, y) -> None:
        x[:] = f
        y[:] = g

    def full_potentials(self, x, y):
        n, m = self._problem.geom.shape
        f, g = np.full(n, -np.inf), np.full(m, -np.inf)
        f[self._rs], g[self._cs] = x, y
        return f, g

    # -- Newton kernels -----------------------------------------------------------------------
    def new_system(self, k: int) -> _HostSystem:
        return _HostSystem(self.n, self.m, k)

    def form(self, S, x, y, dx, dy, alpha: float) -> bool:
        S.mass, _, S.kept = self.K.sns_form_system(
            self.C, x, y, dx, dy, alpha, self.eps, S.row, S.col, S.kidx, S.kval, S.tptr, S.tidx,
            S.tval, self.nt)
        return bool(np.isfinite(S.mass))

    def sparsify(self, S) -> None:  # fused into form
        return None

    def pcg(self, S, rhs, z, rtol: float, maxiter: int) -> tuple[int, float]:
        its, res = self.K.sns_pcg(*S.arrays(), rhs, z, rtol, maxiter, self.nt)
        return int(its), float(res)

    def direct(self, S, rhs):
        return direct_newton_solve(S.row, S.col, S.kidx, S.kval, rhs)

    def measure(self, x, y):
        row, col = np.empty(self.n), np.empty(self.m)
        nt = self.n_threads or (1 if self.n * self.m < (1 << 20) else 0)
        _, cost = self.K.sns_plan_stats(self.C, x, y, self.eps, row, col, nt)
        return row, col, float(cost)


# ------------------------------------------------------------------------------------------
def _k_template(k: int) -> int:
    for K in (8, 16, 32):
        if k <= K:
            return K
    raise ValueError(f"k_row must be <= {K_MAX} on the GPU, got {k}")


def _launch_topk(ops: tuple, f, g, eps: float, k: int):
    """CSR (indptr, indices, data) of the ``k`` largest entries of each row of the plan of
    (f, g) on the device cost ``ops`` (("dense", (C,)) or ("pointcloud", (X, YT, kind, scale)))."""
    import cupy as cp  # noqa: PLC0415

    from .cuda_kernels import get_kernel  # noqa: PLC0415

    kind, args = ops
    n = int(f.size)
    m = int(g.size)
    k = int(min(k, m))
    K = _k_template(k)
    dt = f.dtype
    T = dt.type
    data = cp.empty(n * k, dtype=dt)
    indices = cp.empty(n * k, dtype=cp.int32)
    grid, block = (math.ceil(n / 2), 1, 1), (64, 1, 1)  # 2 warps per block, one row per warp
    if kind == "dense":
        kern = get_kernel("sns.cu", "topk_rows_dense", dt, K)
        kern(grid, block, (args[0], f, g, np.int64(n), np.int64(m), T(eps), np.int32(k), data, indices))
    else:
        X, YT, ck, scale = args
        kern = get_kernel("sns.cu", "topk_rows_pointcloud", dt, K)
        kern(grid, block, (X, YT, np.int32(X.shape[1]), np.int32(ck), T(scale), f, g, np.int64(n), np.int64(m),
                           T(eps), np.int32(k), data, indices))
    indptr = cp.arange(0, n * k + 1, k, dtype=cp.int32)
    return indptr, indices, data


def sparsified_hessian(geom, f, g, eps: float, k: int):
    """CSR (indptr, indices, data) of the ``k`` largest entries of each row of the plan of
    (f, g) (CuPy arrays) on a geometry holding CuPy arrays (or the CUDA Sinkhorn passes'
    geometry of one problem); rows sorted by decreasing value."""
    if hasattr(geom, "kernel_operands"):
        return _launch_topk(geom.kernel_operands(), f, g, eps, k)
    if geom.dense:  # a batch geometry of the Sinkhorn passes, problem 0
        return _launch_topk(("dense", (geom.C[0],)), f, g, eps, k)
    return _launch_topk(("pointcloud", (geom.X[0], geom.YT[0], geom.kind, geom.scale)), f, g, eps, k)


def hessian_matvec(indptr, indices, data, r, c, zx, zy, eta: float = 1.0):
    """``eta * M~ z`` for ``M~ = [[diag(r), P~], [P~^T, diag(c)]]`` (P~ in CSR): (yx, yy)."""
    import cupy as cp  # noqa: PLC0415

    from .cuda_kernels import get_kernel  # noqa: PLC0415

    n = int(r.size)
    T = r.dtype.type
    data = data.astype(r.dtype, copy=False)
    yx = cp.empty_like(zx)
    yy = (T(eta) * c * zy).astype(r.dtype, copy=False)
    kern = get_kernel("sns.cu", "hess_matvec_csr", r.dtype)
    kern((math.ceil(n / 256), 1, 1), (256, 1, 1), (indptr, indices, data, r, zx, zy, np.int64(n), T(eta), yx, yy))
    return yx, yy


class _CudaSystem:
    def __init__(self, k: int) -> None:
        self.k = k
        self.row = self.col = self.xt = self.yt = self.csr = None
        self.mass = self.kept = float("nan")


class CudaSNSKernels:
    """GPU kernel set: the CUDA kernels of ``csrc/cuda/sns.cu`` through CuPy.

    Point clouds keep their on-the-fly cost (no n x m array); dense costs are used in place.
    ``form`` runs one row pass (marginals, largest exponent per row) and one column pass;
    ``sparsify`` the register top-k kernel (``k_row <= 32``); ``pcg`` is the projected
    Jacobi-PCG of the CPU kernels with the ``hess_matvec_csr`` kernel (residual read back every
    10 iterations). Potentials are in the problem's dtype, marginals and Newton vectors float64.
    """

    def __init__(self, problem, eps: float) -> None:
        import cupy as cp  # noqa: PLC0415

        self.xp = cp
        self._problem = problem
        geom = problem.geom
        self.geom = geom
        self.device = problem.a.device
        self.dtype = np.dtype(problem.dtype)
        n_full, m_full = geom.shape
        with cp.cuda.Device(self.device.id):
            self._rs = cp.flatnonzero(problem.a > 0)
            self._cs = cp.flatnonzero(problem.b > 0)
            self.n, self.m = int(self._rs.size), int(self._cs.size)
            self._full = self.n == n_full and self.m == m_full
            self.ops = None  # the support's operands, made by setup() once the memory is checked
            self.a = problem.a[self._rs].astype(cp.float64)
            self.b = problem.b[self._cs].astype(cp.float64)
        self.k_max = min(self.m, K_MAX)
        self.eps = float(eps)
        # a trial is rejected above this exponent (the plan is stored in the problem's dtype)
        self.max_exponent = sns_reference.OVERFLOW_EXPONENT if self.dtype == np.float64 else 80.0
        self.sinkhorn_problem = problem  # Sinkhorn blocks run on the full problem
        self.kernel_memory = 4e9

    def _dev(self):
        return self.xp.cuda.Device(self.device.id)

    # -- memory, set-up -----------------------------------------------------------------------
    def memory(self, k: int) -> tuple[int, int | None, str]:
        n, m = self.n, self.m
        isz = self.dtype.itemsize
        # a dense cost restricted to the support is a new array; point clouds stay on the fly
        need = 0 if self._full or self.geom.is_online else n * m * isz
        need += 2 * n * min(k, K_MAX) * (4 + isz) + 24 * 8 * (n + m)
        if need <= _SMALL:
            return need, None, "GPU memory"
        with self._dev():
            free = int(self.xp.cuda.Device().mem_info[0])
        return need, free, "GPU memory"

    def setup(self, kernel_memory: float) -> None:
        cp = self.xp
        self.kernel_memory = kernel_memory
        with self._dev():
            kind, ops = self.geom.kernel_operands()
            if kind == "dense":
                C = ops[0] if self._full else ops[0][self._rs][:, self._cs]
                self.ops = ("dense", (cp.ascontiguousarray(C),))
            else:
                X, YT, ck, scale = ops
                if not self._full:
                    X, YT = cp.ascontiguousarray(X[self._rs]), cp.ascontiguousarray(YT[:, self._cs])
                self.ops = ("pointcloud", (X, YT, int(ck), float(scale)))

    # -- potentials -----------------------------------------------------------------------------
    def new_potentials(self, f, g):
        cp = self.xp
        with self._dev():
            x, y = f[self._rs].astype(self.dtype), g[self._cs].astype(self.dtype)
            x[~cp.isfinite(x)] = 0
            y[~cp.isfinite(y)] = 0
        return x, y

    def full_potentials(self, x, y):
        cp = self.xp
        n, m = self._problem.geom.shape
        with self._dev():
            f = cp.full(n, -cp.inf, dtype=self.dtype)
            g = cp.full(m, -cp.inf, dtype=self.dtype)
            f[self._rs], g[self._cs] = x, y
        return f, g

    def to_sinkhorn(self, x, y):
        return self.full_potentials(x, y)

    def from_sinkhorn(self, f, g, x, y) -> None:
        x[...] = f[self._rs]
        y[...] = g[self._cs]

    # -- Newton kernels -----------------------------------------------------------------------
    def new_system(self, k: int) -> _CudaSystem:
        return _CudaSystem(k)

    def _stats(self, f, g, want_cost: bool = False):
        """(row, col, row maxima, row costs) of the plan of (f, g), float64 CuPy arrays."""
        cp = self.xp
        from .cuda_kernels import get_kernel  # noqa: PLC0415

        n, m, dt = self.n, self.m, self.dtype
        T = dt.type
        row = cp.empty(n, dtype=cp.float64)
        rmax = cp.empty(n, dtype=cp.float64)
        rcost = cp.empty(n, dtype=cp.float64)
        col = cp.zeros(m, dtype=cp.float64)
        # enough row chunks to fill the GPU (~2048 blocks), >= 64 rows each
        gx = math.ceil(m / 256)
        nchunk = max(1, min(math.ceil(2048 / gx), max(1, n // 64)))
        rpc = math.ceil(n / nchunk)
        nchunk = math.ceil(n / rpc)
        kind, args = self.ops
        if kind == "dense":
            C = args[0]
            get_kernel("sns.cu", "plan_rows_dense", dt)(
                (math.ceil(n / 8), 1, 1), (256, 1, 1), (C, f, g, np.int64(n), np.int64(m), T(self.eps), row, rmax,
                                                        rcost))
            get_kernel("sns.cu", "plan_cols_dense", dt)(
                (gx, nchunk, 1), (256, 1, 1), (C, f, g, np.int64(n), np.int64(m), T(self.eps), np.int32(rpc), col))
        else:
            X, YT, ck, scale = args
            pc = (X, YT, np.int32(X.shape[1]), np.int32(ck), T(scale))
            get_kernel("sns.cu", "plan_rows_pointcloud", dt)(
                (math.ceil(n / 8), 1, 1), (256, 1, 1), pc + (f, g, np.int64(n), np.int64(m), T(self.eps), row, rmax,
                                                             rcost))
            get_kernel("sns.cu", "plan_cols_pointcloud", dt)(
                (gx, nchunk, 1), (256, 1, 1), pc + (f, g, np.int64(n), np.int64(m), T(self.eps), np.int32(rpc), col))
        return row, col, rmax, rcost

    def form(self, S, x, y, dx, dy, alpha: float) -> bool:
        cp = self.xp
        with self._dev():
            if alpha == 0.0:
                xt, yt = x.astype(self.dtype), y.astype(self.dtype)
            else:
                xt = (x + alpha * dx).astype(self.dtype)
                yt = (y + alpha * dy).astype(self.dtype)
            row, col, rmax, _ = self._stats(xt, yt)
            mass, lmax = (float(v) for v in cp.stack([row.sum(), rmax.max()]).get())
        S.row, S.col, S.xt, S.yt, S.csr = row, col, xt, yt, None
        S.mass = mass if (lmax <= self.max_exponent and np.isfinite(mass)) else float("inf")
        return bool(np.isfinite(S.mass))

    def sparsify(self, S) -> None:
        if S.csr is None:
            with self._dev():
                S.csr = _launch_topk(self.ops, S.xt, S.yt, self.eps, S.k)
                S.kept = float(S.csr[2].sum())

    def _matvec(self, S, v, out) -> None:
        n = self.n
        yx, yy = hessian_matvec(*S.csr, S.row, S.col, v[:n], v[n:])
        out[:n] = yx
        out[n:] = yy

    def pcg(self, S, rhs, z, rtol: float, maxiter: int) -> tuple[int, float]:
        """Projected Jacobi-PCG, the steps of :func:`otsolve.kernels.sns_reference.sns_pcg`
        (the residual norm is read back every 10 iterations only)."""
        cp = self.xp
        n = self.n
        N = n + self.m

        def project(v):
            c = (v[:n].sum() - v[n:].sum()) / N
            v[:n] -= c
            v[n:] += c

        with self._dev():
            self.sparsify(S)
            dinv = 1.0 / (cp.concatenate([S.row, S.col]) + 1e-300)
            project(z)
            b = rhs.copy()
            project(b)
            bnorm = float(cp.linalg.norm(b))
            if bnorm == 0.0:
                z[...] = 0
                return 0, 0.0
            q = cp.empty(N, dtype=cp.float64)
            self._matvec(S, z, q)
            r = b - q
            project(r)
            rnorm = float(cp.linalg.norm(r))
            if rnorm <= rtol * bnorm:
                return 0, rnorm / bnorm
            s = dinv * r
            project(s)
            p = s.copy()
            rs = r @ s  # device scalars: no sync per iteration
            stop = cp.zeros((), dtype=cp.bool_)  # breakdown seen (p^T M~ p <= 0 or NaN)
            it, rel = 0, rnorm / bnorm
            while it < maxiter:
                self._matvec(S, p, q)
                project(q)
                pq = p @ q
                # after a breakdown the updates are zero (the CPU kernels stop there; the device
                # notices at its next read-back)
                stop = stop | ~(pq > 0)
                a = cp.where(stop, 0.0, rs / pq)
                z += a * p
                r -= a * q
                it += 1
                if it % 10 == 0 or it == maxiter:
                    rel = float(cp.linalg.norm(r)) / bnorm
                    if bool(stop) or not np.isfinite(rel) or rel <= rtol:
                        break
                s = dinv * r
                project(s)
                rs_new = r @ s
                p *= cp.where(stop, 0.0, rs_new / rs)
                p += s
                rs = rs_new
            return it, rel

    def direct(self, S, rhs):
        with self._dev():
            self.sparsify(S)
            k = int(S.csr[1].size) // self.n
            z = direct_newton_solve(S.row.get(), S.col.get(), S.csr[1].get().reshape(self.n, k),
                                    S.csr[2].get().reshape(self.n, k), rhs.get())
            return None if z is None else self.xp.asarray(z)

    def measure(self, x, y):
        with self._dev():
            row, col, rmax, rcost = self._stats(x.astype(self.dtype), y.astype(self.dtype))
            return row.get(), col.get(), float(rcost.sum())
