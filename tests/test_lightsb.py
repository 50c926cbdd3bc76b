"""LightSB: closed forms vs quadrature, analytic gradients vs finite differences, the Gaussian
entropic-OT closed form, bridge sampling, fitting on a ground-truth instance, I/O and errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, strategies as st
from scipy import integrate, linalg, special, stats

import otsolve
from otsolve.benchmarks import eot_mixture
from otsolve.lightsb import LightSB, default_lr
from otsolve.metrics import cbw2_uvp


def _random_model(rng, K=3, D=2, eps=0.5, full=False):
    log_alpha = rng.normal(size=K)
    r = rng.normal(size=(K, D))
    if full:
        A = rng.normal(size=(K, D, D))
        S = A @ A.transpose(0, 2, 1) / D + 0.3 * np.eye(D)
    else:
        S = rng.uniform(0.3, 1.5, size=(K, D))
    return LightSB.from_params(log_alpha, r, S, eps)


def _v1d(model, y):
    """Unnormalized 1-D mixture sum_k alpha_k N(y | r_k, eps S_k), written independently."""
    a, r, S, eps = np.exp(model.log_alpha), model.r[:, 0], model.S[:, 0], model.epsilon
    return float(np.sum(a * stats.norm.pdf(y, r, np.sqrt(eps * S))))


def test_lazy_export():
    if getattr(otsolve.lightsb, "__file__", None) is None:
        pytest.skip("stale editable install: otsolve.lightsb registered as a namespace package")
    assert otsolve.LightSB is LightSB


# ---------------------------------------------------------------- closed forms vs quadrature
@pytest.mark.parametrize("x", [-1.3, 0.0, 0.7, 2.0])
def test_log_normalizer_and_conditional_match_quadrature_1d(x):
    model = _random_model(np.random.default_rng(1), K=3, D=1, eps=0.4)
    eps = model.epsilon
    # scale out exp(x y / eps) analytically-free: integrate on a wide interval
    f = lambda y, p: y**p * math.exp(x * y / eps) * _v1d(model, y)  # noqa: E731
    c = integrate.quad(f, -30, 30, args=(0,), limit=400, points=list(model.r[:, 0]))[0]
    m1 = integrate.quad(f, -30, 30, args=(1,), limit=400, points=list(model.r[:, 0]))[0] / c
    m2 = integrate.quad(f, -30, 30, args=(2,), limit=400, points=list(model.r[:, 0]))[0] / c
    assert model.log_normalizer(np.array([[x]]))[0] == pytest.approx(math.log(c), rel=1e-9, abs=1e-9)
    mean, cov = model.conditional_moments(np.array([[x]]))
    assert mean[0, 0] == pytest.approx(m1, rel=1e-7, abs=1e-9)
    assert cov[0, 0, 0] == pytest.approx(m2 - m1**2, rel=1e-7, abs=1e-9)


def test_log_potential_matches_scipy_mixture_full():
    rng = np.random.default_rng(2)
    model = _random_model(rng, K=4, D=3, eps=0.7, full=True)
    y = rng.normal(size=(6, 3))
    ref = special.logsumexp(
        [model.log_alpha[k] + stats.multivariate_normal(model.r[k], model.epsilon * model.S[k]).logpdf(y)
         for k in range(4)], axis=0)
    np.testing.assert_allclose(model.log_potential(y), ref, rtol=1e-10)


def test_sample_moments_match_closed_form():
    model = _random_model(np.random.default_rng(3), K=3, D=2, eps=0.5, full=True)
    x = np.array([[0.3, -0.4]])
    y = model.sample(x, n=200_000, rng=0)[0]
    mean, cov = model.conditional_moments(x)
    np.testing.assert_allclose(y.mean(0), mean[0], atol=0.01)
    np.testing.assert_allclose(np.cov(y.T), cov[0], atol=0.015)


@given(seed=st.integers(0, 10_000), eps=st.floats(0.05, 5.0), t=st.floats(0.0, 0.95))
def test_diagonal_equals_full_with_diagonal_matrices(seed, eps, t):
    rng = np.random.default_rng(seed)
    diag = _random_model(rng, K=3, D=2, eps=eps)
    full = LightSB.from_params(diag.log_alpha, diag.r, np.stack([np.diag(s) for s in diag.S]), eps)
    x = rng.normal(size=(5, 2))
    np.testing.assert_allclose(diag.log_normalizer(x), full.log_normalizer(x), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(diag.log_potential(x), full.log_potential(x), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(diag.drift(x, t), full.drift(x, t), rtol=1e-7, atol=1e-9)


# ---------------------------------------------------------------- analytic gradients
@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_gradients_match_finite_differences(covariance):
    rng = np.random.default_rng(4)
    D, K, eps = 3, 4, 0.6
    model = LightSB(D, K, eps, covariance=covariance)
    model._init_theta(rng.normal(size=(K, D)), np, np.float64)
    th = model._theta
    th["ell"] += eps * rng.normal(size=K)
    if covariance == "diagonal":
        th["s"] += 0.3 * rng.normal(size=(K, D))
    else:
        th["T"] += 0.3 * np.tril(rng.normal(size=(K, D, D)))
    x0, x1 = rng.normal(size=(7, D)), rng.normal(size=(5, D)) + 0.5
    _, grads = model.loss_and_grad(x0, x1)
    h = 1e-6
    for name, g in grads.items():
        p = th[name]
        num = np.zeros_like(p)
        for idx in np.ndindex(p.shape):
            old = p[idx]
            p[idx] = old + h
            lp = float(model.loss_and_grad(x0, x1)[0])
            p[idx] = old - h
            lm = float(model.loss_and_grad(x0, x1)[0])
            p[idx] = old
            num[idx] = (lp - lm) / (2 * h)
        if name == "T":  # only the lower triangle is a parameter
            num, g = np.tril(num), np.tril(g)
        np.testing.assert_allclose(g, num, rtol=1e-5, atol=1e-7, err_msg=name)


# ---------------------------------------------------------------- drift
@pytest.mark.parametrize("t", [0.0, 0.3, 0.8])
def test_drift_matches_finite_difference_of_log_integral_1d(t):
    model = _random_model(np.random.default_rng(5), K=3, D=1, eps=0.5)
    eps = model.epsilon

    def log_h(x):
        # h(x, t) = int N(x' | x, (1-t) eps) exp(x'^2 / 2 eps) v(x') dx'
        f = lambda z: stats.norm.pdf(z, x, math.sqrt((1 - t) * eps)) * math.exp(z * z / (2 * eps)) * _v1d(model, z)  # noqa: E731
        return math.log(integrate.quad(f, -25, 25, limit=400, points=[x, *model.r[:, 0]])[0])

    for x in (-0.8, 0.4, 1.5):
        h = 1e-4
        fd = eps * (log_h(x + h) - log_h(x - h)) / (2 * h)
        assert model.drift(np.array([[x]]), t)[0, 0] == pytest.approx(fd, rel=1e-5, abs=1e-6)


def test_drift_at_zero_is_conditional_mean_minus_x():
    model = _random_model(np.random.default_rng(6), K=3, D=2, full=True)
    x = np.random.default_rng(7).normal(size=(4, 2))
    mean, _ = model.conditional_moments(x)
    np.testing.assert_allclose(model.drift(x, 0.0), mean - x, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("t", [0.0, 0.5, 0.9])
def test_drift_with_ground_truth_params_equals_ground_truth_drift(t):
    bench = eot_mixture(3, 0.7, rng=3, n_test=10)
    model = LightSB.from_params(**bench.lightsb_params(), epsilon=bench.epsilon)
    x = bench.test_inputs
    np.testing.assert_allclose(model.drift(x, t), bench.drift(x, t), rtol=1e-8, atol=1e-9)


def test_drift_accepts_per_row_times():
    model = _random_model(np.random.default_rng(8))
    x = np.random.default_rng(9).normal(size=(3, 2))
    ts = np.array([0.0, 0.4, 0.9])
    out = model.drift(x, ts)
    for i in range(3):
        np.testing.assert_allclose(out[i], model.drift(x[i:i + 1], ts[i])[0])


# ---------------------------------------------------------------- Gaussian closed form
def _gaussian_eot_conditional(A, B, a, b, eps):
    """pi(y|x) = N(b + S (x - a), eps S) from Janati et al. (2020), cost ||x-y||^2, sigma^2 = eps."""
    Ah = linalg.sqrtm(A).real
    Ahi = np.linalg.inv(Ah)
    Dm = linalg.sqrtm(4 * Ah @ B @ Ah + eps**2 * np.eye(len(a))).real
    C = 0.5 * Ah @ Dm @ Ahi - 0.5 * eps * np.eye(len(a))   # cross-covariance of the plan
    S = C.T @ np.linalg.inv(A)
    np.testing.assert_allclose(B - C.T @ np.linalg.solve(A, C), eps * S, atol=1e-10)  # formula check
    return S, b - S @ a


@pytest.mark.parametrize("covariance", ["diagonal", "full"])
def test_gaussian_to_gaussian_matches_closed_form(covariance):
    rng = np.random.default_rng(10)
    eps = 0.5
    a, b = np.array([0.5, -1.0]), np.array([2.0, 1.0])
    if covariance == "diagonal":
        A, B = np.diag([1.0, 0.5]), np.diag([0.3, 1.2])
    else:
        A, B = np.array([[1.0, 0.4], [0.4, 0.6]]), np.array([[0.5, -0.2], [-0.2, 1.0]])
    S_true, r_true = _gaussian_eot_conditional(A, B, a, b, eps)
    x0 = rng.multivariate_normal(a, A, size=50_000)
    x1 = rng.multivariate_normal(b, B, size=50_000)
    model = LightSB(2, 1, eps, covariance=covariance).fit(
        x0, x1, n_steps=4000, batch_size=512, lr=1e-2, rng=0, progress=False)
    S = model.S[0] if covariance == "full" else np.diag(model.S[0])
    np.testing.assert_allclose(S, S_true, atol=0.05)
    np.testing.assert_allclose(model.r[0], r_true, atol=0.08)
    xs = rng.multivariate_normal(a, A, size=20)
    mean, cov = model.conditional_moments(xs)
    np.testing.assert_allclose(mean, r_true + xs @ S_true.T, atol=0.12)
    np.testing.assert_allclose(cov, np.broadcast_to(eps * S_true, cov.shape), atol=0.03)


# ---------------------------------------------------------------- bridge sampling
def test_sample_at_time_endpoints():
    model = _random_model(np.random.default_rng(11))
    x = np.random.default_rng(12).normal(size=(50, 2))
    np.testing.assert_array_equal(model.sample_at_time(x, 0.0, rng=1), x)
    np.testing.assert_allclose(model.sample_at_time(x, 1.0, rng=1), model.sample(x, rng=1))


@pytest.mark.parametrize("t", [0.25, 0.5])
def test_bridge_variance_uses_square_root(t):
    """Var(x_t | x0) = t^2 Var(y | x0) + eps t (1 - t) per coordinate (regression test for the
    released code's std eps t (1 - t))."""
    model = _random_model(np.random.default_rng(13), eps=0.5)
    x0 = np.array([[0.2, -0.1]])
    xt = model.sample_at_time(np.repeat(x0, 200_000, axis=0), t, rng=2)
    _, cov = model.conditional_moments(x0)
    expected = t**2 * np.diag(cov[0]) + model.epsilon * t * (1 - t)
    np.testing.assert_allclose(xt.var(axis=0), expected, rtol=0.02)
    buggy = t**2 * np.diag(cov[0]) + (model.epsilon * t * (1 - t)) ** 2
    assert np.all(np.abs(xt.var(axis=0) - buggy) > 0.05 * expected)


def test_euler_maruyama_endpoint_matches_sample():
    model = _random_model(np.random.default_rng(14), K=2, D=2, eps=0.5)
    x0 = np.repeat(np.array([[0.3, 0.1]]), 6000, axis=0)
    path = model.sample_path(x0, n_steps=200, rng=3)
    assert path.shape == (6000, 201, 2)
    np.testing.assert_array_equal(path[:, 0], x0)
    mean, cov = model.conditional_moments(x0[:1])
    end = path[:, -1]
    np.testing.assert_allclose(end.mean(0), mean[0], atol=0.05)
    np.testing.assert_allclose(np.cov(end.T), cov[0], atol=0.06)


# ---------------------------------------------------------------- fitting on ground truth
def test_fit_recovers_benchmark_instance_2d():
    bench = eot_mixture(2, 1.0, rng=1, n_test=300)
    model = LightSB(2, 20, bench.epsilon).fit(
        bench.sample_input, bench.sample_target, n_steps=3000, rng=0, progress=False, lr=1e-2)
    assert cbw2_uvp(model, bench, moments="exact") < 1.0
    assert cbw2_uvp(model, bench, n_samples=1000) < 2.0
    # a model that ignores x is far worse: the metric discriminates
    const = LightSB.from_params(np.zeros(1), bench.sample_target(5000).mean(0, keepdims=True),
                                np.full((1, 2), 1e-3), bench.epsilon)
    assert cbw2_uvp(const, bench, moments="exact") > 20


def test_fit_accepts_arrays_and_callables_and_float32():
    rng = np.random.default_rng(15)
    x0 = rng.normal(size=(500, 3)).astype(np.float32)
    x1 = (rng.normal(size=(500, 3)) + 1).astype(np.float32)
    m = LightSB(3, 5, 1.0).fit(x0, x1, n_steps=50, progress=False, rng=0)
    assert m.r.dtype == np.float32 and m.sample(x0[:4]).dtype == np.float32
    assert m.drift(x0[:4], 0.5).dtype == np.float32
    m2 = LightSB(3, 5, 1.0).fit(lambda n: rng.normal(size=(n, 3)), lambda n: rng.normal(size=(n, 3)) + 1,
                                n_steps=50, progress=False, rng=0)
    assert m2.r.dtype == np.float64 and np.all(np.isfinite(m2.loss_history_))
    assert m2.loss_history_.shape == (50,)


def test_fit_is_reproducible_with_seed():
    rng = np.random.default_rng(16)
    x0, x1 = rng.normal(size=(300, 2)), rng.normal(size=(300, 2)) + 2
    a = LightSB(2, 4, 0.5).fit(x0, x1, n_steps=100, rng=7, progress=False)
    b = LightSB(2, 4, 0.5).fit(x0, x1, n_steps=100, rng=7, progress=False)
    np.testing.assert_array_equal(a.r, b.r)
    np.testing.assert_array_equal(a.loss_history_, b.loss_history_)


def test_progress_bar_shows_loss_and_can_be_silenced(capsys):
    rng = np.random.default_rng(17)
    x0, x1 = rng.normal(size=(100, 2)), rng.normal(size=(100, 2))
    LightSB(2, 2, 1.0).fit(x0, x1, n_steps=120, progress=False)
    assert capsys.readouterr().err == ""
    LightSB(2, 2, 1.0).fit(x0, x1, n_steps=120, progress=True)
    err = capsys.readouterr().err
    assert "LightSB" in err and "loss=" in err


def test_save_load_roundtrip(tmp_path):
    for full in (False, True):
        model = _random_model(np.random.default_rng(18), full=full)
        path = tmp_path / f"m{int(full)}.npz"
        model.save(path)
        back = LightSB.load(path)
        x = np.random.default_rng(19).normal(size=(5, 2))
        assert back.covariance == model.covariance and back.epsilon == model.epsilon
        np.testing.assert_allclose(back.log_normalizer(x), model.log_normalizer(x), rtol=1e-12)
        np.testing.assert_allclose(back.drift(x, 0.3), model.drift(x, 0.3), rtol=1e-12)
        np.testing.assert_array_equal(back.sample(x, rng=4), model.sample(x, rng=4))


def test_default_lr_follows_released_settings():
    assert default_lr(0.1) == pytest.approx(1e-3)
    assert default_lr(1.0) == pytest.approx(3e-3)
    assert default_lr(10.0) == pytest.approx(6e-2)
    assert default_lr(0.01) == pytest.approx(1e-3) and 3e-3 < default_lr(3.0) < 6e-2


# ---------------------------------------------------------------- errors
def test_bad_input_raises_value_error():
    rng = np.random.default_rng(20)
    x = rng.normal(size=(10, 2))
    with pytest.raises(ValueError, match="epsilon"):
        LightSB(2, 3, epsilon=0.0)
    with pytest.raises(ValueError, match="epsilon"):
        LightSB(2, 3, epsilon=-1.0)
    with pytest.raises(ValueError, match="n_components"):
        LightSB(2, 0)
    with pytest.raises(ValueError, match="covariance"):
        LightSB(2, 3, covariance="banded")
    with pytest.raises(ValueError, match="dimension 3"):
        LightSB(2, 3).fit(x, rng.normal(size=(10, 3)), n_steps=1, progress=False)
    bad = x.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        LightSB(2, 3).fit(bad, x, n_steps=1, progress=False)
    with pytest.raises(ValueError, match="no parameters"):
        LightSB(2, 3).sample(x)
    model = _random_model(rng)
    with pytest.raises(ValueError, match="dimension"):
        model.sample(rng.normal(size=(4, 3)))
    with pytest.raises(ValueError, match="singular"):
        model.drift(x, 1.0)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        model.sample_at_time(x, 1.5)
    with pytest.raises(ValueError, match="positive definite"):
        LightSB.from_params(np.zeros(1), np.zeros((1, 2)), -np.eye(2)[None], 1.0)


# ---------------------------------------------------------------- fit-quality diagnosis (follow-up)
def test_gradients_match_finite_differences_at_benchmark_scale():
    """The analytic gradient at the benchmark's own scale (D = 16, eps = 0.1, K = 50, benchmark
    samples, r from target samples): the 1/eps factors of log alpha and of the quadratic logits."""
    bench = eot_mixture(16, 0.1, rng=0, n_test=2)
    rng = np.random.default_rng(0)
    x0, x1 = bench.sample_input(128, rng=rng), bench.sample_target(128, rng=rng)
    for covariance in ("diagonal", "full"):
        model = LightSB(16, 50, 0.1, covariance=covariance)
        model._init_theta(bench.sample_target(50, rng=rng), np, np.float64)
        th = model._theta
        th["ell"] += 0.005 * rng.normal(size=50)
        key = "s" if covariance == "diagonal" else "T"
        th[key] += 0.05 * (rng.normal(size=th[key].shape) if key == "s" else np.tril(rng.normal(size=th[key].shape)))
        _, grads = model.loss_and_grad(x0, x1)
        h = 1e-6
        for name, g in grads.items():
            p = th[name]
            for _ in range(6):
                idx = tuple(int(rng.integers(0, n)) for n in p.shape)
                if name == "T" and idx[1] < idx[2]:
                    idx = (idx[0], idx[2], idx[1])
                old = p[idx]
                p[idx] = old + h
                lp = float(model.loss_and_grad(x0, x1)[0])
                p[idx] = old - h
                lm = float(model.loss_and_grad(x0, x1)[0])
                p[idx] = old
                num = (lp - lm) / (2 * h)
                assert abs(g[idx] - num) <= 1e-5 * abs(num) + 1e-6, (covariance, name, idx, g[idx], num)


def test_ground_truth_minimizes_the_training_loss():
    """Loss/metric consistency: the exact (alpha*, r*, S*) of a benchmark instance have a lower
    population objective than a fitted model and than perturbed parameters, and Adam started at the
    ground truth with a decaying step stays close (finite pool and minibatch noise at eps = 0.1
    move it by ~0.1 % cB-W2-UVP; a fit from scratch lands far higher only through the optimizer)."""
    bench = eot_mixture(4, 0.1, rng=1, n_test=100)
    gt = LightSB.from_params(**bench.lightsb_params(), epsilon=0.1)
    e0, e1 = bench.sample_input(40000, rng=11), bench.sample_target(40000, rng=12)

    def loss(m):
        return float(np.mean(m.log_normalizer(e0)) - np.mean(m.log_potential(e1)))

    fitted = LightSB(4, 10, 0.1, covariance="full").fit(
        bench.sample_input(8192, rng=1), bench.sample_target(8192, rng=2), n_steps=1500,
        rng=0, progress=False, schedule="cosine", lr=3e-3)
    assert loss(gt) < loss(fitted)
    p = bench.lightsb_params()
    bumped = LightSB.from_params(p["log_alpha"] + 0.1, p["r"] + 0.01, p["S"] * 1.01, 0.1)
    assert loss(gt) < loss(bumped)
    warm = LightSB.from_params(**p, epsilon=0.1)
    warm.fit(bench.sample_input(8192, rng=3), bench.sample_target(8192, rng=4), n_steps=1000,
             rng=0, progress=False, schedule="cosine", warm_start=True)
    assert cbw2_uvp(warm, bench, moments="exact") < 0.25
    assert abs(loss(warm) - loss(gt)) < 0.02
