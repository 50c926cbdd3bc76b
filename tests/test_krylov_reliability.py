"""Issue 14 (Krylov part): scale invariance, info true to the returned x, BLAS limits restored
under threads, clear errors from sort_systems; issue 16: O(N log N) sorting and chunking."""
from __future__ import annotations

import threading
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from otsolve.krylov import (KrylovWarning, RecycleSpace, RecyclingSolver, gcrodr, hilbert_key, partition_systems,
                            path_length, rcg, sort_systems)
from otsolve.krylov.skr import _greedy
from otsolve.pde import make_system

SOLVERS = {"gcrodr": gcrodr, "rcg": rcg}


@pytest.fixture(scope="module")
def darcy():
    S = make_system("darcy", 14, 0, 3)
    return S.A, S.b


def _rel_res(A, x, b):
    """True relative residual without over/underflow: scale by a power of two first."""
    s = np.ldexp(1.0, int(np.frexp(np.max(np.abs(b)))[1]))
    return float(np.linalg.norm(b / s - A @ (x / s)) / np.linalg.norm(b / s))


def _quiet(f, *a, **kw):
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        out = f(*a, **kw)
    return out, [x for x in w if issubclass(x.category, RuntimeWarning)]


@pytest.mark.parametrize("name", ["gcrodr", "rcg"])
@pytest.mark.parametrize("scale", [1e160, 1e-160, 1e300, 1e-300])
def test_extreme_rhs_scale_converges_to_the_right_x(darcy, name, scale):
    # before: x = 0 with info = 0 (the norm of b overflowed / underflowed)
    A, b = darcy
    (x, info), w = _quiet(SOLVERS[name], A, b * scale, rtol=1e-8)
    assert info == 0 and not w
    assert np.all(np.isfinite(x)) and np.any(x != 0)
    assert _rel_res(A, x, b * scale) <= 1e-8
    x1, _ = SOLVERS[name](A, b, rtol=1e-8)
    np.testing.assert_allclose(x / scale, x1, rtol=1e-6, atol=0)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(e=st.integers(-290, 290), name=st.sampled_from(["gcrodr", "rcg"]), rtol=st.sampled_from([1e-4, 1e-8]))
def test_scaling_b_gives_same_relative_residual_and_verdict(darcy, e, name, rtol):
    A, b = darcy
    f = SOLVERS[name]
    (x0, info0), _ = _quiet(f, A, b, rtol=rtol, maxiter=60)
    (x1, info1), _ = _quiet(f, A, b * 10.0 ** e, rtol=rtol, maxiter=60)
    assert (info0 == 0) == (info1 == 0)
    r0, r1 = _rel_res(A, x0, b), _rel_res(A, x1, b * 10.0 ** e)
    assert (r0 <= rtol) == (info0 == 0) and (r1 <= rtol) == (info1 == 0)
    # the scaled problem b * 10^e / 2^j rounds differently from b / 2^i: equal up to rounding
    # noise near convergence (before the fix: x = 0, relative residual 1, reported converged)
    assert r1 == pytest.approx(r0, rel=0.5)


def test_recycling_solver_scale_invariant_sequence():
    systems = [make_system("darcy", 12, i, 1) for i in range(4)]
    scales = [1.0, 1e200, 1e-200, 3.0]
    a = RecyclingSolver("gcrodr", rtol=1e-8, restart=20, k=6)
    c = RecyclingSolver("gcrodr", rtol=1e-8, restart=20, k=6)
    for S, s in zip(systems, scales):
        xa = a.solve(S.A, S.b)
        xc = c.solve(S.A, S.b * s)
        np.testing.assert_allclose(xc / s, xa, rtol=1e-6)
    assert a.stats["iterations"] == c.stats["iterations"]
    assert all(c.stats["converged"])


@pytest.mark.parametrize("name", ["gcrodr", "rcg"])
@pytest.mark.parametrize("use_x0", [True, False])
def test_zero_rhs_returns_zero_with_info_zero(darcy, name, use_x0):
    # before: x ~ 1e-59 with info > 0 and a breakdown warning
    A, b = darcy
    x0 = np.linspace(1, 2, b.size) if use_x0 else None
    space = RecycleSpace()
    (x, info), w = _quiet(SOLVERS[name], A, np.zeros_like(b), x0=x0, recycle=space)
    assert info == 0 and not w
    assert np.array_equal(x, np.zeros_like(b))
    assert space.last_stats.converged and space.last_stats.residual == 0.0


def _random_problem(seed, n):
    r = np.random.default_rng(seed)
    A = np.eye(n) * r.uniform(0.5, 3) + r.standard_normal((n, n)) / np.sqrt(n) * r.uniform(0.1, 1.5)
    return A, r.standard_normal(n) * 10.0 ** r.integers(-200, 200)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(5, 40), maxiter=st.integers(1, 60),
       rtol=st.sampled_from([1e-2, 1e-6, 1e-10]), k=st.integers(0, 4))
def test_gcrodr_info_matches_true_residual(seed, n, maxiter, rtol, k):
    A, b = _random_problem(seed, n)
    (x, info), w = _quiet(gcrodr, A, b, rtol=rtol, maxiter=maxiter, restart=k + 5, k=k)
    res = _rel_res(A, x, b)
    if info == 0:
        assert res <= rtol * (1 + 1e-9) and not w
    else:
        assert res > rtol * (1 - 1e-9) and w


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10**6), n=st.integers(5, 40), maxiter=st.integers(1, 40),
       rtol=st.sampled_from([1e-2, 1e-6, 1e-10]))
def test_rcg_info_matches_true_residual(seed, n, maxiter, rtol):
    r = np.random.default_rng(seed)
    B = r.standard_normal((n, n))
    A = B @ B.T / n + np.eye(n) * r.uniform(0.01, 1)
    b = r.standard_normal(n) * 10.0 ** r.integers(-200, 200)
    (x, info), w = _quiet(rcg, A, b, rtol=rtol, maxiter=maxiter)
    res = _rel_res(A, x, b)
    if info == 0:
        assert res <= rtol * (1 + 1e-9) and not w
    else:
        assert res > rtol * (1 - 1e-9) and w


def test_overflowing_solution_is_not_reported_converged():
    # A tiny, b huge: x = b / 1e-300 overflows; the verdict must follow the returned x
    n = 5
    A = sp.identity(n, format="csr") * 1e-300
    b = np.full(n, 1e300)
    (x, info), w = _quiet(gcrodr, A, b, rtol=1e-8)
    assert info > 0 and w and not np.all(np.isfinite(x))


# ---------------------------------------------------------------------------------------------
# BLAS thread limits


def _blas_threads():
    from threadpoolctl import threadpool_info

    return sorted(d["num_threads"] for d in threadpool_info() if d["user_api"] == "blas")


def test_blas_limits_restored_after_concurrent_solves():
    # before: a per-call threadpoolctl context; with overlapping solves a later one saved the
    # already-lowered limit and restored it last, leaving the process at 1 BLAS thread
    pytest.importorskip("threadpoolctl")
    before = _blas_threads()
    if not before or max(before) < 2:
        pytest.skip("BLAS runs 1 thread here: nothing to restore")
    systems = [make_system("darcy", 20, i, 0) for i in range(6)]
    errors = []
    barrier = threading.Barrier(4)

    def work(seed):
        try:
            barrier.wait()
            s = RecyclingSolver("gcrodr" if seed % 2 else "rcg", rtol=1e-8, restart=20, k=5)
            for S in systems:
                s.solve(S.A, S.b)
                gcrodr(S.A, S.b, rtol=1e-6)
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = _blas_threads()
    if after != before:  # leave the process as it was for the other tests
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=max(before), user_api="blas")
    assert not errors
    assert after == before


def test_blas_limits_restored_after_an_exception():
    pytest.importorskip("threadpoolctl")
    before = _blas_threads()
    if not before or max(before) < 2:
        pytest.skip("BLAS runs 1 thread here: nothing to restore")
    S = make_system("darcy", 10, 0, 0)

    def boom(_):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        gcrodr(S.A, S.b, callback=boom)
    assert _blas_threads() == before


# ---------------------------------------------------------------------------------------------
# sort_systems: errors, O(N log N) default equal to the greedy chain, chunks


@pytest.mark.parametrize("bad, match", [
    (np.zeros((0, 3)), "params is empty"),
    ([], "params is empty"),
    (np.zeros((0,)), "params is empty"),
    (np.float64(3.0), "one key per system"),
    (np.array([[1.0, np.nan], [0.0, 1.0]]), "non-finite.*system 0"),
    (np.array([[1.0, 2.0], [0.0, np.inf]]), "non-finite.*system 1"),
    (np.zeros((4, 0)), "each key is empty"),
    (np.array([["a"], ["b"]]), "real numeric"),
    (np.ones((3, 2)) * 1j, "real numeric"),
    ([np.ones(3), np.ones(4)], "same size"),
])
def test_sort_systems_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        sort_systems(bad)


@pytest.mark.parametrize("kw, match", [
    ({"method": "fast"}, "method"), ({"start": 10}, "start"), ({"start": -1}, "start"),
    ({"dims": 0}, "dims"), ({"method": "hilbert", "group_size": 0}, "group_size"),
])
def test_sort_systems_bad_options(kw, match):
    with pytest.raises(ValueError, match=match):
        sort_systems(np.random.default_rng(0).random((10, 3)), **kw)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10**6), N=st.integers(1, 300), d=st.integers(1, 8))
def test_nn_default_is_the_greedy_chain(seed, N, d):
    P = np.random.default_rng(seed).standard_normal((N, d))
    start = seed % N
    np.testing.assert_array_equal(sort_systems(P, start=start), _greedy(P, start))


def test_nn_on_long_keys_is_close_to_greedy():
    P = np.stack([make_system("darcy", 24, i, 0).params for i in range(150)])
    g, n = sort_systems(P, "greedy"), sort_systems(P)
    assert sorted(n) == list(range(150))
    assert path_length(P, n) <= 1.05 * path_length(P, g)
    assert path_length(P, n) < 0.8 * path_length(P, np.arange(150))


@pytest.mark.parametrize("method", ["nn", "greedy", "hilbert", "none"])
def test_sort_systems_returns_a_permutation_and_does_not_mutate(method):
    P = np.random.default_rng(1).random((50, 6))
    P0 = P.copy()
    o = sort_systems(P, method, group_size=7)
    assert sorted(o) == list(range(50))
    np.testing.assert_array_equal(P, P0)


@pytest.mark.parametrize("d, bits", [(1, 5), (2, 3), (3, 2), (4, 2)])
def test_hilbert_key_visits_every_cell_once_through_neighbours(d, bits):
    n = 1 << bits
    cells = np.stack(np.meshgrid(*[np.arange(n)] * d, indexing="ij"), -1).reshape(-1, d)
    h = hilbert_key((cells + 0.5) / n, bits=bits)
    np.testing.assert_array_equal(np.sort(h), np.arange(n ** d))
    walk = cells[np.argsort(h)]
    assert np.all(np.abs(np.diff(walk, axis=0)).sum(axis=1) == 1)  # consecutive cells are adjacent


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10**6), N=st.integers(1, 500), chunk=st.integers(1, 80), d=st.integers(1, 12))
def test_partition_systems_covers_every_system_once(seed, N, chunk, d):
    P = np.random.default_rng(seed).standard_normal((N, d))
    chunks = partition_systems(P, chunk)
    assert all(1 <= len(c) <= chunk for c in chunks)
    assert all(len(c) == chunk for c in chunks[:-1])
    np.testing.assert_array_equal(np.sort(np.concatenate(chunks)), np.arange(N))


def test_partition_then_local_sort_beats_random_order():
    P = np.random.default_rng(2).random((2000, 8))
    chunks = partition_systems(P, 250)
    order = np.concatenate([c[sort_systems(P[c])] for c in chunks])
    assert path_length(P, order) < 0.6 * path_length(P, np.arange(2000))
    with pytest.raises(ValueError, match="chunk_size"):
        partition_systems(P, 0)
    with pytest.raises(ValueError, match="params is empty"):
        partition_systems(np.zeros((0, 2)), 5)


def test_unconverged_solve_still_warns(darcy):
    A, b = darcy
    with pytest.warns(KrylovWarning):
        x, info = gcrodr(A, b, rtol=1e-12, maxiter=3)
    assert info > 0


# ---------------------------------------------------------------------------------------------
# previous solutions in the recycled space (issue 16: stronger recycling)


def _param_systems(n, grid=18, seed=0):
    """Diffusion with a 2-parameter coefficient varying slowly along the sequence."""
    from otsolve.pde._assemble import diffusion_matrix

    x = np.linspace(0, 1, grid)
    X, Y = np.meshgrid(x, x, indexing="ij")
    out = []
    for t in np.linspace(0, 1, n):
        K = np.exp(0.8 * np.cos(np.pi * (X + 0.3 * t)) * np.cos(np.pi * Y) + 0.5 * t)
        A, b = diffusion_matrix(K, 1.0, 1.0 / (grid - 1))
        out.append((A, b))
    return out


@pytest.mark.parametrize("method", ["gcrodr", "rcg"])
def test_augment_with_previous_solution_saves_matvecs_on_a_smooth_sequence(method):
    seq = _param_systems(12)
    runs = {}
    for aug in (0, 1, 2):
        s = RecyclingSolver(method, rtol=1e-8, restart=30, k=10, augment=aug)
        for A, b in seq:
            x = s.solve(A, b)
            assert np.linalg.norm(b - A @ x) <= 1e-8 * np.linalg.norm(b)
        assert all(s.stats["converged"])
        runs[aug] = sum(s.stats["matvecs"][1:])
    assert runs[1] < runs[0] and runs[2] < runs[0]


def test_augment_validation_and_reset():
    with pytest.raises(ValueError, match="augment"):
        RecyclingSolver(augment=-1)
    with pytest.raises(ValueError, match="augment"):
        RecyclingSolver(augment=1.5)
    tight = RecyclingSolver(restart=10, k=9, augment=2, rtol=1e-8)  # no room: augmentation is capped
    for A, b in _param_systems(3):
        tight.solve(A, b)
    assert all(tight.stats["converged"])
    s = RecyclingSolver(restart=20, k=5, augment=2)
    A, b = _param_systems(1)[0]
    s.solve(A, b)
    assert len(s._sols) == 1
    s.reset()
    assert s._sols == [] and s.space.k == 0


@pytest.mark.parametrize("method, precond", [("gcrodr", "ilu"), ("rcg", None)])
def test_augment_with_a_solution_inside_the_recycled_space(method, precond):
    # a (near-)exact preconditioner or a fixed matrix puts the previous solution inside span(U):
    # the augmentation must then be skipped, not amplify cancellation noise (before: breakdown,
    # an unconverged solve or NaN)
    from otsolve.krylov import make_preconditioner

    fam, opts = ("helmholtz", {"k_range": [1.0, 3.0]}) if method == "gcrodr" else ("poisson", {})
    systems = [make_system(fam, 10 if method == "gcrodr" else 8, i, 0, **opts) for i in range(6)]
    s = RecyclingSolver(method, rtol=1e-10, restart=40, k=20, augment=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error", KrylovWarning)
        for S in systems:
            x = s.solve(S.A, S.b, M=make_preconditioner(S.A, precond))
            assert np.linalg.norm(S.b - S.A @ x) <= 1e-10 * np.linalg.norm(S.b)
    assert all(s.stats["converged"]) and max(s.stats["iterations"]) < 40
