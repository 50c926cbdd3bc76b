"""A map-style dataset over a generated file (HDF5 or Zarr, any layout) for neural-operator training.

Torch is optional: with torch installed the dataset is a ``torch.utils.data.Dataset`` returning
tensors; without it, the same object returns NumPy arrays.
"""
from __future__ import annotations

import os
from typing import Any, Iterable

import numpy as np

from .layouts import field_names, from_layout
from .store import _plain, is_zarr_path

try:  # optional
    import torch
    from torch.utils.data import Dataset as _Base
except ImportError:  # pragma: no cover - exercised only without torch
    torch = None
    _Base = object

__all__ = ["TorchDataset"]


class TorchDataset(_Base):
    """Samples of an ``otsolve datagen`` output as ``(input, target)`` pairs, by sample index.

    Parameters
    ----------
    path : str or path
        An HDF5 file or a Zarr store (local or fsspec URL) written by ``otsolve datagen``, in
        either layout (``otsolve`` or ``pdebench``).
    indices : iterable of int, optional
        Sample indices to serve (e.g. a train/test split); default all.
    grid_channels : bool
        Append the node coordinates as extra input channels (x, y[, z]), as FNO-style models
        expect.
    only_done : bool
        Skip samples not yet solved (a run still in progress or interrupted). With ``False`` an
        unfinished sample raises ``ValueError`` when read.
    dtype : str
        dtype of the returned arrays (default float32).

    Each item is ``(x, y)``: ``x`` (c [+ dim], s, ..., s) the input fields (channel meaning in the
    file's ``description`` attribute), ``y`` (1, s, ..., s) the solution on the full node grid.
    Files are opened lazily in each process, so the dataset works with ``DataLoader(num_workers>0)``.

    Examples
    --------
    >>> ds = TorchDataset("darcy.h5", grid_channels=True)          # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=32, shuffle=True)  # doctest: +SKIP
    """

    def __init__(self, path: str | os.PathLike, indices: Iterable[int] | None = None, *, grid_channels: bool = False,
                 only_done: bool = True, dtype: str = "float32") -> None:
        self.path = str(path)
        self.zarr = is_zarr_path(path)
        self.grid_channels = bool(grid_channels)
        self.dtype = np.dtype(dtype)
        self._handle = None
        meta = self._open()
        attrs = {k: _plain(v) for k, v in meta.attrs.items()}
        if "format" not in attrs:
            raise ValueError(f"{self.path} is not an otsolve datagen output")
        self.layout = attrs.get("layout", "otsolve")
        self.attrs = attrs
        N = int(attrs["samples"])
        order = np.asarray(meta["order"][:])
        done_rows = np.asarray(meta["done"][:], dtype=bool)
        if self.zarr:  # rows in solve order
            self._row = np.empty(N, dtype=np.int64)
            self._row[order] = np.arange(N)
            done = np.zeros(N, dtype=bool)
            done[order] = done_rows
        else:
            self._row = np.arange(N)
            done = done_rows
        self.dim = len(meta[field_names(self.layout)[1]].shape) - (2 if self.layout == "pdebench" else 1)
        self.coords = [np.asarray(meta[f"{a}-coordinate"][:]) for a in "xyz"[: self.dim]]
        idx = np.arange(N) if indices is None else np.asarray(list(indices), dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= N):
            raise ValueError(f"indices must lie in [0, {N}), got {idx.min()}..{idx.max()}")
        self.done = done
        self.samples = idx[done[idx]] if only_done else idx
        self._close()

    def _open(self):
        if self._handle is None:
            if self.zarr:
                import zarr

                self._handle = zarr.open_group(self.path, mode="r")
            else:
                import h5py

                self._handle = h5py.File(self.path, "r")
        return self._handle

    def _close(self) -> None:
        if self._handle is not None and not self.zarr:
            self._handle.close()
        self._handle = None

    def __getstate__(self) -> dict[str, Any]:  # DataLoader workers reopen the file themselves
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        s = int(self.samples[i])
        if not self.done[s]:
            raise ValueError(f"sample {s} of {self.path} is not solved yet")
        f = self._open()
        r = int(self._row[s])
        in_name, sol_name = field_names(self.layout)
        x, u = from_layout(self.layout, np.asarray(f[in_name][r: r + 1]), np.asarray(f[sol_name][r: r + 1]))
        x, u = x[0].astype(self.dtype), u.astype(self.dtype)  # u: (1, s, ..., s)
        if self.grid_channels:
            mesh = np.meshgrid(*self.coords, indexing="ij")
            x = np.concatenate([x, np.stack(mesh).astype(self.dtype)], axis=0)
        if torch is not None:
            return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(u))
        return x, u

    def __repr__(self) -> str:
        return (f"TorchDataset({self.path!r}, {len(self)} samples, family={self.attrs.get('family')}, "
                f"grid={self.attrs.get('grid')}, layout={self.layout})")
