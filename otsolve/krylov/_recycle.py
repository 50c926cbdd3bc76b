"""The recycled subspace carried from one linear system to the next."""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["RecycleSpace"]


class RecycleSpace:
    """A recycled Krylov subspace, passed in and out of :func:`gcrodr` / :func:`rcg`.

    Vectors are stored as rows (contiguous for the block products of the inner iteration).

    Attributes
    ----------
    U : ndarray (k, n) or None
        Basis of the recycled space in solution space. For GCRO-DR ``A U^T = C^T`` for the
        matrix ``A`` the space was last used with; for recycled CG it is the deflation space W.
    C : ndarray (k, n) or None
        GCRO-DR only: orthonormal rows spanning ``A U``; rebuilt (k mat-vecs and an n x k QR)
        whenever the matrix changes.
    U_pre : ndarray (k, n) or None
        GCRO-DR with a right preconditioner ``M``: the same space in preconditioned
        coordinates (``U = M^{-1} U_pre``), used in the harmonic-Ritz refresh. If ``M`` changes
        between systems the old ``U_pre`` is kept as an approximation: it only steers which
        subspace is kept, never the correctness of the solution.
    last_stats : SolveStats or None
        Counters of the last solve that used this space.

    Notes
    -----
    ``C = A U`` is reused without recomputation when the *same object* ``A`` is passed again;
    after modifying a matrix in place, pass a new object or call :meth:`reset` (a stale ``C``
    is caught by the final true-residual check, but costs a failed solve).
    """

    def __init__(self) -> None:
        self.U: np.ndarray | None = None
        self.C: np.ndarray | None = None
        self.U_pre: np.ndarray | None = None
        self.AU: np.ndarray | None = None  # recycled CG: A W (rows)
        self.A_ref: Any = None
        self.M_ref: Any = None
        self.method: str | None = None
        self.last_stats = None

    @property
    def k(self) -> int:
        """Current dimension of the recycled space (0 when empty)."""
        return 0 if self.U is None else int(self.U.shape[0])

    def reset(self) -> None:
        """Forget the space (the next solve starts like plain GMRES-DR / CG)."""
        self.__init__()

    def __repr__(self) -> str:
        n = None if self.U is None else self.U.shape[1]
        return f"RecycleSpace(method={self.method!r}, k={self.k}, n={n})"
