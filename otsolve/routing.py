"""Mixture-of-experts routing by sparsity-constrained optimal transport.

Tokens x experts scores become a k-sparse assignment: in "experts choose tokens" every expert
takes at most ``capacity`` tokens (sparsity per expert column), in "tokens choose experts" every
token goes to at most ``capacity`` experts (sparsity per token row). As in the routers of
T. Liu, J. Puigcerver, M. Blondel, "Sparsity-Constrained Optimal Transport", ICLR 2023 (code:
google-research/vmoe), the OT similarity is the softmax of the router logits (cost = -softmax),
every token has mass 1, every expert ``tokens/experts``, and the semi-dual is maximized by a few
Adam steps per group (gamma = 1, 20 steps, lr 1e-2 by default). Groups (leading dimensions) are
solved independently.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields, replace
from typing import Any

import numpy as np

from ._validation import as_float_array, check_epsilon, check_finite, check_positive_int, renamed_kwarg
from .backends import is_cupy
from .solvers.sparsity_constrained import ScotObjective, _adam, _lbfgs, adam_diverged, check_lr

__all__ = ["route", "RoutingResult", "expert_capacity"]

_MODES = ("experts_choose", "tokens_choose")


@dataclass
class RoutingResult:
    """Output of :func:`route` (arrays have the leading batch shape of the scores).

    Attributes
    ----------
    dispatch : ndarray of bool, (..., tokens, experts)
        Where the plan is nonzero: token t is processed by expert e.
    combine : ndarray (..., tokens, experts)
        Combine weights: the softmax gates on the dispatched positions (``combine="gates"``,
        the V-MoE default) or the OT plan itself (``combine="plan"``); zero elsewhere.
    plan : ndarray (..., tokens, experts)
        The sparse OT plan (token masses 1, expert masses tokens/experts).
    expert_load : ndarray of int (..., experts)
        Tokens per expert (``<= capacity`` in "experts_choose").
    token_load : ndarray of int (..., tokens)
        Experts per token (``<= capacity`` in "tokens_choose"; 0 = dropped token).
    marginal_error_tokens, marginal_error_experts : ndarray (...)
        L1 errors of the plan's token and expert masses per group (one of them is exact by
        construction of the semi-dual; the other is what the fixed-step solve did not reach).
    value : ndarray (...)
        Semi-dual objective per group.
    capacity : int
    mode : str
    """

    dispatch: np.ndarray
    combine: np.ndarray
    plan: np.ndarray
    expert_load: np.ndarray
    token_load: np.ndarray
    marginal_error_tokens: np.ndarray
    marginal_error_experts: np.ndarray
    value: np.ndarray
    capacity: int
    mode: str


def expert_capacity(num_tokens: int, num_experts: int, capacity_factor: float = 1.0,
                    multiple_of: int = 4) -> int:
    """Per-expert capacity ``ceil(tokens * capacity_factor / experts)`` rounded up to a multiple.

    The V-MoE convention (rounded up to a multiple of 4), capped at ``num_tokens``.
    """
    num_tokens = check_positive_int(num_tokens, "num_tokens")
    num_experts = check_positive_int(num_experts, "num_experts")
    multiple_of = check_positive_int(multiple_of, "multiple_of")
    cf = check_epsilon(capacity_factor, "capacity_factor")
    cap = math.ceil(num_tokens * cf / num_experts)
    cap = multiple_of * math.ceil(cap / multiple_of)
    return int(min(max(cap, 1), num_tokens))


def _softmax(x: np.ndarray) -> np.ndarray:
    z = x - x.max(axis=-1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=-1, keepdims=True)
    return z


def route(
    scores: Any,
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
    learning_rate: float | None = None,
) -> RoutingResult:
    """Route tokens to experts with a k-sparse OT plan (Liu, Puigcerver & Blondel, ICLR 2023).

    Parameters
    ----------
    scores : array_like (..., tokens, experts)
        Router logits (``normalize="softmax"``) or similarities (``normalize=None``); leading
        dimensions are independent groups. A CuPy array gives a result of CuPy arrays on its
        device (the solves run on the host).
    capacity : int
        ``mode="experts_choose"``: the most tokens one expert takes (nonzeros per expert column),
        e.g. :func:`expert_capacity`. ``mode="tokens_choose"``: the most experts one token uses.
    mode : {"experts_choose", "tokens_choose"}
        Which side is sparse. The other side's mass is exact: in "experts_choose" every expert
        receives exactly ``tokens/experts`` mass, in "tokens_choose" every token sends exactly 1.
    gamma : float, default 1.0
        Quadratic regularization of the plan.
    num_steps : int, default 20
        Optimizer steps per group (Adam: fixed; L-BFGS: at most).
    optimizer : {"adam", "lbfgs"}, default "adam"
    lr : float, default 1e-2
        Adam step size. More than 1e3 x the scale of the potentials (cost range + gamma x the
        largest mass) is refused with a ValueError; groups whose Adam ascent ends below its
        starting objective (too large a step: tokens get dropped) give a RuntimeWarning.
    normalize : {"softmax", None}, default "softmax"
        Similarity = softmax of the scores over experts; cost = -similarity.
    combine : {"gates", "plan"}, default "gates"
        Combine weights: softmax gates on the dispatched positions, or the plan values.
    compiled : bool, default True
        numba kernels (False: the NumPy references).
    learning_rate : float, optional
        Deprecated old name of ``lr``.

    Returns
    -------
    RoutingResult

    Examples
    --------
    >>> import numpy as np, otsolve
    >>> logits = np.random.default_rng(0).normal(size=(2, 64, 8))
    >>> r = otsolve.route(logits, capacity=12)
    >>> int(r.expert_load.max()) <= 12
    True
    """
    if learning_rate is not None:  # deprecated alias (lr's default cannot tell "not given" apart)
        lr = renamed_kwarg(None, learning_rate, "lr", "learning_rate")
    if is_cupy(scores):
        # CuPy in -> CuPy out on the same device; the per-group solves are CPU code (numba top-k)
        import cupy as cp  # noqa: PLC0415

        host = route(scores.get(), capacity, mode=mode, gamma=gamma, num_steps=num_steps, optimizer=optimizer,
                     lr=lr, normalize=normalize, combine=combine, compiled=compiled)
        with cp.cuda.Device(scores.device.id):
            return replace(host, **{f.name: cp.asarray(getattr(host, f.name)) for f in fields(host)
                                    if isinstance(getattr(host, f.name), np.ndarray)})
    x = as_float_array(scores, "scores")
    if x.ndim < 2:
        raise ValueError(f"scores must have shape (..., tokens, experts), got shape {x.shape}")
    check_finite(x, "scores")
    capacity = check_positive_int(capacity, "capacity")
    if mode not in _MODES:
        raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
    gamma = check_epsilon(gamma, "gamma")
    num_steps = check_positive_int(num_steps, "num_steps")
    lr = check_epsilon(lr, "lr")
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs', got {optimizer!r}")
    if normalize not in ("softmax", None):
        raise ValueError(f"normalize must be 'softmax' or None, got {normalize!r}")
    if combine not in ("gates", "plan"):
        raise ValueError(f"combine must be 'gates' or 'plan', got {combine!r}")

    dtype = x.dtype
    batch_shape, (T, E) = x.shape[:-2], x.shape[-2:]
    groups = x.reshape(-1, T, E).astype(np.float64)
    sim = _softmax(groups) if normalize == "softmax" else groups
    token_mass, expert_mass = np.ones(T), np.full(E, T / E)
    if optimizer == "adam":
        crange = float(np.max(sim.max(axis=(1, 2)) - sim.min(axis=(1, 2))))
        lr = check_lr(lr, crange + gamma * max(1.0, T / E))

    B = groups.shape[0]
    diverged = 0
    plan = np.zeros((B, T, E))
    values = np.empty(B)
    for g in range(B):
        if mode == "experts_choose":  # sparse expert columns: rows = tokens
            obj = ScotObjective(-sim[g], token_mass, expert_mass, capacity, gamma, "semi_dual", compiled)
        else:  # sparse token rows: solve the transposed problem, rows = experts
            obj = ScotObjective(-sim[g].T, expert_mass, token_mass, capacity, gamma, "semi_dual", compiled)
        x0 = np.zeros(obj.n)
        if optimizer == "adam":
            xa, *_, v0 = _adam(obj, x0, lr, num_steps, 0.0)
        else:
            xa = _lbfgs(obj, x0, 1e-9, num_steps, 10)[0]
        values[g], _ = obj.evaluate(xa)
        if optimizer == "adam" and adam_diverged(values[g], v0):
            diverged += 1
        keep = obj.idx >= 0
        cols = np.nonzero(keep)[0]
        rows = obj.idx[keep]
        if mode == "experts_choose":
            plan[g, rows, cols] = obj.tval[keep]
        else:
            plan[g, cols, rows] = obj.tval[keep]

    if diverged:
        dropped = int((plan.sum(axis=2) == 0).sum())
        warnings.warn(
            f"route: the Adam ascent diverged in {diverged} of {B} group(s) (objective below its start; "
            f"{dropped} of {B * T} tokens dropped): lower lr (now {lr:g})", RuntimeWarning, stacklevel=2)
    dispatch = plan > 0
    weights = np.where(dispatch, sim, 0.0) if combine == "gates" else plan
    err_tok = np.abs(plan.sum(axis=2) - 1.0).sum(axis=1)
    err_exp = np.abs(plan.sum(axis=1) - T / E).sum(axis=1)

    def shape(arr, tail):
        return arr.reshape(batch_shape + tail)

    return RoutingResult(
        dispatch=shape(dispatch, (T, E)),
        combine=shape(weights.astype(dtype), (T, E)),
        plan=shape(plan.astype(dtype), (T, E)),
        expert_load=shape(dispatch.sum(axis=1), (E,)),
        token_load=shape(dispatch.sum(axis=2), (T,)),
        marginal_error_tokens=shape(err_tok, ()),
        marginal_error_experts=shape(err_exp, ()),
        value=shape(values, ()),
        capacity=capacity,
        mode=mode,
    )
