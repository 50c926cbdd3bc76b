"""Emulated ``cupyx.scipy.sparse``: CSR / CSC / COO matrices whose arrays are emulated CuPy arrays.

A thin wrapper of a SciPy matrix (the host copy) with CuPy's constructors and the members otsolve
and its users touch: ``data``, ``indices``, ``indptr`` (device arrays), ``shape``, ``nnz``,
``dtype``, ``format``, ``T``, ``toarray`` (a device array), ``get`` (a SciPy copy), format
conversions, ``@`` with device vectors and matrices, ``sum``. As in CuPy, a NumPy array is not
accepted where a device array is expected.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp

from .array import check_no_numpy, ndarray, unwrap, wrap

__all__ = ["spmatrix", "csr_matrix", "csc_matrix", "coo_matrix", "issparse", "isspmatrix"]


class spmatrix:
    """Base of the emulated sparse matrices (``cupyx.scipy.sparse.spmatrix``)."""

    format = ""
    _scipy = sp.csr_matrix

    def __init__(self, arg1: Any, shape: tuple[int, int] | None = None, dtype: Any = None,
                 copy: bool = False) -> None:
        if isinstance(arg1, spmatrix):
            m = arg1._m
        elif sp.issparse(arg1):  # host -> device copy, as cupyx's constructors do
            m = arg1
        elif isinstance(arg1, ndarray):
            m = arg1._a
        elif isinstance(arg1, tuple):
            check_no_numpy(arg1)
            m = self._scipy(unwrap(arg1), shape=shape)
        else:
            raise TypeError(f"Unsupported type {type(arg1)}")
        m = self._scipy(m, shape=shape, dtype=dtype, copy=True)
        if m.format in ("csr", "csc"):
            m.sort_indices()
        self._m = m

    # ---- members ------------------------------------------------------------------------------
    @property
    def shape(self) -> tuple[int, int]:
        return self._m.shape

    @property
    def nnz(self) -> int:
        return int(self._m.nnz)

    @property
    def dtype(self) -> np.dtype:
        return self._m.dtype

    @property
    def ndim(self) -> int:
        return 2

    @property
    def data(self) -> ndarray:
        return wrap(self._m.data)

    def get(self, stream: Any = None):
        """A SciPy copy on the host (CuPy's device -> host transfer)."""
        return self._m.copy()

    def toarray(self, order: Any = None) -> ndarray:
        return wrap(self._m.toarray(order=order))

    def tocsr(self, copy: bool = False) -> "csr_matrix":
        return csr_matrix(self._m.tocsr())

    def tocsc(self, copy: bool = False) -> "csc_matrix":
        return csc_matrix(self._m.tocsc())

    def tocoo(self, copy: bool = False) -> "coo_matrix":
        return coo_matrix(self._m.tocoo())

    @property
    def T(self) -> "spmatrix":
        return self.transpose()

    def transpose(self, axes: Any = None, copy: bool = False) -> "spmatrix":
        t = self._m.transpose()
        return {"csr": csr_matrix, "csc": csc_matrix, "coo": coo_matrix}[t.format](t)

    def sum(self, axis: Any = None, dtype: Any = None, out: Any = None) -> ndarray:
        return wrap(np.asarray(self._m.sum(axis=axis, dtype=dtype)))

    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, spmatrix):
            r = self._m @ other._m
            return {"csr": csr_matrix, "csc": csc_matrix, "coo": coo_matrix}[r.format](r)
        check_no_numpy((other,))
        if not isinstance(other, ndarray):
            raise TypeError(f"Unsupported type {type(other)}")
        return wrap(np.asarray(self._m @ other._a))

    dot = __matmul__

    def __mul__(self, other: Any) -> "spmatrix":
        if np.isscalar(other) or isinstance(other, np.generic):
            return type(self)(self._m * other)
        return self.__matmul__(other)

    __rmul__ = __mul__

    def __repr__(self) -> str:
        return (f"<{self.shape[0]}x{self.shape[1]} sparse matrix of type '{self.dtype.type}' with {self.nnz} "
                f"stored elements in {self.format.upper()} format (CuPy CPU emulator)>")


class _compressed(spmatrix):
    @property
    def indices(self) -> ndarray:
        return wrap(self._m.indices)

    @property
    def indptr(self) -> ndarray:
        return wrap(self._m.indptr)


class csr_matrix(_compressed):
    """Emulated ``cupyx.scipy.sparse.csr_matrix``."""

    format = "csr"
    _scipy = sp.csr_matrix


class csc_matrix(_compressed):
    """Emulated ``cupyx.scipy.sparse.csc_matrix``."""

    format = "csc"
    _scipy = sp.csc_matrix


class coo_matrix(spmatrix):
    """Emulated ``cupyx.scipy.sparse.coo_matrix``."""

    format = "coo"
    _scipy = sp.coo_matrix

    @property
    def row(self) -> ndarray:
        return wrap(self._m.row)

    @property
    def col(self) -> ndarray:
        return wrap(self._m.col)


for _cls in (spmatrix, csr_matrix, csc_matrix, coo_matrix):
    _cls.__module__ = "cupyx.scipy.sparse"


def issparse(x: Any) -> bool:
    """True for an emulated CuPy sparse matrix (SciPy matrices are not CuPy's)."""
    return isinstance(x, spmatrix)


isspmatrix = issparse
