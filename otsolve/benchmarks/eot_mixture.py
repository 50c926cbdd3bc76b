"""Entropic-OT pairs with a known optimal plan (the construction of Gushchin et al., NeurIPS 2023
Datasets & Benchmarks, arXiv:2306.10161, rebuilt here with our own random instances).

Given a source ``P0 = sum_j q_j N(m_j, Q_j)`` and a Schrödinger potential
``phi*(y) = sum_k p_k N(y | mu_k, Sigma_k)``, the plan::

    pi*(y | x) ∝ N(y | x, eps I) phi*(y) = sum_k w_k(x) N(y | C_k Sigma_k^-1 mu_k + C_k x / eps, C_k)
    C_k = (I / eps + Sigma_k^-1)^-1,   w_k(x) ∝ p_k N(x | mu_k, Sigma_k + eps I)

has the form ``exp(<x, y>/eps) v(y) / c(x)`` and so is the entropic-OT plan (cost ||x-y||^2/2,
regularization eps; equivalently the static Schrödinger bridge of ``sqrt(eps) W``) between P0 and
its own second marginal P1, which is the target. Its adjusted potential is exactly a LightSB
mixture with full covariances (:meth:`EOTMixture.lightsb_params`).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validation import check_epsilon, check_finite, check_positive_int, renamed_kwarg

__all__ = ["EOTMixture", "eot_mixture"]


def _random_spd(rng, n: int, dim: int, low: float, high: float):
    """n random SPD matrices U diag(lam) U^T: Haar-random U, lam log-uniform in [low, high]."""
    out = np.empty((n, dim, dim))
    for i in range(n):
        q, rr = np.linalg.qr(rng.standard_normal((dim, dim)))
        q = q * np.sign(np.diag(rr))  # Haar measure (sign fix of the QR factor)
        lam = np.exp(rng.uniform(np.log(low), np.log(high), size=dim))
        out[i] = (q * lam) @ q.T
    return 0.5 * (out + out.transpose(0, 2, 1))


def _gauss_factors(covs):
    """(inverse Cholesky factors, log-determinants) of a stack of SPD matrices."""
    chol = np.linalg.cholesky(covs)
    eye = np.broadcast_to(np.eye(covs.shape[-1]), covs.shape)
    linv = np.linalg.solve(chol, eye)
    return linv, 2 * np.sum(np.log(np.diagonal(chol, axis1=1, axis2=2)), axis=1)


def _log_gauss(x, mean, linv, logdet):
    """log N(x | mean_k, cov_k) for x (B, D) and K components given ``linv_k = chol(cov_k)^-1``."""
    D = x.shape[1]
    out = np.empty((x.shape[0], mean.shape[0]))
    for k in range(mean.shape[0]):
        z = x @ linv[k].T - linv[k] @ mean[k]
        out[:, k] = -0.5 * np.sum(z * z, axis=1)
    return out - 0.5 * (D * math.log(2 * math.pi) + logdet)


def _lse(a, axis=-1):
    m = np.max(a, axis=axis, keepdims=True)
    return np.squeeze(m, axis) + np.log(np.sum(np.exp(a - m), axis=axis))


class EOTMixture:
    """A ground-truth entropic-OT instance; built by :func:`eot_mixture`.

    Attributes
    ----------
    dim, epsilon, seed
        ``seed`` is the int that identifies the instance (the ``rng`` it was built from).
    input_weights, input_means, input_covs : arrays (K0,), (K0, D), (K0, D, D)
        The source Gaussian mixture P0.
    potential_weights, potential_means, potential_covs : arrays (K,), (K, D), (K, D, D)
        The Schrödinger potential ``phi*`` (non-diagonal covariances).
    cond_covs : array (K, D, D)
        ``C_k``, the covariance of component k of ``pi*(. | x)``.
    test_inputs : array (n_test, D)
        Fixed, seeded inputs for conditional metrics.
    target_variance : float
        ``Var(P1) = tr Cov(P1)`` by the law of total covariance (Monte Carlo over x ~ P0 with the
        exact conditional moments).
    """

    def __init__(self, dim, epsilon, seed, input_weights, input_means, input_covs,
                 potential_weights, potential_means, potential_covs, n_test=1000, n_variance=20000):
        self.dim, self.epsilon, self.seed = dim, epsilon, seed
        self.input_weights, self.input_means, self.input_covs = input_weights, input_means, input_covs
        self.potential_weights = potential_weights
        self.potential_means, self.potential_covs = potential_means, potential_covs
        eps, eye = epsilon, np.eye(dim)
        self._in_chol = np.linalg.cholesky(input_covs)
        prec = np.linalg.inv(potential_covs)
        self.cond_covs = np.linalg.inv(eye / eps + prec)
        self.cond_covs = 0.5 * (self.cond_covs + self.cond_covs.transpose(0, 2, 1))
        self.cond_covs.setflags(write=False)
        self._cond_chol = np.linalg.cholesky(self.cond_covs)
        self._cond_shift = np.einsum("kde,ke->kd", self.cond_covs @ prec, potential_means)  # C S^-1 mu
        self._w_linv, self._w_logdet = _gauss_factors(potential_covs + eps * eye)
        self._log_p = np.log(potential_weights)
        self._rng = np.random.default_rng([seed, 1])
        self.test_inputs = self.sample_input(n_test, np.random.default_rng([seed, 2]))
        self.target_variance = self._variance(np.random.default_rng([seed, 3]), n_variance)

    # -------------------------------------------------------------- samplers
    def sample_input(self, n: int, rng: Any = None) -> np.ndarray:
        """n samples of P0 (a stateful generator of the instance is used when rng is None)."""
        rng = self._rng if rng is None else np.random.default_rng(rng)
        j = rng.choice(len(self.input_weights), size=n, p=self.input_weights)
        xi = rng.standard_normal((n, self.dim))
        out = self.input_means[j]
        for c in range(len(self.input_weights)):  # group by component: no (n, D, D) gather
            sel = np.nonzero(j == c)[0]
            out[sel] += xi[sel] @ self._in_chol[c].T
        return out

    def conditional_log_weights(self, x) -> np.ndarray:
        """``log w_k(x)`` (normalized), (B, K)."""
        x = np.asarray(x, dtype=np.float64)
        lw = self._log_p + _log_gauss(x, self.potential_means, self._w_linv, self._w_logdet)
        return lw - _lse(lw, axis=1)[:, None]

    def _component_means(self, x):
        K, D = self._cond_shift.shape
        lin = (x @ self.cond_covs.reshape(K * D, D).T).reshape(x.shape[0], K, D)
        return self._cond_shift[None] + lin / self.epsilon

    def sample_conditional(self, x, n: int | None = None, rng: Any = None) -> np.ndarray:
        """Samples of ``pi*(. | x)``: (B, D) for n None, else (B, n, D). Components by Gumbel-max."""
        rng = self._rng if rng is None else np.random.default_rng(rng)
        x = np.asarray(x, dtype=np.float64)
        m = 1 if n is None else n
        B = x.shape[0]
        lw = self.conditional_log_weights(x)
        k = np.argmax(lw[:, None, :] + rng.gumbel(size=(B, m, lw.shape[1])), axis=2).reshape(-1)
        xi = rng.standard_normal((B * m, self.dim))
        rows = np.repeat(np.arange(B), m)
        y = np.empty_like(xi)
        eps = self.epsilon
        for j in range(lw.shape[1]):  # group by component: only the drawn component's mean
            sel = np.nonzero(k == j)[0]
            if sel.size:
                xj = x[rows[sel]]
                y[sel] = self._cond_shift[j] + xj @ (self.cond_covs[j].T / eps) + xi[sel] @ self._cond_chol[j].T
        y = y.reshape(B, m, self.dim)
        return y[:, 0] if n is None else y

    def sample_target(self, n: int, rng: Any = None) -> np.ndarray:
        """n samples of P1 (x ~ P0, then y ~ pi*(. | x))."""
        rng = self._rng if rng is None else np.random.default_rng(rng)
        return self.sample_conditional(self.sample_input(n, rng), rng=rng)

    def sample_pairs(self, n: int, rng: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """n pairs (x, y) ~ pi*."""
        rng = self._rng if rng is None else np.random.default_rng(rng)
        x = self.sample_input(n, rng)
        return x, self.sample_conditional(x, rng=rng)

    # -------------------------------------------------------------- exact quantities
    def conditional_moments(self, x) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean (B, D) and covariance (B, D, D) of ``pi*(. | x)``."""
        x = np.asarray(x, dtype=np.float64)
        w = np.exp(self.conditional_log_weights(x))
        mk = self._component_means(x)
        mean = np.einsum("bk,bkd->bd", w, mk)
        dev = mk - mean[:, None]
        K, D = w.shape[1], self.dim
        within = (w @ self.cond_covs.reshape(K, D * D)).reshape(-1, D, D)
        return mean, within + (dev * w[:, :, None]).transpose(0, 2, 1) @ dev

    def lightsb_params(self) -> dict:
        """The exact adjusted potential in LightSB form (full S):
        ``v*(y) = exp(-||y||^2 / 2 eps) phi*(y) = sum_k alpha_k N(y | r_k, eps S_k)`` with
        ``eps S_k = C_k``, ``r_k = C_k Sigma_k^-1 mu_k``,
        ``alpha_k = p_k (2 pi eps)^{D/2} N(0 | mu_k, Sigma_k + eps I)``."""
        eps, D = self.epsilon, self.dim
        log_n0 = _log_gauss(np.zeros((1, D)), self.potential_means, self._w_linv, self._w_logdet)[0]
        log_alpha = self._log_p + 0.5 * D * math.log(2 * math.pi * eps) + log_n0
        return {"log_alpha": log_alpha, "r": self._cond_shift.copy(), "S": self.cond_covs / eps}

    def drift(self, x, t) -> np.ndarray:
        """Ground-truth SB drift ``eps grad_x log sum_k p_k N(x | mu_k, Sigma_k + eps (1 - t) I)``."""
        x = np.asarray(x, dtype=np.float64)
        t = float(t)
        covs = self.potential_covs + self.epsilon * (1.0 - t) * np.eye(self.dim)
        linv, logdet = _gauss_factors(covs)
        lw = self._log_p + _log_gauss(x, self.potential_means, linv, logdet)
        w = np.exp(lw - _lse(lw, axis=1)[:, None])
        prec = np.linalg.inv(covs)
        grads = -np.einsum("kde,bke->bkd", prec, x[:, None, :] - self.potential_means[None])
        return self.epsilon * np.einsum("bk,bkd->bd", w, grads)

    def _variance(self, rng, n: int) -> float:
        # tr Cov(P1) = E_x tr Cov(y|x) + tr Cov_x E[y|x]; only traces are needed:
        # tr Cov(y|x) = sum_k w_k tr C_k + sum_k w_k ||m_k(x) - m(x)||^2
        x = self.sample_input(n, rng)
        tr_c = np.trace(self.cond_covs, axis1=1, axis2=2)
        tr_within, means = 0.0, []
        for i in range(0, n, 2000):
            xb = x[i:i + 2000]
            w = np.exp(self.conditional_log_weights(xb))
            mk = self._component_means(xb)
            m = np.einsum("bk,bkd->bd", w, mk)
            tr_within += float(np.sum(w @ tr_c) + np.sum(w * np.sum((mk - m[:, None]) ** 2, axis=2)))
            means.append(m)
        means = np.concatenate(means)
        return tr_within / n + float(np.sum(np.var(means, axis=0)))

    def __repr__(self) -> str:
        return (f"EOTMixture(dim={self.dim}, epsilon={self.epsilon}, seed={self.seed}, "
                f"K0={len(self.input_weights)}, K={len(self.potential_weights)}, "
                f"Var(P1)={self.target_variance:.4g})")


def eot_mixture(
    dim: int,
    epsilon: float,
    rng: Any = 0,
    *,
    seed: Any = None,
    n_input_components: int = 3,
    n_potential_components: int = 5,
    input_scale: float = 1.0,
    potential_scale: float = 1.0,
    cov_range: tuple[float, float] = (0.1, 1.0),
    n_test: int = 1000,
    diagonal_potential: bool = False,
) -> EOTMixture:
    """Build a seeded entropic-OT instance with a known optimal plan (see module docstring).

    Parameters
    ----------
    dim : int
    epsilon : float
        Regularization (SB noise level); > 0.
    rng : int or Generator, default 0
        The instance: an int >= 0 seeds the parameters, the fixed test inputs and the
        Monte-Carlo ``Var(P1)`` (the same int gives the same instance; it is recorded as
        ``.seed``); a Generator draws that int.
    seed : deprecated
        Old name of ``rng``.
    n_input_components, n_potential_components : int
        K0 components of P0 and K components of ``phi*``.
    input_scale, potential_scale : float
        Per-coordinate std of the random means ``m_j`` (P0) and ``mu_k`` (phi*).
    cov_range : (low, high)
        Eigenvalues of every covariance are log-uniform in this range; eigenvectors Haar-random,
        so the ``Sigma_k`` are non-diagonal (a diagonal LightSB is mis-specified).
    n_test : int
        Number of fixed test inputs.
    diagonal_potential : bool
        Keep only the diagonals of the ``Sigma_k`` (same random draws otherwise): then
        ``S*_k = (I + eps Sigma_k^-1)^-1`` is diagonal and a diagonal LightSB is well-specified.

    Returns
    -------
    EOTMixture

    References
    ----------
    N. Gushchin et al., "Building the Bridge of Schrödinger: A Continuous Entropic Optimal Transport
    Benchmark", NeurIPS 2023 Datasets and Benchmarks, arXiv:2306.10161.
    """
    dim = check_positive_int(dim, "dim")
    epsilon = check_epsilon(epsilon)
    K0 = check_positive_int(n_input_components, "n_input_components")
    K = check_positive_int(n_potential_components, "n_potential_components")
    input_scale = check_epsilon(input_scale, "input_scale")
    potential_scale = check_epsilon(potential_scale, "potential_scale")
    low, high = (check_epsilon(c, "cov_range") for c in cov_range)
    if low > high:
        raise ValueError(f"cov_range must be (low, high) with low <= high, got {cov_range!r}")
    if seed is not None:  # (rng's default 0 cannot tell "not given" apart: seed wins)
        rng = renamed_kwarg(None, seed, "rng", "seed")
    if isinstance(rng, np.random.Generator):
        rng = int(rng.integers(2**63 - 1))
    seed = check_positive_int(rng, "rng", minimum=0)
    rng = np.random.default_rng([seed, 0])
    q = rng.dirichlet(np.full(K0, 5.0))
    m = input_scale * rng.standard_normal((K0, dim))
    Q = _random_spd(rng, K0, dim, low, high)
    p = rng.dirichlet(np.full(K, 5.0))
    mu = potential_scale * rng.standard_normal((K, dim))
    Sig = _random_spd(rng, K, dim, low, high)
    if diagonal_potential:
        Sig = np.einsum("kii->ki", Sig)[:, :, None] * np.eye(dim)
    for arr, name in ((m, "means"), (mu, "means")):
        check_finite(arr, name)
    return EOTMixture(dim, epsilon, seed, q, m, Q, p, mu, Sig, n_test=check_positive_int(n_test, "n_test"))
