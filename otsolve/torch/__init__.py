"""PyTorch OT layer: differentiable Sinkhorn, Sinkhorn divergence, :class:`SinkhornLoss` and
sparsity-constrained MoE routing (:func:`route`, :class:`SparseRouter`).

Optional extra (``pip install "otsolve[torch]"``); the rest of otsolve never imports torch.
CPU tensors go zero-copy into the compiled kernels; CUDA tensors (and batches with per-problem
convergence) use log-domain torch code. Gradient modes: see :data:`GRAD_MODES`.
"""
from __future__ import annotations

try:
    import torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError('otsolve.torch needs PyTorch: pip install "otsolve[torch]"') from exc

from ._costs import COSTS, pairwise_cost
from ._grad import ImplicitState
from .layer import GRAD_MODES, SinkhornLoss, SinkhornOutput, TermInfo, sinkhorn, sinkhorn_divergence
from .samples_loss import SamplesLoss
from .routing import ROUTE_GRAD_MODES, RouterOutput, SparseRouter, route

__all__ = [
    "COSTS",
    "GRAD_MODES",
    "ImplicitState",
    "ROUTE_GRAD_MODES",
    "RouterOutput",
    "SamplesLoss",
    "SinkhornLoss",
    "SinkhornOutput",
    "SparseRouter",
    "TermInfo",
    "pairwise_cost",
    "route",
    "sinkhorn",
    "sinkhorn_divergence",
]
