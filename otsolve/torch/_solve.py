"""Forward solvers of the torch layer (no autograd): compiled CPU kernels or batched torch code.

Both produce potentials in the project convention ``P_ij = exp((f_i + g_j − C_ij)/ε − 1)`` and
stop per problem on the L1 error of both marginals (columns are exact after each g-update, so
the row error is the whole error). The torch path works on ``(B, n, m)`` batches and keeps
iterating only the problems that have not converged yet.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ._costs import COSTS, CostSpec, pairwise_cost

__all__ = ["Solution", "solve_potentials", "epsilon_schedule", "compiled_available"]


@dataclass
class Solution:
    """Potentials and per-problem diagnostics of a batch of solves (all tensors have a batch axis)."""

    f: torch.Tensor  # (B, n)
    g: torch.Tensor  # (B, m)
    n_iter: torch.Tensor  # (B,) int64
    error: torch.Tensor  # (B,) L1 marginal error of the returned iterate
    converged: torch.Tensor  # (B,) bool
    backend: str


def compiled_available() -> bool:
    from ..kernels import HAVE_COMPILED

    return HAVE_COMPILED


def epsilon_schedule(eps: float, diameter_cost: float, scaling: float | None) -> list[float]:
    """Geometric ε-annealing from the cost's scale down to ``eps`` (ratio ``scaling`` per stage).

    Returns the intermediate values only (the final ε is solved to tolerance afterwards). This is
    the warm start GeomLoss uses (one update per stage); ``scaling=None`` disables it.
    """
    if scaling is None or diameter_cost <= eps:
        return []
    out, e = [], diameter_cost
    while e > eps:
        out.append(e)
        e *= scaling
    return out


def _log_weights(w: torch.Tensor) -> torch.Tensor:
    return torch.log(w)  # log 0 = -inf keeps zero-mass points out of every log-sum-exp


def _diameter_cost(x, y, C, cost) -> float:
    """A bound on the largest cost entry, used to start ε-scaling."""
    if C is not None:
        return float((C.amax() - C.amin()).item())
    lo = torch.minimum(x.amin(dim=(0, 1)), y.amin(dim=(0, 1)))
    hi = torch.maximum(x.amax(dim=(0, 1)), y.amax(dim=(0, 1)))
    diam = float(torch.linalg.vector_norm(hi - lo).item())
    if callable(cost):
        return float(pairwise_cost(x[:1], y[:1], cost).abs().amax().item())
    kind, scale = COSTS[cost]
    return scale * (diam**2 if kind == 0 else diam)


def solve_potentials(
    *, a: torch.Tensor, b: torch.Tensor, eps: float, tol: float, max_iter: int,
    C: torch.Tensor | None = None, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
    cost: CostSpec | None = None, scaling: float | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None, backend: str = "auto", n_threads: int = 0,
) -> Solution:
    """Solve a batch of entropic OT problems without recording a graph.

    Give either ``C`` ``(B, n, m)`` or point clouds ``x`` ``(B, n, d)``, ``y`` ``(B, m, d)`` with a
    ``cost``. ``backend``: "compiled" (C++ kernels, CPU float32/float64, named costs or dense C),
    "torch" (any device, batched log-domain code) or "auto" (compiled when possible).
    """
    with torch.no_grad():
        ref = C if C is not None else x
        use_compiled = backend == "compiled" or (
            backend == "auto" and ref.device.type == "cpu" and compiled_available()
            and (C is not None or not callable(cost))
        )
        if use_compiled and not compiled_available():
            raise ValueError("backend='compiled' needs the compiled kernels (otsolve._ext_sinkhorn)")
        if use_compiled and (ref.device.type != "cpu" or (C is None and callable(cost))):
            raise ValueError("backend='compiled' needs CPU tensors and a named cost (or a cost matrix)")
        diam = _diameter_cost(x, y, C, cost) if scaling is not None else 0.0
        schedule = epsilon_schedule(eps, diam, scaling)
        if use_compiled:
            return _solve_compiled(a, b, eps, tol, max_iter, C, x, y, cost, schedule, init, n_threads)
        return _solve_torch(a, b, eps, tol, max_iter, C, x, y, cost, schedule, init)


def _solve_compiled(a, b, eps, tol, max_iter, C, x, y, cost, schedule, init, n_threads) -> Solution:
    from ..kernels import get_sinkhorn_kernels

    K = get_sinkhorn_kernels()
    B, n = a.shape
    m = b.shape[1]
    F = np.zeros((B, n))
    G = np.zeros((B, m))
    if init is not None:
        F[:] = init[0].detach().cpu().double().numpy()
        G[:] = init[1].detach().cpu().double().numpy()
    n_iter = np.zeros(B, dtype=np.int64)
    err = np.zeros(B)
    conv = np.zeros(B, dtype=bool)
    la = np.log(a.detach().double().cpu().numpy())
    lb = np.log(b.detach().double().cpu().numpy())
    for k in range(B):  # each problem runs to its own tolerance
        if C is not None:
            args = (np.ascontiguousarray(C[k].numpy()),)
            run = K.sinkhorn_dense
        else:
            kind, scale = COSTS[cost]
            # .numpy() shares memory with the tensor (zero copy); only Y is transposed (m x d).
            args = (x[k].contiguous().numpy(), y[k].t().contiguous().numpy(), kind, scale)
            run = K.sinkhorn_pointcloud
        f, g = F[k], G[k]
        # OpenMP barriers cost more than they save on small problems (and much more on a loaded
        # machine), so small problems run on one thread unless the caller says otherwise
        nt = n_threads if n_threads > 0 or n * m >= 250_000 else 1
        its = 0
        for e in schedule:  # one update per annealing stage (a warm start, not a solve)
            run(*args, la[k], lb[k], f, g, e, 1, 0.0, nt)
            its += 1
        # omega=-1: the kernels' adaptive over-relaxation (same fixed point, fewer iterations)
        it, status, errors = run(*args, la[k], lb[k], f, g, eps, max_iter, tol, nt, -1.0)
        n_iter[k] = its + it
        err[k] = errors[-1] if len(errors) else np.inf
        conv[k] = status == 0
    dt = a.dtype
    return Solution(
        f=torch.from_numpy(F).to(dt), g=torch.from_numpy(G).to(dt), n_iter=torch.from_numpy(n_iter),
        error=torch.from_numpy(err), converged=torch.from_numpy(conv), backend="compiled",
    )


def _update(Cs, la, lb, f, g, eps):
    """One Sinkhorn iteration; also returns the row error of the iterate entering it."""
    lse_r = torch.logsumexp((g.unsqueeze(-2) - Cs) / eps, dim=-1)
    # row masses of the entering plan; the clamp keeps exp finite (the error is then just large)
    mass = torch.exp(torch.clamp(f / eps - 1.0 + lse_r, max=80.0))
    err = (mass - la.exp()).abs().sum(-1)
    f_new = eps * (la + 1.0 - lse_r)
    g_new = eps * (lb + 1.0 - torch.logsumexp((f_new.unsqueeze(-1) - Cs) / eps, dim=-2))
    return f_new, g_new, err


def _solve_torch(a, b, eps, tol, max_iter, C, x, y, cost, schedule, init) -> Solution:
    if C is None:
        C = pairwise_cost(x, y, cost)
    B, n, m = C.shape
    dt, dev = C.dtype, C.device
    la, lb = _log_weights(a), _log_weights(b)
    if init is not None:
        f = init[0].detach().to(dt).clone()
        g = init[1].detach().to(dt).clone()
    else:
        f = torch.zeros(B, n, dtype=dt, device=dev)
        g = torch.zeros(B, m, dtype=dt, device=dev)
    for e in schedule:
        f, g, _ = _update(C, la, lb, f, g, e)
    n_iter = torch.full((B,), len(schedule), dtype=torch.int64, device=dev)
    err = torch.full((B,), math.inf, dtype=torch.float64, device=dev)
    conv = torch.zeros(B, dtype=torch.bool, device=dev)
    active = torch.arange(B, device=dev)
    Ca, laa, lba, fa, ga = C, la, lb, f, g
    for it in range(max_iter + 1):
        f_new, g_new, e = _update(Ca, laa, lba, fa, ga, eps)
        err[active] = e.double()
        done = (e <= tol) | ~torch.isfinite(e)
        if it == max_iter:
            done = torch.ones_like(done)
        if bool(done.any()):
            idx = active[done]
            f[idx], g[idx] = fa[done], ga[done]  # keep the measured iterate
            conv[idx] = e[done] <= tol
            keep = ~done
            if not bool(keep.any()):
                break
            # shrink the batch once, so converged problems cost nothing afterwards
            active = active[keep]
            Ca, laa, lba = Ca[keep], laa[keep], lba[keep]
            f_new, g_new = f_new[keep], g_new[keep]
        fa, ga = f_new, g_new
        n_iter[active] += 1
    return Solution(f=f, g=g, n_iter=n_iter, error=err, converged=conv, backend="torch")
