"""GPU tests: every CUDA kernel and GPU solver against the CPU result on random inputs.

On a machine where CuPy sees a CUDA device they run on it. Elsewhere they run on the CPU CUDA
emulator (``tests/cuda_emulator``: the same .cu sources compiled by g++, threads as
fibers, NumPy-backed CuPy), which checks logic, synchronisation and the host/device interface but
not speed. ``OTSOLVE_CUDA_EMULATOR=1`` forces the emulator even where a GPU is present.
"""
from __future__ import annotations


import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import otsolve
import cuda_emulator

EMULATED, cp = cuda_emulator.gpu_test_module()
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cupy_backend")]

from otsolve.backends import BatchedLinearProblem, BatchedSinkhorn  # noqa: E402
from otsolve.backends.cupy_sinkhorn import CudaGeometry, CudaSinkhornEngine  # noqa: E402


def _plan(C, f, g, eps):
    return np.exp((f[:, None] + g[None, :] - C) / eps - 1)


# (n, m, d): partial warps and blocks, single rows / columns, d above the kernel's register path (4)
SHAPES = [(37, 45, 3), (1, 70, 6), (65, 1, 2), (200, 33, 5)]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["dense", "pointcloud", "euclidean"])
@pytest.mark.parametrize("n, m, d", SHAPES)
def test_passes_match_numpy(rng, dtype, kind, n, m, d):
    _check_passes(rng, dtype, kind, n, m, d)


@settings(max_examples=20, deadline=None)
@given(n=st.integers(1, 70), m=st.integers(1, 70), d=st.integers(1, 6),
       kind=st.sampled_from(["dense", "pointcloud", "euclidean"]), f32=st.booleans(), seed=st.integers(0, 2**31))
def test_property_passes_match_numpy(n, m, d, kind, f32, seed):
    _check_passes(np.random.default_rng(seed), np.float32 if f32 else np.float64, kind, n, m, d)


def _check_passes(rng, dtype, kind, n, m, d):
    """Marginals, <C, P> and one update pass each way of the CUDA kernels against NumPy."""
    eps = 0.2
    x, y = rng.random((n, d)).astype(dtype), rng.random((m, d)).astype(dtype)
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    if kind == "euclidean":
        C = np.sqrt(C)
    geo = (CudaGeometry(C=cp.asarray(C)[None]) if kind == "dense" else
           CudaGeometry(X=cp.asarray(x)[None], Y=cp.asarray(y)[None], kind=int(kind == "euclidean")))
    eng = CudaSinkhornEngine(geo)
    f, g = rng.normal(size=n) * 0.05, rng.normal(size=m) * 0.05
    fd, gd = cp.asarray(f.astype(dtype))[None], cp.asarray(g.astype(dtype))[None]
    act = cp.zeros(1, dtype=cp.int32)
    row, col, cost = eng.plan_stats(fd, gd, eps, act)
    P = _plan(C.astype(float), f.astype(dtype).astype(float), g.astype(dtype).astype(float), eps)
    rt = 1e-10 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(row.get()[0], P.sum(1), rtol=rt)
    np.testing.assert_allclose(col.get()[0], P.sum(0), rtol=rt)
    np.testing.assert_allclose(float(cost[0]), (P * C).sum(), rtol=rt)
    # one update pass each way against the NumPy log-domain formulas
    from scipy.special import logsumexp

    log_a = cp.log(cp.full((1, n), 1 / n, dtype=dtype))
    log_b = cp.log(cp.full((1, m), 1 / m, dtype=dtype))
    err = cp.zeros(1)
    eng.row_pass(fd, gd, log_a, eps, act, 0, err_out=err)
    f_ref = eps * (np.log(1 / n) + 1 - logsumexp((g[None] - C) / eps, axis=1))
    np.testing.assert_allclose(fd.get()[0], f_ref, rtol=rt, atol=rt)
    np.testing.assert_allclose(float(err[0]), np.abs(P.sum(1) - 1 / n).sum(), rtol=1e-4)
    eng.col_pass(fd, gd, log_b, eps, act, 0)
    g_ref = eps * (np.log(1 / m) + 1 - logsumexp((fd.get()[0].astype(float)[:, None] - C) / eps, axis=0))
    np.testing.assert_allclose(gd.get()[0], g_ref, rtol=rt, atol=rt)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sinkhorn_cupy_matches_cpu(rng, dtype):
    x, y = rng.random((200, 2)).astype(dtype), rng.random((150, 2)).astype(dtype)
    a = rng.random(200).astype(dtype) + 0.1
    a /= a.sum()
    a[5] = 0
    a /= a.sum()
    tol = 1e-9 if dtype == np.float64 else 1e-5
    ref = otsolve.Sinkhorn(tol=tol)(otsolve.LinearProblem(otsolve.PointCloud(x, y), a, None, epsilon=0.02))
    for geom in (otsolve.PointCloud(cp.asarray(x), cp.asarray(y)),
                 otsolve.Geometry(otsolve.PointCloud(cp.asarray(x), cp.asarray(y)).cost_matrix)):
        res = otsolve.Sinkhorn(tol=tol)(otsolve.LinearProblem(geom, cp.asarray(a), None, epsilon=0.02))
        assert isinstance(res.f, cp.ndarray) and res.f.dtype == dtype and res.plan.dtype == dtype
        assert res.converged and res.marginal_error <= tol
        atol = 1e-9 if dtype == np.float64 else 2e-6
        np.testing.assert_allclose(res.plan.get(), ref.plan, atol=atol)
        np.testing.assert_allclose(res.cost, ref.cost, rtol=1e-6 if dtype == np.float64 else 1e-3)
        assert np.isneginf(res.f.get()[5])


def test_sinkhorn_cupy_options(rng):
    xh = rng.random((120, 2))
    x = cp.asarray(xh)
    # eps = 5e-3 on this cost (max ~2) converges in ~170 iterations with scaling; at 1e-3 it needs
    # > 20,000 on the CPU and in POT alike
    prob = otsolve.LinearProblem(otsolve.PointCloud(x, x[::-1] * 0.5), epsilon=5e-3)
    res = otsolve.Sinkhorn(tol=1e-8, epsilon_scaling=True)(prob)
    ref = otsolve.Sinkhorn(tol=1e-8, epsilon_scaling=True)(
        otsolve.LinearProblem(otsolve.PointCloud(xh, xh[::-1] * 0.5), epsilon=5e-3))
    assert res.converged and len(res.epsilon_schedule) > 3
    assert res.epsilon_schedule == pytest.approx(ref.epsilon_schedule)
    np.testing.assert_allclose(res.plan.get(), ref.plan, atol=1e-9)
    warm = otsolve.Sinkhorn(tol=1e-8)(prob, init=res)
    assert warm.converged and warm.n_iter <= 2
    with pytest.warns(RuntimeWarning):
        bad = otsolve.Sinkhorn(tol=1e-14, max_iter=3)(prob)
    assert not bad.converged and bad.status == "max_iter"


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batched_kernels_match_xp_path(rng, dtype):
    C = rng.random((16, 30, 40)).astype(dtype)
    C[3] *= 3
    tol = 1e-9 if dtype == np.float64 else 1e-5
    cpu = BatchedSinkhorn(tol=tol)(BatchedLinearProblem(C, epsilon=0.1))
    gpu = BatchedSinkhorn(tol=tol)(BatchedLinearProblem(cp.asarray(C), epsilon=0.1))
    xp_gpu = BatchedSinkhorn(tol=tol, compiled=False)(BatchedLinearProblem(cp.asarray(C), epsilon=0.1))
    assert gpu.converged and xp_gpu.converged
    atol = 1e-9 if dtype == np.float64 else 5e-6
    np.testing.assert_allclose(gpu.plan.get(), cpu.plan, atol=atol)
    np.testing.assert_allclose(xp_gpu.plan.get(), cpu.plan, atol=atol)
    assert gpu.n_iter_each[3] > gpu.n_iter_each[0]


@pytest.mark.parametrize("k, m", [(3, 70), (10, 70), (32, 70), (8, 5)])
def test_topk_and_hessian_matvec(rng, k, m):
    from otsolve.backends.sns_kernels import hessian_matvec, sparsified_hessian

    n, eps = 50, 0.05
    C = rng.random((n, m))
    f, g = rng.normal(size=n) * 0.01, rng.normal(size=m) * 0.01
    P = _plan(C, f, g, eps)
    geo = CudaGeometry(C=cp.asarray(C)[None])
    indptr, idx, data = sparsified_hessian(geo, cp.asarray(f), cp.asarray(g), eps, k)
    k = min(k, m)
    idx_h, data_h = idx.get().reshape(n, k), data.get().reshape(n, k)
    ref_idx = np.argsort(-P, axis=1)[:, :k]
    np.testing.assert_array_equal(np.sort(idx_h, 1), np.sort(ref_idx, 1))
    np.testing.assert_allclose(data_h, np.take_along_axis(P, idx_h, 1), rtol=1e-12)
    Pt = np.zeros_like(P)
    np.put_along_axis(Pt, idx_h, data_h, 1)
    r, c = P.sum(1), P.sum(0)
    zx, zy = rng.normal(size=n), rng.normal(size=m)
    yx, yy = hessian_matvec(indptr, idx, data, cp.asarray(r), cp.asarray(c), cp.asarray(zx), cp.asarray(zy), 2.0)
    np.testing.assert_allclose(yx.get(), 2 * (r * zx + Pt @ zy), rtol=1e-12)
    np.testing.assert_allclose(yy.get(), 2 * (Pt.T @ zx + c * zy), rtol=1e-12)
    # point-cloud assembly gives the same entries
    x, y = rng.random((n, 2)), rng.random((m, 2))
    Cp = ((x[:, None] - y[None]) ** 2).sum(-1)
    g1 = CudaGeometry(X=cp.asarray(x)[None], Y=cp.asarray(y)[None])
    g2 = CudaGeometry(C=cp.asarray(Cp)[None])
    a1 = sparsified_hessian(g1, cp.asarray(f), cp.asarray(g), eps, k)
    a2 = sparsified_hessian(g2, cp.asarray(f), cp.asarray(g), eps, k)
    np.testing.assert_allclose(a1[2].get(), a2[2].get(), rtol=1e-10)


def test_sns_cupy_matches_cpu(rng):
    n = 300
    C = rng.random((n, n))
    prob = otsolve.LinearProblem(C, epsilon=1 / 300)
    ref = otsolve.SinkhornNewtonSparse(tol=1e-10)(prob)
    res = otsolve.SinkhornNewtonSparse(tol=1e-10)(otsolve.LinearProblem(cp.asarray(C), epsilon=1 / 300))
    assert res.converged and isinstance(res.f, cp.ndarray)
    np.testing.assert_allclose(res.plan.get(), ref.plan, atol=1e-9)
    np.testing.assert_allclose(res.value, ref.value, rtol=1e-9, atol=1e-12)


def test_numpy_in_numpy_out(rng):
    res = otsolve.Sinkhorn()(otsolve.LinearProblem(rng.random((20, 30)), epsilon=0.1))
    assert type(res.f) is np.ndarray


@pytest.mark.parametrize("omega", [1.0, None])
def test_error_history_matches_cpu(rng, omega):
    """Same iterations on both devices: the measured errors agree step by step (the GPU may run
    a few iterations past tol between its checks)."""
    C = rng.random((60, 50))
    a = rng.random(60) + 0.2
    a /= a.sum()
    prob = otsolve.LinearProblem(C, a, None, epsilon=0.03)
    ref = otsolve.Sinkhorn(tol=1e-10, omega=omega)(prob)
    res = otsolve.Sinkhorn(tol=1e-10, omega=omega)(otsolve.LinearProblem(cp.asarray(C), cp.asarray(a), None,
                                                                         epsilon=0.03))
    assert ref.converged and res.converged
    if omega is None:
        # the GPU adapts omega at its checks (1, 2, 4, ... iterations apart), the CPU every
        # iteration: the same rule, applied later, so only the iteration counts are comparable
        assert res.n_iter <= 1.5 * ref.n_iter + 16
        return
    k = min(len(ref.errors), len(res.errors))
    assert res.n_iter >= ref.n_iter - 1 and k > 10
    np.testing.assert_allclose(np.asarray(res.errors[:k]), np.asarray(ref.errors[:k]), rtol=1e-6, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_batched_pointclouds_weights_and_budget(rng, dtype):
    B, n, m = 6, 40, 30
    x, y = rng.random((B, n, 2)).astype(dtype), rng.random((B, m, 2)).astype(dtype)
    a = rng.random((B, n)).astype(dtype) + 0.1
    a[:, 3] = 0
    a /= a.sum(1, keepdims=True)
    tol = 1e-9 if dtype == np.float64 else 2e-5
    kw = dict(epsilon=0.05, cost_fn="euclidean")
    cpu = BatchedSinkhorn(tol=tol)(BatchedLinearProblem(a=a, x=x, y=y, **kw))
    gpu = BatchedSinkhorn(tol=tol)(BatchedLinearProblem(a=cp.asarray(a), x=cp.asarray(x), y=cp.asarray(y), **kw))
    assert cpu.converged and gpu.converged and isinstance(gpu.f, cp.ndarray)
    np.testing.assert_allclose(gpu.plan.get(), cpu.plan, atol=1e-9 if dtype == np.float64 else 5e-6)
    assert np.isneginf(gpu.f.get()[:, 3]).all()
    # a budget too small for some problems: per-problem status, a warning, no exception
    few = int(np.sort(cpu.n_iter_each)[B // 2])
    with pytest.warns(RuntimeWarning, match="did not reach tol"):
        part = BatchedSinkhorn(tol=tol, max_iter=few)(
            BatchedLinearProblem(a=cp.asarray(a), x=cp.asarray(x), y=cp.asarray(y), **kw))
    assert 0 < part.converged_each.sum() < B and set(part.status_each) <= {"converged", "max_iter"}


def test_sns_float32_and_zero_weights(rng):
    n = 120
    C = rng.random((n, n)).astype(np.float32)
    a = np.full(n, 1.0 / (n - 2), dtype=np.float32)
    a[[4, 50]] = 0
    prob = otsolve.LinearProblem(C, a, None, epsilon=0.02)
    ref = otsolve.SinkhornNewtonSparse(tol=1e-5)(prob)
    res = otsolve.SinkhornNewtonSparse(tol=1e-5)(otsolve.LinearProblem(cp.asarray(C), cp.asarray(a), None,
                                                                       epsilon=0.02))
    assert ref.converged and res.converged and res.f.dtype == np.float32
    assert np.isneginf(res.f.get()[[4, 50]]).all()
    np.testing.assert_allclose(res.plan.get(), ref.plan, atol=2e-6)


def test_problem_on_device_properties(rng):
    prob = otsolve.LinearProblem(cp.asarray(rng.random((10, 12))), epsilon=0.1)
    assert prob.is_uniform and prob.shape == (10, 12)
    w = cp.asarray(rng.random(10) + 0.5)
    assert not otsolve.LinearProblem(cp.asarray(rng.random((10, 12))), w / w.sum(), None, epsilon=0.1).is_uniform


def test_sns_near_permutation_uses_the_direct_fallback():
    rng = np.random.default_rng(3)
    C = rng.random((120, 120))
    ref = otsolve.SinkhornNewtonSparse(tol=1e-9)(otsolve.LinearProblem(C, epsilon=1 / 1200))
    res = otsolve.SinkhornNewtonSparse(tol=1e-9)(otsolve.LinearProblem(cp.asarray(C), epsilon=1 / 1200))
    assert ref.converged and res.converged and res.direct_solves >= 1
    np.testing.assert_allclose(res.plan.get(), ref.plan, atol=1e-8)


def test_large_batches_are_launched_in_slices(rng, monkeypatch):
    """Batches above CUDA's grid.y / grid.z limit are launched in slices of the active ids;
    a limit of 3 exercises the slicing on 7 and 8 problems."""
    import otsolve.backends.cupy_sinkhorn as cs

    monkeypatch.setattr(cs, "_MAX_GRID_YZ", 3)
    C = rng.random((8, 20, 25))
    C[5] *= 4  # a slower problem: the active list shrinks to a partial slice
    x, y = rng.random((7, 15, 2)), rng.random((7, 18, 2))
    for kw in (dict(cost=C), dict(x=x, y=y)):
        cpu = BatchedSinkhorn(tol=1e-9)(BatchedLinearProblem(epsilon=0.1, **kw))
        gpu = BatchedSinkhorn(tol=1e-9)(BatchedLinearProblem(epsilon=0.1, **{k: cp.asarray(v) for k, v in kw.items()}))
        assert cpu.converged and gpu.converged
        np.testing.assert_allclose(gpu.plan.get(), cpu.plan, atol=1e-9)


def test_sparsity_constrained_cupy_in_cupy_out(rng):
    C = rng.random((30, 40))
    a, b = np.full(30, 1 / 30), np.full(40, 1 / 40)
    solver = otsolve.SparsityConstrainedOT(k=3, gamma=10.0)
    ref = solver(otsolve.LinearProblem(C, a, b))
    res = solver(otsolve.LinearProblem(cp.asarray(C), cp.asarray(a), cp.asarray(b)))
    assert isinstance(res.f, cp.ndarray) and isinstance(res.plan, cp.ndarray)
    import cupyx.scipy.sparse as cusp

    assert cusp.issparse(res.plan_sparse) and res.backend.startswith("cupy")
    np.testing.assert_allclose(res.plan.get(), ref.plan, atol=1e-12)
    np.testing.assert_allclose(res.plan_sparse.toarray().get(), ref.plan, atol=1e-12)
    assert res.value == pytest.approx(ref.value, rel=1e-12)


def test_pot_compatible_functions_on_cupy(rng):
    C = rng.random((25, 35))
    a = rng.random(25) + 0.1
    a /= a.sum()
    P, log = otsolve.sinkhorn(a, [], C, 0.05, log=True)
    Pd, logd = otsolve.sinkhorn(cp.asarray(a), [], cp.asarray(C), 0.05, log=True)
    assert isinstance(Pd, cp.ndarray) and isinstance(logd["u"], cp.ndarray)
    np.testing.assert_allclose(Pd.get(), P, atol=1e-10)
    np.testing.assert_allclose(logd["log_u"].get(), log["log_u"], atol=1e-8)
    cost = otsolve.sinkhorn2(cp.asarray(a), cp.asarray(np.full(35, 1 / 35)), cp.asarray(C), 0.05)
    assert isinstance(cost, cp.ndarray) and cost.ndim == 0
    assert float(cost) == pytest.approx(otsolve.sinkhorn2(a, None, C, 0.05), rel=1e-9)
    with pytest.raises(ValueError, match="mixed NumPy and CuPy"):
        otsolve.sinkhorn(a, [], cp.asarray(C), 0.05)


def test_route_cupy_in_cupy_out(rng):
    logits = rng.normal(size=(2, 48, 6))
    ref = otsolve.route(logits, capacity=10)
    res = otsolve.route(cp.asarray(logits), capacity=10)
    assert isinstance(res.combine, cp.ndarray) and isinstance(res.expert_load, cp.ndarray)
    np.testing.assert_allclose(res.plan.get(), ref.plan, atol=1e-12)
    np.testing.assert_array_equal(res.dispatch.get(), ref.dispatch)


def test_lightsb_on_cupy(rng, tmp_path):
    """LightSB's xp-generic code on CuPy arrays: fit, sample, drift; a fitted model moved to the
    device gives the CPU model's potentials and drift."""
    x = rng.normal(size=(300, 2))
    y = rng.normal(size=(300, 2)) + 2.0
    m = otsolve.LightSB(2, n_components=4, epsilon=0.1)
    m.fit(cp.asarray(x), cp.asarray(y), n_steps=30, progress=False, seed=0)
    s = m.sample(cp.asarray(x[:5]), seed=0)
    assert isinstance(s, cp.ndarray) and s.shape == (5, 2) and bool(cp.isfinite(s).all())
    m.save(tmp_path / "m.npz")
    cpu = otsolve.LightSB.load(tmp_path / "m.npz")
    gpu = otsolve.LightSB.load(tmp_path / "m.npz", xp=cp)
    np.testing.assert_allclose(gpu.log_potential(cp.asarray(y[:7])).get(), cpu.log_potential(y[:7]), rtol=1e-10)
    np.testing.assert_allclose(gpu.drift(cp.asarray(x[:7]), 0.3).get(), cpu.drift(x[:7], 0.3), rtol=1e-10)


def test_krylov_solvers_reject_device_arrays_clearly(rng):
    from otsolve.krylov import gcrodr, rcg

    A = np.eye(20) * 4 + rng.random((20, 20)) * 0.1
    b = rng.random(20)
    for solver in (gcrodr, rcg):
        with pytest.raises(ValueError, match="CuPy array: otsolve's Krylov solvers run on the CPU"):
            solver(cp.asarray(A), b)
        with pytest.raises(ValueError, match="b is a CuPy array"):
            solver(A, cp.asarray(b))
