"""GCRO-DR, recycled CG, RecyclingSolver and SKR ordering: against spsolve / GMRES / brute force."""
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla
from hypothesis import given, settings, strategies as st

from otsolve.krylov import (KrylovWarning, RecycleSpace, RecyclingSolver, gcrodr, rcg, solve_sequence,
                            sort_systems, hilbert_index)
from otsolve.krylov.gcrodr import _gcrodr
from otsolve.krylov.rcg import _rcg
from otsolve.pde import make_system


def _nonsym(n=400, seed=0, shift=0.0):
    s = int(np.sqrt(n))
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (s, s))
    L = sp.kron(sp.eye(s), T) + sp.kron(T, sp.eye(s))
    rng = np.random.default_rng(seed)
    return (L + 0.4 * sp.diags(np.ones(s * s - 1), 1) + sp.diags(shift + 0.01 * rng.random(s * s))).tocsr()


def _relres(A, x, b):
    return np.linalg.norm(b - A @ x) / np.linalg.norm(b)


@pytest.mark.parametrize("k", [0, 5, 15])
def test_gcrodr_matches_spsolve(k, rng):
    A = _nonsym(400, shift=-0.05)  # nonsymmetric and mildly indefinite
    b = rng.standard_normal(400)
    x, info = gcrodr(A, b, rtol=1e-10, restart=30, k=k)
    assert info == 0
    xs = spla.spsolve(A.tocsc(), b)
    assert _relres(A, x, b) <= 1e-10
    np.testing.assert_allclose(x, xs, rtol=1e-6, atol=1e-8 * np.abs(xs).max())


def test_gcrodr_k0_is_gmres(rng):
    """k = 0 is GMRES(m): same residual history (step by step) as SciPy's restarted GMRES."""
    A = _nonsym(225)
    b = rng.standard_normal(225)
    ours, theirs = [], []
    x, info = gcrodr(A, b, rtol=1e-9, restart=10, k=0, callback=ours.append)
    xs, info_s = spla.gmres(A, b, rtol=1e-9, restart=10, maxiter=500, callback=theirs.append,
                            callback_type="pr_norm")
    assert info == 0 and info_s == 0
    assert len(ours) == len(theirs)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-12)
    np.testing.assert_allclose(x, xs, rtol=1e-6, atol=1e-9)


def test_deflated_restart_beats_gmres(rng):
    """GCRO-DR without carried space (GMRES-DR) needs fewer steps than GMRES(m) on a hard problem."""
    S = make_system("darcy", 40, 0, 0)
    b = S.b
    _, i0, st0 = _gcrodr(S.A, b, rtol=1e-8, restart=30, k=0)
    _, i1, st1 = _gcrodr(S.A, b, rtol=1e-8, restart=30, k=10)
    assert i0 == 0 and i1 == 0
    assert st1.iterations < 0.7 * st0.iterations


def test_recycling_identical_systems_one_cycle():
    """A few small outlying eigenvalues make GMRES(m) restart; once GCRO-DR has deflated them,
    solving the identical system again converges within one outer cycle."""
    rng = np.random.default_rng(1)
    n = 300
    d = np.r_[np.linspace(1e-3, 2e-2, 10), 1 + rng.random(n - 10)]
    Q, _ = np.linalg.qr(rng.standard_normal((n, n)))
    A = (Q * d) @ Q.T + 0.02 * np.triu(rng.standard_normal((n, n)), 1) / np.sqrt(n)  # nonsymmetric
    b = rng.standard_normal(n)
    space = RecycleSpace()
    _, info1, st1 = _gcrodr(A, b, rtol=1e-8, restart=30, k=15, recycle=space)
    assert info1 == 0 and st1.cycles > 1 and space.k >= 15
    for _ in range(2):
        x, info, st = _gcrodr(A, b, rtol=1e-8, restart=30, k=15, recycle=space)
        assert info == 0 and st.cycles <= 1 and _relres(A, x, b) <= 1e-8
    # a new right-hand side for the same matrix profits as well
    b2 = rng.standard_normal(n)
    _, info2, st2 = _gcrodr(A, b2, rtol=1e-8, restart=30, k=15, recycle=space)
    assert info2 == 0 and st2.cycles <= 1
    _, _, st_plain = _gcrodr(A, b2, rtol=1e-8, restart=30, k=0)
    assert st_plain.cycles > 1


def test_recycled_invariant_A_U_equals_C(rng):
    A = _nonsym(256)
    space = RecycleSpace()
    gcrodr(A, rng.standard_normal(256), rtol=1e-8, restart=20, k=8, recycle=space)
    U, C = space.U.T, space.C.T
    np.testing.assert_allclose(A @ U, C, atol=1e-8)
    np.testing.assert_allclose(C.T @ C, np.eye(C.shape[1]), atol=1e-10)


def test_carry_across_changing_matrices_and_preconditioner():
    systems = [make_system("darcy", 40, i, 3) for i in range(6)]
    carry = RecyclingSolver("gcrodr", rtol=1e-8, restart=30, k=10)
    reset = RecyclingSolver("gcrodr", rtol=1e-8, restart=30, k=10, recycle=False)
    for S in systems:
        M = sp.diags(1.0 / S.A.diagonal())
        x1, x2 = carry.solve(S.A, S.b, M=M), reset.solve(S.A, S.b, M=M)
        xs = spla.spsolve(S.A.tocsc(), S.b)
        for x in (x1, x2):
            assert _relres(S.A, x, S.b) <= 1e-8
            np.testing.assert_allclose(x, xs, rtol=1e-5, atol=1e-7 * np.abs(xs).max())
    assert sum(carry.stats["iterations"][1:]) < 0.8 * sum(reset.stats["iterations"][1:])
    assert all(p == i for p, i in zip(carry.stats["precond"], carry.stats["iterations"]))
    assert carry.summary()["unconverged"] == 0


def test_complex_and_float32(rng):
    A = _nonsym(196).astype(np.complex128) + 0.2j * sp.eye(196)
    b = rng.standard_normal(196) + 1j * rng.standard_normal(196)
    x, info = gcrodr(A, b, rtol=1e-10, restart=20, k=6, recycle=RecycleSpace())
    assert info == 0 and x.dtype == np.complex128 and _relres(A, x, b) <= 1e-10
    A32 = _nonsym(196).astype(np.float32)
    b32 = rng.standard_normal(196).astype(np.float32)
    x32, info32 = gcrodr(A32, b32, rtol=1e-4, restart=20, k=6)
    assert info32 == 0 and x32.dtype == np.float32


def test_linear_operator_and_dense(rng):
    A = _nonsym(144)
    b = rng.standard_normal(144)
    op = spla.LinearOperator(A.shape, matvec=lambda v: A @ v, matmat=lambda V: A @ V, dtype=float)
    x1, i1 = gcrodr(op, b, rtol=1e-9, restart=20, k=5)
    x2, i2 = gcrodr(A.toarray(), b, rtol=1e-9, restart=20, k=5)
    assert i1 == i2 == 0
    np.testing.assert_allclose(x1, x2, rtol=1e-6, atol=1e-9)


def test_rcg_matches_spsolve_and_recycling_helps():
    systems = [make_system("darcy", 30, i, 1) for i in range(5)]
    solver = RecyclingSolver("rcg", rtol=1e-9, k=10)
    plain = RecyclingSolver("rcg", rtol=1e-9, k=10, recycle=False)
    for S in systems:
        x = solver.solve(S.A, S.b)
        plain.solve(S.A, S.b)
        xs = spla.spsolve(S.A.tocsc(), S.b)
        np.testing.assert_allclose(x, xs, rtol=1e-6, atol=1e-8 * np.abs(xs).max())
    # plain (reset) rcg is CG: compare with SciPy's CG iteration count on the first system
    it = []
    spla.cg(systems[0].A, systems[0].b, rtol=1e-9, maxiter=5000, callback=lambda xk: it.append(1))
    assert abs(plain.stats["iterations"][0] - len(it)) <= 2
    assert sum(solver.stats["iterations"][1:]) < 0.85 * sum(plain.stats["iterations"][1:])


def test_rcg_invariant_W_orthogonal_residual(rng):
    S = make_system("darcy", 25, 0, 0)
    space = RecycleSpace()
    rcg(S.A, S.b, rtol=1e-8, k=6, recycle=space)
    assert space.k == 6
    np.testing.assert_allclose(space.AU, (S.A @ space.U.T).T, atol=1e-8)


def test_rcg_breakdown_on_indefinite(rng):
    A = sp.diags(np.r_[-np.ones(10), np.ones(10)]).tocsr()
    b = np.ones(20)
    with pytest.warns(KrylovWarning):
        x, info = rcg(A, b, rtol=1e-8)
    assert info > 0


def test_nonconvergence_warns_and_info(rng):
    A = _nonsym(400, shift=-0.05)
    b = rng.standard_normal(400)
    with pytest.warns(KrylovWarning, match="did not converge"):
        x, info = gcrodr(A, b, rtol=1e-12, restart=10, k=3, maxiter=15)
    assert info == 15
    assert _relres(A, x, b) > 1e-12


def test_zero_rhs(rng):
    A = _nonsym(100)
    x, info = gcrodr(A, np.zeros(100))
    assert info == 0 and not np.any(x)


@pytest.mark.parametrize("call, match", [
    (lambda A, b: gcrodr(A[:, :-1], b), "square"),
    (lambda A, b: gcrodr(A, b[:-1]), "length"),
    (lambda A, b: gcrodr(A, np.r_[b[:-1], np.nan]), "non-finite"),
    (lambda A, b: gcrodr(A.toarray() * np.nan, b), "non-finite"),
    (lambda A, b: gcrodr(A, b, k=40, restart=40), "smaller than restart"),
    (lambda A, b: gcrodr(A, b, rtol=0.0), "rtol"),
    (lambda A, b: gcrodr(A, b, rtol=-1e-3), "rtol"),
    (lambda A, b: rcg(A, b, rtol=0), "rtol"),
    (lambda A, b: gcrodr(A, b, M=sp.eye(5)), "M has shape"),
    (lambda A, b: gcrodr(A, b, recycle=[1]), "RecycleSpace"),
    (lambda A, b: RecyclingSolver("bicg"), "method"),
    (lambda A, b: RecyclingSolver(k=40, restart=40), "smaller"),
])
def test_bad_input(call, match):
    A = _nonsym(100)
    b = np.ones(100)
    with pytest.raises(ValueError, match=match):
        call(A, b)


def test_sort_greedy_brute_force(rng):
    X = rng.standard_normal((30, 4))
    perm = sort_systems(X)
    assert sorted(perm) == list(range(30)) and perm[0] == 0
    visited = {0}
    for a, b in zip(perm[:-1], perm[1:]):
        rest = [j for j in range(30) if j not in visited]
        d = np.linalg.norm(X[rest] - X[a], axis=1)
        assert np.isclose(np.linalg.norm(X[b] - X[a]), d.min())
        visited.add(b)


def test_sort_does_not_mutate_and_accepts_lists(rng):
    keys = [rng.standard_normal((3, 3)) for _ in range(10)]
    copies = [k.copy() for k in keys]
    p1 = sort_systems(keys)
    p2 = sort_systems(np.stack(keys))
    assert np.array_equal(p1, p2)
    assert all(np.array_equal(a, b) for a, b in zip(keys, copies))
    with pytest.raises(ValueError, match="same size"):
        sort_systems([np.ones(3), np.ones(4)])
    with pytest.raises(ValueError, match="method"):
        sort_systems(np.ones((3, 2)), method="tsp")


@settings(max_examples=25, deadline=None)
@given(st.integers(2, 60), st.sampled_from(["greedy", "hilbert", "none"]), st.integers(0, 10_000))
def test_sort_is_permutation(n, method, seed):
    X = np.random.default_rng(seed).standard_normal((n, 5))
    perm = sort_systems(X, method=method, group_size=7)
    assert np.array_equal(np.sort(perm), np.arange(n))


def test_hilbert_index_adjacent_cells():
    # consecutive Hilbert indices are neighbouring grid cells (the defining property)
    b = 4
    n = 1 << b
    pts = np.array([(i, j) for i in range(n) for j in range(n)], dtype=float) / (n - 1)
    d = hilbert_index(pts, bits=b)
    assert np.array_equal(np.sort(d), np.arange(n * n))
    cells = np.round(pts[np.argsort(d)] * (n - 1)).astype(int)
    assert np.all(np.abs(np.diff(cells, axis=0)).sum(axis=1) == 1)


def test_hilbert_sort_shortens_path(rng):
    X = rng.random((400, 2))
    def length(p):
        return np.linalg.norm(np.diff(X[p], axis=0), axis=1).sum()
    assert length(sort_systems(X, "hilbert", group_size=1)) < 0.3 * length(np.arange(400))


def test_solve_sequence_returns_caller_order():
    systems = [make_system("helmholtz", 20, i, 5, k_range=(1.0, 3.0)) for i in range(6)]
    X, stats = solve_sequence(systems, sort=True, solver=RecyclingSolver(rtol=1e-10, restart=20, k=5),
                              return_stats=True)
    assert not np.array_equal(stats["order"], np.arange(6))  # actually reordered
    for S, x in zip(systems, X):
        np.testing.assert_allclose(x, spla.spsolve(S.A.tocsc(), S.b), rtol=1e-7, atol=1e-10)
    assert stats["converged"].all() and stats["sort_time"] >= 0
    X2 = solve_sequence([(S.A, S.b) for S in systems], sort=False, precond="ilu")
    np.testing.assert_allclose(X2, X, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="params"):
        solve_sequence([(S.A, S.b) for S in systems], sort=True)


def test_shrink_and_warm_start():
    """shrink=True trims the carried space after very short (strongly preconditioned) solves;
    x0='previous' warm-starts from the last solution. Both still solve exactly."""
    systems = [make_system("darcy", 24, i, 2) for i in range(5)]
    from otsolve.krylov import make_preconditioner

    full = RecyclingSolver(rtol=1e-9, restart=20, k=10)
    small = RecyclingSolver(rtol=1e-9, restart=20, k=10, shrink=True)
    warm = RecyclingSolver(rtol=1e-9, restart=20, k=10, x0="previous")
    for S in systems:
        M = make_preconditioner(S.A, "ilu")
        for solver in (full, small, warm):
            x = solver.solve(S.A, S.b, M=M)
            assert _relres(S.A, x, S.b) <= 1e-9
    assert small.space.k <= max(small.stats["iterations"][-1], 1) < full.space.k
    assert sum(small.stats["matvecs"]) < sum(full.stats["matvecs"])
    assert warm.summary()["unconverged"] == 0
    with pytest.raises(ValueError, match="x0"):
        RecyclingSolver(x0="last")


def test_lazy_package_access():
    import otsolve

    assert otsolve.krylov.gcrodr is gcrodr
    assert callable(otsolve.pde.darcy)


@pytest.mark.parametrize("k", [0, 3])
def test_breakdown_on_inconsistent_system_is_reported(k):
    """Singular A with b outside its range: the Krylov space becomes invariant; the solver must
    report the failure (info > 0, warning), not claim convergence."""
    A = np.diag(np.r_[np.ones(9), 0.0])
    b = np.ones(10)
    with pytest.warns(KrylovWarning, match="breakdown"):
        x, info = gcrodr(A, b, k=k, restart=5)
    assert info > 0
    assert np.isclose(np.linalg.norm(b - A @ x) / np.linalg.norm(b), np.sqrt(0.1))  # least-squares residual


@pytest.mark.parametrize("complex_", [False, True])
def test_refreshed_space_invariants_with_preconditioner(rng, complex_):
    """After the refresh (new C written by gemm into the second basis buffer, C^H U carried as a
    small matrix) the carried space still satisfies A U = C, C^H C = I and U = M^{-1} U_pre."""
    A = _nonsym(400, shift=-0.3)
    if complex_:
        A = (A + 0.2j * sp.eye(400)).tocsr()
    d = 1.0 / A.diagonal()
    M = sp.diags(d).tocsr()
    b = rng.standard_normal(400) + (1j * rng.standard_normal(400) if complex_ else 0)
    space = RecycleSpace()
    x, info, st = _gcrodr(A, b, rtol=1e-9, restart=25, k=8, M=M, recycle=space)
    assert info == 0 and st.cycles > 2 and _relres(A, x, b) <= 1e-9
    U, C = space.U.T, space.C.T
    np.testing.assert_allclose(A @ U, C, atol=1e-8)
    np.testing.assert_allclose(C.conj().T @ C, np.eye(C.shape[1]), atol=1e-10)
    np.testing.assert_allclose(M @ space.U_pre.T, U, atol=1e-8)
    # and the space is usable for the next system (carried, converges, true residual)
    b2 = b + 0.1 * rng.standard_normal(400)
    x2, info2, st2 = _gcrodr(A, b2, rtol=1e-9, restart=25, k=8, M=M, recycle=space)
    assert info2 == 0 and _relres(A, x2, b2) <= 1e-9 and st2.iterations < st.iterations


@pytest.mark.parametrize("k", [0, 10])
def test_selective_reorthogonalisation_keeps_convergence(monkeypatch, k):
    """Re-orthogonalising only after a 10x norm drop converges like full CGS2 (always two passes)
    on an indefinite Helmholtz matrix with a long basis (the hardest case for orthogonality)."""
    import sys

    gmod = sys.modules["otsolve.krylov.gcrodr"]
    S = make_system("helmholtz", 24, 0, 0)
    runs = {}
    for eta in (gmod._REORTH, 1.0):
        monkeypatch.setattr(gmod, "_REORTH", eta)
        x, info, st = _gcrodr(S.A, S.b, rtol=1e-10, restart=80, k=k)
        assert info == 0 and _relres(S.A, x, S.b) <= 1e-10
        # the small problem's residual and the true one agree (no lost orthogonality)
        assert st.history[-1] <= 1e-10 and st.residual <= 1e-10
        runs[eta] = st.iterations
    a, b_ = runs.values()
    assert abs(a - b_) <= max(2, 0.02 * b_)


@pytest.mark.parametrize("complex_", [False, True])
def test_cholqr2_rows_orthonormal_and_falls_back(rng, complex_):
    from otsolve.krylov.gcrodr import _cholqr2_rows

    X = rng.standard_normal((12, 500)) + (1j * rng.standard_normal((12, 500)) if complex_ else 0)
    X[3] *= 1e-4  # moderately ill-conditioned: still handled by two passes
    T = _cholqr2_rows(X)
    Q = T @ X
    np.testing.assert_allclose(Q @ Q.conj().T, np.eye(12), atol=1e-12)
    X[5] = X[2] + X[7]  # rank-deficient: Cholesky QR refuses, the caller uses pivoted QR
    assert _cholqr2_rows(X) is None


def test_rank_deficient_recycled_space_is_truncated(rng):
    """A carried U whose A U is rank-deficient (duplicated vector) is truncated, not trusted."""
    A = _nonsym(256)
    space = RecycleSpace()
    gcrodr(A, rng.standard_normal(256), rtol=1e-8, restart=20, k=8, recycle=space)
    space.U = np.vstack([space.U, space.U[:1]])
    space.C = None
    b = rng.standard_normal(256)
    x, info, st = _gcrodr(sp.csr_matrix(A * 1.01), b, rtol=1e-8, restart=20, k=8, recycle=space)
    assert info == 0 and _relres(A * 1.01, x, b) <= 1e-8
