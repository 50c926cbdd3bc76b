"""LightSB training objective and its analytic gradient (Korotin, Gushchin & Burnaev, ICLR 2024).

Parameters (as in the released code): ``ell`` (K,) with ``log alpha = ell / eps``; ``r`` (K, D);
the covariances ``S_k`` either log-diagonal ``s`` (K, D) with ``S = exp(s)``, or full through a
Cholesky factor ``T`` (K, D, D): ``S = L L^T``, ``L = tril(T, -1) + diag(exp(diag T))``.

Objective on minibatches x0 (N, D) ~ p0 and x1 (M, D) ~ p1 (the paper's Alg. 1)::

    L(theta) = mean_n log c_theta(x0_n) - mean_m log v_theta(x1_m)
    log c(x) = LSE_k[log alpha_k + (x^T S_k x + 2 r_k^T x) / (2 eps)]
    log v(y) = LSE_k[log alpha_k + log N(y | r_k, eps S_k)]

``L`` equals KL(pi* || pi_theta) up to a theta-free constant. Both log-sum-exps have softmax
weights ``w`` (over x0) and ``u`` (over x1); every gradient below is a weighted moment of the
batch, computed with matrix products (O(B K D) for the diagonal model).
"""
from __future__ import annotations

import math

import numpy as np

from ._xp import logsumexp, softmax

__all__ = ["loss_and_grad", "cholesky_factor"]


def cholesky_factor(T, xp=np):
    """``L = tril(T, -1) + diag(exp(diag T))`` for a stack (K, D, D)."""
    D = T.shape[-1]
    eye = xp.eye(D, dtype=T.dtype)
    diag = xp.exp(xp.diagonal(T, axis1=-2, axis2=-1))
    return xp.tril(T, -1) + diag[:, None, :] * eye


def _loss_and_grad_diag(theta, x0, x1, eps, xp):
    ell, r, s = theta["ell"], theta["r"], theta["s"]
    N, D = x0.shape
    M = x1.shape[0]
    log_alpha = ell / eps
    S, Sinv = xp.exp(s), xp.exp(-s)

    a = log_alpha + ((x0 * x0) @ S.T + 2.0 * (x0 @ r.T)) / (2.0 * eps)          # (N, K)
    y2 = x1 * x1
    quad = y2 @ Sinv.T - 2.0 * (x1 @ (r * Sinv).T) + xp.sum(r * r * Sinv, axis=1)
    b = (log_alpha - 0.5 * D * math.log(2.0 * math.pi * eps) - 0.5 * xp.sum(s, axis=1)
         - quad / (2.0 * eps))                                                     # (M, K)
    loss = xp.mean(logsumexp(a, axis=1, xp=xp)) - xp.mean(logsumexp(b, axis=1, xp=xp))

    W = softmax(a, axis=1, xp=xp) / N
    U = softmax(b, axis=1, xp=xp) / M
    Wbar, Ubar = xp.sum(W, axis=0), xp.sum(U, axis=0)
    Uy, Uy2 = U.T @ x1, U.T @ y2                                                    # (K, D)
    g_ell = (Wbar - Ubar) / eps
    g_r = (W.T @ x0 - Sinv * (Uy - Ubar[:, None] * r)) / eps
    # sum_m U (y - r)^2, expanded so that only (K, D) products are formed
    sq = Uy2 - 2.0 * r * Uy + Ubar[:, None] * r * r
    g_s = S * ((W.T @ (x0 * x0)) / (2.0 * eps)) + 0.5 * Ubar[:, None] - Sinv * sq / (2.0 * eps)
    return loss, {"ell": g_ell, "r": g_r, "s": g_s}


def _loss_and_grad_full(theta, x0, x1, eps, xp):
    ell, r, T = theta["ell"], theta["r"], theta["T"]
    N, D = x0.shape
    M = x1.shape[0]
    log_alpha = ell / eps
    L = cholesky_factor(T, xp)
    Linv = xp.linalg.inv(L)
    Z = x0[None] @ L                                                              # (K, N, D) = L^T x
    a = log_alpha + (xp.sum(Z * Z, axis=2).T + 2.0 * (x0 @ r.T)) / (2.0 * eps)
    d = x1[None] - r[:, None, :]                                                  # (K, M, D)
    V = d @ xp.swapaxes(Linv, 1, 2)                                               # L^{-1} d
    logdet = 2.0 * xp.sum(xp.diagonal(T, axis1=1, axis2=2), axis=1)
    b = (log_alpha - 0.5 * D * math.log(2.0 * math.pi * eps) - 0.5 * logdet
         - xp.sum(V * V, axis=2).T / (2.0 * eps))
    loss = xp.mean(logsumexp(a, axis=1, xp=xp)) - xp.mean(logsumexp(b, axis=1, xp=xp))

    W = softmax(a, axis=1, xp=xp) / N
    U = softmax(b, axis=1, xp=xp) / M
    Wbar, Ubar = xp.sum(W, axis=0), xp.sum(U, axis=0)
    P = xp.swapaxes(Linv, 1, 2) @ Linv                                            # S^{-1}
    Gc = (x0.T[None] * W.T[:, None, :]) @ x0 / (2.0 * eps)                        # sum W x x^T / 2eps
    Ud = U.T[:, :, None] * d
    Dm = xp.swapaxes(Ud, 1, 2) @ d                                                # sum U d d^T
    G = Gc - P @ Dm @ P / (2.0 * eps)                                             # dL/dS (symmetric)
    gL = 2.0 * (G @ L)
    eye = xp.eye(D, dtype=T.dtype)
    gdiag = xp.diagonal(gL, axis1=1, axis2=2) * xp.exp(xp.diagonal(T, axis1=1, axis2=2)) + Ubar[:, None]
    g_T = xp.tril(gL, -1) + gdiag[:, None, :] * eye
    g_r = (W.T @ x0 - (P @ xp.sum(Ud, axis=1)[:, :, None])[:, :, 0]) / eps
    g_ell = (Wbar - Ubar) / eps
    return loss, {"ell": g_ell, "r": g_r, "T": g_T}


def loss_and_grad(theta: dict, x0, x1, eps: float, xp=np):
    """Minibatch objective ``L(theta)`` (a 0-d array) and its gradient (dict like ``theta``)."""
    if "s" in theta:
        return _loss_and_grad_diag(theta, x0, x1, eps, xp)
    return _loss_and_grad_full(theta, x0, x1, eps, xp)
