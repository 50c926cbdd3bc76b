"""Differentiable mixture-of-experts routing by sparsity-constrained OT (torch front end of
:func:`otsolve.route`).

The forward pass is :func:`otsolve.route` itself (numba top-k kernels on a zero-copy NumPy view
of the scores), so dispatch, combine weights, plan and value are exactly those of the core. The
backward pass differentiates the three real-valued outputs with respect to the scores:

* ``combine`` with ``combine="gates"`` (the V-MoE default): ``softmax(scores)`` on the dispatched
  positions. The dispatch mask is piecewise constant in the scores (gradient zero almost
  everywhere), so the exact gradient is that of the gates through the mask: the usual MoE router
  gradient. Cost O(tokens · experts).
* ``plan`` (and ``combine`` with ``combine="plan"``): on its support S the optimal plan of the
  quadratically regularized problem is ``T = [f ⊕ g − C]₊ / γ`` with both marginals exact, i.e.
  ``T_S`` is the Euclidean projection of ``−C_S/γ`` onto the affine set ``{row sums = a, column
  sums = b}`` restricted to S. With S fixed this is affine in C, and its Jacobian is
  ``−(I − Π)/γ`` where Π is the orthogonal projection onto ``{f_i + g_j on S}``. The backward pass
  applies it: one linear solve with the (tokens + experts) bipartite "Laplacian" of S, done as an
  experts × experts Schur complement (O(tokens · experts² + experts³) per group, dense,
  pseudo-inverse for disconnected supports). This is the exact derivative of the optimal plan
  wherever the support is locally stable (implicit differentiation of the support-restricted
  optimality conditions). The core's fixed-step solve (20 Adam steps) does not reach the optimum,
  so for its output this is the derivative of the support-restricted optimal plan, a surrogate;
  ``polish=True`` makes the forward plan that exact optimum on the solver's support.
* ``value``: Danskin/envelope, ``∂value/∂C = T`` (``∂/∂scores`` through ``C = −softmax``). Exact
  for the value of an optimal (or polished) plan; at the core's fixed-step iterate it is the
  partial derivative with the potentials held fixed. Cost O(tokens · experts).

With ``normalize="softmax"`` the chain through the softmax is applied last. ``grad="detach"``
returns tensors without a graph.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._validation import renamed_kwarg
from ..routing import _MODES, _softmax, expert_capacity
from ..routing import route as _core_route

__all__ = ["route", "RouterOutput", "SparseRouter", "ROUTE_GRAD_MODES"]

#: gradient modes of :func:`route`
ROUTE_GRAD_MODES = {
    "implicit": "combine, plan and value: gates through the dispatch mask, plan by implicit "
                "differentiation of the support-restricted optimality conditions, value by Danskin",
    "detach": "nothing (outputs are detached)",
}


@dataclass
class RouterOutput:
    """Output of :func:`route` (torch tensors with the leading batch shape of the scores).

    Attributes
    ----------
    dispatch : BoolTensor (..., tokens, experts)
        Token t is processed by expert e (not differentiable).
    combine : Tensor (..., tokens, experts)
        Combine weights (gates or plan on the dispatched positions, zero elsewhere); differentiable.
    plan : Tensor (..., tokens, experts)
        Sparse OT plan (token masses 1, expert masses tokens/experts); differentiable.
    value : Tensor (...)
        Objective per group (the core's semi-dual value, or ``<C,T> + γ/2‖T‖²`` of the polished
        plan); differentiable.
    expert_load, token_load : LongTensor
        Tokens per expert, experts per token (0 = dropped token).
    marginal_error_tokens, marginal_error_experts : Tensor (...)
        L1 marginal errors of the plan per group.
    polished : BoolTensor (...)
        Groups whose plan was replaced by the exact optimum on its support (``polish=True``).
    capacity : int
    mode : str
    """

    dispatch: torch.Tensor
    combine: torch.Tensor
    plan: torch.Tensor
    value: torch.Tensor
    expert_load: torch.Tensor
    token_load: torch.Tensor
    marginal_error_tokens: torch.Tensor
    marginal_error_experts: torch.Tensor
    polished: torch.Tensor
    capacity: int
    mode: str


# ------------------------------------------------------------------------------------------------
# support-restricted linear algebra (float64, groups in the leading axis)
# ------------------------------------------------------------------------------------------------
def _support_solve(A: torch.Tensor, r: torch.Tensor, c: torch.Tensor):
    """Solve ``[[diag(A1), A], [Aᵀ, diag(Aᵀ1)]] [u; v] = [r; c]`` (minimum-norm on the null space).

    ``A`` (G, T, E) is the 0/1 support. The matrix is ``Eᵀ E`` for the map ``E (u, v) = (u_i + v_j)``
    on the support; the right-hand sides used here lie in its range. Eliminates ``u`` (the
    diagonal block; empty rows have u = 0) and solves the experts × experts Schur complement with
    a symmetric pseudo-inverse (its null space is one vector per connected component).
    """
    dr = A.sum(-1)
    dc = A.sum(-2)
    inv_dr = torch.where(dr > 0, 1.0 / dr.clamp_min(1.0), torch.zeros_like(dr))
    At = A.transpose(-1, -2)
    S = torch.diag_embed(dc) - At @ (inv_dr.unsqueeze(-1) * A)
    rhs = c - (At @ (inv_dr * r).unsqueeze(-1)).squeeze(-1)
    v = (torch.linalg.pinv(S, hermitian=True, rtol=1e-10) @ rhs.unsqueeze(-1)).squeeze(-1)
    u = inv_dr * (r - (A @ v.unsqueeze(-1)).squeeze(-1))
    return u, v


def _project_range(A: torch.Tensor, G: torch.Tensor) -> torch.Tensor:
    """Π G: orthogonal projection of G (on the support A) onto ``{u_i + v_j on A}``."""
    G = G * A
    u, v = _support_solve(A, G.sum(-1), G.sum(-2))
    return (u.unsqueeze(-1) + v.unsqueeze(-2)) * A


def _polish(A: torch.Tensor, C: torch.Tensor, a: torch.Tensor, b: torch.Tensor, gamma: float):
    """Exact optimum of the quadratic problem restricted to the support A: ``T = (f ⊕ g − C)/γ``
    on A with both marginals exact. Returns T and per-group validity (T > 0 on A, marginals met)."""
    CA = C * A
    f, g = _support_solve(A, gamma * a + CA.sum(-1), gamma * b + CA.sum(-2))
    T = (f.unsqueeze(-1) + g.unsqueeze(-2) - C) / gamma * A
    pos = torch.where(A > 0, T > 0, torch.ones_like(T, dtype=torch.bool)).flatten(1).all(-1)
    err = (T.sum(-1) - a).abs().sum(-1) + (T.sum(-2) - b).abs().sum(-1)
    ok = pos & (err <= 1e-9 * (a.sum(-1) + b.sum(-1)))
    return T, ok


# ------------------------------------------------------------------------------------------------
class _RouteFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, opts):  # noqa: D102
        x = scores.detach()
        dev, dt = x.device, x.dtype
        xn = x.cpu().numpy()  # zero-copy view for CPU tensors
        res = _core_route(xn, opts["capacity"], mode=opts["mode"], gamma=opts["gamma"],
                          num_steps=opts["num_steps"], optimizer=opts["optimizer"],
                          lr=opts["lr"], normalize=opts["normalize"],
                          combine="gates", compiled=opts["compiled"])
        batch_shape, (T, E) = xn.shape[:-2], xn.shape[-2:]
        groups = xn.reshape(-1, T, E).astype(np.float64)
        sim = torch.from_numpy(_softmax(groups) if opts["normalize"] == "softmax" else groups)
        A = torch.from_numpy(res.dispatch.reshape(-1, T, E)).to(torch.float64)
        plan = torch.from_numpy(np.ascontiguousarray(res.plan.reshape(-1, T, E), dtype=np.float64))
        value = torch.from_numpy(np.asarray(res.value, dtype=np.float64).reshape(-1))
        polished = torch.zeros(A.shape[0], dtype=torch.bool)
        if opts["polish"]:
            a = torch.ones(A.shape[0], T, dtype=torch.float64)
            b = torch.full((A.shape[0], E), T / E, dtype=torch.float64)
            Tp, ok = _polish(A, -sim, a, b, opts["gamma"])
            if bool(ok.any()):
                k = ok.view(-1, 1, 1)
                plan = torch.where(k, Tp, plan)
                pv = (-sim * Tp).sum((-1, -2)) + 0.5 * opts["gamma"] * (Tp * Tp).sum((-1, -2))
                value = torch.where(ok, pv, value)
            polished = ok
        gates = torch.from_numpy(np.ascontiguousarray(res.combine.reshape(-1, T, E), dtype=np.float64))
        ctx.opts = opts
        ctx.set_materialize_grads(False)  # unused outputs: None, not zeros (no solve for the plan)
        ctx.save_for_backward(sim, A, plan)
        ctx.batch_shape = batch_shape

        def out(t, tail):
            return t.reshape(batch_shape + tail).to(device=dev, dtype=dt)

        dispatch = torch.from_numpy(res.dispatch).to(dev)
        polished = polished.reshape(batch_shape).to(dev)
        ctx.mark_non_differentiable(dispatch, polished)
        return out(gates, (T, E)), out(plan, (T, E)), out(value, ()), dispatch, polished

    @staticmethod
    def backward(ctx, g_gates, g_plan, g_value, _gd=None, _gp=None):  # noqa: D102
        opts = ctx.opts
        sim, A, plan = ctx.saved_tensors
        G, T, E = A.shape
        ref = g_gates if g_gates is not None else g_plan if g_plan is not None else g_value
        if ref is None:
            return None, None
        dev, dt = ref.device, ref.dtype
        g_sim = torch.zeros(G, T, E, dtype=torch.float64)
        if g_gates is not None:
            g_sim += A * g_gates.detach().reshape(G, T, E).cpu().double()
        if g_value is not None:  # Danskin: ∂value/∂C = T, C = −sim
            g_sim -= plan * g_value.detach().reshape(G, 1, 1).cpu().double()
        if g_plan is not None:  # dT/dC = −(I − Π)/γ on the support, C = −sim
            Gp = A * g_plan.detach().reshape(G, T, E).cpu().double()
            g_sim += (Gp - _project_range(A, Gp)) / opts["gamma"]
        if opts["normalize"] == "softmax":
            g_sim = sim * (g_sim - (sim * g_sim).sum(-1, keepdim=True))
        return g_sim.reshape(ctx.batch_shape + (T, E)).to(device=dev, dtype=dt), None


def _scores(scores: Any) -> torch.Tensor:
    if not isinstance(scores, torch.Tensor):
        scores = torch.as_tensor(scores)
    if scores.dtype not in (torch.float32, torch.float64):
        if scores.is_complex() or scores.dtype == torch.bool:
            raise ValueError(f"scores must be a real floating tensor, got dtype {scores.dtype}")
        if scores.is_floating_point():
            raise ValueError(f"scores has dtype {scores.dtype}; use float32 or float64")
        scores = scores.to(torch.float64)
    if scores.ndim < 2:
        raise ValueError(f"scores must have shape (..., tokens, experts), got shape {tuple(scores.shape)}")
    if scores.numel() == 0:
        raise ValueError(f"scores is empty (shape {tuple(scores.shape)})")
    with torch.no_grad():
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("scores contains NaN or inf")
    return scores


def route(
    scores: torch.Tensor,
    capacity: int,
    *,
    mode: str = "experts_choose",
    gamma: float = 1.0,
    num_steps: int = 20,
    optimizer: str = "adam",
    lr: float = 1e-2,
    normalize: str | None = "softmax",
    combine: str = "gates",
    compiled: bool = True,
    polish: bool = False,
    grad: str = "implicit",
    learning_rate: float | None = None,
) -> RouterOutput:
    """k-sparse MoE routing (Liu, Puigcerver & Blondel, ICLR 2023) as a differentiable layer.

    The forward pass is :func:`otsolve.route` (same parameters, same outputs); ``combine``,
    ``plan`` and ``value`` are differentiable with respect to ``scores`` (see the module docstring
    for the gradients and their cost). Leading dimensions of ``scores`` are independent groups.

    Parameters
    ----------
    scores : Tensor (..., tokens, experts)
        Router logits (float32 or float64, any device; the solve runs on the CPU).
    capacity, mode, gamma, num_steps, optimizer, lr, normalize, combine, compiled
        As in :func:`otsolve.route` (``learning_rate``: deprecated old name of ``lr``).
    polish : bool, default False
        Replace each group's plan by the exact optimum of the quadratic problem on the solver's
        support (one linear solve; both marginals exact) when that optimum is positive on the
        support; ``polished`` says for which groups. The value is then ``<C,T> + γ/2‖T‖²``.
    grad : {"implicit", "detach"}
        Gradients as described in the module docstring, or none.

    Returns
    -------
    RouterOutput
    """
    if grad not in ROUTE_GRAD_MODES:
        raise ValueError(f"grad must be one of {sorted(ROUTE_GRAD_MODES)}, got {grad!r}")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    if combine not in ("gates", "plan"):
        raise ValueError(f"combine must be 'gates' or 'plan', got {combine!r}")
    if learning_rate is not None:  # deprecated alias (lr's default cannot tell "not given" apart)
        lr = renamed_kwarg(None, learning_rate, "lr", "learning_rate")
    s = _scores(scores)
    opts = dict(capacity=capacity, mode=mode, gamma=gamma, num_steps=num_steps, optimizer=optimizer,
                lr=lr, normalize=normalize, compiled=compiled, polish=bool(polish))
    if grad == "detach":
        s = s.detach()
    gates, plan, value, dispatch, polished = _RouteFn.apply(s, opts)
    comb = gates if combine == "gates" else plan
    with torch.no_grad():
        T, E = s.shape[-2:]
        p = plan.detach().double()
        err_t = (p.sum(-1) - 1.0).abs().sum(-1)
        err_e = (p.sum(-2) - T / E).abs().sum(-1)
    return RouterOutput(
        dispatch=dispatch, combine=comb, plan=plan, value=value,
        expert_load=dispatch.sum(-2), token_load=dispatch.sum(-1),
        marginal_error_tokens=err_t, marginal_error_experts=err_e, polished=polished,
        capacity=int(capacity), mode=mode,
    )


class SparseRouter(torch.nn.Module):
    """Sparsity-constrained OT router as an ``nn.Module``.

    ``router(scores)`` with logits ``(..., tokens, experts)``, or, with ``in_features``, a linear
    gate ``router(x)`` on token features ``(..., tokens, in_features)``. Returns a
    :class:`RouterOutput` (differentiable ``combine``, ``plan``, ``value``).

    Parameters
    ----------
    num_experts : int
    capacity : int, optional
        Fixed capacity; by default ``expert_capacity(tokens, experts, capacity_factor)`` per call
        in "experts_choose" (required in "tokens_choose": experts per token).
    capacity_factor : float, default 1.0
    in_features : int, optional
        Adds ``self.gate = nn.Linear(in_features, num_experts, bias=False)``.
    **options
        ``mode``, ``gamma``, ``num_steps``, ``optimizer``, ``lr``, ``normalize``,
        ``combine``, ``compiled``, ``polish``, ``grad`` (see :func:`route`; ``learning_rate`` is
        the deprecated old name of ``lr``).
    """

    _ALLOWED = {"mode", "gamma", "num_steps", "optimizer", "lr", "learning_rate", "normalize", "combine",
                "compiled", "polish", "grad"}

    def __init__(self, num_experts: int, capacity: int | None = None, capacity_factor: float = 1.0,
                 in_features: int | None = None, **options: Any) -> None:
        super().__init__()
        unknown = set(options) - self._ALLOWED
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}; allowed: {sorted(self._ALLOWED)}")
        if int(num_experts) < 1:
            raise ValueError(f"num_experts must be >= 1, got {num_experts!r}")
        self.num_experts = int(num_experts)
        self.capacity = capacity
        self.capacity_factor = float(capacity_factor)
        if capacity is None and options.get("mode", "experts_choose") == "tokens_choose":
            raise ValueError("mode='tokens_choose' needs capacity (experts per token)")
        self.options = options
        self.gate = None if in_features is None else torch.nn.Linear(int(in_features), self.num_experts, bias=False)

    def forward(self, x: torch.Tensor) -> RouterOutput:  # noqa: D102
        scores = x if self.gate is None else self.gate(x)
        if scores.shape[-1] != self.num_experts:
            raise ValueError(f"scores have {scores.shape[-1]} experts, the router {self.num_experts}")
        cap = self.capacity
        if cap is None:
            cap = expert_capacity(scores.shape[-2], self.num_experts, self.capacity_factor)
        return route(scores, cap, **self.options)

    def extra_repr(self) -> str:  # noqa: D102
        return f"num_experts={self.num_experts}, capacity={self.capacity}, options={self.options}"
