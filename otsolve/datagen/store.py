"""Chunked HDF5 storage for generated PDE data, with per-sample completion flags for resume.

Layout (one file, PDEBench-style arrays indexed by sample):
``inputs`` (N, c, s, s[, s]), ``solutions`` (N, s, s[, s]), ``done`` (N,) bool, ``order`` (N,)
solve order, ``iterations``/``matvecs`` (N,) int, ``residual``/``solve_time`` (N,) float, and
the generation settings as file attributes.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["FORMAT", "open_store", "read_dataset"]

FORMAT = "otsolve-datagen/1"
# settings that must match for a resumed run to continue the same dataset
_IDENTITY = ("family", "grid", "samples", "seed", "options", "tol", "dtype", "format")


def open_store(path: str | Path, settings: dict[str, Any], input_shape: tuple[int, ...],
               sol_shape: tuple[int, ...], order: np.ndarray | None):
    """Create the file, or reopen it for resume after checking the settings match.

    Returns ``(h5py.File, resumed: bool)``; ``order`` is written on creation.
    """
    import h5py

    path = Path(path)
    N = int(settings["samples"])
    if path.exists():
        try:
            f = h5py.File(path, "r+")
        except OSError as exc:
            raise OSError(f"{path} exists but cannot be opened as HDF5 ({exc}); remove it or choose another --out") from None
        if f.attrs.get("format") != FORMAT:
            f.close()
            raise ValueError(f"{path} exists and is not an otsolve datagen file; remove it or choose another --out")
        for key in _IDENTITY:
            old, new = f.attrs.get(key), settings[key]
            if isinstance(old, bytes):
                old = old.decode()
            if isinstance(old, np.generic):
                old = old.item()
            if key in ("tol",):
                same = old is not None and float(old) == float(new)
            else:
                same = str(old) == str(new)
            if not same:
                f.close()
                raise ValueError(f"{path} was generated with {key}={old!r}, this run asks for {new!r}; "
                                 "use the same settings to resume or another --out")
        return f, True
    path.parent.mkdir(parents=True, exist_ok=True)
    f = h5py.File(path, "w")
    for key, val in settings.items():
        f.attrs[key] = val
    dt = np.dtype(settings["dtype"])
    cin = (min(N, 16),) + tuple(input_shape)
    csol = (min(N, 16),) + tuple(sol_shape)
    f.create_dataset("inputs", shape=(N,) + tuple(input_shape), dtype=dt, chunks=cin)
    f.create_dataset("solutions", shape=(N,) + tuple(sol_shape), dtype=dt, chunks=csol)
    f.create_dataset("done", shape=(N,), dtype=bool, fillvalue=False)
    f.create_dataset("iterations", shape=(N,), dtype=np.int64, fillvalue=-1)
    f.create_dataset("matvecs", shape=(N,), dtype=np.int64, fillvalue=-1)
    f.create_dataset("residual", shape=(N,), dtype=np.float64, fillvalue=np.nan)
    f.create_dataset("solve_time", shape=(N,), dtype=np.float64, fillvalue=np.nan)
    f.create_dataset("order", data=np.asarray(order, dtype=np.int64))
    f.flush()
    return f, False


def write_chunk(f, res: dict[str, np.ndarray]) -> None:
    """Write one solved chunk at its samples' indices, then mark them done (flags last)."""
    idx = np.asarray(res["index"])
    srt = np.argsort(idx)  # h5py fancy indexing needs increasing indices
    idx = idx[srt]
    for name in ("inputs", "solutions", "iterations", "matvecs", "residual", "solve_time"):
        f[name][idx] = np.asarray(res[name])[srt]
    f.flush()  # data on disk before the flags: a kill in between only redoes this chunk
    f["done"][idx] = True
    f.flush()


def read_dataset(path: str | Path) -> dict[str, Any]:
    """Load a generated file into memory: arrays plus ``attrs`` (settings)."""
    import h5py

    with h5py.File(path, "r") as f:
        out = {name: f[name][()] for name in f.keys()}
        attrs = {}
        for k, v in f.attrs.items():
            attrs[k] = v.decode() if isinstance(v, bytes) else v
        if "options" in attrs:
            attrs["options"] = json.loads(attrs["options"])
        out["attrs"] = attrs
    return out
