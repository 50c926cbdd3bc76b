"""Kernel dispatch: compiled C++ kernels when built, the NumPy references otherwise.

Every compiled kernel has a NumPy reference in :mod:`otsolve.kernels.reference` with the same
signature; ``get_sinkhorn_kernels(compiled=False)`` returns the reference (tests use both).
"""
from __future__ import annotations

from types import ModuleType

from . import reference

__all__ = ["get_sinkhorn_kernels", "HAVE_COMPILED", "reference"]

try:  # built by `pip install .` from csrc/_ext_sinkhorn.cpp
    from .. import _ext_sinkhorn as _compiled_sinkhorn

    HAVE_COMPILED = True
except ImportError:  # pragma: no cover - source checkout without a build
    _compiled_sinkhorn = None
    HAVE_COMPILED = False


_warned = False


def get_sinkhorn_kernels(compiled: bool = True) -> ModuleType:
    """Module with ``sinkhorn_dense``, ``sinkhorn_pointcloud``, ``plan_stats_*``.

    Without a build (e.g. importing from a source checkout) the NumPy references are used, with
    one warning: they give the same answers, orders of magnitude slower.
    """
    global _warned
    if compiled and _compiled_sinkhorn is not None:
        return _compiled_sinkhorn
    if compiled and not _warned:
        import warnings

        warnings.warn(
            "otsolve's compiled kernels are not available (a source checkout without a build?); "
            "using the slow NumPy reference. Install with `pip install .`.",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned = True
    return reference
