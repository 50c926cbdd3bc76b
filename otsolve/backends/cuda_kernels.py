"""Load otsolve's CUDA sources (``csrc/cuda/*.cu``) with ``cupy.RawModule``.

Sources are compiled by NVRTC at first use and cached: in memory per (source, device) here, and
on disk by CuPy (``~/.cupy/kernel_cache``, keyed by the full source text and options). Templated
kernels are instantiated for float32 and float64 through ``name_expressions``.

The sources are looked up in the installed package (``otsolve/_cuda_src``, where CMake installs
them) first, then in the source tree (``<repo>/csrc/cuda``) for editable installs.
"""
from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["source_dir", "load_source", "get_kernel", "ctype", "KERNELS"]

_PKG_DIR = Path(__file__).resolve().parent.parent

# source file -> templated kernel names and their extra template arguments
KERNELS: dict[str, list[tuple[str, tuple[str, ...]]]] = {
    "sinkhorn.cu": [
        ("row_pass_dense", ()),
        ("col_partial_dense", ()),
        ("col_finalize", ()),
        ("row_pass_pointcloud", ()),
        ("translate_pass", ()),
    ],
    "sns.cu": [
        ("topk_rows_dense", ("8",)),
        ("topk_rows_dense", ("16",)),
        ("topk_rows_dense", ("32",)),
        ("topk_rows_pointcloud", ("8",)),
        ("topk_rows_pointcloud", ("16",)),
        ("topk_rows_pointcloud", ("32",)),
        ("hess_matvec_csr", ()),
        ("plan_rows_dense", ()),
        ("plan_cols_dense", ()),
        ("plan_rows_pointcloud", ()),
        ("plan_cols_pointcloud", ()),
    ],
}

_CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
_lock = threading.Lock()
_modules: dict[tuple[str, int], Any] = {}


def ctype(dtype) -> str:
    """C type name of a NumPy/CuPy floating dtype (ValueError for anything else)."""
    try:
        return _CTYPES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"CUDA kernels support float32 and float64, got {np.dtype(dtype)}") from None


def source_dir() -> Path:
    """Directory holding the .cu sources (installed copy first, then the source tree)."""
    for d in (_PKG_DIR / "_cuda_src", _PKG_DIR.parent / "csrc" / "cuda"):
        if (d / "sinkhorn.cu").is_file():
            return d
    raise FileNotFoundError(
        "otsolve's CUDA sources were not found (looked in otsolve/_cuda_src and csrc/cuda); "
        "reinstall otsolve")


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.M)


def load_source(name: str) -> str:
    """Text of ``name`` with its local ``#include "x.cuh"`` lines pasted in (so CuPy's cache key
    covers the headers too)."""
    d = source_dir()
    seen: set[str] = set()

    def expand(fname: str) -> str:
        text = (d / fname).read_text()

        def repl(m: re.Match) -> str:
            inc = m.group(1)
            if inc in seen:
                return ""
            seen.add(inc)
            return expand(inc)

        return _INCLUDE.sub(repl, text)

    # a pasted header's `#pragma once` would warn in the main file
    return re.sub(r"^\s*#\s*pragma\s+once\s*$", "", expand(name), flags=re.M)


def _name_expressions(source: str) -> list[str]:
    out = []
    for kname, extra in KERNELS[source]:
        for t in ("float", "double"):
            out.append(f"{kname}<{', '.join((t,) + extra)}>")
    return out


def _module(source: str):
    import cupy  # noqa: PLC0415

    dev = cupy.cuda.Device().id
    key = (source, dev)
    with _lock:
        mod = _modules.get(key)
        if mod is None:
            mod = cupy.RawModule(code=load_source(source), options=("-std=c++14",),
                                 name_expressions=_name_expressions(source))
            _modules[key] = mod
    return mod


def get_kernel(source: str, name: str, dtype, *extra: Any):
    """The compiled kernel ``name<ctype(dtype), *extra>`` from ``source`` (e.g. ``"sinkhorn.cu"``)."""
    expr = f"{name}<{', '.join((ctype(dtype),) + tuple(str(e) for e in extra))}>"
    return _module(source).get_function(expr)
