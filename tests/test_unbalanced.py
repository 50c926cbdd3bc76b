"""Unbalanced OT (KL-relaxed marginals) in the core Sinkhorn driver, against POT and the
optimality conditions (issue #15)."""
from __future__ import annotations

import math
import warnings

import numpy as np
import ot
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otsolve
from otsolve.problems.marginals import damping, dual_value, marginal_target
from otsolve.solvers.exact import ExactOT

COMPILED = [False, True]


def _case(n=25, m=35, seed=0, mass_b=1.3, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 0.7
    C = (ot.dist(x, y) / 2).astype(dtype)
    a = rng.uniform(0.5, 1.5, n)
    b = rng.uniform(0.5, 1.5, m)
    return (a / a.sum()).astype(dtype), (mass_b * b / b.sum()).astype(dtype), C, x, y


def _objective(P, C, a, b, eps, rho_a, rho_b):
    """The unbalanced objective, written independently of otsolve.problems.marginals."""
    def kl(p, q):
        return float(np.sum(np.where(p > 0, p * np.log(p / q), 0.0) - p + q))
    val = float((P * C).sum()) + eps * kl(P, np.outer(a, b))
    if math.isfinite(rho_a):
        val += rho_a * kl(P.sum(1), a)
    if math.isfinite(rho_b):
        val += rho_b * kl(P.sum(0), b)
    return val


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("rho_a,rho_b", [(0.5, 0.5), (0.1, 2.0), (0.5, math.inf), (math.inf, 0.3)])
@pytest.mark.parametrize("scaling", [False, True])
def test_plan_matches_pot(compiled, rho_a, rho_b, scaling):
    a, b, C, _, _ = _case()
    eps = 0.05
    res = otsolve.Sinkhorn(tol=1e-11, compiled=compiled, epsilon_scaling=scaling)(
        otsolve.LinearProblem(C, a, b, epsilon=eps, rho_a=rho_a, rho_b=rho_b))
    assert res.converged
    ref = ot.unbalanced.sinkhorn_unbalanced(a, b, C, eps, (rho_a, rho_b), reg_type="kl", numItermax=200_000,
                                            stopThr=1e-15)
    np.testing.assert_allclose(res.plan, ref, atol=1e-10, rtol=1e-7)
    assert res.value == pytest.approx(_objective(ref, C, a, b, eps, rho_a, rho_b), rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("compiled", COMPILED)
def test_converged_means_returned_potentials_meet_the_optimality_conditions(compiled):
    a, b, C, _, _ = _case(seed=3)
    eps, rho_a, rho_b, tol = 0.02, 0.4, 0.8, 1e-8
    res = otsolve.Sinkhorn(tol=tol, compiled=compiled)(otsolve.LinearProblem(C, a, b, epsilon=eps, rho_a=rho_a,
                                                                            rho_b=rho_b))
    assert res.converged
    P = np.exp((res.f[:, None] + res.g[None, :] - C) / eps - 1)
    resid = (np.abs(P.sum(1) - marginal_target(a, res.f, eps, rho_a)).sum()
             + np.abs(P.sum(0) - marginal_target(b, res.g, eps, rho_b)).sum())
    assert resid <= tol
    assert res.marginal_error == pytest.approx(resid, rel=1e-6, abs=1e-14)
    # strong duality at the optimum: primal objective = dual value
    dual = dual_value(res.f, res.g, a, b, P.sum(), eps, rho_a, rho_b)
    assert res.value == pytest.approx(dual, rel=1e-7)


@pytest.mark.parametrize("compiled", COMPILED)
def test_large_rho_recovers_the_balanced_plan(compiled):
    a, b, C, _, _ = _case(n=10, m=12, mass_b=1.0)
    eps = 0.1
    bal = otsolve.Sinkhorn(tol=1e-10, compiled=compiled)(otsolve.LinearProblem(C, a, b, epsilon=eps))
    gaps = []
    for rho in (1.0, 100.0, 1000.0):
        unb = otsolve.Sinkhorn(tol=1e-10, compiled=compiled, max_iter=100_000)(
            otsolve.LinearProblem(C, a, b, epsilon=eps, rho_a=rho, rho_b=rho))
        assert unb.converged
        gaps.append(np.abs(unb.plan - bal.plan).max())
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-2 * bal.plan.max()


@pytest.mark.parametrize("compiled", COMPILED)
def test_float32_and_zero_weights(compiled):
    a, b, C, _, _ = _case(dtype=np.float32)
    a = a.copy()
    a[[2, 7]] = 0
    eps, rho = 0.05, 0.5
    res = otsolve.Sinkhorn(compiled=compiled)(otsolve.LinearProblem(C, a, b, epsilon=eps, rho_a=rho, rho_b=rho))
    assert res.converged and res.f.dtype == np.float32
    assert np.all(np.isneginf(res.f[[2, 7]]))
    # POT divides by zero on zero weights: the reference is the float64 NumPy-reference solve
    ref = otsolve.Sinkhorn(tol=1e-12, compiled=False)(otsolve.LinearProblem(
        C.astype(float), a.astype(float), b.astype(float), epsilon=eps, rho_a=rho, rho_b=rho))
    np.testing.assert_allclose(res.plan, ref.plan, atol=2e-6)
    assert np.all(ref.plan[[2, 7]] == 0)


@pytest.mark.parametrize("compiled", COMPILED)
def test_batch_is_the_B_gt_1_case(compiled):
    rng = np.random.default_rng(5)
    X, Y = rng.normal(size=(3, 20, 2)), rng.normal(size=(3, 24, 2)) + 0.5
    eps, rho = 0.05, 0.3
    a = rng.uniform(0.5, 1.5, (3, 20))
    res = otsolve.Sinkhorn(tol=1e-10, compiled=compiled)(
        otsolve.BatchedLinearProblem(x=X, y=Y, a=a, epsilon=eps, rho_a=rho, rho_b=rho, cost_fn="half_sqeuclidean"))
    assert res.converged
    for p in range(3):
        one = otsolve.Sinkhorn(tol=1e-10, compiled=compiled)(otsolve.LinearProblem(
            otsolve.PointCloud(X[p], Y[p], cost="half_sqeuclidean"), a[p], None, epsilon=eps, rho_a=rho,
            rho_b=rho))
        np.testing.assert_allclose(res.f[p], one.f, atol=1e-8)
        assert res.values[p] == pytest.approx(one.value, rel=1e-8)


@pytest.mark.parametrize("compiled", COMPILED)
def test_symmetric_batch_equals_the_general_solve(compiled):
    rng = np.random.default_rng(6)
    X = rng.normal(size=(2, 30, 3))
    a = rng.uniform(0.5, 1.5, (2, 30))
    eps, rho = 0.05, 0.5
    sym = otsolve.Sinkhorn(tol=1e-10, compiled=compiled)(otsolve.BatchedLinearProblem(
        x=X, a=a, epsilon=eps, symmetric=True, rho_a=rho, cost_fn="half_sqeuclidean"))
    gen = otsolve.Sinkhorn(tol=1e-10, compiled=compiled)(otsolve.BatchedLinearProblem(
        x=X, y=X.copy(), a=a, b=a, epsilon=eps, rho_a=rho, rho_b=rho, cost_fn="half_sqeuclidean"))
    assert sym.converged and gen.converged
    np.testing.assert_allclose(sym.f, gen.f, atol=1e-7)
    np.testing.assert_allclose(sym.values, gen.values, rtol=1e-8)
    assert sym.n_iter_each.max() < gen.n_iter_each.max()


def test_value_tol_and_warm_start():
    a, b, C, _, _ = _case(seed=9)
    prob = otsolve.LinearProblem(C, a, b, epsilon=0.02, rho_a=0.3, rho_b=0.3)
    ref = otsolve.Sinkhorn(tol=1e-12)(prob)
    loose = otsolve.Sinkhorn(value_tol=1e-7)(prob)
    assert loose.converged and abs(loose.value - ref.value) <= 1e-6
    warm = otsolve.Sinkhorn(tol=1e-12)(prob, init=ref)
    assert warm.converged and warm.n_iter <= 1


def test_solve_front_door_and_errors():
    a, b, C, _, _ = _case()
    res = otsolve.solve(a, b, C, epsilon=0.05, rho=(0.5, math.inf))
    prob = otsolve.LinearProblem(C, a, b, epsilon=0.05, rho_a=0.5)
    assert res.value == pytest.approx(otsolve.Sinkhorn()(prob).value, rel=1e-9)
    assert not prob.is_balanced and "rho_a" in repr(prob)
    for bad in (0.0, -1.0, float("nan"), "x"):
        with pytest.raises(ValueError, match="rho_a"):
            otsolve.LinearProblem(C, a, b, epsilon=0.05, rho_a=bad)
    with pytest.raises(ValueError, match="mass"):  # balanced problems still need equal masses
        otsolve.LinearProblem(C, a, b, epsilon=0.05)
    for solver in (otsolve.SinkhornNewtonSparse(), ExactOT(), otsolve.SparsityConstrainedOT(k=2, gamma=0.5)):
        with pytest.raises(ValueError, match="balanced problems only"):
            solver(prob)
    with pytest.raises(ValueError, match="rho_b"):
        otsolve.BatchedLinearProblem(x=np.zeros((1, 3, 2)), epsilon=0.1, rho_b=float("nan"))
    with pytest.raises(ValueError, match="rho applies to solve"):
        otsolve.solve(prob, rho=1.0)
    with pytest.raises(ValueError, match="rho_a"):
        otsolve.solve(a, b, C, epsilon=0.05, rho=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="rho_b must be omitted or equal"):
        otsolve.BatchedLinearProblem(x=np.zeros((1, 3, 2)), epsilon=0.1, symmetric=True, rho_a=1.0, rho_b=2.0)


def test_starved_solve_reports_non_convergence():
    a, b, C, _, _ = _case()
    with pytest.warns(RuntimeWarning):
        res = otsolve.Sinkhorn(tol=1e-12, max_iter=2)(otsolve.LinearProblem(C, a, b, epsilon=0.01, rho_a=1.0,
                                                                           rho_b=1.0))
    assert not res.converged and res.marginal_error > 1e-12


@pytest.mark.parametrize("compiled", COMPILED)
def test_translation_step_keeps_large_rho_fast(compiled):
    # without the translation-invariant step, rho = 1000 at eps = 0.1 needs ~10^5 iterations
    a, b, C, _, _ = _case(n=10, m=12, mass_b=1.0)
    res = otsolve.Sinkhorn(tol=1e-10, compiled=compiled)(otsolve.LinearProblem(C, a, b, epsilon=0.1, rho_a=1e3,
                                                                              rho_b=1e3))
    assert res.converged and res.n_iter < 1000


def test_damping_is_exactly_one_when_balanced():
    assert damping(0.3, math.inf) == 1.0
    assert damping(0.5, 0.5) == 0.5


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), m=st.integers(2, 12), seed=st.integers(0, 10_000),
       log_eps=st.floats(-2.5, 0.0), log_rho=st.floats(-2.0, 1.0), semi=st.booleans())
def test_property_converged_plans_satisfy_the_first_order_conditions(n, m, seed, log_eps, log_rho, semi):
    rng = np.random.default_rng(seed)
    C = rng.random((n, m))
    a, b = rng.random(n) + 0.05, 2.0 * (rng.random(m) + 0.05)
    eps, rho = 10.0 ** log_eps, 10.0 ** log_rho
    rho_b = math.inf if semi else rho
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = otsolve.Sinkhorn(tol=1e-9, max_iter=50_000, epsilon_scaling=True)(
            otsolve.LinearProblem(C, a, b, epsilon=eps, rho_a=rho, rho_b=rho_b))
    assert res.converged
    P = res.plan
    # first-order conditions in GeomLoss's potentials: P1 = a exp(-phi/rho), phi = f - eps log a - eps/2
    phi = res.f - eps * np.log(a) - eps / 2
    np.testing.assert_allclose(P.sum(1), a * np.exp(-phi / rho), atol=2e-9)
    if semi:
        np.testing.assert_allclose(P.sum(0), b, atol=2e-9)
