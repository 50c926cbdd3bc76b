"""Data-generation pipeline: scale-out and the client-side sort.

Throughput (samples/s) of ``otsolve.datagen.generate`` on one problem (Darcy, recycled CG, SKR
order, chunks of ``--chunk-size``), each run writing a fresh output:

1. one process, HDF5 (this process solves and writes);
2. one process, Zarr;
3. a 2-worker Dask ``LocalCluster`` (processes, one thread each), Zarr written by the workers;
4. a separately started ``dask scheduler`` + ``dask worker --nworkers 2`` (subprocesses on
   127.0.0.1, joined through a scheduler file, as on a cluster), Zarr written by the workers.

Runs are interleaved (1, 2, 3, 4, 1, 2, ...) ``--repeats`` times; min and median are reported,
cluster start-up separately. Then the time of ``otsolve.krylov.sort_systems`` (default method) on
``--sort-samples`` random 8-D keys (100,000 in the full run): the sort runs on the client before
any work is sent.

    python bench/bench_datagen.py --quick
    python bench/bench_datagen.py --samples 160 --grid 48 --repeats 3
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

from otsolve.datagen import generate  # noqa: E402


def _start_separate(tmp: Path, workers: int):
    """``dask scheduler`` and ``dask worker`` as separate processes, joined by a scheduler file."""
    dask = shutil.which("dask")
    base = [dask] if dask else [sys.executable, "-m", "distributed.cli.dask_spec"]
    if not dask:
        raise RuntimeError("the `dask` command is not on PATH (pip install 'dask[distributed]')")
    sched_file = tmp / "scheduler.json"
    log = open(tmp / "dask.log", "w")
    procs = [subprocess.Popen(base + ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                      "--scheduler-file", str(sched_file)], stdout=log, stderr=log)]
    t = time.perf_counter()
    while not sched_file.exists():
        if time.perf_counter() - t > 60:
            raise RuntimeError(f"dask scheduler did not start; see {tmp / 'dask.log'}")
        time.sleep(0.1)
    procs.append(subprocess.Popen(base + ["worker", "--scheduler-file", str(sched_file), "--nworkers", str(workers),
                                          "--nthreads", "1", "--host", "127.0.0.1", "--no-dashboard"],
                                  stdout=log, stderr=log))
    from dask.distributed import Client

    client = Client(scheduler_file=str(sched_file), timeout=60)
    client.wait_for_workers(workers, timeout=120)
    return client, procs, sched_file


def _stop(procs) -> None:
    for p in reversed(procs):
        p.terminate()
    for p in procs:
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="CI size: small problem, one repeat, 20,000-key sort")
    p.add_argument("--samples", type=int, default=160)
    p.add_argument("--grid", type=int, default=48)
    p.add_argument("--tol", type=float, default=1e-8)
    p.add_argument("--chunk-size", type=int, default=25)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--family", default="darcy")
    p.add_argument("--precond", default=None)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--sort-samples", type=int, default=100_000)
    args = p.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the dask processes on `kill` too
    if args.quick:
        args.samples, args.grid, args.chunk_size, args.repeats, args.sort_samples = 24, 16, 6, 1, 20_000
    load0 = os.getloadavg()
    kw = dict(tol=args.tol, chunk_size=args.chunk_size, progress=False, precond=args.precond)
    from dask.distributed import Client, LocalCluster

    times: dict[str, list[float]] = {}
    info: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        t = time.perf_counter()
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address="127.0.0.1:0")
        local = Client(cluster)
        local.run(lambda: __import__("otsolve.datagen.pipeline"))  # warm the workers' imports
        t_local = time.perf_counter() - t
        t = time.perf_counter()
        sep, procs, sched_file = _start_separate(tmp, args.workers)
        sep.run(lambda: __import__("otsolve.datagen.pipeline"))
        t_sep = time.perf_counter() - t
        runs = [
            ("one process, HDF5", "h5", {}),
            ("one process, Zarr", "zarr", {}),
            (f"LocalCluster, {args.workers} worker processes, Zarr written by the workers", "zarr",
             {"client": local}),
            (f"separate `dask scheduler` + `dask worker --nworkers {args.workers}` (scheduler file), "
             "Zarr written by the workers", "zarr", {"scheduler": str(sched_file)}),
        ]
        try:
            for r in range(args.repeats):
                for i, (label, ext, extra) in enumerate(runs):
                    out = tmp / f"run{r}-{i}.{ext}"
                    t = time.perf_counter()
                    res = generate(args.family, args.samples, args.grid, out, **kw, **extra)
                    wall = time.perf_counter() - t
                    assert res["complete"] and res["solved_now"] == args.samples
                    times.setdefault(label, []).append(wall)
                    info[label] = res
                    shutil.rmtree(out, ignore_errors=True) if ext == "zarr" else out.unlink()
        finally:
            local.close()
            cluster.close()
            sep.close()
            _stop(procs)
    rng = np.random.default_rng(0)
    keys = rng.standard_normal((args.sort_samples, 8))
    from otsolve.krylov import sort_systems

    t = time.perf_counter()
    order = sort_systems(keys)
    t_sort = time.perf_counter() - t
    assert np.array_equal(np.sort(order), np.arange(args.sort_samples))
    load1 = os.getloadavg()

    first = next(iter(info.values()))
    print(f"\n## datagen {args.family}, {args.samples} samples, grid {args.grid}, tol {args.tol:g}, "
          f"chunks of {args.chunk_size}, method {first['method']}, preconditioner {first['precond']}, "
          f"{args.repeats} interleaved repeat(s)")
    print(f"machine: {os.cpu_count()} cores, load average {load0[0]:.2f} before / {load1[0]:.2f} after "
          "(shared with other jobs: not an idle machine)")
    print("| run | end to end, min (s) | median (s) | samples/s (best) | speed-up vs one process HDF5 "
          "| mean iters | max rel. res. |")
    print("|---|---|---|---|---|---|---|")
    base = min(times[runs[0][0]])
    for label, _, _ in runs:
        ts = times[label]
        res = info[label]
        print(f"| {label} | {min(ts):.2f} | {np.median(ts):.2f} | {args.samples / min(ts):.1f} | "
              f"{base / min(ts):.2f}x | {res['mean_iterations']:.1f} | {res['max_residual']:.1e} |")
    print(f"cluster start-up, not included above: LocalCluster {t_local:.1f} s, separate scheduler + workers "
          f"{t_sep:.1f} s")
    print(f"sort_systems (default method) on {args.sort_samples:,} random 8-D keys: {t_sort:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
