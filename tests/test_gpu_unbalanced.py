"""Unbalanced OT (KL-relaxed marginals) on the GPU kernel set: the CUDA passes against the NumPy
reference sweeps (:mod:`otsolve.kernels.reference`), converged plans against POT, and the
driver's GPU solves against its CPU solves.

Unbalanced problems take the translation-invariant step after each update (as the reference),
so the iterates are compared with the reference's after the same number of updates.

Runs on a CUDA device when CuPy sees one, else on the CPU CUDA emulator (``tests/cuda_emulator``),
like ``tests/test_gpu.py``.
"""
from __future__ import annotations

import inspect
import math

import numpy as np
import ot
import pytest

import otsolve
from otsolve.kernels import reference as ref
from otsolve.problems import marginals
import cuda_emulator

EMULATED, cp = cuda_emulator.gpu_test_module()
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cupy_backend")]


from otsolve.backends.cupy_sinkhorn import CudaKernels  # noqa: E402
from otsolve.backends.kernel_sets import ProblemBatch  # noqa: E402

CORE_HAS_RHO = "rho_a" in inspect.signature(otsolve.LinearProblem).parameters
INF = math.inf
# (rho_a, rho_b): balanced, both relaxed, semi-relaxed either way
RHOS = [(INF, INF), (0.5, 2.0), (INF, 0.3), (0.2, INF)]


def _data(rng, n, m, d, dtype, zero_weights, unequal):
    x, y = rng.random((n, d)), rng.random((m, d)) + 0.3
    a, b = rng.uniform(0.5, 1.5, n), rng.uniform(0.5, 1.5, m)
    if zero_weights:
        a[[1, n - 2]] = 0
        b[m // 2] = 0
    a, b = a / a.sum(), b / b.sum() * (1.4 if unequal else 1.0)
    return x.astype(dtype), y.astype(dtype), a.astype(dtype), b.astype(dtype)


def _batch(kind, x, y, a, b, rho_a, rho_b, symmetric=False):
    """A ProblemBatch (B = 1) of CuPy arrays as the driver builds them; the marginal strengths are
    set as attributes so that this also exercises CudaKernels' defaults before the core has them."""
    dtype = x.dtype
    if kind == "dense":
        C = ((x[:, None] - y[None]) ** 2).sum(-1)
        stacked = ("dense", cp.asarray(C)[None])
    else:
        stacked = ("pointcloud", cp.asarray(x)[None], cp.asarray(y)[None], 0, 1.0)
    bt = ProblemBatch(None, cp.asarray(a)[None], cp.asarray(b)[None], 1, len(x), len(y), np.dtype(dtype), cp,
                      stacked, symmetric)
    bt.rho_a, bt.rho_b = rho_a, rho_b
    return bt


def _cost64(x, y):
    return ref.pointcloud_cost(x.astype(np.float64), y.astype(np.float64).T, 0, 1.0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["dense", "pointcloud"])
@pytest.mark.parametrize("rho_a, rho_b", RHOS)
@pytest.mark.parametrize("omega", [1.0, 1.5])
def test_iterations_match_numpy_reference(rng, dtype, kind, rho_a, rho_b, omega):
    """k Sinkhorn updates on the GPU give the reference's potentials and error history (plain and
    over-relaxed, so both error paths of the column pass are checked), with zero weights and,
    when a side is relaxed, unequal masses."""
    n, m, d, eps, k = 37, 45, 3, 0.1, 12
    unb = not (math.isinf(rho_a) and math.isinf(rho_b))
    x, y, a, b = _data(rng, n, m, d, dtype, zero_weights=True, unequal=unb)
    bt = _batch(kind, x, y, a, b, rho_a, rho_b)
    ks = CudaKernels(bt)
    f0, g0 = rng.normal(size=n) * 0.02, rng.normal(size=m) * 0.02
    f, g = cp.asarray(f0.astype(dtype))[None], cp.asarray(g0.astype(dtype))[None]
    its, sts, errs = ks.iterate([0], f, g, eps, [k], 0.0, omega)
    assert int(its[0]) == k and int(sts[0]) == 1 and len(errs[0]) == k
    fr, gr = f0.astype(dtype).astype(np.float64), g0.astype(dtype).astype(np.float64)
    with np.errstate(divide="ignore"):
        la, lb = np.log(a.astype(np.float64)), np.log(b.astype(np.float64))
    C = _cost64(x, y)
    it, st, err_ref = ref.sinkhorn_dense(C, la, lb, fr, gr, eps, k, 0.0, 0, omega, rho_a, rho_b)
    assert it == k
    fg, gg = f.get()[0].astype(np.float64), g.get()[0].astype(np.float64)
    np.testing.assert_array_equal(np.isneginf(fg), a == 0)
    np.testing.assert_array_equal(np.isneginf(gg), b == 0)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(fg[a > 0], fr[a > 0], **tol)
    np.testing.assert_allclose(gg[b > 0], gr[b > 0], **tol)
    etol = dict(rtol=1e-8, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-3, atol=2e-6)
    np.testing.assert_allclose(errs[0], err_ref, **etol)
    # the errors are the unbalanced ones (to the targets): the step-k error differs from the
    # balanced one whenever a side is relaxed
    if unb:
        P = np.exp((fr[:, None] + gr[None] - C) / eps - 1)
        bal = np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum()
        assert abs(bal - marginals.marginal_residual(P.sum(1), P.sum(0), fr, gr, a.astype(float), b.astype(float),
                                                     eps, rho_a, rho_b)) > 1e-4


@pytest.mark.parametrize("kind", ["dense", "pointcloud"])
@pytest.mark.parametrize("rho_b", [1e3, INF])
def test_translation_step_keeps_large_rho_fast(rng, kind, rho_b):
    """rho = 1e3 at eps = 0.1: without the translation-invariant step the mass mode needs ~10^5
    iterations to 1e-10; with it each problem of a batch of two (one with zero weights) converges
    in < 1000, and its iterate and error history are the NumPy reference's."""
    B, n, m, eps, tol, rho_a = 2, 12, 10, 0.1, 1e-10, 1e3
    data = [_data(rng, n, m, 2, np.float64, zero_weights=(p == 1), unequal=True) for p in range(B)]
    xs, ys, As, Bs = (np.stack(v) for v in zip(*data))
    if kind == "dense":
        stacked = ("dense", cp.asarray(((xs[:, :, None] - ys[:, None]) ** 2).sum(-1)))
    else:
        stacked = ("pointcloud", cp.asarray(xs), cp.asarray(ys), 0, 1.0)
    bt = ProblemBatch(None, cp.asarray(As), cp.asarray(Bs), B, n, m, np.dtype(np.float64), cp, stacked, False,
                      rho_a, rho_b)
    ks = CudaKernels(bt)
    f, g = cp.zeros((B, n)), cp.zeros((B, m))
    its, sts, errs = ks.iterate([0, 1], f, g, eps, [1000, 1000], tol, 1.0)
    merr, _, _ = ks.measure(f, g, eps, [0, 1])
    for p, (x, y, a, b) in enumerate(data):
        assert int(sts[p]) == 0 and int(its[p]) < 1000 and min(errs[p]) <= tol
        # the GPU stops at a check after the error fell to tol: compare the same number of updates
        with np.errstate(divide="ignore"):
            la, lb = np.log(a), np.log(b)
        fr, gr = np.zeros(n), np.zeros(m)
        k = int(its[p])
        _, _, err_ref = ref.sinkhorn_dense(_cost64(x, y), la, lb, fr, gr, eps, k, 0.0, 0, 1.0, rho_a, rho_b)
        # |t| ~ rho log(A/B) / 2 ~ 100: potentials that large round at ~1e-14, i.e. ~1e-13 of mass
        np.testing.assert_allclose(errs[p], err_ref, rtol=1e-8, atol=2e-12)
        fg, gg = f.get()[p], g.get()[p]
        np.testing.assert_array_equal(np.isneginf(fg), a == 0)
        np.testing.assert_allclose(fg[a > 0], fr[a > 0], rtol=0, atol=1e-9)
        np.testing.assert_allclose(gg[b > 0], gr[b > 0], rtol=0, atol=1e-9)
        assert merr[p] <= tol


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["dense", "pointcloud"])
@pytest.mark.parametrize("rho_a, rho_b", RHOS[:2])
def test_measure_and_dual_values_match_numpy(rng, dtype, kind, rho_a, rho_b):
    n, m, eps = 30, 22, 0.2
    unb = not math.isinf(rho_a)
    x, y, a, b = _data(rng, n, m, 2, dtype, zero_weights=True, unequal=unb)
    ks = CudaKernels(_batch(kind, x, y, a, b, rho_a, rho_b))
    f0 = np.where(a > 0, rng.normal(size=n) * 0.05, -np.inf).astype(dtype)
    g0 = (rng.normal(size=m) * 0.05).astype(dtype)
    f, g = cp.asarray(f0)[None], cp.asarray(g0)[None]
    merr, cost, plogp = ks.measure(f, g, eps, [0])
    C = _cost64(x, y)
    f64, g64, a64, b64 = (v.astype(np.float64) for v in (f0, g0, a, b))
    P = np.exp((f64[:, None] + g64[None] - C) / eps - 1)
    row, col = P.sum(1), P.sum(0)
    L = np.where(P > 0, np.log(np.where(P > 0, P, 1.0)), 0.0)
    rt = 1e-10 if dtype == np.float64 else 2e-5
    want_err = marginals.marginal_residual(row, col, f64, g64, a64, b64, eps, rho_a, rho_b)
    np.testing.assert_allclose(merr[0], want_err, rtol=rt)
    np.testing.assert_allclose(cost[0], (P * C).sum(), rtol=rt)
    np.testing.assert_allclose(plogp[0], (P * L).sum(), rtol=rt * 10, atol=rt)
    np.testing.assert_allclose(ks.masses[0], P.sum(), rtol=rt)
    want_val = marginals.primal_value((P * C).sum(), (P * L).sum(), row, col, a64, b64, eps, rho_a, rho_b)
    np.testing.assert_allclose(ks.values[0], want_val, rtol=rt * 10, atol=rt)
    if not unb:
        np.testing.assert_allclose(ks.values[0], cost[0] + eps * plogp[0], rtol=1e-12)
    want_dual = marginals.dual_value(f64, g64, a64, b64, P.sum(), eps, rho_a, rho_b)
    np.testing.assert_allclose(ks.dual_values(f, g, eps, [0])[0], want_dual, rtol=rt * 10, atol=rt)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("kind", ["dense", "pointcloud"])
@pytest.mark.parametrize("rho", [INF, 0.4])
@pytest.mark.parametrize("zero_weights", [False, True])
def test_symmetric_iterations_match_numpy_reference(rng, dtype, kind, rho, zero_weights):
    n, eps, k = 41, 0.1, 6
    x, _, a, _ = _data(rng, n, 3, 2, dtype, zero_weights=zero_weights, unequal=False)
    if not math.isinf(rho):
        a = (a * 0.7).astype(dtype)  # mass != 1 is allowed when relaxed
    ks = CudaKernels(_batch(kind, x, x, a, a, rho, 123.0, symmetric=True))  # symmetric: rho_b = rho_a
    assert ks.rho_b == ks.rho_a
    f0 = rng.normal(size=n) * 0.02
    f = cp.asarray(f0.astype(dtype))[None]
    its, sts, errs = ks.iterate_symmetric([0], f, eps, [k], 0.0)
    assert int(its[0]) == k and len(errs[0]) == k
    fr = f0.astype(dtype).astype(np.float64)
    with np.errstate(divide="ignore"):
        la = np.log(a.astype(np.float64))
    _, _, err_ref = ref.symmetric_dense(_cost64(x, x), la, fr, eps, k, 0.0, 0, rho)
    fg = f.get()[0].astype(np.float64)
    np.testing.assert_array_equal(np.isneginf(fg), a == 0)
    tol = dict(rtol=1e-10, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    np.testing.assert_allclose(fg[a > 0], fr[a > 0], **tol)
    # the first error of a cold start differs where a = 0: the GPU pass counts those rows' mass,
    # the reference (and the C++ kernel) skip them; from the second iterate on they carry none
    first = 1 if zero_weights else 0
    etol = dict(rtol=1e-8, atol=1e-13) if dtype == np.float64 else dict(rtol=2e-3, atol=2e-6)
    np.testing.assert_allclose(errs[0][first:], err_ref[first:k], **etol)


@pytest.mark.parametrize("kind", ["dense", "pointcloud"])
@pytest.mark.parametrize("rho_a, rho_b", [(0.5, 0.5), (0.1, 2.0), (0.5, INF), (INF, 0.3)])
def test_converged_plan_matches_pot(rng, kind, rho_a, rho_b):
    n, m, eps = 25, 35, 0.05
    x, y, a, b = _data(rng, n, m, 2, np.float64, zero_weights=False, unequal=True)
    ks = CudaKernels(_batch(kind, x, y, a, b, rho_a, rho_b))
    f, g = ks.new_potentials(None)
    its, sts, _ = ks.iterate([0], f, g, eps, [20_000], 1e-11, None)
    assert int(sts[0]) == 0
    C = _cost64(x, y)
    P = ks.plan(0, f, g, eps, np.dtype(np.float64)).get()
    want = ot.unbalanced.sinkhorn_unbalanced(a, b, C, eps, (rho_a, rho_b), reg_type="kl", numItermax=200_000,
                                             stopThr=1e-15)
    np.testing.assert_allclose(P, want, atol=1e-10, rtol=1e-7)
    merr, _, _ = ks.measure(f, g, eps, [0])
    assert merr[0] <= 1e-10
    # strong duality at the optimum
    assert ks.values[0] == pytest.approx(ks.dual_values(f, g, eps, [0])[0], rel=1e-8)


def test_float32_zero_weights_converge_to_pot(rng):
    n, m, eps, rho = 30, 26, 0.05, 0.5
    x, y, a, b = _data(rng, n, m, 2, np.float32, zero_weights=True, unequal=True)
    ks = CudaKernels(_batch("pointcloud", x, y, a, b, rho, rho))
    f, g = ks.new_potentials(None)
    _, sts, _ = ks.iterate([0], f, g, eps, [20_000], 1e-5, None)
    assert int(sts[0]) == 0 and f.dtype == np.float32
    assert np.isneginf(f.get()[0][a == 0]).all() and np.isneginf(g.get()[0][b == 0]).all()
    # zero-weight rows / columns carry no mass (KL(P | a⊗b) forbids it): POT (which gives NaN
    # with zero weights) solves the problem without them
    ia, ib = a > 0, b > 0
    want = np.zeros((n, m))
    want[np.ix_(ia, ib)] = ot.unbalanced.sinkhorn_unbalanced(
        a[ia].astype(float), b[ib].astype(float), _cost64(x[ia], y[ib]), eps, rho, reg_type="kl",
        numItermax=200_000, stopThr=1e-14)
    np.testing.assert_allclose(ks.plan(0, f, g, eps, np.dtype(np.float32)).get(), want, atol=3e-6)


# ---- through the driver (needs the core's rho_a / rho_b) -----------------------------------------
needs_core = pytest.mark.skipif(not CORE_HAS_RHO, reason="LinearProblem has no rho_a yet")


@needs_core
@pytest.mark.parametrize("geom_kind", ["pointcloud", "dense"])
@pytest.mark.parametrize("rho_a, rho_b", [(0.5, 1.0), (INF, 0.3)])
def test_driver_gpu_solve_equals_cpu_solve(rng, geom_kind, rho_a, rho_b):
    n, m, eps, tol = 40, 30, 0.05, 1e-9
    x, y, a, b = _data(rng, n, m, 2, np.float64, zero_weights=True, unequal=True)

    def geom(xp):
        pc = otsolve.PointCloud(xp.asarray(x), xp.asarray(y))
        return pc if geom_kind == "pointcloud" else otsolve.Geometry(pc.cost_matrix)

    cpu = otsolve.Sinkhorn(tol=tol)(otsolve.LinearProblem(geom(np), a, b, epsilon=eps, rho_a=rho_a, rho_b=rho_b))
    gpu = otsolve.Sinkhorn(tol=tol)(otsolve.LinearProblem(geom(cp), cp.asarray(a), cp.asarray(b), epsilon=eps,
                                                          rho_a=rho_a, rho_b=rho_b))
    assert cpu.converged and gpu.converged and isinstance(gpu.f, cp.ndarray)
    assert gpu.marginal_error <= tol
    fg, gg = gpu.f.get(), gpu.g.get()
    np.testing.assert_array_equal(np.isneginf(fg), np.isneginf(cpu.f))
    np.testing.assert_allclose(fg[a > 0], cpu.f[a > 0], atol=1e-8)
    np.testing.assert_allclose(gg[b > 0], cpu.g[b > 0], atol=1e-8)
    assert gpu.value == pytest.approx(cpu.value, rel=1e-8)
    np.testing.assert_allclose(gpu.plan.get(), cpu.plan, atol=1e-10)


@needs_core
def test_driver_symmetric_batch_on_gpu(rng):
    B, n, eps, rho, tol = 2, 30, 0.05, 0.5, 1e-10
    X = rng.normal(size=(B, n, 3))
    a = rng.uniform(0.5, 1.5, (B, n))
    kw = dict(epsilon=eps, symmetric=True, rho_a=rho, cost_fn="half_sqeuclidean")
    cpu = otsolve.Sinkhorn(tol=tol)(otsolve.BatchedLinearProblem(x=X, a=a, **kw))
    gpu = otsolve.Sinkhorn(tol=tol)(otsolve.BatchedLinearProblem(x=cp.asarray(X), a=cp.asarray(a), **kw))
    assert cpu.converged and gpu.converged
    np.testing.assert_allclose(gpu.f.get(), cpu.f, atol=1e-8)
    np.testing.assert_allclose(gpu.values, cpu.values, rtol=1e-8)
    # the symmetric solve is the general one with y = x, b = a
    gen = otsolve.Sinkhorn(tol=tol)(otsolve.BatchedLinearProblem(
        x=cp.asarray(X), y=cp.asarray(X.copy()), a=cp.asarray(a), b=cp.asarray(a), epsilon=eps, rho_a=rho, rho_b=rho,
        cost_fn="half_sqeuclidean"))
    assert gen.converged
    np.testing.assert_allclose(gpu.f.get(), gen.f.get(), atol=1e-7)


@needs_core
def test_driver_value_tol_warm_start_and_float32_on_gpu(rng):
    n, m, eps, rho = 35, 28, 0.03, 0.3
    x, y, a, b = _data(rng, n, m, 2, np.float64, zero_weights=False, unequal=True)
    prob = otsolve.LinearProblem(otsolve.PointCloud(cp.asarray(x), cp.asarray(y)), cp.asarray(a), cp.asarray(b),
                                 epsilon=eps, rho_a=rho, rho_b=rho)
    exact = otsolve.Sinkhorn(tol=1e-12)(prob)
    assert exact.converged
    # stopping on the (unbalanced) dual value: the GPU kernel set's dual_values
    loose = otsolve.Sinkhorn(value_tol=1e-7)(prob)
    assert loose.converged and abs(loose.value - exact.value) <= 1e-6
    warm = otsolve.Sinkhorn(tol=1e-12)(prob, init=exact)
    assert warm.converged and warm.n_iter <= 1
    # float32 on the GPU against the float64 CPU solve
    x32, y32, a32, b32 = (v.astype(np.float32) for v in (x, y, a, b))
    cpu = otsolve.Sinkhorn(tol=2e-6)(otsolve.LinearProblem(otsolve.PointCloud(x32, y32), a32, b32, epsilon=eps,
                                                             rho_a=rho, rho_b=rho))
    gpu = otsolve.Sinkhorn(tol=1e-5)(otsolve.LinearProblem(otsolve.PointCloud(cp.asarray(x32), cp.asarray(y32)),
                                                           cp.asarray(a32), cp.asarray(b32), epsilon=eps,
                                                           rho_a=rho, rho_b=rho))
    assert gpu.converged and gpu.f.dtype == np.float32
    np.testing.assert_allclose(gpu.plan.get(), cpu.plan, atol=3e-6)
    assert gpu.value == pytest.approx(cpu.value, rel=1e-4)
