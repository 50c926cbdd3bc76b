"""The ``otsolve`` command line: ``otsolve demo``, ``otsolve solve``, ``otsolve datagen``."""
from __future__ import annotations

import argparse
import importlib
import sys
import time
import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["main"]


class CLIError(Exception):
    """An error reported to the user as one line, exit code 2."""


def _load_points(path: str) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"file not found: {path}")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix in (".csv", ".txt"):
            arr = np.loadtxt(p, delimiter="," if p.suffix == ".csv" else None, ndmin=2)
        else:
            raise CLIError(f"{path}: unsupported format {p.suffix!r} (use .npy or .csv)")
    except CLIError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise CLIError(f"cannot read {path}: {exc}") from None
    arr = np.asarray(arr, dtype=float)
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.size == 0:
        raise CLIError(f"{path}: expected a 2-D array of points (n, d), got shape {arr.shape}")
    return arr


def _cmd_solve(args: argparse.Namespace) -> int:
    import otsolve

    x, y = _load_points(args.source), _load_points(args.target)
    geom = otsolve.PointCloud(x, y, cost=args.cost, scale_cost=args.scale_cost)
    options = {}
    if args.tol is not None:
        options["tol"] = args.tol
    if args.max_iter is not None:
        options["max_iter"] = args.max_iter
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = otsolve.solve(None, None, geom, epsilon=args.epsilon, method=args.method, **options)
    dt = time.perf_counter() - t0
    print(f"method          {res.method}")
    print(f"n x m           {x.shape[0]} x {y.shape[0]} (d = {x.shape[1]}, cost {args.cost})")
    print(f"epsilon         {args.epsilon:g}")
    print(f"cost <C,P>      {res.cost:.10g}")
    print(f"iterations      {res.n_iter}")
    print(f"marginal error  {res.marginal_error:.3e}")
    print(f"converged       {res.converged}  ({res.message})")
    print(f"time            {dt:.3f} s")
    if args.out:
        np.savez_compressed(args.out, plan=res.plan, f=res.f, g=res.g, cost=res.cost)
        print(f"wrote           {args.out}")
    return 0 if res.converged else 1


def _cmd_demo(args: argparse.Namespace) -> int:
    import otsolve

    rng = np.random.default_rng(0)
    n = args.n
    x = rng.random((n, 2))
    y = 0.3 * rng.standard_normal((n, 2)) + 0.5
    print(f"otsolve {otsolve.__version__} demo: OT between {n} uniform points and {n} Gaussian points in 2-D "
          "(squared-Euclidean cost / max)")
    geom = otsolve.PointCloud(x, y, scale_cost="max")
    runs = [
        ("sinkhorn", 1e-1, {}),
        ("sinkhorn", 1e-2, {}),
        ("sinkhorn", 1e-3, {"epsilon_scaling": True}),
        ("sns", 1e-3, {}),
    ]
    print(f"{'method':<26} {'epsilon':>8} {'iters':>9} {'<C,P>':>11} {'marg. err':>10} {'conv':>5} {'time':>8}")
    for method, eps, kw in runs:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = otsolve.solve(None, None, geom, epsilon=eps, method=method, **kw)
        dt = time.perf_counter() - t0
        label = method + (" + eps-scaling" if kw.get("epsilon_scaling") else "")
        iters = f"{res.n_sinkhorn}+{res.n_newton}" if method == "sns" else str(res.n_iter)
        print(f"{label:<26} {eps:8.0e} {iters:>9} {res.cost:11.8f} {res.marginal_error:10.2e} "
              f"{str(res.converged):>5} {dt:7.3f}s")
    m = min(n, 300)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = otsolve.solve(None, None, otsolve.PointCloud(x[:m], y[:m], scale_cost="max"),
                            method="sparsity_constrained", k=2, gamma=1.0)
    dt = time.perf_counter() - t0
    nnz = int(np.diff(res.plan_sparse.tocsc().indptr).max())
    print(f"{'sparsity_constrained k=2':<26} {'g=1':>8} {res.n_iter:>9} {res.cost:11.8f} "
          f"{res.marginal_error:10.2e} {str(res.converged):>5} {dt:7.3f}s")
    print(f"  (n = {m}; at most {nnz} nonzeros per column by construction; the row marginals of this "
          "non-smooth relaxation are not exact: see docs/sparse_ot.md)")
    try:
        from scipy.optimize import linear_sum_assignment

        C = geom.cost_matrix
        r, c = linear_sum_assignment(C)
        print(f"exact OT (assignment) cost: {C[r, c].mean():.8f}  -- entropic costs approach it as epsilon -> 0")
    except Exception:  # pragma: no cover
        pass
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otsolve", description="Optimal transport solvers.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("solve", help="solve entropic OT between two point clouds (.npy or .csv)")
    p.add_argument("source", help="source points, (n, d) .npy or .csv")
    p.add_argument("target", help="target points, (m, d) .npy or .csv")
    p.add_argument("--epsilon", type=float, default=0.01, help="entropic regularization (default 0.01)")
    p.add_argument("--method", default="sinkhorn", help="solver (otsolve.available_methods())")
    p.add_argument("--cost", default="sqeuclidean", help="sqeuclidean | euclidean | cityblock")
    p.add_argument("--scale-cost", default="max", help="'max', 'mean' or a number (default max)")
    p.add_argument("--tol", type=float, default=None)
    p.add_argument("--max-iter", type=int, default=None)
    p.add_argument("--out", default=None, help="write plan and potentials to this .npz")
    p.set_defaults(func=_cmd_solve)

    d = sub.add_parser("demo", help="run a short demonstration on built-in data")
    d.add_argument("--n", type=int, default=2000, help="points per side (default 2000)")
    d.set_defaults(func=_cmd_demo)

    # Subcommands contributed by other modules: each has add_parser(subparsers).
    for modname in ("otsolve.datagen.cli",):
        try:
            mod = importlib.import_module(modname)
        except ImportError:
            continue
        mod.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "scale_cost", None) not in (None, "max", "mean"):
        try:
            args.scale_cost = float(args.scale_cost)
        except ValueError:
            print(f"otsolve: error: --scale-cost must be 'max', 'mean' or a number, got {args.scale_cost!r}",
                  file=sys.stderr)
            return 2
    try:
        return int(args.func(args) or 0)
    except (CLIError, ValueError, OSError) as exc:
        print(f"otsolve: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("otsolve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
