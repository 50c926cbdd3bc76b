"""otsolve: optimal transport and the numerical solvers around it.

Geometry -> problem -> solver -> result::

    import otsolve
    geom = otsolve.PointCloud(x, y)                      # or otsolve.Geometry(C)
    prob = otsolve.LinearProblem(geom, a, b, epsilon=1e-2)
    res = otsolve.Sinkhorn(tol=1e-9)(prob)               # or otsolve.solve(prob, method="sinkhorn")
    res.plan, res.f, res.g, res.cost, res.converged

Heavier parts (solvers of later modules, Krylov, PDE, LightSB, the torch layer) are imported on
first use, so ``import otsolve`` stays light and one optional part cannot break the others.
"""
from __future__ import annotations

import importlib
from typing import Any

from .geometry import Geometry, PointCloud
from .problems import LinearProblem
from .solvers import OTResult, Sinkhorn, available_methods, register_method, solve
from .pot_compat import sinkhorn, sinkhorn2, sinkhorn_unbalanced, sinkhorn_unbalanced2

__version__ = "0.1.0"

# public name -> module that defines it (imported lazily)
_LAZY: dict[str, str] = {
    "SinkhornNewtonSparse": "otsolve.solvers.sns",
    "SparsityConstrainedOT": "otsolve.solvers.sparsity_constrained",
    "route": "otsolve.routing",
    "LightSB": "otsolve.lightsb",
    "BatchedLinearProblem": "otsolve.problems",
    "BatchedSinkhorn": "otsolve.solvers.sinkhorn",
}
_LAZY_MODULES = {"krylov", "pde", "datagen", "benchmarks", "metrics", "kernels", "backends", "lightsb", "routing",
                 "torch", "pot"}

__all__ = [
    "Geometry",
    "PointCloud",
    "LinearProblem",
    "OTResult",
    "Sinkhorn",
    "solve",
    "available_methods",
    "register_method",
    "sinkhorn",
    "sinkhorn2",
    "sinkhorn_unbalanced",
    "sinkhorn_unbalanced2",
    *sorted(_LAZY),
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _LAZY_MODULES:
        return importlib.import_module(f"otsolve.{name}")
    raise AttributeError(f"module 'otsolve' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY) | _LAZY_MODULES)
