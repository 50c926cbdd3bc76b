"""Tests of the differentiable sparsity-constrained router (otsolve.torch.route, SparseRouter)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import otsolve  # noqa: E402
from otsolve.routing import expert_capacity  # noqa: E402
from otsolve.torch import RouterOutput, SparseRouter, route  # noqa: E402
from otsolve.torch.routing import _project_range, _support_solve  # noqa: E402

D = torch.float64
# a converged, polished forward: the plan is then the exact optimum on its support, affine in the
# scores while the support does not change, so finite differences see the analytic derivative
EXACT = dict(optimizer="lbfgs", num_steps=300, polish=True)


def _scores(shape, seed=0, dtype=D):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _gc(fn, x):
    return torch.autograd.gradcheck(fn, (x,), atol=1e-6, rtol=1e-4)


# ------------------------------------------------------------------------- forward = otsolve.route
@pytest.mark.parametrize("mode,capacity", [("experts_choose", 4), ("tokens_choose", 2)])
@pytest.mark.parametrize("combine", ["gates", "plan"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_equal_core_route(mode, capacity, combine, dtype):
    s = _scores((3, 16, 4), seed=1, dtype=dtype)
    r = route(s, capacity, mode=mode, combine=combine)
    c = otsolve.route(s.numpy(), capacity, mode=mode, combine=combine)
    assert isinstance(r, RouterOutput)
    assert r.combine.dtype == dtype and r.plan.dtype == dtype
    np.testing.assert_array_equal(r.dispatch.numpy(), c.dispatch)
    np.testing.assert_array_equal(r.combine.numpy(), c.combine)
    np.testing.assert_array_equal(r.plan.numpy(), c.plan)
    np.testing.assert_allclose(r.value.numpy(), c.value, rtol=1e-6 if dtype == torch.float32 else 1e-15)
    np.testing.assert_array_equal(r.expert_load.numpy(), c.expert_load)
    np.testing.assert_array_equal(r.token_load.numpy(), c.token_load)
    np.testing.assert_allclose(r.marginal_error_tokens.numpy(), c.marginal_error_tokens, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(r.marginal_error_experts.numpy(), c.marginal_error_experts, rtol=1e-5, atol=1e-5)
    assert not bool(r.polished.any())


def test_batching_matches_single_groups():
    s = _scores((2, 3, 12, 4), seed=2)
    r = route(s, 4, combine="plan")
    assert r.plan.shape == (2, 3, 12, 4) and r.value.shape == (2, 3) and r.expert_load.shape == (2, 3, 4)
    for i in range(2):
        for j in range(3):
            rij = route(s[i, j], 4, combine="plan")
            assert torch.equal(rij.plan, r.plan[i, j]) and torch.equal(rij.dispatch, r.dispatch[i, j])
    # gradients of a batch = gradients of each group
    x = s.clone().requires_grad_()
    (route(x, 4, combine="plan").combine * s).sum().backward()
    for i, j in ((0, 0), (1, 2)):
        y = s[i, j].clone().requires_grad_()
        (route(y, 4, combine="plan").combine * s[i, j]).sum().backward()
        torch.testing.assert_close(x.grad[i, j], y.grad, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------- gradients
@pytest.mark.parametrize("output", ["gates", "plan", "value"])
@pytest.mark.parametrize("mode,capacity,seed", [("experts_choose", 6, 10), ("experts_choose", 4, 10),
                                                ("tokens_choose", 2, 1)])
def test_gradcheck_exact_forward(output, mode, capacity, seed):
    # seeds whose polished support does not change under the +-1e-6 finite-difference steps
    # (checked below; L-BFGS stops at slightly different points, near-zero entries can flip)
    s = _scores((1, 8, 3), seed=seed)

    def f(x):
        r = route(x, capacity, mode=mode, combine="plan" if output == "plan" else "gates", **EXACT)
        assert bool(r.polished.all())
        return r.value if output == "value" else r.combine

    x = s.clone().requires_grad_()
    with torch.no_grad():  # the support is stable under the finite-difference steps
        d0 = route(s, capacity, mode=mode, **EXACT).dispatch
        for k in range(s.numel()):
            for h in (1e-6, -1e-6):
                e = torch.zeros_like(s).reshape(-1)
                e[k] = h
                assert torch.equal(route(s + e.reshape(s.shape), capacity, mode=mode, **EXACT).dispatch, d0)
    assert _gc(f, x)


def test_gradcheck_gates_default_solver():
    # the default 20 Adam steps: combine="gates" is the softmax through the (locally constant)
    # dispatch mask, so its gradient is exact for the core's own forward
    s = _scores((2, 8, 4), seed=3)
    assert _gc(lambda x: route(x, 4).combine, s.clone().requires_grad_())


def test_plan_gradient_is_projection_on_support():
    # dT/dC = -(I - Π)/γ: a gradient that is a sum u_i + v_j on the support gives zero
    s = _scores((1, 12, 3), seed=4)
    x = s.clone().requires_grad_()
    r = route(x, 6, combine="plan", gamma=0.5)
    A = r.dispatch.double()
    u, v = torch.randn(1, 12, dtype=D), torch.randn(1, 3, dtype=D)
    (gx,) = torch.autograd.grad(r.plan, x, (u[..., None] + v[..., None, :]) * A)
    assert float(gx.abs().max()) < 1e-10
    G = torch.randn(1, 12, 3, dtype=D) * A
    P = _project_range(A, G)
    torch.testing.assert_close(_project_range(A, P), P)  # idempotent
    R = G - P  # residual has zero row and column sums on the support
    assert float(R.sum(-1).abs().max()) < 1e-10 and float(R.sum(-2).abs().max()) < 1e-10


def test_support_solve_disconnected_and_empty_rows():
    A = torch.zeros(1, 5, 3, dtype=D)
    A[0, 0, 0] = A[0, 1, 0] = 1  # component {t0, t1, e0}
    A[0, 2, 1] = A[0, 3, 1] = 1  # component {t2, t3, e1}; t4 and e2 are empty
    G = torch.randn(1, 5, 3, dtype=D) * A
    u, v = _support_solve(A, G.sum(-1), G.sum(-2))
    P = (u[..., None] + v[..., None, :]) * A
    R = G - P
    assert float(R.sum(-1).abs().max()) < 1e-12 and float(R.sum(-2).abs().max()) < 1e-12
    assert torch.isfinite(u).all() and torch.isfinite(v).all()


def test_value_gradient_is_minus_plan_before_softmax():
    s = _scores((2, 10, 5), seed=5)
    x = s.clone().requires_grad_()
    r = route(x, 4, normalize=None)
    (gx,) = torch.autograd.grad(r.value.sum(), x)
    torch.testing.assert_close(gx, -r.plan.detach())


def test_polish_makes_marginals_exact():
    s = _scores((4, 32, 4), seed=6)
    r = route(s, 12, polish=True)
    ok = r.polished
    assert bool(ok.any())
    assert float(r.marginal_error_tokens[ok].max()) < 1e-9
    assert float(r.marginal_error_experts[ok].max()) < 1e-9
    c = otsolve.route(s.numpy(), 12)
    assert float(torch.as_tensor(c.marginal_error_tokens)[ok].min()) > 1e-6  # 20 Adam steps are not there
    np.testing.assert_array_equal(r.dispatch.numpy(), c.dispatch)  # same support


def test_float32_and_detach():
    s = _scores((2, 16, 4), seed=7, dtype=torch.float32).requires_grad_()
    r = route(s, 4, combine="plan")
    (r.combine.sum() + r.value.sum()).backward()
    assert s.grad.dtype == torch.float32 and torch.isfinite(s.grad).all()
    rd = route(s, 4, grad="detach")
    assert not rd.combine.requires_grad and not rd.plan.requires_grad


def test_sparse_router_module_trains():
    torch.manual_seed(0)
    router = SparseRouter(num_experts=4, in_features=8, combine="plan")
    x = torch.randn(2, 32, 8)
    out = router(x)
    assert out.capacity == expert_capacity(32, 4)
    assert int(out.expert_load.max()) <= out.capacity
    (out.combine * torch.randn(2, 32, 4)).sum().backward()
    assert router.gate.weight.grad is not None and torch.isfinite(router.gate.weight.grad).all()
    r2 = SparseRouter(4, capacity=2, mode="tokens_choose")
    assert int(r2(torch.randn(16, 4)).token_load.max()) <= 2


# ------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bad,kw,match", [
    (torch.randn(5), {}, "shape"),
    (torch.randn(4, 2, dtype=torch.complex64), {}, "real floating"),
    (torch.randn(4, 2).half(), {}, "float32 or float64"),
    (torch.tensor([[0.0, float("nan")], [1.0, 2.0]]), {}, "NaN"),
    (torch.randn(4, 2), {"capacity": 0}, "capacity"),
    (torch.randn(4, 2), {"mode": "both"}, "mode"),
    (torch.randn(4, 2), {"combine": "sum"}, "combine"),
    (torch.randn(4, 2), {"grad": "unroll"}, "grad"),
    (torch.randn(4, 2), {"gamma": -1.0}, "gamma"),
])
def test_bad_input(bad, kw, match):
    kw = {"capacity": 2, **kw}
    cap = kw.pop("capacity")
    with pytest.raises(ValueError, match=match):
        route(bad, cap, **kw)


def test_router_bad_options():
    with pytest.raises(ValueError, match="unknown option"):
        SparseRouter(4, epsilon=0.1)
    with pytest.raises(ValueError, match="tokens_choose"):
        SparseRouter(4, mode="tokens_choose")
    with pytest.raises(ValueError, match="experts"):
        SparseRouter(4)(torch.randn(8, 3))
