"""Parametrised PDE families for neural-operator data: each sample is a sparse system A u = b.

``darcy`` (2-D / 3-D, SPD), ``helmholtz`` (symmetric, indefinite for large wavenumbers),
``poisson`` (fixed matrix, random source and boundary data). Every generator returns a
:class:`PDESystem` with the matrix, right-hand side and the parameters used as the SKR
sorting key. ``make_system(family, grid, index, seed)`` makes sample ``index`` of a
reproducible stream (what the data pipeline and its workers use).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from ._assemble import diffusion_matrix, to_grid
from ._grf import gaussian_random_field
from ._system import PDESystem
from .darcy import darcy, darcy3d
from .helmholtz import helmholtz
from .poisson import poisson

__all__ = ["PDESystem", "darcy", "darcy3d", "helmholtz", "poisson", "make_system", "FAMILIES",
           "gaussian_random_field", "diffusion_matrix", "to_grid"]

FAMILIES = {"darcy": darcy, "darcy3d": darcy3d, "helmholtz": helmholtz, "poisson": poisson}


def make_system(family: str, grid: int, index: int, seed: int = 0, **options: Any) -> PDESystem:
    """Sample ``index`` of family ``family``: a pure function of (family, grid, seed, index, options)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown PDE family {family!r}; choose from {sorted(FAMILIES)}")
    rng = np.random.default_rng([int(seed), int(index)])
    return FAMILIES[family](grid, rng, **options)
