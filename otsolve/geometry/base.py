"""What every geometry offers the solvers: cost access by blocks, the operands of the compiled
kernels, the cost's range, plans from potentials and moving between array libraries.

Solvers only call these methods; they never look at a geometry's type or fields (the split of
OTT-JAX: the geometry owns the cost).
"""
from __future__ import annotations

from typing import Any, Iterator

import numpy as np

__all__ = ["BaseGeometry"]


class BaseGeometry:
    """Shared methods of :class:`~otsolve.Geometry` and :class:`~otsolve.PointCloud`.

    Subclasses define ``shape``, ``dtype``, ``xp``, ``cost_rows(start, stop)``,
    ``kernel_operands()``, ``cost_range()`` and ``to_namespace(xp)``.
    """

    # -- what a subclass defines ----------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:  # pragma: no cover - abstract
        """``(n, m)``: the cost's shape."""
        raise NotImplementedError

    @property
    def dtype(self) -> Any:  # pragma: no cover - abstract
        """The cost's dtype."""
        raise NotImplementedError

    @property
    def xp(self) -> Any:  # pragma: no cover - abstract
        """The array namespace of the cost (NumPy or CuPy)."""
        raise NotImplementedError

    @property
    def cost_matrix(self) -> Any:  # pragma: no cover - abstract
        """The (scaled) dense cost matrix (a point cloud computes it)."""
        raise NotImplementedError

    # -- block access ---------------------------------------------------------------------
    def _default_chunk(self) -> int:
        return self.shape[0]

    def iter_row_blocks(self, chunk_size: int | None = None) -> Iterator[tuple[int, Any]]:
        """``(start, C[start:start + k])`` for consecutive row blocks of the cost."""
        n = self.shape[0]
        step = max(1, int(chunk_size)) if chunk_size else self._default_chunk()
        for s in range(0, n, step):
            yield s, self.cost_rows(s, min(n, s + step))

    def cost_rows(self, start: int, stop: int) -> Any:  # pragma: no cover - abstract
        raise NotImplementedError

    def _stats(self) -> tuple[float, float]:
        mx, tot = -np.inf, 0.0
        for _, blk in self.iter_row_blocks():
            mx = max(mx, float(blk.max()))
            tot += float(blk.sum())
        return mx, tot / (self.shape[0] * self.shape[1])

    def max_cost(self) -> float:
        """Largest cost entry."""
        return self._stats()[0]

    def mean_cost(self) -> float:
        """Mean cost entry."""
        return self._stats()[1]

    # -- what the solvers ask for ----------------------------------------------------------
    def plan_from_potentials(self, f: Any, g: Any, epsilon: float, dtype: Any = None) -> Any:
        """Dense plan ``exp((f_i + g_j - C_ij)/ε - 1)``, built block by block (O(nm) memory)."""
        xp = self.xp
        n, m = self.shape
        dtype = self.dtype if dtype is None else dtype
        P = xp.empty((n, m), dtype=dtype)
        f64, g64 = f.astype(xp.float64, copy=False), g.astype(xp.float64, copy=False)
        for s, blk in self.iter_row_blocks():
            L = (f64[s : s + blk.shape[0], None] + g64[None, :] - blk.astype(xp.float64)) / epsilon - 1.0
            with np.errstate(over="ignore", invalid="ignore"):
                P[s : s + blk.shape[0]] = xp.exp(L)
        return P

    def kernel_operands(self) -> tuple[str, tuple]:  # pragma: no cover - abstract
        """``("dense", (C,))`` or ``("pointcloud", (X, YT, kind, scale))`` for the kernels."""
        raise NotImplementedError

    def cost_range(self) -> float:  # pragma: no cover - abstract
        """A cheap upper bound of ``max C - min C`` (the natural first ε of ε-scaling)."""
        raise NotImplementedError

    def to_namespace(self, xp: Any) -> "BaseGeometry":  # pragma: no cover - abstract
        """The same geometry with its arrays in the array library ``xp`` (numpy or cupy)."""
        raise NotImplementedError
