"""Generate a PDE dataset: sample, sort (SKR), solve with recycling, store; resumable, distributable."""
from __future__ import annotations

import difflib
import inspect
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._validation import check_positive_int
from ..pde import FAMILIES, make_system
from .layouts import check_layout, describe
from .precond import build_preconditioner, check_precond
from .store import FORMAT, DatagenIOError, H5Store, is_zarr_path

__all__ = ["generate", "solve_chunk", "default_method", "family_options"]

SORTS = ("nn", "greedy", "hilbert", "none")


def default_method(family: str) -> str:
    """Recycled CG for the SPD families, GCRO-DR for (indefinite) Helmholtz."""
    return "gcrodr" if family == "helmholtz" else "rcg"


def family_options(family: str) -> dict[str, Any]:
    """The options a family accepts (``--options`` keys) and their defaults."""
    if family not in FAMILIES:
        raise ValueError(f"unknown PDE family {family!r}; choose from {sorted(FAMILIES)}")
    fn = FAMILIES["darcy"] if family == "darcy3d" else FAMILIES[family]
    return {name: p.default for name, p in inspect.signature(fn).parameters.items()
            if p.kind is inspect.Parameter.KEYWORD_ONLY and name != "dim"}


def _normalise_options(family: str, options: Any) -> dict[str, Any]:
    """Defaults filled in, unknown keys refused by name (with the closest valid key)."""
    if options is None:
        options = {}
    if not isinstance(options, dict):
        raise ValueError(f"options must be a dict (JSON object), got {type(options).__name__}")
    valid = family_options(family)
    for key in options:
        if key not in valid:
            close = difflib.get_close_matches(str(key), list(valid), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"options: unknown key {key!r} for {family}{hint}; valid keys: {', '.join(sorted(valid))}")
    for key, value in options.items():
        _check_option_type(family, key, value, valid[key])
    full = {**valid, **options}
    try:  # JSON round trip: what is stored is what is used (tuples become lists)
        full = json.loads(json.dumps(full, sort_keys=True))
    except (TypeError, ValueError):
        raise ValueError(f"options must be JSON-serialisable, got {options!r}") from None
    return full


def _check_option_type(family: str, key: str, value: Any, default: Any) -> None:
    """The type of an option value must be that of its default (a number, a string, a pair...)."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    if number(default):
        ok = number(value)
        want = "a number"
    elif isinstance(default, str):
        ok = isinstance(value, str)
        want = "a string"
    elif isinstance(default, (tuple, list)):
        ok = isinstance(value, (tuple, list)) and len(value) == len(default) and all(number(v) for v in value)
        want = f"a list of {len(default)} numbers"
    else:
        return
    if not ok:
        raise ValueError(f"options: {key} for {family} must be {want} (default {json.dumps(default)}), got {value!r}")


def solve_chunk(family: str, grid: int, seed: int, indices, options: dict, solver_opts: dict,
                dtype: str = "float32") -> dict[str, np.ndarray]:
    """Regenerate and solve samples ``indices`` in the given order, recycling within the chunk.

    A pure function of its arguments (systems are rebuilt from ``(seed, index)``), so it can
    run on any Dask worker; nothing large is shipped. A preconditioner is rebuilt only when the
    matrix changes (Poisson: one matrix for every sample).
    """
    from ..krylov import RecyclingSolver

    try:  # n×40 block products: one BLAS thread per worker is fastest and avoids oversubscription
        from threadpoolctl import threadpool_limits

        limiter = threadpool_limits(1)
    except Exception:  # noqa: BLE001 - optional
        limiter = None
    try:
        so = dict(solver_opts)
        precond = so.pop("precond", None)
        solver = RecyclingSolver(**so)
        ins, sols = [], []
        prev_A = prev_M = None
        for i in indices:
            S = make_system(family, grid, int(i), seed, **options)
            if prev_A is not None and _same_matrix(S.A, prev_A):
                M = prev_M
            else:
                M = build_preconditioner(S.A, precond)
            prev_A, prev_M = S.A, M
            x = solver.solve(S.A, S.b, M=M)
            ins.append(S.inputs.astype(dtype))
            sols.append(S.to_grid(x).astype(dtype))
        st = solver.stats
        return {
            "index": np.asarray(indices, dtype=np.int64),
            "inputs": np.stack(ins),
            "solutions": np.stack(sols),
            "iterations": np.asarray(st["iterations"], dtype=np.int64),
            "matvecs": np.asarray(st["matvecs"], dtype=np.int64),
            "residual": np.asarray(st["residual"], dtype=np.float64),
            "solve_time": np.asarray(st["time"], dtype=np.float64),
            "converged": np.asarray(st["converged"], dtype=bool),
        }
    finally:
        if limiter is not None:
            limiter.restore_original_limits()


def _same_matrix(A, B) -> bool:
    return (A.shape == B.shape and A.nnz == B.nnz and np.array_equal(A.indptr, B.indptr)
            and np.array_equal(A.indices, B.indices) and np.array_equal(A.data, B.data))


def solve_and_write_zarr(url: str, position: int, *args) -> dict[str, np.ndarray]:
    """Solve one chunk and write it to the Zarr store where it was solved; return its counters."""
    from .zarr_store import write_zarr_chunk

    res = solve_chunk(*args)
    write_zarr_chunk(url, position, res)
    return {k: v for k, v in res.items() if k not in ("inputs", "solutions")}


def keys_block(family: str, grid: int, seed: int, start: int, stop: int, options: dict) -> np.ndarray:
    """Sorting keys (the systems' parameters) of samples ``start ... stop - 1``."""
    return np.stack([make_system(family, grid, i, seed, **options).params for i in range(start, stop)])


def _keys(family: str, grid: int, seed: int, samples: int, options: dict, cluster=None) -> np.ndarray:
    """All sorting keys; on the Dask workers when a cluster is used (building a key assembles the
    system: ~10 ms per 64² Darcy sample, minutes for 10⁵ samples on the client alone)."""
    if cluster is None or samples < 200:
        return keys_block(family, grid, seed, 0, samples, options)
    client = cluster.get()
    block = max(50, -(-samples // 200))
    futs = [client.submit(keys_block, family, grid, seed, a, min(a + block, samples), options, pure=False)
            for a in range(0, samples, block)]
    return np.concatenate(client.gather(futs))


def generate(family: str, samples: int, grid: int, out: str | Path, *, tol: float = 1e-8, seed: int = 0,
             method: str | None = None, precond: str | None = None, restart: int = 40, k: int = 20,
             chunk_size: int = 50, sort: str = "nn", layout: str = "otsolve", workers: int | None = None,
             scheduler: str | None = None, client: Any = None, progress: bool = True,
             dtype: str = "float32", options: dict | None = None,
             log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Generate ``samples`` solved PDE instances into an HDF5 file or a Zarr store (resumable).

    Parameters
    ----------
    family : {"darcy", "darcy3d", "helmholtz", "poisson"}
    samples, grid : int
        Number of samples and nodes per side.
    out : path or URL
        HDF5 file, or a Zarr store when it ends in ``.zarr`` (a local directory or any fsspec
        URL). If it exists with the same settings, finished samples are kept and only the rest is
        solved (resume after an interruption; no sample lost or duplicated). Different settings
        are refused with a ValueError naming the setting.
    tol : float
        Relative residual tolerance of every solve.
    method : {"gcrodr", "rcg"}, optional
        Default: rcg for SPD families, gcrodr for Helmholtz.
    precond : {None, "jacobi", "ilu", "amg"}
        ``amg``: one smoothed-aggregation V-cycle (pyamg), for darcy, darcy3d and poisson.
    restart, k : int
        GCRO-DR(m, k) / rcg recycle dimension.
    chunk_size : int
        Consecutive sorted samples solved together (recycling within a chunk); also the unit
        of resume, of distribution and (Zarr) of storage.
    sort : {"nn", "greedy", "hilbert", "none"}
        SKR order of the samples (computed once, stored with the data): ``nn`` the greedy
        nearest-neighbour chain by a KD tree (O(N log N)), ``greedy`` the dense O(N²) reference,
        ``hilbert`` a space-filling curve; see :func:`otsolve.krylov.sort_systems`.
    layout : {"otsolve", "pdebench"}
        Dataset names and shapes (``pdebench``: ``nu``, ``tensor``, ``x-coordinate``,
        ``y-coordinate``, as PDEBench's Darcy files; darcy only).
    workers, scheduler, client :
        Run chunks on a Dask distributed cluster: a new ``LocalCluster`` with ``workers``
        processes, an existing scheduler (address ``tcp://host:port`` or a scheduler file
        written by ``dask scheduler --scheduler-file``), or an existing ``Client``. With Zarr
        output each worker writes its own chunks; with HDF5 this process writes.
    dtype : {"float32", "float64"}
        Storage precision of inputs and solutions (solves are always float64).
    options : dict
        Family options (e.g. ``{"k_range": [2, 6]}`` for helmholtz); unknown keys are refused.

    Returns
    -------
    dict with samples solved in this run, totals of iterations and mat-vecs, wall time,
    samples per second, the largest residual and the number of unconverged solves.

    Raises
    ------
    ValueError
        Bad arguments, or an existing output made with other settings.
    DatagenIOError (an OSError)
        Writing failed (disk full, I/O error, permission). Every sample marked done is intact;
        the same call resumes.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown PDE family {family!r}; choose from {sorted(FAMILIES)}")
    samples = check_positive_int(samples, "samples")
    grid = check_positive_int(grid, "grid", minimum=3)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    restart = check_positive_int(restart, "restart", minimum=2)
    k = check_positive_int(k, "k")
    if isinstance(tol, bool) or not isinstance(tol, (int, float, np.floating)) or not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if sort not in SORTS:
        raise ValueError(f"sort must be one of {SORTS}, got {sort!r}")
    layout = check_layout(layout, family)
    if sum(x is not None for x in (workers, scheduler, client)) > 1:
        raise ValueError("give at most one of workers, scheduler and client")
    if workers is not None:
        workers = check_positive_int(workers, "workers")
    method = method or default_method(family)
    if method not in ("gcrodr", "rcg"):
        raise ValueError(f"method must be 'gcrodr' or 'rcg', got {method!r}")
    precond = check_precond(precond, family)
    options = _normalise_options(family, options)
    log = log or (lambda s: None)
    solver_opts = {"method": method, "rtol": float(tol), "k": k, "precond": precond}
    if method == "gcrodr":
        solver_opts["restart"] = restart
        if k >= restart:
            raise ValueError(f"k={k} must be smaller than restart={restart}")
    try:
        probe = make_system(family, grid, 0, seed, **options)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"options {json.dumps(options, sort_keys=True)} are not valid for {family}: {exc}") from None

    settings = {"format": FORMAT, "family": family, "grid": grid, "samples": samples, "seed": int(seed),
                "options": json.dumps(options, sort_keys=True), "tol": float(tol), "dtype": dtype,
                "method": method, "precond": str(precond), "restart": restart, "k": k, "sort": sort,
                "chunk_size": chunk_size, "layout": layout}
    t0 = time.perf_counter()
    zarr_out = is_zarr_path(out)
    if zarr_out:
        from .zarr_store import ZarrStore

        store = ZarrStore(out)
        out_name = store.url
    else:
        if "://" in str(out):
            raise ValueError(f"out: a URL ({out}) needs a Zarr store (a name ending in .zarr); HDF5 is local only")
        out = Path(out)
        store = H5Store(out)
        out_name = str(out)
    state = store.inspect(settings)
    cluster = None if workers is None and scheduler is None and client is None else _Cluster(workers, scheduler, client)
    try:
        return _generate(state, store, cluster, settings, family, samples, grid, seed, options, solver_opts, dtype,
                         sort, layout, zarr_out, out_name, probe, progress, log, t0)
    finally:
        if cluster is not None:
            cluster.close()


def _generate(state, store, cluster, settings, family, samples, grid, seed, options, solver_opts, dtype, sort, layout,
              zarr_out, out_name, probe, progress, log, t0) -> dict[str, Any]:
    method, precond, chunk_size = solver_opts["method"], solver_opts["precond"], settings["chunk_size"]
    t_sort = 0.0
    if state is None:
        if cluster is not None and samples >= 200:
            cluster.get()  # start-up is not part of the key and sort time
        ts = time.perf_counter()
        from ..krylov import sort_systems

        keys = _keys(family, grid, seed, samples, options, cluster)
        order = np.asarray(sort_systems(keys, method=sort), dtype=np.int64)
        del keys
        t_sort = time.perf_counter() - ts
        desc = describe(family, grid, probe.dim, options, {k_: v for k_, v in settings.items()}, layout)
        store.create(settings, desc if zarr_out else json.dumps(desc, sort_keys=True), probe.inputs.shape,
                     (grid,) * probe.dim, order, grid, probe.dim)
        state = {"order": order, "done": np.zeros(samples, dtype=bool)}
        resumed = False
    else:
        resumed = True
    order, done = state["order"], state["done"]
    chunks = [(p0, order[p0: p0 + chunk_size]) for p0 in range(0, samples, chunk_size)]
    pending = [(p0, c) for p0, c in chunks if not done[c].all()]
    n_done0 = int(done.sum())
    n_todo = int(sum(len(c) for _, c in pending))
    result = {"out": out_name, "format": "zarr" if zarr_out else "hdf5", "layout": layout, "family": family,
              "samples": samples, "solved_now": 0, "resumed": resumed, "complete": not pending, "method": method,
              "precond": precond, "sort_time": t_sort, "wall_time": 0.0, "samples_per_s": float("nan"),
              "mean_iterations": float("nan"), "mean_matvecs": float("nan"), "unconverged": 0,
              "max_residual": 0.0, "solve_time": 0.0}
    if not pending:
        result["total_time"] = time.perf_counter() - t0
        return result
    if resumed:
        log(f"resuming {out_name}: {samples - n_done0} of {samples} samples left")
    store.open_for_writing(samples - n_done0)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n_todo, unit="sample", desc=f"{family} {grid}^{probe.dim}")
    totals = {"iterations": 0, "matvecs": 0, "unconverged": 0, "max_residual": 0.0, "solve_time": 0.0}
    written = 0

    def consume(res):
        nonlocal written
        if not zarr_out:
            store.write_chunk(res)
        written += len(res["index"])
        totals["iterations"] += int(res["iterations"].sum())
        totals["matvecs"] += int(res["matvecs"].sum())
        totals["unconverged"] += int((~res["converged"]).sum())
        totals["max_residual"] = max(totals["max_residual"], float(res["residual"].max()))
        totals["solve_time"] += float(res["solve_time"].sum())
        if bar is not None:
            bar.update(len(res["index"]))

    args = (family, grid, int(seed))
    t_solve = time.perf_counter()
    try:
        if cluster is None:
            for p0, c in pending:
                if zarr_out:
                    consume(solve_and_write_zarr(out_name, p0, *args, c, options, solver_opts, dtype))
                else:
                    consume(solve_chunk(*args, c, options, solver_opts, dtype))
        else:
            _run_dask(pending, args, options, solver_opts, dtype, consume, cluster.get(),
                      out_name if zarr_out else None)
    except DatagenIOError as exc:
        left = samples - n_done0 - written
        at_least = "" if cluster is None else "at least "  # chunks in flight on other workers may finish
        raise DatagenIOError(exc.errno, f"{exc.strerror or exc}; stopped with {at_least}{n_done0 + written} of "
                             f"{samples} samples done and intact ({left} left): fix the cause and rerun the same "
                             "command to resume") from None
    finally:
        if bar is not None:
            bar.close()
        store.close()
    wall = time.perf_counter() - t_solve
    result.update({
        "solved_now": n_todo, "complete": True, "wall_time": wall, "total_time": time.perf_counter() - t0,
        "samples_per_s": n_todo / wall if wall > 0 else float("nan"),
        "mean_iterations": totals["iterations"] / n_todo, "mean_matvecs": totals["matvecs"] / n_todo,
        **{k_: v for k_, v in totals.items() if k_ not in ("iterations", "matvecs")},
    })
    return result


def connect(scheduler: str, timeout: float = 30):
    """A Dask ``Client`` for a scheduler address (``tcp://host:port``) or a scheduler file."""
    from dask.distributed import Client

    s = str(scheduler)
    if "://" not in s and (os.path.isfile(s) or s.endswith(".json")):
        if not os.path.isfile(s):
            raise ValueError(f"scheduler file not found: {s}")
        return Client(scheduler_file=s, timeout=timeout)
    return Client(s, timeout=timeout)


class _Cluster:
    """The Dask client of a run, connected (or its LocalCluster started) on first use."""

    def __init__(self, workers, scheduler, client) -> None:
        self.workers, self.scheduler, self.client = workers, scheduler, client
        self._own_client = self._own_cluster = None

    def get(self):
        if self.client is None:
            from dask.distributed import Client, LocalCluster

            if self.scheduler is not None:
                self.client = self._own_client = connect(self.scheduler)
            else:
                self._own_cluster = LocalCluster(n_workers=self.workers, threads_per_worker=1, processes=True,
                                                 host="127.0.0.1", dashboard_address="127.0.0.1:0")
                self.client = self._own_client = Client(self._own_cluster)
        return self.client

    def close(self) -> None:
        if self._own_client is not None:
            self._own_client.close()
        if self._own_cluster is not None:
            self._own_cluster.close()


def _run_dask(pending, args, options, solver_opts, dtype, consume, client, zarr_url) -> None:
    from dask.distributed import as_completed

    futs = []
    try:
        if zarr_url is not None:  # each worker writes its own chunks to the store
            futs = [client.submit(solve_and_write_zarr, zarr_url, p0, *args, np.asarray(c), options, solver_opts,
                                  dtype, pure=False) for p0, c in pending]
        else:  # HDF5 has one writer: this process
            futs = [client.submit(solve_chunk, *args, np.asarray(c), options, solver_opts, dtype, pure=False)
                    for _, c in pending]
        for fut in as_completed(futs):
            consume(fut.result())
    except BaseException:
        if futs:
            try:
                client.cancel(futs)
            except Exception:  # noqa: BLE001
                pass
        raise
