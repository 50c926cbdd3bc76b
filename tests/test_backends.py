"""CPU tests of the backends package: namespaces, the CUDA source loader, batched Sinkhorn."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import otsolve
from otsolve.backends import BatchedLinearProblem, BatchedSinkhorn, get_namespace, is_cupy, to_numpy
from otsolve.backends import cuda_kernels
from otsolve.backends.cupy_sinkhorn import Relaxation


class _FakeCupy:  # only its type's module matters to is_cupy / get_namespace
    pass


_FakeCupy.__module__ = "cupy._core.core"


def test_namespace_numpy_and_none():
    a = np.ones(3)
    assert get_namespace(a, None, 1.0, np.float32(2)) is np
    assert get_namespace() is np
    assert not is_cupy(a) and is_cupy(_FakeCupy())
    assert to_numpy([1, 2]).tolist() == [1, 2]


def test_namespace_mixed_raises():
    with pytest.raises(ValueError, match="mixed NumPy and CuPy"):
        get_namespace(np.ones(2), _FakeCupy())


def test_loader_finds_and_inlines_sources():
    d = cuda_kernels.source_dir()
    assert (d / "sinkhorn.cu").is_file() and (d / "sns.cu").is_file()
    for name in cuda_kernels.KERNELS:
        src = cuda_kernels.load_source(name)
        assert '#include "' not in src  # local headers pasted in (cache key covers them)
        assert "struct Lse" in src
        for kname, _ in cuda_kernels.KERNELS[name]:
            assert f"void {kname}(" in src
    assert cuda_kernels.ctype(np.float32) == "float" and cuda_kernels.ctype("float64") == "double"
    with pytest.raises(ValueError, match="float32 and float64"):
        cuda_kernels.ctype(np.int32)


def _clouds(rng, B, n, m, d=2):
    return rng.random((B, n, d)), rng.random((B, m, d))


def test_batched_matches_single_sinkhorn(rng):
    x, y = _clouds(rng, 4, 30, 40)
    eps = 0.05
    res = BatchedSinkhorn(tol=1e-11)(BatchedLinearProblem(x=x, y=y, epsilon=eps))
    assert res.converged and res.f.shape == (4, 30) and res.g.shape == (4, 40)
    P = res.plan
    for p in range(4):
        prob = otsolve.LinearProblem(otsolve.PointCloud(x[p], y[p]), epsilon=eps)
        ref = otsolve.Sinkhorn(tol=1e-11)(prob)
        np.testing.assert_allclose(P[p], ref.plan, atol=1e-10, rtol=1e-7)
        np.testing.assert_allclose(res.costs[p], ref.cost, rtol=1e-8)
        np.testing.assert_allclose(res.values[p], ref.value, rtol=1e-8, atol=1e-12)
        assert res.marginal_errors[p] <= 1e-11
    np.testing.assert_allclose(res.cost, res.costs.sum())


def test_batched_dense_cost_and_shared_weights(rng):
    C = rng.random((3, 20, 25))
    a = rng.random(20) + 0.1
    a /= a.sum()
    b = rng.random((3, 25)) + 0.1
    b /= b.sum(axis=1, keepdims=True)
    res = BatchedSinkhorn(tol=1e-10)(BatchedLinearProblem(C, a, b, epsilon=0.1))
    P = res.plan
    np.testing.assert_allclose(P.sum(axis=2), np.broadcast_to(a, (3, 20)), atol=1e-9)
    np.testing.assert_allclose(P.sum(axis=1), b, atol=1e-9)
    ref = otsolve.Sinkhorn(tol=1e-10)(otsolve.LinearProblem(C[1], a, b[1], epsilon=0.1))
    np.testing.assert_allclose(P[1], ref.plan, atol=1e-9)


def test_per_problem_convergence_freezes_finished_problems(rng):
    # problem 1 has a 3x larger cost (harder at the same epsilon): it needs more iterations
    C = rng.random((3, 25, 25))
    C[1] *= 3.0
    prob = BatchedLinearProblem(C, epsilon=0.1)
    res = BatchedSinkhorn(tol=1e-9)(prob)
    assert res.converged_each.all()
    assert res.n_iter_each[1] > res.n_iter_each[0] and res.n_iter_each[1] > res.n_iter_each[2]
    for p in range(3):  # a frozen problem did exactly the iterations it needs alone
        alone = BatchedSinkhorn(tol=1e-9)(BatchedLinearProblem(C[p : p + 1], epsilon=0.1))
        assert alone.n_iter_each[0] == res.n_iter_each[p]
        np.testing.assert_array_equal(alone.f[0], res.f[p])
        assert len(res.errors_each[p]) == res.n_iter_each[p] + 1


def test_batched_max_iter_reports_per_problem(rng):
    C = rng.random((2, 20, 20))
    C[1] *= 50.0
    with pytest.warns(RuntimeWarning, match="1 of 2 problems"):
        res = BatchedSinkhorn(tol=1e-9, max_iter=60)(BatchedLinearProblem(C, epsilon=0.1))
    assert res.converged_each.tolist() == [True, False]
    assert res.status_each.tolist() == ["converged", "max_iter"]
    assert not res.converged and res.status == "partial"
    assert res.n_iter_each[1] == 60 and res.n_iter_each[0] < 60


def test_batched_float32_kept_and_zero_weights(rng):
    x, y = _clouds(rng, 2, 15, 12)
    a = np.full(15, 1 / 14)
    a[3] = 0.0
    res = BatchedSinkhorn()(BatchedLinearProblem(x=x.astype(np.float32), y=y.astype(np.float32),
                                                 a=a.astype(np.float32), epsilon=0.1))
    assert res.f.dtype == np.float32 and res.g.dtype == np.float32
    assert np.isneginf(res.f[:, 3]).all()
    assert res.converged and (res.marginal_errors <= 1e-6).all()
    ref = otsolve.Sinkhorn()(otsolve.LinearProblem(otsolve.PointCloud(x[0], y[0]), a, None, epsilon=0.1))
    np.testing.assert_allclose(res.plan[0], ref.plan, atol=2e-6)


def test_batched_warm_start_and_validation(rng):
    C = rng.random((2, 10, 12))
    prob = BatchedLinearProblem(C, epsilon=0.2)
    res = BatchedSinkhorn(tol=1e-10)(prob)
    again = BatchedSinkhorn(tol=1e-10)(prob, init=res)
    assert again.n_iter_each.max() <= 1
    with pytest.raises(ValueError, match="shapes"):
        BatchedSinkhorn()(prob, init=(np.zeros((2, 9)), np.zeros((2, 12))))
    with pytest.raises(ValueError, match="3-D"):
        BatchedLinearProblem(C[0], epsilon=0.1)
    with pytest.raises(ValueError, match="either cost"):
        BatchedLinearProblem(C, x=C, epsilon=0.1)
    with pytest.raises(ValueError, match="different total masses in problem 1"):
        BatchedLinearProblem(C, a=np.ones((2, 10)) / 10, b=np.stack([np.ones(12) / 12, np.ones(12) / 6]),
                             epsilon=0.1)
    with pytest.raises(ValueError, match="negative"):
        BatchedLinearProblem(C, a=-np.ones(10) / 10, epsilon=0.1)
    with pytest.raises(ValueError, match="epsilon"):
        BatchedLinearProblem(C)
    with pytest.raises(ValueError, match="unknown cost_fn"):
        BatchedLinearProblem(x=C, cost_fn="cosine", epsilon=0.1)
    with pytest.raises(ValueError, match="non-finite"):
        BatchedLinearProblem(np.full((1, 2, 2), np.nan), epsilon=0.1)
    with pytest.raises(ValueError, match="max_iter"):
        BatchedSinkhorn(max_iter=-1)


@settings(max_examples=15, deadline=None)
@given(B=st.integers(1, 4), n=st.integers(2, 12), m=st.integers(2, 12), seed=st.integers(0, 2**31 - 1),
       eps=st.floats(0.05, 1.0))
def test_batched_marginals_property(B, n, m, seed, eps):
    rng = np.random.default_rng(seed)
    C = rng.random((B, n, m))
    a = rng.random((B, n)) + 0.05
    a /= a.sum(axis=1, keepdims=True)
    b = rng.random((B, m)) + 0.05
    b /= b.sum(axis=1, keepdims=True)
    res = BatchedSinkhorn(tol=1e-9)(BatchedLinearProblem(C, a, b, epsilon=eps))
    P = res.plan
    assert res.converged
    err = np.abs(P.sum(2) - a).sum(1) + np.abs(P.sum(1) - b).sum(1)
    assert (err <= 1e-9 * (1 + 1e-6)).all()
    np.testing.assert_allclose(err, res.marginal_errors, atol=1e-13)


def test_relaxation_rule():
    # the GPU path must choose omega exactly as the CPU kernels do
    from otsolve.kernels.reference import Relaxation as HostRelaxation

    assert issubclass(Relaxation, HostRelaxation)
    r = Relaxation(None)
    for k in range(12):
        r.observe(0.9**k)
    assert r.omega == pytest.approx(2 / (1 + np.sqrt(1 - 0.9)))
    r.observe(0.9**11 * 10.5)  # error grew past ten times the best: back to plain steps
    assert r.omega == 1.0
    fixed = Relaxation(1.5)
    fixed.observe(np.nan)
    assert fixed.omega == 1.5


def test_relaxed_column_error_formula(rng):
    # The column pass reports b_j |expm1((omega - 1)(g_sinkhorn - g_old)/eps)| as the column
    # error of the relaxed iterate: check it against the dense plan.
    n, m, eps, om = 6, 7, 0.3, 1.6
    C = rng.random((n, m))
    f, g = rng.normal(size=n) * 0.1, rng.normal(size=m) * 0.1
    b = np.full(m, 1 / m)
    from scipy.special import logsumexp
    g_sink = eps * (np.log(b) + 1 - logsumexp((f[:, None] - C) / eps, axis=0))
    g_new = g + om * (g_sink - g)
    col = np.exp((f[:, None] + g_new[None, :] - C) / eps - 1).sum(0)
    np.testing.assert_allclose(np.abs(col - b), b * np.abs(np.expm1((g_new - g_sink) / eps)), rtol=1e-12)


def test_gpu_modules_import_without_cupy():
    import importlib

    for mod in ("otsolve.backends.cupy_sinkhorn", "otsolve.backends.kernel_sets", "otsolve.problems.batched"):
        importlib.import_module(mod)


def test_batched_float32_settles_problems_stopped_just_above_tol():
    """The stopping test measures the rows; float32 column rounding can leave the exact error
    just above tol. Such problems get a few more iterations instead of a non-convergence."""
    import warnings

    rng = np.random.default_rng(12345)
    C = rng.random((16, 30, 40)).astype(np.float32)
    C[3] *= 3
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = BatchedSinkhorn(tol=1e-5)(BatchedLinearProblem(C, epsilon=0.1))
    assert res.converged and (res.marginal_errors <= 1e-5).all()
    assert res.n_iter_each.max() < 100


def test_batched_problem_matches_masses_and_refuses_overflowing_clouds():
    rng = np.random.default_rng(3)
    C = rng.random((3, 6, 5))
    b = np.full((3, 5), 0.2)
    b[1] *= 1 + 1e-8  # below rtol: rescaled (with a warning), so the solve can converge
    with pytest.warns(UserWarning, match="rescaled"):
        prob = BatchedLinearProblem(C, None, b, 0.1)
    np.testing.assert_allclose(prob.b.sum(1), 1.0, rtol=0, atol=1e-15)
    assert BatchedSinkhorn(tol=1e-12)(prob).converged
    with pytest.raises(ValueError, match="different total masses"):
        BatchedLinearProblem(C, None, 2 * b, 0.1)
    with pytest.raises(ValueError, match="overflow"):
        BatchedLinearProblem(x=rng.random((2, 4, 2)) * 1e200, epsilon=0.1)


def test_batched_init_must_be_finite_on_positive_weights():
    C = np.random.default_rng(4).random((2, 4, 3))
    prob = BatchedLinearProblem(C, epsilon=0.1)
    for bad in (np.inf, -np.inf, np.nan):
        f = np.zeros((2, 4))
        f[1, 2] = bad
        with pytest.raises(ValueError, match="init potentials"):
            BatchedSinkhorn()(prob, init=(f, np.zeros((2, 3))))
    a = np.full((2, 4), 0.25)
    a[:, 0] = [0, 0]
    a = a / a.sum(1, keepdims=True)
    f = np.zeros((2, 4))
    f[:, 0] = -np.inf  # fine on a zero weight
    assert BatchedSinkhorn()(BatchedLinearProblem(C, a, None, 0.1), init=(f, np.zeros((2, 3)))).converged
