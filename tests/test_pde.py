"""PDE generators: symmetry/SPD, stencil against hand-built operators, closed forms, reproducibility."""
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from otsolve.pde import (darcy, darcy3d, diffusion_matrix, gaussian_random_field, helmholtz, make_system,
                         poisson)


def _laplacian(m, d=2):
    T = sp.diags([-1.0, 2.0, -1.0], [-1, 0, 1], (m, m))
    I = sp.eye(m)
    if d == 2:
        return (sp.kron(T, I) + sp.kron(I, T)).tocsr()
    return (sp.kron(sp.kron(T, I), I) + sp.kron(sp.kron(I, T), I) + sp.kron(sp.kron(I, I), T)).tocsr()


@pytest.mark.parametrize("d", [2, 3])
def test_constant_K_gives_laplacian(d):
    s = 7
    A, b = diffusion_matrix(np.full((s,) * d, 2.5), 1.0, h=0.5)
    assert abs(A - 2.5 * _laplacian(s - 2, d)).max() < 1e-12
    np.testing.assert_allclose(b, 0.25)


def test_darcy_symmetric_spd_and_flux_stencil():
    S = darcy(10, 3)
    A = S.A.toarray()
    np.testing.assert_allclose(A, A.T, atol=0)
    assert np.linalg.eigvalsh(A).min() > 0
    K = S.inputs[0]
    # row of interior node (2, 3) by hand: harmonic-mean face coefficients
    hm = lambda a, c: 2 * a * c / (a + c)  # noqa: E731
    P = (2, 3)
    faces = {(3, 3): hm(K[P], K[3, 3]), (1, 3): hm(K[P], K[1, 3]), (2, 4): hm(K[P], K[2, 4]),
             (2, 2): hm(K[P], K[2, 2])}
    row = (P[0] - 1) * 8 + (P[1] - 1)
    assert np.isclose(A[row, row], sum(faces.values()))
    for (i, j), kf in faces.items():
        assert np.isclose(A[row, (i - 1) * 8 + (j - 1)], -kf)
    # boundary neighbour: face stays on the diagonal, no off-diagonal entry
    row0 = 0
    K00 = K[1, 1]
    diag = hm(K00, K[0, 1]) + hm(K00, K[2, 1]) + hm(K00, K[1, 0]) + hm(K00, K[1, 2])
    assert np.isclose(A[row0, row0], diag)
    assert np.count_nonzero(A[row0]) == 3


def test_darcy_key_is_a_copy_and_reproducible():
    a, b = make_system("darcy", 12, 4, 7), make_system("darcy", 12, 4, 7)
    np.testing.assert_array_equal(a.params, b.params)
    assert abs(a.A - b.A).max() == 0
    a.params[:] = 0
    assert np.all(a.inputs > 0)  # the key array is not a view of the field
    c = make_system("darcy", 12, 5, 7)
    assert not np.allclose(c.params, b.params)


def test_poisson_manufactured_solution():
    """u = x² + y² (exactly represented by the 5-point stencil): -Δu = -4."""
    s = 9
    t = np.linspace(0, 1, s)
    X, Y = np.meshgrid(t, t, indexing="ij")
    U = X ** 2 + Y ** 2
    g = U.copy()
    g[1:-1, 1:-1] = 0
    A, b = diffusion_matrix(np.ones((s, s)), -4.0, 1.0 / (s - 1), g=g)
    u = spla.spsolve(A.tocsc(), b)
    np.testing.assert_allclose(u, U[1:-1, 1:-1].ravel(), atol=1e-12)


def test_poisson_fixed_matrix_varying_rhs():
    a, b = poisson(12, 0), poisson(12, 1)
    assert abs(a.A - b.A).max() == 0
    assert not np.allclose(a.b, b.b)
    assert a.params.shape == (30,)
    u = a.to_grid(spla.spsolve(a.A.tocsc(), a.b))
    np.testing.assert_allclose(u[0], a.boundary[0])  # boundary data restored on the grid


def test_helmholtz_shift_and_indefinite():
    S = helmholtz(16, 2, k_range=(10.0, 10.0), k_variation=0.0)
    D = darcy(16, np.random.default_rng(2))
    h = 1 / 15
    assert abs((D.A - S.A) - h * h * 100 * sp.eye(S.A.shape[0])).max() < 1e-10
    assert abs(S.A - S.A.T).max() == 0
    assert np.linalg.eigvalsh(S.A.toarray()).min() < 0  # k² = 100 > 2π² min K: indefinite


def test_darcy3d_shapes_and_spd():
    S = darcy3d(8, 0)
    assert S.A.shape == (216, 216) and S.inputs.shape == (1, 8, 8, 8)
    assert np.linalg.eigvalsh(S.A.toarray()).min() > 0


def test_grf_statistics():
    rng = np.random.default_rng(0)
    f = np.stack([gaussian_random_field((32, 32), rng) for _ in range(200)])
    assert abs(f.mean()) < 0.1 * f.std()
    # smoothness: neighbouring nodes strongly correlated
    c = np.corrcoef(f[:, 10, 10], f[:, 10, 11])[0, 1]
    assert c > 0.8


@pytest.mark.parametrize("call, match", [
    (lambda: darcy(2), ">= 3"),
    (lambda: darcy(8, dim=4), "dim"),
    (lambda: diffusion_matrix(-np.ones((5, 5)), 1.0, 0.1), "positive"),
    (lambda: diffusion_matrix(np.ones((5, 4)), 1.0, 0.1), "grid"),
    (lambda: make_system("burgers", 8, 0), "unknown"),
    (lambda: helmholtz(8, k_range=(3, 1)), "k_range"),
    (lambda: gaussian_random_field((8, 8), np.random.default_rng(0), alpha=0.5), "alpha"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
