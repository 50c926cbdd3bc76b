"""Array backends: NumPy on the CPU, CuPy (with otsolve's CUDA kernels) on NVIDIA GPUs.

The solvers' drivers are device-independent; the kernel sets they run on live here
(:mod:`.kernel_sets`: host C++ / NumPy reference; :mod:`.cupy_sinkhorn`: CUDA through CuPy).

Dispatch is by array type, as in POT's backends and the array API: NumPy in -> NumPy out, CuPy in
-> CuPy out on the same device. CuPy is optional; nothing here imports it unless a CuPy array is
seen (or :func:`cupy_available` is asked).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["get_namespace", "is_cupy", "to_numpy", "cupy_available", "BatchedLinearProblem",
           "BatchedSinkhorn"]


def is_cupy(x: Any) -> bool:
    """True when ``x`` is a CuPy array (checked by type, without importing CuPy)."""
    return type(x).__module__.split(".", 1)[0] == "cupy"


def get_namespace(*arrays: Any):
    """Array namespace (``numpy`` or ``cupy``) shared by ``arrays``.

    ``None`` entries and Python / NumPy scalars are ignored; with nothing left the namespace is
    NumPy. Mixing NumPy and CuPy arrays raises ``ValueError`` (an implicit device transfer would
    hide a bug or a large copy), as POT's ``get_backend`` does.
    """
    kinds = set()
    for a in arrays:
        if a is None or isinstance(a, (int, float, complex, bool, np.generic)):
            continue
        kinds.add("cupy" if is_cupy(a) else "numpy")
    if len(kinds) > 1:
        raise ValueError("mixed NumPy and CuPy arrays; move them to one device first "
                         "(cupy.asarray(x) or cupy.asnumpy(x))")
    if kinds == {"cupy"}:
        import cupy  # noqa: PLC0415  (optional dependency)

        return cupy
    return np


def to_numpy(x: Any) -> np.ndarray:
    """A NumPy copy of a CuPy array; NumPy input (or anything array-like) as ``np.asarray``."""
    if is_cupy(x):
        return x.get()
    return np.asarray(x)


def cupy_available() -> bool:
    """True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy  # noqa: PLC0415

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError (no driver), ...
        return False


def __getattr__(name: str) -> Any:  # lazy, kept for existing imports: these live with the problems / solvers
    if name == "BatchedLinearProblem":
        from ..problems import BatchedLinearProblem  # noqa: PLC0415

        return BatchedLinearProblem
    if name == "BatchedSinkhorn":
        from ..solvers.sinkhorn import BatchedSinkhorn  # noqa: PLC0415

        return BatchedSinkhorn
    raise AttributeError(f"module 'otsolve.backends' has no attribute {name!r}")
