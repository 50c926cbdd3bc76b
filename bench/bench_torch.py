"""Benchmark of the PyTorch OT layer (issue 8).

1. Forward + backward of the debiased Sinkhorn divergence, float32 CPU, against GeomLoss
   ``SamplesLoss("sinkhorn", p=2, blur=ε**0.5, backend="tensorized")`` in the same run. otsolve is
   run (a) to the *same final accuracy* as GeomLoss (tol = the L1 marginal error GeomLoss's own
   potentials reach with its default ε-schedule) and (b) to its default tol 1e-6.
2. Implicit gradients vs unrolling 500 iterations: time of forward + backward and the bytes
   autograd saves for the backward pass (counted with saved_tensors_hooks, exact and
   deterministic), plus the max difference of the two gradients.
3. Batched problems with per-problem convergence vs a Python loop of single problems (forward +
   backward).
4. Differentiable sparse MoE routing: core forward vs the torch layer's forward + backward.

Usage: python bench/bench_torch.py [--quick] [--repeats R] [--only divergence|implicit|batch|routing]
       [--torch-threads T]
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

from otsolve.torch import ImplicitState, SinkhornLoss, sinkhorn
from otsolve.torch._costs import pairwise_cost


def timeit(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def geomloss_error(x, y, eps):
    """L1 marginal error of the plan rebuilt from GeomLoss's xy potentials (its final accuracy)."""
    from geomloss import SamplesLoss

    # debias=False: the potentials of OT(a, b) itself (the debiased ones are differences)
    L = SamplesLoss("sinkhorn", p=2, blur=eps**0.5, potentials=True, debias=False, backend="tensorized")
    n, m = x.shape[0], y.shape[0]
    F, G = (t.reshape(-1) for t in L(x, y))  # GeomLoss returns (1, n)
    C = pairwise_cost(x.double()[None], y.double()[None], "half_sqeuclidean")[0]
    logP = (F.double()[:, None] + G.double()[None, :] - C) / eps - torch.log(torch.tensor(float(n * m)))
    P = logP.exp()
    return float((P.sum(1) - 1.0 / n).abs().sum() + (P.sum(0) - 1.0 / m).abs().sum())


def bench_divergence(n, d, eps, repeats):
    from geomloss import SamplesLoss

    torch.manual_seed(0)
    x = torch.rand(n, d)
    y = torch.rand(n, d) * 0.8 + 0.3
    G = SamplesLoss("sinkhorn", p=2, blur=eps**0.5, backend="tensorized")
    err_g = geomloss_error(x, y, eps)

    def run(loss):
        def f():
            xr = x.clone().requires_grad_()
            v = loss(xr, y)
            v.backward()
            return v
        return f

    rows = []
    t_g = timeit(run(G), repeats)
    v_g = float(G(x, y))
    rows.append(("GeomLoss tensorized (scaling 0.5)", t_g, v_g, err_g, "-"))
    for label, tol, nt in ((f"otsolve, same accuracy (tol={err_g:.2g})", err_g, 0),
                           ("otsolve, tol=1e-6", 1e-6, 0),
                           (f"otsolve, same accuracy (tol={err_g:.2g}), 1 kernel thread", err_g, 1),
                           ("otsolve, tol=1e-6, 1 kernel thread", 1e-6, 1)):
        L = SinkhornLoss(eps, cost="half_sqeuclidean", tol=tol, n_threads=nt)
        t = timeit(run(L), repeats)
        v = float(L(x, y))
        its = "/".join(str(int(o.n_iter)) for o in L.last_outputs.values())
        errs = max(float(o.marginal_error) for o in L.last_outputs.values())
        rows.append((label, t, v, errs, its))
    print(f"\n## Sinkhorn divergence fwd+bwd, n=m={n}, d={d}, eps={eps}, float32 CPU "
          f"(median of {repeats}; torch threads {torch.get_num_threads()})\n")
    print("| method | time (s) | speed-up vs GeomLoss | value | marginal L1 error | iterations xy/xx/yy |")
    print("|---|---|---|---|---|---|")
    for label, t, v, e, its in rows:
        print(f"| {label} | {t:.3f} | {t_g / t:.2f}x | {v:.6f} | {e:.2e} | {its} |")


def saved_bytes(fn):
    """Run fn() under saved_tensors_hooks; return (result, bytes saved for backward)."""
    total = [0]
    seen = set()

    def pack(t):
        key = (t.data_ptr(), t.numel())
        if key not in seen:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


def bench_implicit(n, eps, iters, repeats):
    torch.manual_seed(1)
    x = torch.rand(n, 2, dtype=torch.float64)
    y = torch.rand(n, 2, dtype=torch.float64)
    C0 = pairwise_cost(x[None], y[None], "sqeuclidean")[0]
    W = torch.randn(n, n, dtype=torch.float64)  # a loss that needs the plan's gradient
    states = []

    def make(mode):
        def f():
            C = C0.clone().requires_grad_()
            if mode == "unroll":
                out = sinkhorn(None, None, C, eps, grad="unroll", tol=0.0, max_iter=iters)
            else:
                # a fresh state: cold CG (a warm start on the same problem would need 0 iterations)
                states.append(ImplicitState())
                out = sinkhorn(None, None, C, eps, grad="implicit", implicit_state=states[-1])
            loss = (out.plan * W).sum()
            (gC,) = torch.autograd.grad(loss, C)
            return gC, out
        return f

    import warnings

    res = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # tol=0 never "converges": expected
        for mode in ("implicit", "unroll"):
            f = make(mode)
            t = timeit(f, repeats)
            (gC, out), nbytes = saved_bytes(f)
            res[mode] = (t, nbytes, gC, int(out.n_iter))
    diff = float((res["implicit"][2] - res["unroll"][2]).abs().max() / res["unroll"][2].abs().max())
    print(f"\n## Gradient of <W, P> w.r.t. C: implicit vs unrolled {iters} iterations, n=m={n}, eps={eps}, "
          f"float64 CPU (median of {repeats})\n")
    print("| mode | fwd+bwd time (s) | autograd saved memory (MiB) | forward iterations | CG its (cold start) |")
    print("|---|---|---|---|---|")
    for mode in ("implicit", "unroll"):
        t, nb, _, it = res[mode]
        cg = states[-1].iterations[-1] if mode == "implicit" else "-"
        print(f"| {mode} | {t:.3f} | {nb / 2**20:.1f} | {it} | {cg} |")
    print(f"\nratio unroll/implicit: time {res['unroll'][0] / res['implicit'][0]:.1f}x, "
          f"memory {res['unroll'][1] / max(res['implicit'][1], 1):.0f}x; relative max difference of the "
          f"gradients {diff:.1e}")


def bench_batch(B, n, repeats, d=3, eps=0.05):
    """B point-cloud problems of mixed difficulty, debiased divergence, forward + backward.

    Strategies: (a) one batched call (the core driver on the batch: each problem stops at its own
    tolerance); (b) a Python loop of single-problem calls. Both compute the B losses and the
    gradient w.r.t. x.
    """
    import warnings

    torch.manual_seed(2)
    # difficulty: cloud scale s_k from 0.5 to 2 (geometric) = relative eps from 4x to 1/4x
    s = torch.logspace(math.log10(0.5), math.log10(2.0), B).reshape(B, 1, 1)
    x = torch.rand(B, n, d) * s
    y = (torch.rand(B, n, d) * 0.8 + 0.3) * s
    tol, max_iter = 1e-4, 2000

    def batched():
        loss = SinkhornLoss(eps, cost="half_sqeuclidean", tol=tol, max_iter=max_iter)

        def f():
            xr = x.clone().requires_grad_()
            loss(xr, y).sum().backward()
            return loss
        return f

    def loop():
        loss = SinkhornLoss(eps, cost="half_sqeuclidean", tol=tol, max_iter=max_iter)

        def f():
            xr = x.clone().requires_grad_()
            for k in range(B):
                loss(xr[k], y[k]).backward()
            return loss
        return f

    L = batched()()
    its = {k: o.n_iter for k, o in L.last_outputs.items()}
    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for label, fn in (("batched call, per-problem convergence", batched()),
                          ("Python loop of single problems", loop())):
            rows.append((label, timeit(fn, repeats)))
    t_ref = rows[0][1]
    print(f"\n## Batch of {B} problems (n=m={n}, d={d}, eps={eps}, half_sqeuclidean, debiased, "
          f"float32, tol={tol}): forward + backward (median of {repeats}; torch threads "
          f"{torch.get_num_threads()})\n")
    for k, t in its.items():
        print(f"iterations {k}: min {int(t.min())}, median {int(t.median())}, max {int(t.max())}, "
              f"total {int(t.sum())}")
    print("\n| strategy | time (s) | relative to the batched call |\n|---|---|---|")
    for label, t in rows:
        print(f"| {label} | {t:.3f} | {t / t_ref:.2f}x |")


def bench_routing(G, T, E, repeats):
    """Differentiable sparse routing: the core forward vs the layer's forward + backward."""
    import otsolve
    from otsolve.routing import expert_capacity
    from otsolve.torch import route

    torch.manual_seed(3)
    s = torch.randn(G, T, E, dtype=torch.float32)
    cap = expert_capacity(T, E)
    W = torch.randn(G, T, E)

    def layer(combine, polish=False):
        def f():
            x = s.clone().requires_grad_()
            (route(x, cap, combine=combine, polish=polish).combine * W).sum().backward()
        return f

    rows = [("otsolve.route (NumPy, forward only)", timeit(lambda: otsolve.route(s.numpy(), cap), repeats)),
            ("otsolve.torch.route, combine='gates', fwd+bwd", timeit(layer("gates"), repeats)),
            ("otsolve.torch.route, combine='plan', fwd+bwd (implicit)", timeit(layer("plan"), repeats)),
            ("otsolve.torch.route, combine='plan', polish=True, fwd+bwd", timeit(layer("plan", True), repeats))]
    print(f"\n## Sparse routing, {G} groups x {T} tokens x {E} experts, capacity {cap}, float32 "
          f"(median of {repeats})\n")
    print("| call | time (s) |\n|---|---|")
    for label, t in rows:
        print(f"| {label} | {t:.4f} |")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--only", choices=["divergence", "implicit", "batch", "routing"], default=None)
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice, 1 for the batch section)")
    args = p.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    r = args.repeats or (2 if args.quick else 5)
    print(f"# bench_torch ({'quick' if args.quick else 'full'}) torch {torch.__version__}, "
          f"{platform.processor() or platform.machine()}")
    sizes = {
        "divergence": ((300, 3, 0.05), (2000, 3, 0.05)),
        "implicit": ((30, 0.1, 500), (200, 0.05, 500)),
        "batch": ((4, 64), (64, 256)),
        "routing": ((2, 64, 4), (8, 1024, 16)),
    }
    fns = {"divergence": bench_divergence, "implicit": bench_implicit, "batch": bench_batch,
           "routing": bench_routing}
    for name, fn in fns.items():
        if args.only in (None, name):
            threads = torch.get_num_threads()
            if name == "batch" and not args.torch_threads:
                # many small torch ops: with 2 intra-op threads on a loaded 2-core machine every op
                # waits on a descheduled thread (measured 5-25x slower), so this section uses 1
                torch.set_num_threads(1)
            fn(*sizes[name][0 if args.quick else 1], r)
            torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
