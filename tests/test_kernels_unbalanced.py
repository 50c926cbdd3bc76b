"""Unbalanced OT (KL-relaxed marginals) in the compiled CPU Sinkhorn kernels: against the NumPy
reference sweeps (otsolve/kernels/reference.py, the definition), the damped fixed point and POT's
``sinkhorn_unbalanced(reg_type="kl")`` (issue #15)."""
from __future__ import annotations

import math

import numpy as np
import ot
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

from otsolve.kernels import get_sinkhorn_kernels, reference
from otsolve.problems.marginals import damping, marginal_target

K = get_sinkhorn_kernels(compiled=True)
INF = math.inf
# (rho_a, rho_b): both relaxed, semi-relaxed either side, balanced (the default path)
RHOS = [(0.5, 2.0), (INF, 0.3), (0.4, INF), (INF, INF)]


def _weights(rng, n, mass, n_zero=0):
    w = rng.uniform(0.2, 1.0, n)
    w[rng.choice(n, n_zero, replace=False)] = 0.0
    w *= mass / w.sum()
    with np.errstate(divide="ignore"):
        return w, np.log(w)


def _run(fn, args, f0, g0, *tail):
    f, g = f0.copy(), g0.copy()
    it, status, errs = fn(*args, f, g, *tail)
    return f, g, it, status, np.asarray(errs)


def _assert_same_iterates(ref, cpp, mass):
    (fr, gr, itr, sr, er), (fc, gc, itc, sc, ec) = ref, cpp
    assert (itr, sr) == (itc, sc)
    for xr, xc in ((fr, fc), (gr, gc)):
        fin = np.isfinite(xr)
        np.testing.assert_array_equal(np.isfinite(xc), fin)  # -inf where a weight is 0
        np.testing.assert_array_equal(xc[~fin], xr[~fin])
        scale = 1.0 + np.abs(xr[fin]).max(initial=0.0)
        np.testing.assert_allclose(xc[fin], xr[fin], rtol=1e-10, atol=1e-10 * scale)
    # errors: relative 1e-10 above the rounding floor of a sum of masses (absolute 1e-12 * mass)
    assert len(ec) == len(er)
    np.testing.assert_allclose(ec, er, rtol=1e-10, atol=1e-12 * mass)


@pytest.mark.parametrize("rho_a,rho_b", RHOS)
@pytest.mark.parametrize("omega", [1.0, 1.5, -1.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dense_sweeps_match_reference(rng, rho_a, rho_b, omega, dtype):
    n, m, eps = 41, 29, 0.05
    C = rng.random((n, m)).astype(dtype)
    # unequal masses, zero weights on both sides
    mass_b = 1.0 if math.isinf(rho_a) and math.isinf(rho_b) else 1.7
    a, la = _weights(rng, n, 1.0, n_zero=3)
    b, lb = _weights(rng, m, mass_b, n_zero=2)
    f0, g0 = rng.standard_normal(n) * 0.05, rng.standard_normal(m) * 0.05
    out = [_run(fn, (C, la, lb), f0, g0, eps, 30, 0.0, 0, omega, rho_a, rho_b)
           for fn in (reference.sinkhorn_dense, K.sinkhorn_dense)]
    assert out[1][2] == 30 and out[1][3] == 1
    _assert_same_iterates(out[0], out[1], 1.0 + mass_b)
    # the keyword form of the binding is the same call
    f, g = f0.copy(), g0.copy()
    K.sinkhorn_dense(C, la, lb, f, g, eps, 30, 0.0, 0, omega, rho_b=rho_b, rho_a=rho_a)
    np.testing.assert_array_equal(f, out[1][0])


@pytest.mark.parametrize("rho_a,rho_b", RHOS[:3])
@pytest.mark.parametrize("eps", [1.0, 1e-3])
def test_dense_sweeps_match_reference_extreme_eps(rng, rho_a, rho_b, eps):
    n, m = 30, 45
    C = rng.random((n, m))
    a, la = _weights(rng, n, 0.6)
    b, lb = _weights(rng, m, 1.9)
    f0, g0 = np.zeros(n), np.zeros(m)
    out = [_run(fn, (C, la, lb), f0, g0, eps, 20, 0.0, 0, 1.0, rho_a, rho_b)
           for fn in (reference.sinkhorn_dense, K.sinkhorn_dense)]
    _assert_same_iterates(out[0], out[1], 2.5)


@pytest.mark.parametrize("kind", [0, 1])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("omega", [1.0, -1.0])
@pytest.mark.parametrize("rho_a,rho_b", RHOS[:3])
def test_pointcloud_sweeps_match_reference(rng, kind, dtype, omega, rho_a, rho_b):
    n, m = 50, 40
    X = rng.random((n, 3)).astype(dtype)
    YT = np.ascontiguousarray(rng.random((m, 3)).astype(dtype).T)
    a, la = _weights(rng, n, 1.0, n_zero=2)
    b, lb = _weights(rng, m, 0.7)
    f0, g0 = np.zeros(n), np.zeros(m)
    out = [_run(fn, (X, YT, kind, 0.7, la, lb), f0, g0, 0.05, 25, 0.0, 0, omega, rho_a, rho_b)
           for fn in (reference.sinkhorn_pointcloud, K.sinkhorn_pointcloud)]
    _assert_same_iterates(out[0], out[1], 1.7)


@pytest.mark.parametrize("rho_a,rho_b", RHOS[:3])
def test_underflowed_column_takes_the_damped_exact_update(rng, rho_a, rho_b):
    # column 4 is > 1 cost unit away from every row's best: with eps = 1e-3 its accumulated mass
    # exp(-1000) underflows and the kernel recomputes it with an exact column LSE
    n, m, eps = 20, 15, 1e-3
    C = rng.random((n, m))
    C[:, 4] += 2.0
    a, la = _weights(rng, n, 1.0)
    b, lb = _weights(rng, m, 1.5)
    out = [_run(fn, (C, la, lb), np.zeros(n), np.zeros(m), eps, 10, 0.0, 0, 1.0, rho_a, rho_b)
           for fn in (reference.sinkhorn_dense, K.sinkhorn_dense)]
    _assert_same_iterates(out[0], out[1], 2.5)


def test_stops_at_tol_on_the_measured_iterate(rng):
    n, m = 20, 25
    C = rng.random((n, m))
    a, la = _weights(rng, n, 1.0)
    b, lb = _weights(rng, m, 1.5)
    out = [_run(fn, (C, la, lb), np.zeros(n), np.zeros(m), 0.1, 500, 1e-9, 0, 1.0, 0.3, 0.8)
           for fn in (reference.sinkhorn_dense, K.sinkhorn_dense)]
    assert out[1][3] == 0 and out[1][4][-1] <= 1e-9
    _assert_same_iterates(out[0], out[1], 2.5)


@pytest.mark.parametrize("rho_a,rho_b", [(1e3, 1e3), (1e3, INF)])
@pytest.mark.parametrize("pointcloud", [False, True])
def test_translation_step_keeps_large_rho_fast(rng, rho_a, rho_b, pointcloud):
    """rho = 1e3 at eps = 0.1: plain unbalanced Sinkhorn's mass mode contracts at ~1 - eps/rho
    (~10^5 iterations to 1e-10 on this problem); with the translation-invariant step the kernel
    converges in < 1000, to the reference's iterate, and the returned plan meets tol."""
    n, m, eps, tol = 12, 10, 0.1, 1e-10
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 0.5
    a, la = _weights(rng, n, 1.0)
    b, lb = _weights(rng, m, 1.0 if math.isinf(rho_b) else 1.3)
    if pointcloud:
        args = (x, np.ascontiguousarray(y.T), 0, 0.5, la, lb)
        fns = (reference.sinkhorn_pointcloud, K.sinkhorn_pointcloud)
    else:
        args = (ot.dist(x, y) / 2, la, lb)
        fns = (reference.sinkhorn_dense, K.sinkhorn_dense)
    out = [_run(fn, args, np.zeros(n), np.zeros(m), eps, 1000, tol, 0, 1.0, rho_a, rho_b) for fn in fns]
    f, g, it, status, errs = out[1]
    assert status == 0 and it < 1000 and errs[-1] <= tol
    C = reference.pointcloud_cost(x, y.T, 0, 0.5)
    P = _plan(f, g, C, eps)
    resid = (np.abs(P.sum(1) - marginal_target(a, f, eps, rho_a)).sum()
             + np.abs(P.sum(0) - marginal_target(b, g, eps, rho_b)).sum())
    assert resid <= tol * 1.01
    np.testing.assert_allclose(f, out[0][0], atol=1e-9)
    np.testing.assert_allclose(g, out[0][1], atol=1e-9)


def _damped(log_w, pot_other, C, eps, rho):
    """Block maximiser eps (log w + 1/2 + lam (1/2 - LSE_j (pot_j - C_ij)/eps)) (NumPy)."""
    lse = logsumexp((pot_other[None, :] - C) / eps, axis=1)
    lam = damping(eps, rho)
    if lam == 1.0:
        return eps * (log_w + 1.0 - lse)
    return eps * (log_w + 0.5 + lam * (0.5 - lse))


def _plan(f, g, C, eps):
    return np.exp((f[:, None] + g[None, :] - C) / eps - 1.0)


@pytest.mark.parametrize("rho_a,rho_b", RHOS[:3])
@pytest.mark.parametrize("omega", [1.0, -1.0])
def test_fixed_point_and_pot(rng, rho_a, rho_b, omega):
    n, m, eps = 30, 22, 0.1
    x, y = rng.normal(size=(n, 2)), rng.normal(size=(m, 2)) + 0.5
    C = ot.dist(x, y) / 2
    a, la = _weights(rng, n, 1.0)
    b, lb = _weights(rng, m, 1.4)
    f, g = np.zeros(n), np.zeros(m)
    it, status, errs = K.sinkhorn_dense(C, la, lb, f, g, eps, 20000, 1e-13, 0, omega, rho_a, rho_b)
    assert status == 0 and errs[-1] <= 1e-13
    # converged potentials are a fixed point of the damped block updates
    np.testing.assert_allclose(f, _damped(la, g, C, eps, rho_a), rtol=0, atol=1e-11)
    np.testing.assert_allclose(g, _damped(lb, f, C.T, eps, rho_b), rtol=0, atol=1e-11)
    P = _plan(f, g, C, eps)
    P_pot = ot.unbalanced.sinkhorn_unbalanced(a, b, C, eps, (rho_a, rho_b), reg_type="kl",
                                              numItermax=200000, stopThr=1e-15)
    np.testing.assert_allclose(P, P_pot, rtol=0, atol=1e-8)
    # the marginals are the optimality targets
    np.testing.assert_allclose(P.sum(1), marginal_target(a, f, eps, rho_a), atol=1e-12)
    np.testing.assert_allclose(P.sum(0), marginal_target(b, g, eps, rho_b), atol=1e-12)


@pytest.mark.parametrize("rho", [INF, 0.5, 0.03])
@pytest.mark.parametrize("pointcloud", [False, True])
def test_symmetric_sweeps_match_reference(rng, rho, pointcloud):
    n, eps = 35, 0.05
    x = rng.random((n, 2))
    a, la = _weights(rng, n, 1.3 if math.isfinite(rho) else 1.0, n_zero=2)
    if pointcloud:
        args = (x, np.ascontiguousarray(x.T), 0, 0.5, la)
        fns = (reference.symmetric_pointcloud, K.symmetric_pointcloud)
    else:
        args = (reference.pointcloud_cost(x, x.T, 1, 1.0), la)
        fns = (reference.symmetric_dense, K.symmetric_dense)
    f0 = rng.standard_normal(n) * 0.05
    res = []
    for fn in fns:
        f = f0.copy()
        it, status, errs = fn(*args, f, eps, 8, 0.0, 0, rho)
        res.append((f, it, status, np.asarray(errs)))
    (fr, itr, sr, er), (fc, itc, sc, ec) = res
    assert (itr, sr) == (itc, sc) == (8, 1)
    fin = np.isfinite(fr)
    np.testing.assert_array_equal(np.isfinite(fc), fin)
    np.testing.assert_allclose(fc[fin], fr[fin], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(ec, er, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rho", [0.5, 0.05])
def test_symmetric_sweeps_solve_ot_a_a(rng, rho):
    n, eps = 30, 0.1
    x = rng.normal(size=(n, 2))
    C = ot.dist(x, x) / 2
    a, la = _weights(rng, n, 1.6)
    f = np.zeros(n)
    it, status, errs = K.symmetric_dense(C, la, f, eps, 5000, 1e-13, 0, rho)
    assert status == 0
    np.testing.assert_allclose(f, _damped(la, f, C, eps, rho), atol=1e-11)
    P_pot = ot.unbalanced.sinkhorn_unbalanced(a, a, C, eps, rho, reg_type="kl", numItermax=200000,
                                              stopThr=1e-15)
    np.testing.assert_allclose(_plan(f, f, C, eps), P_pot, rtol=0, atol=1e-8)
    # the general kernel on OT(a, a) reaches the same plan
    fg, gg = np.zeros(n), np.zeros(n)
    assert K.sinkhorn_dense(C, la, la, fg, gg, eps, 20000, 1e-13, 0, 1.0, rho, rho)[1] == 0
    np.testing.assert_allclose(_plan(fg, gg, C, eps), _plan(f, f, C, eps), atol=1e-10)


def test_balanced_defaults_unchanged(rng):
    """rho = inf (the default) is the balanced kernel: passing it explicitly changes nothing."""
    C = rng.random((40, 30))
    a, la = _weights(rng, 40, 1.0)
    b, lb = _weights(rng, 30, 1.0)
    r1 = _run(K.sinkhorn_dense, (C, la, lb), np.zeros(40), np.zeros(30), 0.05, 30, 0.0, 0, -1.0)
    r2 = _run(K.sinkhorn_dense, (C, la, lb), np.zeros(40), np.zeros(30), 0.05, 30, 0.0, 0, -1.0, INF, INF)
    for x, y in zip(r1, r2):
        np.testing.assert_array_equal(x, y)
    Cs = C[:30, :30] + C[:30, :30].T
    f1, f2 = np.zeros(30), np.zeros(30)
    e1 = K.symmetric_dense(Cs, lb, f1, 0.1, 20, 0.0, 0)
    e2 = K.symmetric_dense(Cs, lb, f2, 0.1, 20, 0.0, 0, INF)
    assert e1 == e2
    np.testing.assert_array_equal(f1, f2)


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 8), m=st.integers(1, 8), seed=st.integers(0, 2**31 - 1),
       log_eps=st.floats(-2.0, 0.5), rho_a=st.sampled_from([0.05, 0.5, 5.0, INF]),
       rho_b=st.sampled_from([0.1, 1.0, INF]), omega=st.sampled_from([1.0, 1.5, -1.0]),
       mass_b=st.floats(0.3, 3.0))
def test_property_converged_marginals_meet_targets(n, m, seed, log_eps, rho_a, rho_b, omega, mass_b):
    """Whatever the problem, a converged compiled solve returns potentials whose plan's marginals
    are within tol of their targets (the error is measured on what is returned)."""
    rng = np.random.default_rng(seed)
    eps = 10.0 ** log_eps
    if math.isinf(rho_a) and math.isinf(rho_b):
        mass_b = 1.0  # a balanced problem needs equal masses
    a, la = _weights(rng, n, 1.0)
    b, lb = _weights(rng, m, mass_b)
    C = rng.random((n, m)) * 2.0
    f, g = np.zeros(n), np.zeros(m)
    tol = 1e-9
    it, status, errs = K.sinkhorn_dense(C, la, lb, f, g, eps, 50000, tol, 0, omega, rho_a, rho_b)
    assert status == 0, (status, errs[-3:])
    P = _plan(f, g, C, eps)
    resid = (np.abs(P.sum(1) - marginal_target(a, f, eps, rho_a)).sum()
             + np.abs(P.sum(0) - marginal_target(b, g, eps, rho_b)).sum())
    assert resid <= tol + 1e-13
    # the symmetric kernel on the square part, likewise
    if n == m:
        Cs = C + C.T
        fs = np.zeros(n)
        _, s_status, _ = K.symmetric_dense(Cs, la, fs, eps, 50000, tol, 0, rho_a)
        assert s_status == 0
        r = _plan(fs, fs, Cs, eps).sum(1)
        assert 2.0 * np.abs(r - marginal_target(a, fs, eps, rho_a)).sum() <= tol + 1e-13
