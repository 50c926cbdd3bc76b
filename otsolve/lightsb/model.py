"""Light Schrödinger Bridge (Korotin, Gushchin & Burnaev, "Light Schrödinger Bridge", ICLR 2024).

The adjusted Schrödinger potential is an unnormalized Gaussian mixture
``v(y) = sum_k alpha_k N(y | r_k, eps S_k)``; with it the normalizer ``c(x)``, the conditional plan
``pi(y | x) = sum_k w_k(x) N(y | r_k + S_k x, eps S_k)``, the bridge marginals and the drift are in
closed form. Training minimizes ``E_p0 log c - E_p1 log v`` with Adam and analytic gradients.

All math uses the array namespace of the fitted parameters (NumPy, or CuPy when the model was fitted
on / loaded to CuPy arrays); inputs are moved to that namespace.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._validation import as_float_array, check_epsilon, check_finite, check_positive_int, renamed_kwarg
from ._adam import Adam
from ._objective import cholesky_factor, loss_and_grad
from ._xp import array_namespace, gumbel_argmax, logsumexp, make_rng, softmax, to_numpy

__all__ = ["LightSB", "default_lr"]

_REFILL = 64  # batches drawn per call of a sampler callable
_LR_TABLE = ((0.1, 1e-3), (1.0, 3e-3), (10.0, 6e-2))  # released EOT-benchmark settings


def default_lr(epsilon: float) -> float:
    """Adam step used when ``lr=None``: the released code's EOT-benchmark values
    (1e-3 at eps = 0.1, 3e-3 at eps = 1, 6e-2 at eps = 10), log-log interpolated and clipped.

    The step depends on eps because log alpha is parameterized as ``ell / eps``: Adam's effective
    step on log alpha is about ``lr / eps``.
    """
    le = np.log10([e for e, _ in _LR_TABLE])
    ll = np.log10([v for _, v in _LR_TABLE])
    return float(10 ** np.interp(np.log10(epsilon), le, ll))


def _check_samples(x, dim: int, name: str):
    arr = as_float_array(x, name, ndim=2)
    if arr.shape[1] != dim:
        raise ValueError(f"{name} has dimension {arr.shape[1]} but the model has dim={dim}")
    check_finite(arr, name)
    return arr


class LightSB:
    """Light Schrödinger Bridge between two distributions, from unpaired samples.

    Solves the Schrödinger bridge with reference process ``dX_t = sqrt(eps) dW_t`` (equivalently
    entropic OT with cost ``||x - y||^2 / 2`` and regularization eps) by the method of Korotin,
    Gushchin & Burnaev (ICLR 2024, arXiv:2310.01174).

    Parameters
    ----------
    dim : int
        Dimension D of the data.
    n_components : int, default 50
        Number K of Gaussian components of the adjusted potential.
    epsilon : float, default 0.1
        Noise level eps of the reference Brownian motion (> 0).
    covariance : {"diagonal", "full"}, default "diagonal"
        ``S_k`` log-diagonal (as in every experiment of the paper) or full (Cholesky factor).
    s_init : float, default 1.0
        Initial ``S_k = s_init * I`` (the paper uses 1.0 on the EOT benchmark, 0.1 elsewhere).
    dtype : dtype, optional
        Parameter dtype; by default that of the training data (float32 kept, else float64).

    Attributes
    ----------
    log_alpha : array (K,)
        Log-weights of the (unnormalized) mixture ``v``.
    r : array (K, D)
        Component means of ``v``.
    S : array (K, D) or (K, D, D)
        Covariance factors (diagonal entries, or full matrices); component covariance ``eps * S_k``.
    loss_history_ : ndarray
        Minibatch objective per step of the last ``fit`` (defined up to a constant: not an error).

    Examples
    --------
    >>> import numpy as np, otsolve
    >>> rng = np.random.default_rng(0)
    >>> x0, x1 = rng.normal(size=(2000, 2)), rng.normal(size=(2000, 2)) + 3
    >>> sb = otsolve.LightSB(dim=2, n_components=4, epsilon=0.5).fit(
    ...     x0, x1, n_steps=500, progress=False, rng=0)
    >>> sb.sample(x0[:5]).shape
    (5, 2)
    """

    def __init__(
        self,
        dim: int,
        n_components: int = 50,
        epsilon: float = 0.1,
        *,
        covariance: str = "diagonal",
        s_init: float = 1.0,
        dtype: Any = None,
    ) -> None:
        self.dim = check_positive_int(dim, "dim")
        self.n_components = check_positive_int(n_components, "n_components")
        self.epsilon = check_epsilon(epsilon)
        if covariance not in ("diagonal", "full"):
            raise ValueError(f"covariance must be 'diagonal' or 'full', got {covariance!r}")
        self.covariance = covariance
        self.s_init = check_epsilon(s_init, "s_init")
        self.dtype = None if dtype is None else np.dtype(dtype)
        if self.dtype is not None and self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {self.dtype}")
        self._theta: dict | None = None
        self._xp = np
        self._cache: tuple | None = None
        self.loss_history_ = np.empty(0)

    # ------------------------------------------------------------------ parameters
    def _init_theta(self, r0, xp, dtype) -> None:
        K, D, eps = self.n_components, self.dim, self.epsilon
        theta = {
            "ell": xp.full((K,), eps * math.log(1.0 / K), dtype=dtype),
            "r": xp.array(r0, dtype=dtype),
        }
        if self.covariance == "diagonal":
            theta["s"] = xp.full((K, D), math.log(self.s_init), dtype=dtype)
        else:
            T = xp.zeros((K, D, D), dtype=dtype)
            idx = xp.arange(D)
            T[:, idx, idx] = 0.5 * math.log(self.s_init)
            theta["T"] = T
        self._set_theta(theta, xp)

    def _set_theta(self, theta: dict, xp) -> None:
        self._theta, self._xp, self._cache = theta, xp, None

    def _require_fitted(self) -> dict:
        if self._theta is None:
            raise ValueError("the model has no parameters yet: call fit() or LightSB.from_params()")
        return self._theta

    @property
    def log_alpha(self):
        return self._require_fitted()["ell"] / self.epsilon

    @property
    def r(self):
        return self._require_fitted()["r"]

    @property
    def S(self):
        th, xp = self._require_fitted(), self._xp
        if "s" in th:
            return xp.exp(th["s"])
        L = cholesky_factor(th["T"], xp)
        return L @ xp.swapaxes(L, 1, 2)

    def _components(self):
        """(log_alpha, r, lam, U, r_rot): ``S_k = U_k diag(lam_k) U_k^T`` (U None: diagonal),
        ``r_rot_k = U_k^T r_k``; cached until the parameters change."""
        if self._cache is None:
            th, xp = self._require_fitted(), self._xp
            log_alpha, r = th["ell"] / self.epsilon, th["r"]
            if "s" in th:
                self._cache = (log_alpha, r, xp.exp(th["s"]), None, r)
            else:
                lam, U = xp.linalg.eigh(self.S)
                lam = xp.maximum(lam, xp.finfo(lam.dtype).tiny)
                r_rot = xp.sum(U * r[:, :, None], axis=1)
                self._cache = (log_alpha, r, lam, U, r_rot)
        return self._cache

    @classmethod
    def from_params(cls, log_alpha, r, S, epsilon: float) -> "LightSB":
        """Model with given parameters: ``log_alpha`` (K,), ``r`` (K, D), and ``S`` as (K, D)
        diagonals or (K, D, D) symmetric positive-definite matrices (then ``covariance='full'``)."""
        xp = array_namespace(log_alpha, r, S)
        r = as_float_array(r, "r", ndim=2)
        K, D = r.shape
        S = as_float_array(S, "S")
        log_alpha = as_float_array(log_alpha, "log_alpha", ndim=1)
        dtype = r.dtype
        if log_alpha.shape != (K,):
            raise ValueError(f"log_alpha has shape {tuple(log_alpha.shape)}, expected ({K},)")
        full = S.ndim == 3
        if S.shape not in ((K, D), (K, D, D)):
            raise ValueError(f"S has shape {tuple(S.shape)}, expected ({K}, {D}) or ({K}, {D}, {D})")
        for arr, name in ((log_alpha, "log_alpha"), (r, "r"), (S, "S")):
            check_finite(arr, name)
        model = cls(D, K, epsilon, covariance="full" if full else "diagonal", dtype=dtype)
        theta = {"ell": xp.asarray(log_alpha * model.epsilon, dtype=dtype), "r": xp.array(r, dtype=dtype)}
        if full:
            try:
                L = xp.linalg.cholesky(xp.asarray(S, dtype=dtype))
            except Exception as exc:  # numpy LinAlgError / cupy variants
                raise ValueError(f"S is not symmetric positive definite: {exc}") from None
            if not bool(xp.all(xp.isfinite(L))):
                raise ValueError("S is not symmetric positive definite")
            idx = xp.arange(D)
            L[:, idx, idx] = xp.log(L[:, idx, idx])
            theta["T"] = L
        else:
            if bool(xp.any(S <= 0)):
                raise ValueError("S (diagonal) must be positive")
            theta["s"] = xp.log(xp.asarray(S, dtype=dtype))
        model._set_theta(theta, xp)
        return model

    # ------------------------------------------------------------------ closed forms
    def _prep(self, x, name: str):
        self._require_fitted()
        x = _check_samples(x, self.dim, name)
        x = self._xp.asarray(x, dtype=self._theta["r"].dtype)
        return x

    def _rot(self, x, U):
        """x (B, D) in every component's eigenbasis: (B, K, D); None for the diagonal model."""
        if U is None:
            return None
        return self._xp.swapaxes(x[None] @ U, 0, 1)

    def _wsum(self, x, xr, coef, power: int):
        """``sum_e coef_ke * xrot_bke**power`` for power 1 or 2 (B, K)."""
        if xr is None:
            return (x if power == 1 else x * x) @ coef.T
        return self._xp.sum(coef[None] * (xr if power == 1 else xr * xr), axis=2)

    def _normalizer_logits(self, x):
        log_alpha, _, lam, U, r_rot = self._components()
        xr = self._rot(x, U)
        return log_alpha + (self._wsum(x, xr, lam, 2) + 2.0 * self._wsum(x, xr, r_rot, 1)) / (2.0 * self.epsilon)

    def log_normalizer(self, x):
        """``log c(x) = log int exp(<x, y>/eps) v(y) dy`` (closed form), shape (B,)."""
        x = self._prep(x, "x")
        return logsumexp(self._normalizer_logits(x), axis=1, xp=self._xp)

    def log_potential(self, y):
        """``log v(y) = log sum_k alpha_k N(y | r_k, eps S_k)`` (the adjusted potential), shape (B,)."""
        y = self._prep(y, "y")
        xp, eps = self._xp, self.epsilon
        log_alpha, _, lam, U, r_rot = self._components()
        yr = self._rot(y, U)
        quad = (self._wsum(y, yr, 1.0 / lam, 2) - 2.0 * self._wsum(y, yr, r_rot / lam, 1)
                + xp.sum(r_rot * r_rot / lam, axis=1))
        logits = (log_alpha - 0.5 * self.dim * math.log(2.0 * math.pi * eps)
                  - 0.5 * xp.sum(xp.log(lam), axis=1) - quad / (2.0 * eps))
        return logsumexp(logits, axis=1, xp=xp)

    def _component_means(self, x):
        """``r_k + S_k x`` for every component: (B, K, D)."""
        _, r, lam, U, r_rot = self._components()
        if U is None:
            return r[None] + lam[None] * x[:, None, :]
        xr = self._rot(x, U)
        return r[None] + (U[None] @ (lam[None] * xr)[..., None])[..., 0]

    def conditional_moments(self, x):
        """Exact mean (B, D) and covariance (B, D, D) of the learned plan ``pi(. | x)``."""
        x = self._prep(x, "x")
        xp = self._xp
        w = softmax(self._normalizer_logits(x), axis=1, xp=xp)                    # (B, K)
        mk = self._component_means(x)
        mean = xp.sum(w[:, :, None] * mk, axis=1)
        dev = mk - mean[:, None, :]
        S = self.S
        Sfull = S if S.ndim == 3 else S[:, :, None] * xp.eye(self.dim, dtype=S.dtype)
        within = self.epsilon * xp.tensordot(w, Sfull, axes=(1, 0))
        between = xp.swapaxes(w[:, :, None] * dev, 1, 2) @ dev
        return mean, within + between

    # ------------------------------------------------------------------ sampling
    def _draw(self, x, n: int, rng):
        """n samples of pi(. | x_b) per row: (B, n, D)."""
        xp, eps = self._xp, self.epsilon
        _, _, lam, U, _ = self._components()
        logits = self._normalizer_logits(x)                                       # (B, K)
        B, D = x.shape
        k = gumbel_argmax(xp.broadcast_to(logits[:, None, :], (B, n, logits.shape[1])), rng, xp)
        means = self._component_means(x)                                          # (B, K, D)
        y = means[xp.arange(B)[:, None], k]                                        # (B, n, D)
        xi = rng.standard_normal((B, n, D), dtype=x.dtype)
        if U is None:
            return y + xp.sqrt(eps * lam[k]) * xi
        # full S: noise sqrt(eps) U_k diag(sqrt(lam_k)) xi, grouped by component
        root = U * xp.sqrt(eps * lam)[:, None, :]
        flat_k, flat_xi = k.reshape(-1), xi.reshape(-1, D)
        noise = xp.empty_like(flat_xi)
        for j in range(self.n_components):
            sel = xp.nonzero(flat_k == j)[0]
            if sel.size:
                noise[sel] = flat_xi[sel] @ root[j].T
        return y + noise.reshape(B, n, D)

    def sample(self, x0, n: int | None = None, rng: Any = None, batch_size: int = 65536, *,
               seed: Any = None):
        """Draw ``y ~ pi(. | x0)`` from the closed-form conditional plan.

        Parameters
        ----------
        x0 : array (B, D)
        n : int, optional
            Samples per input row; None gives one sample per row, shape (B, D), else (B, n, D).
        rng : int, Generator or None, optional
            Randomness (``np.random.default_rng(rng)``; a Generator is used as is).
        batch_size : int
            Samples drawn per chunk (bounds the memory use).
        seed : deprecated
            Old name of ``rng``.
        """
        rng = renamed_kwarg(rng, seed, "rng", "seed")
        x0 = self._prep(x0, "x0")
        rng = make_rng(rng, self._xp)
        m = 1 if n is None else check_positive_int(n, "n")
        rows = max(1, batch_size // m)
        parts = [self._draw(x0[i:i + rows], m, rng) for i in range(0, x0.shape[0], rows)]
        out = self._xp.concatenate(parts, axis=0)
        return out[:, 0, :] if n is None else out

    def sample_at_time(self, x0, t: float, rng: Any = None, *, seed: Any = None):
        """Sample ``x_t`` of the learned bridge started at ``x0`` (B, D), for ``0 <= t <= 1``.

        ``x_t = t y + (1 - t) x0 + sqrt(eps t (1 - t)) xi`` with ``y ~ pi(. | x0)``: the Brownian
        bridge of ``W^eps`` pinned at (x0, y). (The released code used std ``eps t (1 - t)`` before
        2024-07-30; this is the corrected square root.) ``rng``: int, Generator or None
        (``seed``: its deprecated old name).
        """
        rng = renamed_kwarg(rng, seed, "rng", "seed")
        t = float(t)
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"t must be in [0, 1], got {t!r}")
        x0 = self._prep(x0, "x0")
        rng = make_rng(rng, self._xp)
        y = self.sample(x0, rng=rng)
        xi = rng.standard_normal(x0.shape, dtype=x0.dtype)
        return t * y + (1.0 - t) * x0 + math.sqrt(self.epsilon * t * (1.0 - t)) * xi

    def drift(self, x, t):
        """Closed-form drift ``g(x, t) = eps grad_x log int N(x' | x, (1-t) eps I) phi(x') dx'``.

        ``t`` is a float or an array (B,) in [0, 1); returns (B, D). It equals
        ``E[(x1 - x) / (1 - t) | x_t = x]`` under the learned bridge mixture.
        """
        x = self._prep(x, "x")
        xp, eps = self._xp, self.epsilon
        tt = xp.asarray(t, dtype=x.dtype)
        if tt.ndim == 0:
            tt = xp.full((x.shape[0],), float(tt), dtype=x.dtype)
        if tt.shape != (x.shape[0],):
            raise ValueError(f"t must be a scalar or have shape ({x.shape[0]},), got {tuple(tt.shape)}")
        if bool(xp.any(tt < 0)) or bool(xp.any(tt >= 1)):
            raise ValueError("t must lie in [0, 1): the drift is singular at t = 1")
        log_alpha, _, lam, U, r_rot = self._components()
        ts = tt[:, None, None]
        m = ts * lam[None] + (1.0 - ts)                                           # (B, K, D)
        xr = x[:, None, :] if U is None else self._rot(x, U)
        # l_k = log a_k - 1/2 log det M + x^T (S - I) M^-1 x / 2eps + r^T M^-1 x / eps - t r^T M^-1 r / 2eps
        logits = (log_alpha - 0.5 * xp.sum(xp.log(m), axis=2)
                  + xp.sum((lam - 1.0) / m * xr * xr, axis=2) / (2.0 * eps)
                  + xp.sum(r_rot / m * xr, axis=2) / eps
                  - ts[:, :, 0] * xp.sum(r_rot * r_rot / m, axis=2) / (2.0 * eps))
        w = softmax(logits, axis=1, xp=xp)
        v = ((lam - 1.0) * xr + r_rot) / m                                        # rotated, (B, K, D)
        if U is None:
            return xp.sum(w[:, :, None] * v, axis=1)
        return xp.einsum("bk,kde,bke->bd", w, U, v)

    def sample_path(self, x0, n_steps: int = 100, rng: Any = None, *, seed: Any = None):
        """Euler–Maruyama trajectories of ``dX = g(X, t) dt + sqrt(eps) dW`` from ``x0`` (B, D).

        Returns (B, n_steps + 1, D) at times ``0, dt, ..., 1``; the drift is last evaluated at
        ``1 - dt`` (it is singular at 1). ``rng``: int, Generator or None (``seed``: its
        deprecated old name).
        """
        rng = renamed_kwarg(rng, seed, "rng", "seed")
        n_steps = check_positive_int(n_steps, "n_steps")
        x = self._prep(x0, "x0")
        xp = self._xp
        rng = make_rng(rng, xp)
        dt = 1.0 / n_steps
        path = xp.empty((x.shape[0], n_steps + 1, self.dim), dtype=x.dtype)
        path[:, 0] = x
        for i in range(n_steps):
            x = x + self.drift(x, i * dt) * dt + math.sqrt(self.epsilon * dt) * rng.standard_normal(x.shape, dtype=x.dtype)
            path[:, i + 1] = x
        return path

    # ------------------------------------------------------------------ training
    def loss_and_grad(self, x0, x1):
        """Minibatch objective ``mean log c(x0) - mean log v(x1)`` and its analytic gradient with
        respect to the raw parameters (dict with ``ell``, ``r`` and ``s`` or ``T``)."""
        x0, x1 = self._prep(x0, "x0"), self._prep(x1, "x1")
        return loss_and_grad(self._require_fitted(), x0, x1, self.epsilon, self._xp)

    def fit(
        self,
        x0: Any,
        x1: Any,
        n_steps: int = 10000,
        batch_size: int = 128,
        lr: float | None = None,
        rng: Any = None,
        progress: bool = True,
        warm_start: bool = False,
        schedule: str = "constant",
        *,
        seed: Any = None,
    ) -> "LightSB":
        """Fit on unpaired samples by Adam on ``L = E_p0 log c - E_p1 log v`` (paper's Alg. 1).

        Parameters
        ----------
        x0, x1 : array (N, D) or callable
            Samples of the source and target, or callables ``f(n) -> (n, D) array`` that draw fresh
            batches (minibatches are then drawn each step; arrays are resampled with replacement).
        n_steps : int
            Adam steps (the paper: 10,000 on the EOT benchmark). This is LightSB's iteration
            count (a fixed budget: there is no stopping rule, so no ``max_iter``).
        batch_size : int
            Minibatch size on each side (the paper: 128).
        lr : float, optional
            Adam step; default :func:`default_lr` (eps-dependent: 1e-3 at eps=0.1, 3e-3 at eps=1,
            6e-2 at eps=10), because log alpha is parameterized as ``ell / eps``.
        rng : int, Generator or None, optional
            Randomness of the minibatch draws and of the initial means ``r`` (K target samples).
        progress : bool
            Show a tqdm bar with the running loss.
        warm_start : bool
            Continue from the current parameters instead of re-initializing.
        schedule : {"constant", "cosine"}
            Adam step over the run: constant (the paper) or cosine-annealed from ``lr`` to 0, which
            removes most of the minibatch noise left in the final parameters.
        seed : deprecated
            Old name of ``rng``.
        """
        rng = renamed_kwarg(rng, seed, "rng", "seed")
        if schedule not in ("constant", "cosine"):
            raise ValueError(f"schedule must be 'constant' or 'cosine', got {schedule!r}")
        n_steps = check_positive_int(n_steps, "n_steps")
        batch_size = check_positive_int(batch_size, "batch_size")
        src = self._sampler(x0, "x0")
        tgt = self._sampler(x1, "x1")
        xp = src[2]
        if tgt[2] is not xp:
            raise ValueError("x0 and x1 must both be NumPy or both be CuPy arrays")
        dtype = self.dtype or np.result_type(src[3], tgt[3])
        lr = default_lr(self.epsilon) if lr is None else check_epsilon(lr, "lr")
        rng = make_rng(rng, xp)
        if not (warm_start and self._theta is not None):
            self._init_theta(tgt[0](self.n_components, rng), xp, dtype)
        theta = self._theta
        opt = Adam(theta, lr, xp=xp)
        hist = xp.empty(n_steps, dtype=dtype)
        bar = _progress_bar(n_steps, progress)
        it = 0
        try:
            while it < n_steps:
                b0 = src[0](batch_size, rng).astype(dtype, copy=False)
                b1 = tgt[0](batch_size, rng).astype(dtype, copy=False)
                loss, grads = loss_and_grad(theta, b0, b1, self.epsilon, xp)
                if schedule == "cosine":
                    opt.lr = 0.5 * lr * (1.0 + math.cos(math.pi * it / n_steps))
                opt.step(grads)
                hist[it] = loss
                it += 1
                if bar is not None and (it % 50 == 0 or it == n_steps):
                    bar.set_postfix(loss=f"{float(loss):.4f}", refresh=False)
                    bar.update(it - bar.n)
        finally:
            if bar is not None:
                if it > 0:  # the final loss is always shown, even for runs shorter than a refresh
                    bar.set_postfix(loss=f"{float(hist[it - 1]):.4f}", refresh=True)
                bar.close()
        self._cache = None
        self.loss_history_ = to_numpy(hist)
        if not np.all(np.isfinite(self.loss_history_)):
            raise FloatingPointError("LightSB training diverged (non-finite loss); lower lr")
        return self

    def _sampler(self, data, name: str):
        """(draw(n, rng) -> array, first-sample, namespace, dtype) for arrays or callables."""
        if callable(data):
            probe = data(2)
            arr = _check_samples(probe, self.dim, f"{name}(n)")
            xp = array_namespace(arr)
            buf = {"data": arr[:0], "pos": 0}

            def draw(n, rng, _f=data):
                # draw _REFILL batches per call: a sampler call per step costs more than the step
                if buf["pos"] + n > buf["data"].shape[0]:
                    m = n * _REFILL
                    out = xp.asarray(_f(m))
                    if out.shape != (m, self.dim):
                        raise ValueError(f"{name}({m}) returned shape {tuple(out.shape)}, expected ({m}, {self.dim})")
                    if not bool(xp.all(xp.isfinite(out))):
                        raise ValueError(f"{name}({m}) returned non-finite values")
                    buf["data"], buf["pos"] = out, 0
                batch = buf["data"][buf["pos"]:buf["pos"] + n]
                buf["pos"] += n
                return batch

            return draw, arr, xp, arr.dtype
        arr = _check_samples(data, self.dim, name)
        xp = array_namespace(arr)

        def draw(n, rng, _a=arr):
            return _a[rng.integers(0, _a.shape[0], size=n)]

        return draw, arr, xp, arr.dtype

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> None:
        """Write the fitted parameters and settings to an ``.npz`` file."""
        th = self._require_fitted()
        arrays = {k: to_numpy(v) for k, v in th.items()}
        np.savez(path, dim=self.dim, n_components=self.n_components, epsilon=self.epsilon,
                 covariance=self.covariance, s_init=self.s_init, **arrays)

    @classmethod
    def load(cls, path, xp=None) -> "LightSB":
        """Model from a file written by :meth:`save` (NumPy arrays; ``xp=cupy`` to move them)."""
        with np.load(path, allow_pickle=False) as f:
            missing = {"dim", "n_components", "epsilon", "covariance", "s_init", "ell", "r"} - set(f.files)
            if missing or not ({"s", "T"} & set(f.files)):
                raise ValueError(f"{path} is not a LightSB file: missing {sorted(missing) or ['s or T']}")
            model = cls(int(f["dim"]), int(f["n_components"]), float(f["epsilon"]),
                        covariance=str(f["covariance"]), s_init=float(f["s_init"]))
            keys = ("ell", "r", "s") if "s" in f.files else ("ell", "r", "T")
            K, D = model.n_components, model.dim
            want = {"ell": (K,), "r": (K, D), "s": (K, D), "T": (K, D, D)}
            host = {k: np.asarray(f[k]) for k in keys}
        if (keys[2] == "s") != (model.covariance == "diagonal"):
            raise ValueError(f"{path}: covariance={model.covariance!r} but the file stores {keys[2]!r}")
        dtypes = {a.dtype for a in host.values()}
        for k, arr in host.items():
            if arr.dtype not in (np.float32, np.float64) or len(dtypes) != 1:
                raise ValueError(f"{path}: parameter {k!r} has dtype {arr.dtype}; the parameters must "
                                 "all be float32 or all float64")
            if arr.shape != want[k]:
                raise ValueError(f"{path}: parameter {k!r} has shape {arr.shape}, expected {want[k]}")
            check_finite(arr, f"{path}: parameter {k!r}")
        xp = np if xp is None else xp
        model._set_theta({k: xp.asarray(v) for k, v in host.items()}, xp)
        return model

    def __repr__(self) -> str:
        state = "fitted" if self._theta is not None else "not fitted"
        return (f"LightSB(dim={self.dim}, n_components={self.n_components}, epsilon={self.epsilon}, "
                f"covariance={self.covariance!r}, {state})")


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm  # noqa: PLC0415  (only when a bar is wanted)

    return tqdm(total=total, desc="LightSB", leave=False)
