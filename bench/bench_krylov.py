"""Krylov recycling benchmark: SKR (sorted + GCRO-DR recycling) vs GMRES(40), gcrotmk+CU, splu, ...

All solvers run in this process on the same systems, in the same (sorted) order, with the same
preconditioner; generation and preconditioner setup are excluded from the solve times (setup is
reported separately); true residuals are checked. SciPy ``gcrotmk`` with a shared ``CU`` list and
``discard_C=True`` (its recycling mode for changing matrices) is the recycling peer.

    python bench/bench_krylov.py --quick
    python bench/bench_krylov.py --family aniso --grid 102 --n 30 --precond none --methods gmres gcrotmk skr
    python bench/bench_krylov.py --family darcy --grid 100 --n 100 --precond none jacobi ilu
    python bench/bench_krylov.py --family vardiff --grid 130 --n 40 --precond none --budget 4000 \\
        --methods gcrotmk skr
    python bench/bench_krylov.py --sort-bench 100000          # sort time and quality (issue 16)

Families: those of ``otsolve.pde`` plus two defined here — ``aniso``: anisotropic diffusion
−∂x(Kx ∂x u) − ∂y(Ky ∂y u) = 1 with Kx = exp(g1), Ky = θ exp(g2), g GRF(2.5, 7), θ = 10^U(−2, 0),
harmonic-mean faces (SPD); ``param8``: −∇·(K∇u) = 1 with K = exp of 8 cosine modes with
coefficients c ~ U(−1, 1)⁸ (key = c: sorted neighbours are close); ``vardiff``: high-contrast variable-coefficient diffusion
−∇·(K∇u) = 1, K = exp(σ g / std g) (σ = ``--sigma``, default 1.5).

``--budget B`` gives every solver B mat-vecs per system: SciPy's solvers are stopped by their
operator after B products (the last iterate they reported is kept), otsolve's count includes the
products ``A U`` and the final residual check; a system counts as converged only if its true
residual meets rtol within B mat-vecs.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # same single BLAS thread for every solver
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from types import SimpleNamespace  # noqa: E402

import numpy as np  # noqa: E402
import scipy.sparse as sp  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402

from otsolve.krylov import RecyclingSolver, make_preconditioner, path_length, partition_systems  # noqa: E402
from otsolve.krylov import sort_systems  # noqa: E402
from otsolve.pde import make_system  # noqa: E402
from otsolve.pde._assemble import diffusion_matrix  # noqa: E402
from otsolve.pde._grf import gaussian_random_field  # noqa: E402


class _Budget(Exception):
    pass


class Counted(spla.LinearOperator):
    """Counts mat-vecs of SciPy's solvers; stops them after ``budget`` products."""

    def __init__(self, A, budget=None):
        super().__init__(A.dtype, A.shape)
        self.A, self.count, self.budget = A, 0, budget

    def _matvec(self, v):
        self.count += 1
        if self.budget is not None and self.count > self.budget:
            self.count -= 1
            raise _Budget
        return self.A @ v

    def _matmat(self, V):
        self.count += V.shape[1]
        return self.A @ V


# ---- the two extra families ------------------------------------------------------------------


def aniso_system(grid: int, index: int, seed: int = 0):
    """Anisotropic diffusion sample (see the module docstring); key = [Kx, Ky] on the grid."""
    rng = np.random.default_rng([seed, index, 7])
    s, m, h = grid, grid - 2, 1.0 / (grid - 1)
    g1, g2 = gaussian_random_field((s, s), rng), gaussian_random_field((s, s), rng)
    theta = 10.0 ** rng.uniform(-2, 0)
    kx, ky = np.exp(g1), theta * np.exp(g2)

    def faces(K, axis):  # harmonic means on the faces normal to `axis` of the interior nodes
        Ki = K[1:-1, :] if axis == 1 else K[:, 1:-1]
        a, b = (Ki[:, :-1], Ki[:, 1:]) if axis == 1 else (Ki[:-1, :], Ki[1:, :])
        return (2 * a * b / (a + b)).ravel()

    D1 = sp.diags([np.ones(m), -np.ones(m)], [0, -1], shape=(m + 1, m))
    Dx, Dy = sp.kron(sp.identity(m), D1), sp.kron(D1, sp.identity(m))
    A = (Dx.T @ sp.diags(faces(kx, 1)) @ Dx + Dy.T @ sp.diags(faces(ky, 0)) @ Dy).tocsr()
    return SimpleNamespace(A=A, b=np.full(m * m, h * h), params=np.concatenate([kx.ravel(), ky.ravel()]))


def vardiff_system(grid: int, index: int, seed: int = 0, sigma: float = 1.5):
    """High-contrast diffusion sample: K = exp(sigma g / std g); key = K."""
    rng = np.random.default_rng([seed, index, 11])
    g = gaussian_random_field((grid, grid), rng)
    K = np.exp(sigma * g / g.std())
    A, b = diffusion_matrix(K, 1.0, 1.0 / (grid - 1))
    return SimpleNamespace(A=A, b=b, params=K.ravel().copy())


def param8_system(grid: int, index: int, seed: int = 0):
    """Diffusion with an 8-parameter coefficient K = exp(sum_i c_i cos(pi a_i x) cos(pi b_i y)),
    c ~ U(-1, 1)^8: a low-dimensional family where sorted neighbours are close; key = c."""
    rng = np.random.default_rng([seed, index, 13])
    c = rng.uniform(-1, 1, 8)
    x = np.linspace(0, 1, grid)
    X, Y = np.meshgrid(x, x, indexing="ij")
    modes = [(1, 0), (0, 1), (1, 1), (2, 0), (0, 2), (2, 1), (1, 2), (2, 2)]
    g = sum(ci * np.cos(np.pi * a * X) * np.cos(np.pi * b * Y) for ci, (a, b) in zip(c, modes))
    A, b = diffusion_matrix(np.exp(g), 1.0, 1.0 / (grid - 1))
    return SimpleNamespace(A=A, b=b, params=c)


def make(family, grid, i, seed, sigma):
    if family == "param8":
        return param8_system(grid, i, seed)
    if family == "aniso":
        return aniso_system(grid, i, seed)
    if family == "vardiff":
        return vardiff_system(grid, i, seed, sigma)
    return make_system(family, grid, i, seed)


# ---- runners: every solver sees the systems in the same order -----------------------------------


def _res(A, x, b):
    return float(np.linalg.norm(b - A @ x) / np.linalg.norm(b))


def run_scipy(kind, systems, Ms, rtol, budget, m=20):
    out = []
    CU = []
    for S, M in zip(systems, Ms):
        op = Counted(S.A, budget)
        its = [0]
        last = [np.zeros_like(S.b)]
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                if kind == "gmres":
                    cap = 250 if budget is None else budget // 40 + 1
                    x, _ = spla.gmres(op, S.b, rtol=rtol, restart=40, maxiter=cap, M=M,
                                      callback=lambda xk: last.__setitem__(0, xk.copy()), callback_type="x")
                elif kind == "gcrotmk":
                    cap = 1000 if budget is None else budget
                    x, _ = spla.gcrotmk(op, S.b, rtol=rtol, m=m, k=m, CU=CU, discard_C=True, maxiter=cap, M=M,
                                        callback=lambda xk: last.__setitem__(0, xk.copy()))
                elif kind == "cg":
                    x, _ = spla.cg(op, S.b, rtol=rtol, maxiter=10 * S.b.size, M=M,
                                   callback=lambda xk: its.__setitem__(0, its[0] + 1))
            except _Budget:
                x = last[0]
        dt = time.perf_counter() - t
        r = _res(S.A, x, S.b)
        out.append((op.count, its[0] or op.count, dt, r, not r <= rtol))
    return out


def run_splu(systems):
    out = []
    for S in systems:
        t = time.perf_counter()
        x = spla.splu(S.A.tocsc()).solve(S.b)
        out.append((0, 0, time.perf_counter() - t, _res(S.A, x, S.b), False))
    return out


def run_ours(method, systems, Ms, rtol, recycle, restart=40, k=20, budget=None, augment=1):
    maxiter = 10_000 if budget is None else max(budget - k - 2, 1)
    solver = RecyclingSolver(method, rtol=rtol, restart=restart, k=k, recycle=recycle, maxiter=maxiter,
                             augment=augment)
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for S, M in zip(systems, Ms):
            t = time.perf_counter()
            x = solver.solve(S.A, S.b, M=M)
            dt = time.perf_counter() - t
            st = solver.last
            r = _res(S.A, x, S.b)
            over = budget is not None and st.matvecs > budget
            out.append((st.matvecs, st.iterations, dt, r, not (r <= rtol) or over))
    return out


def bench(family, grid, n, precond, rtol, methods, *, seed=0, restart=40, k=20, budget=None, sigma=1.5,
          gcrot_m=20, sort="nn", augment=1, subset=None):
    t = time.perf_counter()
    systems = [make(family, grid, i, seed, sigma) for i in range(n)]
    t_gen = time.perf_counter() - t
    t = time.perf_counter()
    order = sort_systems([S.params for S in systems], method=sort) if sort != "none" else np.arange(n)
    t_sort = time.perf_counter() - t
    sorted_systems = [systems[i] for i in order]
    t = time.perf_counter()
    Ms = [make_preconditioner(S.A, precond) for S in sorted_systems]
    t_pc = (time.perf_counter() - t) / n
    sub = n if subset is None else min(subset, n)
    # CG needs an SPD preconditioner: spilu's L U (drop tolerance, permutation) is not symmetric
    spd = family in ("darcy", "darcy3d", "poisson", "aniso", "vardiff", "param8") and precond in (None, "jacobi")
    rows = {}
    for m in methods:
        if m == "gmres":
            tag = "" if sub == n else f" [first {sub}]"
            rows["scipy gmres(40)" + tag] = run_scipy("gmres", sorted_systems[:sub], Ms[:sub], rtol, budget)
        elif m == "gcrotmk":
            tag = "" if sub == n else f" [first {sub}]"
            rows[f"scipy gcrotmk({gcrot_m},{gcrot_m}) + shared CU" + tag] = run_scipy(
                "gcrotmk", sorted_systems[:sub], Ms[:sub], rtol, budget, m=gcrot_m)
        elif m == "splu":
            rows["splu per system"] = run_splu(sorted_systems)
        elif m == "reset":
            rows[f"gcrodr({restart},{k}) reset"] = run_ours("gcrodr", sorted_systems, Ms, rtol, False, restart, k,
                                                            budget, augment=0)
        elif m == "unsorted":
            Mu = [make_preconditioner(S.A, precond) for S in systems]
            rows[f"gcrodr({restart},{k}) carry, unsorted"] = run_ours("gcrodr", systems, Mu, rtol, True, restart,
                                                                     k, budget, augment)
        elif m == "skr":
            rows[f"SKR: sorted + gcrodr({restart},{k}) carry" + (f" + {augment} prev. sol." if augment else "")] = \
                run_ours("gcrodr", sorted_systems, Ms, rtol, True, restart, k, budget, augment)
        elif m == "skr0":  # the same without the previous solutions in the recycled space
            rows[f"SKR: sorted + gcrodr({restart},{k}) carry, no prev. sol."] = run_ours(
                "gcrodr", sorted_systems, Ms, rtol, True, restart, k, budget, 0)
        elif m == "cg" and spd:
            rows["scipy cg"] = run_scipy("cg", sorted_systems, Ms, rtol, budget)
        elif m == "rcg" and spd:
            rows[f"rcg(k={k}) sorted, carry"] = run_ours("rcg", sorted_systems, Ms, rtol, True, restart, k, budget,
                                                        augment=0)
    N = systems[0].A.shape[0]
    bud = f", budget {budget} mat-vecs/system" if budget else ""
    print(f"\n**{family}, grid {grid} (n = {N}), {n} systems, rtol {rtol:g}, preconditioner {precond or 'none'}"
          f"{bud}** (generation {t_gen:.1f} s; sort '{sort}' {t_sort:.3f} s; preconditioner setup "
          f"{t_pc * 1e3:.1f} ms/system, not in times)\n")

    def ref(prefix):
        v = next((v for key, v in rows.items() if key.startswith(prefix)), None)
        return (np.mean([r[0] for r in v]), np.mean([r[2] for r in v]), v) if v else (None, None, None)

    gmv, gtm, _ = ref("scipy gmres")
    cmv, ctm, crows = ref("scipy gcrotmk")
    print("| method | mat-vecs/sys (mean) | iters/sys (mean) | time/sys median (s) | time/sys mean (s) "
          "| max rel. res. | unconverged | GMRES/this mat-vecs | gcrotmk/this mat-vecs | gcrotmk/this time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    summary = {}
    for name, rs in rows.items():
        a = np.array([r[:4] for r in rs], dtype=float)
        unconv = [bool(r[4]) for r in rs]
        mv, it, tmed, tmean, rmax = a[:, 0].mean(), a[:, 1].mean(), np.median(a[:, 2]), a[:, 2].mean(), a[:, 3].max()
        fr = (lambda base, v: f"{base / v:.2f}" if base and v > 0 else "-")
        uc = f"{sum(unconv)}/{len(rs)}"
        if crows is not None and not name.startswith("scipy gcrotmk"):
            lost = sum(1 for u, c in zip(unconv, crows) if u and not c[4])
            uc += f" ({lost} that gcrotmk converged)" if lost else ""
        print(f"| {name} | {mv:.1f} | {it:.1f} | {tmed:.4f} | {tmean:.4f} | {rmax:.1e} | {uc} | {fr(gmv, mv)} "
              f"| {fr(cmv, mv)} | {fr(ctm, tmean)} |")
        summary[name] = dict(matvecs=mv, time=tmean, unconverged=sum(unconv), residual=rmax)
    return summary


# ---- sorting: time at large N and quality on a sequence -------------------------------------------


def sort_bench(N, dims=8, greedy=False, quality_family="aniso", quality_grid=52, quality_n=60, seed=0):
    rng = np.random.default_rng(seed)
    P = rng.random((N, dims))
    print(f"\n**Sort time, {N} samples of {dims}-D parameters (uniform), one core**\n")
    print("| method | time (s) | path length | path length / nn |")
    print("|---|---|---|---|")
    base = None
    meths = ["nn", "hilbert"] + (["greedy"] if greedy else [])
    for meth in meths:
        t = time.perf_counter()
        o = sort_systems(P, meth)
        dt = time.perf_counter() - t
        L = path_length(P, o)
        base = base or L
        print(f"| sort_systems(method='{meth}') | {dt:.2f} | {L:.0f} | {L / base:.3f} |")
    t = time.perf_counter()
    chunks = partition_systems(P, 1000)
    t_part = time.perf_counter() - t
    t = time.perf_counter()
    o = np.concatenate([c[sort_systems(P[c])] for c in chunks])
    t_loc = time.perf_counter() - t
    L = path_length(P, o)
    print(f"| partition_systems(chunk_size=1000) + local nn per chunk | {t_part:.2f} + {t_loc:.2f} (all chunks, "
          f"one core) | {L:.0f} | {L / base:.3f} |")
    L = path_length(P, np.arange(N))
    print(f"| none (generation order) | 0 | {L:.0f} | {L / base:.3f} |")

    # quality on a solve sequence: path length and SKR mat-vecs for each order
    systems = [make(quality_family, quality_grid, i, seed, 1.5) for i in range(quality_n)]
    keys = np.stack([S.params for S in systems])
    print(f"\n**Sort quality: {quality_family}, grid {quality_grid}, {quality_n} systems, rtol 1e-8, "
          f"no preconditioner, GCRO-DR(40, 20) carried**\n")
    print("| order | sort time (s) | path length | mat-vecs/sys (mean) |")
    print("|---|---|---|---|")
    for meth in ["greedy", "nn", "hilbert", "none"]:
        t = time.perf_counter()
        o = sort_systems(keys, meth, group_size=20)
        dt = time.perf_counter() - t
        res = run_ours("gcrodr", [systems[i] for i in o], [None] * quality_n, 1e-8, True, 40, 20)
        print(f"| {meth} | {dt:.3f} | {path_length(keys, o):.1f} | {np.mean([r[0] for r in res]):.1f} |")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes for CI (every peer included)")
    p.add_argument("--family", nargs="+", default=["darcy", "helmholtz"])
    p.add_argument("--grid", type=int, default=100)
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--rtol", type=float, default=1e-8)
    p.add_argument("--precond", nargs="+", default=["none", "jacobi", "ilu"])
    p.add_argument("--methods", nargs="+",
                   default=["gmres", "gcrotmk", "splu", "reset", "unsorted", "skr", "cg", "rcg"])
    p.add_argument("--subset", type=int, default=None, help="run GMRES and gcrotmk on the first N systems only")
    p.add_argument("--budget", type=int, default=None, help="mat-vec budget per system for every solver")
    p.add_argument("--restart", type=int, default=80, help="GCRO-DR basis size m (the GMRES baseline keeps 40)")
    p.add_argument("--k", type=int, default=30, help="GCRO-DR recycle dimension k")
    p.add_argument("--augment", type=int, default=1, help="previous solutions added to the recycled space")
    p.add_argument("--gcrotmk-m", type=int, default=20, help="gcrotmk's m (and k = m)")
    p.add_argument("--sigma", type=float, default=1.5, help="vardiff contrast (K = exp(sigma g / std g))")
    p.add_argument("--sort", default="nn", choices=["nn", "greedy", "hilbert", "none"])
    p.add_argument("--sort-bench", type=int, default=None, metavar="N",
                   help="only time sort_systems on N random 8-D keys and compare orders on a sequence")
    p.add_argument("--sort-greedy", action="store_true", help="with --sort-bench: also time the O(N²) greedy")
    args = p.parse_args()
    if args.sort_bench:
        sort_bench(args.sort_bench, greedy=args.sort_greedy)
        return 0
    if args.quick:
        args.grid, args.n = 24, 8
        args.precond = ["none", "ilu"]
        args.family = ["darcy", "aniso"]
        sort_bench(5000, quality_grid=20, quality_n=8)
    for fam in args.family:
        for pc in args.precond:
            bench(fam, args.grid, args.n, None if pc == "none" else pc, args.rtol, args.methods,
                  restart=args.restart, k=args.k, budget=args.budget, sigma=args.sigma, gcrot_m=args.gcrotmk_m,
                  sort=args.sort, augment=args.augment, subset=args.subset)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
