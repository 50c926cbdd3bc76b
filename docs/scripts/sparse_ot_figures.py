"""Figures of docs/sparse_ot.md: SCOT plans for k = 1, 2, 5, inf and the sparsity/accuracy trade-off.

    python docs/scripts/sparse_ot_figures.py     # writes docs/img/sparse_ot_*.png
"""
from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import otsolve  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img"


def gauss(n, mean, std):
    w = np.exp(-0.5 * ((np.arange(n) - mean) / std) ** 2)
    return w / w.sum()


def problem(n=60):
    x = np.arange(n, dtype=float)
    C = (x[:, None] - x[None]) ** 2
    return otsolve.LinearProblem(C / C.max(), gauss(n, 0.2 * n, 0.05 * n), gauss(n, 0.6 * n, 0.1 * n))


def plans_figure(prob, gamma=1.0):
    n = prob.shape[0]
    ks = [(1, "k = 1"), (2, "k = 2"), (5, "k = 5"), (n, "k = ∞ (quadratic OT)")]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.8))
    for ax, (k, title) in zip(axes, ks):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = otsolve.SparsityConstrainedOT(k=k, gamma=gamma, tol=1e-12, max_iter=5000)(prob)
        ax.imshow(res.plan, cmap="Blues", interpolation="nearest")
        nnz = res.plan_sparse.getnnz(axis=0).max()
        ax.set_title(f"{title}\nmax nnz/col {nnz}, ‖T1−a‖₁ = {res.marginal_error_a:.1e}", fontsize=10)
        ax.set_xlabel("target j")
        ax.set_ylabel("source i")
    fig.suptitle(f"Sparsity-constrained OT plans (semi-dual, γ = {gamma:g}): at most k nonzeros per column")
    fig.tight_layout(rect=(0, 0.03, 1, 0.97))
    fig.savefig(OUT / "sparse_ot_plans.png", dpi=110)
    plt.close(fig)


def tradeoff_figure(prob):
    ks = [1, 2, 3, 5, 8, 12, 20]
    fig, ax = plt.subplots(figsize=(6, 4))
    for gamma in (0.1, 1.0, 10.0):
        errs = []
        for k in ks:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                res = otsolve.SparsityConstrainedOT(k=k, gamma=gamma, tol=1e-12, max_iter=5000)(prob)
            errs.append(max(res.marginal_error_a, 1e-12))
        ax.semilogy(ks, errs, "o-", label=f"γ = {gamma:g}")
    ax.set_xlabel("k (max nonzeros per column)")
    ax.set_ylabel("row marginal error ‖T1 − a‖₁")
    ax.set_title("Sparsity vs accuracy (semi-dual, L-BFGS-B)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(OUT / "sparse_ot_tradeoff.png", dpi=110)
    plt.close(fig)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    prob = problem()
    plans_figure(prob)
    tradeoff_figure(prob)
    print("wrote", sorted(str(p) for p in OUT.glob("sparse_ot_*.png")))


if __name__ == "__main__":
    main()
