"""Sinkhorn-Newton-Sparse vs RegOT, otsolve Sinkhorn and POT (issue 3 targets).

Three parts, every method in the same run (medians over repeats, runs interleaved so that the
load of a shared machine hits all methods alike):

1. random assignment: C_ij ~ U[0,1], uniform weights, eta = 1/eps = 1200, L1 marginal tol 1e-8:
   otsolve SNS, RegOT ``sinkhorn_ssns`` and ``sinkhorn_newton``, otsolve Sinkhorn (plain);
2. images: W2 between 28x28 digit images (scikit-learn digits upsampled) as histograms on the
   pixel grid, squared-Euclidean cost scaled to max 1, eps = 0.01 and 0.002: otsolve SNS,
   otsolve Sinkhorn, RegOT ``sinkhorn_ssns``, POT ``sinkhorn_log`` (iteration capped);
3. scaling: n = 2000 and 5000 random problems at eta = 1200: SNS time per Newton step and
   total, against otsolve Sinkhorn given the same or a larger time budget;
4. small: near-permutation problems (n = 100-300, eta = 1200) where Jacobi-PCG stalls: SNS with
   its direct fallback, SNS with CG only, and otsolve Sinkhorn;
5. compare (``--parts compare [--before DIR]``): the issue-13 speed check, SNS now vs a snapshot
   of an earlier SNS vs RegOT ``sinkhorn_ssns`` on n = 500 random assignment and 32x32 images;
6. hopeless (``--parts hopeless [--before DIR]``): eps = 1e-6 on 300 x 200 points (issue 14).

``python bench/bench_sns.py --quick`` runs tiny sizes (CI); ``--out FILE`` writes the tables.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
import warnings

import numpy as np

import otsolve
from otsolve.solvers.sns import SinkhornNewtonSparse

try:
    import regot
except ImportError:  # pragma: no cover
    regot = None
try:
    import ot
except ImportError:  # pragma: no cover
    ot = None

LINES: list[str] = []


def emit(line: str = "") -> None:
    print(line, flush=True)
    LINES.append(line)


def marginal_err(P, a, b) -> float:
    return float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def run_sns(C, a, b, eps, tol, **kw):
    prob = otsolve.LinearProblem(C, a, b, epsilon=eps)
    res = SinkhornNewtonSparse(tol=tol, warn=False, **kw)(prob)
    return dict(err=res.marginal_error, iters=f"{res.n_sinkhorn}+{res.n_newton}",
                conv=res.converged, cg=sum(res.cg_iterations), res=res)


def run_sinkhorn(C, a, b, eps, tol, max_iter, plain=False):
    """otsolve Sinkhorn: default (adaptive over-relaxation, kernel-domain mode) or plain
    (omega = 1, log-domain sweeps: the textbook algorithm)."""
    prob = otsolve.LinearProblem(C, a, b, epsilon=eps)
    opts = dict(omega=1.0, mode="log") if plain else {}
    res = otsolve.Sinkhorn(tol=tol, max_iter=max_iter, warn=False,
                           n_threads=1 if C.size < 1 << 20 else 0, **opts)(prob)
    return dict(err=res.marginal_error, iters=str(res.n_iter), conv=res.converged, res=res)


def run_regot(name, C, a, b, eps, tol, max_iter=1000):
    fn = getattr(regot, name)
    r = fn(C, a, b, eps, tol=tol, max_iter=max_iter)
    err = marginal_err(r.plan, a, b)
    return dict(err=err, iters=str(r.niter), conv=err <= tol * 10, res=r)


def run_pot(C, a, b, eps, tol, max_iter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P, log = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", stopThr=tol, numItermax=max_iter,
                             log=True)
    err = marginal_err(P, a, b)
    return dict(err=err, iters=str(log.get("niter", max_iter)), conv=err <= tol, res=None)


def compare(title, C, a, b, eps, tol, methods, repeats):
    """Run each method ``repeats`` times interleaved; print one table row per method."""
    times = {name: [] for name in methods}
    outs = {}
    for r in range(repeats):
        for name, fn in methods.items():
            if r > 0 and getattr(fn, "once", False):
                continue
            dt, out = timed(lambda: fn(C, a, b, eps, tol))
            times[name].append(dt)
            outs[name] = out
    ref = statistics.median(times["otsolve SNS"])
    emit(f"\n**{title}** (eps = {eps:.3g}, tol = {tol:g}, medians over {repeats} runs)\n")
    emit("| method | time (s) | time / SNS | iterations | marginal L1 error | converged |")
    emit("|---|---|---|---|---|---|")
    for name in methods:
        t = statistics.median(times[name])
        o = outs[name]
        n_runs = len(times[name])
        emit(f"| {name}{'' if n_runs == repeats else f' ({n_runs} run)'} | {t:.4g} | {t / ref:.3g}x "
             f"| {o['iters']} | {o['err']:.2e} | {o['conv']} |")
    return times, outs


def once(fn):
    fn.once = True
    return fn


def random_assignment(n, eta, tol, repeats, sinkhorn_iters, bcd=False):
    rng = np.random.default_rng(0)
    C = rng.random((n, n))
    a = np.full(n, 1.0 / n)
    methods = {"otsolve SNS": lambda C, a, b, e, t: run_sns(C, a, b, e, t)}
    if regot is not None:
        methods["RegOT sinkhorn_ssns"] = lambda C, a, b, e, t: run_regot("sinkhorn_ssns", C, a, b, e, t)
        methods["RegOT sinkhorn_newton (dense)"] = once(
            lambda C, a, b, e, t: run_regot("sinkhorn_newton", C, a, b, e, t))
    methods["otsolve Sinkhorn (plain: omega=1, log)"] = once(
        lambda C, a, b, e, t: run_sinkhorn(C, a, b, e, t, sinkhorn_iters, plain=True))
    methods["otsolve Sinkhorn (default: over-relaxed)"] = once(
        lambda C, a, b, e, t: run_sinkhorn(C, a, b, e, t, sinkhorn_iters))
    if bcd and regot is not None:
        methods["RegOT sinkhorn_bcd (plain Sinkhorn)"] = once(
            lambda C, a, b, e, t: run_regot("sinkhorn_bcd", C, a, b, e, t, max_iter=100_000))
    compare(f"Random assignment, n = {n}, eta = {eta}", C, a, a, 1.0 / eta, tol, methods, repeats)


def digit_images(size: int):
    from scipy.ndimage import zoom
    from sklearn.datasets import load_digits

    digits = load_digits().images  # 8x8, values 0..16
    imgs = [np.clip(zoom(digits[i], size / 8.0, order=1), 0, None) for i in (0, 1, 3, 8)]
    # A small floor keeps every pixel in the support (RegOT and POT need positive weights).
    return [(im + 1e-3 * im.max()).ravel() / (im + 1e-3 * im.max()).sum() for im in imgs]


def images(size, eps_list, tol, repeats, pot_iters, sinkhorn_iters, pot_min_eps=0.0):
    g = np.arange(size, dtype=float)
    xy = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    C = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    C /= C.max()
    imgs = digit_images(size)
    for (i, j) in [(0, 1), (2, 3)]:
        a, b = imgs[i], imgs[j]
        for eps in eps_list:
            methods = {"otsolve SNS": lambda C, a, b, e, t: run_sns(C, a, b, e, t)}
            methods["otsolve Sinkhorn"] = once(
                lambda C, a, b, e, t: run_sinkhorn(C, a, b, e, t, sinkhorn_iters))
            if regot is not None:
                methods["RegOT sinkhorn_ssns"] = lambda C, a, b, e, t: run_regot(
                    "sinkhorn_ssns", C, a, b, e, t)
            if ot is not None and eps >= pot_min_eps:
                methods[f"POT sinkhorn_log (<= {pot_iters} its)"] = once(
                    lambda C, a, b, e, t: run_pot(C, a, b, e, t, pot_iters))
            compare(f"Images {size}x{size}, digits pair {(i, j)}", C, a, b, eps, tol, methods, repeats)


def scaling(cases, tol, repeats):
    emit(f"\n**Scaling** (random C ~ U[0,1], tol = {tol:g}; otsolve Sinkhorn (default, over-relaxed) "
         "runs until it converges or has used 1.5x the SNS time)\n")
    emit("| n | eta | SNS time (s) | Sinkhorn+Newton its | Newton-stage time / step (s) | per step / n^2 (ns) "
         "| CG its / step | Sinkhorn its in budget | Sinkhorn time (s) | Sinkhorn error at stop | ratio |")
    emit("|---|---|---|---|---|---|---|---|---|---|---|")
    for n, eta in cases:
        rng = np.random.default_rng(0)
        C = rng.random((n, n))
        a = np.full(n, 1.0 / n)
        ts, outs = [], None
        for _ in range(repeats):
            dt, outs = timed(lambda: run_sns(C, a, a, 1.0 / eta, tol))
            ts.append(dt)
        t_sns = statistics.median(ts)
        res = outs["res"]
        newton_time = res.time - res.sinkhorn_time
        per_step = newton_time / max(res.n_newton, 1)
        # Sinkhorn: time one block of iterations, then run enough to exceed the SNS time.
        prob = otsolve.LinearProblem(C, epsilon=1.0 / eta)
        probe_t, _ = timed(lambda: otsolve.Sinkhorn(tol=tol, max_iter=40, warn=False)(prob))
        iters = int(max(50, 1.5 * t_sns / (probe_t / 40)))
        t_sk, sk = timed(lambda: otsolve.Sinkhorn(tol=tol, max_iter=iters, warn=False)(prob))
        cg = f"{np.mean(res.cg_iterations):.0f}" if res.cg_iterations else "-"
        step = f"{per_step:.3g} | {per_step / n**2 * 1e9:.3g}" if res.n_newton else "- | -"
        emit(f"| {n} | {eta:g} | {t_sns:.3g} | {res.n_sinkhorn}+{res.n_newton} | {step} | {cg} | {sk.n_iter} | {t_sk:.3g} | "
             f"{sk.marginal_error:.2e}{' (converged)' if sk.converged else ''} | "
             f"{t_sk / t_sns:.3g}x |")


def small_near_permutation(ns, seeds, eta, tol, sinkhorn_iters):
    """Small random assignments at large eta: near-permutation plans whose sparsified Hessian
    Jacobi-PCG cannot solve; SNS with its direct fallback vs CG only vs otsolve Sinkhorn."""
    import otsolve.solvers.sns as sns_mod

    emit(f"\n## Small near-permutation problems (eta = {eta}, C ~ U[0,1], tol {tol:g})\n")
    emit("| n | seed | SNS (default) s | Newton steps / direct solves | converged | SNS, CG only s | "
         "converged (error) | otsolve Sinkhorn s | iterations | converged (error) |")
    emit("|---|---|---|---|---|---|---|---|---|---|")
    keep = sns_mod.DIRECT_MAX
    for n in ns:
        for seed in seeds:
            C = np.random.default_rng(seed).random((n, n))
            prob = otsolve.LinearProblem(C, epsilon=1.0 / eta)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                t0, r = timed(lambda: SinkhornNewtonSparse(tol=tol)(prob))
                sns_mod.DIRECT_MAX = 0  # the behaviour before the fallback: CG only
                try:
                    t1, r1 = timed(lambda: SinkhornNewtonSparse(tol=tol)(prob))
                finally:
                    sns_mod.DIRECT_MAX = keep
                t2, s = timed(lambda: otsolve.Sinkhorn(tol=tol, max_iter=sinkhorn_iters)(prob))
            emit(f"| {n} | {seed} | {t0:.3f} | {r.n_newton} / {r.direct_solves} | {r.converged} | {t1:.3f} | "
                 f"{r1.converged} ({r1.marginal_error:.1e}) | {t2:.2f} | {s.n_iter} | {s.converged} "
                 f"({s.marginal_error:.1e}) |")


def load_before(path: str):
    """``run_sns`` for a snapshot of an earlier otsolve, importable as ``otsolve_before`` from
    ``path`` (see ``--before``)."""
    sys.path.insert(0, path)
    from otsolve_before.problems import LinearProblem as BeforeProblem  # noqa: PLC0415
    from otsolve_before.solvers.sns import SinkhornNewtonSparse as Before  # noqa: PLC0415

    def run(C, a, b, eps, tol):
        res = Before(tol=tol, warn=False)(BeforeProblem(C, a, b, epsilon=eps))
        return dict(err=res.marginal_error, iters=f"{res.n_sinkhorn}+{res.n_newton}",
                    conv=res.converged, res=res)

    return run


def before_after(before_dir: str | None, repeats: int, n: int = 500, size: int = 32) -> None:
    """The issue-13 speed check: SNS now, SNS before (a snapshot) and RegOT ``sinkhorn_ssns``,
    interleaved in one process: random assignment (n, eta = 1200, tol 1e-8) and size x size
    digit images (eps = 0.01 and 0.002 x the cost scale)."""
    before = load_before(before_dir) if before_dir else None
    cases = []
    rng = np.random.default_rng(0)
    C = rng.random((n, n))
    u = np.full(n, 1.0 / n)
    cases.append((f"Random assignment, n = {n}, eta = 1200", C, u, u, 1 / 1200))
    g = np.arange(size, dtype=float)
    xy = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
    Ci = ((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)
    Ci /= Ci.max()
    imgs = digit_images(size)
    for (i, j) in [(0, 1), (2, 3)]:
        for eps in (0.01, 0.002):
            cases.append((f"Images {size}x{size}, digits pair {(i, j)}", Ci, imgs[i], imgs[j], eps))
    summary = []
    for title, C, a, b, eps in cases:
        methods = {"otsolve SNS": lambda C, a, b, e, t: run_sns(C, a, b, e, t)}
        if before is not None:
            methods["otsolve SNS (before)"] = before
        if regot is not None:
            methods["RegOT sinkhorn_ssns"] = lambda C, a, b, e, t: run_regot("sinkhorn_ssns", C, a, b, e, t)
        times, _ = compare(title, C, a, b, eps, 1e-8, methods, repeats)
        med = {k: statistics.median(v) for k, v in times.items()}
        low = {k: min(v) for k, v in times.items()}
        summary.append((f"{title}, eps {eps:g}", med, low))
    emit("\n**Summary** (medians, and the minimum over the runs in brackets; ratio = time / RegOT "
         "sinkhorn_ssns time)\n")
    emit("| case | SNS now (s) | SNS before (s) | RegOT ssns (s) | now / RegOT | before / RegOT | now / before |")
    emit("|---|---|---|---|---|---|---|")
    for name, med, low in summary:
        k_now, k_bef, k_reg = "otsolve SNS", "otsolve SNS (before)", "RegOT sinkhorn_ssns"

        def f(k):
            return f"{med[k]:.4g} ({low[k]:.4g})" if k in med else "-"

        def r(x, y):
            return f"{med[x] / med[y]:.3g} ({low[x] / low[y]:.3g})" if x in med and y in med else "-"

        emit(f"| {name} | {f(k_now)} | {f(k_bef)} | {f(k_reg)} | {r(k_now, k_reg)} | {r(k_bef, k_reg)} "
             f"| {r(k_now, k_bef)} |")


def hopeless(before_dir: str | None, seeds=(0, 1)) -> None:
    """Issue 14: SNS on 300 x 200 uniform points, squared distances, eps = 1e-6 (5.6e-7 x the
    cost range): Newton steps cannot work; now and (with ``--before``) the snapshot."""
    emit("\n**Hopeless epsilon** (300 x 200 points, sqeuclidean, eps = 1e-6)\n")
    emit("| seed | version | time (s) | status | Newton steps | fallbacks | marginal L1 error |")
    emit("|---|---|---|---|---|---|---|")
    versions = [("now", SinkhornNewtonSparse, otsolve.LinearProblem)]
    if before_dir:
        sys.path.insert(0, before_dir)
        from otsolve_before.problems import LinearProblem as BeforeProblem  # noqa: PLC0415
        from otsolve_before.solvers.sns import SinkhornNewtonSparse as Before  # noqa: PLC0415

        versions.append(("before", Before, BeforeProblem))
    for seed in seeds:
        rng = np.random.default_rng(seed)
        x, y = rng.random((300, 2)), rng.random((200, 2))
        C = ((x[:, None] - y[None]) ** 2).sum(-1)
        for name, solver, problem in versions:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                dt, r = timed(lambda: solver()(problem(C, epsilon=1e-6)))
            emit(f"| {seed} | {name} | {dt:.2f} | {r.status} | {r.n_newton} | {len(r.fallbacks)} | "
                 f"{r.marginal_error:.2g} |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("--out", help="also write the tables (markdown) to this file")
    parser.add_argument("--parts", default="random,images,scaling,small",
                        help="comma-separated parts; add 'bcd' to also run RegOT sinkhorn_bcd "
                             "(minutes) in the random-assignment part")
    parser.add_argument("--before", metavar="DIR",
                        help="directory holding a snapshot of an earlier otsolve as the package "
                             "'otsolve_before' (python files + its built _ext_*.so): the 'compare' "
                             "part then times it interleaved with the current SNS")
    args = parser.parse_args()
    parts = args.parts.split(",")
    emit(f"otsolve SNS benchmark ({'quick' if args.quick else 'full'}); regot "
         f"{'yes' if regot else 'missing'}, POT {getattr(ot, '__version__', 'missing')}")
    if "hopeless" in parts:
        hopeless(args.before, seeds=(0,) if args.quick else (0, 1))
    if "compare" in parts:
        before_after(args.before, repeats=3 if args.quick else 7, n=200 if args.quick else 500,
                     size=12 if args.quick else 32)
    if args.quick:
        if "random" in parts:
            random_assignment(200, 1200, 1e-8, repeats=3, sinkhorn_iters=5_000)
        if "images" in parts:
            images(12, [0.01], 1e-8, repeats=2, pot_iters=500, sinkhorn_iters=20_000)
        if "scaling" in parts:
            scaling([(300, 1200)], 1e-8, repeats=1)
        if "small" in parts:
            small_near_permutation([120], [3], 1200, 1e-9, sinkhorn_iters=2_000)
    else:
        if "random" in parts:
            random_assignment(500, 1200, 1e-8, repeats=7, sinkhorn_iters=100_000, bcd="bcd" in parts)
        if "images" in parts:
            images(28, [0.01, 0.002], 1e-8, repeats=3, pot_iters=1000, sinkhorn_iters=100_000,
                   pot_min_eps=0.01)
        if "scaling" in parts:
            # eta = 1200 at every n, and eta growing with n (n * eps fixed, the hardness of
            # the n = 500, eta = 1200 problem: at fixed eta larger random problems get easier)
            scaling([(500, 1200), (2000, 1200), (2000, 4800), (5000, 1200), (5000, 12000)], 1e-8,
                    repeats=1)
        if "small" in parts:
            small_near_permutation([100, 120, 200, 300], [3, 4], 1200, 1e-9, sinkhorn_iters=100_000)
    if args.out:
        with open(args.out, "w") as fh:
            fh.write("\n".join(LINES) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
