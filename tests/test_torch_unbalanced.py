"""Unbalanced OT in otsolve.torch (issue 15, item 2): ``SamplesLoss(reach=...)``,
``sinkhorn_divergence(rho=...)``, ``sinkhorn(rho_a=..., rho_b=...)`` against GeomLoss run to
convergence, POT's unbalanced plan, finite differences (float64) and the limits ρ → ∞ / zero
weights; warm starts, half precision and module state as for balanced losses."""
from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from otsolve.torch import SamplesLoss, SinkhornLoss, sinkhorn, sinkhorn_divergence  # noqa: E402

F64 = torch.float64


@pytest.fixture
def converged_geomloss(monkeypatch):
    """GeomLoss's SamplesLoss run to convergence: 3000 extra iterations at the final ε (GeomLoss
    has no tolerance; its own schedule stops ~1e-4 away at scaling 0.99 in these examples)."""
    gss = pytest.importorskip("geomloss._legacy.sinkhorn_samples")
    from geomloss import SamplesLoss as GL

    orig = gss.scaling_parameters

    def longer(*args):
        d, e, eps_list, rho = orig(*args)
        return d, e, eps_list + [eps_list[-1]] * 3000, rho

    monkeypatch.setattr(gss, "scaling_parameters", longer)
    return GL


def _exact_distance(x, y):
    # GeomLoss's p = 1 cost is sqrt(max(d², 1e-8)); give it the exact distance (as otsolve's)
    d2 = ((x.unsqueeze(-2) - y.unsqueeze(-3)) ** 2).sum(-1)
    pos = d2 > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, d2, torch.ones_like(d2))), torch.zeros_like(d2))


def _clouds(n=30, m=40, d=2, seed=0, mass_a=1.3, mass_b=0.8, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randn(m, d, generator=g, dtype=dtype) + 0.5
    a = torch.rand(n, generator=g, dtype=dtype) + 0.5
    b = torch.rand(m, generator=g, dtype=dtype) + 0.5
    return x, y, mass_a * a / a.sum(), mass_b * b / b.sum()


def _geomloss(GL, p, blur, reach, debias, **kw):
    return GL("sinkhorn", p=p, blur=blur, reach=reach, debias=debias, backend="tensorized",
              cost=_exact_distance if p == 1 else None, **kw)


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("masses", [(1.0, 1.0), (1.3, 0.8)])
def test_values_and_gradients_match_geomloss(converged_geomloss, p, debias, masses):
    x, y, a, b = _clouds(mass_a=masses[0], mass_b=masses[1])
    blur, reach = 0.3, 0.7
    eps, rho = blur ** p, reach ** p
    G = _geomloss(converged_geomloss, p, blur, reach, debias)
    O = SamplesLoss("sinkhorn", p=p, blur=blur, reach=reach, debias=debias, tol=1e-12)
    xg, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    ag, ao = a.clone().requires_grad_(), a.clone().requires_grad_()
    bg, bo = b.clone().requires_grad_(), b.clone().requires_grad_()
    vg, vo = G(ag, xg, bg, y), O(ao, xo, bo, y)
    assert float(vo.detach()) == pytest.approx(float(vg.detach()), rel=1e-9)
    vg.backward()
    vo.backward()
    # GeomLoss autograd-differentiates (ρ + ε/2)<a, 1 − e^{−φ/ρ}>: its gradients are
    # (ρ + ε/2)/(ρ + ε) times the derivative of the value (checked against finite differences below)
    fac = (rho + eps / 2) / (rho + eps)
    torch.testing.assert_close(fac * xo.grad, xg.grad, rtol=1e-7, atol=1e-10)
    if debias:
        torch.testing.assert_close(fac * ao.grad, ag.grad, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(fac * bo.grad, bg.grad, rtol=1e-7, atol=1e-10)
    else:  # raw OT: ours is (ρ + ε)(1 − e^{−φ/ρ}) − ε/2, GeomLoss's (ρ + ε/2)(1 − e^{−φ/ρ})
        torch.testing.assert_close(fac * (ao.grad + eps / 2), ag.grad, rtol=1e-7, atol=1e-10)
        torch.testing.assert_close(fac * (bo.grad + eps / 2), bg.grad, rtol=1e-7, atol=1e-10)


def test_batches_and_potentials_match_geomloss(converged_geomloss):
    x, y, a, b = _clouds(n=25, m=20)
    xb, yb = torch.stack([x, 0.5 * x]), torch.stack([y, y + 1])
    ab, bb = torch.stack([a, a.flip(0)]), torch.stack([b, 2 * b])
    vg = _geomloss(converged_geomloss, 2, 0.3, 0.5, True)(ab, xb, bb, yb)
    vo = SamplesLoss("sinkhorn", p=2, blur=0.3, reach=0.5, tol=1e-12)(ab, xb, bb, yb)
    assert vo.shape == (2,)
    torch.testing.assert_close(vo, vg, rtol=1e-9, atol=1e-12)
    for debias in (True, False):  # unbalanced potentials are unique: no gauge to remove
        Fg, Gg = _geomloss(converged_geomloss, 2, 0.3, 0.5, debias, potentials=True)(a, x, b, y)
        Fo, Go = SamplesLoss("sinkhorn", p=2, blur=0.3, reach=0.5, debias=debias, potentials=True,
                             tol=1e-12)(a, x, b, y)
        assert Fo.shape == (25,) and Go.shape == (20,)
        torch.testing.assert_close(Fo, Fg.reshape(-1), rtol=1e-8, atol=1e-10)
        torch.testing.assert_close(Go, Gg.reshape(-1), rtol=1e-8, atol=1e-10)


def _fd_check(V, args, h=1e-6, tol=1e-7):
    """Compare autograd with central finite differences (one-sided, second order, at zero weights)."""
    args = [t.detach().clone() for t in args]
    req = [t.clone().requires_grad_() for t in args]
    grads = torch.autograd.grad(V(*req), req)
    for k, (t, gr) in enumerate(zip(args, grads)):
        flat, gflat = t.reshape(-1), gr.reshape(-1)
        for i in range(flat.numel()):
            def at(s):
                u = [w.clone() for w in args]
                u[k].reshape(-1)[i] += s
                return float(V(*u))
            if k < 2 and flat[i] == 0:  # a weight at zero: one-sided
                fd = (-3 * at(0.0) + 4 * at(h) - at(2 * h)) / (2 * h)
            else:
                fd = (at(h) - at(-h)) / (2 * h)
            assert float(gflat[i]) == pytest.approx(fd, abs=tol, rel=1e-6), (k, i)


@pytest.mark.parametrize("grad", ["envelope", "implicit", "unroll"])
@pytest.mark.parametrize("p, debias", [(2, True), (2, False), (1, True)])
def test_gradients_match_finite_differences(grad, p, debias):
    x, y, a, b = _clouds(n=5, m=6)
    a[2] = 0.0  # a zero weight: the derivative there is the one-sided one
    cost = "half_sqeuclidean" if p == 2 else "euclidean"

    def V(a, b, x, y):
        return sinkhorn_divergence(x, y, 0.5 ** p, a=a, b=b, cost=cost, debias=debias, rho=0.7 ** p, grad=grad,
                                   tol=1e-13, max_iter=20000)

    _fd_check(V, [a, b, x, y])


@pytest.mark.parametrize("grad", ["implicit", "unroll"])
def test_plan_and_potential_gradients_match_finite_differences(grad):
    """Implicit / unrolled modes differentiate the potentials and the plan themselves."""
    g = torch.Generator().manual_seed(3)
    C = torch.rand(5, 4, generator=g, dtype=F64)
    a = torch.rand(5, generator=g, dtype=F64) + 0.2
    b = torch.rand(4, generator=g, dtype=F64) + 0.2
    W = torch.randn(5, 4, generator=g, dtype=F64)
    wf = torch.randn(5, generator=g, dtype=F64)

    def V(a, b, C):
        out = sinkhorn(a, b, C, 0.2, rho_a=0.5, rho_b=2.0, grad=grad, tol=1e-13, max_iter=20000)
        return (out.plan * W).sum() + (out.f * wf).sum() + out.value

    _fd_check(V, [a, b, C])


def test_cost_matrix_plan_matches_pot_and_value_is_the_objective():
    pot = pytest.importorskip("ot")
    rng = np.random.default_rng(0)
    C = rng.random((8, 10))
    a, b = rng.random(8) + 0.1, rng.random(10) + 0.1
    a, b = 1.4 * a / a.sum(), b / b.sum()
    eps, ra, rb = 0.1, 0.5, 2.0
    P_pot = pot.unbalanced.sinkhorn_unbalanced(a, b, C, eps, (ra, rb), reg_type="kl", numItermax=100000,
                                               stopThr=1e-14)
    for compiled in (True, False):
        out = sinkhorn(torch.tensor(a), torch.tensor(b), torch.tensor(C), eps, rho_a=ra, rho_b=rb, tol=1e-13,
                       compiled=compiled)
        assert bool(out.converged)
        P = out.plan.detach().numpy()
        np.testing.assert_allclose(P, P_pot, rtol=1e-9, atol=1e-14)

        def kl(p, q):
            return float((p * np.log(p / q) - p + q).sum())

        r, c = P.sum(1), P.sum(0)
        objective = (C * P).sum() + eps * kl(P, np.outer(a, b)) + ra * kl(r, a) + rb * kl(c, b)
        assert float(out.value) == pytest.approx(objective, rel=1e-10)


def test_one_relaxed_side_allows_unequal_masses():
    g = torch.Generator().manual_seed(1)
    C = torch.rand(6, 5, generator=g, dtype=F64)
    a, b = torch.full((6,), 0.3, dtype=F64), torch.full((5,), 0.2, dtype=F64)
    with pytest.raises(ValueError, match="different total masses"):
        sinkhorn(a, b, C, 0.1)
    out = sinkhorn(a, b, C, 0.1, rho_a=0.5, tol=1e-12)
    torch.testing.assert_close(out.plan.sum(0), b, rtol=1e-9, atol=1e-12)  # the hard side holds


def test_large_reach_recovers_the_balanced_loss():
    x, y, a, b = _clouds(mass_a=1.0, mass_b=1.0)
    vals, grads = [], []
    for reach in (None, 1e3):
        xr = x.clone().requires_grad_()
        v = SamplesLoss("sinkhorn", p=2, blur=0.3, reach=reach, tol=1e-12)(a, xr, b, y)
        v.backward()
        vals.append(float(v.detach()))
        grads.append(xr.grad)
    assert vals[1] == pytest.approx(vals[0], rel=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-7)
    assert SamplesLoss(reach=math.inf).reach is None  # inf = balanced


def test_compiled_and_reference_kernels_agree():
    x, y, a, b = _clouds(n=20, m=15)
    v1 = sinkhorn_divergence(x, y, 0.05, a=a, b=b, rho=0.3, tol=1e-12)
    v2 = sinkhorn_divergence(x, y, 0.05, a=a, b=b, rho=0.3, tol=1e-12, compiled=False)
    assert float(v1) == pytest.approx(float(v2), rel=1e-10)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "far", True])
def test_bad_reach_is_a_value_error(bad):
    with pytest.raises(ValueError, match="reach"):
        SamplesLoss(reach=bad)
    x, y = torch.randn(4, 2), torch.randn(5, 2)
    with pytest.raises(ValueError, match="rho"):
        sinkhorn_divergence(x, y, 0.1, rho=bad)
    with pytest.raises(ValueError, match="rho"):
        SinkhornLoss(0.1, rho=bad)
    with pytest.raises(ValueError, match="rho_b"):
        sinkhorn(None, None, torch.rand(4, 5), 0.1, rho_a=1.0, rho_b=bad)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_zero_weights_give_finite_values_and_gradients(dtype):
    x, y, a, b = _clouds(n=12, m=10, dtype=dtype)
    a[[0, 5]] = 0.0
    b[3] = 0.0
    for grad in ("envelope", "implicit"):
        ar, br, xr = a.clone().requires_grad_(), b.clone().requires_grad_(), x.clone().requires_grad_()
        v = SamplesLoss("sinkhorn", p=2, blur=0.2, reach=0.5, grad=grad)(ar, xr, br, y)
        v.backward()
        assert torch.isfinite(v)
        for t in (ar.grad, br.grad, xr.grad):
            assert bool(torch.isfinite(t).all())
        assert bool((xr.grad[[0, 5]] == 0).all())  # no mass at those points
    F, G = SamplesLoss("sinkhorn", p=2, blur=0.2, reach=0.5, potentials=True)(a, x, b, y)
    assert bool(torch.isfinite(F).all()) and bool(torch.isfinite(G).all())


def test_float32_and_half_precision():
    x, y, a, b = _clouds(n=50, m=40, d=3)
    ref = float(SamplesLoss("sinkhorn", p=2, blur=0.1, reach=0.5, tol=1e-12)(a, x, b, y))
    with torch.no_grad():
        v32 = SamplesLoss("sinkhorn", p=2, blur=0.1, reach=0.5)(a.float(), x.float(), b.float(), y.float())
    assert v32.dtype == torch.float32
    assert float(v32) == pytest.approx(ref, rel=1e-5)
    for half in (torch.float16, torch.bfloat16):
        xh = x.to(half).requires_grad_()
        v = SamplesLoss("sinkhorn", p=2, blur=0.1, reach=0.5)(xh, y.to(half))
        v.backward()
        assert v.dtype == torch.float32 and xh.grad.dtype == half
        assert bool(torch.isfinite(xh.grad.float()).all())
        ref_h = float(SamplesLoss("sinkhorn", p=2, blur=0.1, reach=0.5)(x.to(half).float(), y.to(half).float()))
        assert float(v.detach()) == pytest.approx(ref_h, rel=1e-5)


def test_warm_start_and_module_state():
    x, y, a, b = _clouds(n=40, m=30, dtype=torch.float32)
    xs, ys = torch.stack([x, x + 0.1, x - 0.2]), torch.stack([y, y, 0.5 * y])
    ab, bb = a.expand(3, -1).contiguous(), b.expand(3, -1).contiguous()
    L = SamplesLoss("sinkhorn", p=2, blur=0.1, reach=0.5, warm_start=True)
    xr = xs.clone().requires_grad_()
    v1 = L(ab, xr, bb, ys)
    v1.sum().backward()
    cold = {k: o.n_iter.clone() for k, o in L.last_outputs.items()}
    v2 = L(ab, xs, bb, ys)  # same problem, warm: (almost) no iterations, same value
    torch.testing.assert_close(v2, v1.detach(), rtol=1e-5, atol=1e-7)
    for k, o in L.last_outputs.items():
        assert bool((o.n_iter <= 2).all()) and bool((cold[k] > 10).all()), k
    v3 = L(ab[:2], xs[:2], bb[:2], ys[:2])  # a new batch size starts cold (and works)
    torch.testing.assert_close(v3, v1.detach()[:2], rtol=1e-5, atol=1e-7)
    # no graph kept: deepcopy / torch.save / state_dict after a forward pass
    L2 = copy.deepcopy(L)
    assert L2.reach == 0.5 and L2.rho == pytest.approx(0.25)
    torch.save(L, io.BytesIO())
    assert L.state_dict() == {}
