"""Distribution metrics for benchmarks: Bures–Wasserstein UVP and its conditional version
(Gushchin et al., NeurIPS 2023 D&B, arXiv:2306.10161; used by LightSB, ICLR 2024)."""
from __future__ import annotations

import inspect
import warnings
from typing import Any

import numpy as np

from ._validation import as_rng, check_positive_int, renamed_kwarg

__all__ = ["bures_wasserstein2", "bw2_uvp", "cbw2_uvp"]


def _to_numpy(a):
    return a.get() if type(a).__module__.startswith("cupy") else np.asarray(a, dtype=np.float64)


def bures_wasserstein2(m1, S1, m2, S2) -> np.ndarray:
    """Squared Bures–Wasserstein distance between Gaussians (the W2² of N(m1,S1) and N(m2,S2))::

        ||m1 - m2||^2 + tr S1 + tr S2 - 2 tr (S2^{1/2} S1 S2^{1/2})^{1/2}

    Works on single (D,), (D, D) inputs or stacks (B, D), (B, D, D); returns a float or (B,).
    """
    m1, S1, m2, S2 = (np.asarray(a, dtype=np.float64) for a in (m1, S1, m2, S2))
    single = m1.ndim == 1
    if single:
        m1, S1, m2, S2 = m1[None], S1[None], m2[None], S2[None]
    lam, V = np.linalg.eigh(S2)
    root = (V * np.sqrt(np.clip(lam, 0, None))[:, None, :]) @ V.transpose(0, 2, 1)
    mid = root @ S1 @ root
    ev = np.linalg.eigvalsh(0.5 * (mid + mid.transpose(0, 2, 1)))
    cross = np.sum(np.sqrt(np.clip(ev, 0, None)), axis=1)
    out = (np.sum((m1 - m2) ** 2, axis=1) + np.trace(S1, axis1=1, axis2=2)
           + np.trace(S2, axis1=1, axis2=2) - 2 * cross)
    out = np.maximum(out, 0.0)  # rounding can give tiny negatives
    return float(out[0]) if single else out


def bw2_uvp(samples, target_samples) -> float:
    """BW2²-UVP (%) = 100 · BW2²(N(m̂, Σ̂), N(m, Σ)) / tr Σ from the empirical moments of model
    samples and target samples (each (n, D))."""
    x, y = _to_numpy(samples), _to_numpy(target_samples)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(f"samples must be (n, D) arrays of the same D, got {x.shape} and {y.shape}")
    Sx, Sy = np.atleast_2d(np.cov(x.T)), np.atleast_2d(np.cov(y.T))
    return 100.0 * bures_wasserstein2(x.mean(0), Sx, y.mean(0), Sy) / float(np.trace(Sy))


def _sample(model: Any, x, n: int, rng: np.random.Generator):
    """``model.sample(x, n=n, rng=rng)``; models written for the old ``seed=`` protocol still work
    (with a DeprecationWarning)."""
    try:
        params = inspect.signature(model.sample).parameters
    except (TypeError, ValueError):  # builtins / C extensions: assume the current protocol
        params = {"rng": None}
    if "rng" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return model.sample(x, n=n, rng=rng)
    warnings.warn(f"{type(model).__name__}.sample has no rng= parameter; calling it with seed= "
                  "(deprecated protocol: name it rng)", DeprecationWarning, stacklevel=3)
    return model.sample(x, n=n, seed=rng)


def cbw2_uvp(
    model: Any,
    bench: Any,
    n_test: int | None = None,
    n_samples: int = 1000,
    rng: Any = 0,
    moments: str = "sample",
    chunk: int = 20,
    *,
    seed: Any = None,
) -> float:
    """Conditional BW2²-UVP (%), the cB-W2-UVP of the EOT benchmark::

        100 · mean_x BW2²(N(m̂(x), Σ̂(x)), N(m*(x), Σ*(x))) / Var(P1)

    over the benchmark's fixed test inputs x, where (m*, Σ*) are the exact moments of the optimal
    plan π*(·|x) and (m̂, Σ̂) the empirical moments of ``n_samples`` draws ``model.sample(x, n=...)``.

    Parameters
    ----------
    model : object with ``sample(x, n=..., rng=...) -> (B, n, D)``
        (``moments="exact"`` instead uses ``model.conditional_moments(x)``, e.g. of a LightSB).
    bench : :class:`otsolve.benchmarks.EOTMixture`
    n_test : int, optional
        Use the first ``n_test`` test inputs (default: all, 1000).
    n_samples : int
        Model samples per test input (the paper: 1000).
    rng : int, Generator or None
        Randomness of the model's samples (``np.random.default_rng(rng)``); default 0.
    moments : {"sample", "exact"}
    chunk : int
        Test inputs per sampling call (bounds the memory: chunk · n_samples · D values).
    seed : deprecated
        Old name of ``rng``.
    """
    if seed is not None:  # (rng's default 0 cannot tell "not given" apart: seed wins)
        rng = renamed_kwarg(None, seed, "rng", "seed")
    if moments not in ("sample", "exact"):
        raise ValueError(f"moments must be 'sample' or 'exact', got {moments!r}")
    n_samples = check_positive_int(n_samples, "n_samples", minimum=2)
    chunk = check_positive_int(chunk, "chunk")
    xs = bench.test_inputs if n_test is None else bench.test_inputs[: check_positive_int(n_test, "n_test")]
    rng = as_rng(rng)
    total = 0.0
    for i in range(0, xs.shape[0], chunk):
        x = xs[i:i + chunk]
        m_true, c_true = bench.conditional_moments(x)
        if moments == "exact":
            m_hat, c_hat = (_to_numpy(a) for a in model.conditional_moments(x))
        else:
            y = _to_numpy(_sample(model, x, n_samples, rng))
            m_hat = y.mean(axis=1)
            dev = y - m_hat[:, None, :]
            c_hat = dev.transpose(0, 2, 1) @ dev / (n_samples - 1)
        total += float(np.sum(bures_wasserstein2(m_hat, c_hat, m_true, c_true)))
    return 100.0 * total / xs.shape[0] / float(bench.target_variance)
