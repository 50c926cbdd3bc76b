"""Point clouds whose cost entries are computed on the fly (no n x m matrix stored)."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .._validation import _xp, as_float_array, check_cost_block, check_cost_overflow, check_finite
from .base import BaseGeometry
from .costs import COSTS
from .geometry import resolve_scale

__all__ = ["PointCloud", "COSTS"]


class PointCloud(BaseGeometry):
    """Cost between two point clouds, computed on the fly in row blocks.

    Parameters
    ----------
    x : array_like, shape (n, d)
    y : array_like, shape (m, d), optional
        Defaults to ``x``.
    cost : {"sqeuclidean", "half_sqeuclidean", "euclidean", "cityblock"} or callable
        ``"sqeuclidean"`` is ``||x - y||^2``; a callable ``cost(x_block, y) -> (k, m) array``
        is evaluated block by block (a block of another shape, or with NaN / inf, raises a
        ValueError). Points whose named cost would overflow the dtype (squared distances of
        coordinates ~1e154 in float64) are refused with a ValueError.
    scale_cost : float or {"max", "mean"}, default 1.0
        Multiplier of the cost, or normalise by the max / mean cost (one pass over all pairs).
    chunk_size : int, optional
        Rows per block when blocks are materialised in NumPy (default: ~64 MiB per block).

    Notes
    -----
    Memory is O((n + m) d) plus one block: the compiled Sinkhorn kernels compute the squared
    Euclidean and Euclidean costs inside their loops, so n = m = 50,000 fits easily.
    """

    is_online = True

    def __init__(
        self,
        x: Any,
        y: Any = None,
        cost: str | Callable = "sqeuclidean",
        *,
        scale_cost: float | str = 1.0,
        chunk_size: int | None = None,
    ) -> None:
        x = as_float_array(x, "x")
        if x.ndim == 1:
            x = x[:, None]
        if x.ndim != 2:
            raise ValueError(f"x must be 2-D (n, d), got shape {tuple(x.shape)}")
        y = x if y is None else as_float_array(y, "y")
        if y.ndim == 1:
            y = y[:, None]
        if y.ndim != 2:
            raise ValueError(f"y must be 2-D (m, d), got shape {tuple(y.shape)}")
        if x.shape[1] != y.shape[1]:
            raise ValueError(f"x and y have different dimensions: {x.shape[1]} vs {y.shape[1]}")
        if x.dtype != y.dtype:
            raise ValueError(f"x and y have different dtypes: {x.dtype} vs {y.dtype}")
        check_finite(x, "x")
        check_finite(y, "y")
        if callable(cost):
            self._fn, self.kernel_kind, mult = cost, None, 1.0
            self.cost_name = getattr(cost, "__name__", "callable")
        elif cost in COSTS:
            spec = COSTS[cost]
            self._fn, self.kernel_kind, mult = spec.fn, spec.kernel_kind, spec.multiplier
            self.cost_name = cost
        else:
            raise ValueError(f"unknown cost {cost!r}; known: {sorted(COSTS)} or a callable")
        check_cost_overflow(x, y, cost, mult)
        self.x, self.y = x, y
        self.chunk_size = chunk_size
        self._mult = mult
        self._user_cost = callable(cost)
        self.scale = 1.0
        self.scale = resolve_scale(scale_cost, self._stats)
        check_cost_overflow(x, y, cost, mult * self.scale)

    # -- block access ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.x.shape[0]), int(self.y.shape[0]))

    @property
    def dtype(self) -> Any:
        return self.x.dtype

    @property
    def xp(self) -> Any:
        return _xp(self.x)

    @property
    def kernel_scale(self) -> float:
        """Factor the compiled kernels apply to the base (sq)Euclidean distance."""
        return self._mult * self.scale

    def _default_chunk(self) -> int:
        if self.chunk_size:
            return int(self.chunk_size)
        return max(1, (8 << 20) // max(1, self.shape[1]))

    def cost_rows(self, start: int, stop: int) -> Any:
        blk = self._fn(self.x[start:stop], self.y)
        if getattr(self, "_user_cost", False):
            blk = check_cost_block(blk, min(stop, self.shape[0]) - start, self.shape[1], self.cost_name)
        blk = blk.astype(self.dtype, copy=False)
        if self.scale != 1.0:
            blk = blk * self.dtype.type(self.scale)
        return blk

    @property
    def cost_matrix(self) -> Any:
        """Materialise the full cost matrix (O(nm) memory: use for small problems only)."""
        return self.cost_rows(0, self.shape[0])

    # -- what the solvers ask for ------------------------------------------------------------
    def kernel_operands(self) -> tuple[str, tuple]:
        """Named (sq)Euclidean costs are computed inside the compiled loops (O((n + m) d)
        memory); other costs are materialised once."""
        if self.kernel_kind is None:
            return "dense", (self.xp.ascontiguousarray(self.cost_matrix),)
        xp = self.xp
        return "pointcloud", (xp.ascontiguousarray(self.x), xp.ascontiguousarray(self.y.T),
                              int(self.kernel_kind), float(self.kernel_scale))

    def cost_range(self) -> float:
        """For (sq)Euclidean costs a bound from the bounding box's diameter (no pass over the
        pairs); otherwise the exact range by blocks."""
        tiny = np.finfo(float).tiny
        if self.kernel_kind is None:
            mx, mn = -np.inf, np.inf
            for _, blk in self.iter_row_blocks():
                mx, mn = max(mx, float(blk.max())), min(mn, float(blk.min()))
            return max(mx - mn, tiny)
        xp = self.xp
        lo = xp.minimum(self.x.min(axis=0), self.y.min(axis=0)).astype(xp.float64)
        hi = xp.maximum(self.x.max(axis=0), self.y.max(axis=0)).astype(xp.float64)
        diam = float(xp.sqrt(((hi - lo) ** 2).sum()))
        base = diam**2 if self.kernel_kind == 0 else diam
        return max(base * self.kernel_scale, tiny)

    def to_namespace(self, xp: Any) -> "PointCloud":
        if xp is self.xp:
            return self
        new = object.__new__(PointCloud)
        new.__dict__.update(self.__dict__)
        host = (lambda v: v.get() if hasattr(v, "get") else v)
        new.x = xp.asarray(host(self.x))
        new.y = new.x if self.y is self.x else xp.asarray(host(self.y))
        return new

    @classmethod
    def _trusted(cls, x: Any, y: Any, cost: str, scale: float) -> "PointCloud":
        """A point cloud on validated arrays with a named cost (no checks, no copy)."""
        spec = COSTS[cost]
        new = object.__new__(cls)
        new._fn, new.kernel_kind, new._mult = spec.fn, spec.kernel_kind, spec.multiplier
        new.cost_name, new.x, new.y, new.chunk_size, new.scale = cost, x, y, None, float(scale)
        return new

    def __repr__(self) -> str:
        n, m = self.shape
        return f"PointCloud(n={n}, m={m}, d={self.x.shape[1]}, cost={self.cost_name!r}, dtype={self.dtype})"
