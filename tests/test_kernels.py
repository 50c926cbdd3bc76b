"""Compiled Sinkhorn kernels against their NumPy references on random inputs."""
import numpy as np
import pytest

from otsolve.kernels import HAVE_COMPILED, get_sinkhorn_kernels, reference


def test_compiled_extension_is_built():
    # `pip install .` must build csrc/: a silent fallback to the NumPy reference is a failure here
    assert HAVE_COMPILED, "otsolve._ext_sinkhorn is missing: the package was not built/installed"


K = get_sinkhorn_kernels(compiled=True)


def _problem(rng, n, m, dtype=np.float64):
    C = rng.random((n, m)).astype(dtype)
    a = rng.random(n) + 0.1
    b = rng.random(m) + 0.1
    return C, np.log(a / a.sum()), np.log(b / b.sum())


@pytest.mark.parametrize("n,m", [(1, 1), (7, 3), (64, 97), (300, 200)])
@pytest.mark.parametrize("eps", [1.0, 0.05, 1e-3])
@pytest.mark.parametrize("omega", [1.0, 1.4, -1.0])
def test_sweeps_match_reference(rng, n, m, eps, omega):
    C, la, lb = _problem(rng, n, m)
    f0, g0 = rng.standard_normal(n) * 0.01, rng.standard_normal(m) * 0.01
    out = {}
    for name, fn in (("ref", reference.sinkhorn_dense), ("cpp", K.sinkhorn_dense)):
        f, g = f0.copy(), g0.copy()
        it, status, errs = fn(C, la, lb, f, g, eps, 15, -1.0, 0, omega)
        out[name] = (f, g, it, status, np.asarray(errs))
    (fr, gr, itr, sr, er), (fc, gc, itc, sc, ec) = out["ref"], out["cpp"]
    assert (itr, sr) == (itc, sc)
    scale = 1.0 + np.abs(fr).max()
    np.testing.assert_allclose(fc, fr, rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_allclose(gc, gr, rtol=1e-12, atol=1e-12 * scale)
    np.testing.assert_allclose(ec, er, rtol=1e-8, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("omega", [1.0, -1.0])
def test_scaling_kernel_matches_log_kernel(rng, dtype, omega):
    C, la, lb = _problem(rng, 120, 90, dtype)
    f1, g1 = np.zeros(120), np.zeros(90)
    f2, g2 = np.zeros(120), np.zeros(90)
    r1 = K.sinkhorn_dense(C, la, lb, f1, g1, 0.02, 40, 0.0, 0, omega)
    r2 = K.sinkhorn_scaling_dense(C, la, lb, f2, g2, 0.02, 40, 0.0, 0, np.empty_like(C), 50.0, omega)
    assert r1[0] == r2[0] == 40
    tol = 1e-11 if dtype == np.float64 else 1e-5  # float32 kernel storage
    np.testing.assert_allclose(f2, f1, atol=tol * 0.02 * 50)
    np.testing.assert_allclose(g2, g1, atol=tol * 0.02 * 50)


def test_scaling_kernel_reports_underflow():
    # exp(-C/eps) underflows in every entry of row 0: the stored kernel cannot represent it
    C = np.array([[0.0, 1.0], [1.0, 0.0]]) + np.array([[800.0], [0.0]])
    la = lb = np.log([0.5, 0.5])
    f, g = np.zeros(2), np.zeros(2)
    it, status, _ = K.sinkhorn_scaling_dense(C, la, lb, f, g, 1.0, 10, 0.0, 0, np.empty_like(C), 50.0, 1.0)
    assert status == 3


@pytest.mark.parametrize("kind", [0, 1])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_pointcloud_sweeps_match_reference(rng, kind, dtype):
    X = rng.random((50, 3)).astype(dtype)
    YT = np.ascontiguousarray(rng.random((40, 3)).astype(dtype).T)
    la, lb = np.full(50, -np.log(50)), np.full(40, -np.log(40))
    res = []
    for fn in (reference.sinkhorn_pointcloud, K.sinkhorn_pointcloud):
        f, g = np.zeros(50), np.zeros(40)
        fn(X, YT, kind, 0.7, la, lb, f, g, 0.05, 25, 0.0, 0, 1.0)
        res.append((f, g))
    np.testing.assert_allclose(res[1][0], res[0][0], rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(res[1][1], res[0][1], rtol=1e-12, atol=1e-13)


def test_plan_stats_match_reference(rng):
    C, _, _ = _problem(rng, 80, 60)
    f, g = rng.standard_normal(80) * 0.1, rng.standard_normal(60) * 0.1
    out = []
    for fn in (reference.plan_stats_dense, K.plan_stats_dense):
        row, col = np.empty(80), np.empty(60)
        c, e = fn(C, f, g, 0.1, row, col, 0)
        out.append((row, col, c, e))
    for x, y in zip(out[0], out[1]):
        np.testing.assert_allclose(y, x, rtol=1e-12)


def test_plan_stats_pointcloud_match_reference(rng):
    X, YT = rng.random((30, 2)), np.ascontiguousarray(rng.random((20, 2)).T)
    f, g = rng.standard_normal(30) * 0.1, rng.standard_normal(20) * 0.1
    out = []
    for fn in (reference.plan_stats_pointcloud, K.plan_stats_pointcloud):
        row, col = np.empty(30), np.empty(20)
        c, e = fn(X, YT, 0, 1.3, f, g, 0.2, row, col, 0)
        out.append((row, col, c, e))
    for x, y in zip(out[0], out[1]):
        np.testing.assert_allclose(y, x, rtol=1e-12)


def test_fast_exp_accuracy():
    xs = np.linspace(-708, 709, 20001)
    got = np.array([K.fast_exp(x) for x in xs])
    np.testing.assert_allclose(got, np.exp(xs), rtol=5e-16 * 4)
    assert K.fast_exp(-800.0) == 0.0
    assert K.fast_exp(800.0) == np.inf
    assert np.isnan(K.fast_exp(np.nan))


def test_kernel_rejects_wrong_lengths():
    C = np.zeros((3, 4))
    with pytest.raises(ValueError, match="length"):
        K.sinkhorn_dense(C, np.zeros(2), np.zeros(4), np.zeros(3), np.zeros(4), 1.0, 1, 0.0)


def test_relaxation_gives_up_when_stalled():
    """Adaptive over-relaxation that stops making progress (a rounding floor) returns to plain
    steps for good; a steadily converging run keeps relaxing."""
    from otsolve.kernels.reference import Relaxation

    r = Relaxation(-1.0)
    for k in range(12):
        r.observe(0.5**k)  # plain phase: rate 0.5 measured, relaxation starts
    assert r.omega > 1
    r.observe(1e-6)  # a gain, then no 10% gain for 100 relaxed iterations
    for _ in range(99):
        r.observe(1e-6)
    assert r.omega > 1 and r.adaptive
    r.observe(1e-6)
    assert r.omega == 1.0 and not r.adaptive
    for k in range(30):
        r.observe(1e-6 * 0.5**k)
    assert r.omega == 1.0
    steady = Relaxation(-1.0)
    for k in range(400):
        steady.observe(0.9**k)
    assert steady.omega > 1 and steady.adaptive


def test_float32_costs_converge_with_adaptive_relaxation(rng):
    """float32 costs: the relaxed map stalls at a rounding floor above tol; the solver must still
    converge at the default float32 tol (compiled kernels and the NumPy reference alike)."""
    import otsolve

    x, y = rng.random((150, 3)).astype(np.float32), rng.random((120, 3)).astype(np.float32)
    prob = otsolve.LinearProblem(otsolve.PointCloud(x, y), epsilon=0.01)
    for compiled in (True, False):
        res = otsolve.Sinkhorn(compiled=compiled)(prob)
        assert res.converged and res.marginal_error <= 1e-6 and res.n_iter < 2000
