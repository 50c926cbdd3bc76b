"""Stored-kernel symmetric Sinkhorn (csrc/symmetric_kernels.hpp) against its NumPy reference and
the log-domain symmetric kernel: same iterates, errors, statuses, also through absorptions,
underflow hand-backs to the log sweeps, zero weights and spent budgets. The fused envelope
gradient in the points (csrc/plan_grad_kernels.hpp) against its reference and torch autograd."""
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


# -- envelope gradient in the points (csrc/plan_grad_kernels.hpp) -------------------------------

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind, scale", [(0, 0.5), (0, 1.0), (1, 1.0)])
@pytest.mark.parametrize("need", [(True, True), (True, False), (False, True)])
def test_plan_cost_grad_matches_reference(dtype, kind, scale, need):
    K = _compiled()
    rng = np.random.default_rng(4)
    n, m, d, eps = 37, 29, 3, 0.05
    X = rng.standard_normal((n, d)).astype(dtype)
    Y = rng.standard_normal((m, d)).astype(dtype)
    X[5] = Y[7]  # a zero distance (the euclidean weight is 0 there)
    YT = np.ascontiguousarray(Y.T)
    f, g = rng.standard_normal(n) * 0.1, rng.standard_normal(m) * 0.1
    out = {}
    for name, fn in (("compiled", K.plan_cost_grad_pointcloud), ("reference", reference.plan_cost_grad_pointcloud)):
        gx, gy = np.full((n, d), np.nan), np.full((m, d), np.nan)
        fn(X, YT, kind, scale, f, g, eps, gx, gy, need[0], need[1], 1)
        out[name] = (gx, gy)
    for k in range(2):
        if need[k]:
            np.testing.assert_allclose(out["compiled"][k], out["reference"][k], rtol=1e-9, atol=1e-12)
        else:  # not requested: left untouched
            assert np.isnan(out["compiled"][k]).all()


def test_plan_cost_grad_is_the_gradient_of_the_transport_cost():
    """Against autograd of <P, C(x, y)> at the fixed plan (torch, float64)."""
    torch = pytest.importorskip("torch")
    K = _compiled()
    rng = np.random.default_rng(5)
    n, m, d, eps = 20, 25, 2, 0.1
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    f, g = rng.standard_normal(n) * 0.1, rng.standard_normal(m) * 0.1
    for kind, scale in ((0, 0.5), (1, 1.0)):
        xt = torch.tensor(X, requires_grad=True)
        yt = torch.tensor(Y, requires_grad=True)
        D2 = ((xt[:, None] - yt[None]) ** 2).sum(-1)
        C = scale * (D2 if kind == 0 else D2.sqrt())
        P = torch.exp((torch.tensor(f)[:, None] + torch.tensor(g)[None] - C.detach()) / eps - 1.0)
        (P * C).sum().backward()
        gx, gy = np.empty((n, d)), np.empty((m, d))
        K.plan_cost_grad_pointcloud(X, np.ascontiguousarray(Y.T), kind, scale, f, g, eps, gx, gy, True, True, 1)
        np.testing.assert_allclose(gx, xt.grad.numpy(), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(gy, yt.grad.numpy(), rtol=1e-10, atol=1e-13)


def test_plan_cost_grad_threads_agree_and_shapes_are_checked():
    K = _compiled()
    rng = np.random.default_rng(6)
    n, m, d = 700, 800, 3  # above the automatic threading threshold of the kernels
    X, Y = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    YT = np.ascontiguousarray(Y.T)
    f, g = np.zeros(n), np.zeros(m)
    res = []
    for nt in (1, 2):
        gx, gy = np.empty((n, d)), np.empty((m, d))
        K.plan_cost_grad_pointcloud(X, YT, 0, 0.5, f, g, 1.0, gx, gy, True, True, nt)
        res.append((gx, gy))
    np.testing.assert_allclose(res[0][0], res[1][0], rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(res[0][1], res[1][1], rtol=1e-10, atol=1e-13)
    with pytest.raises(ValueError, match="gx must have"):
        K.plan_cost_grad_pointcloud(X, YT, 0, 0.5, f, g, 1.0, np.empty((n, 2)), np.empty((m, d)), True, True, 1)
    with pytest.raises(ValueError, match="g has length"):
        K.plan_cost_grad_pointcloud(X, YT, 0, 0.5, f, g[:-1], 1.0, np.empty((n, d)), np.empty((m, d)), True, True, 1)
