"""Sparsity-constrained OT: operators, objectives, solver, against brute force and POT."""
from __future__ import annotations

import contextlib
import io
import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otsolve
from otsolve.kernels import topk
from otsolve.solvers.sparsity_constrained import ScotObjective, SparsityConstrainedOT

ot = pytest.importorskip("ot")
import ot.smooth  # noqa: E402


def _problem(rng, n, m, d=2):
    x, y = rng.random((n, d)), rng.random((m, d))
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    a = rng.random(n) + 0.2
    b = rng.random(m) + 0.2
    return C, a / a.sum(), b / b.sum()


def _gauss_1d(n=40):
    x = np.arange(n, dtype=float)
    a = ot.datasets.make_1D_gauss(n, m=0.2 * n, s=0.05 * n)
    b = ot.datasets.make_1D_gauss(n, m=0.6 * n, s=0.1 * n)
    M = (x[:, None] - x[None]) ** 2
    return M / M.max(), a, b


def _quiet(fn, *args, **kw):
    """POT's sparse simplex projection prints on every call: swallow it."""
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kw)


# ------------------------------------------------------------------------------------------
# Operators: numba vs reference vs brute force
# ------------------------------------------------------------------------------------------
def _brute_delta(s, k, gamma):
    """max over supports |S| <= k of max_{t >= 0 on S} <s,t> - gamma/2 |t|^2."""
    best = 0.0
    for r in range(1, min(k, s.size) + 1):
        for S in itertools.combinations(range(s.size), r):
            best = max(best, np.sum(np.maximum(s[list(S)], 0) ** 2) / (2 * gamma))
    return best


def _simplex_proj(v):
    u = np.sort(v)[::-1]
    css = np.cumsum(u) - 1
    rho = np.nonzero(u - css / np.arange(1, v.size + 1) > 0)[0][-1]
    return np.maximum(v - css[rho] / (rho + 1), 0)


def _brute_semi(x, bj, k, gamma):
    """max over supports S (|S| = min(k, n)) of max_{y in simplex on S} <y,x> - gamma b/2 |y|^2."""
    best, arg = -np.inf, None
    for S in itertools.combinations(range(x.size), min(k, x.size)):
        S = list(S)
        y = np.zeros_like(x)
        y[S] = _simplex_proj(x[S] / (gamma * bj))  # the exact maximizer on a fixed support
        val = y @ x - 0.5 * gamma * bj * y @ y
        if val > best + 1e-14:
            best, arg = val, y
    return best, arg


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 7), st.integers(1, 4), st.integers(1, 9), st.floats(0.05, 5.0),
       st.integers(0, 10_000))
def test_operators_match_brute_force(n, m, k, gamma, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, m))
    if seed % 3 == 0:  # ties at the k-th position
        X = np.round(X)
    b = rng.random(m) + 0.1
    for compiled in (True, False):
        val, G = topk.topk_relu_sq(X, k, gamma, compiled=compiled)
        vals, Gs = topk.sparse_simplex_max(X, b, k, gamma, compiled=compiled)
        for j in range(m):
            assert val[j] == pytest.approx(_brute_delta(X[:, j], k, gamma), rel=1e-12, abs=1e-14)
            assert np.count_nonzero(G[:, j]) <= k
            # the gradient is the maximizer: its value reproduces delta_k
            t = G[:, j]
            assert t @ X[:, j] - gamma / 2 * t @ t == pytest.approx(val[j], rel=1e-12, abs=1e-14)
            bv, _ = _brute_semi(X[:, j], b[j], k, gamma)
            assert vals[j] == pytest.approx(bv, rel=1e-11, abs=1e-12)
            y = Gs[:, j]
            assert np.count_nonzero(y) <= k and y.min() >= 0 and y.sum() == pytest.approx(1.0)
            assert y @ X[:, j] - gamma * b[j] / 2 * y @ y == pytest.approx(vals[j], rel=1e-11, abs=1e-12)


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 7), st.integers(1, 8), st.floats(0.1, 3.0), st.integers(0, 10_000))
def test_sparse_projection_brute_force(n, k, z, seed):
    v = np.random.default_rng(seed).normal(size=n)
    p = topk.projection_sparse_simplex(v, k, z=z)
    best = np.inf
    for S in itertools.combinations(range(n), min(k, n)):
        S = list(S)
        q = np.zeros(n)
        q[S] = z * _simplex_proj(v[S] / z)
        best = min(best, float(np.sum((q - v) ** 2)))
    assert np.sum((p - v) ** 2) == pytest.approx(best, rel=1e-12, abs=1e-14)
    assert p.sum() == pytest.approx(z) and np.count_nonzero(p) <= k and p.min() >= 0
    # POT's reference projection (it prints; swallowed)
    np.testing.assert_allclose(p, _quiet(ot.utils.projection_sparse_simplex, v, min(k, n), z), atol=1e-12)


def test_numba_kernels_match_reference_with_ties(rng):
    for n, m, k in [(9, 6, 1), (9, 6, 4), (9, 6, 9), (300, 20, 5), (300, 20, 40), (300, 20, 280)]:
        CT = np.round(rng.normal(size=(m, n)), 1)  # many exact ties
        alpha, beta, b = np.round(rng.normal(size=n), 1), rng.normal(size=m), rng.random(m) + 0.1
        b[0] = 0.0  # an empty column
        outs = []
        for K in (topk.get_topk_kernels(True), topk.get_topk_kernels(False)):
            idx, tv = np.empty((m, k), np.int64), np.empty((m, k))
            idx2, tv2, bo = np.empty((m, k), np.int64), np.empty((m, k)), np.empty(m)
            v1 = K.dual_columns(alpha, beta, CT, k, 0.3, idx, tv)
            v2 = K.semi_dual_columns(alpha, b, CT, k, 0.3, idx2, tv2, bo)
            outs.append((v1, idx, tv, v2, idx2, tv2, bo, K.scatter_rows(idx2, tv2, n)))
        for u, v in zip(*outs):
            if u.dtype.kind == "i":
                np.testing.assert_array_equal(u, v)  # same deterministic tie-breaking
            else:
                np.testing.assert_allclose(u, v, rtol=1e-12, atol=1e-12)
    # lowest index wins a tie
    _, G = topk.topk_relu_sq(np.array([[1.0], [2.0], [2.0], [2.0]]), 2, 1.0)
    np.testing.assert_array_equal(np.nonzero(G[:, 0])[0], [1, 2])


# ------------------------------------------------------------------------------------------
# Objectives: gradients, POT agreement, closed forms
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("formulation", ["dual", "semi_dual"])
@pytest.mark.parametrize("k", [1, 3, 12])
def test_objective_gradient_finite_differences(rng, formulation, k):
    C, a, b = _problem(rng, 12, 9)
    obj = ScotObjective(C, a, b, k, 0.2, formulation)
    x = rng.normal(scale=0.1, size=obj.size)
    _, g = obj.evaluate(x)
    h = 1e-6
    fd = np.array([(obj.evaluate(x + h * e)[0] - obj.evaluate(x - h * e)[0]) / (2 * h)
                   for e in np.eye(obj.size)])
    np.testing.assert_allclose(g, fd, atol=1e-6)


@pytest.mark.parametrize("k", [1, 2, 5, 13])
def test_objective_equals_pot(rng, k):
    C, a, b = _problem(rng, 14, 10)
    gamma = 0.3
    regul = ot.smooth.SparsityConstrained(max_nz=k, gamma=gamma)
    for _ in range(3):
        alpha, beta = rng.normal(scale=0.2, size=14), rng.normal(scale=0.2, size=10)
        v, g = ScotObjective(C, a, b, k, gamma, "dual").evaluate(np.concatenate([alpha, beta]))
        pv, pga, pgb = ot.smooth.dual_obj_grad(alpha, beta, a, b, C, regul)
        assert v == pytest.approx(pv, rel=1e-12)
        np.testing.assert_allclose(g, np.concatenate([pga, pgb]), atol=1e-12)
        v, g = ScotObjective(C, a, b, k, gamma, "semi_dual").evaluate(alpha)
        pv, pg = _quiet(ot.smooth.semi_dual_obj_grad, alpha, a, b, C, regul)
        assert v == pytest.approx(pv, rel=1e-12)
        np.testing.assert_allclose(g, pg, atol=1e-12)


@pytest.mark.parametrize("formulation", ["dual", "semi_dual"])
def test_solver_matches_pot_solver(formulation):
    """Smooth regime (k above the QOT column support): both solvers converge to one value."""
    C, a, b = _gauss_1d(40)
    gamma, k, tol = 1.0, 20, 1e-12
    res = SparsityConstrainedOT(k=k, gamma=gamma, formulation=formulation, tol=tol,
                                max_iter=3000)(otsolve.LinearProblem(C, a, b))
    regul = ot.smooth.SparsityConstrained(max_nz=k, gamma=gamma)
    if formulation == "dual":
        al, be, _ = ot.smooth.solve_dual(a, b, C, regul, tol=tol, max_iter=3000)
        pv = ot.smooth.dual_obj_grad(al, be, a, b, C, regul)[0]
    else:
        al, _ = _quiet(ot.smooth.solve_semi_dual, a, b, C, regul, tol=tol, max_iter=3000)
        pv = _quiet(ot.smooth.semi_dual_obj_grad, al, a, b, C, regul)[0]
    assert res.converged
    assert res.value == pytest.approx(pv, rel=1e-6)
    assert res.marginal_error < 1e-3


def test_k1_semi_dual_is_unregularized_ot(rng):
    """k = 1: S(alpha) = LP semi-dual + (gamma/2)|b|^2, maximal at the LP potentials."""
    for _ in range(4):
        C, a, b = _problem(rng, 9, 7)
        gamma = float(rng.uniform(0.05, 2.0))
        P, log = ot.emd(a, b, C, log=True)
        emd = float(np.sum(P * C))
        bound = emd + gamma / 2 * b @ b
        exact, _ = ScotObjective(C, a, b, 1, gamma, "semi_dual").evaluate(np.asarray(log["u"]))
        assert exact == pytest.approx(bound, rel=1e-10)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = SparsityConstrainedOT(k=1, gamma=gamma, tol=1e-14, max_iter=3000)(otsolve.LinearProblem(C, a, b))
        # weak duality always; L-BFGS on this piecewise-linear objective gets close, not exact
        assert res.value <= bound + 1e-12
        assert res.value - gamma / 2 * b @ b == pytest.approx(emd, rel=5e-2)
        assert res.plan_sparse.getnnz(axis=0).max() == 1
        np.testing.assert_allclose(np.asarray(res.plan_sparse.sum(0)).ravel(), b, atol=1e-14)


@pytest.mark.parametrize("formulation", ["dual", "semi_dual"])
def test_large_k_is_quadratic_ot(formulation, rng):
    C, a, b = _problem(rng, 25, 20)
    gamma = 0.5
    qot = ot.smooth.smooth_ot_dual(a, b, C, gamma, reg_type="l2", stopThr=1e-12, numItermax=5000, log=True)
    alpha, beta = qot[1]["alpha"], qot[1]["beta"]
    qval = ot.smooth.dual_obj_grad(alpha, beta, a, b, C, ot.smooth.SquaredL2(gamma=gamma))[0]
    for k in (25, 40):  # k >= n, even beyond (POT's sparsity-constrained dual crashes there)
        res = SparsityConstrainedOT(k=k, gamma=gamma, formulation=formulation, tol=1e-12,
                                    max_iter=5000)(otsolve.LinearProblem(C, a, b))
        assert res.value == pytest.approx(qval, rel=1e-6)
        np.testing.assert_allclose(res.plan, qot[0], atol=2e-4)
        # at a smooth optimum the primal value of the plan closes the duality gap
        assert res.primal_value == pytest.approx(res.value, rel=1e-4)


# ------------------------------------------------------------------------------------------
# Solver contract
# ------------------------------------------------------------------------------------------
@settings(max_examples=15, deadline=None)
@given(st.integers(2, 12), st.integers(2, 12), st.integers(1, 6), st.sampled_from(["dual", "semi_dual"]),
       st.sampled_from(["col", "row"]), st.integers(0, 10_000))
def test_plan_is_k_sparse_by_construction(n, m, k, formulation, axis, seed):
    C, a, b = _problem(np.random.default_rng(seed), n, m)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = SparsityConstrainedOT(k=k, gamma=0.1, formulation=formulation, axis=axis,
                                    max_iter=200)(otsolve.LinearProblem(C, a, b))
    P = res.plan_sparse
    assert P.shape == (n, m) and P.data.min() > 0
    nnz = P.getnnz(axis=0 if axis == "col" else 1)
    assert nnz.max() <= k
    np.testing.assert_allclose(res.plan, P.toarray())
    rows, cols = np.asarray(P.sum(1)).ravel(), np.asarray(P.sum(0)).ravel()
    assert res.marginal_error_a == pytest.approx(np.abs(rows - a).sum(), abs=1e-12)
    assert res.marginal_error_b == pytest.approx(np.abs(cols - b).sum(), abs=1e-12)
    assert res.marginal_error == pytest.approx(res.marginal_error_a + res.marginal_error_b)
    if formulation == "semi_dual":  # the unconstrained side's marginal is exact
        exact = cols - b if axis == "col" else rows - a
        assert np.abs(exact).max() < 1e-13
    # potentials reproduce the plan: T_ij = [f_i + g_j - C_ij]_+ / gamma on the support
    i, j = P.nonzero()
    np.testing.assert_allclose(np.asarray(P[i, j]).ravel(),
                               np.maximum(res.f[i] + res.g[j] - C[i, j], 0) / 0.1, rtol=1e-9, atol=1e-12)
    assert res.cost == pytest.approx(float(np.sum(P.toarray() * C)))
    # The returned plan minimises the Lagrangian at the returned potentials, so the dual value
    # equals L(T, f, g) = <C,T> + gamma/2 ||T||^2 + <f, a - T1> + <g, b - T^T 1> (weak duality
    # value <= primal value holds exactly when T is feasible; otherwise this identity is the check)
    lagrangian = res.primal_value + res.f @ (a - rows) + res.g @ (b - cols)
    assert res.value == pytest.approx(lagrangian, rel=1e-9, abs=1e-12)


def test_registry_solve_and_float32(rng):
    C, a, b = _problem(rng, 15, 12)
    res = otsolve.solve(a, b, C, method="sparsity_constrained", k=3, gamma=0.5)
    assert res.method == "sparsity_constrained" and res.plan_sparse.getnnz(axis=0).max() <= 3
    ref = SparsityConstrainedOT(k=3, gamma=0.5)(otsolve.LinearProblem(C, a, b))
    assert res.value == pytest.approx(ref.value, rel=1e-12)
    assert otsolve.SparsityConstrainedOT is SparsityConstrainedOT
    r32 = SparsityConstrainedOT(k=3, gamma=0.5)(otsolve.LinearProblem(C.astype(np.float32), a.astype(np.float32),
                                                                      b.astype(np.float32)))
    assert r32.f.dtype == np.float32 and r32.g.dtype == np.float32
    assert r32.plan.dtype == np.float32 and r32.plan_sparse.dtype == np.float32
    assert r32.value == pytest.approx(ref.value, rel=1e-4)


def test_compiled_and_reference_solvers_agree(rng):
    C, a, b = _problem(rng, 20, 15)
    prob = otsolve.LinearProblem(C, a, b)
    for form in ("dual", "semi_dual"):
        r1 = SparsityConstrainedOT(k=4, gamma=0.2, formulation=form, max_iter=50, warn=False)(prob)
        r2 = SparsityConstrainedOT(k=4, gamma=0.2, formulation=form, max_iter=50, warn=False, compiled=False)(prob)
        assert r1.value == pytest.approx(r2.value, rel=1e-10)
        np.testing.assert_allclose(r1.plan, r2.plan, atol=1e-10)


def test_not_converged_warns_and_warm_start(rng):
    C, a, b = _problem(rng, 30, 25)
    prob = otsolve.LinearProblem(C, a, b)
    with pytest.warns(RuntimeWarning, match="SparsityConstrainedOT"):
        res = SparsityConstrainedOT(k=30, gamma=1.0, max_iter=2)(prob)
    assert not res.converged and res.status == "max_iter"
    full = SparsityConstrainedOT(k=30, gamma=1.0, tol=1e-12, max_iter=2000)(prob)
    warm = SparsityConstrainedOT(k=30, gamma=1.0, tol=1e-12, max_iter=2000)(prob, init=full)
    assert full.converged and warm.n_iter < full.n_iter
    assert warm.value == pytest.approx(full.value, rel=1e-9)
    dual = SparsityConstrainedOT(k=30, gamma=1.0, formulation="dual", tol=1e-12, max_iter=3000)(prob, init=(full.f, full.g))
    assert dual.value == pytest.approx(full.value, rel=1e-6)


def test_adam_optimizer_improves(rng):
    C, a, b = _problem(rng, 20, 20)
    prob = otsolve.LinearProblem(C, a, b)
    r0 = SparsityConstrainedOT(k=3, gamma=1.0, optimizer="adam", max_iter=1, warn=False)(prob)
    r1 = SparsityConstrainedOT(k=3, gamma=1.0, optimizer="adam", max_iter=300, lr=1e-2, warn=False)(prob)
    assert r1.value > r0.value and r1.n_iter == 300


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(k=0, gamma=1.0), "k must be >= 1"),
        (dict(k=-2, gamma=1.0), "k must be >= 1"),
        (dict(k=2.0, gamma=1.0), "k must be an integer"),
        (dict(k="3", gamma=1.0), "k must be an integer"),
        (dict(k=True, gamma=1.0), "k must be an integer"),
        (dict(k=2, gamma=0.0), "gamma"),
        (dict(k=2, gamma=-1.0), "gamma"),
        (dict(k=2, gamma=float("nan")), "gamma"),
        (dict(k=2, gamma=1.0, formulation="primal"), "formulation"),
        (dict(k=2, gamma=1.0, axis=0), "axis"),
        (dict(k=2, gamma=1.0, optimizer="sgd"), "optimizer"),
        (dict(k=2, gamma=1.0, tol=0.0), "tol"),
        (dict(k=2, gamma=1.0, max_iter=0), "max_iter"),
    ],
)
def test_bad_parameters(kw, match):
    with pytest.raises(ValueError, match=match):
        SparsityConstrainedOT(**kw)


def test_bad_problem_input(rng):
    C, a, b = _problem(rng, 5, 4)
    with pytest.raises(ValueError, match="k must be >= 1"):
        otsolve.solve(a, b, C, method="sparsity_constrained", k=0, gamma=1.0)
    with pytest.raises(ValueError, match="negative"):
        otsolve.solve(-a, b, C, method="sparsity_constrained", k=1, gamma=1.0)
    with pytest.raises(ValueError, match="different total masses"):
        otsolve.solve(a, 2 * b, C, method="sparsity_constrained", k=1, gamma=1.0)
    with pytest.raises(ValueError, match="non-finite"):
        otsolve.solve(a, b, np.full((5, 4), np.nan), method="sparsity_constrained", k=1, gamma=1.0)
    with pytest.raises(ValueError, match="LinearProblem"):
        SparsityConstrainedOT(k=1, gamma=1.0)(C)
    with pytest.raises(ValueError, match="init"):
        SparsityConstrainedOT(k=1, gamma=1.0)(otsolve.LinearProblem(C, a, b), init=np.zeros(3))
