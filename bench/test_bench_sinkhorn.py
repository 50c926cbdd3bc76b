"""pytest-benchmark view of the Sinkhorn comparison (small sizes; the full run is bench_sinkhorn.py).

    python -m pytest bench/test_bench_sinkhorn.py --benchmark-enable --benchmark-group-by=param:n
"""
import numpy as np
import ot
import pytest

import otsolve


@pytest.fixture(scope="module", params=[500, 1500], ids=lambda n: f"n={n}")
def problem(request):
    n = request.param
    rng = np.random.default_rng(0)
    C = ot.dist(rng.random((n, 2)), rng.random((n, 2)))
    C /= C.max()
    a = np.full(n, 1.0 / n)
    return n, C, a


def test_otsolve_sinkhorn(benchmark, problem):
    n, C, a = problem
    prob = otsolve.LinearProblem(C, a, a, epsilon=0.01)
    res = benchmark(lambda: otsolve.Sinkhorn(tol=1e-9)(prob))
    assert res.converged


def test_pot_sinkhorn_kernel(benchmark, problem):
    n, C, a = problem
    P = benchmark(lambda: ot.sinkhorn(a, a, C, 0.01, stopThr=1e-9, numItermax=10000))
    assert np.isfinite(P).all()
