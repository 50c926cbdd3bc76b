"""Poisson ∇²u = f with random Chebyshev source and Dirichlet data (fixed matrix, varying b)."""
from __future__ import annotations

import numpy as np
from numpy.polynomial import chebyshev as cheb

from .._validation import check_positive_int
from ._assemble import diffusion_matrix
from ._system import PDESystem
from .darcy import _rng

__all__ = ["poisson"]


def poisson(grid: int = 64, seed=None, *, degree: int = 5) -> PDESystem:
    """One Poisson system -∇²u = f on the unit square, 5-point stencil, Dirichlet u = g.

    As in Wang et al. (ICLR 2024): f and the four edge data are truncated Chebyshev series
    with coefficients ~ U(-1, 1); the key is the (5, degree+1) coefficient array (row 0: f,
    rows 1-4: bottom, top, left, right edges). Here f(x, y) = Σ_i a_i T_i(x̂) T_i(ŷ) on
    [-1, 1]². Only the right-hand side varies: the matrix is the same for every sample, so a
    factorisation reused for every right-hand side is the fair baseline.
    """
    s = check_positive_int(grid, "grid", minimum=3)
    deg = check_positive_int(degree, "degree", minimum=0)
    rng = _rng(seed)
    coef = rng.uniform(-1.0, 1.0, size=(5, deg + 1))
    t = np.linspace(-1.0, 1.0, s)
    X, Y = np.meshgrid(t, t, indexing="ij")
    F = sum(coef[0, i] * cheb.chebval(X, np.eye(deg + 1)[i]) * cheb.chebval(Y, np.eye(deg + 1)[i])
            for i in range(deg + 1))
    g = np.zeros((s, s))
    g[:, 0] = cheb.chebval(t, coef[1])   # y = 0 edge
    g[:, -1] = cheb.chebval(t, coef[2])  # y = 1 edge
    g[0, :] = cheb.chebval(t, coef[3])   # x = 0 edge
    g[-1, :] = cheb.chebval(t, coef[4])  # x = 1 edge
    h = 1.0 / (s - 1)
    A, b = diffusion_matrix(np.ones((s, s)), F, h, g=g)
    bnd = g.copy()
    bnd[1:-1, 1:-1] = 0.0
    return PDESystem(A=A, b=b, params=coef.ravel().copy(), inputs=np.stack([F, bnd]), grid=s, dim=2,
                     boundary=bnd, meta={"family": "poisson", "degree": deg})
