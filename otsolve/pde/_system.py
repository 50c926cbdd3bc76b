"""The record every PDE generator returns."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._assemble import to_grid

__all__ = ["PDESystem"]


@dataclass
class PDESystem:
    """One linear system ``A u = b`` from a parametrised PDE family.

    Attributes
    ----------
    A : scipy.sparse.csr_matrix, (n, n), n = (s-2)^d interior nodes
    b : ndarray (n,)
    params : ndarray (p,)
        The sorting key of SKR (flattened random parameters; never mutated).
    inputs : ndarray (c, s, ..., s)
        The input fields on the full node grid, as a neural operator sees them.
    grid : int
        Nodes per side ``s``.
    dim : int
    boundary : ndarray or None
        Dirichlet data on the full grid (None: homogeneous).
    meta : dict
        Family name and generation settings.
    """

    A: sp.csr_matrix
    b: np.ndarray
    params: np.ndarray
    inputs: np.ndarray
    grid: int
    dim: int = 2
    boundary: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def to_grid(self, u: np.ndarray) -> np.ndarray:
        """Interior solution -> full node grid including the boundary values."""
        return to_grid(np.asarray(u), self.grid, self.dim, self.boundary)

    def __iter__(self):  # (A, b, params) unpacking
        return iter((self.A, self.b, self.params))
