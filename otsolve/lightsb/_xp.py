"""Array-namespace helpers: the same math runs on NumPy or CuPy arrays.

The namespace is taken from the input arrays (``type(arr).__module__``), so CuPy is never imported
unless the caller already handed us CuPy arrays.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import as_rng

__all__ = ["array_namespace", "logsumexp", "softmax", "to_numpy", "make_rng", "gumbel_argmax"]


def array_namespace(*arrays: Any):
    """``cupy`` if any argument is a CuPy array, else ``numpy``."""
    for a in arrays:
        if type(a).__module__.startswith("cupy"):
            import cupy  # noqa: PLC0415  (optional dependency)

            return cupy
    return np


def logsumexp(a, axis: int = -1, xp=np):
    """Stable ``log(sum(exp(a), axis))``; rows that are all ``-inf`` give ``-inf`` (no NaN)."""
    m = xp.max(a, axis=axis, keepdims=True)
    # a row of -inf would give (-inf) - (-inf) = NaN: shift it by 0 instead
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    s = xp.sum(xp.exp(a - m), axis=axis, keepdims=True)
    return xp.squeeze(xp.log(s) + m, axis=axis)


def softmax(a, axis: int = -1, xp=np):
    """Stable softmax along ``axis`` (the weights of a log-sum-exp)."""
    m = xp.max(a, axis=axis, keepdims=True)
    m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
    e = xp.exp(a - m)
    return e / xp.sum(e, axis=axis, keepdims=True)


def to_numpy(a: Any) -> np.ndarray:
    """Host copy of ``a`` (CuPy arrays via ``.get()``)."""
    if hasattr(a, "get") and type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def make_rng(rng: Any, xp=np):
    """A ``Generator`` of the namespace ``xp`` (NumPy or CuPy) from an int / None / Generator
    (anything else: ValueError naming ``rng``)."""
    if xp is np:
        return as_rng(rng)
    if type(rng).__module__.startswith("cupy"):  # a CuPy generator is used as is
        return rng
    if isinstance(rng, np.random.Generator):  # derive a device seed from a host generator
        rng = int(rng.integers(2**63 - 1))
    elif rng is not None:
        rng = int(as_rng(rng).integers(2**63 - 1)) if not isinstance(rng, (int, np.integer)) else rng
    return xp.random.default_rng(rng)


def gumbel_argmax(logits, rng, xp=np):
    """Categorical draws from unnormalized ``logits`` (last axis) by the Gumbel-max trick.

    Needs only uniform draws, so it works with every backend's generator.
    """
    u = rng.random(logits.shape)
    tiny = np.finfo(np.float64).tiny
    g = -xp.log(-xp.log(xp.clip(u, tiny, 1.0 - 1e-16)))
    return xp.argmax(logits + g, axis=-1)
