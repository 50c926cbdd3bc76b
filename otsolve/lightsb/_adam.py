"""Adam (Kingma & Ba, 2015) on a dict of arrays, updated in place; works for NumPy and CuPy."""
from __future__ import annotations

__all__ = ["Adam"]


class Adam:
    """Adam with the PyTorch defaults (betas 0.9/0.999, eps 1e-8), no weight decay."""

    def __init__(self, params: dict, lr: float, betas=(0.9, 0.999), eps: float = 1e-8, xp=None):
        self.params, self.lr, self.eps = params, float(lr), float(eps)
        self.b1, self.b2 = betas
        self.m = {k: v * 0 for k, v in params.items()}
        self.v = {k: v * 0 for k, v in params.items()}
        self.t = 0
        self.xp = xp

    def step(self, grads: dict) -> None:
        self.t += 1
        c1 = 1.0 - self.b1**self.t
        c2 = 1.0 - self.b2**self.t
        xp = self.xp
        for k, g in grads.items():
            m, v = self.m[k], self.v[k]
            m *= self.b1
            m += (1.0 - self.b1) * g
            v *= self.b2
            v += (1.0 - self.b2) * (g * g)
            self.params[k] -= (self.lr / c1) * m / (xp.sqrt(v / c2) + self.eps)
