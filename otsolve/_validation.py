"""Input checks shared by every entry point: bad input raises a ValueError naming the problem."""
from __future__ import annotations

import os
import warnings
from typing import Any, Callable

import numpy as np

__all__ = [
    "as_float_array",
    "check_weights",
    "check_epsilon",
    "check_same_mass",
    "check_finite",
    "check_positive_int",
    "check_tol",
    "check_n_threads",
    "machine_cores",
    "as_rng",
    "renamed_kwarg",
    "available_memory",
    "check_memory",
    "InsufficientMemoryError",
    "check_cost_overflow",
    "check_cost_block",
]


def _xp(arr: Any):
    """Array namespace of ``arr``: numpy, or cupy for CuPy arrays (no import otherwise)."""
    mod = type(arr).__module__
    if mod.startswith("cupy"):
        import cupy  # noqa: PLC0415  (optional dependency)

        return cupy
    return np


def as_float_array(x: Any, name: str, ndim: int | None = None, dtype=None):
    """Convert ``x`` to a floating array, keeping float32/float64 (ints become float64).

    Raises ValueError for complex, object or empty input and for the wrong number of dims.
    """
    xp = _xp(x)
    arr = xp.asarray(x)
    if arr.dtype.kind in "biu":
        arr = arr.astype(xp.float64)
    elif arr.dtype.kind != "f":
        raise ValueError(f"{name} must be a real floating array, got dtype {arr.dtype}")
    if arr.dtype not in (xp.float32, xp.float64):
        arr = arr.astype(xp.float64)
    if dtype is not None:
        arr = arr.astype(dtype, copy=False)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(arr.shape)}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(arr.shape)})")
    return arr


def check_finite(arr, name: str) -> None:
    xp = _xp(arr)
    if not bool(xp.all(xp.isfinite(arr))):
        n_bad = int(xp.sum(~xp.isfinite(arr)))
        raise ValueError(f"{name} contains {n_bad} non-finite value(s) (NaN or inf)")


def check_weights(w, n: int, name: str, dtype=None):
    """Return ``w`` as a 1-D float array of length ``n``; uniform 1/n when ``w`` is None."""
    if w is None:
        return np.full(n, 1.0 / n, dtype=dtype or np.float64)
    w = as_float_array(w, name, ndim=1, dtype=dtype)
    if w.shape[0] != n:
        raise ValueError(f"{name} has length {w.shape[0]} but the cost has {n} entries on that side")
    check_finite(w, name)
    xp = _xp(w)
    if bool(xp.any(w < 0)):
        raise ValueError(f"{name} has negative entries (min {float(w.min())!r}); weights must be >= 0")
    if float(w.sum()) <= 0:
        raise ValueError(f"{name} has zero total mass")
    return w


def check_epsilon(epsilon: Any, name: str = "epsilon") -> float:
    try:
        eps = float(epsilon)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {epsilon!r}") from None
    if not np.isfinite(eps) or eps <= 0:
        raise ValueError(f"{name} must be a positive finite number, got {epsilon!r}")
    return eps


def check_same_mass(a, b, rtol: float | None = None, name_a: str = "a", name_b: str = "b"):
    """Balanced OT needs equal total masses: return ``b`` rescaled to ``a``'s total mass.

    Masses that differ by more than ``rtol`` (relative; default 1e-6 for float64, 1e-4 for
    float32) are refused with a ValueError. Smaller differences are removed by rescaling ``b``
    to ``a``'s mass, as POT's ``ot.emd`` does: without it no plan can have a marginal error below
    ``|sum(a) - sum(b)|``, so a solve with ``tol`` under that gap could never converge. A gap
    above rounding (``100 * machine epsilon`` of the dtype, relative) is rescaled with a
    UserWarning; rounding-level gaps (e.g. ``a / a.sum()``) are rescaled silently. Batches
    ``a`` (B, n), ``b`` (B, m) are checked and rescaled per problem.
    """
    xp = _xp(b)
    dt = np.dtype(b.dtype) if np.dtype(b.dtype).kind == "f" else np.dtype(np.float64)
    if rtol is None:
        rtol = 1e-6 if dt == np.float64 else 1e-4
    sa = np.asarray(_host(a.sum(axis=-1)), dtype=np.float64)
    sb = np.asarray(_host(b.sum(axis=-1)), dtype=np.float64)
    gap = np.abs(sa - sb) / np.maximum(sa, sb)
    if np.any(gap > rtol):
        k = int(np.argmax(gap > rtol)) if gap.ndim else None
        fa, fb, fg = (float(v.flat[k] if k is not None else v) for v in (sa, sb, gap))
        where = f" in problem {k}" if k is not None else ""
        raise ValueError(
            f"{name_a} and {name_b} have different total masses{where} ({fa!r} vs {fb!r}, relative gap "
            f"{fg:.3g} > {rtol:g}); balanced OT needs equal masses (normalize them, e.g. {name_a} / "
            f"{name_a}.sum() and {name_b} / {name_b}.sum())"
        )
    if not np.any(gap > 0):
        return b
    if np.any(gap > 100 * np.finfo(dt).eps):
        warnings.warn(
            f"{name_a} and {name_b} have slightly different total masses (largest relative gap "
            f"{float(np.max(gap)):.3g}); {name_b} is rescaled to the mass of {name_a} (balanced OT needs "
            "equal masses: no plan could otherwise have a marginal error below the gap)",
            UserWarning,
            stacklevel=3,
        )
    ratio = (sa / sb).astype(dt)
    return b * (xp.asarray(ratio)[..., None] if ratio.ndim else dt.type(ratio))


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            raise ValueError(f"{name} must be an integer, got the float {value!r}")
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def check_tol(tol: Any, name: str = "tol") -> float:
    """A tolerance: a positive finite number (ValueError naming ``name`` otherwise)."""
    if isinstance(tol, bool):
        raise ValueError(f"{name} must be a positive number, got {tol!r}")
    try:
        t = float(tol)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, got {tol!r}") from None
    if not (np.isfinite(t) and t > 0):
        raise ValueError(f"{name} must be a positive finite number, got {tol!r}")
    return t


def machine_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS / Windows
        return max(1, os.cpu_count() or 1)


def check_n_threads(n_threads: Any, name: str = "n_threads") -> int:
    """Validate a thread count: an int >= 0 (0 = automatic), capped at the machine's cores.

    More threads than cores only adds fork/join and barrier cost (4096 OpenMP threads turn a 1-s
    solve into a minute), so larger counts are capped with a RuntimeWarning; negative, bool or
    non-integer values raise a ValueError naming the parameter.
    """
    if isinstance(n_threads, bool) or not isinstance(n_threads, (int, np.integer)):
        raise ValueError(f"{name} must be an integer >= 0 (0 = all cores), got {n_threads!r}")
    n = int(n_threads)
    if n < 0:
        raise ValueError(f"{name} must be >= 0 (0 = all cores), got {n_threads!r}")
    cores = machine_cores()
    if n > cores:
        warnings.warn(f"{name}={n} exceeds the {cores} cores available; using {cores}",
                      RuntimeWarning, stacklevel=3)
        n = cores
    return n


def as_rng(rng: Any = None, name: str = "rng") -> np.random.Generator:
    """``np.random.default_rng(rng)`` for None, an int, a SeedSequence or a Generator (returned
    as is); anything else raises a ValueError naming the parameter."""
    if isinstance(rng, np.random.Generator):
        return rng
    if isinstance(rng, bool):
        raise ValueError(f"{name} must be None, an int or a numpy Generator, got {rng!r}")
    try:
        return np.random.default_rng(rng)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name} must be None, an int >= 0 or a numpy Generator, got {rng!r} ({exc})") from None


def renamed_kwarg(new_value: Any, old_value: Any, new: str, old: str, unset: Any = None,
                  stacklevel: int = 3) -> Any:
    """Resolve a keyword renamed from ``old`` to ``new`` (the old name is a deprecated alias).

    Returns ``new_value`` unless ``old_value`` was given (is not ``unset``); then a
    DeprecationWarning is emitted and ``old_value`` is used. Both given: ValueError.
    """
    if old_value is unset:
        return new_value
    if new_value is not unset:
        raise ValueError(f"pass {new}= only ({old}= is its deprecated old name), not both")
    warnings.warn(f"{old}= is deprecated and will be removed; use {new}=", DeprecationWarning,
                  stacklevel=stacklevel)
    return old_value


class InsufficientMemoryError(MemoryError, ValueError):
    """An allocation was refused before it was attempted: it cannot fit in the available memory."""


def available_memory() -> int | None:
    """Bytes of memory available to new allocations (Linux ``MemAvailable``; None if unknown)."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        pass
    try:  # pragma: no cover - other POSIX systems
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):  # pragma: no cover
        return None


def _gib(nbytes: float) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def check_memory(nbytes: float, what: str, hint: str = "") -> None:
    """Refuse (InsufficientMemoryError, a MemoryError and a ValueError) an allocation of ``nbytes``
    that does not fit in the available memory, before attempting it, with both figures."""
    avail = available_memory()
    if avail is not None and nbytes > avail:
        raise InsufficientMemoryError(
            f"{what} needs {_gib(nbytes)} ({int(nbytes):,} bytes) but only {_gib(avail)} is available"
            + (f"; {hint}" if hint else ""))


def _host(v):
    """A NumPy view / copy of a NumPy, CuPy or torch array."""
    if isinstance(v, np.ndarray):
        return v
    if hasattr(v, "detach"):  # torch
        return v.detach().cpu().numpy()
    return np.asarray(v.get() if hasattr(v, "get") else v)


def check_cost_overflow(x, y, cost: str | Callable[..., Any], scale: float = 1.0) -> None:
    """Refuse point clouds whose cost would overflow their dtype (ValueError naming ``x``/``y``).

    Squared-distance costs ("sqeuclidean", "half_sqeuclidean", and "euclidean", whose kernels
    form the squared distance first) are bounded by the bounding box's squared diagonal,
    ``sum_k (max_k - min_k)^2``; "cityblock" by ``sum_k (max_k - min_k)``. With more than 4
    dimensions the block code expands ``|x|^2 + |y|^2 - 2 x.y``, so the squared norms count too.
    Without this check, coordinates ~1e200 give an infinite cost and the solver ends "diverged".
    Callable costs are checked block by block instead (:func:`check_cost_block`). ``x``, ``y``
    are (n, d), (m, d) or batches (B, n, d), (B, m, d) (each problem is bounded on its own);
    NumPy, CuPy or torch arrays.
    """
    if callable(cost):
        return
    x, y = _host(x), _host(y)
    dt = np.dtype(x.dtype)
    big = float(np.finfo(dt).max)
    with np.errstate(over="ignore", invalid="ignore"):
        lo = np.minimum(x.min(axis=-2), y.min(axis=-2)).astype(np.float64)
        hi = np.maximum(x.max(axis=-2), y.max(axis=-2)).astype(np.float64)
        span = hi - lo
        if cost == "cityblock":
            bound = float(np.max(np.sum(span, axis=-1)))
        else:
            bound = float(np.max(np.sum(span * span, axis=-1)))
            if x.shape[-1] > 4:  # norm expansion in the block code
                amax = np.maximum(np.abs(lo), np.abs(hi))
                bound = max(bound, float(np.max(np.sum(amax * amax, axis=-1))))
        scaled = bound * abs(float(scale))
    if not (np.isfinite(bound) and bound <= big and np.isfinite(scaled) and scaled <= big):
        what = "distances" if cost == "cityblock" else "squared distances"
        raise ValueError(
            f"x and y span coordinates up to {float(np.max(np.maximum(np.abs(lo), np.abs(hi)))):.3g}: their "
            f"{what} (up to ~{bound * abs(float(scale)):.3g}) overflow {dt} (max {big:.3g}), so the cost "
            f"{cost!r} would be infinite; rescale the points (e.g. x / s, y / s, with epsilon / s**2 for a "
            "squared cost)")


def check_cost_block(blk, rows: int, m: int, name: str = "cost"):
    """A block returned by a callable cost: an array of shape (rows, m), real and finite."""
    xp = _xp(blk)
    blk = xp.asarray(blk)
    if tuple(blk.shape) != (rows, m):
        raise ValueError(
            f"{name}(x_block, y) returned shape {tuple(blk.shape)} for a block of {rows} rows of x "
            f"and {m} points of y; it must return an array of shape ({rows}, {m})")
    if blk.dtype.kind not in "fiub":
        raise ValueError(f"{name}(x_block, y) returned dtype {blk.dtype}; it must be real")
    if not bool(xp.all(xp.isfinite(blk))):
        raise ValueError(f"{name}(x_block, y) returned {int(xp.sum(~xp.isfinite(blk)))} non-finite value(s)")
    return blk
