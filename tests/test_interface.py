"""The common interface: geometry / problem / solver / result, the registry, bad input."""
import numpy as np
import pytest

import otsolve


def test_solve_front_door_forms_agree(rng):
    C = rng.random((8, 6))
    prob = otsolve.LinearProblem(otsolve.Geometry(C), epsilon=0.1)
    r1 = otsolve.solve(prob, method="sinkhorn")
    r2 = otsolve.solve(None, None, C, epsilon=0.1)
    r3 = otsolve.Sinkhorn()(prob)
    np.testing.assert_allclose(r1.plan, r2.plan)
    np.testing.assert_allclose(r1.plan, r3.plan)
    assert r1.method == "sinkhorn"


def test_unknown_method_lists_known():
    with pytest.raises(ValueError, match="known methods: .*sinkhorn"):
        otsolve.solve(None, None, np.ones((2, 2)), epsilon=0.1, method="nope")


def test_bad_option_is_value_error():
    with pytest.raises(ValueError, match="bad option"):
        otsolve.solve(None, None, np.ones((2, 2)), epsilon=0.1, not_an_option=3)


def test_result_fields(rng):
    res = otsolve.solve(None, None, rng.random((5, 4)), epsilon=0.1)
    for key in ("plan", "f", "g", "cost", "value", "converged", "n_iter", "marginal_error", "errors",
                "message", "method", "status"):
        assert key in res.keys()
        getattr(res, key)
    assert res["cost"] == res.cost
    with pytest.raises(AttributeError, match="no field"):
        res.not_a_field


def test_uniform_default_weights(rng):
    prob = otsolve.LinearProblem(rng.random((4, 5)), epsilon=1.0)
    np.testing.assert_allclose(prob.a, 0.25)
    np.testing.assert_allclose(prob.b, 0.2)
    assert prob.is_uniform


def test_registry_lists_methods():
    assert {"sinkhorn", "sns", "sparsity_constrained"} <= set(otsolve.available_methods())


# ----------------------------------------------------------------------------- bad input
C = np.ones((3, 4))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(a=np.ones(2) / 2), "a has length 2"),
        (dict(b=np.ones(3) / 3), "b has length 3"),
        (dict(a=np.array([0.5, 0.6, -0.1])), "negative"),
        (dict(a=np.array([0.5, np.nan, 0.5])), "non-finite"),
        (dict(b=np.array([np.inf, 0, 0, 0])), "non-finite"),
        (dict(a=np.array([0.5, 0.25, 0.5])), "different total masses"),
        (dict(a=np.zeros(3)), "zero total mass"),
        (dict(a=np.ones((3, 1)) / 3), "1-D"),
        (dict(epsilon=0.0), "epsilon"),
        (dict(epsilon=-1.0), "epsilon"),
        (dict(epsilon=np.nan), "epsilon"),
        (dict(epsilon="big"), "epsilon"),
    ],
)
def test_bad_problem_input(kwargs, match):
    kw = dict(a=None, b=None, epsilon=0.1)
    kw.update(kwargs)
    with pytest.raises(ValueError, match=match):
        otsolve.LinearProblem(C, **kw)


@pytest.mark.parametrize(
    "cost, match",
    [
        (np.ones(3), "2-D"),
        (np.ones((0, 3)), "empty"),
        (np.array([[1.0, np.nan]]), "non-finite"),
        (np.array([[1.0, np.inf]]), "non-finite"),
        (np.array([["a", "b"]]), "floating"),
        (np.ones((2, 2), dtype=complex), "floating"),
    ],
)
def test_bad_cost(cost, match):
    with pytest.raises(ValueError, match=match):
        otsolve.Geometry(cost)


def test_bad_pointcloud():
    with pytest.raises(ValueError, match="different dimensions"):
        otsolve.PointCloud(np.ones((3, 2)), np.ones((3, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        otsolve.PointCloud(np.array([[np.nan, 1.0]]))
    with pytest.raises(ValueError, match="unknown cost"):
        otsolve.PointCloud(np.ones((3, 2)), cost="hamming")
    with pytest.raises(ValueError, match="scale_cost"):
        otsolve.PointCloud(np.ones((3, 2)), scale_cost=-1)


def test_missing_epsilon_for_sinkhorn():
    with pytest.raises(ValueError, match="needs epsilon"):
        otsolve.Sinkhorn()(otsolve.LinearProblem(C))


@pytest.mark.parametrize(
    "kwargs", [dict(tol=0), dict(tol=-1), dict(max_iter=-1), dict(max_iter=1.5), dict(epsilon_scaling=2.0),
               dict(omega=2.5), dict(mode="fast")]
)
def test_bad_solver_options(kwargs):
    with pytest.raises(ValueError):
        otsolve.Sinkhorn(**kwargs)


def test_bad_init_shapes(rng):
    prob = otsolve.LinearProblem(rng.random((3, 4)), epsilon=0.1)
    with pytest.raises(ValueError, match="init potentials"):
        otsolve.Sinkhorn()(prob, init=(np.zeros(4), np.zeros(4)))
    with pytest.raises(ValueError, match="NaN"):
        otsolve.Sinkhorn()(prob, init=(np.full(3, np.nan), np.zeros(4)))


def test_solve_bad_call():
    with pytest.raises(ValueError, match="call solve|cost matrix comes third"):
        otsolve.solve(np.ones((2, 2)))


def test_int_cost_becomes_float64():
    prob = otsolve.LinearProblem(np.array([[0, 1], [1, 0]]), epsilon=0.5)
    assert prob.dtype == np.float64
