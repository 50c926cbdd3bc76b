"""``otsolve datagen FAMILY --samples N --grid S --out data.h5|data.zarr`` (resumable; Dask optional).

Exit codes: 0 done, 1 some solves did not converge, 2 bad input (one line on stderr),
74 an I/O error stopped the run (disk full, I/O error, permission: one line on stderr; every
sample marked done is intact, rerun the same command to resume).
"""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser", "EXIT_IO"]

EXIT_IO = 74  # EX_IOERR of sysexits.h


def _run(args: argparse.Namespace) -> int:
    from .pipeline import generate
    from .store import DatagenIOError

    if args.options:
        try:
            options = json.loads(args.options)
        except json.JSONDecodeError as exc:
            raise ValueError(f"--options is not valid JSON ({exc.msg} at character {exc.pos}); "
                             "example: '{\"k_range\": [2, 6]}'") from None
        if not isinstance(options, dict):
            raise ValueError("--options must be a JSON object, e.g. '{\"k_range\": [2, 6]}'")
    else:
        options = {}
    try:
        res = generate(args.family, args.samples, args.grid, args.out, tol=args.tol, seed=args.seed,
                       method=args.method, precond=args.precond, restart=args.restart, k=args.k,
                       chunk_size=args.chunk_size, sort=args.sort, layout=args.layout, workers=args.workers,
                       scheduler=args.scheduler, progress=not args.no_progress, dtype=args.dtype,
                       options=options, log=lambda s: print(s, file=sys.stderr))
    except DatagenIOError as exc:
        print(f"otsolve: error: {exc.strerror or exc}", file=sys.stderr)
        return EXIT_IO
    n = res["solved_now"]
    if n == 0:
        print(f"{res['out']}: all {res['samples']} samples already done")
        return 0
    print(f"wrote           {res['out']} ({res['format']}, layout {res['layout']}, {res['samples']} samples, "
          f"{n} solved in this run{', resumed' if res['resumed'] else ''})")
    print(f"solver          {res['method']} (preconditioner {res['precond']})")
    print(f"iterations      mean {res['mean_iterations']:.1f}, mat-vecs mean {res['mean_matvecs']:.1f}")
    print(f"residual        max {res['max_residual']:.2e}, unconverged {res['unconverged']}")
    print(f"time            keys and sort {res['sort_time']:.2f} s, solve {res['wall_time']:.2f} s "
          f"({res['samples_per_s']:.1f} samples/s)")
    return 0 if res["unconverged"] == 0 else 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``datagen`` subcommand to the ``otsolve`` CLI."""
    p = subparsers.add_parser("datagen", help="generate a solved PDE dataset (SKR: sort + Krylov recycling)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("family", choices=["darcy", "darcy3d", "helmholtz", "poisson"])
    p.add_argument("--samples", type=int, required=True, help="number of samples N")
    p.add_argument("--grid", type=int, required=True, help="nodes per side s")
    p.add_argument("--tol", type=float, default=1e-8, help="relative residual tolerance (default 1e-8)")
    p.add_argument("--out", required=True,
                   help="output: an HDF5 file, or a Zarr store if it ends in .zarr (a directory or an fsspec URL); "
                        "rerun the same command to resume")
    p.add_argument("--layout", choices=["otsolve", "pdebench"], default="otsolve",
                   help="dataset names and shapes: otsolve (inputs, solutions) or pdebench (nu, tensor, "
                        "x-coordinate, y-coordinate; darcy only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=["gcrodr", "rcg"], default=None,
                   help="default: rcg for SPD families, gcrodr for helmholtz")
    p.add_argument("--precond", choices=["none", "jacobi", "ilu", "amg"], default="none",
                   help="amg: smoothed-aggregation AMG V-cycle (pyamg), for darcy, darcy3d and poisson")
    p.add_argument("--restart", type=int, default=40, help="GCRO-DR basis size m (default 40)")
    p.add_argument("--k", type=int, default=20, help="recycled dimension (default 20)")
    p.add_argument("--chunk-size", type=int, default=50, help="sorted samples per chunk (default 50)")
    p.add_argument("--sort", choices=["nn", "greedy", "hilbert", "none"], default="nn",
                   help="SKR order: nn (nearest-neighbour chain, O(N log N); default), greedy (dense O(N^2)), "
                        "hilbert, none")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="storage precision")
    p.add_argument("--options", default=None, help="family options as JSON, e.g. '{\"k_range\": [2, 6]}'")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, help="run on a new Dask LocalCluster with N workers")
    g.add_argument("--scheduler", default=None,
                   help="an existing Dask scheduler: address (tcp://host:port) or scheduler file (JSON)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    return p
