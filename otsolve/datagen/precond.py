"""Preconditioners the pipeline builds per system: the Krylov module's kinds plus AMG (pyamg)."""
from __future__ import annotations

from typing import Any

__all__ = ["PRECONDITIONERS", "ELLIPTIC", "amg_preconditioner", "build_preconditioner", "check_precond"]

PRECONDITIONERS = (None, "jacobi", "ilu", "amg")
ELLIPTIC = ("darcy", "darcy3d", "poisson")


def check_precond(precond: Any, family: str) -> str | None:
    """Validate ``precond`` for ``family`` (ValueError naming the parameter otherwise)."""
    if precond == "none":
        precond = None
    if precond not in PRECONDITIONERS:
        raise ValueError(f"precond must be one of none, jacobi, ilu, amg, got {precond!r}")
    if precond == "amg":
        if family not in ELLIPTIC:
            raise ValueError(f"precond 'amg' (smoothed aggregation) is for the elliptic families {ELLIPTIC}; "
                             f"{family!r} is indefinite: use ilu")
        try:
            import pyamg  # noqa: F401
        except ImportError:
            raise ValueError("precond 'amg' needs pyamg: pip install pyamg") from None
    return precond


def amg_preconditioner(A: Any):
    """One V-cycle of smoothed-aggregation AMG as a ``LinearOperator`` (pyamg).

    Smoothed aggregation (Vaněk, Mandel & Brezina 1996) with pyamg's defaults: symmetric
    Gauss-Seidel smoothing, so the V-cycle is symmetric positive definite for an SPD ``A`` and is
    a valid preconditioner for recycled CG as well as for GCRO-DR.
    """
    import pyamg
    import scipy.sparse as sp

    ml = pyamg.smoothed_aggregation_solver(sp.csr_matrix(A), symmetry="symmetric")
    return ml.aspreconditioner(cycle="V")


def build_preconditioner(A: Any, kind: str | None):
    """The preconditioner of one system: ``amg`` here, the rest via :func:`otsolve.krylov.make_preconditioner`."""
    from ..krylov import make_preconditioner

    return make_preconditioner(A, amg_preconditioner if kind == "amg" else kind)
