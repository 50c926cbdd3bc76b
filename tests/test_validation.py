"""Bad input fails fast with a clear message (issue 14): masses, thread counts, Ctrl-C in compiled
loops, overflowing point clouds, callable costs, torch settings, LightSB files, routing steps,
memory that cannot fit, SinkhornLoss warm starts; and one name per concept (rng, lr)."""
from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest

import otsolve
from otsolve import _validation
from otsolve._validation import (InsufficientMemoryError, as_rng, check_n_threads, check_same_mass,
                                 machine_cores)
from otsolve.solvers.sparsity_constrained import SparsityConstrainedOT


@pytest.fixture
def rng():
    return np.random.default_rng(2024)


# ------------------------------------------------------------------------------------ masses
@pytest.mark.parametrize("gap", [1e-8, 1e-7, 1e-6 * 0.99])
def test_mass_gap_below_rtol_is_matched_and_the_solve_converges(rng, gap):
    """A relative gap between 1e-8 and 1e-6 used to be accepted and then could never converge
    (no plan has a marginal error below the gap): b is now rescaled to a's mass, with a warning."""
    C = rng.random((40, 30))
    a, b = np.full(40, 1 / 40), np.full(30, 1 / 30) * (1 + gap)
    with pytest.warns(UserWarning, match="rescaled to the mass of a"):
        prob = otsolve.LinearProblem(C, a, b, epsilon=0.05)
    assert prob.b.sum() == pytest.approx(1.0, rel=1e-15)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        res = otsolve.Sinkhorn(tol=1e-9)(prob)
    assert res.converged and res.marginal_error <= 1e-9
    np.testing.assert_allclose(res.plan.sum(0), b / (1 + gap), atol=1e-9)


def test_rounding_level_mass_gap_is_matched_silently(rng):
    a, b = rng.random(37) + 0.1, rng.random(23) + 0.1
    a, b = a / a.sum(), b / b.sum()  # sums equal up to rounding
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prob = otsolve.LinearProblem(rng.random((37, 23)), a, b, epsilon=0.1)
    assert abs(prob.b.sum() - prob.a.sum()) <= 1e-15


@pytest.mark.parametrize("dtype, gap", [(np.float64, 2e-6), (np.float32, 2e-4)])
def test_mass_gap_above_rtol_is_refused(dtype, gap):
    a = np.full(10, 0.1, dtype=dtype)
    b = (np.full(8, 1 / 8) * (1 + gap)).astype(dtype)
    with pytest.raises(ValueError, match="different total masses"):
        otsolve.LinearProblem(np.ones((10, 8), dtype=dtype), a, b)


def test_check_same_mass_keeps_dtype():
    a = np.full(4, 0.25, dtype=np.float32)
    b = np.full(5, 0.2 * (1 + 5e-5), dtype=np.float32)
    with pytest.warns(UserWarning):
        out = check_same_mass(a, b)
    assert out.dtype == np.float32 and out.sum() == pytest.approx(1.0, rel=1e-6)


def test_check_same_mass_on_batches():
    """Batches (B, n), (B, m) are matched per problem; the refusal names the problem."""
    a, b = np.full((3, 4), 0.25), np.full((3, 5), 0.2)
    b[1] *= 1 + 1e-7
    with pytest.warns(UserWarning, match="rescaled"):
        out = check_same_mass(a, b)
    np.testing.assert_allclose(out.sum(-1), 1.0, rtol=1e-15)
    np.testing.assert_array_equal(out[0], b[0])
    b[2] *= 1 + 1e-3
    with pytest.raises(ValueError, match="in problem 2"):
        check_same_mass(a, b)


# ------------------------------------------------------------------------------- thread counts
def test_n_threads_is_capped_at_the_machine_cores():
    cores = machine_cores()
    with pytest.warns(RuntimeWarning, match="exceeds"):
        assert check_n_threads(4096) == cores
    assert check_n_threads(0) == 0 and check_n_threads(1) == 1


@pytest.mark.parametrize("bad", [-1, 1.5, "4", True, None])
def test_bad_n_threads_is_refused(bad):
    with pytest.raises(ValueError, match="n_threads"):
        check_n_threads(bad)


def test_compiled_kernel_caps_thread_counts(rng):
    """The C++ entry points cap n_threads at the processors themselves (4096 OpenMP threads
    used to turn a 1-s solve into a minute): same answer as one thread."""
    from otsolve.kernels import HAVE_COMPILED, get_sinkhorn_kernels

    if not HAVE_COMPILED:
        pytest.skip("compiled kernels not built")
    K = get_sinkhorn_kernels(True)
    C = rng.random((200, 150))
    la, lb = np.full(200, -np.log(200)), np.full(150, -np.log(150))
    out = []
    for nt in (1, 4096):
        f, g = np.zeros(200), np.zeros(150)
        it, status, _ = K.sinkhorn_dense(C, la, lb, f, g, 0.05, 10_000, 1e-10, nt, 1.0)
        out.append((it, status, f.copy()))
    assert out[0][1] == out[1][1] == 0
    assert abs(out[0][0] - out[1][0]) <= 1
    np.testing.assert_allclose(out[1][2], out[0][2], atol=1e-9)


# ------------------------------------------------------------------------------------ Ctrl-C
_LONG_SOLVE = textwrap.dedent("""
    import signal, sys
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even if the parent ignores SIGINT
    import numpy as np, otsolve
    C = np.random.default_rng(0).random((500, 500))
    prob = otsolve.LinearProblem(C, epsilon=1e-4)
    solver = otsolve.Sinkhorn(tol=1e-300, max_iter=10**9, mode=sys.argv[1], omega=1.0, warn=False)
    print("go", flush=True)
    solver(prob)
    print("finished", flush=True)
""")


@pytest.mark.parametrize("mode", ["log", "scaling"])
def test_ctrl_c_interrupts_a_long_compiled_solve(tmp_path, mode):
    """SIGINT during a compiled solve that would run for hours ends it within seconds with
    KeyboardInterrupt (the loops poll Python's signal handlers every 0.25 s)."""
    from otsolve.kernels import HAVE_COMPILED

    if not HAVE_COMPILED:
        pytest.skip("compiled kernels not built")
    script = tmp_path / "long_solve.py"
    script.write_text(_LONG_SOLVE)
    proc = subprocess.Popen([sys.executable, str(script), mode], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "go"
        time.sleep(1.0)  # inside the compiled loop by now
        assert proc.poll() is None
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail("the compiled solve ignored SIGINT for 15 s")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0 and "finished" not in out
    assert "KeyboardInterrupt" in err


# ------------------------------------------------------------------------ geometry / costs
@pytest.mark.parametrize("cost", ["sqeuclidean", "euclidean", "half_sqeuclidean"])
def test_pointcloud_whose_squared_distances_overflow_is_refused(cost):
    x = np.array([[1e200, 0.0], [0.0, 1.0]])
    with pytest.raises(ValueError, match="overflow float64"):
        otsolve.PointCloud(x, cost=cost)


def test_pointcloud_overflow_float32_and_scale():
    with pytest.raises(ValueError, match="overflow float32"):
        otsolve.PointCloud(np.array([[1e20, 0.0], [0.0, 1.0]], dtype=np.float32))
    with pytest.raises(ValueError, match="overflow"):
        otsolve.PointCloud(np.array([[1e100, 0.0], [0.0, 1.0]]), scale_cost=1e300)
    # no squares: large but finite cityblock costs are fine, and so are 1e100 coordinates
    otsolve.PointCloud(np.array([[1e200, 0.0], [0.0, 1.0]]), cost="cityblock")
    pc = otsolve.PointCloud(np.array([[1e100, 0.0], [0.0, 1.0]]))
    assert np.isfinite(pc.cost_matrix).all()


def test_pointcloud_far_from_origin_in_high_dimension_is_refused():
    """d > 4 blocks expand |x|^2 + |y|^2 - 2 x.y: the norms must not overflow either."""
    x = 1e160 + np.arange(12.0).reshape(2, 6)
    with pytest.raises(ValueError, match="overflow"):
        otsolve.PointCloud(x)


def test_cost_overflow_check_on_batches(rng):
    """The check bounds each problem of a batch (B, n, d) on its own (for batched problems and
    the torch layer)."""
    from otsolve._validation import check_cost_overflow

    x = rng.random((3, 5, 2))
    check_cost_overflow(x, x, "sqeuclidean")
    x[1, 0, 0] = 1e200
    with pytest.raises(ValueError, match="overflow"):
        check_cost_overflow(x, x, "sqeuclidean")
    check_cost_overflow(x, x, "cityblock")


def test_callable_cost_of_wrong_shape_or_non_finite_is_refused(rng):
    x, y = rng.random((10, 2)), rng.random((7, 2))
    bad = otsolve.PointCloud(x, y, cost=lambda xb, yb: np.zeros((3, 3)))
    with pytest.raises(ValueError, match=r"returned shape \(3, 3\).*\(10, 7\)"):
        otsolve.solve(None, None, bad, epsilon=0.1)
    transposed = otsolve.PointCloud(x, y, cost=lambda xb, yb: ((xb[:, None] - yb[None]) ** 2).sum(-1).T)
    with pytest.raises(ValueError, match="returned shape"):
        _ = transposed.cost_matrix
    nan = otsolve.PointCloud(x, y, cost=lambda xb, yb: np.full((xb.shape[0], yb.shape[0]), np.nan))
    with pytest.raises(ValueError, match="non-finite"):
        otsolve.solve(None, None, nan, epsilon=0.1)
    good = otsolve.PointCloud(x, y, cost=lambda xb, yb: ((xb[:, None] - yb[None]) ** 2).sum(-1))
    ref = otsolve.solve(None, None, otsolve.PointCloud(x, y), epsilon=0.1)
    assert otsolve.solve(None, None, good, epsilon=0.1).cost == pytest.approx(ref.cost, rel=1e-10)


# --------------------------------------------------------------------------------- torch
@pytest.mark.parametrize("kw, match", [({"max_iter": -1}, "max_iter"), ({"tol": float("nan")}, "tol"),
                                       ({"tol": 0.0}, "tol"), ({"tol": -1e-9}, "tol"),
                                       ({"max_iter": 2.5}, "max_iter"), ({"n_threads": -2}, "n_threads")])
def test_torch_settings_are_validated(kw, match):
    torch = pytest.importorskip("torch")
    import otsolve.torch as ott

    C = torch.rand(5, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=match):
        ott.sinkhorn(None, None, C, 0.1, **kw)
    with pytest.raises(ValueError, match=match):
        ott.sinkhorn_divergence(torch.rand(5, 2), torch.rand(4, 2), 0.1, **kw)
    with pytest.raises(ValueError, match=match):
        ott.SinkhornLoss(0.1, **kw)


@pytest.mark.parametrize("grad", ["envelope", "implicit"])
def test_sinkhorn_loss_warm_start_survives_batch_and_cloud_size_changes(grad):
    torch = pytest.importorskip("torch")
    import otsolve.torch as ott

    gen = torch.Generator().manual_seed(0)

    def cloud(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64)

    loss = ott.SinkhornLoss(0.1, grad=grad, warm_start=True)
    x, y = cloud(4, 30, 2), cloud(4, 20, 2)
    loss(x, y)
    for x2, y2 in [(cloud(4, 30, 2), cloud(4, 25, 2)),   # target cloud size changes
                   (cloud(3, 30, 2), cloud(3, 25, 2)),   # batch size changes
                   (cloud(30, 2), cloud(25, 2)),         # unbatched
                   (cloud(30, 2), cloud(26, 2))]:
        x2.requires_grad_(True)
        v = loss(x2, y2)
        cold = ott.SinkhornLoss(0.1, grad=grad)(x2.detach(), y2)
        torch.testing.assert_close(v.detach(), cold, rtol=1e-6, atol=1e-9)
        v.sum().backward()
        assert torch.isfinite(x2.grad).all()
    # same shapes: the previous potentials are used (the same problem again starts at its solution)
    x3, y3 = cloud(30, 2), cloud(26, 2)
    loss(x3, y3)
    loss(x3, y3)
    again = int(loss.last_outputs["xy"].n_iter)
    cold = int(ott.sinkhorn_divergence(x3, y3, 0.1, return_outputs=True)[1]["xy"].n_iter)
    assert again < cold


# ------------------------------------------------------------------------------- LightSB
def _fitted_lightsb(tmp_path):
    r = np.random.default_rng(0)
    x0, x1 = r.normal(size=(300, 2)), r.normal(size=(300, 2)) + 2
    sb = otsolve.LightSB(2, 3, 0.5).fit(x0, x1, n_steps=20, progress=False, rng=0)
    path = tmp_path / "sb.npz"
    sb.save(path)
    return sb, path


@pytest.mark.parametrize("key, value", [("r", np.nan), ("ell", np.inf), ("s", -np.inf)])
def test_lightsb_load_refuses_non_finite_parameters(tmp_path, key, value):
    _, path = _fitted_lightsb(tmp_path)
    d = dict(np.load(path))
    d[key] = d[key].copy()
    d[key].flat[0] = value
    bad = tmp_path / "bad.npz"
    np.savez(bad, **d)
    with pytest.raises(ValueError, match=f"parameter '{key}' contains 1 non-finite"):
        otsolve.LightSB.load(bad)


def test_lightsb_load_refuses_wrong_shapes_and_missing_keys(tmp_path):
    _, path = _fitted_lightsb(tmp_path)
    d = dict(np.load(path))
    np.savez(tmp_path / "shape.npz", **{**d, "r": d["r"][:2]})
    with pytest.raises(ValueError, match="parameter 'r' has shape"):
        otsolve.LightSB.load(tmp_path / "shape.npz")
    np.savez(tmp_path / "missing.npz", **{k: v for k, v in d.items() if k != "ell"})
    with pytest.raises(ValueError, match="not a LightSB file"):
        otsolve.LightSB.load(tmp_path / "missing.npz")


def test_lightsb_rng_name_and_deprecated_seed(tmp_path):
    sb, path = _fitted_lightsb(tmp_path)
    x = np.zeros((4, 2))
    a = sb.sample(x, rng=3)
    with pytest.warns(DeprecationWarning, match="seed= is deprecated.*rng="):
        b = sb.sample(x, seed=3)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sb.sample(x, rng=np.random.default_rng(3)), a)
    with pytest.raises(ValueError, match="rng"):
        sb.sample(x, rng=3, seed=3)
    with pytest.raises(ValueError, match="rng"):
        sb.sample(x, rng="three")
    with pytest.warns(DeprecationWarning):
        sb.sample_path(x, n_steps=2, seed=1)
    with pytest.warns(DeprecationWarning):
        sb.sample_at_time(x, 0.5, seed=1)
    r = np.random.default_rng(0)
    x0, x1 = r.normal(size=(100, 2)), r.normal(size=(100, 2))
    m1 = otsolve.LightSB(2, 3, 0.5).fit(x0, x1, n_steps=5, progress=False, rng=7)
    with pytest.warns(DeprecationWarning):
        m2 = otsolve.LightSB(2, 3, 0.5).fit(x0, x1, n_steps=5, progress=False, seed=7)
    np.testing.assert_array_equal(m1.r, m2.r)


def test_benchmark_and_metric_take_rng():
    from otsolve.benchmarks import eot_mixture
    from otsolve.metrics import cbw2_uvp

    a = eot_mixture(2, 1.0, rng=4, n_test=5)
    with pytest.warns(DeprecationWarning):
        b = eot_mixture(2, 1.0, seed=4, n_test=5)
    np.testing.assert_array_equal(a.test_inputs, b.test_inputs)
    c = eot_mixture(2, 1.0, rng=np.random.default_rng(1), n_test=5)
    assert isinstance(c.seed, int)
    with pytest.raises(ValueError, match="rng"):
        eot_mixture(2, 1.0, rng=-1)

    class Truth:
        def sample(self, x, n, rng=None):
            return a.sample_conditional(x, n=n, rng=rng)

    class OldProtocol:
        def sample(self, x, n, seed=None):
            return a.sample_conditional(x, n=n, rng=seed)

    v = cbw2_uvp(Truth(), a, n_samples=50, rng=1)
    with pytest.warns(DeprecationWarning, match="rng"):
        assert cbw2_uvp(OldProtocol(), a, n_samples=50, rng=1) == v


def test_as_rng():
    g = np.random.default_rng(1)
    assert as_rng(g) is g
    assert as_rng(5).random() == np.random.default_rng(5).random()
    for bad in ("x", 1.5, True, -3):
        with pytest.raises(ValueError, match="rng"):
            as_rng(bad)


# ----------------------------------------------------------------------- routing / lr names
def test_route_refuses_absurd_lr_and_warns_when_adam_diverges():
    scores = np.random.default_rng(0).normal(size=(2, 64, 8))
    with pytest.raises(ValueError, match="lr=1e\\+300 is far larger"):
        otsolve.route(scores, capacity=12, lr=1e300)
    for bad in (0.0, -1e-2, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lr"):
            otsolve.route(scores, capacity=12, lr=bad)
    with pytest.warns(RuntimeWarning, match="diverged.*tokens dropped.*lower lr"):
        r = otsolve.route(scores, capacity=12, lr=2.0)
    assert (r.token_load == 0).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = otsolve.route(scores, capacity=12)
    assert (r.token_load > 0).all()


def test_learning_rate_is_a_deprecated_alias_of_lr():
    scores = np.random.default_rng(1).normal(size=(2, 32, 4))
    new = otsolve.route(scores, capacity=8, lr=5e-2)
    with pytest.warns(DeprecationWarning, match="learning_rate= is deprecated.*lr="):
        old = otsolve.route(scores, capacity=8, learning_rate=5e-2)
    np.testing.assert_array_equal(new.plan, old.plan)
    with pytest.warns(DeprecationWarning):
        solver = SparsityConstrainedOT(k=2, gamma=1.0, optimizer="adam", learning_rate=0.05)
    assert solver.lr == 0.05 and solver == SparsityConstrainedOT(k=2, gamma=1.0, optimizer="adam", lr=0.05)


def test_torch_route_lr_alias():
    torch = pytest.importorskip("torch")
    import otsolve.torch as ott

    s = torch.randn(2, 32, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    new = ott.route(s, 8, lr=5e-2)
    with pytest.warns(DeprecationWarning):
        old = ott.route(s, 8, learning_rate=5e-2)
    torch.testing.assert_close(new.plan, old.plan)
    with pytest.raises(ValueError, match="lr"):
        ott.route(s, 8, lr=1e300)


def test_scot_adam_divergence_is_reported(rng):
    C = rng.random((20, 15))
    with pytest.warns(RuntimeWarning, match="diverged"):
        res = SparsityConstrainedOT(k=3, gamma=1.0, optimizer="adam", lr=5.0, max_iter=100)(
            otsolve.LinearProblem(C))
    assert res.status == "diverged" and not res.converged
    with pytest.raises(ValueError, match="far larger"):
        SparsityConstrainedOT(k=3, gamma=1.0, optimizer="adam", lr=1e300)(otsolve.LinearProblem(C))


# ------------------------------------------------------------------------------ memory
def test_scot_refuses_a_cost_that_cannot_fit_before_allocating(monkeypatch):
    """30,000 points: the dense cost and its transposed copy need ~13.4 GiB; refused with the
    figures before anything of that size is allocated (the cost is never materialised)."""
    x = np.random.default_rng(0).random((30_000, 2))
    pc = otsolve.PointCloud(x)
    monkeypatch.setattr(_validation, "available_memory", lambda: 2 * 2**30)
    monkeypatch.setattr(type(pc), "cost_rows", lambda *a, **k: pytest.fail("cost materialised"))
    with pytest.raises(InsufficientMemoryError, match=r"30000 x 30000.*needs 13\.4 GiB.*only 2 GiB"):
        SparsityConstrainedOT(k=3, gamma=1.0)(otsolve.LinearProblem(pc))


def test_scot_memory_refusal_is_a_memory_and_value_error():
    x = np.random.default_rng(0).random((2_000_000, 1))  # 2e6 x 2e6: 64 TB, nowhere available
    with pytest.raises(MemoryError, match="TiB|GiB"):
        otsolve.solve(None, None, otsolve.PointCloud(x), method="sparsity_constrained", k=2, gamma=1.0)
    with pytest.raises(ValueError):
        otsolve.solve(None, None, otsolve.PointCloud(x), method="sparsity_constrained", k=2, gamma=1.0)
