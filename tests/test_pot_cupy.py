"""POT front end with CuPy arrays: CuPy in -> CuPy out (a CUDA device, or the CPU CUDA emulator)."""
from __future__ import annotations


import numpy as np
import ot
import pytest

import otsolve
import otsolve.pot as opot
import cuda_emulator

EMULATED, cp = cuda_emulator.gpu_test_module()
pytestmark = [pytest.mark.gpu, pytest.mark.usefixtures("cupy_backend")]


@pytest.fixture
def prob():
    rng = np.random.RandomState(5)
    a = rng.rand(20) + 0.1
    a /= a.sum()
    B = rng.rand(25, 2) + 0.1
    B /= B.sum(0)
    M = rng.rand(20, 25)
    return a, B, M


@pytest.mark.parametrize("method", ["sinkhorn_log", "sinkhorn_stabilized", "sinkhorn_epsilon_scaling"])
def test_sinkhorn_methods_cupy(prob, method):
    a, B, M = prob
    b = B[:, 0]
    P, log = otsolve.sinkhorn(cp.asarray(a), cp.asarray(b), cp.asarray(M), 0.05, method=method, log=True,
                              stopThr=1e-10)
    assert isinstance(P, cp.ndarray) and P.dtype == np.float64
    assert all(isinstance(log[k], cp.ndarray) for k in ("log_u", "log_v", "f", "g"))
    ref = ot.sinkhorn(a, b, M, 0.05, method="sinkhorn_log", stopThr=1e-12, numItermax=10000)
    np.testing.assert_allclose(P.get(), ref, atol=1e-9)


def test_several_histograms_cupy(prob):
    a, B, M = prob
    loss = otsolve.sinkhorn2(cp.asarray(a), cp.asarray(B), cp.asarray(M), 0.05, stopThr=1e-10)
    assert isinstance(loss, cp.ndarray) and loss.shape == (2,)
    ref = [ot.sinkhorn2(a, B[:, k], M, 0.05, method="sinkhorn_log", stopThr=1e-12) for k in range(2)]
    np.testing.assert_allclose(loss.get(), ref, rtol=1e-8)


def test_exact_cupy(prob):
    a, B, M = prob
    b = B[:, 1]
    P = opot.emd(cp.asarray(a), cp.asarray(b), cp.asarray(M))
    assert isinstance(P, cp.ndarray)
    np.testing.assert_allclose(P.get(), ot.emd(a, b, M), atol=1e-15)
    W = opot.emd2(cp.asarray(a), cp.asarray(b), cp.asarray(M))
    assert isinstance(W, cp.ndarray) and W.ndim == 0
    assert float(W) == pytest.approx(ot.emd2(a, b, M), rel=1e-12)
    res = otsolve.solve(cp.asarray(a), cp.asarray(b), cp.asarray(M), method="emd")
    assert isinstance(res.plan, cp.ndarray) and isinstance(res.f, cp.ndarray) and res.converged
