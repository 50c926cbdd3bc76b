"""Tests of the PyTorch OT layer (otsolve.torch)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from hypothesis import given, settings, strategies as st  # noqa: E402

from otsolve.torch import ImplicitState, SinkhornLoss, sinkhorn, sinkhorn_divergence  # noqa: E402
from otsolve.torch._costs import pairwise_cost, plan_cost_grads  # noqa: E402

D = torch.float64


def _problem(n=6, m=5, seed=0, dtype=D):
    g = torch.Generator().manual_seed(seed)
    C = torch.rand(n, m, generator=g, dtype=dtype)
    a = torch.softmax(torch.randn(n, generator=g, dtype=dtype), 0)
    b = torch.softmax(torch.randn(m, generator=g, dtype=dtype), 0)
    return a, b, C


def _gc(fn, inputs):
    # nondet_tol: the implicit mode warm-starts CG from the previous backward pass, so repeated
    # backward passes differ at the CG tolerance (1e-10), far below gradcheck's atol
    return torch.autograd.gradcheck(fn, inputs, atol=1e-6, rtol=1e-4, nondet_tol=1e-7)


KW = dict(tol=1e-13, max_iter=5000)


# ---------------------------------------------------------------- gradcheck per mode (float64)
@pytest.mark.parametrize("compiled", [True, False])
@pytest.mark.parametrize("mode", ["envelope", "implicit", "unroll"])
def test_gradcheck_value_wrt_cost(mode, compiled):
    a, b, C = _problem()
    Cr = C.clone().requires_grad_()
    assert _gc(lambda c: sinkhorn(a, b, c, 0.2, grad=mode, compiled=compiled, **KW).value, (Cr,))


@pytest.mark.parametrize("mode", ["envelope", "implicit", "unroll"])
def test_gradcheck_value_wrt_weights(mode):
    # weights live on the simplex: parametrize them by a softmax so every direction is tangent
    _, b, C = _problem()
    th = torch.randn(6, dtype=D, requires_grad=True)
    ph = torch.randn(5, dtype=D, requires_grad=True)
    assert _gc(lambda t, p: sinkhorn(torch.softmax(t, 0), torch.softmax(p, 0), C, 0.2, grad=mode, **KW).value,
               (th, ph))


@pytest.mark.parametrize("mode", ["implicit", "unroll"])
def test_gradcheck_plan_and_potentials(mode):
    a, b, C = _problem(5, 4, seed=1)
    Cr = C.clone().requires_grad_()
    th = torch.randn(5, dtype=D, requires_grad=True)
    assert _gc(lambda c: sinkhorn(a, b, c, 0.2, grad=mode, **KW).plan, (Cr,))
    if mode == "implicit":  # the gauge Σf = Σg makes the potentials a function of the inputs
        assert _gc(lambda c, t: _fg(sinkhorn(torch.softmax(t, 0), b, c, 0.2, grad=mode, **KW)), (Cr, th))


def _fg(out):
    return torch.cat([out.f, out.g])


@pytest.mark.parametrize("mode", ["envelope", "implicit", "unroll"])
@pytest.mark.parametrize("cost", ["sqeuclidean", "half_sqeuclidean", "euclidean"])
def test_gradcheck_divergence_wrt_points(mode, cost):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(5, 2, generator=g, dtype=D, requires_grad=True)
    y = torch.rand(4, 2, generator=g, dtype=D, requires_grad=True)
    assert _gc(lambda u, v: sinkhorn_divergence(u, v, 0.3, cost=cost, grad=mode, **KW), (x, y))


# ------------------------------------------------ envelope / implicit agree with unrolled ones
def test_envelope_and_implicit_match_unrolled_at_convergence():
    a, b, C = _problem(20, 15, seed=4)
    W = torch.randn(20, 15, dtype=D)
    grads = {}
    for mode in ("envelope", "implicit", "unroll"):
        Cr = C.clone().requires_grad_()
        out = sinkhorn(a, b, Cr, 0.1, grad=mode, **KW)
        assert bool(out.converged)
        (gv,) = torch.autograd.grad(out.value, Cr)
        grads[mode] = gv
        if mode != "envelope":
            Cr2 = C.clone().requires_grad_()
            (gp,) = torch.autograd.grad((sinkhorn(a, b, Cr2, 0.1, grad=mode, **KW).plan * W).sum(), Cr2)
            grads[mode + "_plan"] = gp
    torch.testing.assert_close(grads["envelope"], grads["unroll"], atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(grads["implicit"], grads["unroll"], atol=1e-9, rtol=1e-7)
    torch.testing.assert_close(grads["implicit_plan"], grads["unroll_plan"], atol=1e-7, rtol=1e-5)
    # the plan gradient is not the trivial one: it differs from W * P
    assert not torch.allclose(grads["implicit_plan"], W * sinkhorn(a, b, C, 0.1, **KW).plan, atol=1e-3)


def test_point_cloud_gradients_agree_across_modes():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(30, 3, generator=g, dtype=D)
    y = torch.rand(25, 3, generator=g, dtype=D)
    res = {}
    for mode in ("envelope", "implicit", "unroll"):
        xr = x.clone().requires_grad_()
        v = sinkhorn_divergence(xr, y, 0.05, grad=mode, **KW)
        res[mode] = (v.detach(), torch.autograd.grad(v, xr)[0])
    for mode in ("implicit", "unroll"):
        torch.testing.assert_close(res[mode][0], res["envelope"][0], atol=1e-10, rtol=1e-9)
        torch.testing.assert_close(res[mode][1], res["envelope"][1], atol=1e-8, rtol=1e-6)


def test_closed_form_cost_gradient_matches_autograd():
    # the chunked closed form used by the envelope backward vs autograd of Σ P C on a callable
    g = torch.Generator().manual_seed(6)
    x = torch.randn(2, 13, 3, generator=g, dtype=D)
    y = torch.randn(2, 11, 3, generator=g, dtype=D)
    f = torch.randn(2, 13, generator=g, dtype=D) * 0.1
    h = torch.randn(2, 11, generator=g, dtype=D) * 0.1

    def sq(u, v):
        return ((u.unsqueeze(-2) - v.unsqueeze(-3)) ** 2).sum(-1)

    gx, gy = plan_cost_grads(x, y, "sqeuclidean", f, h, 0.7, chunk=40)
    gx2, gy2 = plan_cost_grads(x, y, sq, f, h, 0.7, chunk=40)
    torch.testing.assert_close(gx, gx2)
    torch.testing.assert_close(gy, gy2)
    torch.testing.assert_close(pairwise_cost(x, y, "sqeuclidean"), sq(x, y))


# ------------------------------------------------------------------- peers and closed forms
def test_plan_matches_pot():
    ot = pytest.importorskip("ot")
    a, b, C = _problem(12, 9, seed=7)
    P_pot = ot.sinkhorn(a.numpy(), b.numpy(), C.numpy(), 0.05, method="sinkhorn_log", stopThr=1e-13,
                        numItermax=100000)
    out = sinkhorn(a, b, C, 0.05, tol=1e-12)
    np.testing.assert_allclose(out.plan.numpy(), P_pot, atol=1e-10)
    P = out.plan
    primal = (P * C).sum() + 0.05 * torch.special.xlogy(P, P).sum()
    torch.testing.assert_close(out.value, primal, atol=1e-10, rtol=1e-9)
    torch.testing.assert_close(out.cost, (P * C).sum())


@pytest.mark.parametrize("debias", [True, False])
def test_values_and_gradients_match_geomloss(debias):
    geomloss = pytest.importorskip("geomloss")
    g = torch.Generator().manual_seed(8)
    x = torch.rand(40, 2, generator=g, dtype=D)
    y = torch.rand(30, 2, generator=g, dtype=D) * 0.5 + 0.4
    a = torch.softmax(torch.randn(40, generator=g, dtype=D), 0)
    b = torch.softmax(torch.randn(30, generator=g, dtype=D), 0)
    eps = 0.05
    # scaling close to 1: a long ε-schedule, so GeomLoss is (nearly) converged
    G = geomloss.SamplesLoss("sinkhorn", p=2, blur=eps**0.5, debias=debias, scaling=0.99, backend="tensorized")
    xr = x.clone().requires_grad_()
    vg = G(a, xr, b, y)
    (gg,) = torch.autograd.grad(vg, xr)
    L = SinkhornLoss(eps, cost="half_sqeuclidean", debias=debias, **KW)
    xr = x.clone().requires_grad_()
    v = L(a, xr, b, y)
    (go,) = torch.autograd.grad(v, xr)
    # GeomLoss stops after its ε-schedule (no tolerance): agreement to ~1e-5 relative
    assert abs(v.item() - vg.item()) <= 5e-5 * abs(vg.item()) + 1e-8
    # GeomLoss differentiates its last (extrapolated) step only: gradients agree to ~1 %
    torch.testing.assert_close(go, gg, atol=1e-2 * float(gg.abs().max()), rtol=0)


def test_training_loop_decreases_loss():
    g = torch.Generator().manual_seed(9)
    target = torch.randn(60, 2, generator=g) * 0.3 + torch.tensor([2.0, 1.0])
    x = (torch.randn(60, 2, generator=g) * 0.5).requires_grad_()
    loss_fn = SinkhornLoss(0.01, warm_start=True, tol=1e-4)
    # the gradient of point i carries its weight 1/n: scale the step by n (GeomLoss's examples do too)
    opt = torch.optim.SGD([x], lr=0.25 * 60)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn(x, target)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.02 * losses[0]
    assert losses[-1] < losses[len(losses) // 2] < losses[0]


# ------------------------------------------------------------------------------- batches
@pytest.mark.parametrize("compiled", [True, False])
def test_batch_matches_single_problems_with_per_problem_iterations(compiled):
    g = torch.Generator().manual_seed(10)
    x = torch.rand(3, 20, 2, generator=g, dtype=D)
    y = torch.rand(3, 15, 2, generator=g, dtype=D)
    x[0] *= 4.0  # a harder problem (smaller relative ε)
    C = pairwise_cost(x, y, "sqeuclidean")
    out = sinkhorn(None, None, C, 0.05, compiled=compiled, tol=1e-10)
    assert out.value.shape == (3,) and out.plan.shape == (3, 20, 15)
    assert bool(out.converged.all())
    its = out.n_iter.tolist()
    assert its[0] > max(its[1:])  # each problem stopped at its own count
    for k in range(3):
        single = sinkhorn(None, None, C[k], 0.05, compiled=compiled, tol=1e-10)
        torch.testing.assert_close(out.value[k], single.value, atol=1e-12, rtol=1e-10)
        assert int(single.n_iter) == its[k]
    v = sinkhorn_divergence(x, y, 0.05, tol=1e-10)
    assert v.shape == (3,)
    torch.testing.assert_close(v[1], sinkhorn_divergence(x[1], y[1], 0.05, tol=1e-10))


def test_compiled_kernels_and_numpy_reference_agree():
    a, b, C = _problem(30, 20, seed=11)
    o1 = sinkhorn(a, b, C, 0.05, compiled=True, tol=1e-12)
    o2 = sinkhorn(a, b, C, 0.05, compiled=False, tol=1e-12)
    torch.testing.assert_close(o1.plan, o2.plan, atol=1e-12, rtol=1e-9)


# ------------------------------------------------------------------------ float32, small ε
@pytest.mark.parametrize("compiled", [True, False])
def test_float32_small_epsilon_has_no_nans(compiled):
    g = torch.Generator().manual_seed(12)
    x = torch.rand(64, 2, generator=g)
    y = torch.rand(48, 2, generator=g)
    xr = x.clone().requires_grad_()
    v = sinkhorn_divergence(xr, y, 1e-3, compiled=compiled, tol=1e-4, max_iter=20000)
    v.backward()
    assert v.dtype == torch.float32 and xr.grad.dtype == torch.float32
    assert torch.isfinite(v) and bool(torch.isfinite(xr.grad).all())
    v64 = sinkhorn_divergence(x.double(), y.double(), 1e-3, tol=1e-9, max_iter=20000)
    assert abs(float(v) - float(v64)) < 1e-3 * abs(float(v64)) + 1e-5
    C = pairwise_cost(x[None], y[None], "sqeuclidean")[0]
    out = sinkhorn(None, None, C, 1e-3, compiled=compiled, tol=1e-4, max_iter=20000)
    assert out.plan.dtype == torch.float32 and bool(torch.isfinite(out.plan).all())
    assert float((out.plan.sum(1) - 1 / 64).abs().sum()) < 2e-4


# ------------------------------------------------------------------------ implicit warm start
def test_implicit_cg_warm_start_saves_iterations():
    a, b, C = _problem(40, 30, seed=13)
    W = torch.randn(40, 30, dtype=D)
    state = ImplicitState()
    grads = []
    for step in range(2):
        Cr = (C + 1e-4 * step * W).requires_grad_()  # a training step moves the problem a little
        out = sinkhorn(a, b, Cr, 0.02, grad="implicit", implicit_state=state, **KW)
        grads.append(torch.autograd.grad((out.plan * W).sum(), Cr)[0])
    cold = ImplicitState(warm_start=False)
    Cr = (C + 1e-4 * W).requires_grad_()
    out = sinkhorn(a, b, Cr, 0.02, grad="implicit", implicit_state=cold, **KW)
    g_cold = torch.autograd.grad((out.plan * W).sum(), Cr)[0]
    assert state.iterations[1] < cold.iterations[0]
    torch.testing.assert_close(grads[1], g_cold, atol=1e-7, rtol=1e-5)
    assert max(state.residuals + cold.residuals) < 1e-9


# ------------------------------------------------------------------------------ properties
@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 8), m=st.integers(2, 8), eps=st.floats(0.05, 2.0), seed=st.integers(0, 10_000))
def test_plan_marginals_and_value_property(n, m, eps, seed):
    a, b, C = _problem(n, m, seed=seed)
    out = sinkhorn(a, b, C, eps, tol=1e-11)
    P = out.plan
    assert bool(out.converged)
    assert float((P.sum(1) - a).abs().sum() + (P.sum(0) - b).abs().sum()) <= 1e-10
    primal = (P * C).sum() + eps * torch.special.xlogy(P, P).sum()
    assert abs(float(out.value - primal)) <= 1e-8 * (1 + abs(float(primal)))


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), eps=st.floats(0.05, 1.0))
def test_divergence_is_nonnegative_and_zero_on_the_diagonal(seed, eps):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(12, 2, generator=g, dtype=D)
    y = torch.rand(10, 2, generator=g, dtype=D)
    kw = dict(tol=1e-11, max_iter=20_000)
    assert float(sinkhorn_divergence(x, y, eps, cost="half_sqeuclidean", **kw)) >= -1e-9
    assert abs(float(sinkhorn_divergence(x, x, eps, **kw))) <= 1e-9


# ------------------------------------------------------------------------------ error paths
def test_envelope_refuses_plan_gradients_with_a_clear_error():
    a, b, C = _problem()
    Cr = C.clone().requires_grad_()
    out = sinkhorn(a, b, Cr, 0.2)
    assert torch.isfinite(out.plan).all()  # reading is fine
    with pytest.raises(RuntimeError, match="grad='implicit'"):
        out.plan.sum().backward()
    with pytest.raises(RuntimeError, match="envelope"):
        out.f.sum().backward()


def test_bad_inputs_raise_value_errors():
    a, b, C = _problem()
    with pytest.raises(ValueError, match="epsilon requires grad"):
        sinkhorn(a, b, C, torch.tensor(0.1, requires_grad=True))
    with pytest.raises(ValueError, match="grad must be"):
        sinkhorn(a, b, C, 0.1, grad="magic")
    with pytest.raises(ValueError, match="total masses"):
        sinkhorn(a, 2 * b, C, 0.1)
    with pytest.raises(ValueError, match="negative"):
        sinkhorn(-a, b, C, 0.1)
    with pytest.raises(ValueError, match="dtype"):
        sinkhorn(a.float(), b, C, 0.1)
    with pytest.raises(ValueError, match="shape"):
        sinkhorn(a[:-1], b, C, 0.1)
    with pytest.raises(ValueError, match="non-finite"):
        sinkhorn(a, b, C.masked_fill(C > 0.9, float("nan")), 0.1)
    with pytest.raises(ValueError, match="epsilon"):
        sinkhorn(a, b, C, -1.0)
    with pytest.raises(ValueError, match="cost must be"):
        SinkhornLoss(0.1, cost="manhattan")
    with pytest.raises(ValueError, match=r"\(x, y\) or \(a, x, b, y\)"):
        SinkhornLoss(0.1)(C, C, C)
    with pytest.raises(ValueError, match="different dimensions"):
        sinkhorn_divergence(torch.rand(4, 2), torch.rand(4, 3), 0.1)
    with pytest.raises(ValueError, match="compiled must be"):
        sinkhorn(a, b, C, 0.1, compiled="yes")
    with pytest.raises(ValueError, match="backend must be"):
        sinkhorn(a, b, C, 0.1, backend="gpu")
    with pytest.warns(DeprecationWarning, match="use `compiled`"):
        sinkhorn(a, b, C, 0.1, backend="compiled")


def test_non_convergence_warns_and_reports():
    a, b, C = _problem(20, 20, seed=14)
    with pytest.warns(RuntimeWarning, match="did not reach"):
        out = sinkhorn(a, b, C, 1e-3, max_iter=3)
    assert not bool(out.converged) and int(out.n_iter) == 3
    assert float(out.marginal_error) > 1e-9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    g = torch.Generator().manual_seed(15)
    x = torch.rand(2, 50, 3, generator=g)
    y = torch.rand(2, 40, 3, generator=g)
    v_cpu = sinkhorn_divergence(x, y, 0.05, tol=1e-5)
    xr = x.cuda().requires_grad_()
    v = sinkhorn_divergence(xr, y.cuda(), 0.05, tol=1e-5)
    v.sum().backward()
    assert v.device.type == "cuda" and xr.grad.device.type == "cuda"
    torch.testing.assert_close(v.cpu(), v_cpu, atol=1e-4, rtol=1e-3)


# ------------------------------------------------- one driver: the core's contract in torch
def test_float32_converged_means_the_returned_plan_meets_tol():
    """converged is measured on the returned (float32) potentials' plan, not on an iterate."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        n, m = (int(v) for v in rng.integers(3, 40, 2))
        C = torch.tensor(rng.random((n, m)), dtype=torch.float32)
        eps = float(10 ** rng.uniform(-2, 0))
        out = sinkhorn(None, None, C, eps)
        f, g = out.f.double(), out.g.double()
        P = torch.exp((f[:, None] + g[None] - C.double()) / eps - 1)
        # the problem solved: float32 uniform weights, b matched to a's mass (rounding-level gap)
        a32, b32 = torch.full((n,), 1 / n, dtype=torch.float32), torch.full((m,), 1 / m, dtype=torch.float32)
        ratio = np.float32(float(a32.numpy().sum()) / float(b32.numpy().sum()))  # as check_same_mass
        a, b = a32.double(), (b32 * torch.tensor(ratio)).double()
        err = float((P.sum(1) - a).abs().sum() + (P.sum(0) - b).abs().sum())
        assert abs(err - float(out.marginal_error)) <= 1e-3 * err + 1e-9
        if bool(out.converged):
            assert err <= 1e-6


@pytest.mark.parametrize("grad", ["implicit", "envelope"])
def test_zero_weights_give_finite_values_and_gradients(grad):
    a, b, C = _problem(12, 10, seed=21)
    a = a.clone()
    a[[2, 7]] = 0
    a = a / a.sum()
    b = b.clone()
    b[3] = 0
    b = b / b.sum()
    ar, br, Cr = a.clone().requires_grad_(), b.clone().requires_grad_(), C.clone().requires_grad_()
    out = sinkhorn(ar, br, Cr, 0.1, grad=grad, tol=1e-12)
    assert bool(out.converged) and torch.isfinite(out.value)
    out.value.backward()
    for t in (ar, br, Cr):
        assert bool(torch.isfinite(t.grad).all())
    # the gradient in C is the plan, zero on the rows / column of zero weight
    assert float(Cr.grad[[2, 7]].abs().max()) == 0 and float(Cr.grad[:, 3].abs().max()) == 0
    if grad == "implicit":
        # plan and potentials are differentiable too, and finite
        P = sinkhorn(a, b, Cr, 0.1, grad="implicit", tol=1e-12).plan
        (P * torch.arange(10.0, dtype=P.dtype)).sum().backward()
        assert bool(torch.isfinite(Cr.grad).all())
