"""Point clouds whose cost entries are computed on the fly (no n x m matrix stored)."""
from __future__ import annotations

from typing import Any, Callable, Iterator

import numpy as np

from .._validation import _xp, as_float_array, check_finite
from .geometry import resolve_scale

__all__ = ["PointCloud", "COSTS"]


def _sqeuclidean(x, y):
    xp = _xp(x)
    if x.shape[1] <= 4:  # exact differences (no cancellation) when cheap
        d = (x[:, None, 0] - y[None, :, 0]) ** 2
        for k in range(1, x.shape[1]):
            d += (x[:, None, k] - y[None, :, k]) ** 2
        return d
    d = (x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2.0 * (x @ y.T)
    return xp.maximum(d, 0)


def _euclidean(x, y):
    return _xp(x).sqrt(_sqeuclidean(x, y))


def _half_sqeuclidean(x, y):
    return 0.5 * _sqeuclidean(x, y)


def _cityblock(x, y):
    return _xp(x).abs(x[:, None, :] - y[None, :, :]).sum(-1)


# name -> (block function, compiled kernel kind or None, multiplier applied inside the kernel)
COSTS: dict[str, tuple[Callable, int | None, float]] = {
    "sqeuclidean": (_sqeuclidean, 0, 1.0),
    "half_sqeuclidean": (_half_sqeuclidean, 0, 0.5),
    "euclidean": (_euclidean, 1, 1.0),
    "cityblock": (_cityblock, None, 1.0),
}


class PointCloud:
    """Cost between two point clouds, computed on the fly in row blocks.

    Parameters
    ----------
    x : array_like, shape (n, d)
    y : array_like, shape (m, d), optional
        Defaults to ``x``.
    cost : {"sqeuclidean", "half_sqeuclidean", "euclidean", "cityblock"} or callable
        ``"sqeuclidean"`` is ``||x - y||^2``; a callable ``cost(x_block, y) -> (k, m) array``
        is evaluated block by block.
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
            self._fn, self.kernel_kind, mult = COSTS[cost]
            self.cost_name = cost
        else:
            raise ValueError(f"unknown cost {cost!r}; known: {sorted(COSTS)} or a callable")
        self.x, self.y = x, y
        self.chunk_size = chunk_size
        self._mult = mult
        self.scale = 1.0
        self.scale = resolve_scale(scale_cost, self._stats)

    # -- block access ---------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.x.shape[0]), int(self.y.shape[0]))

    @property
    def dtype(self):
        return self.x.dtype

    @property
    def xp(self):
        return _xp(self.x)

    @property
    def kernel_scale(self) -> float:
        """Factor the compiled kernels apply to the base (sq)Euclidean distance."""
        return self._mult * self.scale

    def _default_chunk(self) -> int:
        if self.chunk_size:
            return int(self.chunk_size)
        return max(1, (8 << 20) // max(1, self.shape[1]))

    def cost_rows(self, start: int, stop: int):
        blk = self._fn(self.x[start:stop], self.y)
        blk = blk.astype(self.dtype, copy=False)
        if self.scale != 1.0:
            blk = blk * self.dtype.type(self.scale)
        return blk

    def iter_row_blocks(self, chunk_size: int | None = None) -> Iterator[tuple[int, Any]]:
        n = self.shape[0]
        step = int(chunk_size) if chunk_size else self._default_chunk()
        for s in range(0, n, step):
            yield s, self.cost_rows(s, min(n, s + step))

    @property
    def cost_matrix(self):
        """Materialise the full cost matrix (O(nm) memory: use for small problems only)."""
        return self.cost_rows(0, self.shape[0])

    def _stats(self) -> tuple[float, float]:
        mx, tot = -np.inf, 0.0
        for _, blk in self.iter_row_blocks():
            mx = max(mx, float(blk.max()))
            tot += float(blk.sum())
        return mx, tot / (self.shape[0] * self.shape[1])

    def max_cost(self) -> float:
        return self._stats()[0]

    def mean_cost(self) -> float:
        return self._stats()[1]

    def __repr__(self) -> str:
        n, m = self.shape
        return f"PointCloud(n={n}, m={m}, d={self.x.shape[1]}, cost={self.cost_name!r}, dtype={self.dtype})"
