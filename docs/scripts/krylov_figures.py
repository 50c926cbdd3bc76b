"""Figures for docs/krylov.md: per-system mat-vecs and cumulative time on a Darcy sequence.

    python docs/scripts/krylov_figures.py [--grid 64] [--n 40]

Writes docs/img/krylov_speedup.png.
"""
from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import scipy.sparse.linalg as spla  # noqa: E402

from otsolve.krylov import RecyclingSolver, sort_systems  # noqa: E402
from otsolve.pde import make_system  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--grid", type=int, default=64)
    p.add_argument("--n", type=int, default=40)
    p.add_argument("--rtol", type=float, default=1e-8)
    args = p.parse_args()
    systems = [make_system("darcy", args.grid, i, 0) for i in range(args.n)]
    order = sort_systems([S.params for S in systems])
    curves = {}
    # SciPy GMRES(40) from zero, in the sorted order (order does not matter for it)
    mv, tm = [], []
    for i in order:
        S = systems[i]
        cnt = [0]
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            spla.gmres(S.A, S.b, rtol=args.rtol, restart=40, maxiter=250,
                       callback=lambda r: cnt.__setitem__(0, cnt[0] + 1), callback_type="pr_norm")
        tm.append(time.perf_counter() - t)
        mv.append(cnt[0])
    curves["SciPy GMRES(40)"] = (np.array(mv), np.array(tm))
    for label, recycle, ordr in (("GCRO-DR(40,20), space reset", False, order),
                                 ("GCRO-DR(40,20) carried, unsorted", True, np.arange(args.n)),
                                 ("SKR: sorted + GCRO-DR carried", True, order)):
        solver = RecyclingSolver("gcrodr", rtol=args.rtol, restart=40, k=20, recycle=recycle)
        for i in ordr:
            solver.solve(systems[i].A, systems[i].b)
        curves[label] = (np.array(solver.stats["matvecs"]), np.array(solver.stats["time"]))
    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for label, (mv, tm) in curves.items():
        ax[0].plot(np.arange(1, len(mv) + 1), mv, label=label, lw=1.5)
        ax[1].plot(np.arange(1, len(tm) + 1), np.cumsum(tm), label=label, lw=1.5)
    ax[0].set_yscale("log")
    ax[0].set_xlabel("system in solve order")
    ax[0].set_ylabel("mat-vecs per system")
    ax[1].set_xlabel("systems solved")
    ax[1].set_ylabel("cumulative solve time (s)")
    ax[0].legend(fontsize=8)
    fig.suptitle(f"Darcy, {args.grid}x{args.grid} grid, rtol {args.rtol:g}, no preconditioner")
    fig.tight_layout()
    out = Path(__file__).resolve().parents[1] / "img" / "krylov_speedup.png"
    fig.savefig(out, dpi=110)
    for label, (mv, tm) in curves.items():
        print(f"{label:36s} mat-vecs/system {mv.mean():8.1f}  time {tm.sum():7.2f} s")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
