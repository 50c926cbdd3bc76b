"""Dataset layouts (names and shapes of the stored arrays) and the self-description of a file.

Two layouts:

``otsolve`` (default)
    ``inputs`` (N, c, s, ..., s) and ``solutions`` (N, s, ..., s).
``pdebench``
    The names and shapes of PDEBench's 2-D Darcy files (Takamoto et al., NeurIPS 2022
    Datasets and Benchmarks): ``nu`` (N, s, s) the coefficient field, ``tensor`` (N, 1, s, s)
    the solution (axis 1 is PDEBench's time axis, of length 1 for a steady problem),
    ``x-coordinate`` and ``y-coordinate`` (s,). PDEBench's loaders read such a file as is.

Both layouts also store ``x-coordinate`` / ``y-coordinate`` (``z-coordinate`` in 3-D) and the
bookkeeping arrays of the pipeline (``done``, ``order``, ``iterations``, ...). Every file carries
a JSON ``description`` attribute: the equation, the domain and grid, the meaning and units of each
channel, the axis order, and the generator settings.
"""
from __future__ import annotations

import json
from typing import Any

import numpy as np

__all__ = ["LAYOUTS", "field_names", "field_shapes", "to_layout", "from_layout", "coordinates",
           "describe", "check_layout"]

LAYOUTS = ("otsolve", "pdebench")
_AXES = "xyz"


def check_layout(layout: str, family: str) -> str:
    """Validate ``layout`` for ``family`` (ValueError naming the parameter otherwise)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "pdebench" and family != "darcy":
        raise ValueError(f"layout 'pdebench' exists for the family PDEBench has (darcy), not {family!r}; "
                         "use --layout otsolve")
    return layout


def field_names(layout: str) -> tuple[str, str]:
    """Names of the (inputs, solutions) arrays in ``layout``."""
    return ("nu", "tensor") if layout == "pdebench" else ("inputs", "solutions")


def field_shapes(layout: str, N: int, input_shape: tuple[int, ...],
                 sol_shape: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Stored shapes of (inputs, solutions) for N samples."""
    if layout == "pdebench":
        if input_shape[0] != 1:
            raise ValueError(f"layout 'pdebench' stores one input channel, this family has {input_shape[0]}")
        return (N,) + tuple(input_shape[1:]), (N, 1) + tuple(sol_shape)
    return (N,) + tuple(input_shape), (N,) + tuple(sol_shape)


def to_layout(layout: str, inputs: np.ndarray, solutions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Canonical (n, c, s..), (n, s..) arrays -> the arrays stored in ``layout``."""
    if layout == "pdebench":
        return inputs[:, 0], solutions[:, None]
    return inputs, solutions


def from_layout(layout: str, inputs: np.ndarray, solutions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Stored arrays -> canonical ``inputs`` (n, c, s..) and ``solutions`` (n, s..)."""
    if layout == "pdebench":
        return inputs[:, None], solutions[:, 0]
    return inputs, solutions


def coordinates(grid: int, dim: int) -> dict[str, np.ndarray]:
    """Node coordinates along each axis: ``s`` points from 0 to 1 (boundary included)."""
    x = np.linspace(0.0, 1.0, grid)
    return {f"{_AXES[a]}-coordinate": x.copy() for a in range(dim)}


def _channels(family: str, options: dict) -> tuple[list[dict], dict, str]:
    grf = (f"exp(GRF), GRF with covariance (-Laplacian + tau^2)^(-alpha), alpha={options.get('alpha')}, "
           f"tau={options.get('tau')}")
    if family in ("darcy", "darcy3d"):
        return ([{"name": "K", "meaning": "diffusion coefficient (permeability) " + grf, "units": "dimensionless"}],
                {"name": "u", "meaning": "pressure (potential), u = 0 on the boundary", "units": "dimensionless"},
                f"-div(K grad u) = f with f = {options.get('f')}, u = 0 on the boundary")
    if family == "helmholtz":
        return ([{"name": "K", "meaning": "diffusion coefficient " + grf, "units": "dimensionless"},
                 {"name": "k", "meaning": "wavenumber field k0 exp(k_variation GRF), k0 ~ U(k_range), "
                  f"k_range={options.get('k_range')}, k_variation={options.get('k_variation')}",
                  "units": "radians per unit length (the domain side is 1)"}],
                {"name": "u", "meaning": "wave field, u = 0 on the boundary", "units": "dimensionless"},
                f"-div(K grad u) - k(x)^2 u = f with f = {options.get('f')}, u = 0 on the boundary")
    if family == "poisson":
        return ([{"name": "f", "meaning": "source, a Chebyshev series with U(-1, 1) coefficients, "
                  f"degree {options.get('degree')}", "units": "dimensionless"},
                 {"name": "g", "meaning": "Dirichlet data on the boundary nodes (0 in the interior)",
                  "units": "dimensionless"}],
                {"name": "u", "meaning": "potential, u = g on the boundary", "units": "dimensionless"},
                "-Laplacian u = f, u = g on the boundary")
    raise ValueError(f"unknown PDE family {family!r}")


def describe(family: str, grid: int, dim: int, options: dict, settings: dict[str, Any], layout: str) -> dict:
    """The self-description stored (as JSON) in the ``description`` attribute of every file."""
    chans, sol, eq = _channels(family, options)
    inp_name, sol_name = field_names(layout)
    axes = ", ".join(_AXES[:dim])
    if layout == "pdebench":
        inp_axes, sol_axes = f"(sample, {axes})", f"(sample, t (length 1: steady), {axes})"
    else:
        inp_axes, sol_axes = f"(sample, channel, {axes})", f"(sample, {axes})"
    return {
        "family": family,
        "equation": eq,
        "domain": [[0.0, 1.0]] * dim,
        "units": "nondimensional: lengths in units of the domain side, fields as listed per channel",
        "grid": {"nodes_per_side": grid, "spacing": 1.0 / (grid - 1), "dim": dim,
                 "nodes": "uniform, boundary nodes included: x_i = i / (s - 1)",
                 "discretisation": "symmetric finite-volume 5-point (7-point in 3-D) stencil"},
        "layout": layout,
        "arrays": {
            inp_name: {"axes": inp_axes, "channels": chans},
            sol_name: {"axes": sol_axes, **sol},
            "done": "True once the sample's data is written and flushed",
            "order": "solve order (sorted for Krylov recycling); row p of a Zarr store holds sample order[p]",
            "iterations": "Krylov iterations of the solve", "matvecs": "matrix-vector products of the solve",
            "residual": "true relative residual ||b - A u|| / ||b|| of the stored float64 solve",
            "converged": "residual <= tol", "solve_time": "seconds (solver only)",
        },
        "generator": {k: v for k, v in settings.items() if k != "options"} | {"options": options},
        "software": "otsolve.datagen",
    }


def describe_json(*args, **kw) -> str:
    return json.dumps(describe(*args, **kw), sort_keys=True)
