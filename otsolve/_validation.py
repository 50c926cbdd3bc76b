"""Input checks shared by every entry point: bad input raises a ValueError naming the problem."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "as_float_array",
    "check_weights",
    "check_epsilon",
    "check_same_mass",
    "check_finite",
    "check_positive_int",
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


def check_same_mass(a, b, rtol: float = 1e-6) -> None:
    """Balanced OT needs equal total masses (relative tolerance ``rtol``)."""
    sa, sb = float(a.sum()), float(b.sum())
    if abs(sa - sb) > rtol * max(sa, sb):
        raise ValueError(
            f"a and b have different total masses ({sa!r} vs {sb!r}); balanced OT needs equal masses "
            "(normalize them, e.g. a / a.sum() and b / b.sum())"
        )


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        if isinstance(value, (float, np.floating)) and float(value).is_integer():
            raise ValueError(f"{name} must be an integer, got the float {value!r}")
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if int(value) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)
