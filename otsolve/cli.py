"""The ``otsolve`` command line: ``otsolve demo``, ``otsolve solve``, ``otsolve datagen``.

Also ``python -m otsolve``. A user error (bad file, bad option, bad value) is one line on stderr
and exit status 2; a solve that ends unconverged exits 1.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, NoReturn, Sequence

import numpy as np

__all__ = ["main", "build_parser", "demo_data"]


class CLIError(Exception):
    """An error reported to the user as one line, exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``otsolve solve: error: ... (otsolve solve --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def _load_points(path: str) -> np.ndarray:
    p = Path(path)
    if not p.exists():
        raise CLIError(f"file not found: {path}")
    try:
        if p.suffix == ".npy":
            arr = np.load(p, allow_pickle=False)
        elif p.suffix in (".csv", ".txt"):
            delimiter = "," if p.suffix == ".csv" else None
            with open(p, encoding="utf-8") as fh:
                first = fh.readline()
            fields = [s.strip() for s in first.split(delimiter)] if first.strip() else []
            header = bool(fields) and not all(_is_number(s) for s in fields)  # e.g. "x,y"
            arr = np.loadtxt(p, delimiter=delimiter, ndmin=2, skiprows=int(header))
        else:
            raise CLIError(f"{path}: unsupported format {p.suffix!r} (use .npy, .csv or .txt)")
    except CLIError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise CLIError(f"cannot read {path}: {exc}") from None
    if np.iscomplexobj(arr):
        raise CLIError(f"{path}: complex values are not supported (points must be real, got dtype {arr.dtype})")
    try:
        arr = np.asarray(arr, dtype=float)
    except (TypeError, ValueError):
        raise CLIError(f"{path}: expected numbers, got dtype {arr.dtype}") from None
    if arr.ndim == 1:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.size == 0:
        raise CLIError(f"{path}: expected a 2-D array of points (n, d), got shape {arr.shape}")
    return arr


# command-line flag -> solver option; each is passed only when given, and only to a method whose
# solver class takes that option (otherwise: a one-line error naming the methods that do)
_SOLVER_FLAGS = {"tol": "--tol", "max_iter": "--max-iter", "epsilon_scaling": "--epsilon-scaling",
                 "k": "--k", "gamma": "--gamma"}


def _solver_params(method: str) -> set[str]:
    from otsolve.solvers.registry import get_solver_class

    return set(inspect.signature(get_solver_class(method)).parameters)


def _takes_epsilon(method: str) -> bool:
    # sparsity-constrained OT (gamma) and exact OT do not use the problem's epsilon
    return method not in ("sparsity_constrained", "emd")


def _cmd_solve(args: argparse.Namespace) -> int:
    import otsolve

    if args.method not in otsolve.available_methods():
        raise CLIError(f"unknown --method {args.method!r}; known methods: {', '.join(otsolve.available_methods())}")
    params = _solver_params(args.method)
    options: dict[str, Any] = {}
    for name, flag in _SOLVER_FLAGS.items():
        value = getattr(args, name)
        if value is None or value is False:
            continue
        if name not in params:
            users = [m for m in otsolve.available_methods() if name in _solver_params(m)]
            raise CLIError(f"{flag} does not apply to --method {args.method} "
                           f"(it is an option of: {', '.join(users) or 'no method'})")
        options[name] = value
    x, y = _load_points(args.source), _load_points(args.target)
    geom = otsolve.PointCloud(x, y, cost=args.cost, scale_cost=args.scale_cost)
    scale = float(geom.scale)  # the solver sees C * scale
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        res = otsolve.solve(None, None, geom, epsilon=args.epsilon, method=args.method, **options)
    dt = time.perf_counter() - t0
    cost = float(res.cost) / scale  # <C, P> in the input's units
    print(f"method          {res.method}")
    print(f"n x m           {x.shape[0]} x {y.shape[0]} (d = {x.shape[1]}, cost {args.cost})")
    if scale != 1.0:
        print(f"cost scaling    solved on C / {1 / scale:.6g} (--scale-cost {args.scale_cost}); "
              "costs below are in the input's units")
    if _takes_epsilon(args.method):
        extra = f" on the scaled cost = {args.epsilon / scale:.6g} in the input's units" if scale != 1.0 else ""
        print(f"epsilon         {args.epsilon:g}{extra}")
    if "gamma" in options or args.method == "sparsity_constrained":
        gamma = float(getattr(res, "gamma", options.get("gamma", float("nan"))))
        extra = f" on the scaled cost = {gamma / scale:.6g} in the input's units" if scale != 1.0 else ""
        print(f"gamma           {gamma:g}{extra}")
    print(f"cost <C,P>      {cost:.10g}")
    if scale != 1.0:
        print(f"  scaled cost   {float(res.cost):.10g}  (<C / {1 / scale:.6g}, P>)")
    print(f"iterations      {res.n_iter}")
    print(f"marginal error  {res.marginal_error:.3e}")
    print(f"converged       {res.converged}  ({res.message})")
    print(f"time            {dt:.3f} s")
    if args.out:
        # everything in the input's units: f, g are potentials of C with epsilon / scale
        np.savez_compressed(args.out, plan=np.asarray(res.plan), f=np.asarray(res.f) / scale,
                            g=np.asarray(res.g) / scale, cost=cost, scale=scale, scaled_cost=float(res.cost))
        print(f"wrote           {args.out}  (plan, f, g, cost in the input's units; scale, scaled_cost)")
    return 0 if res.converged else 1


def demo_data(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The demo's point clouds: ``n`` uniform points and ``n`` Gaussian points in 2-D (seed 0)."""
    rng = np.random.default_rng(0)
    return rng.random((n, 2)), 0.3 * rng.standard_normal((n, 2)) + 0.5


def _numba_cache_cold() -> bool:
    """True unless the numba top-k kernels already have an on-disk cache (``cache=True``)."""
    try:
        from otsolve.kernels import topk

        cache = getattr(topk._topk_sorted, "_cache")  # numba's FunctionCache (a private attribute)
        return not os.path.exists(cache._cache_file._index_path)
    except Exception:  # noqa: BLE001 - numba internals: when unsure, say it may take a while
        return True


def _cmd_demo(args: argparse.Namespace) -> int:
    import otsolve

    n = args.n
    if n < 2:
        raise CLIError(f"--n must be >= 2, got {n}")
    x, y = demo_data(n)
    print(f"otsolve {otsolve.__version__} demo: OT between {n} uniform points and {n} Gaussian points in 2-D "
          "(squared-Euclidean cost / max)")
    geom = otsolve.PointCloud(x, y, scale_cost="max")
    runs: list[tuple[str, float, dict[str, Any]]] = [
        ("sinkhorn", 1e-1, {}),
        ("sinkhorn", 1e-2, {}),
        ("sinkhorn", 1e-3, {"epsilon_scaling": True}),
        ("sns", 1e-3, {}),
    ]
    tol = 1e-9
    print(f"{'method':<26} {'epsilon':>8} {'iters':>9} {'<C,P>':>11} {'marg. err':>10} {'conv':>5} {'time':>8}")
    for method, eps, kw in runs:
        label = method + (" + eps-scaling" if kw.get("epsilon_scaling") else "")
        print(f"{label:<26} {eps:8.0e} ", end="", flush=True)  # the row starts before the solve
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = otsolve.solve(None, None, geom, epsilon=eps, method=method, tol=tol, **kw)
        dt = time.perf_counter() - t0
        iters = f"{res.n_sinkhorn}+{res.n_newton}" if method == "sns" else str(res.n_iter)
        print(f"{iters:>9} {res.cost:11.8f} {res.marginal_error:10.2e} {str(res.converged):>5} {dt:7.3f}s")
    print(f"  (tol = {tol:g} on the L1 error of both marginals; <C,P> decreases to the exact cost as epsilon -> 0)")
    if "emd" in otsolve.available_methods():
        print(f"{'emd (exact OT)':<26} {'-':>8} ", end="", flush=True)
        importlib.import_module("ot")  # POT's network simplex; its import (seconds) is not the solve
        t0 = time.perf_counter()
        res = otsolve.solve(None, None, geom, method="emd")
        dt = time.perf_counter() - t0
        print(f"{res.n_iter:>9} {res.cost:11.8f} {res.marginal_error:10.2e} {str(res.converged):>5} {dt:7.3f}s")
    m = min(n, 300)
    if _numba_cache_cold():
        print("  (compiling the numba top-k kernels: ~10-30 s on the first run only, cached afterwards)",
              flush=True)
    print(f"{'sparsity_constrained k=2':<26} {'g=1':>8} ", end="", flush=True)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = otsolve.solve(None, None, otsolve.PointCloud(x[:m], y[:m], scale_cost="max"),
                            method="sparsity_constrained", k=2, gamma=1.0)
    dt = time.perf_counter() - t0
    nnz = int(np.diff(res.plan_sparse.tocsc().indptr).max())
    print(f"{res.n_iter:>9} {res.cost:11.8f} {res.marginal_error:10.2e} {str(res.converged):>5} {dt:7.3f}s")
    print(f"  (n = {m}; at most {nnz} nonzeros per column by construction; the row marginals of this "
          "non-smooth relaxation are not exact: see docs/sparse_ot.md)")
    if "emd" not in otsolve.available_methods():
        from scipy.optimize import linear_sum_assignment

        C = geom.cost_matrix
        r, c = linear_sum_assignment(C)
        print(f"exact OT (assignment) cost: {C[r, c].mean():.8f}  -- entropic costs approach it as epsilon -> 0")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from otsolve import __version__

    parser = _Parser(prog="otsolve", description="Optimal transport solvers.")
    parser.add_argument("--version", action="version", version=f"otsolve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("solve", help="solve OT between two point clouds (.npy, .csv or .txt)",
                       description="Solve OT between two point clouds with uniform weights. The cost is "
                       "divided by its max (--scale-cost) before solving: epsilon and gamma apply to the "
                       "scaled cost; the reported <C,P> and the saved cost, f, g are in the input's units.")
    p.add_argument("source", help="source points, (n, d) .npy, .csv (a header row is skipped) or .txt")
    p.add_argument("target", help="target points, (m, d), same formats")
    p.add_argument("--epsilon", type=float, default=0.01,
                   help="entropic regularization on the scaled cost (default 0.01; sinkhorn, sns)")
    p.add_argument("--method", default="sinkhorn",
                   help="sinkhorn (default) | sns | sparsity_constrained | emd (otsolve.available_methods())")
    p.add_argument("--cost", default="sqeuclidean", help="sqeuclidean | euclidean | cityblock")
    p.add_argument("--scale-cost", default="max",
                   help="divide the cost by its 'max' or 'mean', or multiply it by a number (default max)")
    p.add_argument("--tol", type=float, default=None,
                   help="stop when the L1 error of both marginals is <= TOL (default: the method's, 1e-9 "
                   "in float64 for sinkhorn and sns)")
    p.add_argument("--max-iter", type=int, default=None,
                   help="iteration limit (default: the method's); unconverged runs exit with status 1")
    p.add_argument("--epsilon-scaling", action="store_true", default=None,
                   help="sinkhorn: solve a decreasing sequence of epsilons down to --epsilon (small epsilon)")
    p.add_argument("--k", type=int, default=None,
                   help="sparsity_constrained: at most K nonzeros per plan column")
    p.add_argument("--gamma", type=float, default=None,
                   help="sparsity_constrained: quadratic regularization on the scaled cost")
    p.add_argument("--out", default=None, help="write plan, potentials and cost to this .npz")
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


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        text = f"{exc.strerror}: {exc.filename}"
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``otsolve`` command line; returns the exit status (0 ok, 1 unconverged, 2 user error)."""
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
        print(f"otsolve: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except TypeError as exc:
        # a keyword the user chose that the called function does not take (e.g. a datagen --options
        # key); any other TypeError is a bug and keeps its traceback
        if "unexpected keyword argument" not in str(exc):
            raise
        print(f"otsolve: error: {_one_line(exc)} (check the option names)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # pragma: no cover
        print("otsolve: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
