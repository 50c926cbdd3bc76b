"""``otsolve datagen FAMILY --samples N --grid S --tol T --out data.h5`` (resumable; Dask optional)."""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_parser"]


def _run(args: argparse.Namespace) -> int:
    from .pipeline import generate

    if args.workers is not None and args.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {args.workers}")
    options = json.loads(args.options) if args.options else {}
    if not isinstance(options, dict):
        raise ValueError("--options must be a JSON object, e.g. '{\"k_range\": [2, 6]}'")
    res = generate(args.family, args.samples, args.grid, args.out, tol=args.tol, seed=args.seed,
                   method=args.method, precond=None if args.precond == "none" else args.precond,
                   restart=args.restart, k=args.k, chunk_size=args.chunk_size, sort=args.sort,
                   workers=args.workers, scheduler=args.scheduler, progress=not args.no_progress,
                   dtype=args.dtype, options=options, log=lambda s: print(s, file=sys.stderr))
    n = res["solved_now"]
    if n == 0:
        print(f"{res['out']}: all {res['samples']} samples already done")
        return 0
    print(f"wrote           {res['out']} ({res['samples']} samples, {n} solved in this run"
          f"{', resumed' if res['resumed'] else ''})")
    print(f"solver          {res['method']} (preconditioner {res['precond']})")
    print(f"iterations      mean {res['mean_iterations']:.1f}, mat-vecs mean {res['mean_matvecs']:.1f}")
    print(f"residual        max {res['max_residual']:.2e}, unconverged {res['unconverged']}")
    print(f"time            sort {res['sort_time']:.2f} s, solve {res['wall_time']:.2f} s "
          f"({res['samples_per_s']:.1f} samples/s)")
    return 0 if res["unconverged"] == 0 else 1


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``datagen`` subcommand to the ``otsolve`` CLI."""
    p = subparsers.add_parser("datagen", help="generate a solved PDE dataset (SKR: sort + Krylov recycling)")
    p.add_argument("family", choices=["darcy", "darcy3d", "helmholtz", "poisson"])
    p.add_argument("--samples", type=int, required=True, help="number of samples N")
    p.add_argument("--grid", type=int, required=True, help="nodes per side s")
    p.add_argument("--tol", type=float, default=1e-8, help="relative residual tolerance (default 1e-8)")
    p.add_argument("--out", required=True, help="output HDF5 file (rerun the same command to resume)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", choices=["gcrodr", "rcg"], default=None,
                   help="default: rcg for SPD families, gcrodr for helmholtz")
    p.add_argument("--precond", choices=["none", "jacobi", "ilu"], default="none")
    p.add_argument("--restart", type=int, default=40, help="GCRO-DR basis size m (default 40)")
    p.add_argument("--k", type=int, default=20, help="recycled dimension (default 20)")
    p.add_argument("--chunk-size", type=int, default=50, help="sorted samples per chunk (default 50)")
    p.add_argument("--sort", choices=["greedy", "hilbert", "none"], default="greedy")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32", help="storage precision")
    p.add_argument("--options", default=None, help="family options as JSON, e.g. '{\"k_range\": [2, 6]}'")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--workers", type=int, default=None, help="run on a new Dask LocalCluster with N workers")
    g.add_argument("--scheduler", default=None, help="Dask scheduler address (tcp://host:port)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_run)
    return p
