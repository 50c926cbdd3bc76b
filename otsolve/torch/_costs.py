"""Ground costs of the torch layer, their compiled-kernel codes and plan-weighted gradients."""
from __future__ import annotations

from typing import Callable, Union

import torch

from ..geometry.costs import COSTS as _GEOMETRY_COSTS

__all__ = ["COSTS", "CostSpec", "resolve_cost", "pairwise_cost", "plan_cost_grads"]

CostSpec = Union[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]

# name -> (compiled kernel kind, scale): kind 0 = squared Euclidean, 1 = Euclidean; the named
# costs of the package's one table that the compiled / CUDA kernels compute on the fly
COSTS: dict[str, tuple[int, float]] = {
    name: (spec.kernel_kind, spec.multiplier) for name, spec in _GEOMETRY_COSTS.items() if spec.kernel_kind is not None
}


def resolve_cost(cost: CostSpec) -> CostSpec:
    """Validate ``cost``: a name of :data:`COSTS` or a callable ``(x, y) -> C`` on batches."""
    if callable(cost):
        return cost
    if not isinstance(cost, str) or cost not in COSTS:
        raise ValueError(f"cost must be one of {sorted(COSTS)} or a callable (x, y) -> C, got {cost!r}")
    return cost


def _sq_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # ‖x‖² + ‖y‖² − 2⟨x, y⟩ uses one matmul (as GeomLoss does); the clamp removes the tiny
    # negative values that cancellation produces for coincident points.
    xx = (x * x).sum(-1, keepdim=True)
    yy = (y * y).sum(-1).unsqueeze(-2)
    return (xx + yy - 2.0 * (x @ y.transpose(-1, -2))).clamp_min(0.0)


def _safe_sqrt(d2: torch.Tensor) -> torch.Tensor:
    # sqrt has an infinite derivative at 0 (x_i = y_j, e.g. the diagonal of a debiasing term);
    # the double `where` gives the subgradient 0 there instead of NaN.
    pos = d2 > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, d2, torch.ones_like(d2))), torch.zeros_like(d2))


def pairwise_cost(x: torch.Tensor, y: torch.Tensor, cost: CostSpec) -> torch.Tensor:
    """Dense cost matrices ``C[..., i, j] = c(x_i, y_j)`` for batches ``(B, n, d)``, ``(B, m, d)``."""
    if callable(cost):
        C = cost(x, y)
        want = (*x.shape[:-1], y.shape[-2])
        if tuple(C.shape) != want:
            raise ValueError(f"the cost callable returned shape {tuple(C.shape)}, expected {want}")
        return C
    kind, scale = COSTS[cost]
    d2 = _sq_dist(x, y)
    if kind == 1:
        d2 = _safe_sqrt(d2)
    return d2 * scale if scale != 1.0 else d2


def plan_cost_grads(
    x: torch.Tensor, y: torch.Tensor, cost: CostSpec, f: torch.Tensor, g: torch.Tensor, eps: float,
    need_x: bool = True, need_y: bool = True, chunk: int = 1 << 22,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Gradients of ``Σ_ij P_ij C_ij`` in x and y at the fixed plan ``P = exp((f⊕g − C)/ε − 1)``.

    This is the envelope (Danskin) gradient of the entropic OT value. Rows are processed in chunks
    of about ``chunk`` entries so the plan is never held whole (O(chunk) extra memory). Closed
    forms for the squared costs (``s (r_i x_i − (P y)_i)``); autograd on each chunk otherwise.
    """
    B, n, d = x.shape
    m = y.shape[1]
    if (isinstance(cost, str) and x.device.type == "cpu" and y.device.type == "cpu"
            and x.dtype in (torch.float32, torch.float64) and y.dtype == x.dtype):
        return _plan_cost_grads_compiled(x, y, cost, f, g, eps, need_x, need_y)
    rows = max(1, min(n, chunk // max(m, 1)))
    gx = torch.zeros_like(x) if need_x else None
    gy = torch.zeros_like(y) if need_y else None
    fd, gd = f.to(x.dtype), g.to(x.dtype)
    sq = isinstance(cost, str) and COSTS[cost][0] == 0
    for s in range(0, n, rows):
        xs, fs = x[:, s:s + rows], fd[:, s:s + rows]
        if sq:
            scale = 2.0 * COSTS[cost][1]
            C = pairwise_cost(xs, y, cost)
            P = torch.exp((fs.unsqueeze(-1) + gd.unsqueeze(-2) - C) / eps - 1.0)
            if need_x:
                gx[:, s:s + rows] = scale * (P.sum(-1, keepdim=True) * xs - P @ y)
            if need_y:
                gy += scale * (P.sum(-2).unsqueeze(-1) * y - P.transpose(-1, -2) @ xs)
        else:
            with torch.enable_grad():
                xr = xs.detach().requires_grad_(need_x)
                yr = y.detach().requires_grad_(need_y)
                C = pairwise_cost(xr, yr, cost)
                P = torch.exp((fs.unsqueeze(-1) + gd.unsqueeze(-2) - C.detach()) / eps - 1.0)
                ins = [t for t, nd in ((xr, need_x), (yr, need_y)) if nd]
                grads = torch.autograd.grad((C * P).sum(), ins, allow_unused=True)
            it = iter(grads)
            if need_x:
                gxs = next(it)
                gx[:, s:s + rows] = 0.0 if gxs is None else gxs
            if need_y:
                gys = next(it)
                if gys is not None:
                    gy += gys
    return gx, gy


def _plan_cost_grads_compiled(x, y, cost, f, g, eps, need_x, need_y):
    """CPU named costs: one fused C++ pass per problem (``plan_cost_grad_pointcloud``), nothing
    n x m held, float64 accumulation (the float32 torch chunks are off by ~1e-3 relative at small ε
    and hit torch's slow float32 exp for arguments below -88; measured 0.145 -> 0.011 s at
    n = 1000, d = 3, blur 0.05, bench/results/torch.md §6)."""
    import numpy as np  # noqa: PLC0415

    from ..kernels import get_sinkhorn_kernels  # noqa: PLC0415

    K = get_sinkhorn_kernels(True)
    kind, scale = COSTS[cost]
    B, n, d = x.shape
    m = y.shape[1]
    gx = np.zeros((B, n, d)) if need_x else None
    gy = np.zeros((B, m, d)) if need_y else None
    empty = np.zeros((0, d))
    for p in range(B):
        K.plan_cost_grad_pointcloud(
            x[p].detach().contiguous().numpy(), y[p].detach().T.contiguous().numpy(), int(kind), float(scale),
            f[p].detach().double().contiguous().numpy(), g[p].detach().double().contiguous().numpy(), float(eps),
            gx[p] if gx is not None else empty, gy[p] if gy is not None else empty, need_x, need_y, 0)
    return (None if gx is None else torch.from_numpy(gx).to(x.dtype),
            None if gy is None else torch.from_numpy(gy).to(y.dtype))
