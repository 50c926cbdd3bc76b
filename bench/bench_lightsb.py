"""LightSB on ground-truth entropic-OT instances (otsolve.benchmarks.eot_mixture), with POT's
discrete entropic OT (log-domain Sinkhorn on samples + out-of-sample conditional) as the peer.

Table: D x eps, cB-W2-UVP (%) of both (1000 test inputs x 1000 samples each, as in the paper),
the closed-form-moment cB-W2-UVP of LightSB (no sampling noise), the floor of the sample-based
metric (the exact ground-truth sampler scored the same way), and wall / CPU seconds.

    python bench/bench_lightsb.py            # the 12-cell table (D in 2,16,64,128 x eps in 0.1,1,10)
    python bench/bench_lightsb.py --quick    # tiny sizes (CI)
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # small GEMMs: threads only add contention
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import ot  # noqa: E402

from otsolve.benchmarks import eot_mixture  # noqa: E402
from otsolve.lightsb import LightSB  # noqa: E402
from otsolve.metrics import bures_wasserstein2, cbw2_uvp  # noqa: E402

# LightSB, ICLR 2024 poster table (cB-W2-UVP %, their instances, not ours)
PUBLISHED = {(0.1, 2): 0.03, (0.1, 16): 0.08, (0.1, 64): 0.28, (0.1, 128): 0.60,
             (1.0, 2): 0.05, (1.0, 16): 0.09, (1.0, 64): 0.24, (1.0, 128): 0.62,
             (10.0, 2): 0.07, (10.0, 16): 0.11, (10.0, 64): 0.21, (10.0, 128): 0.37}


class _Timer:
    def __enter__(self):
        self.w, self.c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall, self.cpu = time.perf_counter() - self.w, time.process_time() - self.c


class DiscreteEOT:
    """Peer: POT log-domain Sinkhorn between n source and n target samples (cost ||x-y||^2/2, reg
    eps), extended out of sample: pi(y_j | x) ∝ b_j exp((g_j - ||x - y_j||^2 / 2) / eps)."""

    def __init__(self, x0, x1, eps, max_iter):
        M = ot.dist(x0, x1) / 2.0
        n = len(x0)
        a = np.full(n, 1.0 / n)
        _, log = ot.sinkhorn(a, a, M, eps, method="sinkhorn_log", numItermax=max_iter,
                             stopThr=1e-6, log=True, warn=False)
        self.g = eps * log["log_v"]
        self.y, self.eps, self.logb = x1, eps, np.log(a)

    def conditional_moments(self, x):
        logits = self.logb + (self.g - ot.dist(x, self.y) / 2.0) / self.eps
        w = np.exp(logits - logits.max(1, keepdims=True))
        w /= w.sum(1, keepdims=True)
        mean = w @ self.y
        cov = np.empty((len(x), self.y.shape[1], self.y.shape[1]))
        for i in range(0, len(x), 50):  # batched GEMMs, bounded memory
            wy = w[i:i + 50, :, None] * self.y[None]
            cov[i:i + 50] = wy.transpose(0, 2, 1) @ self.y
        return mean, cov - mean[:, :, None] * mean[:, None, :]


def _lr_for(eps, args):
    """The --lr value for this eps (None: the model's eps-dependent default)."""
    if not args.lr:
        return None
    return args.lr[0] if len(args.lr) == 1 else args.lr[args.eps.index(eps)]


def run_cell(D, eps, args):
    bench = eot_mixture(D, eps, rng=args.seed, n_test=args.n_test,
                        diagonal_potential=args.diagonal_potential)
    with _Timer() as tg:
        pool0 = bench.sample_input(args.pool, rng=1)
        pool1 = bench.sample_target(args.pool, rng=2)
    model = LightSB(D, args.components, eps, covariance=args.covariance, s_init=1.0)
    if args.fresh:  # fresh ground-truth batches every step (their sampling counts in `fit s`)
        g0, g1 = np.random.default_rng([args.seed, 10]), np.random.default_rng([args.seed, 11])
        src, tgt = (lambda n: bench.sample_input(n, rng=g0)), (lambda n: bench.sample_target(n, rng=g1))
    else:
        src, tgt = pool0, pool1
    with _Timer() as tf:
        model.fit(src, tgt, n_steps=args.steps, batch_size=128, rng=42, progress=False,
                  lr=_lr_for(eps, args), schedule=args.schedule)
    with _Timer() as tm:
        uvp = cbw2_uvp(model, bench, n_samples=args.n_samples, rng=0)
    uvp_exact = cbw2_uvp(model, bench, moments="exact")

    class Truth:  # the floor of the sample-based metric
        def sample(self, x, n, rng=None):
            return bench.sample_conditional(x, n=n, rng=rng)

    floor = cbw2_uvp(Truth(), bench, n_samples=args.n_samples, rng=0)
    with _Timer() as tp:
        peer = DiscreteEOT(pool0[: args.peer_n], pool1[: args.peer_n], eps, args.peer_iter)
        m, c = peer.conditional_moments(bench.test_inputs)
    m_true, c_true = bench.conditional_moments(bench.test_inputs)
    peer_uvp = 100 * float(np.mean(bures_wasserstein2(m, c, m_true, c_true))) / bench.target_variance
    return dict(D=D, eps=eps, uvp=uvp, uvp_exact=uvp_exact, floor=floor, fit_wall=tf.wall,
                fit_cpu=tf.cpu, metric_wall=tm.wall, gen_wall=tg.wall, peer_uvp=peer_uvp,
                peer_wall=tp.wall, published=PUBLISHED.get((eps, D)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI, < 60 s)")
    p.add_argument("--dims", type=int, nargs="*", default=[2, 16, 64, 128])
    p.add_argument("--eps", type=float, nargs="*", default=[0.1, 1.0, 10.0])
    p.add_argument("--steps", type=int, default=10000)
    p.add_argument("--components", type=int, default=50)
    p.add_argument("--covariance", default="diagonal", choices=["diagonal", "full"])
    p.add_argument("--lr", type=float, nargs="*", default=None,
                   help="Adam step: one value, or one per --eps value (default: eps-dependent default_lr)")
    p.add_argument("--schedule", default="constant", choices=["constant", "cosine"])
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--n-samples", type=int, default=1000)
    p.add_argument("--pool", type=int, default=65536, help="training samples drawn per side")
    p.add_argument("--peer-n", type=int, default=500, help="samples per side for POT Sinkhorn")
    p.add_argument("--peer-iter", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--fresh", action="store_true",
                   help="train on fresh ground-truth batches each step instead of the --pool samples")
    p.add_argument("--diagonal-potential", action="store_true",
                   help="axis-aligned Sigma_k: the diagonal model is then well-specified")
    args = p.parse_args()
    if args.lr and len(args.lr) not in (1, len(args.eps)):
        p.error("--lr takes one value or one per --eps value")
    if args.quick:
        args.dims, args.eps, args.steps = [2, 16], [1.0], 500
        args.n_test, args.n_samples, args.pool, args.peer_n = 100, 200, 4096, 200
    print(f"LightSB K={args.components} {args.covariance} S_init=1 batch=128 steps={args.steps} "
          f"lr={' '.join(f'{v:g}' for v in args.lr) if args.lr else 'default(eps)'} {args.schedule}; instances eot_mixture(D, eps, seed={args.seed}{', diagonal_potential=True' if args.diagonal_potential else ''}); "
          f"train: {'fresh batches' if args.fresh else f'pool of {args.pool}'}; "
          f"metric: {args.n_test} test inputs x {args.n_samples} samples", flush=True)
    head = (f"{'D':>4} {'eps':>5} | {'LightSB':>8} {'exact':>7} {'floor':>7} {'paper':>6} | "
            f"{'fit s':>6} {'cpu s':>6} | {'POT':>7} {'POT s':>6} | {'POT/LSB':>7}")
    print(head + "\n" + "-" * len(head), flush=True)
    t0 = time.perf_counter()
    for eps in args.eps:
        for D in args.dims:
            r = run_cell(D, eps, args)
            pub = f"{r['published']:.2f}" if r["published"] is not None else "-"
            print(f"{D:>4} {eps:>5g} | {r['uvp']:>8.3f} {r['uvp_exact']:>7.3f} {r['floor']:>7.3f} {pub:>6} | "
                  f"{r['fit_wall']:>6.1f} {r['fit_cpu']:>6.1f} | {r['peer_uvp']:>7.2f} {r['peer_wall']:>6.1f} | "
                  f"{r['peer_uvp'] / r['uvp']:>7.1f}", flush=True)
    print(f"total wall {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    main()
