"""The result every OT solver returns."""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

__all__ = ["OTResult", "POTENTIALS_CONVENTION"]

POTENTIALS_CONVENTION = "P_ij = exp((f_i + g_j - C_ij) / epsilon - 1)"


class OTResult:
    """Solution of an OT problem with honest diagnostics (like ``scipy.optimize.OptimizeResult``).

    Attributes
    ----------
    plan : ndarray (n, m)
        Dense transport plan, computed on first access for entropic solvers.
    f, g : ndarray
        Dual potentials in cost units; for entropic solvers
        ``P_ij = exp((f_i + g_j - C_ij)/epsilon - 1)`` (defined up to ``f + t, g - t``).
    cost : float
        Transport cost ``<C, P>``.
    value : float
        The regularized objective the solver minimizes (for entropic OT
        ``<C, P> + epsilon * sum P log P``, which equals the dual value at the optimum).
    converged : bool
        True iff the final marginal error is finite and ``<= tol``.
    n_iter : int
        Iterations of the main loop (solver-specific counters are extra attributes).
    marginal_error : float
        ``||P 1 - a||_1 + ||P^T 1 - b||_1`` of the returned plan.
    errors : ndarray
        History of the marginal error as the solver measured it.
    message, method, status : str
        Why it stopped, which solver, and a short status code
        ("converged", "max_iter", "diverged", ...).

    Solvers add their own fields (e.g. ``n_sinkhorn``, ``n_newton``, ``cg_iterations``,
    ``plan_sparse``); ``keys()`` lists every field present.
    """

    _core = (
        "method", "status", "converged", "message", "n_iter", "marginal_error", "cost", "value",
        "epsilon", "f", "g", "errors",
    )

    def __init__(
        self,
        *,
        method: str,
        f: Any,
        g: Any,
        cost: float,
        value: float,
        converged: bool,
        n_iter: int,
        marginal_error: float,
        errors: Any,
        message: str,
        status: str,
        epsilon: float | None = None,
        plan: Any = None,
        plan_fn: Callable[[], Any] | None = None,
        **extra: Any,
    ) -> None:
        self.method = method
        self.f = f
        self.g = g
        self.cost = float(cost)
        self.value = float(value)
        self.converged = bool(converged)
        self.n_iter = int(n_iter)
        self.marginal_error = float(marginal_error)
        self.errors = np.asarray(errors, dtype=float)
        self.message = message
        self.status = status
        self.epsilon = epsilon
        self.potentials_convention = POTENTIALS_CONVENTION
        self._plan = plan
        self._plan_fn = plan_fn
        self._extra = dict(extra)

    @property
    def plan(self) -> Any:
        """Dense transport plan (computed lazily from the potentials when needed)."""
        if self._plan is None:
            if self._plan_fn is None:
                raise AttributeError("this result has no plan")
            self._plan = self._plan_fn()
        return self._plan

    def to_namespace(self, xp: Any) -> "OTResult":
        """The same result with its arrays (potentials, plan, batch fields) in array library ``xp``."""
        import copy  # noqa: PLC0415

        def move(v: Any) -> Any:
            if not hasattr(v, "shape") or isinstance(v, (float, int)):
                return v
            if type(v).__module__.split(".", 1)[0] not in ("numpy", "cupy"):
                return v
            return xp.asarray(v.get() if hasattr(v, "get") else v)

        new = copy.copy(self)
        new.f, new.g = move(self.f), move(self.g)
        fn = self._plan_fn
        new._plan = None if self._plan is None else move(self._plan)
        new._plan_fn = None if fn is None else (lambda: move(fn()))
        new._extra = dict(self._extra)
        # per-problem diagnostics (converged_each, n_iter_each, ...) stay NumPy arrays, as on every backend
        new._extra["backend"] = "cupy" if xp.__name__ == "cupy" else "numpy"
        return new

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or "_extra" not in self.__dict__:  # copy / pickle probing a bare instance
            raise AttributeError(name)
        extra = self.__dict__["_extra"]
        if name in extra:
            return extra[name]
        raise AttributeError(f"OTResult has no field {name!r}; fields: {sorted(self.keys())}")

    def keys(self) -> list[str]:
        return list(self._core) + ["plan"] + list(self._extra)

    def __getitem__(self, name: str) -> Any:
        return getattr(self, name)

    def __repr__(self) -> str:
        def fmt(v: Any) -> str:
            if isinstance(v, float):
                return f"{v:.6g}"
            if hasattr(v, "shape") and getattr(v, "ndim", 0) > 0:
                return f"<array shape={tuple(v.shape)} dtype={v.dtype}>"
            return repr(v)

        rows = [(k, getattr(self, k)) for k in self._core]
        rows += sorted(self._extra.items())
        width = max(len(k) for k, _ in rows)
        body = "\n".join(f"  {k.rjust(width)}: {fmt(v)}" for k, v in rows)
        return f"OTResult(\n{body}\n)"
