"""Figures of docs/lightsb.md: a 2-D LightSB from a Gaussian to a Swiss roll.

    python docs/scripts/lightsb_figures.py     # writes docs/img/lightsb_samples.png, lightsb_trajectories.png
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.datasets import make_swiss_roll  # noqa: E402

import otsolve  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img"


def main() -> None:
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(20000, 2))
    roll, _ = make_swiss_roll(20000, noise=0.8, random_state=0)
    x1 = roll[:, [0, 2]] / 7.5  # the paper's preprocessing

    model = otsolve.LightSB(dim=2, n_components=100, epsilon=0.01, s_init=0.1)
    model.fit(x0, x1, n_steps=5000, batch_size=128, lr=1e-2, rng=42, progress=False, schedule="cosine")

    test = rng.normal(size=(2000, 2))
    y = model.sample(test, rng=1)
    fig, ax = plt.subplots(1, 3, figsize=(12, 4), sharex=True, sharey=True)
    for a, pts, title, c in ((ax[0], test, "source $p_0$ (Gaussian)", "tab:blue"),
                             (ax[1], x1[:2000], "target $p_1$ (Swiss roll)", "tab:green"),
                             (ax[2], y, r"LightSB: $y \sim \pi_\theta(\cdot\,|\,x)$", "tab:orange")):
        a.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.5, color=c)
        a.set_title(title)
        a.set_aspect("equal")
    fig.suptitle(r"LightSB, $\varepsilon = 0.01$, K = 100, 5000 Adam steps (cosine step)")
    fig.tight_layout()
    fig.savefig(OUT / "lightsb_samples.png", dpi=110)

    starts = np.repeat(rng.normal(size=(6, 2)) * 1.3, 8, axis=0)
    paths = model.sample_path(starts, n_steps=500, rng=2)
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.scatter(x1[:3000, 0], x1[:3000, 1], s=1, alpha=0.15, color="tab:green", label="target")
    colors = plt.cm.tab10(np.arange(6))
    for i, p in enumerate(paths):
        ax.plot(p[:, 0], p[:, 1], lw=0.7, alpha=0.8, color=colors[i // 8])
        ax.scatter(*p[-1], s=12, color=colors[i // 8], zorder=3)
    ax.scatter(starts[::8, 0], starts[::8, 1], s=60, marker="*", color="k", zorder=4, label="start $x_0$")
    ax.set_title("Bridge trajectories (Euler-Maruyama, 500 steps, closed-form drift)")
    ax.set_aspect("equal")
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig.savefig(OUT / "lightsb_trajectories.png", dpi=110)


if __name__ == "__main__":
    main()
