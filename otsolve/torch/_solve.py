"""Forward solve of the torch layer: the core Sinkhorn driver on views of the tensors.

CPU tensors become NumPy arrays without a copy (``Tensor.numpy()``), CUDA tensors CuPy arrays
through DLPack; the core :class:`~otsolve.Sinkhorn` driver solves the batch (point clouds with
named costs are computed on the fly by the C++ / CUDA kernels, so no dense n x m cost is built)
and its potentials come back as tensors. Convergence is the core's: measured on the returned
potentials' plans. Only the unrolled gradient mode iterates in torch (it must record the steps).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math

import numpy as np
import torch

from ._costs import CostSpec, pairwise_cost

__all__ = ["Solution", "solve_potentials", "core_problem", "annealing_schedule", "compiled_available"]


@dataclass
class Solution:
    """Potentials and per-problem diagnostics of a batch of solves (all tensors have a batch axis)."""

    f: torch.Tensor  # (B, n)
    g: torch.Tensor  # (B, m)
    n_iter: torch.Tensor  # (B,) int64
    error: torch.Tensor  # (B,) L1 marginal error of the returned potentials' plans (exact)
    converged: torch.Tensor  # (B,) bool
    backend: str
    mass: torch.Tensor | None = None  # (B,) Σ P of the returned plans (float64), when measured


def compiled_available() -> bool:
    from ..kernels import HAVE_COMPILED

    return HAVE_COMPILED


def _to_core(t: torch.Tensor):
    """A NumPy (CPU) or CuPy (CUDA) view of a detached tensor, without a copy."""
    t = t.detach()
    if t.device.type == "cpu":
        return t.contiguous().numpy()
    if t.device.type == "cuda":
        import cupy as cp  # noqa: PLC0415  (CUDA tensors need CuPy for the CUDA kernels)

        return cp.from_dlpack(t.contiguous())
    raise ValueError(f"otsolve.torch runs on CPU or CUDA tensors, got a tensor on {t.device}")


def _from_core(arr: Any, like: torch.Tensor) -> torch.Tensor:
    if isinstance(arr, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(arr)).to(device=like.device, dtype=like.dtype)
    return torch.from_dlpack(arr).to(device=like.device, dtype=like.dtype)


def core_problem(a: torch.Tensor, b: torch.Tensor, eps: float, C: torch.Tensor | None = None,
                 x: torch.Tensor | None = None, y: torch.Tensor | None = None, cost: CostSpec | None = None,
                 symmetric: bool = False, rho_a: float = math.inf, rho_b: float = math.inf):
    """The batch as a core :class:`~otsolve.BatchedLinearProblem` on views of the tensors.

    Named costs stay point clouds (computed on the fly by the kernels); a callable cost is
    evaluated once in torch (a dense batch of costs). ``symmetric``: the problems are OT(a, a)
    on C(x, x) (the core's symmetric solve; ``b`` and ``y`` are then ``a`` and ``x``, and
    ``rho_a`` relaxes both marginals). ``rho_a``, ``rho_b``: KL relaxation strengths of the
    marginals (``inf`` = hard constraint, balanced).
    """
    from ..problems import BatchedLinearProblem  # noqa: PLC0415

    with torch.no_grad():
        if C is None and callable(cost):
            C = pairwise_cost(x, y, cost)
        if symmetric:
            rho = dict(rho_a=rho_a)
            if C is not None:
                return BatchedLinearProblem(_to_core(C), _to_core(a), None, eps, symmetric=True, **rho)
            return BatchedLinearProblem(None, _to_core(a), None, eps, x=_to_core(x), cost_fn=cost, symmetric=True,
                                        **rho)
        rho = dict(rho_a=rho_a, rho_b=rho_b)
        if C is not None:
            return BatchedLinearProblem(_to_core(C), _to_core(a), _to_core(b), eps, **rho)
        return BatchedLinearProblem(None, _to_core(a), _to_core(b), eps, x=_to_core(x), y=_to_core(y), cost_fn=cost,
                                    **rho)


def solve_potentials(
    *, a: torch.Tensor, b: torch.Tensor, eps: float, tol: float, max_iter: int,
    C: torch.Tensor | None = None, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
    cost: CostSpec | None = None, scaling: float | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None, compiled: bool = True, n_threads: int = 0,
    symmetric: bool = False, value_tol: float | None = None, stage_tol: float = 1e-2,
    epsilon_init: float | None = None, kernel_memory: float = 4e9,
    rho_a: float = math.inf, rho_b: float = math.inf,
) -> Solution:
    """Solve a batch of entropic OT problems with the core driver, without recording a graph.

    Give either ``C`` ``(B, n, m)`` or point clouds ``x`` ``(B, n, d)``, ``y`` ``(B, m, d)`` with a
    ``cost``. ``scaling``: decay in (0, 1) of the core's ε-scaling (None: off). ``compiled``:
    the compiled kernels (C++ / CUDA) or the NumPy reference. ``symmetric``, ``value_tol``,
    ``stage_tol``, ``epsilon_init``, ``kernel_memory``, ``rho_a``, ``rho_b`` (unbalanced OT: the
    core's KL-damped updates): as in the core (:class:`~otsolve.BatchedLinearProblem`,
    :class:`~otsolve.Sinkhorn`).
    """
    from ..solvers.sinkhorn import Sinkhorn  # noqa: PLC0415

    with torch.no_grad():
        problem = core_problem(a, b, eps, C, x, y, cost, symmetric=symmetric, rho_a=rho_a, rho_b=rho_b)
        solver = Sinkhorn(tol=tol, max_iter=int(max_iter), epsilon_scaling=False if scaling is None else scaling,
                          n_threads=int(n_threads), compiled=compiled, warn=False, value_tol=value_tol,
                          stage_tol=stage_tol, epsilon_init=epsilon_init, kernel_memory=kernel_memory)
        start = None if init is None else (_to_core(init[0].to(torch.float64)), _to_core(init[1].to(torch.float64)))
        res = solver(problem, start)
        ref = a
        dev = ref.device
        return Solution(
            f=_from_core(res.f, ref), g=_from_core(res.g, ref),
            n_iter=torch.as_tensor(res.n_iter_each, dtype=torch.int64, device=dev),
            error=torch.as_tensor(res.marginal_errors, dtype=torch.float64, device=dev),
            converged=torch.as_tensor(res.converged_each, dtype=torch.bool, device=dev),
            backend="cupy" if res.backend == "cupy" else ("compiled" if compiled else "reference"),
            mass=torch.as_tensor(np.asarray(res.masses, dtype=np.float64), device=dev),
        )


def annealing_schedule(problem, eps: float, scaling: float | None) -> list[float]:
    """The ε values of the core's ε-scaling above the target (empty without scaling): the
    stages the unrolled mode passes through, one recorded update each."""
    if scaling is None:
        return []
    from ..backends.kernel_sets import ProblemBatch  # noqa: PLC0415
    from ..solvers.sinkhorn import epsilon_schedule  # noqa: PLC0415

    start = ProblemBatch.of(problem).cost_range()
    return epsilon_schedule(eps, max(start, eps), scaling)[:-1]


def _target(la, f, eps, rho):
    """Row-marginal target of the optimality conditions, ``a exp(-(f - ε log a - ε/2)/ρ)`` (``a``
    when ρ = ∞; 0 where a = 0), differentiable (see :func:`otsolve.problems.marginals.marginal_target`)."""
    a = la.exp()
    if math.isinf(rho):
        return a
    pos = torch.isfinite(la)
    phi = torch.where(pos, f, torch.zeros_like(f)) - eps * torch.where(pos, la, torch.zeros_like(la)) - 0.5 * eps
    return torch.where(pos, a * torch.exp(torch.clamp(-phi / rho, max=80.0)), torch.zeros_like(a))


def _update(Cs, la, lb, f, g, eps, rho_a=math.inf, rho_b=math.inf):
    """One log-domain Sinkhorn iteration recorded by autograd (the unrolled gradient mode);
    also returns the row error of the iterate entering it (L1 distance of its row marginal to
    the target; the columns are exact after a g-update).

    Unbalanced sides use the KL-damped block update of the core (``otsolve.kernels.reference``):
    ``f = ε (log a + 1/2 + λ (1/2 - LSE_j (g_j - C_ij)/ε))``, ``λ = ρ/(ρ + ε)`` (1 when ρ = ∞)."""
    from ..problems.marginals import damping  # noqa: PLC0415

    lam_a, lam_b = damping(eps, rho_a), damping(eps, rho_b)
    lse_r = torch.logsumexp((g.unsqueeze(-2) - Cs) / eps, dim=-1)
    # row masses of the entering plan; the clamp keeps exp finite (the error is then just large)
    mass = torch.exp(torch.clamp(f / eps - 1.0 + lse_r, max=80.0))
    err = (mass - _target(la, f, eps, rho_a)).abs().sum(-1)
    f_new = eps * (la + 0.5 + lam_a * (0.5 - lse_r))
    g_new = eps * (lb + 0.5 + lam_b * (0.5 - torch.logsumexp((f_new.unsqueeze(-1) - Cs) / eps, dim=-2)))
    return f_new, g_new, err

