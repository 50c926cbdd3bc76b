"""Data-generation pipeline throughput: one process vs a 2-worker Dask LocalCluster.

Each run writes a fresh HDF5 file (Darcy, recycled CG, greedy SKR order, chunks of 50).

    python bench/bench_datagen.py --quick
    python bench/bench_datagen.py --samples 1000 --grid 64
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from otsolve.datagen import generate  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--grid", type=int, default=64)
    p.add_argument("--tol", type=float, default=1e-8)
    p.add_argument("--chunk-size", type=int, default=50)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--family", default="darcy")
    args = p.parse_args()
    if args.quick:
        args.samples, args.grid, args.chunk_size = 40, 16, 10
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        res = generate(args.family, args.samples, args.grid, Path(tmp) / "one.h5", tol=args.tol,
                       chunk_size=args.chunk_size, progress=False)
        rows.append(("one process", res, time.perf_counter() - t))
        from dask.distributed import Client, LocalCluster

        t = time.perf_counter()
        cluster = LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, host="127.0.0.1",
                               dashboard_address=None)
        client = Client(cluster)
        client.run(lambda: __import__("otsolve.datagen"))  # warm the workers' imports
        t_start = time.perf_counter() - t
        try:
            t = time.perf_counter()
            res = generate(args.family, args.samples, args.grid, Path(tmp) / "dask.h5", tol=args.tol,
                           chunk_size=args.chunk_size, progress=False, client=client)
            rows.append((f"LocalCluster, {args.workers} worker processes", res, time.perf_counter() - t))
        finally:
            client.close()
            cluster.close()
    print(f"\n## datagen {args.family}, {args.samples} samples, grid {args.grid}, tol {args.tol:g}, "
          f"chunks of {args.chunk_size}, method {rows[0][1]['method']}")
    print("| run | solve phase (s) | samples/s (solve phase) | end to end (s) | samples/s (end to end) "
          "| mean iters | max rel. res. | unconverged |")
    print("|---|---|---|---|---|---|---|---|")
    for label, res, wall in rows:
        print(f"| {label} | {res['wall_time']:.2f} | {res['samples_per_s']:.1f} | {wall:.2f} | "
              f"{args.samples / wall:.1f} | {res['mean_iterations']:.1f} | {res['max_residual']:.1e} | "
              f"{res['unconverged']} |")
    print(f"cluster start-up (not included above): {t_start:.1f} s; "
          f"speed-up of the cluster, end to end: {rows[0][2] / rows[1][2]:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
