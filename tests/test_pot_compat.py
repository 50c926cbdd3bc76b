"""otsolve's POT front end (otsolve.sinkhorn / sinkhorn2, otsolve.pot) checked against POT itself."""
from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otsolve
import otsolve.pot as opot
from otsolve.pot_compat import POT_NOT_CONVERGED, SINKHORN2_METHODS, SINKHORN_METHODS, reachable_stopthr

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

# keys POT 0.9.7 puts in the log of each method (single histogram / several histograms)
POT_KEYS = {
    "sinkhorn": {"err", "niter", "u", "v"},
    "sinkhorn_log": {"err", "niter", "log_u", "log_v", "u", "v"},
    "greenkhorn": {"n_iter", "u", "v"},
    "sinkhorn_stabilized": {"err", "n_iter", "logu", "logv", "alpha", "beta", "warmstart"},
    "sinkhorn_epsilon_scaling": {"err", "alpha", "beta", "warmstart", "niter"},
}


@pytest.fixture
def prob():
    rng = np.random.RandomState(3)
    n, m = 30, 40
    x, y = rng.randn(n, 2), rng.randn(m, 2) + 0.5
    a = rng.rand(n) + 0.1
    a /= a.sum()
    b = rng.rand(m) + 0.1
    b /= b.sum()
    M = ot.dist(x, y)
    M /= M.max()
    return a, b, M


@pytest.mark.parametrize("method", SINKHORN_METHODS)
def test_every_method_matches_pot(prob, method):
    a, b, M = prob
    reg = 0.05
    P_ref = ot.sinkhorn(a, b, M, reg, method="sinkhorn_log", stopThr=1e-13, numItermax=20000)
    P, log = otsolve.sinkhorn(a, b, M, reg, method=method, stopThr=1e-11, log=True)
    np.testing.assert_allclose(P, P_ref, atol=1e-10)
    assert POT_KEYS[method] <= set(log)
    assert log["result"].converged
    # POT's scalings reconstruct the plan: P = diag(u) exp(-M/reg) diag(v)
    u, v = np.exp(log["log_u"]), np.exp(log["log_v"])  # otsolve adds log_u, log_v to every method's log
    if method in ("sinkhorn_stabilized", "sinkhorn_epsilon_scaling"):
        np.testing.assert_allclose(np.exp((log["alpha"][:, None] + log["beta"][None, :] - M) / reg), P, atol=1e-12)
    np.testing.assert_allclose(u[:, None] * np.exp(-M / reg) * v[None, :], P, rtol=1e-8, atol=1e-15)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(1, 12), m=st.integers(1, 12), reg=st.floats(0.05, 2.0), seed=st.integers(0, 2**31 - 1),
       method=st.sampled_from(SINKHORN_METHODS))
def test_property_plan_matches_pot(n, m, reg, seed, method):
    rng = np.random.default_rng(seed)
    a, b = rng.random(n) + 0.05, rng.random(m) + 0.05
    a, b = a / a.sum(), b / b.sum()
    M = rng.random((n, m))
    P_ref = ot.sinkhorn(a, b, M, reg, method="sinkhorn_log", stopThr=1e-14, numItermax=100000, warn=False)
    P = otsolve.sinkhorn(a, b, M, reg, method=method, stopThr=1e-12)
    np.testing.assert_allclose(P, P_ref, atol=1e-11)
    assert otsolve.sinkhorn2(a, b, M, reg, stopThr=1e-12) == pytest.approx(float(np.sum(M * P_ref)), abs=1e-11)


def test_method_names_checked_as_pot(prob):
    a, b, M = prob
    for fn, allowed in ((otsolve.sinkhorn, SINKHORN_METHODS), (otsolve.sinkhorn2, SINKHORN2_METHODS)):
        with pytest.raises(ValueError, match="Unknown method"):
            fn(a, b, M, 0.1, method="foo")
    for method in ("greenkhorn", "sinkhorn_epsilon_scaling"):  # POT: plan only
        otsolve.sinkhorn(a, b, M, 0.1, method=method)
        with pytest.raises(ValueError):
            ot.sinkhorn2(a, b, M, 0.1, method=method)
        with pytest.raises(ValueError, match="Unknown method"):
            otsolve.sinkhorn2(a, b, M, 0.1, method=method)
    assert otsolve.sinkhorn2(a, b, M, 0.1, method="SINKHORN_LOG") == pytest.approx(
        ot.sinkhorn2(a, b, M, 0.1, method="sinkhorn_log", stopThr=1e-12), rel=1e-9)


def test_pot_keywords_accepted_unknown_ignored_as_pot(prob):
    a, b, M = prob
    P = otsolve.sinkhorn(a, b, M, 0.1, method="sinkhorn_stabilized", tau=10, print_period=5)
    P2 = otsolve.sinkhorn(a, b, M, 0.1, method="sinkhorn_epsilon_scaling", epsilon0=1.0, numInnerItermax=50)
    np.testing.assert_allclose(P, P2, atol=1e-10)
    # POT's Sinkhorn functions ignore unknown keywords (its Gromov solvers pass tol_abs, tol_rel)
    np.testing.assert_allclose(otsolve.sinkhorn(a, b, M, 0.1, tol_abs=1e-3), P, atol=1e-10)


def test_convergence_warning_is_pots(prob):
    a, b, M = prob
    with pytest.warns(UserWarning, match="Sinkhorn did not converge") as rec:
        otsolve.sinkhorn(a, b, M, 0.01, numItermax=2)
    assert any(str(w.message) == POT_NOT_CONVERGED for w in rec)
    with pytest.warns(UserWarning, match="did not converge"):
        otsolve.sinkhorn2(a, b, M, 0.01, numItermax=2, warn=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        otsolve.sinkhorn2(a, b, M, 0.01, numItermax=2)  # sinkhorn2: warn=False by default, as POT
        otsolve.sinkhorn(a, b, M, 0.01, numItermax=2, warn=False)


def test_stopthr_zero_and_reg_zero_warn_not_raise(prob):
    a, b, M = prob
    with pytest.warns(UserWarning):
        ot.sinkhorn(a, b, M, 1.0, stopThr=0, numItermax=1)
    with pytest.warns(UserWarning, match="did not converge"):
        otsolve.sinkhorn(a, b, M, 1.0, stopThr=0, numItermax=1)
    with warnings.catch_warnings():  # stopThr=0 with enough iterations: the rounding level, silently
        warnings.simplefilter("error")
        P, log = otsolve.sinkhorn(a, b, M, 1.0, stopThr=0, numItermax=5000, log=True)
    assert log["result"].marginal_error <= reachable_stopthr(np.float64)
    with pytest.warns(UserWarning, match="reg=0"):
        P0 = otsolve.sinkhorn(a, b, M, 0, warn=False)
    np.testing.assert_allclose(P0, ot.emd(a, b, M), atol=1e-14)
    with pytest.warns(UserWarning, match="reg=0"):
        assert otsolve.sinkhorn2(a, b, M, 0.0) == pytest.approx(ot.emd2(a, b, M), rel=1e-12)
    with pytest.raises(ValueError, match="reg"):
        otsolve.sinkhorn(a, b, M, -1.0)
    with pytest.raises(ValueError, match="stopThr"):
        otsolve.sinkhorn(a, b, M, 1.0, stopThr=-1)


def test_one_d_cost_rejected_with_fix(prob):
    a, b, M = prob
    with pytest.raises(ValueError, match="2-D cost matrix.*dist"):
        otsolve.sinkhorn(a, a, M[:, 0], 0.1)
    with pytest.raises(ValueError, match="shape"):
        otsolve.sinkhorn(a, b[:-1], M, 0.1)


@pytest.mark.parametrize("method", SINKHORN2_METHODS)
def test_several_histograms(prob, method):
    a, b, M = prob
    rng = np.random.RandomState(1)
    B = rng.rand(M.shape[1], 3)
    B /= B.sum(0, keepdims=True)
    loss = otsolve.sinkhorn2(a, B, M, 0.1, method=method, stopThr=1e-12)
    ref = [ot.sinkhorn2(a, B[:, k], M, 0.1, method="sinkhorn_log", stopThr=1e-13) for k in range(3)]
    assert loss.shape == (3,)
    np.testing.assert_allclose(loss, ref, rtol=1e-9)
    loss2, log = otsolve.sinkhorn(a, B, M, 0.1, method=method, stopThr=1e-12, log=True)
    np.testing.assert_allclose(loss2, ref, rtol=1e-9)
    pot_loss, pot_log = ot.sinkhorn(a, B, M, 0.1, method=method, stopThr=1e-12, log=True)
    assert set(pot_log) <= set(log)
    for key, val in pot_log.items():
        if isinstance(val, np.ndarray):
            assert log[key].shape == val.shape, key


def test_warmstart_pot_convention(prob):
    a, b, M = prob
    reg = 0.05
    P, log = otsolve.sinkhorn(a, b, M, reg, method="sinkhorn_log", stopThr=1e-11, log=True)
    # POT's own warm start from POT's own log: (log u, log v)
    _, pot_log = ot.sinkhorn(a, b, M, reg, method="sinkhorn_log", stopThr=1e-12, log=True)
    P2, log2 = otsolve.sinkhorn(a, b, M, reg, method="sinkhorn_log", stopThr=1e-11, log=True,
                                warmstart=(pot_log["log_u"], pot_log["log_v"]))
    np.testing.assert_allclose(P2, P, atol=1e-11)
    assert log2["niter"] <= 3 < log["niter"]
    # stabilized: warmstart is (alpha, beta) in cost units, as POT's log["warmstart"]
    _, ls = otsolve.sinkhorn(a, b, M, reg, method="sinkhorn_stabilized", stopThr=1e-11, log=True)
    _, ls2 = otsolve.sinkhorn(a, b, M, reg, method="sinkhorn_stabilized", stopThr=1e-11, log=True,
                              warmstart=ls["warmstart"])
    assert ls2["n_iter"] <= 3
    _, pot_ls = ot.sinkhorn(a, b, M, reg, method="sinkhorn_stabilized", stopThr=1e-12, log=True)
    _, ls3 = otsolve.sinkhorn(a, b, M, reg, method="sinkhorn_stabilized", stopThr=1e-11, log=True,
                              warmstart=pot_ls["warmstart"])
    assert ls3["n_iter"] <= 3


def test_verbose_prints_table(prob, capsys):
    a, b, M = prob
    otsolve.sinkhorn(a, b, M, 0.1, verbose=True)
    out = capsys.readouterr().out
    assert "It." in out and "Err" in out


def test_float32_tolerance_clamped_not_max_iter(prob):
    a, b, M = (x.astype(np.float32) for x in prob)
    with pytest.warns(UserWarning, match="below what float32"):
        P, log = otsolve.sinkhorn(a, b, M, 0.05, stopThr=1e-9, log=True)
    assert P.dtype == np.float32
    res = log["result"]
    assert res.converged and res.marginal_error <= reachable_stopthr(np.float32, float(a.sum()))
    P64 = ot.sinkhorn(*prob, 0.05, method="sinkhorn_log", stopThr=1e-12, numItermax=20000)
    np.testing.assert_allclose(P, P64, atol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        otsolve.sinkhorn(a, b, M, 0.05, stopThr=1e-5)  # reachable: no warning


# ----------------------------------------------------------------------------------- arrays
@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_torch_in_torch_out(prob, dtype):
    a, b, M = prob
    td = getattr(torch, dtype)
    at, bt, Mt = (torch.tensor(x, dtype=td) for x in (a, b, M))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # float32 tolerance clamp
        P, log = otsolve.sinkhorn(at, bt, Mt, 0.1, log=True)
        loss = otsolve.sinkhorn2(at, bt, Mt, 0.1)
        L3 = otsolve.sinkhorn2(at, torch.stack([bt, bt], 1), Mt, 0.1)
    assert isinstance(P, torch.Tensor) and P.dtype == td and P.device == Mt.device
    assert isinstance(log["u"], torch.Tensor) and log["u"].dtype == td
    assert isinstance(loss, torch.Tensor) and loss.dtype == td and loss.ndim == 0
    assert isinstance(L3, torch.Tensor) and L3.shape == (2,)
    ref = ot.sinkhorn2(a, b, M, 0.1, method="sinkhorn_log", stopThr=1e-12)
    assert float(loss) == pytest.approx(ref, rel=1e-9 if dtype == "float64" else 1e-5)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_torch_sinkhorn2_gradients_match_pot(prob):
    a, b, M = prob
    reg = 0.1

    def grads(fn, **kw):
        at, bt, Mt = (torch.tensor(x, requires_grad=True) for x in (a, b, M))
        val = fn(at, bt, Mt, reg, **kw)
        val.backward()
        return float(val.detach()), at.grad, bt.grad, Mt.grad

    v0, ga0, gb0, gM0 = grads(ot.sinkhorn2, method="sinkhorn_log", stopThr=1e-13, numItermax=5000)
    v1, ga1, gb1, gM1 = grads(otsolve.sinkhorn2, stopThr=1e-12)
    assert v1 == pytest.approx(v0, rel=1e-10)
    np.testing.assert_allclose(gM1, gM0, atol=1e-9)
    # gradients in a and b are defined up to a constant shift (sum a = sum b): compare centred
    np.testing.assert_allclose(ga1 - ga1.mean(), ga0 - ga0.mean(), atol=1e-8)
    np.testing.assert_allclose(gb1 - gb1.mean(), gb0 - gb0.mean(), atol=1e-8)
    # the differentiable plan too
    Mt = torch.tensor(M, requires_grad=True)
    P = otsolve.sinkhorn(torch.tensor(a), torch.tensor(b), Mt, reg)
    (P * Mt).sum().backward()
    np.testing.assert_allclose(Mt.grad, gM0, atol=1e-9)


@pytest.mark.skipif(torch is None or not torch.cuda.is_available(), reason="needs a CUDA device")
def test_torch_cuda_in_cuda_out(prob):  # pragma: no cover - GPU only
    a, b, M = (torch.tensor(x, device="cuda") for x in prob)
    P = otsolve.sinkhorn(a, b, M, 0.1)
    assert P.device == M.device
    assert otsolve.sinkhorn2(a, b, M, 0.1).device == M.device


def test_jax_in_jax_out(prob):
    jnp = pytest.importorskip("jax.numpy")
    import jax

    a, b, M = prob
    ja, jb, jM = (jnp.asarray(x) for x in (a, b, M))  # float32 unless jax_enable_x64
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        P = otsolve.sinkhorn(ja, jb, jM, 0.1)
        loss = otsolve.sinkhorn2(ja, jb, jM, 0.1)
    assert isinstance(P, jax.Array) and P.dtype == jM.dtype and P.shape == M.shape
    assert isinstance(loss, jax.Array) and loss.ndim == 0
    assert float(loss) == pytest.approx(ot.sinkhorn2(a, b, M, 0.1, stopThr=1e-12), rel=1e-5)
    with pytest.raises(ValueError, match="cannot be traced"):
        jax.grad(lambda m: otsolve.sinkhorn2(ja, jb, m, 0.1))(jM)


def test_lists_and_empty_weights(prob):
    a, b, M = prob
    P = otsolve.sinkhorn([], [], M.tolist(), 0.1)
    np.testing.assert_allclose(P, ot.sinkhorn([], [], M, 0.1, method="sinkhorn_log", stopThr=1e-12), atol=1e-10)
    assert otsolve.sinkhorn2([0.5, 0.5], [0.5, 0.5], [[0.0, 1.0], [1.0, 0.0]], 1) == pytest.approx(
        0.26894142136999516, rel=1e-9)  # POT's docstring example


def test_mixed_libraries_rejected(prob):
    if torch is None:
        pytest.skip("torch not installed")
    a, b, M = prob
    with pytest.raises(ValueError, match="different libraries"):
        otsolve.sinkhorn(a, b, torch.tensor(M), 0.1)


# ------------------------------------------------------------------------------ otsolve.pot
@pytest.mark.parametrize("reg", [None, 0.05])
@pytest.mark.parametrize("reg_type", ["KL", "entropy"])
def test_pot_module_solve_matches_ot_solve(prob, reg, reg_type):
    a, b, M = prob
    r0 = ot.solve(M, a, b, reg=reg, reg_type=reg_type, tol=1e-12, max_iter=20000)
    r1 = opot.solve(M, a, b, reg=reg, reg_type=reg_type, tol=1e-11)
    assert r1.value == pytest.approx(r0.value, rel=1e-9)
    assert r1.value_linear == pytest.approx(r0.value_linear, rel=1e-9)
    np.testing.assert_allclose(r1.plan, r0.plan, atol=1e-10)
    np.testing.assert_allclose(r1.marginal_a, a, atol=1e-10)
    assert r1.status == "Converged"
    # potentials: POT's (log u, log v) / duals, equal up to the gauge (u + t, v - t)
    du = r1.potentials[0] - r0.potentials[0]
    dv = r1.potentials[1] - r0.potentials[1]
    assert np.ptp(du) < 1e-7 and np.ptp(dv) < 1e-7 and abs(du.mean() + dv.mean()) < 1e-7
    assert r1.log["result"].converged


def test_pot_module_solve_sample_and_dist(prob):
    rng = np.random.RandomState(0)
    xa, xb = 0.3 * rng.randn(15, 3), 0.3 * rng.randn(20, 3)
    np.testing.assert_array_equal(opot.dist(xa, xb), ot.dist(xa, xb))
    for kw in ({"reg": 0.5}, {"reg": None}, {"reg": 0.5, "debias": True}, {"metric": "euclidean", "reg": 1.0}):
        r0 = ot.solve_sample(xa, xb, tol=1e-12, max_iter=5000, **kw)
        r1 = opot.solve_sample(xa, xb, tol=1e-12, max_iter=5000, **kw)
        assert r1.value == pytest.approx(r0.value, rel=1e-8), kw
    r1 = opot.solve_sample(xa, xb, method="1d")  # forwarded to POT
    assert r1.value == pytest.approx(ot.solve_sample(xa, xb, method="1d").value)


def test_pot_module_unbalanced(prob):
    """Entropic KL-unbalanced OT runs otsolve's Sinkhorn (tests/test_pot_unbalanced.py has the rest);
    POT's value there (its total_cost) is 0 at the optimum, so the plans are compared."""
    a, b, M = prob
    r0 = ot.solve(M, a, b, reg=0.1, unbalanced=1.0, tol=1e-14, max_iter=100000)
    r1 = opot.solve(M, a, b, reg=0.1, unbalanced=1.0, tol=1e-13)
    assert r1.log["result"].converged
    np.testing.assert_allclose(r1.plan, r0.plan, atol=1e-10)
    assert r1.value_linear == pytest.approx(r0.value_linear, rel=1e-10)


def test_pot_module_emd(prob):
    a, b, M = prob
    P0, l0 = ot.emd(a, b, M, log=True)
    P1, l1 = opot.emd(a, b, M, log=True)
    np.testing.assert_allclose(P1, P0, atol=1e-15)
    assert set(l0) <= set(l1) and l1["cost"] == pytest.approx(l0["cost"], rel=1e-12)
    np.testing.assert_allclose(l1["u"], l0["u"], atol=1e-12)
    assert opot.emd2(a, b, M) == pytest.approx(ot.emd2(a, b, M), rel=1e-12)
    B = np.stack([b, b[::-1]], 1)
    np.testing.assert_allclose(opot.emd2(a, B, M), ot.emd2(a, B, M), rtol=1e-12)  # a list of k losses
    r0, r1 = ot.emd2(a, B, M, log=True, return_matrix=True), opot.emd2(a, B, M, log=True, return_matrix=True)
    assert len(r1) == len(r0) == 2
    for (c0, l0), (c1, l1) in zip(r0, r1):
        assert c1 == pytest.approx(c0, rel=1e-12) and set(l0) <= set(l1)
        np.testing.assert_allclose(l1["G"], l0["G"], atol=1e-15)
    # bad input: a ValueError that is also POT's AssertionError
    for args in ((a[:-1], b, M), (a * 2, b, M)):
        for fn in (opot.emd, opot.emd2):
            with pytest.raises(ValueError):
                fn(*args)
            with pytest.raises(AssertionError):
                fn(*args)
    P2 = opot.emd([], [], M[:, :30])
    np.testing.assert_allclose(P2, ot.emd([], [], M[:, :30]), atol=1e-15)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_pot_module_torch_gradients(prob):
    a, b, M = prob

    def run(fn, **kw):
        at, bt, Mt = (torch.tensor(x, requires_grad=True) for x in (a, b, M))
        v = fn(at, bt, Mt, **kw)
        v = v.value if hasattr(v, "value") else v
        v.backward()
        return [g - g.mean() if g.ndim == 1 else g for g in (at.grad, bt.grad, Mt.grad)]

    for g0, g1 in zip(run(ot.emd2), run(opot.emd2)):
        np.testing.assert_allclose(g1, g0, atol=1e-10)
    at, bt, Mt = (torch.tensor(x, requires_grad=True) for x in (a, b, M))
    val, log = opot.emd2(at, bt, Mt, log=True)
    val.backward()  # POT's gradients exactly: u - mean(u), v - mean(v), P
    np.testing.assert_allclose(at.grad, log["u"] - log["u"].mean(), atol=1e-12)
    np.testing.assert_allclose(bt.grad, log["v"] - log["v"].mean(), atol=1e-12)
    for grad in ("autodiff", "envelope"):
        G0 = run(lambda a, b, M, **kw: ot.solve(M, a, b, reg=0.1, tol=1e-13, max_iter=10000, grad=grad))
        G1 = run(lambda a, b, M, **kw: opot.solve(M, a, b, reg=0.1, tol=1e-12, grad=grad))
        for g0, g1 in zip(G0, G1):
            np.testing.assert_allclose(g1, g0, atol=1e-7)


def test_solve_in_pot_order_names_the_fix(prob):
    a, b, M = prob
    with pytest.raises(ValueError, match=r"otsolve\.pot\.solve\(M, a, b"):
        otsolve.solve(M, a, b)
    with pytest.raises(ValueError, match="cost matrix comes third"):
        otsolve.solve(M)


# ------------------------------------------------------------------------------ exact OT
def test_exact_method_in_registry(prob):
    a, b, M = prob
    res = otsolve.solve(a, b, M, method="emd")
    assert res.converged and res.status == "converged" and res.method == "emd"
    assert res.cost == pytest.approx(ot.emd2(a, b, M), rel=1e-12) and res.value == res.cost
    P = res.plan
    assert res.marginal_error == pytest.approx(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum(), abs=1e-18)
    # Kantorovich duals in cost units: feasible, tight on the support, value = <a, f> + <b, g>
    slack = M - res.f[:, None] - res.g[None, :]
    assert slack.min() > -1e-12 and np.abs(slack[P > 0]).max() < 1e-12
    assert a @ res.f + b @ res.g == pytest.approx(res.cost, rel=1e-10)
    assert np.count_nonzero(P) <= len(a) + len(b) - 1


def test_exact_status_from_pot(prob):
    a, b, M = prob
    with pytest.warns(RuntimeWarning, match="max_iter"):
        res = otsolve.solve(a, b, M, method="emd", max_iter=3)
    assert not res.converged and res.status == "max_iter"
    with pytest.raises(ValueError, match="max_iter"):
        otsolve.solve(a, b, M, method="emd", max_iter=0)


def test_exact_float32_and_pointcloud():
    rng = np.random.RandomState(2)
    x, y = rng.rand(25, 2), rng.rand(30, 2)
    res = otsolve.solve(None, None, otsolve.PointCloud(x, y), method="emd")
    assert res.cost == pytest.approx(ot.emd2([], [], ot.dist(x, y)), rel=1e-10)
    r32 = otsolve.solve(None, None, ot.dist(x, y).astype(np.float32), method="emd")
    assert r32.plan.dtype == np.float32 and r32.f.dtype == np.float32 and r32.converged


@pytest.mark.parametrize("method", ["sinkhorn", "sns"])
def test_entropic_cost_converges_to_exact(prob, method):
    a, b, M = prob
    exact = otsolve.solve(a, b, M, method="emd").cost
    gaps = []
    for eps in (1e-1, 3e-2, 1e-2):
        opts = {"epsilon_scaling": True} if method == "sinkhorn" else {}
        res = otsolve.solve(a, b, M, method=method, epsilon=eps, tol=1e-9, **opts)
        assert res.converged
        gap = res.cost - exact
        # 0 <= <C, P_eps> - W <= eps (H(P_eps) - H(P*)) <= eps log(n m)
        assert -1e-9 <= gap <= eps * np.log(M.size) + 1e-9
        gaps.append(gap)
    assert gaps[0] > gaps[1] > gaps[2]
