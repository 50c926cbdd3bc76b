"""HDF5 storage of a generated PDE dataset: checked writes, durable completion flags, resume.

Layout (one file, arrays indexed by sample; names of the two field arrays depend on the
layout, see :mod:`otsolve.datagen.layouts`): ``inputs`` (N, c, s, s[, s]), ``solutions``
(N, s, s[, s]), ``done`` (N,) bool, ``order`` (N,) solve order, ``iterations``/``matvecs`` (N,)
int, ``residual``/``solve_time`` (N,) float, ``converged`` (N,) bool, node coordinates, the
generation settings as attributes and a JSON ``description``.

Reliability rules (issue #14):

* The file is created under a temporary name, fully allocated (unwritten rows are NaN), flushed
  and fsynced, then renamed into place: ``out`` either does not exist or is complete. A run killed
  during creation leaves only the temporary file, which the next run replaces.
* Every write is checked: HDF5 errors are turned into :class:`DatagenIOError`, and the bytes of
  every written row are read back from the file (``pread``) and compared. A chunk's data is
  written, flushed, verified and fsynced before its ``done`` flags, which are then written,
  verified and fsynced the same way. A sample marked done therefore has its data on disk.
* Resuming is allowed only with the same settings (all of them: generation and solver); the
  message names the first differing one. A finished file is only ever opened read-only.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np

from .layouts import coordinates, field_names, from_layout, to_layout

__all__ = ["FORMAT", "DatagenIOError", "SETTING_FLAGS", "compare_settings", "H5Store", "read_dataset",
           "is_zarr_path"]

FORMAT = "otsolve-datagen/2"

# every stored setting and the CLI flag that sets it (named in "resume refused" messages)
SETTING_FLAGS = {
    "format": "the file format (made by another otsolve version)", "family": "FAMILY", "grid": "--grid",
    "samples": "--samples", "seed": "--seed", "options": "--options", "tol": "--tol", "dtype": "--dtype",
    "method": "--method", "precond": "--precond", "restart": "--restart", "k": "--k", "sort": "--sort",
    "chunk_size": "--chunk-size", "layout": "--layout",
}

_STATS = {"iterations": (np.int64, -1), "matvecs": (np.int64, -1), "residual": (np.float64, np.nan),
          "solve_time": (np.float64, np.nan), "converged": (bool, False)}
_KILL_ENV = "OTSOLVE_DATAGEN_KILL_AT_WRITE"


class DatagenIOError(OSError):
    """Writing the dataset failed (disk full, I/O error, permission...): the run stopped; every
    sample marked done is intact, and rerunning the same command resumes."""


def _fault_point() -> None:
    """Test hook: ``OTSOLVE_DATAGEN_KILL_AT_WRITE=n`` SIGKILLs this process just before its n-th
    write step (creation steps, data writes, flushes, flag writes), to test resume at every point."""
    global _WRITE_STEP
    if _KILL_AT <= 0:
        return
    _WRITE_STEP += 1
    if _WRITE_STEP >= _KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


_KILL_AT = int(os.environ.get(_KILL_ENV, "0") or 0)
_WRITE_STEP = 0


def is_zarr_path(path: str | os.PathLike) -> bool:
    """``.zarr`` directories and fsspec URLs ending in ``.zarr`` are Zarr stores."""
    return str(path).rstrip("/").endswith(".zarr")


def _plain(v: Any) -> Any:
    if isinstance(v, bytes):
        v = v.decode()
    if isinstance(v, np.generic):
        v = v.item()
    return v


def compare_settings(path: Any, stored: dict[str, Any], settings: dict[str, Any]) -> None:
    """Refuse (ValueError naming the setting) to resume ``path`` with different settings."""
    fmt = _plain(stored.get("format"))
    if fmt != FORMAT:
        raise ValueError(f"{path} was written by another otsolve datagen format ({fmt!r}, this version "
                         f"writes {FORMAT!r}); choose another --out")
    for key, new in settings.items():
        old = _plain(stored.get(key))
        if key == "tol":
            same = old is not None and float(old) == float(new)
        elif key == "options":
            same = old is not None and json.loads(old) == json.loads(new)
        else:
            same = str(old) == str(new)
        if not same:
            flag = SETTING_FLAGS.get(key, key)
            raise ValueError(f"{path} was generated with {key}={old!r} ({flag}); this run asks for {new!r}. "
                             "Rerun with the same settings to resume, or choose another --out")


def _h5_signature(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(8) == b"\x89HDF\r\n\x1a\n"
    except OSError:
        return False


def _interrupted_creation(path: Path) -> bool:
    """A file left by a run killed while creating it (older versions created in place): empty,
    or an HDF5 file that cannot be opened or holds none of our attributes and no datasets."""
    import h5py

    size = path.stat().st_size
    if size == 0:
        return True
    if not _h5_signature(path):
        return False
    try:
        with h5py.File(path, "r") as f:
            return len(f.attrs) == 0 and len(f.keys()) == 0
    except Exception:  # noqa: BLE001 - h5py raises several types for a damaged file
        return size < 4096  # a truncated superblock: nothing of value can be in it


class H5Store:
    """One HDF5 dataset file: inspect, create (atomically), and write chunks (checked, durable)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.f = None
        self.fd = None

    # --- inspection (read-only) -------------------------------------------------------------
    def inspect(self, settings: dict[str, Any]) -> dict[str, Any] | None:
        """None if the file must be created, else ``{"order", "done"}`` (``done`` by sample index)
        after checking the settings. Never opens the file for writing."""
        import h5py

        if not self.path.exists():
            return None
        if self.path.is_dir():
            raise ValueError(f"{self.path} is a directory; choose a file name for --out (or a .zarr store)")
        if _interrupted_creation(self.path):
            return None
        try:
            f = h5py.File(self.path, "r")
        except Exception as exc:  # noqa: BLE001
            if not _h5_signature(self.path):
                raise ValueError(f"{self.path} exists and is not an HDF5 file; choose another --out") from None
            raise DatagenIOError(errno.EIO, f"{self.path} exists but cannot be read as HDF5 ({exc})") from None
        try:
            if "format" not in f.attrs:
                raise ValueError(f"{self.path} exists and is not an otsolve datagen file; choose another --out")
            compare_settings(self.path, dict(f.attrs), settings)
            return {"order": f["order"][()], "done": f["done"][()].astype(bool)}
        finally:
            f.close()

    # --- creation ---------------------------------------------------------------------------
    def create(self, settings: dict[str, Any], description: str, input_shape: tuple[int, ...],
               sol_shape: tuple[int, ...], order: np.ndarray, grid: int, dim: int) -> None:
        """Create the complete file under a temporary name, then rename it into place."""
        import h5py

        from .layouts import field_shapes

        layout = settings["layout"]
        N = int(settings["samples"])
        dt = np.dtype(settings["dtype"]).newbyteorder("<")
        in_name, sol_name = field_names(layout)
        in_shape, out_shape = field_shapes(layout, N, input_shape, sol_shape)
        need = (int(np.prod(in_shape)) + int(np.prod(out_shape))) * dt.itemsize + N * 42 + dim * grid * 8 + 16384
        parent = self.path.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
            usage = shutil.disk_usage(parent)
        except OSError as exc:
            raise DatagenIOError(exc.errno, f"cannot create {self.path}: {exc.strerror or exc}") from None
        if usage.total > 0 and usage.free < need:  # (pseudo-filesystems report 0 and fail below)
            raise DatagenIOError(errno.ENOSPC, f"cannot create {self.path}: it needs {_size(need)} and "
                                 f"{parent} has {_size(usage.free)} free")
        tmp = self.path.with_name(self.path.name + ".creating")
        f = None
        try:
            tmp.unlink(missing_ok=True)
            _fault_point()
            f = h5py.File(tmp, "w")
            for key, val in settings.items():
                f.attrs[key] = val
            f.attrs["description"] = description
            _fault_point()

            def dataset(name, shape, dtype, fill, data=None):
                # contiguous and allocated (and filled) now: later writes need no new disk space
                dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
                dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
                if data is not None:
                    f.create_dataset(name, data=data, dcpl=dcpl)
                else:
                    f.create_dataset(name, shape=shape, dtype=dtype, fillvalue=fill, fill_time="alloc", dcpl=dcpl)
                _fault_point()

            dataset(in_name, in_shape, dt, np.nan)
            dataset(sol_name, out_shape, dt, np.nan)
            dataset("done", (N,), bool, False)
            for name, (sdt, fill) in _STATS.items():
                dataset(name, (N,), sdt, fill)
            dataset("order", None, None, None, data=np.asarray(order, dtype="<i8"))
            for name, x in coordinates(grid, dim).items():
                dataset(name, None, None, None, data=x)
            f.flush()
            os.fsync(f.id.get_vfd_handle())
            f.close()
            f = None
            _fault_point()
            os.replace(tmp, self.path)
            _fsync_dir(parent)
        except Exception as exc:  # noqa: BLE001 - h5py reports write failures as OSError, ValueError...
            why = _why(exc)
            code = _errno(exc)
            del exc
            if f is not None:
                _quiet_close(f)
                f = None
            tmp.unlink(missing_ok=True)
            raise DatagenIOError(code, f"cannot create {self.path}: {why}") from None

    # --- writing ----------------------------------------------------------------------------
    def open_for_writing(self, samples_left: int) -> None:
        import h5py

        try:
            if not os.access(self.path, os.W_OK):
                raise PermissionError(errno.EACCES, "permission denied")
            self.f = h5py.File(self.path, "r+")
            self.fd = self.f.id.get_vfd_handle()
        except Exception as exc:  # noqa: BLE001
            raise DatagenIOError(_errno(exc),
                                 f"{self.path} cannot be opened for writing ({_why(exc)}); {samples_left} samples "
                                 "are left to do: make it writable and rerun to resume") from None
        self.layout = _plain(self.f.attrs["layout"])

    def write_chunk(self, res: dict[str, np.ndarray]) -> None:
        """Write one solved chunk at its samples' indices, then its done flags (both checked)."""
        f = self.f
        idx = np.asarray(res["index"], dtype=np.int64)
        srt = np.argsort(idx)
        idx = idx[srt]
        in_name, sol_name = field_names(self.layout)
        inp, sol = to_layout(self.layout, np.asarray(res["inputs"])[srt], np.asarray(res["solutions"])[srt])
        arrays = [(in_name, inp), (sol_name, sol)] + [(n, np.asarray(res[n])[srt]) for n in _STATS]
        try:
            for name, values in arrays:
                _fault_point()
                _write_rows(f[name], idx, values)
            _fault_point()
            f.flush()
            for name, values in arrays:
                _verify_rows(self.fd, f[name], idx, values, self.path)
            _fault_point()
            os.fsync(self.fd)  # the data is on disk before any of its flags
            _fault_point()
            _write_rows(f["done"], idx, np.ones(len(idx), dtype=bool))
            f.flush()
            _verify_rows(self.fd, f["done"], idx, np.ones(len(idx), dtype=bool), self.path)
            _fault_point()
            os.fsync(self.fd)
        except DatagenIOError:
            self.failed = True
            raise
        except Exception as exc:  # noqa: BLE001 - h5py reports write failures as OSError, ValueError...
            self.failed = True
            raise DatagenIOError(_errno(exc), f"writing {self.path} failed: {_why(exc)}") from None

    def close(self) -> None:
        if self.f is not None:
            f, self.f = self.f, None
            if getattr(self, "failed", False):
                _quiet_close(f)  # after a write error HDF5 may fail to close too: already reported
            else:
                try:
                    f.close()
                except Exception as exc:  # noqa: BLE001
                    raise DatagenIOError(_errno(exc), f"closing {self.path} failed: {_why(exc)}") from None


def _write_rows(dset, idx: np.ndarray, values: np.ndarray) -> None:
    """Write rows ``idx`` (increasing) of ``dset`` (the fault-injection tests replace this)."""
    dset[idx] = values


def _verify_rows(fd: int, dset, idx: np.ndarray, values: np.ndarray, path: Path) -> None:
    """Read the written rows back from the file and compare bytes (catches writes that HDF5
    reported as done but that never reached the file)."""
    off = dset.id.get_offset()
    if off is None:
        raise DatagenIOError(errno.EIO, f"{path}: dataset {dset.name} has no storage allocated")
    row = int(np.prod(dset.shape[1:], dtype=np.int64)) * dset.dtype.itemsize
    exp = np.ascontiguousarray(values, dtype=dset.dtype.newbyteorder("<") if dset.dtype.kind != "b" else np.uint8)
    exp = exp.reshape(len(idx), -1).view(np.uint8)
    # coalesce consecutive indices into single reads
    start = 0
    while start < len(idx):
        stop = start + 1
        while stop < len(idx) and idx[stop] == idx[stop - 1] + 1:
            stop += 1
        n = (stop - start) * row
        got = os.pread(fd, n, off + int(idx[start]) * row)
        if got != exp[start:stop].tobytes():
            raise DatagenIOError(errno.EIO, f"{path}: rows {idx[start]}..{idx[stop - 1]} of {dset.name} read back "
                                 "differ from what was written (the write did not reach the file)")
        start = stop


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _quiet_close(f) -> None:
    """Close an HDF5 file whose writes failed, without HDF5's repeated close errors on stderr."""
    import gc
    import sys

    hook = sys.unraisablehook
    sys.unraisablehook = lambda unraisable: None
    try:
        try:
            f.close()
        except Exception:  # noqa: BLE001 - the write error was reported already
            pass
        del f
        gc.collect()
    finally:
        sys.unraisablehook = hook


def _errno(exc: BaseException) -> int:
    e = getattr(exc, "errno", None)
    if e:
        return e
    text = str(exc)
    for code in (errno.ENOSPC, errno.EIO, errno.EACCES, errno.EROFS, errno.EDQUOT):
        if f"errno = {code}," in text:
            return code
    return errno.EIO


def _why(exc: BaseException) -> str:
    e = getattr(exc, "errno", None)
    if e:
        return f"{os.strerror(e)} (errno {e})"
    text = str(exc).replace("\n", " ")
    for code in (errno.ENOSPC, errno.EIO, errno.EACCES, errno.EROFS, errno.EDQUOT):
        if f"errno = {code}," in text:
            return f"{os.strerror(code)} (errno {code})"
    return text[:300]


def read_dataset(path: str | os.PathLike) -> dict[str, Any]:
    """Load a generated HDF5 file or Zarr store into memory, indexed by sample.

    Returns a dict with ``inputs`` (N, c, s..), ``solutions`` (N, s..), ``done``, ``order``,
    ``iterations``, ``matvecs``, ``residual``, ``solve_time``, ``converged`` (all by sample
    index, whatever the layout and format), the coordinates, and ``attrs`` (the settings, with
    ``options`` and ``description`` parsed).
    """
    if is_zarr_path(path):
        from .zarr_store import read_zarr

        return read_zarr(path)
    import h5py

    with h5py.File(path, "r") as f:
        attrs = {k: _plain(v) for k, v in f.attrs.items()}
        layout = attrs.get("layout", "otsolve")
        in_name, sol_name = field_names(layout)
        out = {name: f[name][()] for name in f.keys() if name not in (in_name, sol_name)}
        out["inputs"], out["solutions"] = from_layout(layout, f[in_name][()], f[sol_name][()])
    return _finish(out, attrs)


def _finish(out: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
    for key in ("options", "description"):
        if isinstance(attrs.get(key), str):
            attrs[key] = json.loads(attrs[key])
    out["attrs"] = attrs
    out["done"] = np.asarray(out["done"], dtype=bool)
    return out
