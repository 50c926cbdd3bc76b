"""Kernel micro-benchmarks (pytest-benchmark): the compiled C++ kernels against their NumPy
references, on small sizes. Each test also checks that both give the same numbers.

    # time them (the project's pytest config disables benchmarks by default)
    python -m pytest bench/test_micro.py --benchmark-enable
    # compare across commits: save a run on one commit, compare a later one with it
    python -m pytest bench/test_micro.py --benchmark-enable --benchmark-autosave
    python -m pytest bench/test_micro.py --benchmark-enable --benchmark-compare

Saved runs go to ``.benchmarks/`` (git-ignored). CI runs this file in quick mode (a few rounds per
benchmark: ``bench/run_all.py --quick``) so that it never rots. Full-solver comparisons with the
peers (POT, RegOT, ...) are the ``bench_*.py`` scripts, not this file.
"""
from __future__ import annotations

import numpy as np
import pytest

import otsolve
from otsolve.kernels import HAVE_COMPILED, get_sinkhorn_kernels, reference, sns_reference

SWEEPS = 10  # Sinkhorn sweeps per timed call (tol = 0: never stops early)
EPS = 0.05


def _impl_params():
    return [pytest.param("compiled", marks=pytest.mark.skipif(not HAVE_COMPILED, reason="no compiled kernels")),
            "numpy"]


def _sinkhorn_kernels(impl):
    return get_sinkhorn_kernels(compiled=True) if impl == "compiled" else reference


def _sns_kernels(impl):
    if impl == "numpy":
        return sns_reference
    from otsolve import _ext_sns

    return _ext_sns


@pytest.fixture(scope="module", params=[200, 500], ids=lambda n: f"n={n}")
def dense_problem(request):
    n = request.param
    rng = np.random.default_rng(0)
    x, y = rng.random((n, 2)), rng.random((n, 2))
    C = np.ascontiguousarray(((x[:, None, :] - y[None, :, :]) ** 2).sum(-1))
    C /= C.max()
    log_a = np.full(n, -np.log(n))
    return n, C, log_a


@pytest.mark.parametrize("impl", _impl_params())
def test_sinkhorn_sweeps_dense(benchmark, dense_problem, impl):
    """SWEEPS log-domain Sinkhorn sweeps on a dense n x n cost (the core of every solve)."""
    n, C, log_a = dense_problem
    K = _sinkhorn_kernels(impl)
    benchmark.group = f"{SWEEPS} Sinkhorn sweeps, dense n = m = {n}"

    def run():
        f, g = np.zeros(n), np.zeros(n)
        it, status, _ = K.sinkhorn_dense(C, log_a, log_a, f, g, EPS, SWEEPS, 0.0, 0, 1.0)
        return it, status, f, g

    it, status, f, g = benchmark(run)
    assert (it, status) == (SWEEPS, 1)
    f_ref, g_ref = np.zeros(n), np.zeros(n)
    reference.sinkhorn_dense(C, log_a, log_a, f_ref, g_ref, EPS, SWEEPS, 0.0, 0, 1.0)
    np.testing.assert_allclose(f, f_ref, atol=1e-10)
    np.testing.assert_allclose(g, g_ref, atol=1e-10)


@pytest.fixture(scope="module", params=[300, 1000], ids=lambda n: f"n={n}")
def sns_system(request):
    """The sparsified Newton system of SNS at Sinkhorn's potentials (k = 10 entries per row)."""
    n, k, eps = request.param, 10, 1e-2
    rng = np.random.default_rng(1)
    C = rng.random((n, n))
    res = otsolve.Sinkhorn(tol=1e-6)(otsolve.LinearProblem(C, epsilon=eps))
    x, y, zero = np.asarray(res.f), np.asarray(res.g), np.zeros(n)
    row, col = np.empty(n), np.empty(n)
    kidx, kval = np.empty((n, k), dtype=np.int64), np.empty((n, k))
    tptr, tidx, tval = np.empty(n + 1, dtype=np.int64), np.empty(n * k, dtype=np.int64), np.empty(n * k)
    sns_reference.sns_form_system(C, x, y, zero, zero, 0.0, eps, row, col, kidx, kval, tptr, tidx, tval)
    v = rng.standard_normal(2 * n)
    return n, (row, col, kidx, kval, tptr, tidx, tval), v


@pytest.mark.parametrize("impl", _impl_params())
def test_sns_matvec(benchmark, sns_system, impl):
    """One product with the sparsified SNS Hessian [[diag(P1), P~], [P~^T, diag(P^T 1)]] (each CG step)."""
    n, system, v = sns_system
    K = _sns_kernels(impl)
    benchmark.group = f"SNS matvec, n = m = {n}, k = 10 per row"
    out = np.empty(2 * n)
    benchmark(K.sns_matvec, *system, v, out, 0)
    expected = np.empty(2 * n)
    sns_reference.sns_matvec(*system, v, expected)
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-15)
