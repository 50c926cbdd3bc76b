"""otsolve.torch.SamplesLoss against GeomLoss (converged), finite differences, half precision,
the module's state after a forward pass, the loss tolerance (issue 15)."""
from __future__ import annotations

import copy
import io

import pytest

torch = pytest.importorskip("torch")

from otsolve.torch import SamplesLoss, SinkhornLoss, sinkhorn_divergence  # noqa: E402


@pytest.fixture
def converged_geomloss(monkeypatch):
    """GeomLoss's SamplesLoss run to convergence: its ε-schedule gets 20000 extra iterations at
    the final ε (GeomLoss itself has no tolerance: it stops at the end of the schedule)."""
    gss = pytest.importorskip("geomloss._legacy.sinkhorn_samples")
    from geomloss import SamplesLoss as GL

    orig = gss.scaling_parameters

    def longer(*args):
        d, e, eps_list, rho = orig(*args)
        return d, e, eps_list + [eps_list[-1]] * 20000, rho

    monkeypatch.setattr(gss, "scaling_parameters", longer)
    return GL


def _clouds(n=60, m=50, d=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=dtype)
    y = torch.randn(m, d, generator=g, dtype=dtype) + 0.5
    a = torch.rand(n, generator=g, dtype=dtype) + 0.1
    b = torch.rand(m, generator=g, dtype=dtype) + 0.1
    return x, y, a / a.sum(), b / b.sum()


@pytest.mark.parametrize("debias", [True, False])
@pytest.mark.parametrize("blur", [0.5, 0.2])
def test_values_and_gradients_match_geomloss(converged_geomloss, debias, blur):
    x, y, a, b = _clouds()
    G = converged_geomloss("sinkhorn", p=2, blur=blur, debias=debias, backend="tensorized")
    O = SamplesLoss("sinkhorn", p=2, blur=blur, debias=debias, tol=1e-11)
    xg, xo = x.clone().requires_grad_(), x.clone().requires_grad_()
    bg, bo = b.clone().requires_grad_(), b.clone().requires_grad_()
    vg, vo = G(a, xg, bg, y), O(a, xo, bo, y)
    vg.backward()
    vo.backward()
    assert float(vo.detach()) == pytest.approx(float(vg.detach()), rel=1e-8)
    torch.testing.assert_close(xo.grad, xg.grad, rtol=1e-6, atol=1e-8)
    # weight gradients: equal up to a constant (GeomLoss's are not centred)
    dg, do = bg.grad - bg.grad.mean(), bo.grad - bo.grad.mean()
    torch.testing.assert_close(do, dg, rtol=1e-6, atol=1e-8)


def test_uniform_batched_and_p1_match_geomloss(converged_geomloss):
    x, y, _, _ = _clouds(d=2)
    xb, yb = torch.stack([x, 0.5 * x]), torch.stack([y, y + 1])
    vg = converged_geomloss("sinkhorn", p=2, blur=0.3, backend="tensorized")(xb, yb)
    vo = SamplesLoss("sinkhorn", p=2, blur=0.3, tol=1e-11)(xb, yb)
    assert vo.shape == (2,)
    torch.testing.assert_close(vo, vg, rtol=1e-10, atol=1e-12)
    # p = 1 (Euclidean cost), no debiasing (GeomLoss smooths the distance on the diagonal:
    # sqrt(max(d², 1e-8)), which moves its self-transport terms by ~1e-4)
    vg = converged_geomloss("sinkhorn", p=1, blur=0.3, debias=False, backend="tensorized")(x, y)
    vo = SamplesLoss("sinkhorn", p=1, blur=0.3, debias=False, tol=1e-11)(x, y)
    assert float(vo) == pytest.approx(float(vg), rel=1e-9)


@pytest.mark.parametrize("debias", [True, False])
def test_potentials_match_geomloss_up_to_a_constant(converged_geomloss, debias):
    x, y, a, b = _clouds()
    Fg, Gg = converged_geomloss("sinkhorn", p=2, blur=0.3, debias=debias, potentials=True,
                                backend="tensorized")(a, x, b, y)
    Fo, Go = SamplesLoss("sinkhorn", p=2, blur=0.3, debias=debias, potentials=True, tol=1e-11)(a, x, b, y)
    assert Fo.shape == (60,) and Go.shape == (50,)
    t = (Fg.reshape(-1) - Fo).mean()
    torch.testing.assert_close(Fo + t, Fg.reshape(-1), rtol=0, atol=1e-8)
    torch.testing.assert_close(Go - t, Gg.reshape(-1), rtol=0, atol=1e-8)
    # GeomLoss's value is <a, F> + <b, G> (gauge invariant)
    v = SamplesLoss("sinkhorn", p=2, blur=0.3, debias=debias, tol=1e-11)(a, x, b, y)
    assert float((a * Fo).sum() + (b * Go).sum()) == pytest.approx(float(v), rel=1e-9)


def test_gradient_matches_finite_differences():
    x, y, a, b = _clouds(n=20, m=15, d=2, seed=3)
    L = SamplesLoss("sinkhorn", p=2, blur=0.3, tol=1e-12)
    xr = x.clone().requires_grad_()
    L(a, xr, b, y).backward()
    g = torch.Generator().manual_seed(1)
    v = torch.randn(x.shape, generator=g, dtype=x.dtype)
    h = 1e-5
    fd = (float(L(a, x + h * v, b, y)) - float(L(a, x - h * v, b, y))) / (2 * h)
    assert float((xr.grad * v).sum()) == pytest.approx(fd, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_inputs(dtype):
    x, y, _, _ = _clouds(n=40, m=30, dtype=torch.float32)
    xh = x.to(dtype).requires_grad_()
    L = SamplesLoss("sinkhorn", p=2, blur=0.3)
    v = L(xh, y.to(dtype))
    v.backward()
    assert v.dtype == torch.float32  # computed in float32
    assert xh.grad.dtype == dtype and torch.isfinite(xh.grad.float()).all()
    ref = L(xh.detach().float(), y.to(dtype).float())
    assert float(v) == pytest.approx(float(ref), rel=1e-6)


@pytest.mark.parametrize("make", [lambda: SamplesLoss("sinkhorn", blur=0.3, warm_start=True),
                                  lambda: SinkhornLoss(0.1, warm_start=True)])
def test_module_keeps_no_graph(make):
    L = make()
    x, y, _, _ = _clouds(n=30, m=20, dtype=torch.float32)
    xr = x.clone().requires_grad_()
    L(xr, y).backward()
    L2 = copy.deepcopy(L)
    buf = io.BytesIO()
    torch.save(L, buf)
    buf.seek(0)
    L3 = torch.load(buf, weights_only=False)
    assert L.state_dict() == {} or isinstance(L.state_dict(), dict)
    for M in (L2, L3):
        assert float(M(x, y)) == pytest.approx(float(L(x, y)), rel=1e-5)
    # warm starts survive a change of batch size (the other terms start cold)
    vb = L(torch.stack([x, x]), torch.stack([y, y]))
    assert vb.shape == (2,)


def test_loss_tol_bounds_the_error():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(200, 3, generator=g), torch.randn(200, 3, generator=g)
    eps = 0.05 ** 2
    ref = float(sinkhorn_divergence(x.double(), y.double(), eps, cost="half_sqeuclidean", tol=1e-9, max_iter=50000,
                                    epsilon_scaling=0.5, grad="detach"))
    for loss_tol in (1e-3, 1e-5):
        L = SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.7, loss_tol=loss_tol)
        assert abs(float(L(x, y)) - ref) <= loss_tol


def test_validation():
    with pytest.raises(ValueError, match="loss"):
        SamplesLoss("energy")
    with pytest.raises(ValueError, match="p must"):
        SamplesLoss(p=3)
    with pytest.raises(ValueError, match="backend"):
        SamplesLoss(backend="gpu")
    with pytest.raises(ValueError, match="reach"):
        SamplesLoss(reach=0)
    with pytest.raises(ValueError, match="blur"):
        SamplesLoss(blur=0)
    with pytest.raises(ValueError, match="scaling"):
        SamplesLoss(scaling=1.5)
    with pytest.raises(ValueError, match="loss_tol"):
        SamplesLoss(loss_tol=-1)
    with pytest.raises(ValueError, match="unknown option"):
        SamplesLoss(numItermax=3)
    for backend in ("auto", "tensorized", "online", "multiscale"):
        SamplesLoss(backend=backend)
    with pytest.raises(ValueError, match="arguments"):
        SamplesLoss()(torch.zeros(3, 2))
