"""Sparsity-constrained OT: otsolve vs POT ``ot.smooth`` (same problem, same L-BFGS-B settings).

Target (issue 4): n = m = 1000 random 2-D point clouds, squared-Euclidean cost, k = 5, gamma
chosen so that the quadratic-OT plan has far more than k nonzeros per column; otsolve must be
>= 10x faster than POT at equal or better objective. Also: MoE routing, 4096 tokens x 64 experts,
capacity 128, batch 8 (time per call).

    python bench/bench_sparse_ot.py            # full sizes
    python bench/bench_sparse_ot.py --quick    # tiny sizes (CI)
"""
from __future__ import annotations

import argparse
import contextlib
import io
import time
import warnings

import numpy as np


@contextlib.contextmanager
def _serial_kernels():
    from otsolve.kernels import topk

    old = topk.PARALLEL_MIN_SIZE
    topk.PARALLEL_MIN_SIZE = 1 << 62
    try:
        yield
    finally:
        topk.PARALLEL_MIN_SIZE = old


def _median_time(fn, repeats):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def bench_scot(n, k, gamma, max_iter, tol, repeats, pot_repeats):
    import ot
    import ot.smooth

    import otsolve
    from otsolve.solvers.sparsity_constrained import ScotObjective

    rng = np.random.default_rng(0)
    x, y = rng.random((n, 2)), rng.random((n, 2))
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    a = b = np.full(n, 1.0 / n)
    prob = otsolve.LinearProblem(C, a, b)
    regul = ot.smooth.SparsityConstrained(max_nz=k, gamma=gamma)
    rows = []
    for form in ("semi_dual", "dual"):
        solver = otsolve.SparsityConstrainedOT(k=k, gamma=gamma, formulation=form, tol=tol,
                                               max_iter=max_iter, warn=False)
        solver(otsolve.LinearProblem(C[:20, :20], a[:20] * n / 20, b[:20] * n / 20))  # numba warm-up
        t_ots, res = _median_time(lambda: solver(prob), repeats)
        # the same with the serial kernels (a parallel region is slow on an oversubscribed machine)
        with _serial_kernels():
            solver(otsolve.LinearProblem(C[:20, :20], a[:20] * n / 20, b[:20] * n / 20))
            t_ser, res_ser = _median_time(lambda: solver(prob), repeats)

        def run_pot():
            # POT's sparse simplex projection prints on every evaluation: swallow it
            with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if form == "dual":
                    return ot.smooth.solve_dual(a, b, C, regul, tol=tol, max_iter=max_iter)
                return ot.smooth.solve_semi_dual(a, b, C, regul, tol=tol, max_iter=max_iter)

        # POT gets the same single-threaded BLAS as otsolve's L-BFGS-B (fair on a busy machine)
        from threadpoolctl import threadpool_limits

        with threadpool_limits(1, user_api="blas"):
            t_pot, pres = _median_time(run_pot, pot_repeats)
        # both objectives evaluated by one function (they agree with POT's to 1e-12, see tests)
        obj = ScotObjective(C, a, b, k, gamma, form)
        xp = np.concatenate([pres[0], pres[1]]) if form == "dual" else pres[0]
        pot_val = obj.evaluate(xp)[0]
        rows.append(dict(case=f"SCOT {form} n=m={n} k={k} gamma={gamma:g}", otsolve=t_ots, peer=t_pot,
                         extra=f"obj {res.value:.9g} vs {pot_val:.9g} (d={res.value - pot_val:+.2e}); "
                               f"its {res.n_iter} vs {pres[-1].nit}; row err {res.marginal_error_a:.2e}; "
                               f"max nnz/col {res.plan_sparse.getnnz(axis=0).max()}"))
        rows.append(dict(case=f"SCOT {form} n=m={n} k={k} gamma={gamma:g}, serial kernels",
                         otsolve=t_ser, peer=t_pot,
                         extra=f"obj {res_ser.value:.9g} (d vs POT {res_ser.value - pot_val:+.2e}); "
                               f"its {res_ser.n_iter}"))
    return rows


def qot_support(n, gamma):
    """Median nonzeros per column of the quadratic-OT plan (k = n), to document gamma's choice."""
    import otsolve

    rng = np.random.default_rng(0)
    x, y = rng.random((n, 2)), rng.random((n, 2))
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    res = otsolve.SparsityConstrainedOT(k=n, gamma=gamma, tol=1e-10, max_iter=2000, warn=False)(
        otsolve.LinearProblem(C))
    return float(np.median(res.plan_sparse.getnnz(axis=0))), res.converged


def bench_routing(B, T, E, cap, repeats):
    import otsolve

    scores = np.random.default_rng(0).normal(size=(B, T, E))
    otsolve.route(scores[:1, : max(E, 32)], min(cap, 4))  # warm-up (numba)
    rows = []
    for mode, c in (("experts_choose", cap), ("tokens_choose", 2)):
        t, r = _median_time(lambda: otsolve.route(scores, c, mode=mode), repeats)
        rows.append(dict(case=f"route {mode} B={B} T={T} E={E} capacity={c} (20 Adam steps)",
                         otsolve=t, peer=float("nan"),
                         extra=f"max expert load {int(r.expert_load.max())}, max token load "
                               f"{int(r.token_load.max())}, mean token-mass L1 err "
                               f"{float(r.marginal_error_tokens.mean()):.3g}"))
        with _serial_kernels():
            t, r = _median_time(lambda: otsolve.route(scores, c, mode=mode), repeats)
        rows.append(dict(case=f"route {mode} (serial kernels)", otsolve=t, peer=float("nan"), extra=""))
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        n, gamma, max_iter, reps, preps = 120, 100.0, 100, 1, 1
        route_args = (2, 512, 16, 64, 1)
    else:
        n, gamma, max_iter, reps, preps = 1000, 100.0, 500, 3, 3
        route_args = (8, 4096, 64, 128, 5)
    k, tol = 5, 1e-9
    print(f"# sparsity-constrained OT (quick={args.quick}); L-BFGS-B tol={tol:g}, max_iter={max_iter} for both")
    if not args.quick:
        s, ok = qot_support(300, gamma)
        print(f"quadratic-OT plan at gamma={gamma:g} (n=300): median {s:g} nonzeros per column "
              f"(converged={ok}) vs k={k}")
    rows = bench_scot(n, k, gamma, max_iter, tol, reps, preps) + bench_routing(*route_args)
    print(f"| case | otsolve (s) | POT (s) | POT/otsolve | notes |")
    print("|---|---|---|---|---|")
    for r in rows:
        ratio = r["peer"] / r["otsolve"] if np.isfinite(r["peer"]) else float("nan")
        peer = f"{r['peer']:.3f}" if np.isfinite(r["peer"]) else "–"
        rat = f"{ratio:.1f}x" if np.isfinite(ratio) else "–"
        print(f"| {r['case']} | {r['otsolve']:.3f} | {peer} | {rat} | {r['extra']} |", flush=True)


if __name__ == "__main__":
    main()
