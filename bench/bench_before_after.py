"""Before / after a refactor, in one run: the same workloads on two installed versions of otsolve
and on the peer, interleaved, each in a fresh subprocess (so the two versions never share a
process). Used for the one-driver refactor (issue 13): it must not get slower.

Workloads (the issue's figures):
  sinkhorn  dense Sinkhorn, n = m = 4000 uniform 2-D points, cost / max, ε = 0.01, tol 1e-9,
            vs POT's kernel Sinkhorn (``ot.sinkhorn``, same stopping threshold on its own norm);
  torch     debiased Sinkhorn divergence forward + backward, n = m = 2000, d = 3, ε = 0.05,
            float32 CPU, half squared Euclidean, vs GeomLoss tensorized (scaling 0.5).

Usage::

    pip install --no-deps --target /tmp/old_site <old checkout>      # the "before" build
    python bench/bench_before_after.py --old /tmp/old_site [--repeats 3] [--quick]

The "after" version is the installed package (run from outside the repository root).
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

SINKHORN = r"""
import time, numpy as np
rng = np.random.default_rng(0)
n = {n}
x, y = rng.random((n, 2)), rng.random((n, 2))
C = ((x[:, None] - y[None]) ** 2).sum(-1); C /= C.max()
a = b = np.full(n, 1.0 / n)
if "{who}" == "peer":
    import ot
    t = time.perf_counter(); P = ot.sinkhorn(a, b, C, 0.01, stopThr=1e-9, numItermax=100000); dt = time.perf_counter() - t
    err = abs(P.sum(1) - a).sum() + abs(P.sum(0) - b).sum()
else:
    import otsolve
    prob = otsolve.LinearProblem(otsolve.Geometry(C), a, b, epsilon=0.01)
    t = time.perf_counter(); r = otsolve.Sinkhorn(tol=1e-9)(prob); dt = time.perf_counter() - t
    err = r.marginal_error
print("RESULT", dt, err, otsolve.__file__ if "{who}" != "peer" else "pot")
"""

TORCH = r"""
import time, torch
torch.manual_seed(0)
n = {n}
x = torch.randn(n, 3) * 0.3 + 0.5
y = torch.rand(n, 3) * 0.8 + 0.3
eps = 0.05
if "{who}" == "peer":
    from geomloss import SamplesLoss
    L = SamplesLoss("sinkhorn", p=2, blur=eps ** 0.5, backend="tensorized")
    name = "geomloss"
else:
    import otsolve
    from otsolve.torch import SinkhornLoss
    L = SinkhornLoss(eps, cost="half_sqeuclidean", tol=1e-6)
    name = otsolve.__file__
def run():
    xr = x.clone().requires_grad_(); v = L(xr, y); v.backward(); return float(v)
run()  # warm-up (numba / kernel caches)
t = time.perf_counter(); v = run(); dt = time.perf_counter() - t
print("RESULT", dt, v, name)
"""


def run(code: str, who: str, old: str | None) -> tuple[float, float, str]:
    env = dict(os.environ)
    code = code.replace("{who}", who)
    if who == "before":
        # an editable install hooks its own finder into sys.meta_path, ahead of PYTHONPATH
        code = (f"import sys; sys.path.insert(0, {old!r}); sys.meta_path[:] = [f for f in sys.meta_path "
                f"if 'editable' not in type(f).__module__.lower() and 'editable' not in type(f).__name__.lower()]\n"
                + code)
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd="/",
                         capture_output=True, text=True, timeout=900)
    for line in out.stdout.splitlines():
        if line.startswith("RESULT"):
            _, t, v, where = line.split(maxsplit=3)
            return float(t), float(v), where
    raise RuntimeError(f"{who} failed:\n{out.stderr[-2000:]}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", required=False, help="site directory of the 'before' build")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="tiny sizes (CI): checks the script runs")
    args = p.parse_args()
    sizes = {"sinkhorn": 300 if args.quick else 4000, "torch": 200 if args.quick else 2000}
    whos = ["after", "peer"] + (["before"] if args.old else [])
    print(f"# before/after, load {os.getloadavg()[0]:.1f}, repeats {args.repeats}, interleaved\n")
    print("| workload | version | median time (s) | min (s) | value / error | time / peer |")
    print("|---|---|---|---|---|---|")
    for name, code in (("sinkhorn", SINKHORN), ("torch", TORCH)):
        times: dict[str, list[float]] = {w: [] for w in whos}
        vals: dict[str, float] = {}
        for _ in range(args.repeats):
            for w in whos:
                t, v, where = run(code.replace("{n}", str(sizes[name])), w, args.old)
                if w == "before" and args.old not in where:
                    raise RuntimeError(f"'before' imported {where}, not {args.old}")
                times[w].append(t)
                vals[w] = v
        peer = statistics.median(times["peer"])
        for w in whos:
            med = statistics.median(times[w])
            print(f"| {name} n={sizes[name]} | {w} | {med:.3f} | {min(times[w]):.3f} | {vals[w]:.3g} | "
                  f"{med / peer:.2f}x |")
    print(f"\nload after: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
