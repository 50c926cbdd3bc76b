"""One contract for every method of the registry (issue: one driver per algorithm).

* ``converged=True`` only if the returned plan's L1 marginal error, recomputed here from the
  returned plan, is finite and <= tol (the solver's own tolerance).
* Every result carries the same core fields.
* Bad input is rejected the same way (ValueError naming the problem) by every method.

Sparsity-constrained OT solves a relaxed (smoothed, k-sparse) dual, which leaves a marginal
error by design: its ``converged`` is the optimiser's status (documented), and the contract
checked is that ``marginal_error`` is the true error of the returned plan.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import otsolve
from otsolve.solvers.result import OTResult

# options per method: every method in the registry must be listed (a new one fails until added)
OPTIONS = {
    "sinkhorn": dict(epsilon=0.05, tol=1e-8),
    "sns": dict(epsilon=0.05, tol=1e-8),
    "emd": dict(tol=1e-9),
    "sparsity_constrained": dict(k=3, gamma=0.5),
}
RELAXED = {"sparsity_constrained"}  # marginal error by design (see module docstring)
STARVED = {  # options that leave each iterative method short of tol
    "sinkhorn": dict(epsilon=0.01, tol=1e-12, max_iter=2),
    "sns": dict(epsilon=0.01, tol=1e-12, max_iter=1, n_sinkhorn=1, auto_switch=False),
}


def _problems():
    rng = np.random.default_rng(2024)
    out = []
    for n, m, dtype in ((12, 9, np.float64), (30, 25, np.float64), (20, 20, np.float32)):
        x, y = rng.random((n, 2)), rng.random((m, 2))
        C = ((x[:, None] - y[None]) ** 2).sum(-1).astype(dtype)
        a = rng.random(n) + 0.1
        b = rng.random(m) + 0.1
        a, b = (a / a.sum()).astype(dtype), (b / b.sum()).astype(dtype)
        out.append((a, b, C))
    a, b, C = out[0]
    a = a.copy()
    a[[1, 4]] = 0  # zero weights
    out.append((a / a.sum(), b, C))
    return out


def _plan_error(res, a, b) -> float:
    P = np.asarray(res.plan, dtype=np.float64)
    return float(np.abs(P.sum(1) - a).sum() + np.abs(P.sum(0) - b).sum())


def test_every_registered_method_is_covered():
    assert set(otsolve.available_methods()) == set(OPTIONS)


@pytest.mark.parametrize("method", sorted(OPTIONS))
@pytest.mark.parametrize("case", range(4))
def test_converged_means_the_returned_plan_meets_tol(method, case):
    a, b, C = _problems()[case]
    opts = dict(OPTIONS[method])
    if method != "sinkhorn" and C.dtype == np.float32:
        C, a, b = C.astype(np.float64), a.astype(np.float64), b.astype(np.float64)
        a, b = a / a.sum(), b / b.sum()
    if C.dtype == np.float32:
        opts["tol"] = 1e-6
    eps = opts.pop("epsilon", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        res = otsolve.solve(a, b, C, epsilon=eps, method=method, **opts)
    assert isinstance(res, OTResult)
    for field in OTResult._core:
        getattr(res, field)  # every core field is present
    err = _plan_error(res, a.astype(np.float64), b.astype(np.float64))
    assert np.isfinite(res.marginal_error)
    # the reported error is the returned plan's (up to the rounding of a dense re-summation)
    assert abs(res.marginal_error - err) <= 1e-6 * max(err, 1e-9) + 64 * np.finfo(C.dtype).eps
    if method in RELAXED:
        return
    if res.converged:
        tol = getattr(res, "tol", None) or opts.get("tol")
        assert err <= tol * (1 + 1e-6), (err, tol)


@pytest.mark.parametrize("method", sorted(STARVED))
def test_non_convergence_is_reported_and_warned(method):
    a, b, C = _problems()[1]
    opts = dict(STARVED[method])
    eps = opts.pop("epsilon")
    with pytest.warns(RuntimeWarning):
        res = otsolve.solve(a, b, C, epsilon=eps, method=method, **opts)
    assert not res.converged and res.status != "converged"
    assert _plan_error(res, a, b) > opts["tol"]


BAD = {
    "nan cost": lambda a, b, C: (a, b, np.where(C > C.mean(), np.nan, C)),
    "negative weight": lambda a, b, C: (np.r_[-a[0], a[1:]], b, C),
    "unequal masses": lambda a, b, C: (a, 2 * b, C),
    "wrong shape": lambda a, b, C: (a[:-1], b, C),
    "inf cost": lambda a, b, C: (a, b, np.where(C > C.mean(), np.inf, C)),
}


@pytest.mark.parametrize("method", sorted(OPTIONS))
@pytest.mark.parametrize("bad", sorted(BAD))
def test_bad_input_is_rejected_the_same_way(method, bad):
    a, b, C = _problems()[0]
    a, b, C = BAD[bad](a, b, C)
    opts = dict(OPTIONS[method])
    eps = opts.pop("epsilon", None)
    with pytest.raises(ValueError):
        otsolve.solve(a, b, C, epsilon=eps, method=method, **opts)


@pytest.mark.parametrize("method", ["sinkhorn", "sns"])
@pytest.mark.parametrize("epsilon", [0.0, -1.0, float("nan")])
def test_entropic_methods_reject_bad_epsilon(method, epsilon):
    a, b, C = _problems()[0]
    with pytest.raises(ValueError, match="epsilon"):
        otsolve.solve(a, b, C, epsilon=epsilon, method=method)


def test_batched_problems_follow_the_same_contract():
    rng = np.random.default_rng(7)
    C = rng.random((6, 15, 12)).astype(np.float32)
    C[2] *= 5
    res = otsolve.Sinkhorn()(otsolve.BatchedLinearProblem(C, epsilon=0.05))
    assert res.plan.shape == (6, 15, 12) and res.plan.dtype == np.float32
    # the exact plans of the returned (float32) potentials, in float64
    f, g = res.f.astype(np.float64), res.g.astype(np.float64)
    P = np.exp((f[:, :, None] + g[:, None, :] - C.astype(np.float64)) / 0.05 - 1)
    errs = np.abs(P.sum(2) - 1 / 15).sum(1) + np.abs(P.sum(1) - 1 / 12).sum(1)
    np.testing.assert_allclose(res.marginal_errors, errs, rtol=0.1, atol=1e-7)  # float32 re-summation
    assert np.all(errs[res.converged_each] <= res.tol_each[res.converged_each] * (1 + 1e-3))
