"""``RawModule`` / ``RawKernel`` of the CUDA emulator: CUDA C++ compiled by g++, run on the CPU.

The source is compiled as C++17 with ``cuda_emu.hpp`` force-included, plus one ``extern "C"``
launcher per kernel (name expression). Compiled libraries are cached on disk, keyed by the hash
of the source, the header and the launchers (``$OTSOLVE_CUDA_EMULATOR_CACHE``, default
``~/.cache/otsolve/cuda_emulator``).

A launch checks what real CUDA silently misreads: every argument's kind and size against the
kernel parameter (CuPy passes a Python ``int`` as a 64-bit integer and a ``float`` as a double,
so an ``int`` parameter fed a Python int is reported), every array's element type against the
pointer's, and that arrays are C-contiguous (otsolve's kernels index them densely).
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np

__all__ = ["RawModule", "RawKernel", "CUDAEmulatorError", "compiler", "cache_dir", "sanitize"]

_HEADER = Path(__file__).with_name("cuda_emu.hpp")
_KIND = {"i": 1, "u": 2, "f": 3, "b": 4}
_lock = threading.Lock()


class CUDAEmulatorError(RuntimeError):
    """A launch that real CUDA would reject, or kernel behaviour that is undefined on a GPU."""


def compiler() -> str | None:
    """The C++ compiler the emulator uses (``$CXX`` or g++), or None when there is none."""
    return shutil.which(os.environ.get("CXX", "g++"))


def sanitize() -> bool:
    """True when kernels are built with AddressSanitizer (``OTSOLVE_CUDA_EMULATOR_SANITIZE=1``;
    the Python process must then run with ``LD_PRELOAD`` of the compiler's ``libasan.so``)."""
    return os.environ.get("OTSOLVE_CUDA_EMULATOR_SANITIZE", "") not in ("", "0")


def cache_dir() -> Path:
    """Directory of the compiled kernel libraries."""
    env = os.environ.get("OTSOLVE_CUDA_EMULATOR_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "otsolve" / "cuda_emulator"


def _launchers(exprs: Sequence[str]) -> str:
    out = ["\n// ---- emulator launchers ----"]
    for i, e in enumerate(exprs):
        out.append(
            f'extern "C" int otsemu_launch_{i}(const unsigned* gb, const int* info, void** args, int nargs, '
            f"char* err, int errlen) {{ return otsemu::launch(&{e}, gb, info, args, nargs, err, errlen); }}")
    return "\n".join(out) + "\n"


def _build(code: str, exprs: Sequence[str], options: Sequence[str]) -> ctypes.CDLL:
    cxx = compiler()
    if cxx is None:
        raise CUDAEmulatorError("the CUDA emulator needs a C++ compiler (g++ or $CXX); none was found")
    text = code + _launchers(exprs)
    defines = [o for o in options if o.startswith(("-D", "-I"))]  # NVRTC options that mean the same to g++
    if sanitize():
        defines += ["-fsanitize=address", "-fno-omit-frame-pointer", "-DOTSEMU_ASAN"]
    key = hashlib.sha256("\0".join([text, _HEADER.read_text(), *defines]).encode()).hexdigest()[:24]
    d = cache_dir()
    d.mkdir(parents=True, exist_ok=True)
    lib = d / f"kern_{key}.so"
    with _lock:
        if not lib.exists():
            with tempfile.TemporaryDirectory(dir=d) as tmp:
                src = Path(tmp) / "module.cpp"
                src.write_text(text)
                out = Path(tmp) / "module.so"
                cmd = [cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-w", "-fno-strict-aliasing",
                       "-include", str(_HEADER), *defines, str(src), "-o", str(out)]
                proc = subprocess.run(cmd, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise CUDAEmulatorError("compiling the CUDA source for the emulator failed:\n"
                                            + proc.stderr[-4000:])
                os.replace(out, lib)  # atomic: a concurrent process sees a whole library or none
    return ctypes.CDLL(str(lib))


def _marshal(args: Sequence[Any]):
    """(info int32 array (n, 4), void** array, keep-alive list) for the launcher."""
    from .array import ndarray  # noqa: PLC0415

    n = len(args)
    info = np.zeros((max(n, 1), 4), dtype=np.int32)
    ptrs = (ctypes.c_void_p * max(n, 1))()
    keep: list[Any] = []
    for i, a in enumerate(args):
        if isinstance(a, ndarray):
            arr = a._a
            if not arr.flags.c_contiguous:
                raise CUDAEmulatorError(f"argument {i}: array of shape {arr.shape} is not C-contiguous; the "
                                        "kernel would read it as if it were")
            if arr.dtype.kind not in _KIND:
                raise CUDAEmulatorError(f"argument {i}: unsupported array dtype {arr.dtype}")
            cell = ctypes.c_void_p(arr.ctypes.data)
            info[i] = (0, 8, _KIND[arr.dtype.kind], arr.dtype.itemsize)
        elif isinstance(a, np.ndarray):
            raise TypeError(f"argument {i}: Unsupported type {type(a)} (a NumPy array cannot be passed to a "
                            "CUDA kernel; use cupy.asarray)")
        elif isinstance(a, (np.generic, bool, int, float)):
            # CuPy's conversions of Python scalars: bool -> bool, int -> int64, float -> float64
            py_type = np.bool_ if isinstance(a, bool) else np.int64 if isinstance(a, int) else np.float64
            v = np.asarray(a if isinstance(a, np.generic) else py_type(a))
            if v.dtype.kind not in _KIND:
                raise CUDAEmulatorError(f"argument {i}: unsupported scalar type {v.dtype}")
            cell = ctypes.create_string_buffer(v.tobytes(), v.dtype.itemsize)
            info[i] = (_KIND[v.dtype.kind], v.dtype.itemsize, 0, 0)
        else:
            raise TypeError(f"argument {i}: Unsupported type {type(a)}")
        keep.append(cell)
        ptrs[i] = ctypes.addressof(cell)
    return info, ptrs, keep


class RawKernel:
    """One compiled kernel; call it as ``kernel(grid, block, args)`` like ``cupy.RawKernel``."""

    def __init__(self, code: str | None = None, name: str | None = None, options: Sequence[str] = (),
                 *, _module: "RawModule | None" = None, **kwargs: Any) -> None:
        if _module is None:  # cupy.RawKernel(code, name): an extern "C" kernel
            _module = RawModule(code=code, options=options, name_expressions=[name])
        self._mod = _module
        self.name = name
        self.code = _module.code
        self.options = tuple(options)

    def __call__(self, grid, block, args, *, shared_mem: int = 0) -> None:
        if shared_mem:
            raise CUDAEmulatorError("dynamic shared memory is not emulated")
        grid = tuple(int(v) for v in (tuple(grid) if isinstance(grid, tuple) else (grid,))) + (1, 1)
        block = tuple(int(v) for v in (tuple(block) if isinstance(block, tuple) else (block,))) + (1, 1)
        if not isinstance(args, tuple):
            raise TypeError("kernel arguments must be a tuple")  # as CuPy requires
        gb = (ctypes.c_uint * 6)(*grid[:3], *block[:3])
        info, ptrs, keep = _marshal(args)
        err = ctypes.create_string_buffer(1024)
        fn = self._mod._launcher(self.name)
        rc = fn(gb, info.ctypes.data_as(ctypes.POINTER(ctypes.c_int)), ptrs, len(args), err, 1024)
        del keep
        if rc != 0:
            raise CUDAEmulatorError(f"{self.name}: {err.value.decode(errors='replace')}")


class RawModule:
    """CUDA source compiled for the emulator, as ``cupy.RawModule`` (``name_expressions`` name
    the template instantiations ``get_function`` may return)."""

    def __init__(self, code: str | None = None, path: str | None = None, options: Sequence[str] = (),
                 backend: str = "nvrtc", translate_cucomplex: bool = False, *,
                 name_expressions: Sequence[str] | None = None, jitify: bool = False) -> None:
        if (code is None) == (path is None):
            raise TypeError("exactly one of code and path must be given")
        self.code = code if code is not None else Path(path).read_text()
        self.options = tuple(options)
        self.name_expressions = list(name_expressions or [])
        self._lib: ctypes.CDLL | None = None
        self._fns: dict[str, Any] = {}

    def _load(self) -> ctypes.CDLL:
        if self._lib is None:
            self._lib = _build(self.code, self.name_expressions, self.options)
        return self._lib

    def _launcher(self, name: str):
        fn = self._fns.get(name)
        if fn is None:
            if name not in self.name_expressions:
                # real CuPy resolves only the given name expressions (or extern "C" names)
                raise CUDAEmulatorError(f"{name!r} is not among the module's name_expressions "
                                        f"{self.name_expressions}")
            fn = getattr(self._load(), f"otsemu_launch_{self.name_expressions.index(name)}")
            fn.restype = ctypes.c_int
            fn.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_int), ctypes.c_void_p, ctypes.c_int,
                           ctypes.c_char_p, ctypes.c_int]
            self._fns[name] = fn
        return fn

    def compile(self, log_stream=None) -> None:
        """Compile now (CuPy compiles lazily too)."""
        self._load()

    def get_function(self, name: str) -> RawKernel:
        self._launcher(name)
        return RawKernel(name=name, _module=self)
