"""A CPU emulator of CuPy and CUDA, to run otsolve's GPU code path on a machine without a GPU.

Two parts:

* a NumPy-backed stand-in for the part of the CuPy API otsolve uses (:mod:`.array`,
  :mod:`.namespace`), strict where CuPy is strict: implicit conversion to NumPy, mixing NumPy
  and CuPy arrays, and NumPy arrays set into CuPy arrays all raise ``TypeError``;
* ``RawModule`` / ``RawKernel`` (:mod:`.rawmodule`): the CUDA sources compiled by g++ against
  ``cuda_emu.hpp``, which runs each block's threads as fibers so that barriers and warp shuffles
  are real rendezvous points, and reports deadlocks, full-mask warp operations with missing
  lanes, invalid launch configurations and kernel arguments of the wrong type.

It checks logic, indexing, synchronisation and the host/device interface; it says nothing about
speed, and float results may differ from a GPU's in the last bits (libm vs CUDA's math library).

Examples
--------
>>> import cuda_emulator
>>> with cuda_emulator.installed() as cp:          # doctest: +SKIP
...     res = otsolve.Sinkhorn()(otsolve.LinearProblem(cp.asarray(C), epsilon=0.1))

``OTSOLVE_CUDA_EMULATOR=1 python bench/gpu_check.py --quick`` runs the GPU check script on it.
"""
from __future__ import annotations

import contextlib
import platform
import sys
import types
from typing import Iterator

from .rawmodule import CUDAEmulatorError, compiler

__all__ = ["available", "modules", "install", "uninstall", "installed", "CUDAEmulatorError"]

_MODULES: dict[str, types.ModuleType] | None = None
_saved: list[dict[str, types.ModuleType | None]] = []


def available() -> bool:
    """True when the emulator can run here (an x86-64 host with a C++ compiler)."""
    return platform.machine().lower() in ("x86_64", "amd64") and compiler() is not None


def modules() -> dict[str, types.ModuleType]:
    """The emulated ``cupy`` module tree (built once; the same objects on every call)."""
    global _MODULES
    if _MODULES is None:
        from .namespace import build  # noqa: PLC0415

        _MODULES = build()
    return _MODULES


def _reset_otsolve_caches() -> None:
    # compiled kernels are cached per (source, device id): real and emulated ones must not mix
    mod = sys.modules.get("otsolve.backends.cuda_kernels")
    if mod is not None:
        mod._modules.clear()


def install() -> types.ModuleType:
    """Put the emulated CuPy in ``sys.modules`` (shadowing a real CuPy) and return it."""
    mods = modules()
    _saved.append({name: sys.modules.get(name) for name in mods})
    sys.modules.update(mods)
    _reset_otsolve_caches()
    return mods["cupy"]


def uninstall() -> None:
    """Undo the latest :func:`install`."""
    if not _saved:
        return
    for name, old in _saved.pop().items():
        if old is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = old
    _reset_otsolve_caches()


@contextlib.contextmanager
def installed() -> Iterator[types.ModuleType]:
    """Context manager: the emulated CuPy is ``import cupy`` inside the block."""
    cp = install()
    try:
        yield cp
    finally:
        uninstall()


def use_emulator() -> bool:
    """True when GPU tests must run on the emulator: ``OTSOLVE_CUDA_EMULATOR`` is set, or CuPy
    sees no CUDA device."""
    import os  # noqa: PLC0415

    from otsolve.backends import cupy_available  # noqa: PLC0415

    return os.environ.get("OTSOLVE_CUDA_EMULATOR", "") not in ("", "0") or not cupy_available()


def gpu_test_module() -> tuple[bool, types.ModuleType]:
    """``(emulated, cupy)`` for a GPU test module: the real CuPy on a CUDA machine, else the
    emulated one; skips the whole module when neither can run. Pair it with the ``cupy_backend``
    fixture of tests/conftest.py (``pytestmark = pytest.mark.usefixtures("cupy_backend")``),
    which makes the emulated CuPy ``import cupy`` for otsolve while the module's tests run."""
    import pytest  # noqa: PLC0415

    if not use_emulator():
        import cupy  # noqa: PLC0415

        return False, cupy
    if not available():
        pytest.skip("no CUDA device, and the CUDA emulator needs x86-64 and g++", allow_module_level=True)
    return True, modules()["cupy"]
