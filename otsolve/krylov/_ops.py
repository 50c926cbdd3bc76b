"""Operator wrapping, input checks and shared bookkeeping for the Krylov solvers."""
from __future__ import annotations

import contextlib
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import LinearOperator

from .._validation import check_positive_int

__all__ = ["SolveStats", "prepare", "as_operator", "check_tolerances", "KrylovWarning"]


class KrylovWarning(RuntimeWarning):
    """Non-convergence or breakdown of a Krylov solver (``info > 0``)."""


@dataclass
class SolveStats:
    """Counters of one solve.

    ``iterations`` counts Arnoldi (GCRO-DR) or CG steps only; ``matvecs`` also counts the
    products spent on the recycled space (``A U`` for a new matrix) and residual checks, so
    the two are reported separately (PETSc's iteration count hides the latter).
    """

    iterations: int = 0
    matvecs: int = 0
    precond: int = 0
    cycles: int = 0
    residual: float = float("nan")  # true ||b - A x|| / ||b|| at exit
    converged: bool = False
    info: int = 0
    time: float = 0.0
    recycle_dim: int = 0
    message: str = ""
    history: list = field(default_factory=list)


class _Counted:
    """A matvec / preconditioner application with a counter (blocks count one per column)."""

    __slots__ = ("fn", "block", "count")

    def __init__(self, fn: Callable, block: Callable):
        self.fn, self.block, self.count = fn, block, 0

    def __call__(self, v):
        self.count += 1
        return self.fn(v)

    def mat(self, V):  # V: (n, p), columns are vectors
        self.count += V.shape[1]
        return self.block(V)


def _reject_device_arrays(x: Any, name: str) -> None:
    # CuPy dense or sparse: a clear error instead of CuPy's implicit-conversion TypeError
    if type(x).__module__.split(".", 1)[0] in ("cupy", "cupyx"):
        raise ValueError(f"{name} is a CuPy array: otsolve's Krylov solvers run on the CPU (NumPy / SciPy "
                         "sparse); move it with .get() or cupy.asnumpy() (the GPU backend covers the OT "
                         "solvers)")


def _check_matrix(A: Any, name: str):
    """Return (callable matvec, block matmat, shape, dtype) after validating ``A``."""
    _reject_device_arrays(A, name)
    if isinstance(A, LinearOperator):
        shape, dtype = A.shape, A.dtype
        mv, mm = A.matvec, A.matmat
    elif sp.issparse(A):
        A = A.tocsr() if A.format not in ("csr", "csc", "bsr") else A
        if A.dtype.kind not in "fc":
            A = A.astype(np.float64)
        if not np.all(np.isfinite(A.data)):
            raise ValueError(f"{name} contains non-finite entries (NaN or inf)")
        shape, dtype = A.shape, A.dtype
        mv = mm = A.dot  # scipy's compiled sparse matvec / matmat
    elif hasattr(A, "shape") or isinstance(A, (list, tuple)):
        A = np.asarray(A)
        if A.dtype.kind in "biu":
            A = A.astype(np.float64)
        if A.dtype.kind not in "fc":
            raise ValueError(f"{name} must be real or complex floating, got dtype {A.dtype}")
        if A.ndim != 2:
            raise ValueError(f"{name} must be 2-D, got shape {A.shape}")
        if not np.all(np.isfinite(A)):
            raise ValueError(f"{name} contains non-finite entries (NaN or inf)")
        shape, dtype = A.shape, A.dtype
        mv = mm = A.dot
    elif callable(A):
        raise ValueError(f"{name}: wrap a callable in scipy.sparse.linalg.LinearOperator")
    else:
        raise ValueError(f"{name} must be an array, a sparse matrix or a LinearOperator, got {type(A).__name__}")
    if len(shape) != 2 or shape[0] != shape[1]:
        raise ValueError(f"{name} must be square, got shape {tuple(shape)}")
    if shape[0] == 0:
        raise ValueError(f"{name} is empty")
    return mv, mm, tuple(shape), np.dtype(dtype)


def as_operator(A: Any, name: str = "A") -> _Counted:
    mv, mm, _, _ = _check_matrix(A, name)
    return _Counted(mv, mm)


def check_tolerances(rtol: Any, atol: Any) -> tuple[float, float]:
    try:
        rtol_f, atol_f = float(rtol), float(atol)
    except (TypeError, ValueError):
        raise ValueError(f"rtol and atol must be numbers, got rtol={rtol!r}, atol={atol!r}") from None
    if not np.isfinite(rtol_f) or rtol_f <= 0:
        raise ValueError(f"rtol must be a positive finite number, got {rtol!r}")
    if not np.isfinite(atol_f) or atol_f < 0:
        raise ValueError(f"atol must be a finite number >= 0, got {atol!r}")
    return rtol_f, atol_f


def prepare(A, b, x0, M, rtol, atol, maxiter):
    """Validate a solver call; return (Aop, Mop | None, b, x, dtype, rtol, atol, maxiter)."""
    mv, mm, shape, adtype = _check_matrix(A, "A")
    n = shape[0]
    _reject_device_arrays(b, "b")
    _reject_device_arrays(x0, "x0")
    b = np.asarray(b)
    if b.ndim == 2 and b.shape[1] == 1:
        b = b[:, 0]
    if b.ndim != 1:
        raise ValueError(f"b must be a vector of length {n}, got shape {b.shape}")
    if b.shape[0] != n:
        raise ValueError(f"A is {n}x{n} but b has length {b.shape[0]}")
    if b.dtype.kind in "biu":
        b = b.astype(np.float64)
    if b.dtype.kind not in "fc":
        raise ValueError(f"b must be real or complex floating, got dtype {b.dtype}")
    if not np.all(np.isfinite(b)):
        raise ValueError("b contains non-finite entries (NaN or inf)")
    # float32 stays float32 only if both A and b are float32: never upcast/downcast silently
    dtype = np.result_type(adtype, b.dtype)
    b = b.astype(dtype, copy=False)
    if x0 is None:
        x = np.zeros(n, dtype=dtype)
    else:
        x = np.array(x0, dtype=dtype).reshape(-1)
        if x.shape[0] != n:
            raise ValueError(f"x0 has length {x.shape[0]} but A is {n}x{n}")
        if not np.all(np.isfinite(x)):
            raise ValueError("x0 contains non-finite entries (NaN or inf)")
    Mop = None
    if M is not None:
        mmv, mmm, mshape, _ = _check_matrix(M, "M")
        if mshape != shape:
            raise ValueError(f"M has shape {mshape} but A has shape {shape}")
        Mop = _Counted(mmv, mmm)
    rtol, atol = check_tolerances(rtol, atol)
    maxiter = 10 * n if maxiter is None else check_positive_int(maxiter, "maxiter")
    return _Counted(mv, mm), Mop, b, x, dtype, rtol, atol, maxiter


def warn_unconverged(method: str, info: int, rel: float, rtol: float, why: str = "") -> None:
    msg = f"{method} did not converge: relative residual {rel:.3e} > rtol {rtol:.1e} after {info} iterations"
    if why:
        msg += f" ({why})"
    warnings.warn(msg, KrylovWarning, stacklevel=3)


def scale_problem(b: np.ndarray, x: np.ndarray, atol: float):
    """Scale ``b``, ``x0`` and ``atol`` by a power of two ``s`` with ``max|b / s|`` in [0.5, 1).

    Krylov recurrences square norms (``‖b‖ = 1e160`` overflows, ``1e-160`` underflows), so the
    solvers work on ``A y = b / s`` and return ``x = s y``. Multiplying by a power of two is
    exact in binary floating point (barring over/underflow of the result), so the residual of the
    returned ``x`` is exactly ``s`` times the residual of ``y``: the stopping test is unchanged and
    every solve is invariant to the scale of ``b``. Returns ``(s, b / s, x0 / s, atol / s)``;
    ``s = 0`` means ``b = 0`` (the exact answer is ``x = 0``).
    """
    bmax = float(np.max(np.abs(b))) if b.size else 0.0
    if bmax == 0.0:
        return 0.0, b, x, atol
    s = float(np.ldexp(1.0, int(np.frexp(bmax)[1])))  # 2^e with bmax / s in [0.5, 1)
    if s == 1.0:
        return s, b, x, atol
    with np.errstate(over="ignore", under="ignore"):
        xs = x / s
        if not np.all(np.isfinite(xs)):  # an x0 > 1e308 ||b||: useless as a guess, start from zero
            xs = np.zeros_like(x)
        return s, b / s, xs, atol / s


def unscale_check(Aop, b_scaled: np.ndarray, y: np.ndarray, s: float, tol_scaled: float, converged: bool):
    """Return ``(x, converged, rel)`` for ``x = s y`` with the verdict true to the returned ``x``.

    ``x / s`` equals ``y`` unless ``s y`` over- or underflowed; then the true residual of the
    returned ``x`` (exactly scaled back by ``1 / s``) is recomputed (one mat-vec) and decides.
    ``rel`` is that relative residual, or ``None`` when ``y`` is returned unchanged.
    """
    if s == 1.0:
        return y, converged, None
    with np.errstate(over="ignore", under="ignore"):
        x = y * s
        back = x / s
    if np.array_equal(back, y):
        return x, converged, None
    if not np.all(np.isfinite(back)):
        return x, False, float("inf")
    rn = float(np.linalg.norm(b_scaled - Aop(back)))
    bn = float(np.linalg.norm(b_scaled))
    return x, bool(converged and rn <= tol_scaled), rn / bn


def finish(st, name: str, Aop, Mop, b, x, s_b: float, tol: float, rnorm: float, bnorm: float, rtol: float,
           why: str | None):
    """The exit verdict shared by the recycling solvers: the true residual decides a
    non-converged exit (a recurrence can lag behind it), ``x`` is scaled back to ``b``'s
    magnitude with the verdict true to the returned ``x``, the counters and message of ``st``
    are filled and non-convergence warns. Returns ``(x, info)``."""
    if not st.converged:
        rt = float(np.linalg.norm(b - Aop(x)))
        if np.isfinite(rt):
            rnorm = rt
            st.converged = rt <= tol
    x, ok, rel = unscale_check(Aop, b, x, s_b, tol, st.converged)
    if st.converged and not ok:
        why = "the solution over- or underflows when scaled back to b's magnitude"
    st.converged = ok
    st.matvecs = Aop.count
    st.precond = Mop.count if Mop is not None else 0
    st.residual = (rnorm / bnorm if bnorm else rnorm) if rel is None else rel
    info = 0
    if not st.converged:
        info = max(st.iterations, 1)
        st.message = why or "not converged"
        warn_unconverged(name, info, st.residual, rtol, why)
    else:
        st.message = "converged"
    return x, info


_CONTROLLER = None
_LIMIT_LOCK = threading.Lock()
_LIMIT_DEPTH = 0
_LIMITER = None


def _controller():
    global _CONTROLLER
    if _CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _CONTROLLER = ThreadpoolController()
    return _CONTROLLER


@contextlib.contextmanager
def blas_single_thread():
    """Limit BLAS to one thread for a solve; restore the limits on every exit path.

    The products of the inner iteration are memory-bound n×(≤ 60) gemv's: extra BLAS threads
    do not help them and, on a shared machine, oversubscription made solves 3× slower.

    BLAS thread counts are process-wide, so concurrent solves (several Python threads) share
    one limit: the first solve to enter saves the original limits and sets 1, the last one to
    leave restores them (a reference count under a lock). A per-call threadpoolctl context
    would not do: with overlapping solves, a later entrant saves the already-lowered limit
    and restores it last, leaving the process at one BLAS thread. Without threadpoolctl this
    is a no-op.
    """
    global _LIMIT_DEPTH, _LIMITER
    with _LIMIT_LOCK:
        if _LIMIT_DEPTH == 0:
            try:
                _LIMITER = _controller().limit(limits=1, user_api="blas")
            except Exception:  # noqa: BLE001 - optional dependency / no BLAS found
                _LIMITER = None
        _LIMIT_DEPTH += 1
    try:
        yield
    finally:
        with _LIMIT_LOCK:
            _LIMIT_DEPTH -= 1
            if _LIMIT_DEPTH == 0 and _LIMITER is not None:
                try:
                    _LIMITER.restore_original_limits()
                finally:
                    _LIMITER = None
