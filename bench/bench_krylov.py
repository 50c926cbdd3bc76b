"""Krylov recycling benchmark: SKR (sorted + GCRO-DR recycling) vs GMRES(40), gcrotmk, splu, ...

All solvers run in this process on the same systems; generation and preconditioner setup are
excluded from the solve times (ILU setup is reported separately); true residuals are checked.

    python bench/bench_krylov.py --quick
    python bench/bench_krylov.py --family darcy --grid 100 --n 100 --precond none jacobi ilu
    python bench/bench_krylov.py --family darcy --grid 100 --n 100 --precond jacobi --restart 80 --k 30
    python bench/bench_krylov.py --family darcy3d --grid 40 --n 5 --precond jacobi --methods splu skr
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # same single BLAS thread for every solver
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402

from otsolve.krylov import RecyclingSolver, make_preconditioner, sort_systems  # noqa: E402
from otsolve.pde import make_system  # noqa: E402


class Counted(spla.LinearOperator):
    """Counts mat-vecs of SciPy's solvers (a Python call per product: ~1 µs, negligible here)."""

    def __init__(self, A):
        super().__init__(A.dtype, A.shape)
        self.A, self.count = A, 0

    def _matvec(self, v):
        self.count += 1
        return self.A @ v

    def _matmat(self, V):
        self.count += V.shape[1]
        return self.A @ V


def _res(A, x, b):
    return float(np.linalg.norm(b - A @ x) / np.linalg.norm(b))


def run_scipy(kind, systems, Ms, rtol, subset):
    out = []
    CU = []
    for S, M in list(zip(systems, Ms))[:subset]:
        op = Counted(S.A)
        its = [0]
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if kind == "gmres":
                x, info = spla.gmres(op, S.b, rtol=rtol, restart=40, maxiter=250, M=M,
                                     callback=lambda r: its.__setitem__(0, its[0] + 1), callback_type="pr_norm")
            elif kind == "gcrotmk":
                x, info = spla.gcrotmk(op, S.b, rtol=rtol, m=20, k=20, CU=CU, discard_C=True, maxiter=500, M=M)
                its[0] = op.count
            elif kind == "cg":
                x, info = spla.cg(op, S.b, rtol=rtol, maxiter=10 * S.b.size, M=M,
                                  callback=lambda xk: its.__setitem__(0, its[0] + 1))
        dt = time.perf_counter() - t
        out.append((op.count, its[0], dt, _res(S.A, x, S.b), info != 0))
    return out


def run_splu(systems, subset):
    out = []
    for S in systems[:subset]:
        t = time.perf_counter()
        x = spla.splu(S.A.tocsc()).solve(S.b)
        out.append((0, 0, time.perf_counter() - t, _res(S.A, x, S.b), False))
    return out


def run_ours(method, systems, Ms, rtol, order, recycle, restart=40, k=20):
    solver = RecyclingSolver(method, rtol=rtol, restart=restart, k=k, recycle=recycle, maxiter=10_000)
    res = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in order:
            S = systems[i]
            t = time.perf_counter()
            x = solver.solve(S.A, S.b, M=Ms[i])
            dt = time.perf_counter() - t
            st = solver.last
            res[i] = (st.matvecs, st.iterations, dt, _res(S.A, x, S.b), not st.converged)
    return [res[i] for i in sorted(res)]


def bench(family, grid, n, precond, rtol, methods, subset, seed=0, options=None, gmres_subset=None,
          restart=40, k=20):
    options = options or {}
    systems = [make_system(family, grid, i, seed, **options) for i in range(n)]
    t = time.perf_counter()
    Ms = [make_preconditioner(S.A, precond) for S in systems]
    t_pc = (time.perf_counter() - t) / n
    t = time.perf_counter()
    order = sort_systems([S.params for S in systems])
    t_sort = time.perf_counter() - t
    gen = np.arange(n)
    # CG needs an SPD preconditioner: spilu's L U (drop tolerance, permutation) is not symmetric
    spd = family in ("darcy", "darcy3d", "poisson") and precond in (None, "jacobi")
    rows = {}
    for m in methods:
        if m == "gmres":
            gs = n if gmres_subset is None else min(gmres_subset, n)
            rows["scipy gmres(40)" + (f" [first {gs}]" if gs < n else "")] = run_scipy("gmres", systems, Ms, rtol, gs)
        elif m == "gcrotmk":
            rows[f"scipy gcrotmk(20,20)+CU [first {min(subset, n)}]"] = run_scipy("gcrotmk", systems, Ms, rtol, subset)
        elif m == "splu":
            rows["splu per system"] = run_splu(systems, n)
        elif m == "reset":
            rows[f"gcrodr({restart},{k}) reset"] = run_ours("gcrodr", systems, Ms, rtol, gen, False, restart, k)
        elif m == "unsorted":
            rows[f"gcrodr({restart},{k}) carry, unsorted"] = run_ours("gcrodr", systems, Ms, rtol, gen, True,
                                                                     restart, k)
        elif m == "skr":
            rows[f"SKR: sorted + gcrodr({restart},{k}) carry"] = run_ours("gcrodr", systems, Ms, rtol, order, True,
                                                                         restart, k)
        elif m == "cg" and spd:
            rows["scipy cg"] = run_scipy("cg", systems, Ms, rtol, n)
        elif m == "rcg" and spd:
            rows["rcg(k=20) sorted, carry"] = run_ours("rcg", systems, Ms, rtol, order, True)
    N = systems[0].A.shape[0]
    print(f"\n## {family}, grid {grid} (n = {N}), {n} systems, rtol {rtol:g}, preconditioner {precond or 'none'}"
          f"  (sort {t_sort:.3f} s; preconditioner setup {t_pc * 1e3:.1f} ms/system, not in times)")
    base = next((v for key, v in rows.items() if key.startswith("scipy gmres")), None)
    bmv = np.mean([r[0] for r in base]) if base else None
    btm = np.mean([r[2] for r in base]) if base else None
    print("(ratios: mean per system of GMRES over mean per system of the row; rows marked [first N] "
          "ran on the first N systems only)")
    print(f"| method | mat-vecs/sys (mean) | iters/sys (mean) | time/sys median (s) | time/sys mean (s) "
          f"| max rel. res. | capped | GMRES/this mat-vecs | GMRES/this time |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for name, rs in rows.items():
        a = np.array([r[:4] for r in rs], dtype=float)
        capped = int(sum(r[4] for r in rs))
        mv, it, tmed, tmean, rmax = a[:, 0].mean(), a[:, 1].mean(), np.median(a[:, 2]), a[:, 2].mean(), a[:, 3].max()
        rmv = f"{bmv / mv:.2f}" if bmv and mv > 0 else "-"
        rt = f"{btm / tmean:.2f}" if btm else "-"
        print(f"| {name} | {mv:.1f} | {it:.1f} | {tmed:.4f} | {tmean:.4f} | {rmax:.1e} | {capped} | {rmv} | {rt} |")
        summary[name] = dict(matvecs=mv, time=tmean, capped=capped, residual=rmax)
    return summary


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--family", nargs="+", default=["darcy", "helmholtz"])
    p.add_argument("--grid", type=int, default=100)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--rtol", type=float, default=1e-8)
    p.add_argument("--precond", nargs="+", default=["none", "jacobi", "ilu"])
    p.add_argument("--methods", nargs="+",
                   default=["gmres", "gcrotmk", "splu", "reset", "unsorted", "skr", "cg", "rcg"])
    p.add_argument("--subset", type=int, default=20, help="systems for the slow gcrotmk baseline")
    p.add_argument("--gmres-subset", type=int, default=None, help="systems for GMRES(40) (default: all)")
    p.add_argument("--restart", type=int, default=40, help="GCRO-DR basis size m (the GMRES baseline keeps 40)")
    p.add_argument("--k", type=int, default=20, help="GCRO-DR recycle dimension k")
    args = p.parse_args()
    if args.quick:
        args.grid, args.n, args.subset = 24, 8, 4
        args.precond = ["none", "ilu"]
    for fam in args.family:
        for pc in args.precond:
            bench(fam, args.grid, args.n, None if pc == "none" else pc, args.rtol, args.methods, args.subset,
                  gmres_subset=args.gmres_subset, restart=args.restart, k=args.k)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
