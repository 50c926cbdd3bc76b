"""Sinkhorn against POT, closed forms and its own invariants."""
import warnings

import numpy as np
import ot
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otsolve


def _cloud_problem(rng, n=60, m=45, d=2, weights=True):
    x, y = rng.random((n, d)), rng.random((m, d))
    C = ot.dist(x, y)
    if weights:
        a, b = rng.random(n) + 0.2, rng.random(m) + 0.2
        a, b = a / a.sum(), b / b.sum()
    else:
        a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    return x, y, C, a, b


@pytest.mark.parametrize("eps", [0.5, 0.05, 0.01])
@pytest.mark.parametrize("mode", ["log", "scaling"])
def test_plan_and_cost_match_pot(rng, eps, mode):
    _, _, C, a, b = _cloud_problem(rng)
    P_pot = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", numItermax=100000, stopThr=1e-14)
    res = otsolve.Sinkhorn(tol=1e-11, mode=mode)(otsolve.LinearProblem(C, a, b, epsilon=eps))
    assert res.converged and res.marginal_error <= 1e-11
    np.testing.assert_allclose(res.plan, P_pot, atol=1e-9 * P_pot.max() + 1e-13)
    assert res.cost == pytest.approx(ot.sinkhorn2(a, b, C, eps, method="sinkhorn_log", numItermax=100000,
                                                  stopThr=1e-14), rel=1e-8)


def test_value_is_primal_objective_and_dual_value(rng):
    _, _, C, a, b = _cloud_problem(rng)
    eps = 0.03
    res = otsolve.solve(a, b, C, epsilon=eps)
    P = res.plan
    primal = (P * C).sum() + eps * (P * np.log(P)).sum()
    dual = a @ res.f + b @ res.g - eps * P.sum()
    assert res.value == pytest.approx(primal, rel=1e-9)
    assert res.value == pytest.approx(dual, rel=1e-7)


def test_potentials_in_cost_units_match_pot_log_u(rng):
    _, _, C, a, b = _cloud_problem(rng)
    eps = 0.05
    _, log = ot.sinkhorn(a, b, C, eps, method="sinkhorn_log", log=True, stopThr=1e-14, numItermax=10**5)
    res = otsolve.solve(a, b, C, epsilon=eps, tol=1e-12)
    # POT: P = exp(log_u_i - C_ij/eps + log_v_j) ; otsolve: P = exp((f_i + g_j - C_ij)/eps - 1)
    s_pot = log["log_u"][:, None] + log["log_v"][None, :]
    s_ots = (res.f[:, None] + res.g[None, :]) / eps - 1.0
    np.testing.assert_allclose(s_ots, s_pot, atol=1e-7)


@pytest.mark.parametrize("eps", [1e-3, 3e-4])
def test_small_eps_approaches_exact_ot(rng, eps):
    _, _, C, a, b = _cloud_problem(rng, 40, 40)
    C = C / C.max()
    emd = ot.emd2(a, b, C)
    res = otsolve.Sinkhorn(epsilon_scaling=True)(otsolve.LinearProblem(C, a, b, epsilon=eps))
    assert res.converged
    assert np.isfinite(res.plan).all()
    # entropic cost is within O(eps log n) of the exact cost
    assert abs(res.cost - emd) <= 5 * eps * np.log(40 * 40)


def test_eps_1e4_float64_and_1e3_float32_stable(rng):
    x, y, C, a, b = _cloud_problem(rng, 50, 50, weights=False)
    C = C / C.max()
    # Sinkhorn's linear rate degrades like exp(-gap/eps): ask for a tolerance it reaches in budget
    res = otsolve.Sinkhorn(epsilon_scaling=True, tol=1e-4, max_iter=50000)(otsolve.LinearProblem(C, epsilon=1e-4))
    assert res.converged and np.isfinite(res.f).all() and np.isfinite(res.plan).all()
    assert res.cost == pytest.approx(ot.emd2(np.full(50, 0.02), np.full(50, 0.02), C), abs=1e-3)
    C32 = C.astype(np.float32)
    r32 = otsolve.Sinkhorn(epsilon_scaling=True)(otsolve.LinearProblem(C32, epsilon=1e-3))
    assert r32.converged and r32.f.dtype == np.float32 and r32.plan.dtype == np.float32
    assert np.isfinite(r32.plan).all()
    # the float64 reference is itself converged, far below float32's tolerance
    r64 = otsolve.Sinkhorn(epsilon_scaling=True, tol=1e-12, max_iter=100_000)(otsolve.LinearProblem(C, epsilon=1e-3))
    assert r64.converged and r64.marginal_error <= 1e-12
    # float32: plan within the float32 tolerance (1e-6 in L1) of the reference, cost to ~1e-6
    assert np.abs(r32.plan.astype(np.float64) - r64.plan).sum() <= 1e-5
    assert r32.cost == pytest.approx(r64.cost, rel=1e-5)


def test_no_underflow_without_scaling_at_tiny_eps(rng):
    # exp(-C/eps) underflows everywhere: kernel-domain Sinkhorn (POT) breaks, log-domain must not
    _, _, C, a, b = _cloud_problem(rng, 30, 30)
    C = C / C.max()
    res = otsolve.Sinkhorn(max_iter=200000)(otsolve.LinearProblem(C, a, b, epsilon=1e-3))
    assert res.converged and np.isfinite(res.f).all()


def test_pointcloud_equals_dense(rng):
    x, y, C, a, b = _cloud_problem(rng)
    r1 = otsolve.solve(a, b, C, epsilon=0.02)
    r2 = otsolve.solve(a, b, otsolve.PointCloud(x, y), epsilon=0.02)
    np.testing.assert_allclose(r2.plan, r1.plan, atol=1e-12)
    assert r2.cost == pytest.approx(r1.cost, rel=1e-10)


@pytest.mark.parametrize("cost", ["euclidean", "half_sqeuclidean", "cityblock"])
def test_pointcloud_costs(rng, cost):
    x, y = rng.random((30, 3)), rng.random((20, 3))
    metric = {"euclidean": "euclidean", "half_sqeuclidean": "sqeuclidean", "cityblock": "cityblock"}[cost]
    C = ot.dist(x, y, metric=metric) * (0.5 if cost == "half_sqeuclidean" else 1.0)
    r1 = otsolve.solve(None, None, C, epsilon=0.05)
    r2 = otsolve.solve(None, None, otsolve.PointCloud(x, y, cost=cost), epsilon=0.05)
    assert r2.cost == pytest.approx(r1.cost, rel=1e-9)


def test_scale_cost_max(rng):
    x, y, C, a, b = _cloud_problem(rng)
    g1 = otsolve.Geometry(C, scale_cost="max")
    g2 = otsolve.PointCloud(x, y, scale_cost="max")
    assert g1.cost_matrix.max() == pytest.approx(1.0)
    np.testing.assert_allclose(g2.cost_matrix, g1.cost_matrix, rtol=1e-10)


def test_warm_start_from_result_converges_immediately(rng):
    _, _, C, a, b = _cloud_problem(rng)
    prob = otsolve.LinearProblem(C, a, b, epsilon=0.01)
    res = otsolve.Sinkhorn()(prob)
    again = otsolve.Sinkhorn()(prob, init=res)
    assert again.converged and again.n_iter == 0
    again2 = otsolve.Sinkhorn()(prob, init=(res.f, res.g))
    assert again2.n_iter == 0


def test_warm_start_from_neighbouring_eps_saves_iterations(rng):
    _, _, C, a, b = _cloud_problem(rng)
    cold = otsolve.solve(a, b, C, epsilon=0.01, omega=1.0)
    near = otsolve.solve(a, b, C, epsilon=0.011, omega=1.0)
    warm = otsolve.solve(a, b, C, epsilon=0.01, init=near, omega=1.0)
    assert warm.converged and warm.n_iter < cold.n_iter


def test_max_iter_reports_non_convergence(rng):
    _, _, C, a, b = _cloud_problem(rng)
    with pytest.warns(RuntimeWarning, match="max_iter"):
        res = otsolve.Sinkhorn(max_iter=3)(otsolve.LinearProblem(C, a, b, epsilon=1e-3))
    assert not res.converged and res.status == "max_iter" and res.n_iter == 3
    # the reported error is the returned plan's, recomputed here, and it is above tol
    P = res.plan
    actual = np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum()
    assert np.isfinite(res.marginal_error) and res.marginal_error == pytest.approx(actual, rel=1e-9)
    assert res.marginal_error > 1e-9


def test_over_relaxation_same_answer_fewer_iterations(rng):
    _, _, C, a, b = _cloud_problem(rng, 80, 80)
    C = C / C.max()
    prob = otsolve.LinearProblem(C, a, b, epsilon=0.005)
    plain = otsolve.Sinkhorn(omega=1.0)(prob)
    fast = otsolve.Sinkhorn()(prob)
    fixed = otsolve.Sinkhorn(omega=1.5)(prob)
    for r in (fast, fixed):
        assert r.converged
        np.testing.assert_allclose(r.plan, plain.plan, atol=1e-9)
    assert fast.n_iter < plain.n_iter


def test_compiled_and_reference_solvers_agree(rng):
    _, _, C, a, b = _cloud_problem(rng, 30, 25)
    prob = otsolve.LinearProblem(C, a, b, epsilon=0.02)
    r1 = otsolve.Sinkhorn(compiled=True, omega=1.0)(prob)
    r2 = otsolve.Sinkhorn(compiled=False, omega=1.0)(prob)
    assert r1.n_iter == r2.n_iter
    np.testing.assert_allclose(r1.f, r2.f, rtol=1e-10, atol=1e-12)


def test_zero_weights_allowed(rng):
    _, _, C, a, b = _cloud_problem(rng, 20, 15)
    a[3] = 0.0
    a /= a.sum()
    res = otsolve.solve(a, b, C, epsilon=0.05)
    assert res.converged
    assert np.all(res.plan[3] == 0)
    np.testing.assert_allclose(res.plan.sum(0), b, atol=1e-9)


def test_pot_compatible_shortcut(rng):
    _, _, C, a, b = _cloud_problem(rng)
    P = otsolve.sinkhorn(a, b, C, 0.05, stopThr=1e-12, numItermax=10000)
    P_pot = ot.sinkhorn(a, b, C, 0.05, stopThr=1e-12, numItermax=10000)
    np.testing.assert_allclose(P, P_pot, atol=1e-10)
    P2, log = otsolve.sinkhorn([], [], C, 0.05, log=True)
    K = np.exp(-C / 0.05)
    np.testing.assert_allclose(log["u"][:, None] * K * log["v"][None, :], P2, rtol=1e-8, atol=1e-15)
    assert otsolve.sinkhorn2(a, b, C, 0.05, stopThr=1e-12) == pytest.approx(ot.sinkhorn2(a, b, C, 0.05, stopThr=1e-12), rel=1e-7)


def test_float32_kept(rng):
    _, _, C, a, b = _cloud_problem(rng)
    res = otsolve.solve(a.astype(np.float32), b.astype(np.float32), C.astype(np.float32), epsilon=0.05)
    assert res.f.dtype == np.float32 and res.plan.dtype == np.float32 and res.converged


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), m=st.integers(1, 12), seed=st.integers(0, 10**6),
       eps=st.sampled_from([1.0, 0.1, 0.02]))
def test_property_marginals_hold_at_convergence(n, m, seed, eps):
    r = np.random.default_rng(seed)
    C = r.random((n, m))
    a, b = r.random(n) + 0.05, r.random(m) + 0.05
    a, b = a / a.sum(), b / b.sum()
    res = otsolve.Sinkhorn(tol=1e-10, max_iter=100000)(otsolve.LinearProblem(C, a, b, epsilon=eps))
    assert res.converged
    P = res.plan
    assert np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum() <= 1e-10 * 1.01
    assert abs(res.marginal_error - (np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())) < 1e-12


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10**6), shift_scale=st.floats(0.1, 50.0))
def test_property_invariance_to_row_and_column_constants(seed, shift_scale):
    r = np.random.default_rng(seed)
    n, m = 9, 7
    C = r.random((n, m))
    a, b = np.full(n, 1 / n), np.full(m, 1 / m)
    u, v = r.standard_normal(n) * shift_scale, r.standard_normal(m) * shift_scale
    p1 = otsolve.solve(a, b, C, epsilon=0.1, tol=1e-12)
    p2 = otsolve.solve(a, b, C + u[:, None] + v[None, :], epsilon=0.1, tol=1e-12)
    np.testing.assert_allclose(p2.plan, p1.plan, atol=1e-9)
    # potentials shift by the constants (up to the gauge f + t, g - t)
    df, dg = p2.f - p1.f - u, p2.g - p1.g - v
    assert np.ptp(df) < 1e-6 * (1 + shift_scale) and np.ptp(dg) < 1e-6 * (1 + shift_scale)
    assert abs(df[0] + dg[0]) < 1e-6 * (1 + shift_scale)


def test_repr_is_readable(rng):
    _, _, C, a, b = _cloud_problem(rng, 10, 10)
    text = repr(otsolve.solve(a, b, C, epsilon=0.1))
    for key in ("converged", "n_iter", "marginal_error", "cost", "method"):
        assert key in text


def test_no_warning_when_converged(rng):
    _, _, C, a, b = _cloud_problem(rng, 10, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        otsolve.solve(a, b, C, epsilon=0.1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pointcloud_stored_kernel_matches_on_the_fly(rng, dtype):
    """Point clouds: "auto" materialises the cost and iterates on the stored kernel when it fits;
    the on-the-fly log sweeps ("log", or a zero memory budget) reach the same solution."""
    x, y = rng.random((150, 3)).astype(dtype), rng.random((120, 3)).astype(dtype)
    prob = otsolve.LinearProblem(otsolve.PointCloud(x, y), epsilon=0.01)
    tol = 1e-9 if dtype == np.float64 else 1e-6
    stored = otsolve.Sinkhorn(tol=tol)(prob)
    fly = otsolve.Sinkhorn(tol=tol, mode="log")(prob)
    budget0 = otsolve.Sinkhorn(tol=tol, kernel_memory=0)(prob)
    assert stored.converged and fly.converged and budget0.converged
    assert budget0.n_iter == fly.n_iter
    atol = 1e-9 if dtype == np.float64 else 1e-6
    np.testing.assert_allclose(stored.plan, fly.plan, atol=atol)
    np.testing.assert_allclose(stored.cost, fly.cost, rtol=1e-7 if dtype == np.float64 else 1e-4)


@pytest.mark.parametrize("bad", [-1, float("nan"), "4GB", None, True])
def test_kernel_memory_is_validated(bad):
    with pytest.raises(ValueError, match="kernel_memory"):
        otsolve.Sinkhorn(kernel_memory=bad)


@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("kind", ["pointcloud", "dense"])
def test_symmetric_batch_matches_alternating_updates(rng, compiled, kind):
    """OT(a, a) with symmetric=True (one potential, averaged updates) gives the solution of the
    plain alternating solve, in far fewer iterations; C++ and NumPy reference agree."""
    x = rng.standard_normal((2, 60, 2))
    a = rng.random((2, 60)) + 0.1
    a /= a.sum(1, keepdims=True)
    if kind == "dense":
        C = ((x[:, :, None] - x[:, None]) ** 2).sum(-1)
        sym = otsolve.BatchedLinearProblem(C, a, None, 0.5, symmetric=True)
        plain = otsolve.BatchedLinearProblem(C, a, a, 0.5)
    else:
        sym = otsolve.BatchedLinearProblem(None, a, None, 0.5, x=x, symmetric=True)
        plain = otsolve.BatchedLinearProblem(None, a, a, 0.5, x=x)
    rs = otsolve.Sinkhorn(tol=1e-9, compiled=compiled)(sym)
    rp = otsolve.Sinkhorn(tol=1e-9, compiled=compiled)(plain)
    assert rs.converged and rp.converged
    np.testing.assert_array_equal(rs.f, rs.g)
    np.testing.assert_allclose(rs.values, rp.values, rtol=1e-8)
    np.testing.assert_allclose(rs.plan, rp.plan, atol=1e-9)
    assert rs.marginal_errors.max() <= 1e-9
    assert rs.n_iter_each.max() < rp.n_iter_each.min()


def test_symmetric_kernel_matches_reference(rng):
    from otsolve.kernels import get_sinkhorn_kernels

    x = rng.standard_normal((40, 3))
    C = ((x[:, None] - x[None]) ** 2).sum(-1)
    la = np.log(np.full(40, 1 / 40))
    out = []
    for compiled in (True, False):
        f = np.zeros(40)
        it, st, errs = get_sinkhorn_kernels(compiled).symmetric_dense(C, la, f, 0.1, 7, 0.0, 1)
        out.append((it, st, np.asarray(errs), f))
    assert out[0][:2] == out[1][:2] == (7, 1)
    np.testing.assert_allclose(out[0][2], out[1][2], rtol=1e-10)
    np.testing.assert_allclose(out[0][3], out[1][3], rtol=1e-12, atol=1e-12)


def test_symmetric_validation(rng):
    x = rng.random((1, 5, 2))
    with pytest.raises(ValueError, match="symmetric"):
        otsolve.BatchedLinearProblem(None, None, None, 0.1, x=x, y=rng.random((1, 5, 2)), symmetric=True)
    with pytest.raises(ValueError, match="symmetric"):
        otsolve.BatchedLinearProblem(rng.random((1, 5, 5)), None, None, 0.1, symmetric=True)


def test_value_tol_stops_on_the_value(rng):
    """value_tol: the value is within value_tol of the tight solve's, with fewer iterations."""
    x, y = rng.random((1, 80, 2)), rng.random((1, 70, 2)) + 0.3
    prob = otsolve.BatchedLinearProblem(None, None, None, 0.01, x=x, y=y)
    tight = otsolve.Sinkhorn(tol=1e-10, epsilon_scaling=0.5)(prob)
    loose = otsolve.Sinkhorn(tol=1e-10, epsilon_scaling=0.5, value_tol=1e-6)(prob)
    assert loose.converged and tight.converged

    def dual(r):
        P = r.plan[0]
        return r.f[0].mean() + r.g[0].mean() - 0.01 * P.sum()

    assert abs(dual(loose) - dual(tight)) <= 1e-6
    assert loose.n_iter < tight.n_iter
    with pytest.raises(ValueError, match="value_tol"):
        otsolve.Sinkhorn(value_tol=-1.0)
