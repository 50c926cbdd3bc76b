"""Plain NumPy references for the compiled kernels (same signatures as ``otsolve._ext_sinkhorn``).

They define what the C++ kernels must compute; tests compare the two on random inputs.
Plan convention: ``P_ij = exp((f_i + g_j - C_ij)/eps - 1)``.

Unbalanced problems (``rho_a`` / ``rho_b`` finite: KL-relaxed marginals, Chizat et al. 2018;
Séjourné et al. 2019) use the same sweeps with damped updates, see
:mod:`otsolve.problems.marginals`: the row update is
``f_i = eps (log a_i + 1/2 + lam (1/2 - lse_i))`` with ``lam = rho / (rho + eps)`` (``lam = 1``
is the balanced update), and the error is the L1 distance of the plan's marginals to their
optimality targets ``a~ = a exp(-(f - eps log a - eps/2)/rho)`` (``a`` when balanced). After
each update of both potentials, an unbalanced problem's potentials are shifted by the optimal
translation ``(f + t, g - t)`` (:func:`otsolve.problems.marginals.translation`; the plan is
unchanged), which removes the slow mass mode of unbalanced Sinkhorn.
"""
from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

from ..problems.marginals import damping, marginal_target, translation

__all__ = [
    "sinkhorn_dense",
    "sinkhorn_pointcloud",
    "sinkhorn_scaling_dense",
    "symmetric_dense",
    "symmetric_pointcloud",
    "symmetric_scaling_dense",
    "Relaxation",
    "plan_stats_dense",
    "plan_stats_pointcloud",
    "plan_cost_grad_pointcloud",
    "pointcloud_cost",
]


def pointcloud_cost(X, YT, kind: int, scale: float):
    """Cost matrix of the compiled point-cloud kernels: kind 0 = sqeuclidean, 1 = euclidean."""
    X = np.asarray(X, dtype=np.float64)
    Y = np.asarray(YT, dtype=np.float64).T
    d2 = ((X[:, None, :] - Y[None, :, :]) ** 2).sum(-1)
    if kind == 1:
        d2 = np.sqrt(d2)
    elif kind != 0:
        raise ValueError("unknown cost kind")
    return d2 * scale


class Relaxation:
    """Over-relaxation controller, the same rule as ``Relaxation`` in csrc/sinkhorn_kernels.hpp.

    ``omega > 0`` is used as given; ``omega <= 0`` is adaptive: plain steps until the linear rate
    kappa is measurable, then ``2 / (1 + sqrt(1 - kappa))`` (capped at 1.9), refined with Young's
    relation ``(rho + w - 1)^2 = rho w^2 kappa`` from the rate rho observed at relaxation w (cap
    1.95), and back to plain steps whenever the error grows tenfold from its best; for good when
    100 relaxed iterations bring no 10% gain (rounding, e.g. of float32 costs, gives the relaxed
    map a higher error floor than plain Sinkhorn's).
    """

    def __init__(self, omega: float) -> None:
        self.adaptive = not omega > 0
        self.omega = 1.0 if self.adaptive else float(omega)
        self.reset_state()

    def reset_state(self) -> None:
        self.plain: list[float] = []
        self.relaxed: list[float] = []
        self.best = np.inf
        self.stall_ref, self.stall_count = np.inf, 0

    def observe(self, err: float) -> None:
        if not self.adaptive:
            return
        if not np.isfinite(err):
            self.omega = 1.0
            self.reset_state()
            return
        if self.omega == 1.0:
            self.plain.append(err)
            lag = 5
            if len(self.plain) > 10:
                prev = self.plain[-1 - lag]
                kappa = (err / prev) ** (1.0 / lag) if prev > 0 else 1.0
                if 0.0 < kappa < 0.999:
                    self.omega = min(1.9, 2.0 / (1.0 + np.sqrt(1.0 - kappa)))
                    self.best = err
                    self.stall_ref, self.stall_count = err, 0
                    self.relaxed = [err]
            return
        self.best = min(self.best, err)
        if err > 10.0 * self.best:
            self.omega = 1.0
            self.reset_state()
            return
        if err < 0.9 * self.stall_ref:
            self.stall_ref, self.stall_count = err, 0
        else:
            self.stall_count += 1
            if self.stall_count >= 100:
                self.omega = 1.0
                self.reset_state()
                self.adaptive = False
                return
        self.relaxed.append(err)
        lag = 10
        if len(self.relaxed) > lag:
            prev = self.relaxed[-1 - lag]
            rho = (err / prev) ** (1.0 / lag) if prev > 0 else 1.0
            w = self.omega
            if w - 1.0 < rho < 1.0:
                kappa = (rho + w - 1.0) ** 2 / (rho * w * w)
                if kappa < 1.0:
                    wn = min(1.95, 2.0 / (1.0 + np.sqrt(1.0 - kappa)))
                    if wn > w + 0.01:
                        self.omega = wn
                        self.relaxed = [err]


def _marginal_errors(C, f, g, eps, a, b, rho_a=np.inf, rho_b=np.inf):
    L = (f[:, None] + g[None, :] - C) / eps - 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        row = np.exp(np.minimum(logsumexp(L, axis=1), 709.0))
        col = np.exp(np.minimum(logsumexp(L, axis=0), 709.0))
        ta, tb = marginal_target(a, f, eps, rho_a), marginal_target(b, g, eps, rho_b)
    return float(np.abs(row - ta).sum()), float(np.abs(col - tb).sum())


def _update(log_w, lse, eps, lam):
    """Block maximiser ``eps (log w + 1/2 + lam (1/2 - lse))`` (balanced: ``eps (log w + 1 - lse)``)."""
    if lam == 1.0:
        return eps * (log_w + 1.0 - lse)
    return eps * (log_w + 0.5 + lam * (0.5 - lse))


def sinkhorn_dense(C, log_a, log_b, f, g, eps, max_iter, tol, n_threads=0, omega=1.0, rho_a=np.inf,
                   rho_b=np.inf):
    """(Over-relaxed) log-domain Sinkhorn updating ``f``, ``g`` in place.

    One update: ``f <- f + w (f_sink - f)`` then ``g <- g + w (g_sink - g)`` with the exact
    block maximisers ``f_sink``, ``g_sink`` (damped by ``rho / (rho + eps)`` for a KL-relaxed
    marginal of strength ``rho``; ``inf`` = balanced), then, when unbalanced, the translation
    ``f + t``, ``g - t`` maximising the dual along that line. Returns ``(n_iter, status, errors)``:
    ``errors[k]`` is the L1 error of both marginals of the iterate after k updates (to their
    optimality targets when unbalanced); status 0 = converged (error <= tol, iterate left
    unchanged), 1 = max_iter updates done, 2 = diverged.
    """
    C = np.asarray(C, dtype=np.float64)
    a, b = np.exp(log_a), np.exp(log_b)
    lam_a, lam_b = damping(eps, rho_a), damping(eps, rho_b)
    errors: list[float] = []
    relax = Relaxation(omega)
    with np.errstate(invalid="ignore"):
        for it in range(max_iter):
            err = sum(_marginal_errors(C, f, g, eps, a, b, rho_a, rho_b))
            errors.append(err)
            if not np.isfinite(err) and it > 0 and (np.isnan(f).any() or np.isnan(g).any()):
                return it, 2, errors
            if err <= tol:
                return it, 0, errors
            w = relax.omega
            f_sink = _update(log_a, logsumexp((g[None, :] - C) / eps, axis=1), eps, lam_a)
            f[:] = np.where((a > 0) & np.isfinite(f), f + w * (f_sink - f), f_sink)
            g_sink = _update(log_b, logsumexp((f[:, None] - C) / eps, axis=0), eps, lam_b)
            g[:] = np.where((b > 0) & np.isfinite(g), g + w * (g_sink - g), g_sink)
            if lam_a != 1.0 or lam_b != 1.0:  # translation-invariant step (unbalanced only)
                t = translation(float(marginal_target(a, f, eps, rho_a).sum()),
                                float(marginal_target(b, g, eps, rho_b).sum()), rho_a, rho_b)
                f += t
                g -= t
            relax.observe(err)
    return max_iter, 1, errors


def sinkhorn_scaling_dense(C, log_a, log_b, f, g, eps, max_iter, tol, n_threads, K, tau=50.0, omega=1.0,
                           rho_a=np.inf, rho_b=np.inf):
    """Reference of the stabilized kernel-domain kernel: the same iterates as ``sinkhorn_dense``
    (absorption only changes how they are stored), balanced or unbalanced (``rho_a``, ``rho_b``).
    Status 3 (underflow) never happens here."""
    return sinkhorn_dense(C, log_a, log_b, f, g, eps, max_iter, tol, n_threads, omega, rho_a, rho_b)


def sinkhorn_pointcloud(X, YT, kind, scale, log_a, log_b, f, g, eps, max_iter, tol, n_threads=0, omega=1.0,
                        rho_a=np.inf, rho_b=np.inf):
    return sinkhorn_dense(pointcloud_cost(X, YT, kind, scale), log_a, log_b, f, g, eps, max_iter, tol,
                          n_threads, omega, rho_a, rho_b)


def symmetric_dense(C, log_a, f, eps, max_iter, tol, n_threads=0, rho=np.inf):
    """Symmetric Sinkhorn for OT(a, a) on a symmetric cost, updating ``f`` in place.

    The optimal potentials of a symmetric problem satisfy f = g; the averaged map
    ``f <- (f + T(f)) / 2`` with ``T(f)_i = eps (log a_i + 1 - LSE_j (f_j - C_ij)/eps)`` converges
    in a handful of iterations (Feydy et al. 2019). ``errors[k]``: L1 error of rows + columns
    (2 x rows) of ``P = exp((f ⊕ f - C)/eps - 1)`` after k updates. Returns (n_iter, status,
    errors), status 0 converged, 1 budget spent, 2 diverged. ``rho`` finite: the unbalanced
    problem (damped ``T``, errors to the marginal targets), as in :func:`sinkhorn_dense`.
    """
    C = np.asarray(C, dtype=np.float64)
    a = np.exp(log_a)
    lam = damping(eps, rho)
    errors: list[float] = []
    it = 0
    with np.errstate(invalid="ignore", divide="ignore"):
        while True:
            lse = logsumexp((f[None, :] - C) / eps, axis=1)
            mass = np.exp(np.minimum(f / eps - 1.0 + lse, 709.0))
            err = 2.0 * float(np.where(a > 0, np.abs(mass - marginal_target(a, f, eps, rho)), 0.0).sum())
            errors.append(err)
            if not np.isfinite(err) and it > 0 and (np.isnan(f).any() or np.isposinf(f).any()):
                return it, 2, errors
            if err <= tol:
                return it, 0, errors
            if it >= max_iter:
                return it, 1, errors
            t = _update(log_a, lse, eps, lam)
            f[:] = np.where((a > 0) & np.isfinite(f), 0.5 * (f + t), t)
            it += 1


def symmetric_pointcloud(X, YT, kind, scale, log_a, f, eps, max_iter, tol, n_threads=0, rho=np.inf):
    return symmetric_dense(pointcloud_cost(X, YT, kind, scale), log_a, f, eps, max_iter, tol, n_threads, rho)


def symmetric_scaling_dense(C, log_a, f, eps, max_iter, tol, n_threads, K, tau=50.0):
    """Reference of the stored-kernel symmetric kernel (csrc/symmetric_kernels.hpp): the same
    iterates as :func:`symmetric_dense` (balanced), which the compiled kernel stores as
    ``f = f0 + eps log u`` with ``K = exp((f0 ⊕ f0 - C)/eps - 1)`` and updates without exp
    (``u <- sqrt(u a / (K u))``). ``K`` is the workspace (unused here)."""
    return symmetric_dense(C, log_a, f, eps, max_iter, tol, n_threads)


def plan_cost_grad_pointcloud(X, YT, kind, scale, f, g, eps, gx, gy, need_x=True, need_y=True, n_threads=0):
    """Envelope gradients of ``Σ P_ij C_ij`` in the points at the fixed plan
    ``P = exp((f ⊕ g - C)/eps - 1)`` (csrc/plan_grad_kernels.hpp): fills ``gx`` (n, d) with
    ``Σ_j w_ij (x_i - y_j)`` and ``gy`` (m, d) with ``Σ_i w_ij (y_j - x_i)``, where
    ``w = 2 scale P`` (kind 0, squared distances) or ``scale P / |x_i - y_j|`` (kind 1; 0 at x_i = y_j)."""
    X64 = np.asarray(X, dtype=np.float64)
    Y = np.asarray(YT, dtype=np.float64).T
    C = pointcloud_cost(X, YT, kind, scale)
    W = np.exp((f[:, None] + g[None, :] - C) / eps - 1.0)
    if kind == 0:
        W = W * (2.0 * scale)
    else:
        D = C / scale
        W = np.where(D > 0, W * scale / np.where(D > 0, D, 1.0), 0.0)
    if need_x:
        gx[:] = W.sum(1)[:, None] * X64 - W @ Y
    if need_y:
        gy[:] = W.sum(0)[:, None] * Y - W.T @ X64


def plan_stats_dense(C, f, g, eps, row, col, n_threads=0):
    """Fill ``row``/``col`` with the marginals of the plan; return (<C,P>, sum P log P)."""
    C = np.asarray(C, dtype=np.float64)
    L = (f[:, None] + g[None, :] - C) / eps - 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        P = np.exp(L)
        plogp = np.where(P > 0, P * L, 0.0)
    row[:] = P.sum(1)
    col[:] = P.sum(0)
    return float((P * C).sum()), float(plogp.sum())


def plan_stats_pointcloud(X, YT, kind, scale, f, g, eps, row, col, n_threads=0):
    return plan_stats_dense(pointcloud_cost(X, YT, kind, scale), f, g, eps, row, col)
