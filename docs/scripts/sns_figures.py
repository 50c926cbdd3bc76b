"""Figures of docs/sns.md: marginal error vs iteration and vs time, SNS against Sinkhorn.

Random assignment (C_ij ~ U[0,1], n = 500, eta = 1/eps = 1200, uniform weights), as in
Tang et al. (ICLR 2024), Figure 1. Writes docs/img/sns_convergence.png.

Times: the Newton steps are timed one by one (``result.newton_times``); the iterations of a
Sinkhorn run (and of SNS's warm-up) cost the same, so their times are the run's (stage's) wall
time spread evenly over its iterations.

    python docs/scripts/sns_figures.py [--n 500] [--max-sinkhorn 20000]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import otsolve  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=500)
    parser.add_argument("--eta", type=float, default=1200.0)
    parser.add_argument("--max-sinkhorn", type=int, default=20_000)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "img" / "sns_convergence.png"))
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    C = rng.random((args.n, args.n))
    prob = otsolve.LinearProblem(C, epsilon=1.0 / args.eta)
    tol = 1e-12

    sns = otsolve.SinkhornNewtonSparse(tol=tol)(prob)
    n1 = sns.n_sinkhorn
    t_sns = np.concatenate([np.linspace(0, sns.sinkhorn_time, n1 + 1), sns.newton_times[1:]])
    e_sns = sns.errors[: len(t_sns)]

    runs = {}
    for label, opts in [("Sinkhorn (plain)", dict(omega=1.0, mode="log")),
                        ("Sinkhorn (over-relaxed, otsolve default)", {})]:
        res = otsolve.Sinkhorn(tol=tol, max_iter=args.max_sinkhorn, warn=False, n_threads=1, **opts)(prob)
        t = np.linspace(0, res.time, len(res.errors))
        runs[label] = (np.arange(len(res.errors)), t, res.errors)

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, xkey in zip(axes, ("iteration", "time (s)")):
        for (label, (its, t, e)), color in zip(runs.items(), ("tab:gray", "tab:blue")):
            ax.semilogy(its if xkey == "iteration" else t, np.maximum(e, 1e-16), color=color, label=label)
        x_sns = np.arange(len(e_sns)) if xkey == "iteration" else t_sns
        ax.semilogy(x_sns, np.maximum(e_sns, 1e-16), "o-", color="tab:red", ms=3,
                    label=f"SNS ({n1} Sinkhorn + {sns.n_newton} Newton)")
        ax.axvline(n1 if xkey == "iteration" else sns.sinkhorn_time, color="tab:red", lw=0.6, ls=":")
        ax.set_xlabel(xkey)
        ax.set_ylabel("marginal L1 error")
        ax.set_xscale("symlog", linthresh=50 if xkey == "iteration" else 0.05)
        ax.set_xlim(left=0)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"Random assignment, n = {args.n}, eta = {args.eta:g} (shared 2-core VM)")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}; SNS {sns.time:.3f} s, final error {sns.marginal_error:.2e}")
    for label, (its, t, e) in runs.items():
        print(f"{label}: {its[-1]} iterations, {t[-1]:.2f} s, final error {e[-1]:.2e}")


if __name__ == "__main__":
    main()
