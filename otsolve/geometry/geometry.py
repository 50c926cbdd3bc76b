"""Dense cost matrices."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .._validation import _xp, as_float_array, check_finite
from .base import BaseGeometry

__all__ = ["Geometry", "resolve_scale"]


def resolve_scale(scale_cost: Any, stats: Callable[[], tuple[float, float]]) -> float:
    """Turn ``scale_cost`` (a number, or "max" / "mean") into a multiplier of the cost.

    ``stats`` is a callable returning (max, mean) of the unscaled cost, evaluated only when needed.
    """
    if isinstance(scale_cost, str):
        if scale_cost not in ("max", "mean"):
            raise ValueError(f"scale_cost must be a positive number, 'max' or 'mean', got {scale_cost!r}")
        mx, mean = stats()
        ref = mx if scale_cost == "max" else mean
        if not ref > 0:
            raise ValueError(f"cannot scale the cost by its {scale_cost}: it is {ref!r}")
        return 1.0 / ref
    s = float(scale_cost)
    if not np.isfinite(s) or s <= 0:
        raise ValueError(f"scale_cost must be a positive finite number, got {scale_cost!r}")
    return s


class Geometry(BaseGeometry):
    """A dense ``n x m`` cost matrix.

    Parameters
    ----------
    cost : array_like, shape (n, m)
        Cost matrix ``C``. float32 and float64 are kept as they are; integers become float64.
        NumPy or CuPy arrays.
    scale_cost : float or {"max", "mean"}, default 1.0
        Multiply the cost by this number, or divide it by its max / mean.

    Notes
    -----
    Solvers never look at the matrix themselves: they call the geometry's methods
    (:class:`~otsolve.geometry.base.BaseGeometry`), as in OTT-JAX's geometry / problem / solver split.
    """

    is_online = False

    def __init__(self, cost: Any, *, scale_cost: float | str = 1.0) -> None:
        C = as_float_array(cost, "cost", ndim=2)
        check_finite(C, "cost")
        xp = _xp(C)
        s = resolve_scale(scale_cost, lambda: (float(xp.max(C)), float(xp.mean(C))))
        if s != 1.0:
            C = C * C.dtype.type(s)
        self._cost = C if C.flags.c_contiguous else xp.ascontiguousarray(C)
        self.scale = s

    @property
    def cost_matrix(self) -> Any:
        """The (scaled) dense cost matrix."""
        return self._cost

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self._cost.shape)  # type: ignore[return-value]

    @property
    def dtype(self) -> Any:
        return self._cost.dtype

    @property
    def xp(self) -> Any:
        """Array namespace (numpy or cupy) of the geometry's arrays."""
        return _xp(self._cost)

    def cost_rows(self, start: int, stop: int) -> Any:
        """Rows ``start:stop`` of the cost matrix."""
        return self._cost[start:stop]

    def max_cost(self) -> float:
        return float(self.xp.max(self._cost))

    def mean_cost(self) -> float:
        return float(self.xp.mean(self._cost))

    def kernel_operands(self) -> tuple[str, tuple]:
        return "dense", (self._cost,)

    def cost_range(self) -> float:
        xp = self.xp
        return max(float(xp.max(self._cost) - xp.min(self._cost)), np.finfo(float).tiny)

    def to_namespace(self, xp: Any) -> "Geometry":
        if xp is self.xp:
            return self
        new = object.__new__(Geometry)
        new._cost = xp.asarray(self._cost.get() if hasattr(self._cost, "get") else self._cost)
        new.scale = self.scale
        return new

    @classmethod
    def _trusted(cls, cost: Any) -> "Geometry":
        """A geometry on an already validated, C-contiguous float cost (no checks, no copy)."""
        new = object.__new__(cls)
        new._cost, new.scale = cost, 1.0
        return new

    def __repr__(self) -> str:
        n, m = self.shape
        return f"Geometry(n={n}, m={m}, dtype={self.dtype})"
