"""Figures of docs/sinkhorn.md: convergence of the Sinkhorn variants and plans at several ε.

    python docs/scripts/sinkhorn_figures.py      # writes docs/img/sinkhorn_*.png
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import otsolve  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img"
OUT.mkdir(exist_ok=True)

rng = np.random.default_rng(0)
n = 1000
x, y = rng.random((n, 2)), rng.random((n, 2))
geom = otsolve.Geometry(((x[:, None] - y[None]) ** 2).sum(-1), scale_cost="max")

fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, eps in zip(axes, (1e-2, 1e-3)):
    prob = otsolve.LinearProblem(geom, epsilon=eps)
    for label, kw in (("plain (omega=1)", dict(omega=1.0)), ("adaptive over-relaxation (default)", {}),
                      ("ε-scaling + over-relaxation", dict(epsilon_scaling=True))):
        res = otsolve.Sinkhorn(max_iter=20000, **kw)(prob)
        ax.semilogy(res.errors, label=f"{label}: {res.n_iter} its")
    ax.axhline(1e-9, color="k", lw=0.5, ls="--")
    ax.set_title(f"n = m = {n}, ε = {eps:g} (cost / max)")
    ax.set_xlabel("iteration")
    ax.set_ylabel("L1 marginal error")
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "sinkhorn_convergence.png", dpi=120)

# plans for a 1-D problem at three ε
t = np.linspace(0, 1, 200)
a = np.exp(-((t - 0.3) ** 2) / 0.01) + 0.3 * np.exp(-((t - 0.75) ** 2) / 0.005)
b = np.exp(-((t - 0.6) ** 2) / 0.02)
a, b = a / a.sum(), b / b.sum()
fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
for ax, eps in zip(axes, (1e-1, 1e-2, 1e-4)):
    res = otsolve.solve(a, b, otsolve.PointCloud(t, t), epsilon=eps, epsilon_scaling=True)
    ax.imshow(np.log10(res.plan + 1e-12), origin="lower", extent=(0, 1, 0, 1), vmin=-8, cmap="magma")
    ax.set_title(f"ε = {eps:g}: cost {res.cost:.4f}")
    ax.set_xlabel("target")
    ax.set_ylabel("source")
fig.suptitle("log10 of the entropic plan (ε → 0 approaches the monotone map)")
fig.tight_layout()
fig.savefig(OUT / "sinkhorn_plans.png", dpi=120)
print("wrote", sorted(p.name for p in OUT.glob("sinkhorn_*.png")))
