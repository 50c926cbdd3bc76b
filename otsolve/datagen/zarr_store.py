"""Zarr storage of a generated PDE dataset: each worker writes its own chunk, no single writer.

Rows are in *solve order*: row ``p`` holds sample ``order[p]`` (stored as ``order``), so work
chunk ``c`` (sorted samples ``c*chunk_size ... (c+1)*chunk_size - 1``) is exactly Zarr chunk
``c`` of every array, and no two workers ever write the same object. The arrays and their names
are those of the HDF5 format (see :mod:`otsolve.datagen.store` and the layouts); ``read_dataset``
and :class:`~otsolve.datagen.TorchDataset` return samples by index for both formats.

Guarantees (the same as HDF5): Zarr writes each object whole (local stores write a temporary file
and rename it; object stores replace objects atomically), the data objects of a chunk are written
(and fsynced, on a local store) before its ``done`` object, and a store interrupted while being
created carries an ``otsolve_creating`` attribute (cleared by the last creation step) and is
recreated by the next run. Any fsspec URL ending in ``.zarr`` works the same way as a local
directory (``s3://bucket/run.zarr`` with s3fs installed, ``file:///scratch/run.zarr``...).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import numpy as np

from .layouts import coordinates, field_names, field_shapes, from_layout, to_layout
from .store import _STATS, DatagenIOError, _errno, _fault_point, _finish, _plain, _why, compare_settings

__all__ = ["ZarrStore", "write_zarr_chunk", "read_zarr"]

_CREATING = "otsolve_creating"


def _local_root(url: str) -> Path | None:
    if "://" not in url:
        return Path(url)
    if url.startswith("file://"):
        return Path(url[len("file://"):])
    return None


def _open(url: str, mode: str, attributes: dict | None = None):
    import zarr

    kw = {"attributes": attributes} if attributes is not None else {}
    if url.startswith("file://"):  # fsspec's local filesystem: directories made on demand
        kw["storage_options"] = {"auto_mkdir": True}
    return zarr.open_group(url, mode=mode, **kw)


class ZarrStore:
    """One Zarr dataset store (local directory or fsspec URL): inspect, create."""

    def __init__(self, url: str | os.PathLike) -> None:
        self.url = str(url).rstrip("/")
        self.root = _local_root(self.url)

    def inspect(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        """None if the store must be created, else ``{"order", "done"}`` (``done`` by sample)."""
        try:
            g = _open(self.url, "r")
        except (FileNotFoundError, KeyError, ValueError, OSError) as exc:
            if self._absent_or_debris():
                return None
            raise ValueError(f"{self.url} exists and is not an otsolve datagen Zarr store ({type(exc).__name__}); "
                             "choose another --out") from None
        attrs = dict(g.attrs)
        if attrs.get(_CREATING) or (not attrs and not list(g.keys())):
            return None  # killed while being created (an empty group: older versions): start again
        if "format" not in attrs:
            raise ValueError(f"{self.url} exists and is not an otsolve datagen store; choose another --out")
        compare_settings(self.url, attrs, settings)
        try:
            order = g["order"][:]
            done_rows = g["done"][:].astype(bool)
        except Exception as exc:  # noqa: BLE001 - any read failure of our own store is an I/O error
            raise DatagenIOError(errno.EIO, f"{self.url}: cannot read its progress ({_why(exc)})") from None
        done = np.zeros(len(order), dtype=bool)
        done[order] = done_rows
        return {"order": order, "done": done}

    def _absent_or_debris(self) -> bool:
        if self.root is not None:
            if not self.root.exists():
                return True
            if not self.root.is_dir():
                return False
            # what a run killed before its first metadata write can leave: nothing, or temp files
            return all(p.name.endswith(".partial") or p.is_dir() and not any(p.rglob("zarr.json"))
                       for p in self.root.iterdir())
        import fsspec

        fs, path = fsspec.core.url_to_fs(self.url)
        return not fs.exists(path) or not fs.ls(path)

    def create(self, settings: dict[str, Any], description: dict, input_shape: tuple[int, ...],
               sol_shape: tuple[int, ...], order: np.ndarray, grid: int, dim: int) -> None:
        layout = settings["layout"]
        N, cs = int(settings["samples"]), int(settings["chunk_size"])
        dt = np.dtype(settings["dtype"]).newbyteorder("<")
        in_name, sol_name = field_names(layout)
        in_shape, out_shape = field_shapes(layout, N, input_shape, sol_shape)
        axes = ("x", "y", "z")[:dim]
        in_dims = ("sample",) + axes if layout == "pdebench" else ("sample", "channel") + axes
        out_dims = ("sample", "t") + axes if layout == "pdebench" else ("sample",) + axes
        try:
            _fault_point()
            # the group's first metadata already carries the "being created" mark
            g = _open(self.url, "w", attributes={**settings, "description": description, _CREATING: True})
            _fault_point()
            g.create_array(in_name, shape=in_shape, chunks=(cs,) + in_shape[1:], dtype=dt, fill_value=np.nan,
                           dimension_names=in_dims)
            g.create_array(sol_name, shape=out_shape, chunks=(cs,) + out_shape[1:], dtype=dt, fill_value=np.nan,
                           dimension_names=out_dims)
            g.create_array("done", shape=(N,), chunks=(cs,), dtype=bool, fill_value=False)
            for name, (sdt, fill) in _STATS.items():
                g.create_array(name, shape=(N,), chunks=(cs,), dtype=sdt, fill_value=fill)
                _fault_point()
            g.create_array("order", data=np.asarray(order, dtype="<i8"))
            for name, x in coordinates(grid, dim).items():
                g.create_array(name, data=x)
            _fault_point()
            del g.attrs[_CREATING]  # the last creation step: the store is now complete
        except Exception as exc:  # noqa: BLE001 - zarr and fsspec raise several types
            raise DatagenIOError(_errno(exc), f"cannot create {self.url}: {_why(exc)}") from None

    def open_for_writing(self, samples_left: int) -> None:
        if self.root is not None:
            if not os.access(self.root, os.W_OK):
                raise DatagenIOError(errno.EACCES, f"{self.url} is not writable; {samples_left} samples are left to do: "
                                     "make it writable and rerun to resume")
            for p in self.root.rglob("*.partial"):  # temp files of writes a kill interrupted
                p.unlink(missing_ok=True)

    def close(self) -> None:
        pass


def write_zarr_chunk(url: str, position: int, res: dict[str, np.ndarray]) -> None:
    """Write one solved chunk (rows ``position ...``, in solve order), then its done flags.

    Runs wherever the chunk was solved (a Dask worker writes its own chunk). The data objects
    are written (and fsynced on a local store) before the ``done`` object.
    """
    try:
        g = _open(url, "r+")
        layout = _plain(g.attrs["layout"])
        in_name, sol_name = field_names(layout)
        inp, sol = to_layout(layout, np.asarray(res["inputs"]), np.asarray(res["solutions"]))
        n = len(res["index"])
        rows = slice(position, position + n)
        names = [in_name, sol_name] + list(_STATS)
        for name, values in zip(names, [inp, sol] + [np.asarray(res[k]) for k in _STATS]):
            _fault_point()
            _write_array(g[name], rows, values)
        _fault_point()
        root = _local_root(url)
        if root is not None:
            _fsync_chunk(root, g, names, position // g["done"].chunks[0])
        _fault_point()
        _write_array(g["done"], rows, np.ones(n, dtype=bool))
        if root is not None:
            _fsync_chunk(root, g, ["done"], position // g["done"].chunks[0])
    except DatagenIOError:
        raise
    except Exception as exc:  # noqa: BLE001 - zarr and fsspec raise several types
        raise DatagenIOError(_errno(exc), f"writing {url} failed: {_why(exc)}") from None


def _write_array(arr, rows: slice, values: np.ndarray) -> None:
    """One checked write (the fault-injection tests replace this)."""
    arr[rows] = values


def _fsync_chunk(root: Path, g, names: list[str], c: int) -> None:
    for name in names:
        arr = g[name]
        key = arr.metadata.encode_chunk_key((c,) + (0,) * (arr.ndim - 1))
        p = root / name / key
        if p.exists():  # an all-fill chunk is not stored
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def read_zarr(url: str | os.PathLike) -> dict[str, Any]:
    """Load a Zarr dataset into memory, rows reordered by sample index (see ``read_dataset``)."""
    g = _open(str(url), "r")
    attrs = {k: v for k, v in g.attrs.items()}
    layout = attrs.get("layout", "otsolve")
    in_name, sol_name = field_names(layout)
    order = g["order"][:]
    inv = np.argsort(order)
    out: dict[str, Any] = {}
    for name in g.array_keys():
        if name in (in_name, sol_name, "order") or name.endswith("-coordinate"):
            continue
        out[name] = g[name][:][inv]
    out["order"] = order
    for name in g.array_keys():
        if name.endswith("-coordinate"):
            out[name] = g[name][:]
    out["inputs"], out["solutions"] = from_layout(layout, g[in_name][:][inv], g[sol_name][:][inv])
    return _finish(out, attrs)
