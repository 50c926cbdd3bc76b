"""The CPU emulator's CuPy array layer: CuPy's host/device rules, views, dtypes, namespace."""
from __future__ import annotations

import copy
import operator
import pickle
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cuda_emulator.array import CUDARuntimeError, ndarray
from cuda_emulator.namespace import build

MODS = build()
cp = MODS["cupy"]
IMPLICIT = "Implicit conversion to a NumPy array is not allowed"


@pytest.fixture
def x():
    return cp.asarray(np.arange(12.0).reshape(3, 4))


@pytest.fixture
def installed(monkeypatch):
    for name, mod in MODS.items():
        monkeypatch.setitem(sys.modules, name, mod)
    return cp


# -- identity and host/device boundary ---------------------------------------------------
def test_looks_like_cupy(x):
    from otsolve.backends import is_cupy

    assert type(x).__module__ == "cupy" and type(x).__name__ == "ndarray" and cp.ndarray is ndarray
    assert is_cupy(x) and not is_cupy(x.get())
    assert repr(x).startswith("array([[ 0.,  1.") and str(cp.asarray([1, 2])) == "[1 2]"
    assert cp.__version__ == "0.0.0+emulator"


@pytest.mark.parametrize("convert", [np.asarray, np.array, lambda a: a.__array__(),
                                     lambda a: np.testing.assert_allclose(a, 0)])
def test_implicit_conversion_refused(x, convert):
    with pytest.raises(TypeError, match=IMPLICIT):
        convert(x)


def test_get_and_asarray_copy(x):
    h = x.get()
    assert type(h) is np.ndarray and h.flags.c_contiguous
    h[0, 0] = 99
    assert float(x[0, 0]) == 0
    assert type(cp.asnumpy(x)) is np.ndarray and cp.asnumpy(h) is h
    np.testing.assert_array_equal(x.T.get(), h.T * (h.T != 99))  # non-contiguous source
    host = np.zeros(3)
    dev = cp.asarray(host)
    host[0] = 1  # a transfer copies: the device array does not alias the host one
    assert float(dev[0]) == 0
    assert cp.asarray(x) is x and cp.array(x) is not x and cp.array(x, copy=None) is x
    assert cp.asarray(x, dtype=cp.float32).dtype == np.float32
    assert cp.asarray([x[0, 0], x[0, 1]]).shape == (2,)  # lists of device scalars


def test_set(x):
    x.set(np.ones((3, 4)))
    assert float(x.sum()) == 12
    with pytest.raises(TypeError):
        x.set(np.ones((3, 4), dtype=np.float32))
    with pytest.raises(ValueError):
        x.set(np.ones(4))
    with pytest.raises(TypeError):
        x.set(x)


# -- mixing with NumPy arrays --------------------------------------------------------------
MIXES = {
    "x + h": lambda x, h: x + h, "h + x": lambda x, h: h + x, "x * h": lambda x, h: x * h,
    "h - x": lambda x, h: h - x, "x @ h": lambda x, h: x @ h.T, "h @ x": lambda x, h: h.T @ x,
    "x < h": lambda x, h: x < h, "h == x": lambda x, h: h == x, "x != h": lambda x, h: x != h,
    "np.add": lambda x, h: np.add(x, h), "np.add(h)": lambda x, h: np.add(h, x),
    "np.maximum": lambda x, h: np.maximum(x, h), "cp.add": lambda x, h: cp.add(x, h),
    "np.concatenate": lambda x, h: np.concatenate([x, h]), "cp.sum": lambda x, h: cp.sum(h),
    "cp.where": lambda x, h: cp.where(x > 1, h, 0), "np.exp(out=h)": lambda x, h: np.exp(x, out=h),
    "x.clip": lambda x, h: x.clip(h, None), "x += h": lambda x, h: x.__iadd__(h),
    "x.dot": lambda x, h: x.dot(h.T), "ascontiguousarray": lambda x, h: cp.ascontiguousarray(h),
    "x[...] = h": lambda x, h: x.__setitem__(Ellipsis, h), "x[0] = h[0]": lambda x, h: x.__setitem__(0, h[0]),
    "x.fill(h)": lambda x, h: x.fill(h),
}


@pytest.mark.parametrize("name", MIXES)
def test_numpy_arrays_do_not_mix(x, name):
    h = np.ones((3, 4))
    with pytest.raises(TypeError):
        MIXES[name](x, h)


def test_what_cupy_accepts_from_the_host(x):
    # scalars, 0-d host arrays in comparisons, host index arrays, host values through array indices
    assert (x + np.float32(2)).dtype == np.float64 and (x < np.array(3.0)).sum().item() == 3
    assert x[np.array([0, 2])].shape == (2, 4) and x[[True, False, True]].shape == (2, 4)
    x[np.array([0, 2])] = np.full(4, -1.0)  # CuPy's scatter copies host values in
    x[x > 10] = np.array([7.0])
    np.testing.assert_array_equal(x.get()[[0, 2]], [[-1] * 4, [-1] * 4])
    assert float(x.max()) == 7
    x[...] = np.array(5.0)  # a 0-d host array is a scalar for fill
    x[0] = np.int64(1)
    assert x.get().tolist()[:2] == [[1.0] * 4, [5.0] * 4]
    assert x.take(np.array([0, 1])).get().tolist() == [1.0, 1.0]
    z = cp.zeros(3)
    np.add.at(z, np.array([0, 0]), 1)  # ufunc.at converts host indices, as indexing does
    cp.maximum.at(z, [2], 4)
    assert z.get().tolist() == [2, 0, 4]


def test_basic_setitem_host_array_is_cupys_fill_error(x):
    with pytest.raises(ValueError, match="non-scalar numpy.ndarray cannot be used for fill"):
        x[1:] = np.zeros((2, 4))  # CuPy raises ValueError; TypeError too here (the other mixes)
    with pytest.raises(ValueError):
        x[0] = [1, 2, 3, 4]


def test_eq_with_foreign_objects(x):
    assert (x == None).shape == (3, 4) and not bool((x == None).any())  # noqa: E711
    assert bool((x != None).all())  # noqa: E711
    with pytest.raises(TypeError):
        x + [1, 2, 3, 4]


# -- results, views, dtypes ----------------------------------------------------------------
def test_scalars_are_0d_arrays(x):
    for r in (x.sum(), x[0, 1], x.max(), x.argmax(), np.sum(x), np.linalg.norm(x), cp.linalg.norm(x),
              cp.mean(x), x.mean(), cp.allclose(x, x), cp.count_nonzero(x), x.sum() / 2, np.float32(2) * x.sum()):
        assert type(r) is ndarray and r.shape == ()
    s = x[1, 2]
    assert float(s) == 6 and int(s) == 6 and bool(s) and s.item() == 6.0 and s.tolist() == 6.0
    assert f"{s:.1f}" == "6.0" and complex(s) == 6
    with pytest.raises(TypeError):
        operator.index(cp.asarray(3))  # CuPy's ndarray has no __index__
    with pytest.raises(TypeError):
        len(s)
    with pytest.raises(TypeError):
        iter(s)
    with pytest.raises(ValueError, match="more than one element"):
        bool(x)
    with pytest.raises(TypeError):
        hash(x)
    rows = list(x)
    assert len(x) == 3 and len(rows) == 3 and all(type(r) is ndarray and r.shape == (4,) for r in rows)
    assert isinstance(cp.nonzero(x), tuple) and type(cp.nonzero(x)[0]) is ndarray


def test_views_write_through(x):
    ptr = x._a.ctypes.data
    row = x[0]
    row[...] = 1
    elem = x[2, 3]  # an integer index gives a 0-d view, as in CuPy
    elem[...] = 100
    x.T[0, 1] = 50  # x[1, 0]
    x.reshape(12)[5] = -5  # x[1, 1]
    x[:, ::2][2] = 0
    expect = np.arange(12.0).reshape(3, 4)
    expect[0], expect[2, 3], expect[1, 0], expect[1, 1], expect[2, ::2] = 1, 100, 50, -5, 0
    np.testing.assert_array_equal(x.get(), expect)
    y = x
    x += 1
    x *= 2
    x -= cp.ones(4)
    np.multiply(x, 0.5, out=x)
    assert y is x and x._a.ctypes.data == ptr
    assert cp.exp(x, out=x) is x and x.astype(cp.float64, copy=False) is x
    assert cp.ascontiguousarray(x) is x and x.data.ptr == ptr
    sub = x[1:, 1:]
    assert sub.data.ptr == ptr + 5 * 8 and not sub.flags.c_contiguous
    assert x.base is None and sub.base is not None


def test_buffer_interface(x):
    cai = x.__cuda_array_interface__
    assert cai["data"] == (x._a.ctypes.data, False) and cai["version"] == 3
    assert cai["shape"] == (3, 4) and cai["typestr"] == "<f8" and cai["strides"] is None
    t = x.T
    assert t.__cuda_array_interface__["strides"] == (8, 32) and t.flags.f_contiguous
    assert cp.zeros(0).__cuda_array_interface__["data"] == (0, False)
    assert (x.shape, x.size, x.ndim, x.itemsize, x.nbytes, x.strides) == ((3, 4), 12, 2, 8, 96, (32, 8))
    assert x.flags.c_contiguous and x.flags["C_CONTIGUOUS"] and x.device.id == 0
    with x.device:
        pass


DTYPES = [np.bool_, np.int8, np.uint8, np.int32, np.int64, np.float32, np.float64, np.complex64]
SCALARS = [True, 3, 2.5, 1j, np.float32(2), np.float64(2), np.int16(3), np.uint8(4)]
OPS = [operator.add, operator.mul, operator.truediv, operator.sub, operator.lt, np.maximum, np.arctan2]


@given(st.sampled_from(DTYPES), st.sampled_from(DTYPES + SCALARS), st.sampled_from(OPS), st.booleans())
def test_dtype_promotion_matches_numpy(dt, other, op, reflect):
    h = np.arange(1, 4).astype(dt)
    ho = np.arange(2, 5).astype(other) if isinstance(other, type) else other
    d, do = cp.asarray(h), (cp.asarray(ho) if isinstance(ho, np.ndarray) else ho)
    args, dargs = ((ho, h), (do, d)) if reflect else ((h, ho), (d, do))
    try:
        with np.errstate(all="ignore"):
            ref = op(*args)
    except TypeError:  # NumPy refuses (bool - bool, arctan2 of complex, ...): so must the emulator
        with pytest.raises(TypeError):
            op(*dargs)
        return
    res = op(*dargs)
    assert type(res) is ndarray and res.dtype == ref.dtype
    np.testing.assert_array_equal(res.get(), ref)


def test_unsupported_dtypes():
    for bad in (np.array(["a"]), np.array([None]), np.zeros(2, dtype=np.longdouble)):
        with pytest.raises(ValueError, match="Unsupported dtype"):
            cp.asarray(bad)


def test_no_floating_point_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        z = cp.zeros(2)
        assert bool(cp.isneginf(cp.log(z)).all()) and bool(cp.isnan(z / z).all())
        z /= 0


def test_copy_pickle_methods(x):
    for c in (copy.copy(x), copy.deepcopy(x), pickle.loads(pickle.dumps(x)), x.copy()):
        assert type(c) is ndarray and c.data.ptr != x.data.ptr
        np.testing.assert_array_equal(c.get(), x.get())
    s = cp.asarray([3.0, 1.0, 2.0])
    assert s.sort() is None and s.get().tolist() == [1, 2, 3]
    assert x.ravel().shape == (12,) and x.flatten().shape == (12,) and x.squeeze().shape == (3, 4)
    assert x.swapaxes(0, 1).shape == (4, 3) and x.transpose().shape == (4, 3) and x.view().data.ptr == x.data.ptr
    assert x.cumsum(axis=1).dtype == np.float64 and float(x.prod()) == 0 and bool(x.any()) and not bool(x.all())
    assert x.argsort(axis=1).dtype == np.int64 and x.round(1).shape == (3, 4) and x.conj().shape == (3, 4)
    assert int(x.argmin()) == 0 and float(x.min()) == 0 and x.astype(cp.int32).dtype == np.int32
    assert float(x.dot(x.T)[0, 0]) == 14 and float((x @ x.T)[0, 0]) == 14
    x.fill(2)
    assert float(x.sum()) == 24
    with pytest.raises(TypeError):
        x.dot(2.0)  # CuPy types the argument


# -- namespace ---------------------------------------------------------------------------
def test_namespace_passthrough_and_strictness():
    assert cp.float32 is np.float32 and cp.inf == np.inf and cp.newaxis is None and cp.pi == np.pi
    assert cp.zeros((2, 3), dtype=cp.float32).dtype == np.float32 and type(cp.eye(2)) is ndarray
    assert cp.full(3, 1 / 3).shape == (3,) and type(cp.zeros_like(cp.ones(2))) is ndarray
    assert cp.arange(5).dtype == np.int64 and cp.linspace(0, 1, 5).shape == (5,)
    assert cp.get_array_module(cp.ones(1)) is cp and cp.get_array_module(np.ones(1)) is np
    for missing in ("errstate", "vecdot", "testing"):
        with pytest.raises(AttributeError):
            getattr(cp, missing)
    with pytest.raises(TypeError):
        np.vecdot(cp.ones(2), cp.ones(2))  # NumPy function CuPy lacks: no dispatch
    pool = cp.get_default_memory_pool()
    pool.free_all_blocks()
    pool.set_limit(size=1 << 20)
    assert pool.used_bytes() == 0 and pool.total_bytes() == 0 and pool.get_limit() == 1 << 20
    cp.get_default_pinned_memory_pool().free_all_blocks()
    cp.random.seed(1)
    r = cp.random.random((3,), dtype=cp.float32)
    assert type(r) is ndarray and r.dtype == np.float32 and cp.random.standard_normal(4).shape == (4,)
    assert cp.ascontiguousarray(cp.asarray(1.0)).shape == (1,)
    assert cp.ascontiguousarray(cp.ones((2, 3)).T).flags.c_contiguous
    v = cp.asarray([[1.0, 2.0], [3.0, 0.0]])
    from scipy.special import logsumexp

    np.testing.assert_allclose(MODS["cupyx.scipy.special"].logsumexp(v, axis=1).get(),
                               logsumexp(v.get(), axis=1))
    assert type(cp.r_[v[0], v[1]]) is ndarray and cp.add.reduce(v).shape == (2,)


def test_cuda_module():
    cuda = cp.cuda
    assert cuda.Device().id == 0 and cuda.Device(0).compute_capability == "90"
    with cuda.Device(0) as dev:
        dev.synchronize()
    with pytest.raises(CUDARuntimeError):
        cuda.Device(1).use()
    rt = cuda.runtime
    props = rt.getDeviceProperties(0)
    assert props["name"] == b"otsolve CPU emulator" and props["major"] == 9 and props["multiProcessorCount"] == 1
    assert rt.getDeviceCount() == 1 and rt.runtimeGetVersion() == 12000 and rt.driverGetVersion() > 0
    free, total = rt.memGetInfo()
    assert 0 < free <= total
    rt.deviceSynchronize()
    with pytest.raises(rt.CUDARuntimeError):
        rt.getDeviceProperties(1)
    s = cuda.Stream(non_blocking=True)
    with s:
        assert cuda.get_current_stream() is s
    assert cuda.get_current_stream() is cuda.Stream.null
    start, end = cuda.Event(), cuda.Event()
    start.record()
    end.record()
    end.synchronize()
    assert cuda.get_elapsed_time(start, end) >= 0
    with pytest.raises(CUDARuntimeError):
        cuda.get_elapsed_time(cuda.Event(), end)


def test_import_and_otsolve_dispatch(installed):
    import cupy
    import cupy.cuda
    import cupyx.scipy.special
    from cupy.cuda import runtime

    from otsolve._validation import as_float_array
    from otsolve.backends import BatchedLinearProblem, BatchedSinkhorn, cupy_available, get_namespace

    assert cupy is cp and runtime is cp.cuda.runtime and cupyx.scipy.special.logsumexp
    with pytest.raises(ModuleNotFoundError):
        import cupy.nonexistent  # noqa: F401
    d = cp.ones(3, dtype=cp.int32)
    assert get_namespace(d, None, 1.0) is cp and cupy_available()
    assert as_float_array(d, "d").dtype == np.float64
    with pytest.raises(ValueError, match="mixed"):
        get_namespace(d, np.ones(3))
    C = np.random.default_rng(0).random((2, 6, 7))
    ref = BatchedSinkhorn(tol=1e-9)(BatchedLinearProblem(C, epsilon=0.2))
    res = BatchedSinkhorn(tol=1e-9, compiled=False)(BatchedLinearProblem(cp.asarray(C), epsilon=0.2))
    assert type(res.f) is ndarray and res.converged
    np.testing.assert_allclose(res.plan.get(), ref.plan, atol=1e-10)


def test_emulated_cupyx_sparse_matches_scipy():
    import scipy.sparse as sp

    mods = build()
    cp, cusp = mods["cupy"], mods["cupyx.scipy.sparse"]
    rng = np.random.default_rng(0)
    host = sp.random(12, 9, density=0.3, format="csr", random_state=1)
    dev = cusp.csr_matrix(host)
    assert cusp.issparse(dev) and not cusp.issparse(host) and dev.nnz == host.nnz
    v = rng.random(9)
    np.testing.assert_allclose((dev @ cp.asarray(v)).get(), host @ v)
    np.testing.assert_allclose(dev.T.toarray().get(), host.T.toarray())
    np.testing.assert_array_equal(dev.indptr.get(), host.indptr)
    assert sp.issparse(dev.get()) and dev.tocsc().format == "csc"
    with pytest.raises(TypeError, match="Unsupported type"):
        dev @ v  # a NumPy vector, as in CuPy
    rebuilt = cusp.csr_matrix((dev.data, dev.indices, dev.indptr), shape=dev.shape)
    np.testing.assert_allclose(rebuilt.toarray().get(), host.toarray())
