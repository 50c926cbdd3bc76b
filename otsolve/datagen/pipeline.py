"""Generate a PDE dataset: sample, sort (SKR), solve with recycling, store; resumable, distributable."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._validation import check_positive_int
from ..pde import FAMILIES, make_system
from .store import FORMAT, open_store, write_chunk

__all__ = ["generate", "solve_chunk", "default_method"]

# environment hook used by the tests to simulate a killed run: exit abruptly after this many chunks
_KILL_ENV = "OTSOLVE_DATAGEN_KILL_AFTER_CHUNKS"


def default_method(family: str) -> str:
    """Recycled CG for the SPD families, GCRO-DR for (indefinite) Helmholtz."""
    return "gcrodr" if family == "helmholtz" else "rcg"


def solve_chunk(family: str, grid: int, seed: int, indices, options: dict, solver_opts: dict,
                dtype: str = "float32") -> dict[str, np.ndarray]:
    """Regenerate and solve samples ``indices`` in the given order, recycling within the chunk.

    A pure function of its arguments (systems are rebuilt from ``(seed, index)``), so it can
    run on any Dask worker; nothing large is shipped.
    """
    from ..krylov import RecyclingSolver, make_preconditioner

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
        for i in indices:
            S = make_system(family, grid, int(i), seed, **options)
            M = make_preconditioner(S.A, precond)
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


def _keys(family: str, grid: int, seed: int, samples: int, options: dict) -> np.ndarray:
    return np.stack([make_system(family, grid, i, seed, **options).params for i in range(samples)])


def generate(family: str, samples: int, grid: int, out: str | Path, *, tol: float = 1e-8, seed: int = 0,
             method: str | None = None, precond: str | None = None, restart: int = 40, k: int = 20,
             chunk_size: int = 50, sort: str = "greedy", workers: int | None = None,
             scheduler: str | None = None, client: Any = None, progress: bool = True,
             dtype: str = "float32", options: dict | None = None,
             log: Callable[[str], Any] | None = None) -> dict[str, Any]:
    """Generate ``samples`` solved PDE instances into an HDF5 file (resumable).

    Parameters
    ----------
    family : {"darcy", "darcy3d", "helmholtz", "poisson"}
    samples, grid : int
        Number of samples and nodes per side.
    out : path
        HDF5 file. If it exists with the same settings, finished samples are kept and only
        the rest is solved (resume after an interruption; no sample lost or duplicated).
    tol : float
        Relative residual tolerance of every solve.
    method : {"gcrodr", "rcg"}, optional
        Default: rcg for SPD families, gcrodr for Helmholtz.
    precond : {None, "jacobi", "ilu"}
    restart, k : int
        GCRO-DR(m, k) / rcg recycle dimension.
    chunk_size : int
        Consecutive sorted samples solved together (recycling within a chunk); also the unit
        of resume and of distribution.
    sort : {"greedy", "hilbert", "none"}
        SKR order of the samples (computed once, stored in the file).
    workers, scheduler, client :
        Run chunks on a Dask distributed cluster: a new ``LocalCluster`` with ``workers``
        processes, an existing scheduler address, or an existing ``Client``.
    dtype : {"float32", "float64"}
        Storage precision of inputs and solutions (solves are always float64).

    Returns
    -------
    dict with samples solved in this run, totals of iterations and mat-vecs, wall time,
    samples per second, the largest residual and the number of unconverged solves.
    """
    if family not in FAMILIES:
        raise ValueError(f"unknown PDE family {family!r}; choose from {sorted(FAMILIES)}")
    samples = check_positive_int(samples, "samples")
    grid = check_positive_int(grid, "grid", minimum=3)
    chunk_size = check_positive_int(chunk_size, "chunk_size")
    if not (np.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a positive number, got {tol!r}")
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    if sort not in ("greedy", "hilbert", "none"):
        raise ValueError(f"sort must be 'greedy', 'hilbert' or 'none', got {sort!r}")
    if workers is not None and scheduler is not None:
        raise ValueError("give either --workers or --scheduler, not both")
    method = method or default_method(family)
    if method not in ("gcrodr", "rcg"):
        raise ValueError(f"method must be 'gcrodr' or 'rcg', got {method!r}")
    options = dict(options or {})
    log = log or (lambda s: None)
    solver_opts = {"method": method, "rtol": tol, "k": k, "precond": precond}
    if method == "gcrodr":
        solver_opts["restart"] = restart
        if k >= restart:
            raise ValueError(f"k={k} must be smaller than restart={restart}")

    settings = {"format": FORMAT, "family": family, "grid": grid, "samples": samples, "seed": int(seed),
                "options": json.dumps(options, sort_keys=True), "tol": float(tol), "dtype": dtype,
                "method": method, "precond": str(precond), "restart": restart, "k": k, "sort": sort,
                "chunk_size": chunk_size}
    t0 = time.perf_counter()
    probe = make_system(family, grid, 0, seed, **options)
    out = Path(out)
    order = None
    t_sort = 0.0
    if not out.exists():
        ts = time.perf_counter()
        keys = _keys(family, grid, seed, samples, options)
        from ..krylov import sort_systems

        order = sort_systems(keys, method=sort)
        t_sort = time.perf_counter() - ts
    f, resumed = open_store(out, settings, probe.inputs.shape, (grid,) * probe.dim, order)
    try:
        order = f["order"][()]
        done = f["done"][()]
        chunks = [order[i: i + chunk_size] for i in range(0, samples, chunk_size)]
        pending = [c for c in chunks if not done[c].all()]
        n_todo = int(sum(len(c) for c in pending))
        if resumed:
            log(f"resuming {out}: {samples - int(done.sum())} of {samples} samples left")
        bar = None
        if progress and n_todo:
            from tqdm import tqdm

            bar = tqdm(total=n_todo, unit="sample", desc=f"{family} {grid}^{probe.dim}")
        kill_after = int(os.environ.get(_KILL_ENV, "0") or 0)
        totals = {"iterations": 0, "matvecs": 0, "unconverged": 0, "max_residual": 0.0, "solve_time": 0.0}
        n_chunks = 0

        def consume(res):
            nonlocal n_chunks
            write_chunk(f, res)
            totals["iterations"] += int(res["iterations"].sum())
            totals["matvecs"] += int(res["matvecs"].sum())
            totals["unconverged"] += int((~res["converged"]).sum())
            totals["max_residual"] = max(totals["max_residual"], float(res["residual"].max()))
            totals["solve_time"] += float(res["solve_time"].sum())
            n_chunks += 1
            if bar is not None:
                bar.update(len(res["index"]))
            if kill_after and n_chunks >= kill_after:
                os._exit(75)  # simulated crash: no cleanup, file left as a killed run leaves it

        args = (family, grid, int(seed))
        t_solve = time.perf_counter()
        if workers is None and scheduler is None and client is None:
            for c in pending:
                consume(solve_chunk(*args, c, options, solver_opts, dtype))
        else:
            _run_dask(pending, args, options, solver_opts, dtype, consume, workers, scheduler, client)
        wall = time.perf_counter() - t_solve
        if bar is not None:
            bar.close()
        complete = bool(f["done"][()].all())
    finally:
        try:
            f.close()
        except Exception:  # noqa: BLE001
            pass
    return {
        "out": str(out), "family": family, "samples": samples, "solved_now": n_todo, "resumed": resumed,
        "complete": complete, "method": method, "precond": precond, "sort_time": t_sort,
        "wall_time": wall, "total_time": time.perf_counter() - t0,
        "samples_per_s": (n_todo / wall) if wall > 0 and n_todo else float("nan"),
        "mean_iterations": totals["iterations"] / n_todo if n_todo else float("nan"),
        "mean_matvecs": totals["matvecs"] / n_todo if n_todo else float("nan"),
        **{k_: v for k_, v in totals.items() if k_ not in ("iterations", "matvecs")},
    }


def _run_dask(pending, args, options, solver_opts, dtype, consume, workers, scheduler, client) -> None:
    from dask.distributed import Client, LocalCluster, as_completed

    own_cluster = own_client = None
    try:
        if client is None:
            if scheduler is not None:
                client = own_client = Client(scheduler, timeout=30)
            else:
                w = check_positive_int(workers, "workers")
                own_cluster = LocalCluster(n_workers=w, threads_per_worker=1, processes=True,
                                           host="127.0.0.1", dashboard_address=None)
                client = own_client = Client(own_cluster)
        futs = [client.submit(solve_chunk, *args, np.asarray(c), options, solver_opts, dtype, pure=False)
                for c in pending]
        for fut in as_completed(futs):
            consume(fut.result())  # the writer stays in this process: one HDF5 writer
    finally:
        if own_client is not None:
            own_client.close()
        if own_cluster is not None:
            own_cluster.close()
