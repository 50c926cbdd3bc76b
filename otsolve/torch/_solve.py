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
                 symmetric: bool = False):
    """The batch as a core :class:`~otsolve.BatchedLinearProblem` on views of the tensors.

    Named costs stay point clouds (computed on the fly by the kernels); a callable cost is
    evaluated once in torch (a dense batch of costs). ``symmetric``: the problems are OT(a, a)
    on C(x, x) (the core's symmetric solve; ``b`` and ``y`` are then ``a`` and ``x``).
    """
    from ..problems import BatchedLinearProblem  # noqa: PLC0415

    with torch.no_grad():
        if C is None and callable(cost):
            C = pairwise_cost(x, y, cost)
        if symmetric:
            if C is not None:
                return BatchedLinearProblem(_to_core(C), _to_core(a), None, eps, symmetric=True)
            return BatchedLinearProblem(None, _to_core(a), None, eps, x=_to_core(x), cost_fn=cost, symmetric=True)
        if C is not None:
            return BatchedLinearProblem(_to_core(C), _to_core(a), _to_core(b), eps)
        return BatchedLinearProblem(None, _to_core(a), _to_core(b), eps, x=_to_core(x), y=_to_core(y), cost_fn=cost)


def solve_potentials(
    *, a: torch.Tensor, b: torch.Tensor, eps: float, tol: float, max_iter: int,
    C: torch.Tensor | None = None, x: torch.Tensor | None = None, y: torch.Tensor | None = None,
    cost: CostSpec | None = None, scaling: float | None = None,
    init: tuple[torch.Tensor, torch.Tensor] | None = None, compiled: bool = True, n_threads: int = 0,
    symmetric: bool = False, value_tol: float | None = None, stage_tol: float = 1e-2,
    epsilon_init: float | None = None, kernel_memory: float = 4e9,
) -> Solution:
    """Solve a batch of entropic OT problems with the core driver, without recording a graph.

    Give either ``C`` ``(B, n, m)`` or point clouds ``x`` ``(B, n, d)``, ``y`` ``(B, m, d)`` with a
    ``cost``. ``scaling``: decay in (0, 1) of the core's ε-scaling (None: off). ``compiled``:
    the compiled kernels (C++ / CUDA) or the NumPy reference. ``symmetric``, ``value_tol``,
    ``stage_tol``, ``epsilon_init``, ``kernel_memory``: as in the core (:class:`~otsolve.BatchedLinearProblem`,
    :class:`~otsolve.Sinkhorn`).
    """
    from ..solvers.sinkhorn import Sinkhorn  # noqa: PLC0415

    with torch.no_grad():
        problem = core_problem(a, b, eps, C, x, y, cost, symmetric=symmetric)
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


def _update(Cs, la, lb, f, g, eps):
    """One log-domain Sinkhorn iteration recorded by autograd (the unrolled gradient mode);
    also returns the row error of the iterate entering it."""
    lse_r = torch.logsumexp((g.unsqueeze(-2) - Cs) / eps, dim=-1)
    # row masses of the entering plan; the clamp keeps exp finite (the error is then just large)
    mass = torch.exp(torch.clamp(f / eps - 1.0 + lse_r, max=80.0))
    err = (mass - la.exp()).abs().sum(-1)
    f_new = eps * (la + 1.0 - lse_r)
    g_new = eps * (lb + 1.0 - torch.logsumexp((f_new.unsqueeze(-1) - Cs) / eps, dim=-2))
    return f_new, g_new, err

