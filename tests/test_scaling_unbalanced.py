"""Unbalanced OT in the stabilised kernel-domain (scaling) kernel ``sinkhorn_scaling_dense``:
the same iterates as the NumPy reference sweeps (otsolve/kernels/reference.py: damped updates,
over-relaxation, the translation step, errors to the marginal targets) and the C++ log sweeps,
the underflow hand-back (status 3), and the driver's ``mode="scaling"`` against ``mode="log"``."""
from __future__ import annotations

import math

import numpy as np
import ot
import pytest

import otsolve
from otsolve.kernels import get_sinkhorn_kernels, reference
from otsolve.problems.marginals import marginal_target

K = get_sinkhorn_kernels(compiled=True)
INF = math.inf
# (rho_a, rho_b): both relaxed, semi-relaxed either side, balanced (the unchanged path)
RHOS = [(0.5, 2.0), (INF, 0.3), (0.4, INF), (INF, INF)]


def _weights(rng, n, mass, n_zero=0):
    w = rng.uniform(0.2, 1.0, n)
    w[rng.choice(n, n_zero, replace=False)] = 0.0
    w *= mass / w.sum()
    with np.errstate(divide="ignore"):
        return w, np.log(w)


def _scaling(C, la, lb, f0, g0, eps, max_iter, omega, rho_a, rho_b, tau=50.0, tol=0.0):
    f, g = f0.copy(), g0.copy()
    it, status, errs = K.sinkhorn_scaling_dense(C, la, lb, f, g, eps, max_iter, tol, 0, np.empty_like(C), tau,
                                                omega, rho_a, rho_b)
    return f, g, it, status, np.asarray(errs)


def _sweeps(fn, C, la, lb, f0, g0, eps, max_iter, omega, rho_a, rho_b, tol=0.0):
    f, g = f0.copy(), g0.copy()
    it, status, errs = fn(C, la, lb, f, g, eps, max_iter, tol, 0, omega, rho_a, rho_b)
    return f, g, it, status, np.asarray(errs)


def _assert_same_iterates(ref, got, mass, eps, dtype):
    (fr, gr, itr, sr, er), (fc, gc, itc, sc, ec) = ref, got
    assert (itr, sr) == (itc, sc)
    # float32 costs: the scaling kernel stores K in float32 (relative rounding ~6e-8 per entry),
    # the sweeps exponentiate the float32 costs in double
    rel = 1e-10 if dtype == np.float64 else 2e-6
    for xr, xc in ((fr, fc), (gr, gc)):
        fin = np.isfinite(xr)
        np.testing.assert_array_equal(np.isfinite(xc), fin)  # -inf where a weight is 0
        np.testing.assert_array_equal(xc[~fin], xr[~fin])
        scale = 1.0 + np.abs(xr[fin]).max(initial=0.0) / eps  # potentials in units of eps
        np.testing.assert_allclose(xc[fin], xr[fin], rtol=0, atol=rel * eps * scale)
    assert len(ec) == len(er)
    np.testing.assert_allclose(ec, er, rtol=rel, atol=(1e-12 if dtype == np.float64 else 2e-6) * mass)


def _case(rng, n, m, dtype, rho_a, rho_b, n_zero=(3, 2)):
    C = rng.random((n, m)).astype(dtype)
    mass_b = 1.0 if math.isinf(rho_a) and math.isinf(rho_b) else 1.7  # unequal masses when relaxed
    a, la = _weights(rng, n, 1.0, n_zero=n_zero[0])
    b, lb = _weights(rng, m, mass_b, n_zero=n_zero[1])
    f0, g0 = rng.standard_normal(n) * 0.05, rng.standard_normal(m) * 0.05
    return C, la, lb, f0, g0, 1.0 + mass_b


@pytest.mark.parametrize("rho_a,rho_b", RHOS)
@pytest.mark.parametrize("omega", [1.0, 1.5, -1.0])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_scaling_matches_reference_and_log_sweeps(rng, rho_a, rho_b, omega, dtype):
    n, m, eps, iters = 41, 29, 0.05, 30
    C, la, lb, f0, g0, mass = _case(rng, n, m, dtype, rho_a, rho_b)
    got = _scaling(C, la, lb, f0, g0, eps, iters, omega, rho_a, rho_b)
    assert got[2] == iters and got[3] == 1
    ref = _sweeps(reference.sinkhorn_dense, C, la, lb, f0, g0, eps, iters, omega, rho_a, rho_b)
    _assert_same_iterates(ref, got, mass, eps, dtype)
    log = _sweeps(K.sinkhorn_dense, C, la, lb, f0, g0, eps, iters, omega, rho_a, rho_b)
    _assert_same_iterates(log, got, mass, eps, dtype)
    # the keyword form of the binding and the reference's pass-through are the same call
    f, g = f0.copy(), g0.copy()
    K.sinkhorn_scaling_dense(C, la, lb, f, g, eps, iters, 0.0, 0, np.empty_like(C), omega=omega, rho_b=rho_b,
                             rho_a=rho_a)
    np.testing.assert_array_equal(f, got[0])
    np.testing.assert_array_equal(g, got[1])
    f, g = f0.copy(), g0.copy()
    r = reference.sinkhorn_scaling_dense(C, la, lb, f, g, eps, iters, 0.0, 0, None, 50.0, omega, rho_a, rho_b)
    np.testing.assert_array_equal(f, ref[0])
    np.testing.assert_array_equal(np.asarray(r[2]), ref[4])


@pytest.mark.parametrize("rho_a,rho_b", RHOS[:3])
@pytest.mark.parametrize("tau,eps", [(1e-3, 0.05), (50.0, 5e-4), (2.0, 2e-3)])
@pytest.mark.parametrize("omega", [1.0, -1.0])
def test_absorptions_do_not_change_the_iterates(rng, rho_a, rho_b, tau, eps, omega):
    # tau = 1e-3 absorbs the scalings (and rebuilds K) after every update; at eps = 5e-4 from
    # cold potentials |log u| drifts past the default tau = 50
    n, m, iters = 30, 45, 60
    C, la, lb, _, _, mass = _case(rng, n, m, np.float64, rho_a, rho_b, n_zero=(2, 1))
    C *= 0.3  # no row or column of K underflows at eps = 5e-4 (exp(-600) > 1e-280)
    f0, g0 = np.zeros(n), np.zeros(m)
    got = _scaling(C, la, lb, f0, g0, eps, iters, omega, rho_a, rho_b, tau=tau)
    assert got[3] == 1
    ref = _sweeps(reference.sinkhorn_dense, C, la, lb, f0, g0, eps, iters, omega, rho_a, rho_b)
    _assert_same_iterates(ref, got, mass, eps, np.float64)
    # absorptions did happen: without them (tau = 1e9, one K) the rounding differs
    never = _scaling(C, la, lb, f0, g0, eps, iters, omega, rho_a, rho_b, tau=1e9)
    assert not np.array_equal(never[0], got[0])


@pytest.mark.parametrize("rho_a,rho_b", RHOS[:3])
def test_stops_at_tol_on_the_measured_iterate(rng, rho_a, rho_b):
    n, m, eps = 25, 20, 0.1
    C, la, lb, f0, g0, _ = _case(rng, n, m, np.float64, rho_a, rho_b, n_zero=(0, 0))
    full = _sweeps(reference.sinkhorn_dense, C, la, lb, f0, g0, eps, 500, 1.0, rho_a, rho_b, tol=1e-9)
    got = _scaling(C, la, lb, f0, g0, eps, 500, 1.0, rho_a, rho_b, tol=1e-9)
    assert full[3] == 0 and got[3] == 0 and got[2] == full[2]
    np.testing.assert_allclose(got[0], full[0], atol=1e-12)
    # the reported last error is that of the returned potentials, measured independently
    f, g = got[0], got[1]
    P = np.exp((f[:, None] + g[None, :] - C) / eps - 1.0)
    a, b = np.exp(la), np.exp(lb)
    err = (np.abs(P.sum(1) - marginal_target(a, f, eps, rho_a)).sum()
           + np.abs(P.sum(0) - marginal_target(b, g, eps, rho_b)).sum())
    assert got[4][-1] <= 1e-9
    assert err == pytest.approx(got[4][-1], rel=1e-6, abs=1e-14)


@pytest.mark.parametrize("rho_a,rho_b", RHOS[:3])
def test_underflowed_row_hands_back(rho_a, rho_b):
    # exp(-C/eps) underflows in every entry of row 0: the stored kernel cannot represent it
    C = np.array([[0.0, 1.0], [1.0, 0.0]]) + np.array([[800.0], [0.0]])
    la, lb = np.log([0.5, 0.5]), np.log([0.6, 0.9])
    f, g, it, status, errs = _scaling(C, la, lb, np.zeros(2), np.zeros(2), 1.0, 10, 1.0, rho_a, rho_b)
    assert (it, status) == (0, 3)
    np.testing.assert_array_equal(f, 0.0)  # handed back at the entering iterate
    np.testing.assert_array_equal(g, 0.0)
    # the log sweeps take over from there (what the driver does on status 3)
    ref = _sweeps(reference.sinkhorn_dense, C, la, lb, f, g, 1.0, 5, 1.0, rho_a, rho_b)
    log = _sweeps(K.sinkhorn_dense, C, la, lb, f, g, 1.0, 5, 1.0, rho_a, rho_b)
    np.testing.assert_allclose(log[0], ref[0], rtol=1e-12)
    assert np.isfinite(log[0]).all() and np.isfinite(log[1]).all()


@pytest.mark.parametrize("rho_a,rho_b", RHOS[:3])
def test_underflowed_column_hands_back(rng, rho_a, rho_b):
    # column 4 is > 1 cost unit away from every row: at eps = 1e-3 its mass exp(-1000) underflows
    n, m, eps = 20, 15, 1e-3
    C = rng.random((n, m))
    C[:, 4] += 2.0
    a, la = _weights(rng, n, 1.0)
    b, lb = _weights(rng, m, 1.5)
    f, g, it, status, errs = _scaling(C, la, lb, np.zeros(n), np.zeros(m), eps, 10, 1.0, rho_a, rho_b)
    assert status == 3 and it <= 1
    assert np.isfinite(f).all() and np.isfinite(g).all()


def test_scaling_that_would_overflow_hands_back(rng):
    # f0 = +100, g0 = -100: K is fine (it sees f0 + g0), but the damped update moves f by about
    # -(1 - lam) f0 = -50 (1000 eps): u = exp(-1000) is not representable, so the kernel hands
    # back at the entering iterate instead of returning -inf potentials
    n, m, eps, rho = 10, 12, 0.05, 0.05
    C = rng.random((n, m))
    a, la = _weights(rng, n, 1.0)
    b, lb = _weights(rng, m, 1.0)
    f0, g0 = np.full(n, 100.0), np.full(m, -100.0)
    f, g, it, status, _ = _scaling(C, la, lb, f0, g0, eps, 10, 1.0, rho, rho)
    assert (it, status) == (0, 3)
    np.testing.assert_array_equal(f, f0)
    np.testing.assert_array_equal(g, g0)


def _clouds(seed, n, m, mass_b, dtype=np.float64):
    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=(n, 3)), rng.normal(size=(m, 3)) + 0.5
    C = (ot.dist(x, y) / 2).astype(dtype)
    a = rng.uniform(0.5, 1.5, n)
    b = rng.uniform(0.5, 1.5, m)
    a[:2] = 0.0  # zero weights
    return C, (a / a.sum()).astype(dtype), (mass_b * b / b.sum()).astype(dtype)


@pytest.mark.parametrize("rho_a,rho_b", [(0.25, 0.25), (INF, 0.3), (0.4, INF), (0.1, 2.0)])
@pytest.mark.parametrize("epsilon_scaling", [False, True])
def test_driver_scaling_mode_matches_log_mode(monkeypatch, rho_a, rho_b, epsilon_scaling):
    import otsolve._ext_sinkhorn as ext

    calls = []
    orig = ext.sinkhorn_scaling_dense

    def spy(*args, **kwargs):
        calls.append(args[11:])  # (omega, rho_a, rho_b)
        return orig(*args, **kwargs)

    monkeypatch.setattr(ext, "sinkhorn_scaling_dense", spy)
    C, a, b = _clouds(0, 120, 90, 1.4)
    prob = otsolve.LinearProblem(C, a, b, epsilon=0.01, rho_a=rho_a, rho_b=rho_b)
    res = {mode: otsolve.Sinkhorn(tol=1e-10, mode=mode, epsilon_scaling=epsilon_scaling)(prob)
           for mode in ("log", "scaling")}
    assert calls and all(c[1:] == (rho_a, rho_b) for c in calls)  # the scaling kernel ran, unbalanced
    assert res["log"].converged and res["scaling"].converged
    np.testing.assert_allclose(res["scaling"].plan, res["log"].plan, rtol=0, atol=1e-9 * res["log"].plan.max())
    assert res["scaling"].value == pytest.approx(res["log"].value, rel=1e-9)
    assert res["scaling"].n_iter == res["log"].n_iter


def test_driver_falls_back_from_an_underflowed_kernel(monkeypatch):
    # eps = 2e-3 from cold potentials without the eps-schedule: rows of K underflow (status 3),
    # the driver runs log sweeps and returns to the scaling kernel; same answer as mode="log"
    C, a, b = _clouds(1, 60, 50, 0.8)
    prob = otsolve.LinearProblem(C, a, b, epsilon=2e-3, rho_a=0.5, rho_b=0.5)
    res = {mode: otsolve.Sinkhorn(tol=1e-9, mode=mode, epsilon_scaling=False, max_iter=20_000)(prob)
           for mode in ("log", "scaling")}
    assert res["scaling"].kernel_fallbacks >= 1
    assert res["log"].converged and res["scaling"].converged
    np.testing.assert_allclose(res["scaling"].plan, res["log"].plan, rtol=0, atol=1e-8 * res["log"].plan.max())
    assert res["scaling"].value == pytest.approx(res["log"].value, rel=1e-8)
