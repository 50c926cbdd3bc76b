"""Sinkhorn: otsolve against POT on the foundation issue's problems, in one run.

Problems: n = m points uniform in [0,1]^2, squared-Euclidean cost divided by its max, uniform
weights, float64, stopping threshold 1e-9 (otsolve: L1 error of both marginals; POT: L2 error of
the second marginal, checked every 10 iterations, which is looser).

    python bench/bench_sinkhorn.py            # full sizes (n = 4000, 20000), ~10 min
    python bench/bench_sinkhorn.py --quick    # tiny sizes (CI)
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
import warnings

import numpy as np
import ot

import otsolve


def problem(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    x, y = rng.random((n, 2)), rng.random((n, 2))
    C = ot.dist(x, y)
    C /= C.max()
    return x, y, C


def l1_marginal_error(P, a, b) -> float:
    return float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())


def timed(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def run_pot(C, a, b, eps, method, max_iter):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        P, log = ot.sinkhorn(a, b, C, eps, method=method, numItermax=max_iter, stopThr=1e-9, log=True)
    return P, log.get("niter", len(log.get("err", [])) * 10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-pot-log", action="store_true", help="skip POT's slow sinkhorn_log run")
    args = parser.parse_args()
    n = 300 if args.quick else 4000
    n_big = 1000 if args.quick else 20000
    reps = 1 if args.quick else args.repeats

    rows = []
    x, y, C = problem(n)
    cmax = float(ot.dist(x, y).max())  # C is the squared distance divided by its max
    a = b = np.full(n, 1.0 / n)
    tol = 1e-9

    # --- eps = 0.01 ---------------------------------------------------------------------------
    eps = 0.01
    prob = otsolve.LinearProblem(C, a, b, epsilon=eps)
    t_ots, r = timed(lambda: otsolve.Sinkhorn(tol=tol)(prob), reps)
    rows.append(("otsolve Sinkhorn (default)", n, eps, t_ots, r.n_iter, r.marginal_error, r.converged))
    t_plain, r1 = timed(lambda: otsolve.Sinkhorn(tol=tol, omega=1.0)(prob), reps)
    rows.append(("otsolve Sinkhorn omega=1 (plain)", n, eps, t_plain, r1.n_iter, r1.marginal_error, r1.converged))
    t_log, r2 = timed(lambda: otsolve.Sinkhorn(tol=tol, mode="log")(prob), reps)
    rows.append(("otsolve Sinkhorn mode=log", n, eps, t_log, r2.n_iter, r2.marginal_error, r2.converged))
    t_pk, (P, it) = timed(lambda: run_pot(C, a, b, eps, "sinkhorn", 10000), reps)
    err = l1_marginal_error(P, a, b)
    rows.append(("POT ot.sinkhorn (kernel)", n, eps, t_pk, it, err, bool(err <= 1e-6)))
    t_pl = None
    if not args.skip_pot_log:
        t_pl, (P, it) = timed(lambda: run_pot(C, a, b, eps, "sinkhorn_log", 10000), 1)
        err = l1_marginal_error(P, a, b)
        rows.append(("POT ot.sinkhorn sinkhorn_log", n, eps, t_pl, it, err, bool(err <= 1e-6)))

    # point clouds of the same problem: "auto" stores the cost and kernel when 2 n m entries fit
    # in kernel_memory, "log" computes the cost in every sweep (O((n + m) d) memory)
    pc = otsolve.LinearProblem(otsolve.PointCloud(x, y, scale_cost=1.0 / cmax), a, b, epsilon=eps)
    t_pc, rpc = timed(lambda: otsolve.Sinkhorn(tol=tol)(pc), reps)
    rows.append(("otsolve PointCloud (auto: stored kernel)", n, eps, t_pc, rpc.n_iter, rpc.marginal_error,
                 rpc.converged))
    t_pcl, rpcl = timed(lambda: otsolve.Sinkhorn(tol=tol, mode="log")(pc), reps)
    rows.append(("otsolve PointCloud mode=log (on the fly)", n, eps, t_pcl, rpcl.n_iter, rpcl.marginal_error,
                 rpcl.converged))

    # --- eps = 0.001 --------------------------------------------------------------------------
    eps = 0.001
    prob = otsolve.LinearProblem(C, a, b, epsilon=eps)
    t_ots3, r3 = timed(lambda: otsolve.Sinkhorn(tol=tol, max_iter=100000)(prob), reps)
    rows.append(("otsolve Sinkhorn (default)", n, eps, t_ots3, r3.n_iter, r3.marginal_error, r3.converged))
    t_ots3s, r3s = timed(lambda: otsolve.Sinkhorn(tol=tol, max_iter=100000, epsilon_scaling=True)(prob), reps)
    rows.append(("otsolve Sinkhorn eps-scaling", n, eps, t_ots3s, r3s.n_iter, r3s.marginal_error, r3s.converged))
    t_pk3, (P, it) = timed(lambda: run_pot(C, a, b, eps, "sinkhorn", 100000), 1)
    err = l1_marginal_error(P, a, b)
    rows.append(("POT ot.sinkhorn (kernel)", n, eps, t_pk3, it, err, bool(np.isfinite(err) and err <= 1e-6)))

    # --- big point cloud -----------------------------------------------------------------------
    rng = np.random.default_rng(1)
    xb, yb = rng.random((n_big, 2)), rng.random((n_big, 2))
    geom = otsolve.PointCloud(xb, yb, scale_cost=0.5)  # max squared distance in the unit square is 2
    probb = otsolve.LinearProblem(geom, epsilon=0.01)
    t_big, rb = timed(lambda: otsolve.Sinkhorn(tol=tol)(probb), 1)
    rss_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    rows.append((f"otsolve PointCloud (peak RSS {rss_gib:.2f} GiB)", n_big, 0.01, t_big, rb.n_iter,
                 rb.marginal_error, rb.converged))

    print(f"\n{'solver':<44} {'n':>6} {'eps':>6} {'time s':>9} {'iters':>7} {'L1 marg err':>12} {'conv':>5}")
    for name, nn, e, t, it, err, conv in rows:
        print(f"{name:<44} {nn:>6} {e:>6g} {t:>9.3f} {it:>7} {err:>12.2e} {str(conv):>5}")
    print("\nratios (median times, same run):")
    print(f"  eps=0.01 : POT kernel / otsolve = {t_pk / t_ots:.2f}x")
    print(f"  eps=0.01 : PointCloud on the fly / stored kernel = {t_pcl / t_pc:.2f}x")
    if t_pl is not None:
        print(f"  eps=0.01 : POT sinkhorn_log / otsolve = {t_pl / t_ots:.1f}x")
    print(f"  eps=0.001: POT kernel / otsolve best = {t_pk3 / min(t_ots3, t_ots3s):.2f}x")


if __name__ == "__main__":
    main()
