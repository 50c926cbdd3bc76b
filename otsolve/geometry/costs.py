"""The one table of named ground costs, shared by the geometries, the batched problems, the
compiled / CUDA kernels and the torch layer.

Each name maps to a :class:`CostSpec`: the kernel code of the fused C++ / CUDA passes (0 = squared
Euclidean distance, 1 = Euclidean distance, None = no compiled form: the cost is materialised in
blocks), the multiplier those kernels apply, and an array-namespace-generic block function
``fn(x_block, y) -> (k, m)`` that works on NumPy, CuPy and torch arrays alike.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

__all__ = ["COSTS", "CostSpec", "sqeuclidean_block"]


def _namespace(x: Any) -> Any:
    """numpy / cupy for their arrays, otherwise the array-api-compat namespace (torch, JAX, ...)."""
    root = type(x).__module__.split(".", 1)[0]
    if root == "numpy":
        import numpy  # noqa: PLC0415

        return numpy
    if root == "cupy":
        import cupy  # noqa: PLC0415

        return cupy
    from array_api_compat import array_namespace  # noqa: PLC0415

    return array_namespace(x)


def sqeuclidean_block(x: Any, y: Any) -> Any:
    """``||x_i - y_j||^2`` for rows ``x`` (k, d) and ``y`` (m, d); exact differences for d <= 4."""
    if x.shape[1] <= 4:  # exact differences (no cancellation) when cheap
        d = (x[:, None, 0] - y[None, :, 0]) ** 2
        for k in range(1, x.shape[1]):
            d = d + (x[:, None, k] - y[None, :, k]) ** 2
        return d
    xp = _namespace(x)
    d = xp.sum(x * x, axis=1)[:, None] + xp.sum(y * y, axis=1)[None, :] - 2.0 * (x @ y.T)
    return xp.clip(d, 0, None)


def _euclidean(x: Any, y: Any) -> Any:
    return _namespace(x).sqrt(sqeuclidean_block(x, y))


def _half_sqeuclidean(x: Any, y: Any) -> Any:
    return 0.5 * sqeuclidean_block(x, y)


def _cityblock(x: Any, y: Any) -> Any:
    return _namespace(x).sum(abs(x[:, None, :] - y[None, :, :]), axis=-1)


@dataclass(frozen=True)
class CostSpec:
    """A named cost: block function, compiled kernel code (or None) and the kernels' multiplier."""

    fn: Callable
    kernel_kind: int | None
    multiplier: float


COSTS: dict[str, CostSpec] = {
    "sqeuclidean": CostSpec(sqeuclidean_block, 0, 1.0),
    "half_sqeuclidean": CostSpec(_half_sqeuclidean, 0, 0.5),  # GeomLoss' p = 2 convention
    "euclidean": CostSpec(_euclidean, 1, 1.0),
    "cityblock": CostSpec(_cityblock, None, 1.0),
}
