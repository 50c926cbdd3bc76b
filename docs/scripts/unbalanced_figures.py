"""Figures of docs/unbalanced.md: unbalanced plans as rho varies, and the translation step.

    python docs/scripts/unbalanced_figures.py      # writes docs/img/unbalanced_*.png
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import otsolve  # noqa: E402
from otsolve.kernels import reference  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img"
OUT.mkdir(exist_ok=True)

# 1-D: a source with an outlier bump, a target without it; the KL relaxation drops the outlier mass
t = np.linspace(0, 1, 200)
a = np.exp(-((t - 0.3) ** 2) / 0.005) + 0.4 * np.exp(-((t - 0.85) ** 2) / 0.001)
b = np.exp(-((t - 0.5) ** 2) / 0.008)
a, b = a / a.sum(), b / b.sum()
C = (t[:, None] - t[None, :]) ** 2
fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
axes[0].plot(t, a, "k", lw=1, label="a (source)")
axes[0].plot(t, b, "k--", lw=1, label="b (target)")
for rho in (0.01, 0.1, 1.0):
    res = otsolve.solve(a, b, C, epsilon=1e-3, rho=rho)
    axes[0].plot(t, res.plan.sum(1), label=f"P1, rho={rho}: mass {res.plan.sum():.2f}")
res = otsolve.solve(a, b, C, epsilon=1e-3)
axes[0].plot(t, res.plan.sum(1), ":", label="balanced: P1 = a")
axes[0].set_title("row marginal of the plan (ε = 1e-3)")
axes[0].legend(fontsize=7)

# translation-invariant step: iterations to tol 1e-10 at eps = 0.1 (NumPy reference)
rng = np.random.default_rng(0)
x, y = rng.normal(size=(30, 2)), rng.normal(size=(40, 2)) + 0.7
C2 = ((x[:, None] - y[None]) ** 2).sum(-1) / 2
w_a, w_b = np.full(30, 1 / 30), np.full(40, 1 / 40)
rhos = [1, 10, 100, 1000]
its_plain, its_ti = [], []
for rho in rhos:
    res = otsolve.Sinkhorn(tol=1e-10, max_iter=200_000)(otsolve.LinearProblem(C2, w_a, w_b, epsilon=0.1, rho_a=rho,
                                                                              rho_b=rho))
    its_ti.append(res.n_iter)
    # the same sweeps without the translation step, for the figure only (the NumPy reference with
    # its translation switched off)
    f, g = np.zeros(30), np.zeros(40)
    saved = reference.translation
    reference.translation = lambda *args: 0.0
    try:
        n_it, _, _ = reference.sinkhorn_dense(C2, np.log(w_a), np.log(w_b), f, g, 0.1, 200_000, 1e-10, 0, 1.0,
                                              float(rho), float(rho))
    finally:
        reference.translation = saved
    its_plain.append(n_it)
axes[1].loglog(rhos, its_plain, "o-", label="damped Sinkhorn")
axes[1].loglog(rhos, its_ti, "s-", label="+ translation step (otsolve)")
axes[1].set_xlabel("rho (ε = 0.1)")
axes[1].set_ylabel("iterations to tol 1e-10")
axes[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig(OUT / "unbalanced.png", dpi=110)
print("iterations", dict(zip(rhos, zip(its_plain, its_ti))))
