"""Helmholtz -∇·(K∇u) - k(x)² u = f with random coefficient and variable wavenumber."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .._validation import check_positive_int
from ._assemble import diffusion_matrix
from ._grf import gaussian_random_field
from ._system import PDESystem
from .darcy import _rng

__all__ = ["helmholtz"]


def helmholtz(grid: int = 64, seed=None, *, k_range: tuple[float, float] = (4.0, 8.0),
              k_variation: float = 0.2, alpha: float = 2.5, tau: float = 7.0,
              f: float = 1.0) -> PDESystem:
    """One Helmholtz system ``A = A_Darcy(K) - h² diag(k(x)²)`` on an s×s node grid.

    ``K = exp(GRF)``; the wavenumber field is ``k(x) = k0 exp(k_variation · g(x))`` with
    ``k0 ~ U(k_range)`` and ``g`` a second GRF. The matrix is symmetric; it is indefinite once
    ``k²`` exceeds the smallest eigenvalue of the diffusion operator (≈ 2π² min K on the unit
    square), which the default range reaches for many samples: use GCRO-DR, not CG.
    The sorting key is ``[K, k(x)]`` flattened (Wang et al. use ‖w_i − w_j‖ + |k_i − k_j|).
    """
    s = check_positive_int(grid, "grid", minimum=3)
    lo, hi = float(k_range[0]), float(k_range[1])
    if not (0 <= lo <= hi) or not np.isfinite(hi):
        raise ValueError(f"k_range must be 0 <= low <= high, got {k_range!r}")
    rng = _rng(seed)
    K = np.exp(gaussian_random_field((s, s), rng, alpha=alpha, tau=tau))
    k0 = rng.uniform(lo, hi)
    kf = k0 * np.exp(k_variation * gaussian_random_field((s, s), rng, alpha=alpha, tau=tau))
    h = 1.0 / (s - 1)
    A, b = diffusion_matrix(K, f, h)
    A = (A - sp.diags(h * h * (kf[1:-1, 1:-1] ** 2).ravel())).tocsr()
    return PDESystem(A=A, b=b, params=np.concatenate([K.ravel(), kf.ravel()]),
                     inputs=np.stack([K, kf]), grid=s, dim=2,
                     meta={"family": "helmholtz", "k0": k0, "k_variation": k_variation, "f": f})
