"""POT-compatible unbalanced OT (otsolve.pot_compat.sinkhorn_unbalanced / sinkhorn_unbalanced2, and
otsolve.pot.solve(..., unbalanced=...)) checked against POT 0.9.7 itself, run to convergence."""
from __future__ import annotations

import warnings

import numpy as np
import ot
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import logsumexp

import otsolve
import otsolve.pot as opot
from otsolve.pot_compat import UNBALANCED_METHODS, sinkhorn_unbalanced, sinkhorn_unbalanced2

try:
    import torch
except ImportError:  # pragma: no cover
    torch = None

INF = float("inf")
# otsolve's NumPy reference sweeps and the compiled kernels must both give POT's answer
COMPILED = [pytest.param(False, id="reference"), pytest.param(True, id="compiled")]


def pot(fn, *args, **kw):
    """POT's function run to its convergence floor (stopThr 1e-15), its warnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, stopThr=1e-15, numItermax=200000, **kw)


def ours(fn, *args, **kw):
    kw.setdefault("stopThr", 1e-13)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # a converged solve says nothing
        return fn(*args, **kw)


@pytest.fixture
def prob():
    rng = np.random.RandomState(0)
    n, m = 12, 9
    x, y = rng.randn(n, 2), rng.randn(m, 2) + 0.5
    a = rng.rand(n) + 0.1                # unequal masses: |a| ~ 7, |b| ~ 2
    b = (rng.rand(m) + 0.1) / 3
    M = ot.dist(x, y)
    M /= M.max()
    return a, b, M


def assert_log_close(lp, lo, atol=1e-9):
    for key in ("logu", "logv"):
        np.testing.assert_allclose(lo[key], lp[key], atol=atol, rtol=0, err_msg=key)
    for key in ("cost", "total_cost"):
        np.testing.assert_allclose(lo[key], lp[key], rtol=1e-10, atol=1e-12, err_msg=key)


@pytest.mark.parametrize("compiled", COMPILED)
@pytest.mark.parametrize("reg_type", ["kl", "entropy"])
@pytest.mark.parametrize("reg_m", [0.7, (0.7, 3.0), (INF, 0.5), (0.5, INF)], ids=str)
def test_plan_and_log_match_pot(prob, reg_m, reg_type, compiled):
    a, b, M = prob
    if reg_m == (INF, 0.5):
        a = a * (b.sum() / a.sum()) if reg_type == "kl" else a  # a hard side: any mass on the other
    P, lp = pot(ot.unbalanced.sinkhorn_unbalanced, a, b, M, 0.2, reg_m, reg_type=reg_type, log=True)
    Q, lo = ours(sinkhorn_unbalanced, a, b, M, 0.2, reg_m, reg_type=reg_type, log=True, compiled=compiled)
    assert type(Q) is np.ndarray and Q.dtype == np.float64
    np.testing.assert_allclose(Q, P, atol=1e-10, rtol=0)
    assert set(lo) >= {"err", "logu", "logv", "cost", "total_cost"} and set(lp) <= set(lo)
    assert type(lo["cost"]) is np.float64 and type(lo["total_cost"]) is np.float64  # NumPy scalars, as POT
    assert_log_close(lp, lo)
    res = lo["result"]
    assert res.converged and res.marginal_error <= 1e-13 * max(a.sum(), b.sum())
    # sinkhorn_unbalanced2: the linear and the total cost, as POT returns them
    for rc, key in (("linear", "cost"), ("total", "total_cost")):
        v = ours(sinkhorn_unbalanced2, a, b, M, 0.2, reg_m, reg_type=reg_type, returnCost=rc, compiled=compiled)
        assert type(v) is np.float64
        np.testing.assert_allclose(v, pot(ot.unbalanced.sinkhorn_unbalanced2, a, b, M, 0.2, reg_m,
                                          reg_type=reg_type, returnCost=rc), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(v, lp[key], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reg_type", ["kl", "entropy"])
def test_fixed_point_equations(prob, reg_type):
    """Independent of POT's numbers: POT's own optimality check (its test_unbalanced_convergence)."""
    a, b, M = prob
    eps, rm = 0.3, 0.8
    _, log = ours(sinkhorn_unbalanced, a, b, M, eps, rm, reg_type=reg_type, log=True)
    fi = rm / (rm + eps)
    K = -M / eps + (np.log(a)[:, None] + np.log(b)[None, :] if reg_type == "kl" else 0)
    np.testing.assert_allclose(log["logu"], fi * (np.log(a) - logsumexp(K + log["logv"][None, :], 1)), atol=1e-11)
    np.testing.assert_allclose(log["logv"], fi * (np.log(b) - logsumexp(K + log["logu"][:, None], 0)), atol=1e-11)


@settings(deadline=None, max_examples=15)
@given(seed=st.integers(0, 2**31 - 1), reg=st.floats(0.05, 2.0), rm1=st.floats(0.05, 20.0),
       rm2=st.floats(0.05, 20.0), n=st.integers(1, 8), m=st.integers(1, 8))
def test_random_problems_match_pot(seed, reg, rm1, rm2, n, m):
    rng = np.random.default_rng(seed)
    M = rng.random((n, m))
    a, b = rng.random(n) * 3 + 0.01, rng.random(m) + 0.01
    P, lp = pot(ot.unbalanced.sinkhorn_unbalanced, a, b, M, reg, (rm1, rm2), log=True)
    Q, lo = ours(sinkhorn_unbalanced, a, b, M, reg, (rm1, rm2), log=True, stopThr=1e-12)
    np.testing.assert_allclose(Q, P, atol=1e-9, rtol=0)
    np.testing.assert_allclose(lo["cost"], lp["cost"], rtol=1e-8, atol=1e-10)
    # POT's total_cost is 0 at the optimum here (no mass terms; both sides relaxed): first order in the residual
    np.testing.assert_allclose(lo["total_cost"], lp["total_cost"], atol=1e-8)


def test_balanced_limit(prob):
    """reg_m = inf on both sides is balanced entropic OT: the plan of otsolve.sinkhorn and POT's;
    only log u + log v is determined (POT's split depends on its path)."""
    a, b, M = prob
    a = a / a.sum()
    b = b / b.sum()
    P, lp = pot(ot.unbalanced.sinkhorn_unbalanced, a, b, M, 0.1, INF, log=True)
    Q, lo = ours(sinkhorn_unbalanced, a, b, M, 0.1, INF, log=True)
    np.testing.assert_allclose(Q, P, atol=1e-10)
    np.testing.assert_allclose(Q, otsolve.sinkhorn(a, b, M, 0.1, stopThr=1e-13), atol=1e-12)
    np.testing.assert_allclose(lo["logu"][:, None] + lo["logv"][None, :], lp["logu"][:, None] + lp["logv"][None, :],
                               atol=1e-9)
    with pytest.raises(ValueError, match="mass"):  # hard constraints on both sides need equal masses
        sinkhorn_unbalanced(a, 2 * b, M, 0.1, INF)


def test_custom_reference(prob):
    a, b, M = prob
    c = np.random.RandomState(1).rand(*M.shape) + 0.05
    P, lp = pot(ot.unbalanced.sinkhorn_unbalanced, a, b, M, 0.3, (0.5, 2.0), c=c, log=True)
    Q, lo = ours(sinkhorn_unbalanced, a, b, M, 0.3, (0.5, 2.0), c=c, log=True)
    np.testing.assert_allclose(Q, P, atol=1e-10)
    assert_log_close(lp, lo)
    # c = a b^T is the default reference
    np.testing.assert_allclose(ours(sinkhorn_unbalanced, a, b, M, 0.3, 0.5, c=np.outer(a, b)),
                               ours(sinkhorn_unbalanced, a, b, M, 0.3, 0.5), atol=1e-13)
    with pytest.raises(ValueError, match="c .*> 0"):
        c0 = c.copy()
        c0[2, 3] = 0
        sinkhorn_unbalanced(a, b, M, 0.3, 0.5, c=c0)
    with pytest.raises(ValueError, match="shape"):
        sinkhorn_unbalanced(a, b, M, 0.3, 0.5, c=c[:, :-1])


def test_zero_weights(prob):
    """Zero weights: those rows / columns of the plan are 0 and the rest is the plan of the problem
    without them (POT itself stops at iteration 0 there with "numerical errors": 0/0 in u = a/Kv)."""
    a, b, M = prob
    a, b = a.copy(), b.copy()
    a[[0, 5]] = 0
    b[3] = 0
    ka, kb = a > 0, b > 0
    for reg_type in ("kl", "entropy"):
        P = pot(ot.unbalanced.sinkhorn_unbalanced, a[ka], b[kb], M[ka][:, kb], 0.2, 0.6, reg_type=reg_type)
        Q, lo = ours(sinkhorn_unbalanced, a, b, M, 0.2, 0.6, reg_type=reg_type, log=True)
        assert (Q[~ka] == 0).all() and (Q[:, ~kb] == 0).all()
        np.testing.assert_allclose(Q[ka][:, kb], P, atol=1e-10)
        np.testing.assert_allclose(lo["logu"][~ka], np.log(1e-300))  # POT's log(0 + 1e-300)
        assert np.isfinite(lo["total_cost"])  # POT's formula has 0 log(0/0) = NaN there; its limit 0 is used


@pytest.mark.parametrize("compiled", COMPILED)
def test_multiple_histograms(prob, compiled):
    """b of shape (m, k): k problems in one batch; POT's multi-histogram solver uses the
    reference 1 (reg_type='entropy') and returns the linear costs."""
    a, _, M = prob
    B = np.random.RandomState(2).rand(M.shape[1], 3)
    costs, lp = pot(ot.unbalanced.sinkhorn_unbalanced, a, B, M, 0.2, 0.8, log=True)
    with pytest.warns(UserWarning, match="KL\\(P \\| 1\\)"):
        mine, lo = sinkhorn_unbalanced(a, B, M, 0.2, 0.8, log=True, stopThr=1e-13, compiled=compiled)
    assert mine.shape == (3,) and lo["logu"].shape == (M.shape[0], 3) and lo["logv"].shape == B.shape
    np.testing.assert_allclose(mine, costs, rtol=1e-10)
    np.testing.assert_allclose(lo["logu"], lp["logu"], atol=1e-9)
    np.testing.assert_allclose(lo["logv"], lp["logv"], atol=1e-9)
    assert bool(lo["result"].converged_each.all())
    # each column is the single problem with reg_type="entropy"; returnCost="total" is honoured
    singles = [ours(sinkhorn_unbalanced, a, B[:, k], M, 0.2, 0.8, reg_type="entropy", log=True,
                    compiled=compiled)[1] for k in range(3)]
    np.testing.assert_allclose(mine, [s["cost"] for s in singles], rtol=1e-10)
    tot = ours(sinkhorn_unbalanced2, a, B, M, 0.2, 0.8, reg_type="entropy", returnCost="total", compiled=compiled)
    np.testing.assert_allclose(tot, [s["total_cost"] for s in singles], rtol=1e-10)
    np.testing.assert_allclose(ours(sinkhorn_unbalanced2, a, B, M, 0.2, 0.8, reg_type="entropy", compiled=compiled),
                               mine, rtol=1e-12)
    one = ours(sinkhorn_unbalanced2, a, B[:, :1], M, 0.2, 0.8, reg_type="entropy", compiled=compiled)
    assert one.shape == (1,)  # a single column is still "several histograms"
    np.testing.assert_allclose(one, mine[:1], rtol=1e-12)


def test_empty_weights_are_uniform(prob):
    _, _, M = prob
    n, m = M.shape
    P0, l0 = ours(sinkhorn_unbalanced, np.full(n, 1 / n), np.full(m, 1 / m), M, 0.2, 1.0, log=True)
    for a, b in (([], []), (np.array([]), None), (None, [])):
        P, lg = ours(sinkhorn_unbalanced, a, b, M, 0.2, 1.0, log=True)
        np.testing.assert_allclose(P, P0, atol=1e-15)
        np.testing.assert_allclose(lg["logu"], l0["logu"], atol=1e-13)
    np.testing.assert_allclose(P0, pot(ot.unbalanced.sinkhorn_unbalanced, [], [], M, 0.2, 1.0), atol=1e-10)


def test_reg_m_forms(prob):
    a, b, M = prob
    P = ours(sinkhorn_unbalanced, a, b, M, 0.2, 1.5)
    forms = [1.5, [1.5], (1.5,), [1.5, 1.5], np.array([1.5]), np.array([1.5, 1.5]), np.float32(1.5)]
    if torch is not None:
        forms.append(1.5 * torch.ones(1, dtype=torch.float64))  # POT's test passes reg_m * nx.ones(1)
    for rm in forms:
        np.testing.assert_allclose(ours(sinkhorn_unbalanced, a, b, M, 0.2, rm), P, atol=1e-15)
    np.testing.assert_allclose(ours(sinkhorn_unbalanced, a, b, M, 0.2, 1), ours(sinkhorn_unbalanced, a, b, M, 0.2, 1.0),
                               atol=1e-15)


def test_warmstart(prob):
    a, b, M = prob
    P, lg = ours(sinkhorn_unbalanced, a, b, M, 0.05, 0.5, log=True)
    P2, lg2 = ours(sinkhorn_unbalanced, a, b, M, 0.05, 0.5, log=True, warmstart=(lg["logu"], lg["logv"]))
    np.testing.assert_allclose(P2, P, atol=1e-13)
    assert lg2["result"].n_iter <= 1 < lg["result"].n_iter
    # POT's zero warm start (u = v = 1) reaches the same plan
    P3 = ours(sinkhorn_unbalanced, a, b, M, 0.05, 0.5, warmstart=(np.zeros(len(a)), np.zeros(len(b))))
    np.testing.assert_allclose(P3, P, atol=1e-12)
    with pytest.raises(ValueError, match="warmstart"):
        sinkhorn_unbalanced(a, b, M, 0.05, 0.5, warmstart=(np.zeros(3), np.zeros(len(b))))


@pytest.mark.parametrize("method", UNBALANCED_METHODS)
def test_methods(prob, method):
    """Every POT method is the same fixed point; 'sinkhorn_reg_scaling' warns as POT does."""
    a, b, M = prob
    P = pot(ot.unbalanced.sinkhorn_unbalanced, a, b, M, 0.2, 0.9)
    if method == "sinkhorn_reg_scaling":
        with pytest.warns(UserWarning, match="not implemented"):
            Q = sinkhorn_unbalanced(a, b, M, 0.2, 0.9, method=method, stopThr=1e-13)
    else:
        Q = ours(sinkhorn_unbalanced, a, b, M, 0.2, 0.9, method=method)
    np.testing.assert_allclose(Q, P, atol=1e-10)


def test_stopthr_is_a_relative_marginal_residual(prob):
    a, b, M = prob
    for thr in (1e-3, 1e-6, 1e-10):
        _, lg = ours(sinkhorn_unbalanced, a, b, M, 0.1, 0.5, log=True, stopThr=thr)
        res = lg["result"]
        assert res.converged and res.marginal_error <= thr * max(a.sum(), b.sum())
        assert lg["err"][-1] == pytest.approx(res.errors[-1])
    # float32 at POT's default stopThr=1e-6: reachable, no warning, float32 out
    P32 = ours(sinkhorn_unbalanced, *(x.astype(np.float32) for x in (a, b, M)), 0.1, 0.5, stopThr=1e-6)
    assert P32.dtype == np.float32
    np.testing.assert_allclose(P32, ours(sinkhorn_unbalanced, a, b, M, 0.1, 0.5), atol=1e-6)
    with pytest.warns(UserWarning, match="below what float32"):
        sinkhorn_unbalanced(*(x.astype(np.float32) for x in (a, b, M)), 0.1, 0.5, stopThr=1e-9)


def test_not_converged_warns(prob):
    a, b, M = prob
    with pytest.warns(UserWarning, match="did not converge"):
        P, lg = sinkhorn_unbalanced(a, b, M, 0.01, 5.0, numItermax=3, log=True)
    assert not lg["result"].converged and lg["result"].n_iter == 3
    with pytest.warns(UserWarning, match="did not converge"):
        sinkhorn_unbalanced2(a, b, M, 0.01, 5.0, numItermax=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sinkhorn_unbalanced(a, b, M, 0.01, 5.0, numItermax=3, warn=False)


@pytest.mark.parametrize("kw, match", [
    (dict(reg_m=-1.0), "reg_m must be > 0"),
    (dict(reg_m=0.0), "reg_m must be > 0"),
    (dict(reg_m=float("nan")), "reg_m must be > 0"),
    (dict(reg_m=(1.0, -2.0)), "reg_m must be > 0"),
    (dict(reg_m=(1.0, 2.0, 3.0)), "length 1 or 2"),
    (dict(reg_m="a"), "reg_m"),
    (dict(reg=0.0), "reg must be a positive"),
    (dict(reg=-0.1), "reg must be a positive"),
    (dict(reg=float("nan")), "reg must be a positive"),
    (dict(method="badmethod"), "Unknown method"),
    (dict(reg_type="L2"), "reg_type"),
    (dict(stopThr=-1.0), "stopThr"),
    (dict(numItermax=-1), "numItermax"),
])
def test_bad_parameters(prob, kw, match):
    a, b, M = prob
    args = dict(reg=0.2, reg_m=1.0)
    args.update(kw)
    reg, reg_m = args.pop("reg"), args.pop("reg_m")
    with pytest.raises(ValueError, match=match):
        sinkhorn_unbalanced(a, b, M, reg, reg_m, **args)
    with pytest.raises(ValueError, match=match):
        sinkhorn_unbalanced2(a, b, M, reg, reg_m, **args)


def test_bad_arrays(prob):
    a, b, M = prob
    Mn = M.copy()
    Mn[1, 2] = np.nan
    an = a.copy()
    an[0] = np.nan
    cases = [((a, b, Mn), "M contains"), ((an, b, M), "a contains"), ((-a, b, M), "a has negative"),
             ((a, b[:-1], M), "b must have shape"), ((a[:-1], b, M), "a has length"), ((a, b, M[0]), "2-D")]
    for (aa, bb, MM), match in cases:
        with pytest.raises(ValueError, match=match):
            sinkhorn_unbalanced(aa, bb, MM, 0.2, 1.0)
    with pytest.raises(ValueError, match="returnCost"):
        sinkhorn_unbalanced2(a, b, M, 0.2, 1.0, returnCost="invalid_returnCost")


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_in_torch_out(prob, dtype):
    a, b, M = prob
    td = getattr(torch, dtype)
    at, bt, Mt = (torch.tensor(x, dtype=td) for x in (a, b, M))
    P0, l0 = ours(sinkhorn_unbalanced, a, b, M, 0.2, (0.5, 2.0), log=True)
    P, lg = sinkhorn_unbalanced(at, bt, Mt, 0.2, (0.5, 2.0), log=True, stopThr=1e-13 if dtype == "float64" else 1e-6)
    assert isinstance(P, torch.Tensor) and P.dtype == td and P.device == Mt.device
    for key in ("logu", "logv", "cost", "total_cost"):
        assert isinstance(lg[key], torch.Tensor) and lg[key].dtype == td, key
    tol = 1e-12 if dtype == "float64" else 2e-6
    np.testing.assert_allclose(P.numpy(), P0, atol=tol)
    np.testing.assert_allclose(lg["total_cost"].item(), l0["total_cost"], rtol=10 * tol, atol=10 * tol)
    v = sinkhorn_unbalanced2(at, bt, Mt, 0.2, (0.5, 2.0), returnCost="total", stopThr=1e-6)
    assert isinstance(v, torch.Tensor) and v.shape == () and v.dtype == td
    B = torch.tensor(np.random.RandomState(4).rand(M.shape[1], 2), dtype=td)
    with pytest.warns(UserWarning, match="KL\\(P \\| 1\\)"):
        costs = sinkhorn_unbalanced2(at, B, Mt, 0.2, 1.0, stopThr=1e-6)
    assert isinstance(costs, torch.Tensor) and costs.shape == (2,) and costs.dtype == td


@pytest.mark.skipif(torch is None, reason="torch not installed")
@pytest.mark.parametrize("reg_type, with_c, returnCost", [("kl", False, "linear"), ("kl", False, "total"),
                                                          ("entropy", False, "linear"), ("kl", True, "total")])
def test_torch_gradients_match_pot_autodiff(prob, reg_type, with_c, returnCost):
    """Tensors that require grad: implicit gradients of the converged plan (otsolve.torch) equal
    POT's autodiff through its converged iterations."""
    a, b, M = prob
    c = np.random.RandomState(6).rand(*M.shape) + 0.1

    def value_and_grads(fn, **kw):
        ts = [torch.tensor(x, requires_grad=True) for x in ((a, b, M, c) if with_c else (a, b, M))]
        v = fn(*ts[:3], 0.3, (0.7, 1.5), reg_type=reg_type, c=ts[3] if with_c else None, returnCost=returnCost,
               **kw)
        v.backward()
        return v.item(), [t.grad.numpy() for t in ts]

    v0, g0 = pot(value_and_grads, ot.unbalanced.sinkhorn_unbalanced2)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        v1, g1 = value_and_grads(sinkhorn_unbalanced2, stopThr=1e-13)
    assert v1 == pytest.approx(v0, rel=1e-9, abs=1e-12)
    for name, x, y in zip("abMc", g1, g0):
        np.testing.assert_allclose(x, y, atol=1e-9, err_msg=name)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_torch_gradients_plan_and_histograms(prob):
    a, b, M = prob
    B = np.random.RandomState(7).rand(M.shape[1], 2)
    grads = []
    for mine in (False, True):
        Mt = torch.tensor(M, requires_grad=True)
        Bt = torch.tensor(B, requires_grad=True)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the several-histogram reference notice
            costs = (sinkhorn_unbalanced2(torch.tensor(a), Bt, Mt, 0.3, 0.8, stopThr=1e-13) if mine else
                     pot(ot.unbalanced.sinkhorn_unbalanced2, torch.tensor(a), Bt, Mt, 0.3, 0.8))
        (costs * torch.tensor([1.0, 2.0], dtype=costs.dtype)).sum().backward()
        grads.append((costs.detach().numpy(), Mt.grad.numpy(), Bt.grad.numpy()))
    for x, y in zip(*grads):
        np.testing.assert_allclose(x, y, atol=1e-9)
    with pytest.raises(ValueError, match="reg requires grad"):
        sinkhorn_unbalanced2(torch.tensor(a), torch.tensor(b), torch.tensor(M), torch.tensor(0.3, requires_grad=True),
                             0.8)
    # the plan is differentiable too
    Mt = torch.tensor(M, requires_grad=True)
    P, lg = sinkhorn_unbalanced(torch.tensor(a), torch.tensor(b), Mt, 0.3, 0.8, log=True)
    assert P.requires_grad and lg["total_cost"].requires_grad and bool(lg["result"].converged)
    P.sum().backward()
    assert Mt.grad is not None and bool(torch.isfinite(Mt.grad).all())


# ---------------------------------------------------------------------------------------------
# otsolve.pot: the POT-shaped namespace
def test_pot_namespace():
    assert opot.unbalanced.sinkhorn_unbalanced is sinkhorn_unbalanced
    assert opot.unbalanced.sinkhorn_unbalanced2 is sinkhorn_unbalanced2
    assert opot.sinkhorn_unbalanced is sinkhorn_unbalanced


@pytest.mark.parametrize("unb", [1.0, (0.5, 3.0), (INF, 0.7)], ids=str)
def test_solve_unbalanced_kl(prob, unb):
    a, b, M = prob
    if unb == (INF, 0.7):
        pass  # semi-relaxed: masses may differ
    ref = pot(lambda *x, stopThr, numItermax, **k: ot.solve(*x, tol=stopThr, max_iter=numItermax, **k),
              M, a, b, reg=0.2, unbalanced=unb)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        res = opot.solve(M, a, b, reg=0.2, unbalanced=unb, tol=1e-13)
    assert res.log["result"].converged  # otsolve's Sinkhorn answered (not POT's)
    np.testing.assert_allclose(res.plan, ref.plan, atol=1e-10)
    np.testing.assert_allclose(res.value, ref.value, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(res.value_linear, ref.value_linear, rtol=1e-10)
    for p, q in zip(res.potentials, ref.potentials):
        np.testing.assert_allclose(p, q, atol=1e-9)
    np.testing.assert_allclose(res.marginal_a, ref.marginal_a, atol=1e-10)
    # a custom reference measure c goes through the core too
    c = np.random.RandomState(3).rand(*M.shape) + 0.1
    res_c = opot.solve(M, a, b, reg=0.2, unbalanced=unb, c=c, tol=1e-13)
    ref_c = pot(lambda *x, stopThr, numItermax, **k: ot.solve(*x, tol=stopThr, max_iter=numItermax, **k),
                M, a, b, reg=0.2, unbalanced=unb, c=c)
    assert "result" in res_c.log
    np.testing.assert_allclose(res_c.plan, ref_c.plan, atol=1e-10)
    np.testing.assert_allclose(res_c.value, ref_c.value, rtol=1e-10, atol=1e-12)


def test_solve_other_unbalanced_types_forwarded(prob):
    """What otsolve has no solver for (L2 / TV penalties, unregularized unbalanced OT) is POT's answer."""
    a, b, M = prob
    for kw in (dict(reg=0.2, unbalanced=1.0, unbalanced_type="L2"), dict(unbalanced=1.0)):
        res, ref = opot.solve(M, a, b, **kw), ot.solve(M, a, b, **kw)
        assert res.log is None or "result" not in res.log
        np.testing.assert_allclose(res.plan, ref.plan, atol=1e-12)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_solve_unbalanced_torch(prob):
    a, b, M = prob
    at, bt, Mt = (torch.tensor(x) for x in (a, b, M))
    res = opot.solve(Mt, at, bt, reg=0.2, unbalanced=1.0, tol=1e-12)
    ref = opot.solve(M, a, b, reg=0.2, unbalanced=1.0, tol=1e-12)
    assert isinstance(res.plan, torch.Tensor) and isinstance(res.value, torch.Tensor)
    np.testing.assert_allclose(res.plan.numpy(), ref.plan, atol=1e-14)
    # torch inputs that require grad: otsolve's implicit gradients = POT's autodiff at convergence
    grads = []
    for fn, kw in ((ot.solve, dict(tol=1e-15, max_iter=100000)), (opot.solve, dict(tol=1e-13))):
        Mg, ag = Mt.clone().requires_grad_(True), at.clone().requires_grad_(True)
        r = fn(Mg, ag, bt, reg=0.2, unbalanced=(0.5, 2.0), **kw)
        (r.value + 2 * r.value_linear).backward()
        grads.append((Mg.grad.numpy(), ag.grad.numpy()))
    assert "result" in r.log
    for x, y in zip(*grads):
        np.testing.assert_allclose(x, y, atol=1e-9)
    det = opot.solve(Mt.clone().requires_grad_(True), at, bt, reg=0.2, unbalanced=1.0, grad="detach", tol=1e-12)
    assert "result" in det.log and not det.value.requires_grad


# ---------------------------------------------------------------------------------------------
# CuPy in, CuPy out (a CUDA device, or the CPU CUDA emulator)
@pytest.fixture
def cupy_module():
    import contextlib  # noqa: PLC0415
    import os  # noqa: PLC0415

    import cuda_emulator  # noqa: PLC0415

    from otsolve.backends import cupy_available  # noqa: PLC0415

    if os.environ.get("OTSOLVE_CUDA_EMULATOR", "") not in ("", "0") or not cupy_available():
        if not cuda_emulator.available():
            pytest.skip("no CUDA device, and the CUDA emulator needs x86-64 and g++")
        ctx, cp = cuda_emulator.installed(), cuda_emulator.modules()["cupy"]
    else:  # pragma: no cover - GPU machines
        import cupy as cp  # noqa: PLC0415

        ctx = contextlib.nullcontext()
    with ctx:
        yield cp


@pytest.mark.gpu
@pytest.mark.parametrize("compiled", COMPILED)
def test_cupy_in_cupy_out(prob, cupy_module, compiled):
    cp = cupy_module
    a, b, M = prob
    ac, bc, Mc = (cp.asarray(x) for x in (a, b, M))
    P, lg = sinkhorn_unbalanced(ac, bc, Mc, 0.2, (0.5, 2.0), log=True, stopThr=1e-12, compiled=compiled)
    assert isinstance(P, cp.ndarray) and P.dtype == np.float64
    assert all(isinstance(lg[k], cp.ndarray) for k in ("logu", "logv", "cost", "total_cost"))
    P0, l0 = pot(ot.unbalanced.sinkhorn_unbalanced, a, b, M, 0.2, (0.5, 2.0), log=True)
    np.testing.assert_allclose(P.get(), P0, atol=1e-10)
    np.testing.assert_allclose(lg["logu"].get(), l0["logu"], atol=1e-9)
    B = np.random.RandomState(5).rand(M.shape[1], 2)
    costs = sinkhorn_unbalanced2(ac, cp.asarray(B), Mc, 0.2, 0.8, reg_type="entropy", stopThr=1e-12,
                                 compiled=compiled)
    assert isinstance(costs, cp.ndarray) and costs.shape == (2,)
    np.testing.assert_allclose(costs.get(), pot(ot.unbalanced.sinkhorn_unbalanced2, a, B, M, 0.2, 0.8,
                                                reg_type="entropy"), rtol=1e-9)
