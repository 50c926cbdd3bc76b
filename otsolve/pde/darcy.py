"""Darcy flow -∇·(K∇u) = f, K = exp(Gaussian random field), on the unit square or cube."""
from __future__ import annotations

import numpy as np

from .._validation import check_positive_int
from ._assemble import diffusion_matrix
from ._grf import gaussian_random_field
from ._system import PDESystem

__all__ = ["darcy", "darcy3d"]


def _rng(seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def darcy(grid: int = 64, seed=None, *, alpha: float = 2.5, tau: float = 7.0, f: float = 1.0,
          mean: str = "harmonic", dim: int = 2) -> PDESystem:
    """One Darcy system on an s×s (``dim=2``) or s×s×s (``dim=3``) node grid.

    Symmetric 5-point (7-point in 3-D) finite-volume stencil with harmonic-mean face
    coefficients, Dirichlet u = 0, ``h = 1/(s-1)``: the matrix is SPD (use recycled CG or
    GCRO-DR). The sorting key is the full field ``K`` (as in Wang et al., ICLR 2024), copied.

    Parameters
    ----------
    grid : int
        Nodes per side ``s`` (``(s-2)^dim`` unknowns).
    seed : int, sequence or numpy Generator
    alpha, tau : float
        GRF spectrum ``(-Δ + τ²)^(-α)``.
    f : float
        Constant source.
    mean : {"harmonic", "arithmetic"}
        Face average of K (both symmetric).
    """
    s = check_positive_int(grid, "grid", minimum=3)
    if dim not in (2, 3):
        raise ValueError(f"dim must be 2 or 3, got {dim!r}")
    rng = _rng(seed)
    K = np.exp(gaussian_random_field((s,) * dim, rng, alpha=alpha, tau=tau))
    h = 1.0 / (s - 1)
    A, b = diffusion_matrix(K, f, h, mean=mean)
    return PDESystem(A=A, b=b, params=K.ravel().copy(), inputs=K[None], grid=s, dim=dim,
                     meta={"family": "darcy", "alpha": alpha, "tau": tau, "f": f, "mean": mean})


def darcy3d(grid: int = 32, seed=None, **kw) -> PDESystem:
    """3-D Darcy (s×s×s nodes, 7-point stencil): where sparse direct solvers start to hurt."""
    return darcy(grid, seed, dim=3, **kw)
