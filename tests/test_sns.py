"""Sinkhorn-Newton-Sparse: kernels vs NumPy reference, derivatives, optimum vs Sinkhorn, edge cases."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otsolve
from otsolve.kernels import sns_reference as ref
from otsolve.backends.sns_kernels import _HostSystem as _System
from otsolve.backends.sns_kernels import get_sns_kernels
from otsolve.solvers.sns import SinkhornNewtonSparse

COMPILED = get_sns_kernels(True)
HAVE_COMPILED = COMPILED is not ref
needs_compiled = pytest.mark.skipif(not HAVE_COMPILED, reason="otsolve._ext_sns not built")


def form(K, S, C, x, y, eps):
    """The Newton system of the plan of (x, y) into S."""
    n, m = C.shape
    return K.sns_form_system(C, x, y, np.zeros(n), np.zeros(m), 0.0, eps, S.row, S.col, S.kidx, S.kval,
                             S.tptr, S.tidx, S.tval, 1)


def random_problem(rng, n, m, scale=1.0):
    C = rng.random((n, m)) * scale
    a = rng.random(n) + 0.1
    b = rng.random(m) + 0.1
    return C, a / a.sum(), b / b.sum()


def sinkhorn_reference(C, a, b, eps, tol=1e-13):
    prob = otsolve.LinearProblem(C, a, b, epsilon=eps)
    return otsolve.Sinkhorn(tol=tol, max_iter=200_000, n_threads=1)(prob)


def potentials_near_optimum(rng, n, m, eps):
    C, a, b = random_problem(rng, n, m)
    res = otsolve.Sinkhorn(tol=1e-3, max_iter=50, warn=False, n_threads=1)(
        otsolve.LinearProblem(C, a, b, epsilon=eps))
    return C, a, b, np.asarray(res.f, float), np.asarray(res.g, float)


def form_both(C, x, y, dx, dy, alpha, eps, k):
    n, m = C.shape
    out = []
    for K in (ref, COMPILED):
        S = _System(n, m, k)
        res = K.sns_form_system(C, x, y, dx, dy, alpha, eps, S.row, S.col, S.kidx, S.kval, S.tptr,
                                S.tidx, S.tval, 1)
        out.append((res, S))
    return out


def dense_from_system(S, n, m):
    """The sparsified system matrix as a dense (n + m) square matrix."""
    Pt = np.zeros((n, m))
    np.put_along_axis(Pt, S.kidx, S.kval, axis=1)
    M = np.zeros((n + m, n + m))
    M[:n, :n] = np.diag(S.row)
    M[n:, n:] = np.diag(S.col)
    M[:n, n:] = Pt
    M[n:, :n] = Pt.T
    return M


def dual_value(C, a, b, x, y, eps):
    P = np.exp((x[:, None] + y[None, :] - C) / eps - 1.0)
    return -eps * P.sum() + a @ x + b @ y


# ---------------------------------------------------------------------------------------------
# kernels vs NumPy reference
# ---------------------------------------------------------------------------------------------
@needs_compiled
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("k", [1, 3, 10, 37])
def test_form_system_matches_reference(rng, dtype, k):
    n, m, eps = 41, 37, 0.05
    C, a, b, x, y = potentials_near_optimum(rng, n, m, eps)
    C = C.astype(dtype)
    dx, dy = rng.normal(size=n) * eps, rng.normal(size=m) * eps
    (r0, S0), (r1, S1) = form_both(C, x, y, dx, dy, 0.7, eps, k)
    np.testing.assert_allclose(r1[0], r0[0], rtol=1e-13)  # mass
    np.testing.assert_allclose(r1[1], r0[1], rtol=1e-13)  # largest exponent
    np.testing.assert_allclose(r1[2], r0[2], rtol=1e-13)  # kept mass
    np.testing.assert_allclose(S1.row, S0.row, rtol=1e-13)
    np.testing.assert_allclose(S1.col, S0.col, rtol=1e-13)
    np.testing.assert_array_equal(S1.kidx, S0.kidx)
    np.testing.assert_allclose(S1.kval, S0.kval, rtol=1e-13)
    np.testing.assert_array_equal(S1.tptr, S0.tptr)
    np.testing.assert_array_equal(S1.tidx, S0.tidx)
    np.testing.assert_allclose(S1.tval, S0.tval, rtol=1e-13)
    # the kept entries are the k largest of each row of the plan
    P = np.exp((x[:, None] + 0.7 * dx[:, None] + y + 0.7 * dy - C.astype(float)) / eps - 1)
    kth = np.sort(P, axis=1)[:, -k]
    assert np.all(S1.kval >= kth[:, None] * (1 - 1e-12))
    np.testing.assert_allclose(S1.row, P.sum(1), rtol=1e-12)


@needs_compiled
def test_form_system_ties_pick_smaller_columns():
    # duplicated columns and constant rows: exact ties in the exponents
    C = np.tile(np.array([[0.0, 0.0, 1.0, 0.0, 1.0, 0.0]]), (5, 1))
    x, y, z5, z6 = np.zeros(5), np.zeros(6), np.zeros(5), np.zeros(6)
    (_, S0), (_, S1) = form_both(C, x, y, z5, z6, 0.0, 0.5, 3)
    np.testing.assert_array_equal(S1.kidx, S0.kidx)
    np.testing.assert_array_equal(S1.kidx, np.tile([0, 1, 3], (5, 1)))


@needs_compiled
@pytest.mark.parametrize("K", [ref, COMPILED], ids=["reference", "compiled"])
def test_overflowing_trial_is_rejected(K, rng):
    C = rng.random((6, 5))
    row, col = np.empty(6), np.empty(5)
    x, y = np.zeros(6), np.zeros(5)
    mass, lmax = K.sns_line_eval(C, x, y, np.full(6, 10.0), np.zeros(5), 1.0, 0.01, row, col, 1)
    assert mass == np.inf and lmax > ref.OVERFLOW_EXPONENT
    mass, lmax = K.sns_line_eval(C, x, y, np.full(6, 10.0), np.zeros(5), 0.0, 0.01, row, col, 1)
    assert np.isfinite(mass) and lmax < 0
    np.testing.assert_allclose(row, np.exp(-C / 0.01 - 1).sum(1), rtol=1e-13)


@needs_compiled
def test_line_eval_matches_reference(rng):
    C, a, b, x, y = potentials_near_optimum(rng, 30, 20, 0.1)
    dx, dy = rng.normal(size=30) * 0.1, rng.normal(size=20) * 0.1
    outs = []
    for K in (ref, COMPILED):
        row, col = np.empty(30), np.empty(20)
        outs.append((K.sns_line_eval(C, x, y, dx, dy, 0.3, 0.1, row, col, 1), row, col))
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-13)
    np.testing.assert_allclose(outs[1][1], outs[0][1], rtol=1e-13)
    np.testing.assert_allclose(outs[1][2], outs[0][2], rtol=1e-13)


@needs_compiled
@pytest.mark.parametrize("k", [2, 8])
def test_matvec_and_pcg_match_reference_and_dense(rng, k):
    n, m, eps = 30, 25, 0.05
    C, a, b, x, y = potentials_near_optimum(rng, n, m, eps)
    S = _System(n, m, k)
    form(COMPILED, S, C, x, y, eps)
    M = dense_from_system(S, n, m)
    v = rng.normal(size=n + m)
    out0, out1 = np.empty(n + m), np.empty(n + m)
    ref.sns_matvec(*S.arrays(), v, out0)
    COMPILED.sns_matvec(*S.arrays(), v, out1, 1)
    np.testing.assert_allclose(out0, M @ v, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(out1, M @ v, rtol=1e-12, atol=1e-15)
    # M~ is symmetric positive definite (exact diagonal dominates the kept block)
    np.testing.assert_array_equal(M, M.T)
    assert np.linalg.eigvalsh(M).min() > 0
    rhs = eps * np.concatenate([a - S.row, b - S.col])
    z0, z1 = np.zeros(n + m), np.zeros(n + m)
    it0, res0 = ref.sns_pcg(*S.arrays(), rhs, z0, 1e-12, 500)
    it1, res1 = COMPILED.sns_pcg(*S.arrays(), rhs, z1, 1e-12, 500, 1)
    assert it0 == it1 and res1 <= 1e-12 and res0 <= 1e-12
    # the gauge-projected system: Pi M Pi z = Pi rhs with z orthogonal to (1, -1)
    v = np.concatenate([np.ones(n), -np.ones(m)]) / np.sqrt(n + m)
    Pi = np.eye(n + m) - np.outer(v, v)
    z_exact = np.linalg.pinv(Pi @ M @ Pi, rcond=1e-13) @ (Pi @ rhs)
    assert abs(z1 @ v) < 1e-12 * np.linalg.norm(z1)
    np.testing.assert_allclose(z1, z_exact, rtol=1e-7, atol=1e-10 * np.abs(z_exact).max())
    np.testing.assert_allclose(z1, z0, rtol=1e-9, atol=1e-14)


@needs_compiled
def test_kernels_reject_bad_shapes():
    S = _System(4, 3, 2)
    C = np.zeros((4, 3))
    with pytest.raises(ValueError, match="length"):
        COMPILED.sns_form_system(C, np.zeros(5), np.zeros(3), np.zeros(4), np.zeros(3), 1.0, 0.1,
                                 S.row, S.col, S.kidx, S.kval, S.tptr, S.tidx, S.tval)
    S.kidx[:] = 7  # out of range: must not be read
    S.tptr[:] = 0
    with pytest.raises(ValueError, match="out of range"):
        COMPILED.sns_matvec(*S.arrays(), np.zeros(7), np.zeros(7))


# ---------------------------------------------------------------------------------------------
# derivatives (the Hessian sign) and the gauge direction
# ---------------------------------------------------------------------------------------------
def test_gradient_and_hessian_against_finite_differences(rng):
    n, m, eps = 6, 5, 0.3
    C, a, b = random_problem(rng, n, m)
    x, y = rng.normal(size=n) * 0.1, rng.normal(size=m) * 0.1
    S = _System(n, m, m)  # k = m: the exact Hessian
    form(ref, S, C, x, y, eps)
    grad = np.concatenate([a - S.row, b - S.col])
    H = -dense_from_system(S, n, m) / eps
    z = np.concatenate([x, y])

    def F(v):
        return dual_value(C, a, b, v[:n], v[n:], eps)

    def G(v):
        P = np.exp((v[:n, None] + v[None, n:] - C) / eps - 1.0)
        return np.concatenate([a - P.sum(1), b - P.sum(0)])

    h = 1e-6
    fd_grad = np.array([(F(z + h * e) - F(z - h * e)) / (2 * h) for e in np.eye(n + m)])
    np.testing.assert_allclose(grad, fd_grad, rtol=1e-6, atol=1e-9)
    fd_hess = np.array([(G(z + h * e) - G(z - h * e)) / (2 * h) for e in np.eye(n + m)]).T
    np.testing.assert_allclose(H, fd_hess, rtol=1e-5, atol=1e-8)
    assert np.linalg.eigvalsh(H).max() <= 1e-12  # concave
    # null direction (1, -1) of the exact Hessian, orthogonal to the gradient for equal masses
    null = np.concatenate([np.ones(n), -np.ones(m)])
    np.testing.assert_allclose(H @ null, 0.0, atol=1e-12)
    assert abs(grad @ null) < 1e-12
    # Newton direction solves (eta M) dz = grad and is an ascent direction
    dz = np.linalg.lstsq(-H, grad, rcond=None)[0]
    assert grad @ dz > 0


# ---------------------------------------------------------------------------------------------
# same optimum as Sinkhorn
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [0.2, 0.02, 0.005])
@pytest.mark.parametrize("shape", [(60, 60), (50, 80)])
def test_same_optimum_as_sinkhorn(rng, eps, shape):
    C, a, b = random_problem(rng, *shape)
    prob = otsolve.LinearProblem(C, a, b, epsilon=eps)
    res = SinkhornNewtonSparse(tol=1e-11, n_sinkhorn=10, auto_switch=False)(prob)
    sk = sinkhorn_reference(C, a, b, eps)
    assert res.converged and res.marginal_error <= 1e-10
    assert res.n_newton > 0
    np.testing.assert_allclose(res.plan, sk.plan, atol=1e-11)
    shift = np.mean(res.f - sk.f)  # potentials agree up to the gauge (f + t, g - t)
    np.testing.assert_allclose(res.f - shift, sk.f, atol=1e-9 * max(1.0, eps))
    np.testing.assert_allclose(res.g + shift, sk.g, atol=1e-9 * max(1.0, eps))
    np.testing.assert_allclose(res.cost, sk.cost, rtol=1e-9)
    np.testing.assert_allclose(res.value, sk.value, rtol=1e-9, atol=1e-12)
    # strong duality: the primal value equals the dual (Lyapunov) value at the optimum
    f64, g64 = np.asarray(res.f, float), np.asarray(res.g, float)
    np.testing.assert_allclose(dual_value(C, a, b, f64, g64, eps), res.value, rtol=1e-9, atol=1e-12)


def test_matches_pot_log_sinkhorn(rng):
    ot = pytest.importorskip("ot")
    C, a, b = random_problem(rng, 40, 30)
    res = otsolve.solve(a, b, C, epsilon=0.01, method="sns", tol=1e-11)
    P = ot.sinkhorn(a, b, C, 0.01, method="sinkhorn_log", stopThr=1e-13, numItermax=100_000)
    np.testing.assert_allclose(res.plan, P, atol=1e-9)


def test_random_assignment_regression():
    """Spec §8: n = 500, eta = 1200, k_row = 10: err <= 1e-12 within 15 Newton steps."""
    rng = np.random.default_rng(0)
    n = 500
    C = rng.random((n, n))
    prob = otsolve.LinearProblem(C, epsilon=1 / 1200)
    res = SinkhornNewtonSparse(tol=1e-12)(prob)
    assert res.converged and res.marginal_error <= 1e-12
    assert res.n_sinkhorn == 20 and res.n_newton <= 15
    assert res.fallbacks == [] and res.nnz_per_row == 10
    assert len(res.cg_iterations) == res.n_newton
    assert len(res.kept_mass) == res.n_newton
    assert all(0 < k <= 1 for k in res.kept_mass)  # fraction of the plan's mass kept
    # errors decrease over the Newton stage and end at the reported error
    newton = res.errors[-res.n_newton - 1:]
    assert newton[-1] <= 1e-12 and newton[0] > 1e-3


@pytest.mark.parametrize("opts", [dict(n_sinkhorn=0), dict(n_sinkhorn=100), dict(k_row=3),
                                  dict(k_row=30), dict(density=0.02)])
def test_ablations_converge(opts):
    """Spec §8 ablations on random assignment (n = 500, eta = 1200): N1 in {0, 100}, k_row in {3, 30}."""
    rng = np.random.default_rng(1)
    C = rng.random((500, 500))
    prob = otsolve.LinearProblem(C, epsilon=1 / 1200)
    res = SinkhornNewtonSparse(tol=1e-10, max_iter=60, auto_switch=False, adaptive_k=False,
                               **opts)(prob)
    assert res.converged and res.marginal_error <= 1e-10 and res.fallbacks == []
    assert np.all(np.isfinite(res.f)) and np.all(np.isfinite(res.g))
    if "density" in opts:
        assert res.nnz_per_row == 10  # ceil(0.02 * 500)


def test_large_epsilon_stays_in_sinkhorn_stage(rng):
    C = rng.random((200, 200))
    res = SinkhornNewtonSparse(tol=1e-9)(otsolve.LinearProblem(C, epsilon=1 / 100))
    assert res.converged and res.n_newton == 0


def test_float32_kept(rng):
    C, a, b = random_problem(rng, 30, 40)
    prob = otsolve.LinearProblem(C.astype(np.float32), a.astype(np.float32), b.astype(np.float32),
                                 epsilon=0.02)
    res = SinkhornNewtonSparse(n_sinkhorn=5, auto_switch=False)(prob)
    assert res.f.dtype == np.float32 and res.g.dtype == np.float32 and res.plan.dtype == np.float32
    assert res.converged and res.marginal_error <= 1e-6


@needs_compiled
def test_compiled_and_reference_paths_agree(rng):
    C, a, b = random_problem(rng, 50, 40)
    prob = otsolve.LinearProblem(C, a, b, epsilon=0.01)
    r1 = SinkhornNewtonSparse(tol=1e-11, n_sinkhorn=10, auto_switch=False)(prob)
    r0 = SinkhornNewtonSparse(tol=1e-11, n_sinkhorn=10, auto_switch=False, compiled=False)(prob)
    assert r1.n_newton == r0.n_newton
    np.testing.assert_allclose(r1.plan, r0.plan, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# degenerate inputs
# ---------------------------------------------------------------------------------------------
def test_duplicate_points_and_cost_ties(rng):
    pts = rng.random((20, 2))
    x = np.concatenate([pts, pts[:10]])  # duplicated points: identical rows of C
    y = np.concatenate([pts[5:], pts[5:]])
    geom = otsolve.PointCloud(x, y)
    prob = otsolve.LinearProblem(geom, epsilon=0.005)
    res = SinkhornNewtonSparse(tol=1e-11, n_sinkhorn=5, auto_switch=False)(prob)
    sk = sinkhorn_reference(geom.cost_matrix, prob.a, prob.b, 0.005)
    assert res.converged and res.n_newton > 0
    np.testing.assert_allclose(res.plan, sk.plan, atol=1e-11)
    # integer costs: many exact ties
    Ci = rng.integers(0, 3, size=(25, 25)).astype(float)
    res = otsolve.solve(None, None, Ci, epsilon=0.05, method="sns", tol=1e-11, n_sinkhorn=3,
                        auto_switch=False)
    sk = sinkhorn_reference(Ci, None, None, 0.05)
    assert res.converged
    np.testing.assert_allclose(res.plan, sk.plan, atol=1e-11)


def test_zero_mass_entries(rng):
    C, a, b = random_problem(rng, 12, 10)
    a[[0, 5]] = 0.0
    b[3] = 0.0
    a, b = a / a.sum(), b / b.sum()
    res = otsolve.solve(a, b, C, epsilon=0.01, method="sns", tol=1e-11, n_sinkhorn=5,
                        auto_switch=False)
    assert res.converged
    assert np.all(res.f[[0, 5]] == -np.inf) and res.g[3] == -np.inf
    assert np.all(np.isfinite(np.delete(res.f, [0, 5])))
    P = res.plan
    assert not np.isnan(P).any() and np.all(P[[0, 5]] == 0) and np.all(P[:, 3] == 0)
    np.testing.assert_allclose(P, sinkhorn_reference(C, a, b, 0.01).plan, atol=1e-11)


def test_warm_start_that_overflows_falls_back(rng):
    C, a, b = random_problem(rng, 20, 20)
    prob = otsolve.LinearProblem(C, a, b, epsilon=0.01)
    res = SinkhornNewtonSparse(tol=1e-10, n_sinkhorn=0)(prob, init=(np.full(20, 50.0), np.zeros(20)))
    assert res.converged and res.fallbacks and "overflows" in res.fallbacks[0]


def test_failed_newton_falls_back_and_never_worse_than_sinkhorn_stage():
    rng = np.random.default_rng(3)
    C = rng.random((120, 120))
    prob = otsolve.LinearProblem(C, epsilon=1 / 2000)
    # one CG iteration per step and one kept entry per row: poor directions
    solver = SinkhornNewtonSparse(tol=1e-12, n_sinkhorn=20, auto_switch=False, k_row=1,
                                  cg_maxiter=1, max_iter=12, warn=False)
    res = solver(prob)
    stage1 = res.errors[20]  # error after the 20 warm-up iterations
    assert np.isfinite(res.marginal_error) and res.marginal_error <= stage1 * (1 + 1e-9)
    assert np.all(np.isfinite(res.f)) and np.all(np.isfinite(res.g))
    assert not np.isnan(res.plan).any()
    if not res.converged:
        assert res.status in ("max_iter", "fallback_exhausted")
    with pytest.warns(RuntimeWarning, match="SinkhornNewtonSparse"):
        SinkhornNewtonSparse(tol=1e-14, max_iter=1, n_sinkhorn=2, auto_switch=False)(prob)


# ---------------------------------------------------------------------------------------------
# interface
# ---------------------------------------------------------------------------------------------
def test_registry_and_export(rng):
    assert otsolve.SinkhornNewtonSparse is SinkhornNewtonSparse
    assert "sns" in otsolve.available_methods()
    C, a, b = random_problem(rng, 15, 12)
    res = otsolve.solve(a, b, C, epsilon=0.05, method="sns")
    assert isinstance(res, otsolve.OTResult) and res.method == "sns" and res.converged
    for key in ("n_sinkhorn", "n_newton", "cg_iterations", "nnz_per_row", "fallbacks"):
        assert key in res.keys()
    assert res.n_iter == res.n_sinkhorn + res.n_newton


@pytest.mark.parametrize("opts, match", [
    (dict(tol=-1.0), "tol"), (dict(k_row=0), "k_row"), (dict(density=1.5), "density"),
    (dict(n_sinkhorn=-1), "n_sinkhorn"), (dict(cg_rtol=0.0), "cg_rtol"),
    (dict(max_iter=2.5), "max_iter"), (dict(switch_tol=float("nan")), "switch_tol"),
    (dict(cg_maxiter=0), "cg_maxiter"), (dict(max_fallbacks=0), "max_fallbacks"),
    (dict(max_memory=float("inf")), "max_memory"), (dict(n_threads=-1), "n_threads"),
])
def test_bad_options(opts, match):
    with pytest.raises(ValueError, match=match):
        SinkhornNewtonSparse(**opts)


def test_bad_input(rng):
    C = rng.random((5, 4))
    with pytest.raises(ValueError, match="epsilon"):
        SinkhornNewtonSparse()(otsolve.LinearProblem(C))
    with pytest.raises(ValueError, match="LinearProblem"):
        SinkhornNewtonSparse()(C)
    with pytest.raises(ValueError, match="masses"):
        otsolve.solve(np.full(5, 0.2), np.full(4, 0.3), C, epsilon=0.1, method="sns")
    with pytest.raises(ValueError, match="bad option"):
        otsolve.solve(None, None, C, epsilon=0.1, method="sns", k_rows=3)
    with pytest.raises(ValueError, match="init"):
        SinkhornNewtonSparse()(otsolve.LinearProblem(C, epsilon=0.1), init=(np.zeros(3), np.zeros(4)))


# ---------------------------------------------------------------------------------------------
# property test
# ---------------------------------------------------------------------------------------------
@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 12), m=st.integers(2, 12), log_eps=st.floats(-2.5, 0.0),
       seed=st.integers(0, 2**31 - 1), k=st.integers(1, 12))
def test_property_matches_sinkhorn(n, m, log_eps, seed, k):
    rng = np.random.default_rng(seed)
    C, a, b = random_problem(rng, n, m)
    eps = 10.0**log_eps
    prob = otsolve.LinearProblem(C, a, b, epsilon=eps)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # must converge
        res = SinkhornNewtonSparse(tol=1e-10, n_sinkhorn=2, auto_switch=False, k_row=min(k, m))(prob)
    assert res.marginal_error <= 1e-10
    np.testing.assert_allclose(res.plan, sinkhorn_reference(C, a, b, eps).plan, atol=1e-9)


def test_dense_plan_gets_denser_hessian(rng):
    """Large eps with one kept entry per row: slow linear Newton -> k_row is doubled, converges."""
    C, a, b = random_problem(rng, 30, 30)
    prob = otsolve.LinearProblem(C, a, b, epsilon=1.0)
    res = SinkhornNewtonSparse(tol=1e-11, n_sinkhorn=2, auto_switch=False, k_row=1, max_iter=40)(prob)
    assert res.converged and res.nnz_per_row > 1
    assert any("slow convergence" in f for f in res.fallbacks)
    np.testing.assert_allclose(res.plan, sinkhorn_reference(C, a, b, 1.0).plan, atol=1e-12)


def test_diffuse_plan_switches_to_sinkhorn(rng):
    """W2 between random 2-D clouds at eps = 0.01: top-10 per row hold < 90 % of the mass, so the
    automatic switch runs over-relaxed Sinkhorn first (and says so); same optimum."""
    geom = otsolve.PointCloud(rng.random((150, 2)), rng.random((150, 2)))
    prob = otsolve.LinearProblem(geom, epsilon=0.01)
    res = SinkhornNewtonSparse(tol=1e-10)(prob)
    assert res.converged and res.fallbacks and res.fallbacks[0].startswith("dense plan")
    sk = sinkhorn_reference(geom.cost_matrix, None, None, 0.01)
    np.testing.assert_allclose(res.plan, sk.plan, atol=1e-10)
    # without the automatic switch, Newton with a densified Hessian gets there too
    res2 = SinkhornNewtonSparse(tol=1e-10, auto_switch=False, max_iter=60)(prob)
    assert res2.converged and res2.n_newton > 0
    np.testing.assert_allclose(res2.plan, sk.plan, atol=1e-10)


def test_direct_newton_solve_solves_the_sparsified_system(rng):
    from otsolve.backends.sns_kernels import direct_newton_solve

    n, m, k = 30, 40, 6
    kidx = np.array([rng.choice(m, k, replace=False) for _ in range(n)])
    kval = rng.random((n, k))
    row = kval.sum(1) + rng.random(n)  # dropped mass keeps M~ nonsingular up to the gauge
    col = np.bincount(kidx.ravel(), kval.ravel(), minlength=m) + rng.random(m)
    M = np.zeros((n + m, n + m))
    M[np.arange(n), np.arange(n)], M[n + np.arange(m), n + np.arange(m)] = row, col
    for i in range(n):
        M[i, n + kidx[i]] = M[n + kidx[i], i] = kval[i]
    rhs = rng.normal(size=n + m)
    v = np.r_[np.ones(n), -np.ones(m)]
    Pi = np.eye(n + m) - np.outer(v, v) / (n + m)
    z = direct_newton_solve(row, col, kidx, kval, rhs)
    # the system projected CG solves: Pi M~ Pi z = Pi rhs with z orthogonal to the gauge v
    assert z is not None and abs(z @ v) < 1e-9
    np.testing.assert_allclose(Pi @ M @ Pi @ z, Pi @ rhs, atol=1e-9)
    tptr, tidx, tval = np.empty(m + 1, dtype=np.int64), np.empty(n * k, dtype=np.int64), np.empty(n * k)
    ref._transpose(kidx, kval, m, tptr, tidx, tval)
    zc = np.zeros(n + m)
    ref.sns_pcg(row, col, kidx, kval, tptr, tidx, tval, rhs, zc, 1e-13, 10000)
    np.testing.assert_allclose(z, zc, atol=1e-8)


@pytest.mark.parametrize("seed", [3, 4])
def test_near_permutation_small_n_converges(seed):
    """n = 120, eta = 1200: the plan is nearly a permutation and Jacobi-PCG stalls on the
    sparsified Hessian; the direct fallback keeps Newton converging (plain Sinkhorn needs
    > 200,000 iterations here)."""
    rng = np.random.default_rng(seed)
    n = 120
    C = rng.random((n, n))
    res = otsolve.SinkhornNewtonSparse(tol=1e-9)(otsolve.LinearProblem(C, epsilon=1 / 1200))
    assert res.converged and res.direct_solves >= 1 and res.n_newton <= 40
    P = res.plan
    assert np.abs(P.sum(1) - 1 / n).sum() + np.abs(P.sum(0) - 1 / n).sum() <= 1e-9


# ---------------------------------------------------------------------------------------------
# fail fast, memory, the contract of `converged` (issue 14)
# ---------------------------------------------------------------------------------------------
def test_hopeless_epsilon_fails_fast_and_says_why():
    """300 x 200 squared distances at eps = 1e-6 (5.6e-7 x the cost range): every Newton step
    fails. SNS used to run 100 of them with Sinkhorn blocks in between (24-65 s); now it stops
    after 3 fallbacks in a row, says why and what to use instead."""
    rng = np.random.default_rng(0)
    geom = otsolve.PointCloud(rng.random((300, 2)), rng.random((200, 2)))
    prob = otsolve.LinearProblem(geom, epsilon=1e-6)
    with pytest.warns(RuntimeWarning, match="epsilon_scaling=True"):
        res = SinkhornNewtonSparse(max_fallbacks=3)(prob)
    assert not res.converged and res.status == "newton_failed"
    assert "too small for Newton steps" in res.message and "cost range" in res.message
    # 3 fallbacks in a row (2 Sinkhorn blocks between them), not 100 Newton steps
    assert len(res.fallbacks) == 2 and res.n_sinkhorn <= 60 and res.n_newton <= 30
    # the default patience (10) gives up too, and converges where eps is small but not hopeless
    with pytest.warns(RuntimeWarning, match="epsilon_scaling=True"):
        assert SinkhornNewtonSparse()(prob).status == "newton_failed"
    ok = SinkhornNewtonSparse()(otsolve.LinearProblem(geom, epsilon=1e-4))
    assert ok.converged and ok.marginal_error <= 1e-9
    # with more patience it keeps trying (and here still does not get there in 40 steps)
    res2 = SinkhornNewtonSparse(max_fallbacks=100, max_iter=40, warn=False)(prob)
    assert res2.status == "max_iter" and len(res2.fallbacks) > 2
    # what is returned is the best iterate met, and its error is measured from scratch
    assert np.isfinite(res.marginal_error) and res.marginal_error <= min(res.errors) * (1 + 1e-9)
    P = res.plan
    assert abs(res.marginal_error - (np.abs(P.sum(1) - prob.a).sum() + np.abs(P.sum(0) - prob.b).sum())) < 1e-9


def test_failure_count_resets_only_on_newton_progress():
    """The fail-fast rule counts fallbacks in a row; a Newton step that reaches a new smallest
    error resets it, a Sinkhorn block that lowers the error only if it halves it."""
    from otsolve.solvers.sns import NewtonState

    x, y = np.zeros(3), np.zeros(2)
    st = NewtonState(3, 2, x, y)
    st.observe(1.0, 0, x, y)
    st.failures = 2
    st.observe(0.5, 1, x, y, after_newton_step=False)  # new best after a Sinkhorn block
    assert st.failures == 2 and st.best[0] == 0.5
    st.observe(0.7, 2, x, y, after_newton_step=True)  # Newton step, no new best
    assert st.failures == 2
    st.observe(0.1, 3, x, y, after_newton_step=True)  # Newton progress
    assert st.failures == 0 and st.best[0] == 0.1
    # fallbacks: counted in a row unless the smallest error halves between them
    assert st.fallback() == 1
    st.observe(0.09, 4, x, y)
    assert st.fallback() == 2
    st.observe(0.04, 5, x, y)  # e.g. the Sinkhorn block in between more than halved the error
    assert st.fallback() == 1
    st.observe(0.035, 6, x, y)
    assert st.fallback() == 2 and st.fallback() == 3


def test_memory_that_cannot_fit_is_refused_before_allocating(monkeypatch):
    """A 30,000-point cloud would need a 6.7 GiB dense cost for the Newton stage: refused with
    the figures (bytes needed, the limit), before anything large is allocated."""
    from otsolve._validation import InsufficientMemoryError
    import otsolve.backends.sns_kernels as sk

    rng = np.random.default_rng(0)
    geom = otsolve.PointCloud(rng.random((30_000, 2)))
    prob = otsolve.LinearProblem(geom, epsilon=1e-3)
    with pytest.raises(ValueError, match=r"needs about 6\.\d+ GiB \(7,2\d\d,\d{3},\d{3} bytes\).*max_memory is"):
        SinkhornNewtonSparse(max_memory=4e9)(prob)
    # default limit: the memory available now
    monkeypatch.setattr(sk, "available_memory", lambda: 2**30)
    with pytest.raises(InsufficientMemoryError, match=r"the available memory is 1 GiB"):
        SinkhornNewtonSparse()(prob)
    # a small problem fits, and its own budget is honoured too
    C = rng.random((60, 50))
    assert SinkhornNewtonSparse()(otsolve.LinearProblem(C, epsilon=0.05)).converged
    with pytest.raises(ValueError, match="max_memory"):
        SinkhornNewtonSparse(max_memory=1e3)(otsolve.LinearProblem(C, epsilon=0.05))
    with pytest.raises(ValueError, match="max_memory"):
        SinkhornNewtonSparse(max_memory=-1.0)


@pytest.mark.parametrize("opts", [dict(), dict(max_iter=1, n_sinkhorn=2, auto_switch=False),
                                  dict(tol=1e-13, max_iter=3)])
def test_converged_means_the_returned_plan_meets_tol(rng, opts):
    C, a, b = random_problem(rng, 80, 70)
    prob = otsolve.LinearProblem(C, a, b, epsilon=0.004)
    res = SinkhornNewtonSparse(warn=False, **opts)(prob)
    P = res.plan
    err = np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum()
    np.testing.assert_allclose(res.marginal_error, err, rtol=1e-6, atol=1e-15)
    assert res.converged == bool(np.isfinite(err) and err <= res.tol)
    assert res.converged == (res.status == "converged")


def test_zero_weights_on_a_point_cloud_materialise_only_the_support(rng):
    x, y = rng.random((40, 2)), rng.random((30, 2))
    a, b = np.full(40, 1 / 38), np.full(30, 1 / 29)
    a[[3, 17]] = 0
    b[5] = 0
    prob = otsolve.LinearProblem(otsolve.PointCloud(x, y), a, b, epsilon=0.002)
    res = SinkhornNewtonSparse(tol=1e-10, n_sinkhorn=5, auto_switch=False)(prob)
    ref = sinkhorn_reference(otsolve.PointCloud(x, y).cost_matrix, a, b, 0.002)
    assert res.converged and res.n_newton > 0 and np.isneginf(res.f[[3, 17]]).all()
    np.testing.assert_allclose(res.plan, ref.plan, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# the CUDA kernel set against the host kernels (on the CUDA emulator where there is no GPU)
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="class")
def cp():
    import os

    from otsolve.backends import cupy_available

    try:
        import cuda_emulator
    except ImportError:  # pragma: no cover - tests/ not on the path
        pytest.skip("tests/cuda_emulator not importable")
    if cupy_available() and os.environ.get("OTSOLVE_CUDA_EMULATOR", "") in ("", "0"):
        import cupy

        yield cupy
    elif cuda_emulator.available():
        with cuda_emulator.installed() as emulated:
            yield emulated
    else:  # pragma: no cover
        pytest.skip("no CUDA device, and the CUDA emulator needs x86-64 and g++")


@pytest.mark.gpu
class TestCudaKernelSet:
    """One driver, three kernel sets: the CUDA set must compute what the host set computes."""

    @pytest.mark.parametrize("cloud", [False, True])
    def test_kernels_match_host(self, cp, rng, cloud):
        from otsolve.backends.sns_kernels import CudaSNSKernels, HostSNSKernels

        n, m, eps, k = 45, 37, 0.02, 6
        x, y = rng.random((n, 2)), rng.random((m, 2))
        a, b = rng.random(n) + 0.2, rng.random(m) + 0.2
        a[[2, 30]] = 0
        a, b = a / a.sum(), b / b.sum()
        geom_h = otsolve.PointCloud(x, y) if cloud else otsolve.Geometry(otsolve.PointCloud(x, y).cost_matrix)
        prob_h = otsolve.LinearProblem(geom_h, a, b, epsilon=eps)
        prob_d = prob_h.to_namespace(cp)
        H = HostSNSKernels(prob_h, np.flatnonzero(a > 0), np.arange(m), eps)
        H.setup(0.0)
        D = CudaSNSKernels(prob_d, eps)
        D.setup(0.0)
        assert (H.n, H.m) == (D.n, D.m) == (n - 2, m)
        sk = otsolve.Sinkhorn(max_iter=5, warn=False)(prob_h)
        xs, ys = H.new_potentials(np.asarray(sk.f), np.asarray(sk.g))
        xd, yd = D.new_potentials(cp.asarray(sk.f), cp.asarray(sk.g))
        dx, dy = rng.normal(size=n - 2) * eps, rng.normal(size=m) * eps
        Sh, Sd = H.new_system(k), D.new_system(k)
        assert H.form(Sh, xs, ys, dx, dy, 0.3) and D.form(Sd, xd, yd, cp.asarray(dx), cp.asarray(dy), 0.3)
        H.sparsify(Sh)
        D.sparsify(Sd)
        np.testing.assert_allclose(Sd.row.get(), Sh.row, rtol=1e-12)
        np.testing.assert_allclose(Sd.col.get(), Sh.col, rtol=1e-12)
        np.testing.assert_allclose([Sd.mass, Sd.kept], [Sh.mass, Sh.kept], rtol=1e-12)
        idx = Sd.csr[1].get().reshape(n - 2, k)
        np.testing.assert_array_equal(np.sort(idx, 1), Sh.kidx)
        # projected Jacobi-PCG: same solution, orthogonal to the gauge direction (1, -1) on both
        rhs = eps * np.concatenate([H.a - Sh.row, H.b - Sh.col])
        zh, zd = np.zeros(n - 2 + m), cp.zeros(n - 2 + m)
        ith, resh = H.pcg(Sh, rhs, zh, 1e-12, 500)
        itd, resd = D.pcg(Sd, cp.asarray(rhs), zd, 1e-12, 500)
        assert resh <= 1e-12 and resd <= 1e-12 and abs(itd - ith) <= 10
        v = np.r_[np.ones(n - 2), -np.ones(m)]
        assert abs(zd.get() @ v) <= 1e-12 * np.abs(zd.get()).sum()
        np.testing.assert_allclose(zd.get(), zh, rtol=1e-8, atol=1e-10 * np.abs(zh).max())
        np.testing.assert_allclose(D.direct(Sd, cp.asarray(rhs)).get(), H.direct(Sh, rhs), rtol=1e-8,
                                   atol=1e-10 * np.abs(zh).max())
        # exact statistics for the result, and an overflowing trial is a rejection
        for got, want in zip(D.measure(xd, yd), H.measure(xs, ys)):
            np.testing.assert_allclose(got, want, rtol=1e-12)
        assert not D.form(Sd, xd, yd, cp.full(n - 2, 50.0), cp.zeros(m), 1.0)
        assert not H.form(Sh, xs, ys, np.full(n - 2, 50.0), np.zeros(m), 1.0)

    def test_same_iterates_as_the_host_driver(self, cp):
        """The driver is shared: on the same problem the GPU run takes the same path (up to CG
        stopping: the device reads its residual every 10 iterations, so it may solve a Newton
        system more accurately)."""
        rng = np.random.default_rng(5)
        C = rng.random((90, 70))
        prob = otsolve.LinearProblem(C, epsilon=1 / 400)
        ref = SinkhornNewtonSparse(tol=1e-10, n_sinkhorn=10, auto_switch=False)(prob)
        res = SinkhornNewtonSparse(tol=1e-10, n_sinkhorn=10, auto_switch=False)(prob.to_namespace(cp))
        assert ref.converged and res.converged and res.backend == "cupy" and ref.backend == "numpy"
        assert (res.n_sinkhorn, res.direct_solves) == (ref.n_sinkhorn, ref.direct_solves)
        assert abs(res.n_newton - ref.n_newton) <= 2 and res.fallbacks == ref.fallbacks == []
        np.testing.assert_allclose(res.errors[:11], ref.errors[:11], rtol=1e-9)  # the Sinkhorn stage
        np.testing.assert_allclose(res.plan.get(), ref.plan, atol=1e-10)
        # the NumPy reference on a CuPy problem: solved on the host, CuPy arrays back
        r0 = SinkhornNewtonSparse(tol=1e-10, n_sinkhorn=10, auto_switch=False, compiled=False)(prob.to_namespace(cp))
        assert r0.converged and isinstance(r0.f, cp.ndarray)
