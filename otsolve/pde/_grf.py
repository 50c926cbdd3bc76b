"""Gaussian random fields with a Matérn-like spectrum (-Δ + τ²)^(-α), sampled by a DCT."""
from __future__ import annotations

import numpy as np
import scipy.fft

__all__ = ["gaussian_random_field"]


def gaussian_random_field(shape: tuple[int, ...], rng: np.random.Generator, alpha: float = 2.5,
                          tau: float = 7.0) -> np.ndarray:
    """Sample a zero-mean GRF on a node grid of ``shape`` over the unit cube.

    Covariance ``τ^(2α-d) (-Δ + τ² I)^(-α)`` with Neumann boundary conditions (cosine
    basis), the family used for the Darcy data of the Fourier Neural Operator and of SKR
    (Wang et al., ICLR 2024: α = 2.5, τ = 7).
    """
    d = len(shape)
    if alpha <= d / 2:
        raise ValueError(f"alpha must exceed d/2 = {d / 2} for a well-defined field, got {alpha}")
    if tau <= 0:
        raise ValueError(f"tau must be positive, got {tau}")
    grids = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    lam = np.pi ** 2 * sum(g.astype(float) ** 2 for g in grids) + tau ** 2
    sqrt_eig = (tau ** (alpha - d / 2.0)) * lam ** (-alpha / 2.0)
    sqrt_eig.flat[0] = 0.0  # zero mean
    coef = sqrt_eig * rng.standard_normal(shape) * np.sqrt(np.prod(shape))
    # orthonormal inverse DCT-II: unit-variance coefficients map to a field of the same scale
    return scipy.fft.idctn(coef, type=2, norm="ortho")
