"""NumPy-backed stand-in for ``cupy.ndarray``: CuPy's host/device rules, enforced on the CPU.

The array keeps its data in a NumPy array ``_a`` (never shared with the caller's NumPy arrays:
crossing the "device" boundary always copies), so views stay views and the kernel emulator can
write through ``_a``'s raw pointer. What real CuPy refuses, this refuses too (checked against
``cupy/_core/core.pyx`` and ``_routines_indexing.pyx``):

* implicit conversion to NumPy (``np.asarray(x)``) raises ``TypeError``;
* a NumPy array as an operand of an operator, ufunc or function raises ``TypeError``
  (``Unsupported type <class 'numpy.ndarray'>``); Python and NumPy scalars are fine (NEP 50);
* ``x[basic index] = numpy_array`` raises (CuPy: ``ValueError`` from ``fill``; here an error that is
  both a ``ValueError`` and a ``TypeError``), while advanced-index assignment copies host data in,
  as CuPy does; NumPy/list *index* arrays are accepted;
* scalar results are 0-d arrays (integer indexing gives a 0-d *view*), never NumPy scalars;
* CuPy has no ``__index__``, ``__round__`` or ``__contains__``, so neither has this class;
* no floating-point warnings (a GPU raises none).
"""
from __future__ import annotations

import os
import threading
import warnings
from typing import Any, Iterator

import numpy as np

__all__ = ["ndarray", "wrap", "unwrap", "check_no_numpy", "Device", "Flags", "MemoryPointer",
           "CUDARuntimeError", "NonScalarFillError", "IMPLICIT_CONVERSION_MESSAGE", "call_numpy",
           "device_index", "host_memory"]

IMPLICIT_CONVERSION_MESSAGE = ("Implicit conversion to a NumPy array is not allowed. "
                               "Please use `.get()` to construct a NumPy array explicitly.")
_PY_SCALARS = frozenset((bool, int, float, complex))  # exact types, as CuPy's CScalar checks
_MISSING = object()
_COMPARISONS = frozenset(("greater", "greater_equal", "less", "less_equal", "equal", "not_equal"))


def _unsupported(t: type) -> TypeError:
    return TypeError(f"Unsupported type {t}")  # CuPy's kernel-argument error, verbatim


class NonScalarFillError(ValueError, TypeError):
    """``x[basic index] = host array``: CuPy raises ``ValueError`` here (its ``fill``); this is also
    a ``TypeError``, the error of every other NumPy/CuPy mix."""


class CUDARuntimeError(RuntimeError):
    """Stand-in for ``cupy_backends.cuda.api.runtime.CUDARuntimeError``."""

    def __init__(self, status: int, message: str = "") -> None:
        self.status = status
        super().__init__(message or f"CUDA runtime error {status}")


def _check_dtype(dt: np.dtype) -> np.dtype:
    # CuPy has no object, string, datetime or long-double arrays
    if dt.kind in "OSUMm" or dt.char in "gG":
        raise ValueError(f"Unsupported dtype {dt}")
    return dt


def _is_scalar(x: Any) -> bool:
    return type(x) in _PY_SCALARS or isinstance(x, np.generic)


# ------------------------------------------------------------------------------------------
# wrapping / unwrapping
def wrap(obj: Any, memo: dict[int, "ndarray"] | None = None) -> Any:
    """Wrap NumPy results as emulated arrays (no copy).

    Parameters
    ----------
    obj : Any
        A NumPy array (wrapped as is: the result shares its memory), a NumPy scalar (becomes a
        0-d array, as CuPy never returns NumPy scalars), a tuple / list of those (wrapped item by
        item), or anything else (returned unchanged).
    memo : dict, optional
        ``id(numpy array) -> emulated array`` from :func:`unwrap`: a result that *is* an input's
        buffer (``out=``, a no-op ``astype``) comes back as that input object, as in CuPy.

    Returns
    -------
    Any
    """
    if isinstance(obj, np.ndarray):
        if memo:
            hit = memo.get(id(obj))
            if hit is not None:
                return hit
        return ndarray._from(obj)
    if isinstance(obj, np.generic):
        return ndarray._from(np.asarray(obj))
    if isinstance(obj, (tuple, list)):
        items = [wrap(v, memo) for v in obj]
        if hasattr(obj, "_fields"):  # namedtuple (np.unique_all, ...)
            return type(obj)(*items)
        return type(obj)(items)
    return obj


def unwrap(obj: Any, memo: dict[int, "ndarray"] | None = None, strict: bool = False) -> Any:
    """The NumPy arrays behind emulated arrays, recursing into tuples, lists and dicts.

    Parameters
    ----------
    obj : Any
    memo : dict, optional
        Filled with ``id(numpy array) -> emulated array`` for :func:`wrap`.
    strict : bool, default False
        Raise ``TypeError`` (as CuPy does) on a plain NumPy array anywhere in ``obj``.

    Returns
    -------
    Any
    """
    if isinstance(obj, ndarray):
        if memo is not None:
            memo[id(obj._a)] = obj
        return obj._a
    if isinstance(obj, np.ndarray):
        if strict:
            raise _unsupported(np.ndarray)
        return obj
    if isinstance(obj, (tuple, list)):
        items = [unwrap(v, memo, strict) for v in obj]
        if hasattr(obj, "_fields"):
            return type(obj)(*items)
        return type(obj)(items)
    if isinstance(obj, dict):
        return {k: unwrap(v, memo, strict) for k, v in obj.items()}
    return obj


def check_no_numpy(objs: Any) -> None:
    """Raise CuPy's ``TypeError`` if a plain NumPy array is anywhere in ``objs``.

    Parameters
    ----------
    objs : Any
        An object, or tuples / lists / dicts of objects (searched recursively).

    Raises
    ------
    TypeError
        ``Unsupported type <class 'numpy.ndarray'>``.
    """
    if isinstance(objs, np.ndarray):
        raise _unsupported(np.ndarray)
    if isinstance(objs, (tuple, list)):
        for o in objs:
            check_no_numpy(o)
    elif isinstance(objs, dict):
        for o in objs.values():
            check_no_numpy(o)


def call_numpy(fn: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
    """``fn(*args, **kwargs)`` on the NumPy arrays behind emulated ones, results wrapped.

    Plain NumPy arrays among the arguments raise ``TypeError``; floating-point warnings are
    silenced (CUDA raises none).
    """
    memo: dict[int, ndarray] = {}
    a = unwrap(args, memo, strict=True)
    k = unwrap(kwargs, memo, strict=True) if kwargs else {}
    with np.errstate(all="ignore"):
        return wrap(fn(*a, **k), memo)


def _operand(x: Any) -> Any:
    """NumPy-level operand of an operator: CuPy accepts its arrays and Python/NumPy scalars."""
    if isinstance(x, ndarray):
        return x._a
    if _is_scalar(x):
        return x
    if isinstance(x, np.ndarray):
        raise _unsupported(np.ndarray)
    uf = getattr(type(x), "__array_ufunc__", _MISSING)
    if uf is None or (uf is _MISSING and getattr(x, "__array_priority__", 0) > ndarray.__array_priority__):
        return NotImplemented  # CuPy's _should_use_rop: let the other operand try
    raise _unsupported(type(x))


def _host_value(value: Any, dtype: np.dtype) -> np.ndarray:
    # CuPy's core.array(value, dtype): host data (NumPy arrays, lists, maybe holding its arrays)
    return np.asarray(unwrap(value), dtype=dtype)


def _index(key: Any) -> tuple[Any, bool]:
    """(NumPy index, has array indices). CuPy converts NumPy arrays, lists and bools in an index
    to device arrays (advanced indexing); integers, slices, None and Ellipsis stay basic."""
    items = key if isinstance(key, tuple) else (key,)
    adv = False
    out = []
    for s in items:
        if isinstance(s, ndarray):
            s, adv = s._a, True
        elif isinstance(s, (np.ndarray, list, tuple, bool, np.bool_)):
            adv = True
        out.append(s)
    return (tuple(out) if isinstance(key, tuple) else out[0]), adv


def device_index(key: Any) -> Any:
    """``key`` with host index arrays / lists copied to emulated arrays (CuPy's conversion of an
    index), so that the strict :func:`call_numpy` accepts them (``ufunc.at``, scatter ops)."""
    items = key if isinstance(key, tuple) else (key,)
    out = tuple(ndarray._from(np.asarray(unwrap(s))) if isinstance(s, (np.ndarray, list)) else s for s in items)
    return out if isinstance(key, tuple) else out[0]


# ------------------------------------------------------------------------------------------
# device-side helper objects
class Device:
    """``cupy.cuda.Device``: the emulator has one device, id 0."""

    compute_capability = "90"

    def __init__(self, device: Any = None) -> None:
        self.id = _current_device() if device is None else int(device)
        self._prev: list[int] = []

    def _check(self) -> None:
        if not 0 <= self.id < 1:
            raise CUDARuntimeError(101, "cudaErrorInvalidDevice: invalid device ordinal")

    def use(self) -> None:
        """Make this device current."""
        self._check()
        _state.device = self.id

    def synchronize(self) -> None:
        """Wait for the device (the emulator is synchronous)."""
        self._check()

    @property
    def mem_info(self) -> tuple[int, int]:
        """(free, total) bytes: the host's memory."""
        return host_memory()

    @property
    def pci_bus_id(self) -> str:
        return "0000:00:00.0"

    def __enter__(self) -> "Device":
        self._check()
        self._prev.append(_current_device())
        _state.device = self.id
        return self

    def __exit__(self, *exc: Any) -> None:
        _state.device = self._prev.pop()

    def __int__(self) -> int:
        return self.id

    __index__ = __int__

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self) -> int:
        return hash(("Device", self.id))

    def __repr__(self) -> str:
        return f"<CUDA Device {self.id}>"


_state = threading.local()


def _current_device() -> int:
    return getattr(_state, "device", 0)


def host_memory() -> tuple[int, int]:
    """(free, total) bytes of host memory, standing in for device memory."""
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_AVPHYS_PAGES"), page * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 8 << 30, 16 << 30


class MemoryPointer:
    """``cupy.cuda.MemoryPointer``: ``ptr`` is the address of the array's first element."""

    def __init__(self, arr: np.ndarray) -> None:
        self._owner = arr  # keeps the buffer alive while the pointer is held
        self.ptr = arr.__array_interface__["data"][0]
        self.device_id = 0

    @property
    def device(self) -> Device:
        return Device(self.device_id)

    def __int__(self) -> int:
        return self.ptr

    def __repr__(self) -> str:
        return f"<MemoryPointer 0x{self.ptr:x} device=0>"


class Flags:
    """``ndarray.flags``: CuPy keeps only c_contiguous, f_contiguous and owndata."""

    def __init__(self, c_contiguous: bool, f_contiguous: bool, owndata: bool) -> None:
        self.c_contiguous, self.f_contiguous, self.owndata = c_contiguous, f_contiguous, owndata

    def __getitem__(self, name: str) -> bool:
        keys = {"C_CONTIGUOUS": self.c_contiguous, "F_CONTIGUOUS": self.f_contiguous, "OWNDATA": self.owndata}
        return keys[name]

    def __repr__(self) -> str:
        return (f"  C_CONTIGUOUS : {self.c_contiguous}\n  F_CONTIGUOUS : {self.f_contiguous}\n"
                f"  OWNDATA : {self.owndata}")


# ------------------------------------------------------------------------------------------
def _binary(ufunc: np.ufunc, reflected: bool = False):
    def op(self: "ndarray", other: Any) -> Any:
        o = _operand(other)
        if o is NotImplemented:
            return NotImplemented
        with np.errstate(all="ignore"):
            return wrap(ufunc(o, self._a) if reflected else ufunc(self._a, o))
    op.__name__ = f"__{'r' if reflected else ''}{ufunc.__name__}__"
    return op


def _inplace(ufunc: np.ufunc):
    def op(self: "ndarray", other: Any) -> "ndarray":
        o = _operand(other)
        if o is NotImplemented:
            raise _unsupported(type(other))
        with np.errstate(all="ignore"):
            ufunc(self._a, o, out=self._a)  # same buffer: views and raw pointers see the update
        return self
    return op


def _compare(ufunc: np.ufunc, default: bool | None = None):
    def op(self: "ndarray", other: Any) -> Any:
        if isinstance(other, np.ndarray) and other.ndim == 0:
            other = other.item()  # CuPy's workaround for numpy#12142 accepts 0-d host arrays here
        if default is not None and (other is None or (
                not isinstance(other, ndarray) and not _is_scalar(other)
                and type(other).__eq__ is object.__eq__)):
            # CuPy: an object without __eq__ never equals an element
            return ndarray._from(np.full(self.shape, default))
        o = _operand(other)
        if o is NotImplemented:
            return NotImplemented
        with np.errstate(all="ignore"):
            return wrap(ufunc(self._a, o))
    return op


def _unary(ufunc: np.ufunc):
    def op(self: "ndarray") -> "ndarray":
        with np.errstate(all="ignore"):
            return wrap(ufunc(self._a))
    return op


def _method(name: str, impl: Any = None):
    fn = impl or getattr(np.ndarray, name)

    def m(self: "ndarray", *args: Any, **kwargs: Any) -> Any:
        return call_numpy(fn, (self, *args), kwargs)
    m.__name__ = m.__qualname__ = name
    m.__doc__ = f"Emulates ``cupy.ndarray.{name}`` (NumPy's semantics, arrays in and out)."
    return m


class ndarray:  # noqa: N801  (CuPy's name)
    """NumPy-backed stand-in for ``cupy.ndarray`` (see the module docstring for the rules).

    Parameters
    ----------
    shape : int or tuple of int
    dtype : data-type, default float
    memptr : None
        External memory is not emulated.
    strides : None
        Not emulated.
    order : {"C", "F"}, default "C"
    """

    __slots__ = ("_a", "__weakref__")
    __hash__ = None  # type: ignore[assignment]
    __array_priority__ = 100

    def __init__(self, shape: Any, dtype: Any = float, memptr: Any = None, strides: Any = None,
                 order: str = "C") -> None:
        if memptr is not None or strides is not None:
            raise NotImplementedError("the CuPy emulator does not support memptr / strides")
        self._a = np.empty(shape, dtype=_check_dtype(np.dtype(dtype)), order=order)

    @classmethod
    def _from(cls, a: np.ndarray) -> "ndarray":
        """Wrap ``a`` without copying (internal: ``a`` must not be a caller's host array)."""
        _check_dtype(a.dtype)
        obj = object.__new__(cls)
        obj._a = a
        return obj

    # -- attributes -----------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, ...]:
        return self._a.shape

    @shape.setter
    def shape(self, value: Any) -> None:
        self._a.shape = value

    dtype = property(lambda self: self._a.dtype)
    size = property(lambda self: self._a.size)
    ndim = property(lambda self: self._a.ndim)
    itemsize = property(lambda self: self._a.itemsize)
    nbytes = property(lambda self: self._a.nbytes)
    strides = property(lambda self: self._a.strides)
    T = property(lambda self: ndarray._from(self._a.T))
    mT = property(lambda self: ndarray._from(self._a.mT))

    @property
    def flags(self) -> Flags:
        f = self._a.flags
        return Flags(f.c_contiguous, f.f_contiguous, f.owndata)

    @property
    def base(self) -> "ndarray | None":
        b = self._a.base
        return ndarray._from(b) if isinstance(b, np.ndarray) else None

    @property
    def device(self) -> Device:
        return Device(0)

    @property
    def data(self) -> MemoryPointer:
        return MemoryPointer(self._a)

    @property
    def real(self) -> "ndarray":
        return ndarray._from(self._a.real)

    @real.setter
    def real(self, value: Any) -> None:
        self.real[...] = value

    @property
    def imag(self) -> "ndarray":
        return ndarray._from(self._a.imag)

    @imag.setter
    def imag(self, value: Any) -> None:
        self.imag[...] = value

    @property
    def __cuda_array_interface__(self) -> dict[str, Any]:
        a = self._a
        return {"shape": a.shape, "typestr": a.dtype.str, "descr": a.dtype.descr, "stream": 1,
                "version": 3, "strides": None if a.flags.c_contiguous else a.strides,
                "data": (a.__array_interface__["data"][0] if a.size else 0, False)}

    # -- host <-> device ----------------------------------------------------------------
    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        raise TypeError(IMPLICIT_CONVERSION_MESSAGE)

    def get(self, stream: Any = None, order: str = "C", out: np.ndarray | None = None,
            blocking: bool = True) -> np.ndarray:
        """A NumPy copy of the array (into ``out`` when given: same dtype and shape)."""
        if out is not None:
            if not isinstance(out, np.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            if out.dtype != self.dtype:
                raise TypeError(f"{out.dtype} array cannot be obtained from {self.dtype} array")
            if out.shape != self.shape:
                raise ValueError(f"Shape mismatch. Expected shape: {self.shape}, actual shape: {out.shape}")
            out[...] = self._a
            return out
        return np.array(self._a, order=order.upper(), copy=True)

    def set(self, arr: np.ndarray, stream: Any = None) -> None:
        """Copy the host array ``arr`` (same dtype and shape) into this array."""
        if not isinstance(arr, np.ndarray):
            raise TypeError("Only numpy.ndarray can be set to cupy.ndarray")
        if self.dtype != arr.dtype:
            raise TypeError(f"{arr.dtype} array cannot be set to {self.dtype} array")
        if self.shape != arr.shape:
            raise ValueError(f"Shape mismatch. Old shape: {self.shape}, new shape: {arr.shape}")
        if not (self._a.flags.c_contiguous or self._a.flags.f_contiguous):
            raise RuntimeError("Cannot set to non-contiguous array")
        self._a[...] = arr

    def item(self) -> Any:
        """The element of a size-1 array as a Python scalar (synchronises, as in CuPy)."""
        if self.size != 1:
            raise ValueError("can only convert an array of size 1 to a Python scalar")
        return self._a.item()

    def tolist(self) -> Any:
        return self._a.tolist()

    def __int__(self) -> int:
        return int(self._a)

    def __float__(self) -> float:
        return float(self._a)

    def __complex__(self) -> complex:
        return complex(self._a)

    def __bool__(self) -> bool:
        if self.size == 0:
            warnings.warn("The truth value of an empty array is ambiguous. Returning False, but in future "
                          "this will result in an error. Use `array.size > 0` to check that an array is "
                          "not empty.", DeprecationWarning, stacklevel=2)
            return False
        if self.size == 1:
            return bool(self._a.reshape(()))
        raise ValueError("The truth value of an array with more than one element is ambiguous. "
                         "Use a.any() or a.all()")

    def __repr__(self) -> str:
        return repr(self._a)

    def __str__(self) -> str:
        return str(self._a)

    def __format__(self, spec: str) -> str:
        return format(self._a, spec)

    def __copy__(self) -> "ndarray":
        return self.copy()

    def __deepcopy__(self, memo: dict) -> "ndarray":
        return self.copy()

    def __reduce__(self) -> tuple:
        return _rebuild, (self.get(order="A"),)

    # -- container protocol ---------------------------------------------------------------
    def __len__(self) -> int:
        if self.ndim == 0:
            raise TypeError("len() of unsized object")
        return self._a.shape[0]

    def __iter__(self) -> Iterator["ndarray"]:
        if self.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(self._a.shape[0]))

    def __getitem__(self, key: Any) -> "ndarray":
        k, adv = _index(key)
        r = self._a[k]
        if isinstance(r, np.ndarray):
            return ndarray._from(r)
        if adv or any(s is Ellipsis for s in (k if isinstance(k, tuple) else (k,))):
            return ndarray._from(np.asarray(r))  # CuPy: array indices give a new array
        # integers only: CuPy returns a 0-d *view* (writes through); a trailing ... does in NumPy
        return ndarray._from(self._a[(*k, Ellipsis) if isinstance(k, tuple) else (k, Ellipsis)])

    def __setitem__(self, key: Any, value: Any) -> None:
        k, adv = _index(key)
        if isinstance(value, ndarray):
            self._a[k] = value._a
        elif adv:  # CuPy's scatter: host values are copied in (core.array(value, dtype))
            self._a[k] = _host_value(value, self.dtype)
        else:  # CuPy's fill: scalars only
            v = np.asarray(value, dtype=self.dtype)
            if v.shape != ():
                raise NonScalarFillError("non-scalar numpy.ndarray cannot be used for fill")
            self._a[k] = v

    # -- NumPy protocols --------------------------------------------------------------------
    def __array_ufunc__(self, ufunc: np.ufunc, method: str, *inputs: Any, **kwargs: Any) -> Any:
        from .namespace import has_ufunc  # noqa: PLC0415  (namespace imports this module)

        out = kwargs.get("out", ())
        if len(out) > 1:
            raise ValueError("The 'out' parameter must have exactly one array value")
        if method not in ("__call__", "outer", "at", "reduce", "accumulate", "reduceat") or not has_ufunc(
                ufunc.__name__):
            return NotImplemented
        for x in inputs + tuple(out):
            if not (_is_scalar(x) or isinstance(x, (ndarray, np.ndarray))):
                return NotImplemented
        if method == "at":
            inputs = (inputs[0], device_index(inputs[1]), *inputs[2:])
        if ufunc.__name__ in _COMPARISONS:
            inputs = tuple(x.item() if isinstance(x, np.ndarray) and x.ndim == 0 else x for x in inputs)
        return call_numpy(getattr(ufunc, method), inputs, kwargs)

    def __array_function__(self, func: Any, types: tuple, args: tuple, kwargs: dict) -> Any:
        from .namespace import has_function  # noqa: PLC0415

        if not has_function(getattr(func, "__module__", None) or "", func.__name__):
            return NotImplemented  # CuPy has no such function: NumPy raises TypeError
        if not all(issubclass(t, (ndarray, np.ndarray)) for t in types):
            return NotImplemented
        return call_numpy(func, args, kwargs)

    # -- methods with CuPy-specific rules ------------------------------------------------------
    def astype(self, dtype: Any, order: str = "K", casting: str | None = None, subok: Any = None,
               copy: bool = True) -> "ndarray":
        """Cast; with ``copy=False`` and nothing to do, the array itself."""
        r = self._a.astype(_check_dtype(np.dtype(dtype)), order=order, casting=casting or "unsafe", copy=copy)
        return self if r is self._a else ndarray._from(r)

    def copy(self, order: str = "C") -> "ndarray":
        return ndarray._from(self._a.copy(order=order))

    def fill(self, value: Any) -> None:
        """Fill with a scalar (a 0-d array or a host scalar; anything larger is ``ValueError``)."""
        if isinstance(value, ndarray):
            if value.shape != ():
                raise ValueError("non-scalar cupy.ndarray cannot be used for fill")
            v = value._a
        else:
            v = np.asarray(value, dtype=self.dtype)
            if v.shape != ():
                raise NonScalarFillError("non-scalar numpy.ndarray cannot be used for fill")
        self._a.fill(v)

    def dot(self, b: "ndarray", out: "ndarray | None" = None) -> "ndarray":
        """Dot product; ``b`` (and ``out``) must be CuPy arrays (CuPy types the arguments)."""
        for name, v in (("b", b), ("out", out)):
            if not isinstance(v, ndarray) and not (name == "out" and v is None):
                raise TypeError(f"Argument '{name}' has incorrect type (expected cupy._core.core._ndarray_base, "
                                f"got {type(v).__name__})")
        return call_numpy(np.dot, (self, b), {} if out is None else {"out": out})

    def view(self, dtype: Any = None, array_class: Any = None) -> "ndarray":
        return ndarray._from(self._a.view() if dtype is None else self._a.view(dtype))

    def nonzero(self) -> tuple["ndarray", ...]:
        if self.ndim == 0:
            raise ValueError("Calling nonzero on 0d arrays is not allowed. "
                             "Use cp.atleast_1d(scalar).nonzero() instead.")
        return call_numpy(np.ndarray.nonzero, (self,))

    def take(self, indices: Any, axis: int | None = None, out: "ndarray | None" = None) -> "ndarray":
        if not isinstance(indices, ndarray) and not np.isscalar(indices):
            indices = ndarray._from(np.asarray(unwrap(indices), dtype=int))  # CuPy copies host indices in
        return call_numpy(np.take, (self, indices), {"axis": axis, "out": out})


def _rebuild(a: np.ndarray) -> ndarray:
    """Unpickling: ``cupy.array(host copy)``."""
    return ndarray._from(np.array(a))


# CuPy's array class reports itself as ``cupy.ndarray`` (otsolve's is_cupy reads the module)
ndarray.__module__ = "cupy"
ndarray.__name__ = ndarray.__qualname__ = "ndarray"

for _name, _uf in (("add", np.add), ("sub", np.subtract), ("mul", np.multiply), ("truediv", np.true_divide),
                   ("floordiv", np.floor_divide), ("mod", np.remainder), ("pow", np.power),
                   ("lshift", np.left_shift), ("rshift", np.right_shift), ("and", np.bitwise_and),
                   ("or", np.bitwise_or), ("xor", np.bitwise_xor)):
    setattr(ndarray, f"__{_name}__", _binary(_uf))
    setattr(ndarray, f"__r{_name}__", _binary(_uf, reflected=True))
    setattr(ndarray, f"__i{_name}__", _inplace(_uf))
_pow = _binary(np.power)
ndarray.__pow__ = lambda self, other, mod=None: _pow(self, other)  # CuPy ignores the modulo too
ndarray.__matmul__ = _binary(np.matmul)
ndarray.__rmatmul__ = _binary(np.matmul, reflected=True)
ndarray.__divmod__ = _binary(np.divmod)
ndarray.__rdivmod__ = _binary(np.divmod, reflected=True)
for _name, _uf, _default in (("lt", np.less, None), ("le", np.less_equal, None), ("gt", np.greater, None),
                             ("ge", np.greater_equal, None), ("eq", np.equal, False),
                             ("ne", np.not_equal, True)):
    setattr(ndarray, f"__{_name}__", _compare(_uf, _default))
for _name, _uf in (("neg", np.negative), ("pos", np.positive), ("abs", np.absolute), ("invert", np.invert)):
    setattr(ndarray, f"__{_name}__", _unary(_uf))
# the rest of CuPy's ndarray methods: NumPy's, arrays in and out
for _name in ("reshape", "ravel", "flatten", "transpose", "swapaxes", "squeeze", "sum", "prod", "mean", "var",
              "std", "max", "min", "argmax", "argmin", "any", "all", "cumsum", "cumprod", "clip", "round",
              "trace", "diagonal", "conj", "conjugate", "sort", "argsort", "partition", "argpartition",
              "searchsorted", "repeat", "choose", "compress", "put", "tobytes", "tofile", "dump", "dumps",
              "byteswap"):
    setattr(ndarray, _name, _method(_name))
ndarray.ptp = _method("ptp", np.ptp)  # gone from NumPy 2's ndarray, still a CuPy method
del _name, _uf, _default
