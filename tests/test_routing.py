"""MoE routing by sparsity-constrained OT (otsolve.route)."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otsolve
from otsolve.routing import RoutingResult, expert_capacity
from otsolve.solvers.sparsity_constrained import SparsityConstrainedOT


def _softmax(x):
    z = np.exp(x - x.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


@settings(max_examples=20, deadline=None)
@given(st.integers(1, 3), st.integers(4, 40), st.integers(2, 8), st.integers(1, 12),
       st.sampled_from(["experts_choose", "tokens_choose"]), st.integers(0, 10_000))
def test_capacity_and_exact_side(B, T, E, cap, mode, seed):
    scores = np.random.default_rng(seed).normal(size=(B, T, E))
    r = otsolve.route(scores, cap, mode=mode, num_steps=10)
    assert isinstance(r, RoutingResult)
    assert r.dispatch.shape == (B, T, E) and r.plan.shape == (B, T, E)
    np.testing.assert_array_equal(r.dispatch, r.plan > 0)
    np.testing.assert_array_equal(r.expert_load, r.dispatch.sum(1))
    np.testing.assert_array_equal(r.token_load, r.dispatch.sum(2))
    if mode == "experts_choose":
        assert r.expert_load.max() <= cap  # hard capacity per expert
        np.testing.assert_allclose(r.plan.sum(1), T / E, rtol=1e-12)  # expert masses exact
        assert np.all(r.marginal_error_experts < 1e-10)
    else:
        assert r.token_load.max() <= min(cap, E)
        np.testing.assert_allclose(r.plan.sum(2), 1.0, rtol=1e-12)  # every token sends mass 1
        assert np.all(r.marginal_error_tokens < 1e-10)
    np.testing.assert_allclose(r.marginal_error_tokens, np.abs(r.plan.sum(2) - 1).sum(1))
    np.testing.assert_allclose(r.marginal_error_experts, np.abs(r.plan.sum(1) - T / E).sum(1))
    # default combine weights: softmax gates on the dispatched positions
    np.testing.assert_allclose(r.combine, np.where(r.dispatch, _softmax(scores), 0.0))


@pytest.mark.parametrize("mode, axis", [("experts_choose", "col"), ("tokens_choose", "row")])
def test_route_equals_solver(rng, mode, axis):
    """route(optimizer='lbfgs') is the SCOT semi-dual on cost -softmax with masses 1 and T/E."""
    T, E, cap = 48, 6, 3 if mode == "tokens_choose" else 10
    scores = rng.normal(size=(T, E))
    r = otsolve.route(scores, cap, mode=mode, optimizer="lbfgs", num_steps=300, normalize="softmax")
    prob = otsolve.LinearProblem(-_softmax(scores), np.ones(T), np.full(E, T / E))
    res = SparsityConstrainedOT(k=cap, gamma=1.0, axis=axis, tol=1e-9, max_iter=300, warn=False)(prob)
    np.testing.assert_allclose(r.plan, res.plan, atol=1e-12)
    assert float(r.value) == pytest.approx(res.value, rel=1e-12)


def test_batching_is_per_group(rng):
    scores = rng.normal(size=(2, 3, 32, 4)).astype(np.float32)
    r = otsolve.route(scores, 9, combine="plan")
    assert r.plan.shape == (2, 3, 32, 4) and r.plan.dtype == np.float32 and r.combine.dtype == np.float32
    assert r.value.shape == (2, 3) and r.expert_load.shape == (2, 3, 4)
    single = otsolve.route(scores[1, 2], 9, combine="plan")
    np.testing.assert_allclose(r.plan[1, 2], single.plan, rtol=1e-6)
    np.testing.assert_array_equal(r.combine, r.plan)


def test_adam_steps_raise_the_objective(rng):
    scores = rng.normal(size=(64, 8))
    v = [float(otsolve.route(scores, 8, num_steps=s, lr=5e-2).value) for s in (1, 50, 200)]
    assert v[0] < v[1] < v[2]
    # more steps bring the token masses closer to 1
    e = [float(otsolve.route(scores, 8, num_steps=s, optimizer="lbfgs").marginal_error_tokens)
         for s in (1, 200)]
    assert e[1] < e[0]


def test_compiled_matches_reference(rng):
    scores = rng.normal(size=(2, 40, 5))
    r1 = otsolve.route(scores, 6, num_steps=15)
    r2 = otsolve.route(scores, 6, num_steps=15, compiled=False)
    np.testing.assert_allclose(r1.plan, r2.plan, atol=1e-12)


def test_similarity_input_and_identity(rng):
    """Capacity 1 per token with raw similarities: a token with one clear winner goes there."""
    T, E = 12, 3
    sim = np.zeros((T, E))
    sim[np.arange(T), np.arange(T) % E] = 1.0  # balanced, so the assignment is also feasible
    r = otsolve.route(sim, 1, mode="tokens_choose", normalize=None, optimizer="lbfgs", num_steps=200)
    np.testing.assert_array_equal(r.plan.argmax(1), np.arange(T) % E)
    assert r.token_load.max() == 1


def test_expert_capacity():
    assert expert_capacity(4096, 64, 2.0) == 128
    assert expert_capacity(4096, 64, 1.0) == 64
    assert expert_capacity(100, 8, 1.0) == 16  # ceil(12.5) = 13 -> multiple of 4
    assert expert_capacity(10, 2, 5.0) == 10  # capped at the number of tokens
    with pytest.raises(ValueError, match="capacity_factor"):
        expert_capacity(10, 2, 0.0)


@pytest.mark.parametrize(
    "args, kw, match",
    [
        ((np.zeros(5), 2), {}, "shape"),
        ((np.zeros((5, 2)), 0), {}, "capacity must be >= 1"),
        ((np.zeros((5, 2)), 1.5), {}, "capacity must be an integer"),
        ((np.full((5, 2), np.nan), 1), {}, "non-finite"),
        ((np.zeros((5, 2)), 1), {"mode": "random"}, "mode"),
        ((np.zeros((5, 2)), 1), {"gamma": 0.0}, "gamma"),
        ((np.zeros((5, 2)), 1), {"num_steps": 0}, "num_steps"),
        ((np.zeros((5, 2)), 1), {"optimizer": "sgd"}, "optimizer"),
        ((np.zeros((5, 2)), 1), {"normalize": "sigmoid"}, "normalize"),
        ((np.zeros((5, 2)), 1), {"combine": "max"}, "combine"),
        ((np.zeros((5, 2), dtype=complex), 1), {}, "real floating"),
    ],
)
def test_bad_input(args, kw, match):
    with pytest.raises(ValueError, match=match):
        otsolve.route(*args, **kw)
