"""Ground-truth EOT benchmark generator and the BW-UVP metrics."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import linalg, special, stats

from otsolve.benchmarks import EOTMixture, eot_mixture
from otsolve.lightsb import LightSB
from otsolve.metrics import bures_wasserstein2, bw2_uvp, cbw2_uvp


@pytest.fixture(scope="module")
def bench() -> EOTMixture:
    return eot_mixture(3, 0.8, rng=5, n_test=200)


def test_instance_is_seeded_and_recorded():
    a, b = eot_mixture(4, 1.0, rng=2, n_test=20), eot_mixture(4, 1.0, rng=2, n_test=20)
    np.testing.assert_array_equal(a.potential_covs, b.potential_covs)
    np.testing.assert_array_equal(a.test_inputs, b.test_inputs)
    assert a.target_variance == b.target_variance
    c = eot_mixture(4, 1.0, rng=3, n_test=20)
    assert not np.allclose(a.potential_means, c.potential_means)
    # non-diagonal potential covariances (a diagonal LightSB is mis-specified)
    off = a.potential_covs - np.einsum("kii->ki", a.potential_covs)[:, :, None] * np.eye(4)
    assert np.abs(off).max() > 0.05
    assert np.allclose(a.input_weights.sum(), 1) and np.allclose(a.potential_weights.sum(), 1)


def test_conditional_is_product_of_gaussian_and_potential(bench):
    """pi*(y|x) ∝ N(y | x, eps I) phi*(y): compare log densities up to a y-independent constant."""
    x = bench.test_inputs[:1]
    ys = np.random.default_rng(0).normal(size=(6, 3))
    logphi = special.logsumexp(
        [np.log(p) + stats.multivariate_normal(m, S).logpdf(ys)
         for p, m, S in zip(bench.potential_weights, bench.potential_means, bench.potential_covs)], axis=0)
    lhs = stats.multivariate_normal(x[0], bench.epsilon * np.eye(3)).logpdf(ys) + logphi
    lw = bench.conditional_log_weights(x)[0]
    mk = bench._component_means(x)[0]
    rhs = special.logsumexp([lw[k] + stats.multivariate_normal(mk[k], bench.cond_covs[k]).logpdf(ys)
                             for k in range(len(lw))], axis=0)
    d = lhs - rhs
    np.testing.assert_allclose(d, d[0], atol=1e-9)


def test_lightsb_form_is_exact(bench):
    """(alpha*, r*, S*) reproduce the conditional moments and v*(y) = exp(-|y|^2/2eps) phi*(y)."""
    model = LightSB.from_params(**bench.lightsb_params(), epsilon=bench.epsilon)
    x = bench.test_inputs[:20]
    m1, c1 = model.conditional_moments(x)
    m2, c2 = bench.conditional_moments(x)
    np.testing.assert_allclose(m1, m2, atol=1e-10)
    np.testing.assert_allclose(c1, c2, atol=1e-10)
    y = np.random.default_rng(1).normal(size=(5, 3))
    logphi = special.logsumexp(
        [np.log(p) + stats.multivariate_normal(m, S).logpdf(y)
         for p, m, S in zip(bench.potential_weights, bench.potential_means, bench.potential_covs)], axis=0)
    np.testing.assert_allclose(model.log_potential(y), logphi - np.sum(y * y, 1) / (2 * bench.epsilon),
                               rtol=1e-10)
    assert cbw2_uvp(model, bench, moments="exact") < 1e-10


def test_samplers_match_exact_moments(bench):
    x = bench.test_inputs[:2]
    y = bench.sample_conditional(x, n=100_000, rng=3)
    mean, cov = bench.conditional_moments(x)
    for i in range(2):
        np.testing.assert_allclose(y[i].mean(0), mean[i], atol=0.02)
        np.testing.assert_allclose(np.cov(y[i].T), cov[i], atol=0.03)
    x0 = bench.sample_input(200_000, rng=4)
    m0 = bench.input_weights @ bench.input_means
    np.testing.assert_allclose(x0.mean(0), m0, atol=0.02)
    y1 = bench.sample_target(200_000, rng=5)
    assert np.trace(np.cov(y1.T)) == pytest.approx(bench.target_variance, rel=0.02)


def test_ground_truth_drift_matches_finite_differences(bench):
    t = 0.4
    covs = bench.potential_covs + bench.epsilon * (1 - t) * np.eye(3)

    def logmix(x):
        return special.logsumexp([np.log(p) + stats.multivariate_normal(m, S).logpdf(x)
                                  for p, m, S in zip(bench.potential_weights, bench.potential_means, covs)])

    x = bench.test_inputs[3]
    h = 1e-5
    fd = np.array([(logmix(x + h * e) - logmix(x - h * e)) / (2 * h) for e in np.eye(3)])
    np.testing.assert_allclose(bench.drift(x[None], t)[0], bench.epsilon * fd, rtol=1e-6, atol=1e-8)


def test_bures_wasserstein_closed_forms():
    rng = np.random.default_rng(6)
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2
    assert bures_wasserstein2(np.array([1.0]), np.array([[4.0]]), np.array([0.0]), np.array([[1.0]])) \
        == pytest.approx(1.0 + 1.0)
    A = rng.normal(size=(4, 4)); A = A @ A.T + np.eye(4)
    B = rng.normal(size=(4, 4)); B = B @ B.T + 0.5 * np.eye(4)
    m1, m2 = rng.normal(size=4), rng.normal(size=4)
    Bh = linalg.sqrtm(B).real
    ref = np.sum((m1 - m2) ** 2) + np.trace(A) + np.trace(B) - 2 * np.trace(linalg.sqrtm(Bh @ A @ Bh).real)
    assert bures_wasserstein2(m1, A, m2, B) == pytest.approx(ref, rel=1e-9)
    assert bures_wasserstein2(m1, B, m2, A) == pytest.approx(ref, rel=1e-9)  # symmetric
    assert bures_wasserstein2(m1, A, m1, A) == pytest.approx(0.0, abs=1e-9)
    stack = bures_wasserstein2(np.stack([m1, m2]), np.stack([A, B]), np.stack([m2, m2]), np.stack([B, B]))
    np.testing.assert_allclose(stack, [ref, 0.0], atol=1e-9)


def test_bw2_uvp_of_matching_samples_is_small():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(50_000, 3)), rng.normal(size=(50_000, 3))
    assert bw2_uvp(x, y) < 0.1
    assert bw2_uvp(x + 1.0, y) == pytest.approx(100.0, rel=0.02)  # ||shift||^2 = 3 = tr Sigma


def test_cbw_sanity_constant_predictor_is_about_100(bench):
    mean = bench.sample_target(100_000, rng=8).mean(0)

    class Constant:
        def sample(self, x, n, rng=None):
            return np.broadcast_to(mean, (x.shape[0], n, mean.size)).copy()

    # exact by the law of total variance: mean_x [||m*(x) - E y||^2 + tr Sigma*(x)] = Var(P1)
    assert cbw2_uvp(Constant(), bench, n_samples=10) == pytest.approx(100.0, abs=6.0)


def test_cbw_of_ground_truth_sampler_is_small(bench):
    class Truth:
        def sample(self, x, n, rng=None):
            return bench.sample_conditional(x, n=n, rng=rng)

    assert cbw2_uvp(Truth(), bench, n_samples=2000) < 0.3


def test_bad_input():
    with pytest.raises(ValueError, match="epsilon"):
        eot_mixture(2, 0.0)
    with pytest.raises(ValueError, match="dim"):
        eot_mixture(0, 1.0)
    with pytest.raises(ValueError, match="cov_range"):
        eot_mixture(2, 1.0, cov_range=(1.0, 0.1))
    with pytest.raises(ValueError, match="moments"):
        cbw2_uvp(None, eot_mixture(2, 1.0, n_test=5), moments="approx")


def test_diagonal_potential_option_makes_diagonal_lightsb_well_specified():
    a = eot_mixture(4, 0.3, rng=2, n_test=20)
    b = eot_mixture(4, 0.3, rng=2, n_test=20, diagonal_potential=True)
    np.testing.assert_array_equal(a.potential_means, b.potential_means)  # same draws otherwise
    np.testing.assert_allclose(np.einsum("kii->ki", b.potential_covs), np.einsum("kii->ki", a.potential_covs))
    S = b.lightsb_params()["S"]
    off = S - np.einsum("kii->ki", S)[:, :, None] * np.eye(4)
    assert np.abs(off).max() < 1e-12
    p = b.lightsb_params()
    diag = LightSB.from_params(p["log_alpha"], p["r"], np.einsum("kii->ki", p["S"]), b.epsilon)
    assert cbw2_uvp(diag, b, moments="exact") < 1e-10
