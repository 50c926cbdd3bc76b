"""Figures of docs/torch.md: a point cloud flowing to a target by gradient descent on the
Sinkhorn divergence, and the loss curve.

    python docs/scripts/torch_figures.py      # writes docs/img/torch_flow.png, docs/img/torch_loss.png
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from otsolve.torch import SinkhornLoss  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img"
OUT.mkdir(exist_ok=True)

g = torch.Generator().manual_seed(0)
n = 400
# target: a noisy ring; source: a small Gaussian blob off to the side
theta = torch.rand(n, generator=g) * 2 * np.pi
target = torch.stack([torch.cos(theta), torch.sin(theta)], 1) + 0.05 * torch.randn(n, 2, generator=g)
x = (0.25 * torch.randn(n, 2, generator=g) + torch.tensor([-2.0, -1.5])).requires_grad_()

loss_fn = SinkhornLoss(epsilon=0.01, cost="sqeuclidean", warm_start=True, tol=1e-4)
opt = torch.optim.SGD([x], lr=0.2 * n)  # point gradients carry the weight 1/n
snaps, losses, steps = {}, [], 60
keep = (0, 2, 5, 10, 20, steps)
for t in range(steps + 1):
    if t in keep:
        snaps[t] = x.detach().clone()
    if t == steps:
        break
    opt.zero_grad()
    loss = loss_fn(x, target)
    loss.backward()
    opt.step()
    losses.append(loss.item())

fig, axes = plt.subplots(1, len(keep), figsize=(3 * len(keep), 3.2), sharex=True, sharey=True)
for ax, t in zip(axes, keep):
    ax.scatter(target[:, 0], target[:, 1], s=4, c="tab:orange", alpha=0.5, label="target")
    ax.scatter(snaps[t][:, 0], snaps[t][:, 1], s=4, c="tab:blue", label="x")
    ax.set_title(f"step {t}")
    ax.set_aspect("equal")
axes[0].legend(loc="upper left", fontsize=8)
fig.suptitle("Gradient descent on SinkhornLoss(epsilon=0.01): the cloud flows to the ring")
fig.tight_layout()
fig.savefig(OUT / "torch_flow.png", dpi=110)

fig, ax = plt.subplots(figsize=(5, 3.2))
ax.semilogy(losses)
ax.set_xlabel("step")
ax.set_ylabel("Sinkhorn divergence")
ax.set_title("Training loss (float32, CPU)")
fig.tight_layout()
fig.savefig(OUT / "torch_loss.png", dpi=110)
print(f"loss {losses[0]:.4g} -> {losses[-1]:.4g}; wrote {OUT}/torch_flow.png, torch_loss.png")
