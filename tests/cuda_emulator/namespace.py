"""The emulated ``cupy`` / ``cupyx`` module tree, built from NumPy around :class:`.array.ndarray`.

:func:`build` returns fresh module objects for ``sys.modules``. Names follow CuPy's own namespace
(the lists below come from CuPy's ``__init__.py`` files): a name CuPy has is NumPy's object with
arrays unwrapped on the way in and wrapped on the way out (types and constants as they are); a
name CuPy lacks (``cupy.errstate``, ``cupy.vecdot``, ...) is an ``AttributeError`` here too, and
NumPy functions / ufuncs called on emulated arrays dispatch only where CuPy has a counterpart.
"""
from __future__ import annotations

import importlib.machinery
import threading
import time
import types
from typing import Any, Callable

import numpy as np

from .array import (CUDARuntimeError, Device, MemoryPointer, _check_dtype, _host_value, _index, call_numpy,
                    device_index, host_memory, ndarray, unwrap, wrap)

__all__ = ["build", "has_function", "has_ufunc", "ufunc"]

_CUPY_NAMES = frozenset("""
    AxisError ComplexWarning DataSource Inf Infinity ModuleDeprecationWarning NAN NINF NZERO NaN PINF
    PZERO RankWarning TooHardError VisibleDeprecationWarning abs absolute acos acosh add all allclose
    alltrue amax amin angle any append apply_along_axis apply_over_axes arange arccos arccosh arcsin
    arcsinh arctan arctan2 arctanh argmax argmin argpartition argsort argwhere around array array2string
    array_equal array_equiv array_repr array_split array_str asanyarray asarray asarray_chkfinite
    ascontiguousarray asfarray asfortranarray asin asinh asnumpy astype atan atan2 atanh atleast_1d
    atleast_2d atleast_3d average bartlett base_repr binary_repr bincount bitwise_and bitwise_count
    bitwise_invert bitwise_left_shift bitwise_not bitwise_or bitwise_right_shift bitwise_xor blackman
    bool bool_ broadcast broadcast_arrays broadcast_shapes broadcast_to byte byte_bounds c_ can_cast
    cbrt cdouble ceil cfloat choose clear_memo clip column_stack common_type complex128 complex64
    complex_ complexfloating compress concat concatenate conj conjugate convolve copy copysign copyto
    corrcoef correlate cos cosh count_nonzero cov cross csingle cumprod cumproduct cumsum
    cumulative_prod cumulative_sum deg2rad degrees delete diag diag_indices diag_indices_from diagflat
    diagonal diff digitize disable_experimental_feature_warning disp divide divmod dot double dsplit
    dstack dtype e ediff1d einsum empty empty_like equal euler_gamma exp exp2 expand_dims expm1 extract
    eye fabs fill_diagonal find_common_type finfo fix flatiter flatnonzero flip fliplr flipud float16
    float32 float64 float_ float_power floating floor floor_divide fmax fmin fmod
    format_float_positional format_float_scientific format_parser frexp fromDlpack from_dlpack
    frombuffer fromfile fromfunction fromiter fromstring full full_like fuse gcd generic genfromtxt
    get_array_module get_array_wrap get_default_memory_pool get_default_pinned_memory_pool
    get_printoptions gradient greater greater_equal half hamming hanning heaviside histogram histogram2d
    histogramdd hsplit hstack hypot i0 identity iinfo imag in1d index_exp indices inexact inf infty
    inner int16 int32 int64 int8 int_ intc integer interp intersect1d intp invert is_available isclose
    iscomplex iscomplexobj isdtype isfinite isfortran isin isinf isnan isneginf isposinf isreal
    isrealobj isscalar issctype issubclass_ issubdtype issubsctype iterable ix_ kaiser kron lcm ldexp
    left_shift less less_equal lexsort linspace load loadtxt log log10 log1p log2 logaddexp logaddexp2
    logical_and logical_not logical_or logical_xor logspace long longlong make_aligned_dtype
    mask_indices matmul matrix_transpose max maximum may_share_memory mean median memoize meshgrid mgrid
    min min_scalar_type minimum mintypecode mod modf moveaxis msort multiply nan nan_to_num nanargmax
    nanargmin nancumprod nancumsum nanmax nanmean nanmedian nanmin nanprod nanstd nansum nanvar ndarray
    ndim ndindex negative newaxis nextafter nonzero not_equal number obj2sctype ogrid ones ones_like
    outer packbits pad partition percentile permute_dims pi piecewise place poly poly1d polyadd polyfit
    polymul polysub polyval positive pow power printoptions prod product promote_types ptp put
    put_along_axis putmask quantile r_ rad2deg radians ravel ravel_multi_index real real_if_close
    reciprocal remainder repeat require reshape resize result_type right_shift rint roll rollaxis roots
    rot90 round round_ row_stack s_ safe_eval save savetxt savez savez_compressed sctype2char
    searchsorted select set_printoptions set_string_function setdiff1d setxor1d shape shares_memory
    short show_config sign signbit signedinteger sin sinc single singlecomplex sinh size sometrue sort
    sort_complex split sqrt square squeeze stack std subtract sum swapaxes take take_along_axis tan tanh
    tensordot tile trace transpose trapezoid trapz tri tril tril_indices tril_indices_from trim_zeros
    triu triu_indices triu_indices_from true_divide trunc typename ubyte ufunc uint uint16 uint32 uint64
    uint8 uintc uintp ulong ulonglong union1d unique unique_all unique_counts unique_inverse
    unique_values unpackbits unravel_index unsignedinteger unwrap ushort vander var vdot vectorize
    vsplit vstack where who zeros zeros_like
""".split())
_LINALG_NAMES = frozenset("""
    LinAlgError cholesky cond cross det eig eigh eigvals eigvalsh inv lstsq matmul matrix_power
    matrix_rank matrix_transpose norm pinv qr slogdet solve svd tensorinv tensorsolve
""".split())
_FFT_NAMES = frozenset("""
    fft fft2 fftfreq fftn fftshift hfft ifft ifft2 ifftn ifftshift ihfft irfft irfft2 irfftn rfft rfft2
    rfftfreq rfftn
""".split())
_RANDOM_NAMES = frozenset("""
    BitGenerator MRG32k3a Philox4x3210 RandomState XORWOW beta binomial bytes chisquare choice
    default_rng dirichlet exponential f gamma geometric get_random_state gumbel hypergeometric laplace
    logistic lognormal logseries multinomial multivariate_normal negative_binomial noncentral_chisquare
    noncentral_f normal pareto permutation poisson power rand randint randn random random_integers
    random_sample ranf rayleigh reset_states sample seed set_random_state shuffle standard_cauchy
    standard_exponential standard_gamma standard_normal standard_t triangular uniform vonmises wald
    weibull zipf
""".split())
_SPECIAL_NAMES = frozenset("""
    bdtr bdtrc bdtri beta betainc betaincinv betaln binom boxcox boxcox1p btdtr btdtri cbrt chdtr chdtrc
    chdtri cosdg cosm1 cotdg digamma ellipeinc ellipj ellipk ellipkinc ellipkm1 entr erf erfc erfcinv
    erfcx erfinv exp1 exp10 exp2 expi expit expm1 expn exprel fdtr fdtrc fdtri gamma gammainc gammaincc
    gammainccinv gammaincinv gammaln gammasgn gdtr gdtrc huber i0 i0e i1 i1e inv_boxcox inv_boxcox1p j0
    j1 k0 k0e k1 k1e kl_div lambertw log1p log_expit log_ndtr log_softmax loggamma logit logsumexp lpmv
    multigammaln nbdtr nbdtrc nbdtri ndtr ndtri pdtr pdtrc pdtri poch polygamma pseudo_huber psi radian
    rel_entr rgamma round shichi sici sinc sindg softmax sph_harm_y spherical_yn tandg wright_bessel
    xlog1py xlogy y0 y1 yn zeta zetac
""".split())
# CuPy returns these as 0-d arrays where NumPy returns a Python bool / int
_ZERO_D_RESULTS = frozenset(("allclose", "array_equal", "array_equiv", "count_nonzero"))
# CuPy's float samplers take a dtype that NumPy's legacy functions lack
_RANDOM_DTYPE = frozenset(("random", "random_sample", "ranf", "sample", "rand", "randn", "standard_normal",
                           "uniform", "normal", "standard_exponential"))
_KERNEL_CLASSES = ("RawModule", "RawKernel", "ElementwiseKernel", "ReductionKernel")


def has_function(module: str, name: str) -> bool:
    """Whether CuPy has a counterpart of NumPy's ``module.name`` (``__array_function__``'s rule).

    Parameters
    ----------
    module : str
        The NumPy function's ``__module__`` ("numpy", "numpy.linalg", "numpy.fft").
    name : str

    Returns
    -------
    bool
    """
    table = {"numpy": _CUPY_NAMES, "numpy.linalg": _LINALG_NAMES, "numpy.fft": _FFT_NAMES}.get(module)
    return table is not None and name in table


def has_ufunc(name: str) -> bool:
    """Whether ``cupy`` or ``cupyx.scipy.special`` has the ufunc ``name`` (``__array_ufunc__``'s rule)."""
    return name in _CUPY_NAMES or name in _SPECIAL_NAMES


# ------------------------------------------------------------------------------------------
class ufunc:  # noqa: N801  (CuPy's name)
    """``cupy.ufunc``: a NumPy ufunc on emulated arrays (``__call__``, reduce, accumulate, ...)."""

    def __init__(self, np_ufunc: np.ufunc) -> None:
        self._u = np_ufunc
        self.__name__ = np_ufunc.__name__
        self.__doc__ = np_ufunc.__doc__

    nin = property(lambda self: self._u.nin)
    nout = property(lambda self: self._u.nout)
    nargs = property(lambda self: self._u.nargs)
    types = property(lambda self: self._u.types)
    identity = property(lambda self: self._u.identity)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return call_numpy(self._u, args, kwargs)

    def reduce(self, *args: Any, **kwargs: Any) -> Any:
        return call_numpy(self._u.reduce, args, kwargs)

    def accumulate(self, *args: Any, **kwargs: Any) -> Any:
        return call_numpy(self._u.accumulate, args, kwargs)

    def reduceat(self, *args: Any, **kwargs: Any) -> Any:
        return call_numpy(self._u.reduceat, args, kwargs)

    def outer(self, *args: Any, **kwargs: Any) -> Any:
        return call_numpy(self._u.outer, args, kwargs)

    def at(self, a: ndarray, indices: Any, *args: Any, **kwargs: Any) -> None:
        return call_numpy(self._u.at, (a, device_index(indices), *args), kwargs)

    def __repr__(self) -> str:
        return f"<ufunc '{self.__name__}'>"


ufunc.__module__ = "cupy"


def _function(fn: Callable, name: str, module: str = "cupy", zero_d: bool = False) -> Callable:
    """``fn`` on emulated arrays: host arrays in the arguments raise TypeError, results wrapped."""
    def f(*args: Any, **kwargs: Any) -> Any:
        r = call_numpy(fn, args, kwargs)
        if zero_d and type(r) in (bool, int):
            r = wrap(np.asarray(r))
        return r
    f.__name__ = f.__qualname__ = name
    f.__module__, f.__doc__, f.__wrapped__ = module, getattr(fn, "__doc__", None), fn
    return f


class _IndexTrick:
    """``cupy.r_`` / ``c_`` / ``mgrid`` / ``ogrid``: NumPy's, arrays in and out."""

    def __init__(self, obj: Any) -> None:
        self._o = obj

    def __getitem__(self, key: Any) -> Any:
        return call_numpy(self._o.__getitem__, (key,))


class _HostObject:
    """A NumPy random generator / state whose methods return emulated arrays."""

    def __init__(self, obj: Any) -> None:
        self._o = obj

    def __getattr__(self, name: str) -> Any:
        v = getattr(self._o, name)
        return _function(v, name, "cupy.random") if callable(v) else v


def _expose(name: str, v: Any, module: str) -> Any:
    """How a NumPy object appears in the emulated namespace."""
    if isinstance(v, types.ModuleType):
        raise AttributeError(f"module {module!r} has no attribute {name!r} (not emulated)")
    if isinstance(v, type):
        return v  # dtypes, finfo, exception classes, ...
    if isinstance(v, np.ufunc):
        return ufunc(v)
    if name in ("r_", "c_", "mgrid", "ogrid"):
        return _IndexTrick(v)
    if callable(v):
        return _function(v, name, module, zero_d=name in _ZERO_D_RESULTS)
    return v  # constants (inf, pi, newaxis, ...)


def _module(name: str, doc: str, attrs: dict[str, Any], lookup: Callable[[str], Any] | None = None,
            package: bool = False) -> types.ModuleType:
    m = types.ModuleType(name, doc)
    m.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=package)
    if package:
        m.__path__ = []  # a package: `import cupy.x` looks up sys.modules, nothing on disk
    m.__dict__.update(attrs)
    if lookup is not None:
        def __getattr__(attr: str) -> Any:
            if attr.startswith("__"):
                raise AttributeError(f"module {name!r} has no attribute {attr!r}")
            v = lookup(attr)
            setattr(m, attr, v)  # cached: later lookups are plain attribute reads
            return v
        m.__getattr__ = __getattr__
    return m


def _numpy_lookup(np_mod: Any, names: frozenset, module: str,
                  special: Callable[[str, Any], Any] | None = None) -> Callable[[str], Any]:
    def lookup(attr: str) -> Any:
        src = np_mod() if callable(np_mod) else np_mod  # a loader: SciPy is imported on first use
        if attr in names and hasattr(src, attr):
            v = getattr(src, attr)
            return special(attr, v) if special else _expose(attr, v, module)
        note = " (not emulated)" if attr in names else ""
        raise AttributeError(f"module {module!r} has no attribute {attr!r}{note}")
    return lookup


# ------------------------------------------------------------------------------------------
# host <-> device
def asnumpy(a: Any, stream: Any = None, order: str = "C", out: np.ndarray | None = None, *,
            blocking: bool = True) -> np.ndarray:
    """A NumPy copy of an emulated array; anything else through ``numpy.asarray``.

    Parameters
    ----------
    a : array_like
    stream, blocking : ignored
    order : {"C", "F", "A"}
    out : numpy.ndarray, optional

    Returns
    -------
    numpy.ndarray
    """
    if isinstance(a, ndarray):
        return a.get(stream, order, out, blocking)
    temp = np.asarray(a, order=order)
    if out is None:
        return temp
    out[...] = temp
    return out


def asarray(a: Any, dtype: Any = None, order: str | None = None, *, blocking: bool = False) -> ndarray:
    """An emulated array: ``a`` itself when it is one of the right dtype, else a copy ("transfer").

    Parameters
    ----------
    a : array_like
        Emulated or NumPy arrays, (nested) lists, scalars.
    dtype : data-type, optional
    order : {"C", "F", "A", "K"}, optional
    blocking : ignored

    Returns
    -------
    ndarray
    """
    if dtype is not None:
        dtype = _check_dtype(np.dtype(dtype))
    if isinstance(a, ndarray):
        r = np.asarray(a._a, dtype=dtype, order=order)
        return a if r is a._a else ndarray._from(r)
    return ndarray._from(np.array(unwrap(a), dtype=dtype, order=order or "K", copy=True))


def array(obj: Any, dtype: Any = None, copy: bool | None = True, order: str = "K", subok: bool = False,
          ndmin: int = 0, *, blocking: bool = False) -> ndarray:
    """``cupy.array``: a copy by default; host data is always copied.

    Parameters
    ----------
    obj : array_like
    dtype : data-type, optional
    copy : bool or None, default True
        For emulated arrays, NumPy 2's meaning (``None``: only if needed).
    order : {"C", "F", "A", "K"}
    subok, blocking : ignored
    ndmin : int

    Returns
    -------
    ndarray
    """
    if dtype is not None:
        dtype = _check_dtype(np.dtype(dtype))
    if isinstance(obj, ndarray):
        r = np.array(obj._a, dtype=dtype, copy=copy, order=order, ndmin=ndmin)
        return obj if r is obj._a else ndarray._from(r)
    return ndarray._from(np.array(unwrap(obj), dtype=dtype, copy=True, order=order, ndmin=ndmin))


def ascontiguousarray(a: ndarray, dtype: Any = None) -> ndarray:
    """``a`` itself when C-contiguous with the dtype, else a C-contiguous copy (0-d becomes (1,)).

    Parameters
    ----------
    a : ndarray
        An emulated array (CuPy types this argument: a NumPy array is a TypeError).
    dtype : data-type, optional

    Returns
    -------
    ndarray
    """
    if not isinstance(a, ndarray):
        raise TypeError("Argument 'a' has incorrect type (expected cupy._core.core._ndarray_base, "
                        f"got {type(a).__name__})")
    dt = a.dtype if dtype is None else _check_dtype(np.dtype(dtype))
    if dt == a.dtype and a._a.flags.c_contiguous:
        return a.ravel() if a.ndim == 0 else a
    return ndarray._from(np.array(a._a, dtype=dt, order="C", copy=True).reshape(a.shape or (1,)))


def fuse(*args: Any, **kwargs: Any) -> Any:
    """``cupy.fuse``: the function itself (kernel fusion changes nothing on the CPU)."""
    if len(args) == 1 and callable(args[0]) and not kwargs:
        return args[0]
    return lambda f: f


# ------------------------------------------------------------------------------------------
# cupy.cuda
class MemoryPool:
    """``cupy.cuda.MemoryPool``: NumPy allocates, so the pool is always empty."""

    def __init__(self, allocator: Any = None) -> None:
        self._limit = 0

    def used_bytes(self) -> int:
        return 0

    def free_bytes(self) -> int:
        return 0

    def total_bytes(self) -> int:
        return 0

    def n_free_blocks(self) -> int:
        return 0

    def free_all_blocks(self, stream: Any = None) -> None:
        pass

    def set_limit(self, size: int | None = None, fraction: float | None = None) -> None:
        self._limit = int(size if size is not None else (fraction or 0) * host_memory()[1])

    def get_limit(self) -> int:
        return self._limit


class PinnedMemoryPool(MemoryPool):
    """``cupy.cuda.PinnedMemoryPool`` (empty, as :class:`MemoryPool`)."""


class Stream:
    """``cupy.cuda.Stream``: work is synchronous, so streams only track the current one."""

    null: "Stream"

    def __init__(self, null: bool = False, non_blocking: bool = False, ptr: int = 0,
                 priority: int | None = None) -> None:
        self.ptr = 0 if null else (ptr or id(self))
        self.non_blocking, self.priority, self.device_id = non_blocking, priority, 0

    done = property(lambda self: True)

    def synchronize(self) -> None:
        pass

    def record(self, event: "Event | None" = None) -> "Event":
        event = event or Event()
        event.record(self)
        return event

    def wait_event(self, event: "Event") -> None:
        pass

    def use(self) -> "Stream":
        _streams().append(self)
        return self

    def __enter__(self) -> "Stream":
        _streams().append(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        _streams().pop()

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, Stream) and other.ptr == self.ptr

    def __hash__(self) -> int:
        return hash(("Stream", self.ptr))

    def __repr__(self) -> str:
        return f"<Stream {self.ptr} (device 0)>"


Stream.null = Stream(null=True)
_tls = threading.local()


def _streams() -> list[Stream]:
    if not hasattr(_tls, "streams"):
        _tls.streams = []
    return _tls.streams


def get_current_stream(device_id: int = -1) -> Stream:
    """The stream of the innermost ``with stream:`` / ``use()``, else the null stream."""
    s = _streams()
    return s[-1] if s else Stream.null


class Event:
    """``cupy.cuda.Event``: ``record`` notes the host time (work is synchronous)."""

    def __init__(self, block: bool = False, disable_timing: bool = False, interprocess: bool = False) -> None:
        self._t: float | None = None
        self._timing = not disable_timing
        self.ptr = id(self)

    done = property(lambda self: True)

    def record(self, stream: Stream | None = None) -> None:
        self._t = time.perf_counter()

    def synchronize(self) -> None:
        pass


def get_elapsed_time(start_event: Event, end_event: Event) -> float:
    """Milliseconds between two recorded events (CUDARuntimeError if one is not recorded)."""
    for e in (start_event, end_event):
        if e._t is None or not e._timing:
            raise CUDARuntimeError(400, "cudaErrorInvalidResourceHandle: invalid resource handle")
    return (end_event._t - start_event._t) * 1e3


def _runtime_module() -> types.ModuleType:
    def check(device: int) -> None:
        if device != 0:
            raise CUDARuntimeError(101, "cudaErrorInvalidDevice: invalid device ordinal")

    def getDeviceProperties(device: int) -> dict[str, Any]:  # noqa: N802  (CUDA's names)
        check(device)
        return {"name": b"otsolve CPU emulator", "totalGlobalMem": host_memory()[1], "sharedMemPerBlock": 49152,
                "regsPerBlock": 65536, "warpSize": 32, "maxThreadsPerBlock": 1024,
                "maxThreadsDim": (1024, 1024, 64), "maxGridSize": (2147483647, 65535, 65535), "clockRate": 1,
                "totalConstMem": 65536, "major": 9, "minor": 0, "multiProcessorCount": 1, "l2CacheSize": 0,
                "maxThreadsPerMultiProcessor": 2048, "memoryClockRate": 1, "memoryBusWidth": 64,
                "sharedMemPerBlockOptin": 232448, "pciBusID": 0, "pciDeviceID": 0, "pciDomainID": 0,
                "integrated": 0}

    def setDevice(device: int) -> None:  # noqa: N802
        check(device)
        Device(device).use()

    attrs = {
        "CUDARuntimeError": CUDARuntimeError, "is_hip": False,
        "getDeviceCount": lambda: 1, "getDevice": lambda: Device().id, "setDevice": setDevice,
        "getDeviceProperties": getDeviceProperties, "runtimeGetVersion": lambda: 12000,
        "driverGetVersion": lambda: 12000, "memGetInfo": host_memory, "deviceSynchronize": lambda: None,
    }
    return _module("cupy.cuda.runtime", "Emulated CUDA runtime API (one device).", attrs,
                   lambda a: _missing("cupy.cuda.runtime", a))


def _missing(module: str, attr: str) -> Any:
    raise AttributeError(f"module {module!r} has no attribute {attr!r} (not emulated)")


# ------------------------------------------------------------------------------------------
def _random_special(name: str, v: Any) -> Any:
    if name in ("default_rng", "RandomState"):
        return lambda *a, **k: _HostObject(v(*a, **k))
    if name == "get_random_state":
        return lambda: _HostObject(np.random.mtrand._rand)
    if isinstance(v, type):
        return v
    fn = _function(v, name, "cupy.random")
    if name not in _RANDOM_DTYPE:
        return fn

    def sample(*args: Any, dtype: Any = None, **kwargs: Any) -> ndarray:
        r = fn(*args, **kwargs)
        return r if dtype is None else r.astype(dtype, copy=False)
    sample.__name__ = name
    return sample


def _scatter(op: np.ufunc) -> Callable:
    def scatter(a: ndarray, slices: Any, value: Any) -> None:
        k, _ = _index(slices)
        op.at(a._a, k, value._a if isinstance(value, ndarray) else _host_value(value, a.dtype))
    scatter.__name__ = f"scatter_{op.__name__[:3]}"
    return scatter


def build() -> dict[str, types.ModuleType]:
    """Fresh emulated modules, keyed by the names to put in ``sys.modules``.

    Returns
    -------
    dict of str to module
        "cupy", "cupy.cuda", "cupy.cuda.runtime", "cupy.linalg", "cupy.fft", "cupy.random",
        "cupyx", "cupyx.scipy", "cupyx.scipy.special", "cupyx.scipy.sparse".
    """
    runtime = _runtime_module()
    pool, pinned_pool = MemoryPool(), PinnedMemoryPool()
    cuda = _module("cupy.cuda", "Emulated cupy.cuda (one device, synchronous streams).", {
        "Device": Device, "Stream": Stream, "Event": Event, "MemoryPool": MemoryPool,
        "PinnedMemoryPool": PinnedMemoryPool, "MemoryPointer": MemoryPointer, "runtime": runtime,
        "get_current_stream": get_current_stream, "get_elapsed_time": get_elapsed_time,
        "is_available": lambda: True, "get_device_id": lambda: Device().id,
        "get_local_runtime_version": lambda: 12000, "set_allocator": lambda allocator=None: None,
        "set_pinned_memory_allocator": lambda allocator=None: None,
    }, lambda a: _missing("cupy.cuda", a), package=True)
    device = _module("cupy.cuda.device", "Emulated cupy.cuda.device.", {"Device": Device},
                     lambda a: _missing("cupy.cuda.device", a))
    cuda.device = device
    linalg = _module("cupy.linalg", "Emulated cupy.linalg (NumPy's).", {},
                     _numpy_lookup(np.linalg, _LINALG_NAMES, "cupy.linalg"))
    fft = _module("cupy.fft", "Emulated cupy.fft (NumPy's).", {}, _numpy_lookup(np.fft, _FFT_NAMES, "cupy.fft"))
    random = _module("cupy.random", "Emulated cupy.random (NumPy's generators).", {},
                     _numpy_lookup(np.random, _RANDOM_NAMES, "cupy.random", _random_special))

    def kernels_or_numpy(attr: str) -> Any:
        if attr in _KERNEL_CLASSES:  # the kernel emulator, imported only when asked for
            from . import rawmodule  # noqa: PLC0415

            if hasattr(rawmodule, attr):
                return getattr(rawmodule, attr)
            _missing("cupy", attr)
        return numpy_lookup(attr)

    numpy_lookup = _numpy_lookup(np, _CUPY_NAMES, "cupy")

    def get_array_module(*args: Any) -> types.ModuleType:
        """The emulated ``cupy`` if any argument is an emulated array, else ``numpy``."""
        return cupy if any(isinstance(a, ndarray) for a in args) else np

    cupy = _module("cupy", "CPU emulator of CuPy (tests/cuda_emulator).", {
        "__version__": "0.0.0+emulator", "ndarray": ndarray, "ufunc": ufunc, "asnumpy": asnumpy,
        "asarray": asarray, "asanyarray": asarray, "array": array, "ascontiguousarray": ascontiguousarray,
        "get_array_module": get_array_module, "get_default_memory_pool": lambda: pool,
        "get_default_pinned_memory_pool": lambda: pinned_pool, "is_available": lambda: True, "fuse": fuse,
        "show_config": lambda: print("CuPy CPU emulator (tests/cuda_emulator), NumPy", np.__version__),
        "cuda": cuda, "linalg": linalg, "fft": fft, "random": random,
    }, kernels_or_numpy, package=True)

    def special_lookup() -> Any:
        import scipy.special  # noqa: PLC0415  (only when cupyx.scipy.special is used)

        return scipy.special

    special = _module("cupyx.scipy.special", "Emulated cupyx.scipy.special (SciPy's).", {},
                      _numpy_lookup(special_lookup, _SPECIAL_NAMES, "cupyx.scipy.special"))
    from . import sparse as sparse_impl  # noqa: PLC0415

    sparse = _module("cupyx.scipy.sparse", "Emulated cupyx.scipy.sparse (SciPy matrices on the host).",
                     {name: getattr(sparse_impl, name) for name in sparse_impl.__all__},
                     lambda a: _missing("cupyx.scipy.sparse", a))
    scipy_mod = _module("cupyx.scipy", "Emulated cupyx.scipy (special, sparse).",
                        {"special": special, "sparse": sparse},
                        lambda a: _missing("cupyx.scipy", a), package=True)
    cupyx = _module("cupyx", "Emulated cupyx (scipy.special, scatter ops, pinned arrays).", {
        "scipy": scipy_mod, "scatter_add": _scatter(np.add), "scatter_max": _scatter(np.maximum),
        "scatter_min": _scatter(np.minimum),
        # pinned host memory is a NumPy array in CuPy too
        "empty_pinned": np.empty, "zeros_pinned": np.zeros, "empty_like_pinned": np.empty_like,
        "zeros_like_pinned": np.zeros_like,
    }, lambda a: _missing("cupyx", a), package=True)
    mods = [cupy, cuda, device, runtime, linalg, fft, random, cupyx, scipy_mod, special, sparse]
    return {m.__name__: m for m in mods}
