"""Array pass-through for front ends: any array library in, the same library, device and dtype out.

The solvers' core runs on NumPy (CPU) or CuPy (CUDA) arrays. Front ends that accept other array
libraries (PyTorch, JAX, ...) convert their inputs with :func:`to_core` and their outputs back
with :func:`from_core`; :func:`array_info` records what to convert back to. Library detection,
devices and DLPack transfers come from the maintained ``array-api-compat`` package, not from a
hand-written dispatcher.

Example::

    info = array_info(M, a, b)          # raises on mixed libraries
    M_, a_, b_ = (to_core(x) for x in (M, a, b))
    P = solve(M_, a_, b_)               # NumPy or CuPy
    return from_core(P, info)           # torch in -> torch out (same device and dtype)

CPU tensors cross zero-copy (``torch.Tensor.numpy`` / DLPack); GPU arrays go to CuPy through
DLPack when CuPy is installed, otherwise through the host.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import array_api_compat as aac
import numpy as np

__all__ = ["ArrayInfo", "array_info", "is_empty", "to_core", "to_numpy", "from_core", "requires_grad"]


@dataclass(frozen=True)
class ArrayInfo:
    """What a front end hands back: ``library`` ("numpy", "cupy", "torch", "jax", ...), the
    array-api namespace ``xp``, the reference ``device`` and ``dtype`` (of the first array)."""

    library: str
    xp: Any
    device: Any
    dtype: Any

    @property
    def on_gpu(self) -> bool:
        return self.library == "cupy" or "cuda" in str(self.device).lower() or "gpu" in str(self.device).lower()


def is_empty(x: Any) -> bool:
    """True for ``None``, ``[]``, ``()`` and arrays with no element (POT's "uniform weights")."""
    if x is None:
        return True
    if isinstance(x, (list, tuple)):
        return len(x) == 0
    return getattr(x, "size", 1) == 0 if not aac.is_torch_array(x) else x.numel() == 0


def _library(x: Any) -> str:
    for name, test in (("numpy", aac.is_numpy_array), ("cupy", aac.is_cupy_array), ("torch", aac.is_torch_array),
                       ("jax", aac.is_jax_array), ("dask", aac.is_dask_array)):
        if test(x):
            return name
    return type(x).__module__.split(".", 1)[0]


def array_info(*arrays: Any) -> ArrayInfo:
    """The library, namespace, device and dtype shared by ``arrays``.

    ``None``, empty lists, Python scalars and nested lists are ignored (lists are NumPy input);
    the first remaining array sets the device and dtype. Arrays of different libraries raise
    ``ValueError`` (an implicit transfer would hide a bug or a large copy), as POT's
    ``get_backend`` does.
    """
    real = [x for x in arrays if x is not None and not isinstance(x, (list, tuple, int, float, complex, bool))
            and not isinstance(x, np.generic) and hasattr(x, "shape")]
    if not real:
        return ArrayInfo("numpy", aac.array_namespace(np.empty(0)), "cpu", np.dtype(np.float64))
    libs = {_library(x) for x in real}
    if libs == {"numpy", "cupy"}:
        raise ValueError("mixed NumPy and CuPy arrays; move them to one device first "
                         "(cupy.asarray(x) or cupy.asnumpy(x))")
    if len(libs) > 1:
        raise ValueError(f"arrays from different libraries ({', '.join(sorted(libs))}); convert them to one "
                         "library (and device) first")
    try:
        xp = aac.array_namespace(*real)
    except TypeError as exc:
        raise ValueError(f"unsupported or mixed array types: {exc}") from None
    ref = real[0]
    return ArrayInfo(libs.pop(), xp, aac.device(ref), ref.dtype)


def requires_grad(*arrays: Any) -> bool:
    """True when any torch tensor among ``arrays`` records gradients."""
    return any(aac.is_torch_array(x) and x.requires_grad for x in arrays if x is not None)


def _cupy():
    try:
        import cupy  # noqa: PLC0415  (optional)

        return cupy
    except ImportError:
        return None


def to_core(x: Any, *, gpu: bool | None = None) -> Any:
    """``x`` as a NumPy array (CPU) or a CuPy array (GPU) for the solvers' core.

    Lists and scalars become NumPy arrays; CPU tensors are shared zero-copy (detached); GPU
    tensors/arrays go to CuPy through DLPack when CuPy imports, else through the host. ``gpu=False``
    forces a host (NumPy) copy.
    """
    if x is None:
        return None
    if aac.is_numpy_array(x) or isinstance(x, (list, tuple, int, float, np.generic)):
        return np.asarray(x)
    if aac.is_cupy_array(x):
        return x if gpu is not False else x.get()
    if aac.is_torch_array(x):
        x = x.detach()
        if x.device.type == "cpu":
            return x.resolve_conj().resolve_neg().numpy()
        cp = _cupy() if gpu is not False else None
        return cp.from_dlpack(x.contiguous()) if cp is not None else x.cpu().numpy()
    if aac.is_jax_array(x):
        import jax  # noqa: PLC0415

        if isinstance(x, jax.core.Tracer):
            raise ValueError("otsolve's solvers run outside JAX: JAX arrays pass through by value, but they cannot be "
                             "traced (jax.grad / jax.jit / jax.vmap); use PyTorch tensors for gradients")
        dev = str(aac.device(x)).lower()
        cp = _cupy() if gpu is not False and ("cuda" in dev or "gpu" in dev) else None
        return cp.from_dlpack(x) if cp is not None else np.asarray(x)
    return np.asarray(x)


def to_numpy(x: Any) -> Any:
    """A NumPy array of any supported array (host copy of device arrays)."""
    return to_core(x, gpu=False)


def from_core(y: Any, info: ArrayInfo, *, dtype: Any = None) -> Any:
    """A NumPy / CuPy array (or a Python scalar) as an array of ``info``'s library and device.

    ``dtype`` defaults to ``info.dtype`` for floating results (integer results keep theirs).
    NumPy input gives NumPy arrays back unchanged (no copy).
    """
    lib = info.library
    if y is None:
        return None
    yk: Any = y if (aac.is_numpy_array(y) or aac.is_cupy_array(y)) else np.asarray(y)
    floating = np.issubdtype(np.dtype(str(yk.dtype)), np.floating)
    want = dtype if dtype is not None else (info.dtype if floating else None)
    if lib == "numpy":
        yk = yk.get() if aac.is_cupy_array(yk) else yk
        return yk if want is None else yk.astype(want, copy=False)
    if lib == "cupy":
        cp = _cupy()
        out = cp.asarray(yk)
        return out if want is None else out.astype(want, copy=False)
    if lib == "torch":
        import torch  # noqa: PLC0415

        t = torch.from_dlpack(yk) if aac.is_cupy_array(yk) else torch.as_tensor(
            yk if yk.flags.c_contiguous else yk.copy())
        return t.to(device=info.device, dtype=want if want is not None else t.dtype)
    if lib == "jax":
        import jax  # noqa: PLC0415

        out = jax.numpy.asarray(yk.get() if aac.is_cupy_array(yk) else yk, dtype=want)
        return jax.device_put(out, info.device)
    xp = info.xp
    return xp.asarray(yk.get() if aac.is_cupy_array(yk) else yk, dtype=want)
