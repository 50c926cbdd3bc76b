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

5. Issue 15: randn clouds (n, d, blur grid) against GeomLoss tensorized scaling=0.9 at the same
   accuracy (errors against a tight float64 solve); a 200-step Adam training loop (time per step);
   n = m = 50,000 on the CPU (time, peak RSS); unbalanced OT (``reach``) against GeomLoss (time at
   scaling 0.9, values against GeomLoss at convergence). ``--variants`` of the randn section:
   otsolve as shipped; ``proposed``, ``stored``, ``fused`` (the issue-15 changes, measured as
   monkeypatches before they were merged, now in the package: aliases of ``shipped``) and
   ``clamped`` (torch-chunk backward with the exponent clamped at -80; not in the package).

Usage: python bench/bench_torch.py [--quick] [--repeats R]
       [--only divergence|implicit|batch|routing|randn|training|large|unbalanced] [--torch-threads T]
       [--n N ...] [--d D ...] [--blur B ...] [--variants shipped|proposed|stored ...]
"""
from __future__ import annotations

import argparse
import contextlib
import functools
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
                out = sinkhorn(None, None, C, eps, grad="unroll", tol=1e-300, max_iter=iters)  # runs all iters
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


def _ref_divergence(x, y, blur):
    """Reference value: float64, stopped on a loss tolerance 1e-7 x |value| (as shipped, no patch)."""
    from otsolve.torch import SamplesLoss as OL

    v0 = float(OL("sinkhorn", p=2, blur=blur, scaling=0.7, loss_tol=1e-6)(x.double(), y.double()))
    return float(OL("sinkhorn", p=2, blur=blur, scaling=0.7, loss_tol=max(1e-7 * abs(v0), 1e-12),
                    tol=1e-8, max_iter=20_000)(x.double(), y.double()))


@contextlib.contextmanager
def proposed_symmetric(clamped_backward: bool = False):
    """Variants measured for issue 15. "proposed" (symmetric terms at the target ε, no ε-scaling;
    67559ed), "stored" (their iterations on the stored kernel) and "fused" (the fused C++
    backward) are in the package since e5ec7b4, so they now run as shipped: the names stay so
    the commands recorded in bench/results/torch.md §6 still run. ``clamped_backward`` (not in the
    package) replaces the backward by torch row chunks whose exponent is clamped at -80."""
    undos = [_patch_clamped_backward()] if clamped_backward else []
    try:
        yield
    finally:
        for undo in undos:
            undo()


def _patch_clamped_backward():
    """The envelope backward's plan ``exp((f ⊕ g − C)/ε − 1)`` with its argument clamped at -80
    (entries below exp(-80) ~ 2e-35 are then 2e-35 instead of 0): torch's float32 exp on this
    CPU takes ~50 ns per entry for arguments below ~-88 (the underflow path) against ~1 ns
    above, and at small ε nearly every entry of the plan is there. Returns the undo function."""
    import otsolve.torch._costs as costs
    import otsolve.torch._grad as grad_mod

    orig = grad_mod.plan_cost_grads

    def plan_cost_grads(x, y, cost, f, g, eps, need_x=True, need_y=True, chunk=1 << 22):
        if not (isinstance(cost, str) and costs.COSTS[cost][0] == 0):
            return orig(x, y, cost, f, g, eps, need_x, need_y, chunk)
        B, n, d = x.shape
        m = y.shape[1]
        rows = max(1, min(n, chunk // max(m, 1)))
        gx = torch.zeros_like(x) if need_x else None
        gy = torch.zeros_like(y) if need_y else None
        fd, gd = f.to(x.dtype), g.to(x.dtype)
        scale = 2.0 * costs.COSTS[cost][1]
        for s in range(0, n, rows):
            xs, fs = x[:, s:s + rows], fd[:, s:s + rows]
            C = costs.pairwise_cost(xs, y, cost)
            P = torch.exp(((fs.unsqueeze(-1) + gd.unsqueeze(-2) - C) / eps - 1.0).clamp_min_(-80.0))
            if need_x:
                gx[:, s:s + rows] = scale * (P.sum(-1, keepdim=True) * xs - P @ y)
            if need_y:
                gy += scale * (P.sum(-2).unsqueeze(-1) * y - P.transpose(-1, -2) @ xs)
        return gx, gy

    grad_mod.plan_cost_grads = plan_cost_grads

    def undo():
        grad_mod.plan_cost_grads = orig
    return undo


def _ref_divergence_fast(x, y, blur):
    """Cheaper reference for large n on a loaded machine: float64 (the package's symmetric terms
    at the target ε; checked against the ε-scaled path to ~1e-7), stopped on a loss tolerance
    1e-6 x |value|."""
    from otsolve.torch import SamplesLoss as OL

    v0 = float(OL("sinkhorn", p=2, blur=blur, scaling=0.7, loss_tol=1e-5)(x.double(), y.double()))
    return float(OL("sinkhorn", p=2, blur=blur, scaling=0.7, loss_tol=max(1e-6 * abs(v0), 1e-12),
                    tol=1e-7, max_iter=20_000)(x.double(), y.double()))


def _ref_divergence_f32(x, y, blur):
    """Cheapest reference (n = 5000 on a loaded machine): float32 otsolve, stopped on a loss tolerance 1e-6 x |value|. Its own error (~1e-6 relative in every
    cell measured against float64) is four orders below GeomLoss's (~1e-2), which is what it must
    resolve; otsolve's own errors are then only bounded by ~1e-6."""
    from otsolve.torch import SamplesLoss as OL

    v0 = float(OL("sinkhorn", p=2, blur=blur, scaling=0.7, loss_tol=1e-4)(x, y))
    return float(OL("sinkhorn", p=2, blur=blur, scaling=0.7, loss_tol=1e-6 * abs(v0))(x, y))


def bench_randn(ns, ds, blurs, repeats, variants=("shipped", "proposed"), ref="tight", warmup=True):
    """Issue 15: randn clouds (spread-out data), float32 CPU, debiased, forward + backward.

    GeomLoss tensorized with scaling=0.9 against otsolve.torch.SamplesLoss(scaling=0.7) with the
    loss tolerance set to half of GeomLoss's own absolute error in the same run ("same accuracy
    or better"): as shipped, and with the proposed symmetric-term changes
    (:func:`proposed_symmetric`; "proposed": no ε-scaling for the symmetric terms, "stored": also
    the stored-kernel symmetric iterations). Errors are relative to a tightly converged float64
    otsolve solve (as shipped). Interleaved; min and median of ``repeats`` after a warm-up call.
    """
    import warnings

    from geomloss import SamplesLoss as GL

    from otsolve.torch import SamplesLoss as OL

    ref_kind = ref
    ctx = {"shipped": contextlib.nullcontext, "proposed": proposed_symmetric,
           "stored": proposed_symmetric, "fused": proposed_symmetric, "stored+fused": proposed_symmetric,
           "clamped": lambda: proposed_symmetric(clamped_backward=True),
           "stored+clamped": lambda: proposed_symmetric(clamped_backward=True)}
    print(f"\n## randn clouds, debiased Sinkhorn divergence, fwd+bwd, float32 CPU (min / median of {repeats}, "
          f"interleaved; torch threads {torch.get_num_threads()})\n")
    head = "| n | d | blur | reference | GeomLoss s=0.9 time (s) | rel. error |"
    for v in variants:
        head += f" otsolve {v} time (s) | rel. error | speed-up (min) | iterations xy/xx/yy |"
    print(head)
    print("|---" * (6 + 4 * len(variants)) + "|")
    for n in ns:
        for d in ds:
            for blur in blurs:
                torch.manual_seed(0)
                x, y = torch.randn(n, d), torch.randn(n, d)
                t_ref = time.perf_counter()
                ref = {"tight": _ref_divergence, "fast": _ref_divergence_fast,
                       "f32": _ref_divergence_f32}[ref_kind](x, y, blur)
                t_ref = time.perf_counter() - t_ref
                G = GL("sinkhorn", p=2, blur=blur, scaling=0.9, backend="tensorized")
                # (without warm-up the GeomLoss value call is the first timed run)
                t_g0 = time.perf_counter()
                xr0 = x.clone().requires_grad_()
                vg_t = G(xr0, y)
                vg_t.backward()
                t_g0 = time.perf_counter() - t_g0
                vg = float(vg_t.detach())
                eg = abs(vg - ref)
                Ls = {"g": (G, contextlib.nullcontext)}
                for v in variants:
                    Ls[v] = (OL("sinkhorn", p=2, blur=blur, scaling=0.7, loss_tol=max(0.5 * eg, 1e-7 * abs(ref))),
                             ctx[v])

                def run(L, c):
                    with c():
                        xr = x.clone().requires_grad_()
                        v = L(xr, y)
                        v.backward()
                        return float(v.detach())
                ts = {k: [] for k in Ls}
                vals = {"g": vg}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    if warmup:
                        vals.update({k: run(*Lc) for k, Lc in Ls.items() if k != "g"})
                    else:
                        ts["g"].append(t_g0)
                    for rep in range(repeats):  # interleaved
                        for k, Lc in Ls.items():
                            if k == "g" and not warmup and rep == 0:
                                continue
                            t = time.perf_counter()
                            v = run(*Lc)
                            ts[k].append(time.perf_counter() - t)
                            vals.setdefault(k, v)
                    its = {k: "/".join(str(int(o.n_iter[0])) for o in Lc[0].last_outputs.values())
                           for k, Lc in Ls.items() if k != "g"}
                lo = {k: min(v) for k, v in ts.items()}
                med = {k: statistics.median(v) for k, v in ts.items()}
                err = {k: abs(v - ref) / abs(ref) for k, v in vals.items()}
                row = f"| {n} | {d} | {blur} | {ref:.6g} | {lo['g']:.3f} / {med['g']:.3f} | {err['g']:.1e} |"
                for v in variants:
                    row += (f" {lo[v]:.3f} / {med[v]:.3f} | {err[v]:.1e} | {lo['g'] / lo[v]:.2f}x | {its[v]} |")
                print(row + f" <!-- reference ({ref_kind}) {t_ref:.0f} s; load {_load()}"
                      f"{'' if warmup else '; no warm-up'} -->", flush=True)


@contextlib.contextmanager
def _geomloss_extra_iterations(extra):
    """GeomLoss run towards convergence: ``extra`` more iterations at the final ε (GeomLoss has
    no tolerance; its schedule alone stops ~1e-4-1e-3 away from the converged value even at
    scaling 0.99), as in the test suite's ``converged_geomloss`` fixture."""
    import geomloss._legacy.sinkhorn_samples as gss

    orig = gss.scaling_parameters

    def longer(*args):
        dd, e, eps_list, rho = orig(*args)
        return dd, e, eps_list + [eps_list[-1]] * extra, rho

    gss.scaling_parameters = longer
    try:
        yield
    finally:
        gss.scaling_parameters = orig


def bench_unbalanced(n, d, blur, reaches, reference_scaling, extra, repeats):
    """Issue 15: unbalanced OT (``reach``), randn clouds, debiased, float32 CPU, forward + backward.

    Time: GeomLoss ``SamplesLoss(reach=r, scaling=0.9, backend="tensorized")`` against
    otsolve ``SamplesLoss(reach=r, scaling=0.7)`` at its default accuracy (loss_tol None) and
    with ``loss_tol`` = half of GeomLoss-0.9's distance to its converged value ("same accuracy").
    Value: relative difference to GeomLoss at convergence (float64, ``scaling=reference_scaling``
    plus ``extra`` iterations at the final ε) and, as a check of that reference, the difference of
    a tight float64 otsolve solve to it. Interleaved; min / median.
    """
    import warnings

    from geomloss import SamplesLoss as GL

    from otsolve.torch import SamplesLoss as OL

    torch.manual_seed(0)
    x, y = torch.randn(n, d), torch.randn(n, d)
    print(f"\n## Unbalanced (reach), randn clouds n=m={n}, d={d}, blur={blur}, debiased, fwd+bwd, float32 CPU "
          f"(min / median of {repeats}, interleaved; torch threads {torch.get_num_threads()})\n")
    print(f"| reach | GeomLoss converged value (float64, s={reference_scaling} + {extra} its) | otsolve float64 tight: rel. diff | GeomLoss s=0.9 time (s) "
          "| rel. diff | otsolve default time (s) | rel. diff | speed-up (min) | otsolve same-accuracy time (s) "
          "| rel. diff | speed-up (min) | iterations xy/xx/yy (default) |")
    print("|---" * 12 + "|")
    for reach in reaches:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            with _geomloss_extra_iterations(extra):
                vref = float(GL("sinkhorn", p=2, blur=blur, reach=reach, scaling=reference_scaling,
                                backend="tensorized")(x.double(), y.double()))
            v64 = float(OL("sinkhorn", p=2, blur=blur, reach=reach, scaling=0.7, tol=1e-9,
                           max_iter=20_000)(x.double(), y.double()))
            G = GL("sinkhorn", p=2, blur=blur, reach=reach, scaling=0.9, backend="tensorized")
            vg = float(G(x, y))
            Ls = {"g": G, "o": OL("sinkhorn", p=2, blur=blur, reach=reach, scaling=0.7),
                  "s": OL("sinkhorn", p=2, blur=blur, reach=reach, scaling=0.7,
                          loss_tol=max(0.5 * abs(vg - vref), 1e-7 * abs(vref)))}

            def run(L):
                xr = x.clone().requires_grad_()
                v = L(xr, y)
                v.backward()
                return float(v.detach())
            vals = {k: run(L) for k, L in Ls.items()}  # (warm-up)
            ts = {k: [] for k in Ls}
            for _ in range(repeats):
                for k, L in Ls.items():
                    t = time.perf_counter()
                    run(L)
                    ts[k].append(time.perf_counter() - t)
        lo = {k: min(v) for k, v in ts.items()}
        med = {k: statistics.median(v) for k, v in ts.items()}
        rel = {k: abs(v - vref) / abs(vref) for k, v in vals.items()}
        its = "/".join(str(int(o.n_iter[0])) for o in Ls["o"].last_outputs.values())
        print(f"| {reach} | {vref:.7g} | {abs(v64 - vref) / abs(vref):.1e} | {lo['g']:.3f} / {med['g']:.3f} | "
              f"{rel['g']:.1e} | {lo['o']:.3f} / {med['o']:.3f} | {rel['o']:.1e} | {lo['g'] / lo['o']:.2f}x | "
              f"{lo['s']:.3f} / {med['s']:.3f} | {rel['s']:.1e} | {lo['g'] / lo['s']:.2f}x | {its} | "
              f"<!-- load {_load()} -->", flush=True)


def _load() -> str:
    try:
        return open("/proc/loadavg").read().split()[0]
    except OSError:
        return "?"


def bench_training(ns, steps, blur=0.05):
    """Issue 15: Adam on the points of a cloud (200 steps), time per step: GeomLoss (defaults,
    tensorized) vs otsolve SamplesLoss (warm starts across steps, loss_tol 1e-4 x first value)."""
    from geomloss import SamplesLoss as GL

    from otsolve.torch import SamplesLoss as OL

    print(f"\n## Training loop: Adam (lr 0.01) on x, {steps} steps, blur={blur}, float32 CPU\n")
    print("| n | GeomLoss ms/step | final loss | otsolve ms/step | final loss | ratio |")
    print("|---|---|---|---|---|---|")
    for n in ns:
        torch.manual_seed(1)
        x0, y = torch.randn(n, 3), torch.randn(n, 3) * 0.5 + 1.0
        v0 = float(OL("sinkhorn", p=2, blur=blur, scaling=0.7, loss_tol=1e-6)(x0, y))
        res = {}
        for name, L in (("geomloss", GL("sinkhorn", p=2, blur=blur, backend="tensorized")),
                        ("otsolve", OL("sinkhorn", p=2, blur=blur, scaling=0.7, loss_tol=1e-4 * v0,
                                       warm_start=True))):
            x = x0.clone().requires_grad_()
            opt = torch.optim.Adam([x], lr=0.01)
            t = time.perf_counter()
            for _ in range(steps):
                opt.zero_grad()
                v = L(x, y)
                v.backward()
                opt.step()
            res[name] = ((time.perf_counter() - t) / steps * 1e3, float(v.detach()))
        (tg, vg), (to, vo) = res["geomloss"], res["otsolve"]
        print(f"| {n} | {tg:.1f} | {vg:.5f} | {to:.1f} | {vo:.5f} | {tg / to:.2f}x |", flush=True)


def bench_large(n, blur=0.1, variant="shipped"):
    """Issue 15: n = m point clouds on the CPU without n x m memory: time and peak RSS.
    ``variant``: "shipped", or "fused" (the fused C++ envelope backward, as a monkeypatch; the
    stored-kernel symmetric iterations do not apply: the costs are computed on the fly)."""
    import resource

    from otsolve.torch import SamplesLoss as OL

    torch.manual_seed(0)
    x, y = torch.randn(n, 3), torch.randn(n, 3)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    L = OL("sinkhorn", p=2, blur=blur, scaling=0.7, loss_tol=1e-4, kernel_memory=0)  # on the fly
    print(f"large: n = m = {n}, blur {blur}, {variant}: started", flush=True)
    xr = x.clone().requires_grad_()
    t = time.perf_counter()
    ctx = {"shipped": contextlib.nullcontext, "proposed": proposed_symmetric,
           "fused": proposed_symmetric}[variant]
    with ctx():
        v = L(xr, y)
        v.backward()
    dt = time.perf_counter() - t
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    its = "/".join(str(int(o.n_iter[0])) for o in L.last_outputs.values())
    conv = "/".join(str(bool(o.converged.all())) for o in L.last_outputs.values())
    print(f"\n## Large clouds: n = m = {n}, d = 3, blur {blur}, loss_tol 1e-4, kernel_memory=0, float32 CPU, "
          f"fwd+bwd, otsolve {variant}\n")
    print(f"time {dt:.1f} s, value {float(v.detach()):.6f}, iterations xy/xx/yy {its}, peak RSS {rss:.0f} MiB "
          f"(before the call {rss0:.0f} MiB; a dense n x m float32 matrix would be {n * n * 4 / 2**20:.0f} MiB); "
          f"converged xy/xx/yy {conv}", flush=True)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--only", choices=["divergence", "implicit", "batch", "routing", "randn", "training", "large",
                            "unbalanced"],
                   default=None)
    p.add_argument("--torch-threads", type=int, default=None,
                   help="torch intra-op threads (default: torch's choice, 1 for the batch section)")
    p.add_argument("--n", type=int, nargs="*", default=None, help="sizes of the randn/training sections")
    p.add_argument("--d", type=int, nargs="*", default=None, help="dimensions of the randn section")
    p.add_argument("--blur", type=float, nargs="*", default=None, help="blurs of the randn section")
    p.add_argument("--ref", choices=["tight", "fast", "f32"], default="tight",
                   help="reference of the randn section: tight (float64 as shipped, 1e-7|v|), fast (float64, "
                        "proposed changes, 1e-6|v|) or f32 (float32, 1e-6|v|; see _ref_divergence_*)")
    p.add_argument("--no-warmup", action="store_true",
                   help="randn section: no warm-up call (large n: the first timed GeomLoss call gives its value)")
    p.add_argument("--variants", nargs="*", default=None, choices=["shipped", "proposed", "stored", "clamped", "stored+clamped", "fused",
                            "stored+fused"],
                   help="otsolve variants of the randn section (default: shipped proposed)")
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
        "randn": (((300,), (3,), (0.05,)), ((1000, 5000), (2, 3, 10), (0.01, 0.05, 0.1))),
        "training": (((300,), 20), ((300, 1000, 2000), 200)),
        "large": ((2000,), (50_000,)),
        "unbalanced": ((100, 3, 0.05, (0.5,), 0.95, 50), (1000, 3, 0.05, (0.1, 0.5, 1.0), 0.95, 500)),
    }
    if args.n or args.d or args.blur:
        q = 0 if args.quick else 1
        ns0, ds0, bl0 = sizes["randn"][q]
        sizes["randn"] = (((args.n or ns0), (args.d or ds0), (args.blur or bl0)),) * 2
        if args.n:
            sizes["training"] = ((args.n, sizes["training"][q][1]),) * 2
            sizes["large"] = ((args.n[0],),) * 2
        if args.blur:
            sizes["large"] = ((sizes["large"][0][0], args.blur[0]), (sizes["large"][1][0], args.blur[0]))
    fns = {"divergence": bench_divergence, "implicit": bench_implicit, "batch": bench_batch,
           "routing": bench_routing, "unbalanced": bench_unbalanced,
           "randn": functools.partial(bench_randn, variants=tuple(args.variants or ("shipped", "proposed")),
                                      ref=args.ref, warmup=not args.no_warmup), "training": bench_training, "large": bench_large}
    for name, fn in fns.items():
        if args.only in (None, name):
            threads = torch.get_num_threads()
            if name == "batch" and not args.torch_threads:
                # many small torch ops: with 2 intra-op threads on a loaded 2-core machine every op
                # waits on a descheduled thread (measured 5-25x slower), so this section uses 1
                torch.set_num_threads(1)
            if name == "large":
                fn(*sizes[name][0 if args.quick else 1], variant=(args.variants or ["shipped"])[0])
            elif name == "training":
                fn(*sizes[name][0 if args.quick else 1])
            else:
                fn(*sizes[name][0 if args.quick else 1], r)
            torch.set_num_threads(threads)


if __name__ == "__main__":
    main()
