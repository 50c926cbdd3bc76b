"""The functional front door ``otsolve.solve`` and its method registry (as scipy.optimize)."""
from __future__ import annotations

import importlib
from typing import Any

from ..problems import LinearProblem
from .result import OTResult

__all__ = ["solve", "register_method", "available_methods", "get_solver_class"]

# name -> "module:Class" (imported on first use, so one broken solver cannot break the others)
_METHODS: dict[str, str] = {
    "sinkhorn": "otsolve.solvers.sinkhorn:Sinkhorn",
    "sns": "otsolve.solvers.sns:SinkhornNewtonSparse",
    "sparsity_constrained": "otsolve.solvers.sparsity_constrained:SparsityConstrainedOT",
    "emd": "otsolve.solvers.exact:ExactOT",
}


def register_method(name: str, target: str | type) -> None:
    """Register a solver class (or ``"module:Class"``) under ``name``."""
    _METHODS[name] = target  # type: ignore[assignment]


def available_methods() -> list[str]:
    return sorted(_METHODS)


def get_solver_class(method: str) -> type:
    if not isinstance(method, str) or method.lower() not in _METHODS:
        raise ValueError(f"unknown method {method!r}; known methods: {', '.join(available_methods())}")
    target = _METHODS[method.lower()]
    if isinstance(target, str):
        mod, cls = target.split(":")
        try:
            target = getattr(importlib.import_module(mod), cls)
        except (ImportError, AttributeError) as exc:  # pragma: no cover - missing optional solver
            raise ValueError(f"method {method!r} is not available: {exc}") from exc
    return target  # type: ignore[return-value]


def _looks_like_cost(x: Any) -> bool:
    """A cost in first position (POT's ``ot.solve(M, a, b)`` order): a geometry or a 2-D array."""
    from ..geometry import Geometry, PointCloud  # noqa: PLC0415

    return isinstance(x, (Geometry, PointCloud)) or getattr(x, "ndim", None) == 2 or (
        isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], (list, tuple)))


def solve(*args: Any, method: str = "sinkhorn", epsilon: float | None = None, init: Any = None,
          rho: Any = None, **options: Any) -> OTResult:
    """Solve an OT problem with the named method.

    Call as ``solve(a, b, C, epsilon=..., method="sinkhorn", **options)`` (``a`` or ``b`` may be
    None for uniform weights; ``C`` a matrix, :class:`~otsolve.Geometry` or
    :class:`~otsolve.PointCloud`) or ``solve(problem, method=..., **options)``.

    Parameters
    ----------
    method : str
        One of :func:`available_methods` (``"sinkhorn"``, ``"sns"``, ``"sparsity_constrained"``,
        ``"emd"`` for exact OT by POT's network simplex).
    epsilon : float, optional
        Entropic regularization (overrides the problem's).
    rho : float or (float, float), optional
        Unbalanced OT with the (a, b) form: strength of the KL relaxation of the marginals,
        one number for both sides or a pair ``(rho_a, rho_b)`` (``inf`` keeps a side balanced);
        see :class:`~otsolve.LinearProblem`. Only ``method="sinkhorn"`` solves it.
    init : optional
        Warm start passed to the solver (e.g. ``(f, g)`` or a previous :class:`OTResult`).
    **options
        Keyword arguments of the solver class (e.g. ``tol``, ``max_iter``).

    Raises
    ------
    ValueError
        For an unknown method (the message lists the known ones) or bad input.
    """
    solver_cls = get_solver_class(method)
    if rho is not None and not (len(args) == 3):
        raise ValueError("rho applies to solve(a, b, C, ...); for a problem object give "
                         "LinearProblem(..., rho_a=, rho_b=)")
    rho_a, rho_b = (rho if isinstance(rho, (tuple, list)) and len(rho) == 2 else (rho, rho))
    if len(args) == 1 and isinstance(args[0], LinearProblem):
        problem = args[0]
        if epsilon is not None:
            problem = problem.with_epsilon(epsilon)
    elif len(args) >= 1 and _looks_like_cost(args[0]) and (
            len(args) < 3 or args[2] is None or getattr(args[2], "ndim", 1) <= 1):
        raise ValueError(
            "otsolve.solve takes (a, b, C): the cost matrix comes third, but the first argument is "
            f"{getattr(args[0], 'ndim', 2)}-D. For POT's order ot.solve(M, a, b, reg=...) use "
            "otsolve.pot.solve(M, a, b, reg=...) (import otsolve.pot as ot), or call "
            "otsolve.solve(a, b, M, epsilon=reg)")
    elif len(args) == 3:
        a, b, C = args
        problem = LinearProblem(C, a, b, epsilon=epsilon, rho_a=rho_a, rho_b=rho_b)
    else:
        raise ValueError("call solve(problem, method=...) or solve(a, b, C, epsilon=..., method=...)")
    try:
        solver = solver_cls(**options)
    except TypeError as exc:
        raise ValueError(f"bad option for method {method!r}: {exc}") from None
    return solver(problem, init=init)
