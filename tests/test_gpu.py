"""GPU tests: every CUDA kernel and GPU solver against the CPU result on random inputs.

Skipped unless CuPy sees a CUDA device.
"""
from __future__ import annotations

import numpy as np
import pytest

import otsolve

cp = pytest.importorskip("cupy")
try:
    _HAVE_GPU = cp.cuda.runtime.getDeviceCount() > 0
except Exception:  # no driver
    _HAVE_GPU = False
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _HAVE_GPU, reason="no CUDA device")]

from otsolve.backends import BatchedLinearProblem, BatchedSinkhorn  # noqa: E402
from otsolve.backends.cupy_sinkhorn import CudaGeometry, CudaSinkhornEngine  # noqa: E402


def _plan(C, f, g, eps):
    return np.exp((f[:, None] + g[None, :] - C) / eps - 1)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["dense", "pointcloud", "euclidean"])
def test_passes_match_numpy(rng, dtype, kind):
    n, m, d, eps = 37, 45, 3, 0.2
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
    x = cp.asarray(rng.random((120, 2)))
    prob = otsolve.LinearProblem(otsolve.PointCloud(x, x[::-1] * 0.5), epsilon=1e-3)
    res = otsolve.Sinkhorn(tol=1e-8, epsilon_scaling=True)(prob)
    assert res.converged and len(res.epsilon_schedule) > 3
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
    xp_gpu = BatchedSinkhorn(tol=tol, use_kernels=False)(BatchedLinearProblem(cp.asarray(C), epsilon=0.1))
    assert gpu.converged and xp_gpu.converged
    atol = 1e-9 if dtype == np.float64 else 5e-6
    np.testing.assert_allclose(gpu.plan.get(), cpu.plan, atol=atol)
    np.testing.assert_allclose(xp_gpu.plan.get(), cpu.plan, atol=atol)
    assert gpu.n_iter_each[3] > gpu.n_iter_each[0]


def test_topk_and_hessian_matvec(rng):
    from otsolve.backends.cupy_sns import hessian_matvec, sparsified_hessian

    n, m, k, eps = 50, 70, 10, 0.05
    C = rng.random((n, m))
    f, g = rng.normal(size=n) * 0.01, rng.normal(size=m) * 0.01
    P = _plan(C, f, g, eps)
    geo = CudaGeometry(C=cp.asarray(C)[None])
    indptr, idx, data = sparsified_hessian(geo, cp.asarray(f), cp.asarray(g), eps, k)
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
