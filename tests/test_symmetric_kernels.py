"""Stored-kernel symmetric Sinkhorn (csrc/symmetric_kernels.hpp) against its NumPy reference and
the log-domain symmetric kernel: same iterates, errors, statuses, also through absorptions,
underflow hand-backs to the log sweeps, zero weights and spent budgets."""
from __future__ import annotations

import numpy as np
import pytest

from otsolve.kernels import HAVE_COMPILED, reference

pytestmark = pytest.mark.skipif(not HAVE_COMPILED, reason="compiled kernels not built")


def _problem(n, d, dtype, seed=0, zero=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    C = (0.5 * ((X[:, None, :] - X[None, :, :]) ** 2).sum(-1)).astype(dtype)
    a = rng.random(n) + 0.5
    if zero:
        a[rng.choice(n, zero, replace=False)] = 0.0
    a /= a.sum()
    with np.errstate(divide="ignore"):
        return C, np.log(a)


def _run(fn, C, la, f0, eps, max_iter, tol, tau=50.0):
    f = f0.copy()
    it, st, errs = fn(C, la, f, eps, max_iter, tol, 1, np.empty_like(C), tau)
    return f, it, st, np.asarray(errs)


def _compiled():
    from otsolve.kernels import get_sinkhorn_kernels

    return get_sinkhorn_kernels(True)


@pytest.mark.parametrize("dtype, rtol", [(np.float64, 1e-9), (np.float32, 1e-5)])
@pytest.mark.parametrize("n, d, blur, zero", [(40, 2, 0.05, 0), (60, 3, 0.3, 0), (50, 2, 0.1, 5), (30, 1, 1.0, 0)])
def test_matches_reference_and_log_kernel(dtype, rtol, n, d, blur, zero):
    K = _compiled()
    C, la = _problem(n, d, dtype, zero=zero)
    eps, f0 = blur**2, np.zeros(n)
    fc, itc, stc, ec = _run(K.symmetric_scaling_dense, C, la, f0, eps, 200, 1e-7)
    fr, itr, st_r, er = _run(reference.symmetric_scaling_dense, C, la, f0, eps, 200, 1e-7)
    fl = f0.copy()
    itl, stl, el = K.symmetric_dense(C, la, fl, eps, 200, 1e-7, 1)
    assert (itc, stc) == (itr, st_r) == (itl, stl)
    assert stc == 0 and ec[-1] <= 1e-7
    np.testing.assert_allclose(ec, er, rtol=1e-3, atol=1e-9)
    np.testing.assert_allclose(ec, el, rtol=1e-3, atol=1e-9)
    pos = np.isfinite(la)
    np.testing.assert_allclose(fc[pos], fr[pos], rtol=rtol, atol=rtol * eps)
    # zero weights: -inf potentials, as in the log kernel
    assert np.array_equal(np.isneginf(fc), ~pos) and np.array_equal(np.isneginf(fl), ~pos)


def test_absorption_gives_the_same_iterates():
    """A tiny tau absorbs the scalings into f (and rebuilds K) at every iteration."""
    K = _compiled()
    C, la = _problem(50, 2, np.float64, seed=1)
    eps = 0.01
    f_abs, it1, st1, e1 = _run(K.symmetric_scaling_dense, C, la, np.zeros(50), eps, 100, 1e-8, tau=1e-3)
    f_keep, it2, st2, e2 = _run(K.symmetric_scaling_dense, C, la, np.zeros(50), eps, 100, 1e-8, tau=1e9)
    assert (it1, st1) == (it2, st2) and st1 == 0
    np.testing.assert_allclose(e1, e2, rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(f_abs, f_keep, rtol=1e-9, atol=1e-12)


def test_underflow_hands_back_to_log_sweeps():
    """A start far below the solution underflows the stored kernel; the kernel finishes with the
    log-domain sweeps (status 0, never 3) and agrees with the log kernel from the same start."""
    K = _compiled()
    n = 40
    C, la = _problem(n, 2, np.float64, seed=2)
    eps = 0.01
    f0 = np.full(n, -20.0)  # exp((f_i + f_j - C)/eps) = exp(-4000): every kernel row underflows
    fc, itc, stc, ec = _run(K.symmetric_scaling_dense, C, la, f0, eps, 300, 1e-8)
    fl = f0.copy()
    itl, stl, el = K.symmetric_dense(C, la, fl, eps, 300, 1e-8, 1)
    assert stc == 0 and (itc, stc) == (itl, stl)
    np.testing.assert_allclose(ec, el, rtol=1e-6)
    np.testing.assert_allclose(fc, fl, rtol=1e-9, atol=1e-12)


def test_budget_spent_reports_status_1():
    K = _compiled()
    C, la = _problem(60, 2, np.float64, seed=3)
    f, it, st, e = _run(K.symmetric_scaling_dense, C, la, np.zeros(60), 0.0025, 2, 1e-12)
    fr, itr, st_r, er = _run(reference.symmetric_scaling_dense, C, la, np.zeros(60), 0.0025, 2, 1e-12)
    assert (it, st, len(e)) == (itr, st_r, len(er)) == (2, 1, 3)
    np.testing.assert_allclose(f, fr, rtol=1e-9, atol=1e-12)


def test_bad_shapes_are_refused():
    K = _compiled()
    C, la = _problem(10, 2, np.float64)
    with pytest.raises(ValueError, match="square"):
        K.symmetric_scaling_dense(C[:, :9].copy(), la, np.zeros(10), 0.1, 10, 1e-6, 1, np.empty((10, 9)), 50.0)
    with pytest.raises(ValueError, match="workspace"):
        K.symmetric_scaling_dense(C, la, np.zeros(10), 0.1, 10, 1e-6, 1, np.empty((9, 9)), 50.0)
    with pytest.raises(ValueError, match="f has length"):
        K.symmetric_scaling_dense(C, la, np.zeros(9), 0.1, 10, 1e-6, 1, np.empty_like(C), 50.0)
