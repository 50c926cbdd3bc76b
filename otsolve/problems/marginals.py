r"""Marginal terms of balanced and unbalanced (KL-relaxed) entropic OT, written once.

An unbalanced problem relaxes each marginal constraint into a KL penalty of strength ρ
(``rho_a``, ``rho_b``, in cost units; ``inf`` = the hard constraint):

.. math::
    \min_{P \ge 0} \langle C, P\rangle + \varepsilon\,\mathrm{KL}(P \,|\, a \otimes b)
    + \rho_a \mathrm{KL}(P 1 \,|\, a) + \rho_b \mathrm{KL}(P^T 1 \,|\, b),
    \qquad \mathrm{KL}(p | q) = \sum p \log(p/q) - p + q

(Chizat, Peyré, Schmitzer, Vialard 2018; Séjourné et al. 2019; POT's ``reg_type="kl"``,
GeomLoss's ``reach = rho ** (1/p)``). otsolve keeps its one plan convention
``P_ij = exp((f_i + g_j - C_ij)/ε - 1)``; the dual potentials of the references (GeomLoss's,
with ``P = a_i b_j exp((φ_i + ψ_j - C_ij)/ε)``) are ``φ = f - ε log a - ε/2`` and
``ψ = g - ε log b - ε/2`` (the ``-1`` split evenly, so that OT(a, a) keeps ``f = g``).

Optimality makes each marginal equal its *target* ``ã = a exp(-φ/ρ_a)``; the Sinkhorn block
update of ``f`` is the balanced one damped by ``λ = ρ/(ρ + ε)`` around ``ε (log a + 1/2)``:
``f = ε (log a + 1/2 + λ (1/2 - LSE_j (g_j - C_ij)/ε))``. The stopping error of an iterate
is ``||P1 - ã||_1 + ||P^T1 - b̃||_1``, the balanced L1 marginal error when ρ = ∞.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["damping", "marginal_target", "marginal_residual", "dual_value", "primal_value", "check_rho",
           "translation"]


def check_rho(rho: Any, name: str = "rho") -> float:
    """A marginal penalty strength: a number > 0, ``inf`` or None (both = balanced)."""
    if rho is None:
        return math.inf
    try:
        r = float(rho)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive number, inf or None (balanced), got {rho!r}") from None
    if not r > 0 or math.isnan(r):
        raise ValueError(f"{name} must be a positive number, inf or None (balanced), got {rho!r}")
    return r


def damping(eps: float, rho: float) -> float:
    """``λ = ρ / (ρ + ε)``, exactly 1 for ρ = ∞ (the balanced update)."""
    return 1.0 / (1.0 + eps / rho)


def translation(mass_a: float, mass_b: float, rho_a: float, rho_b: float) -> float:
    """Optimal shift ``t`` of ``(f + t, g - t)`` for the dual of the unbalanced problem.

    The plan is unchanged by the shift; the dual's concave 1-D maximisation has the closed form
    ``t = log(A / B) / (1/ρ_a + 1/ρ_b)`` with ``A = Σ ã(f)``, ``B = Σ b̃(g)`` the total target
    masses (a balanced side's target is its weights). Applied after each Sinkhorn update, it
    removes the slow "mass" mode of unbalanced Sinkhorn, whose rate is ``1 - O(ε/ρ)``
    (translation-invariant Sinkhorn, Séjourné, Vialard, Peyré, AISTATS 2022): at ε = 0.1,
    ρ = 100 the iterations to 1e-10 drop from ~11,000 to ~280. 0 when both sides are balanced
    or a mass is 0 / non-finite.
    """
    k = 1.0 / rho_a + 1.0 / rho_b
    if k == 0.0 or not (mass_a > 0 and mass_b > 0) or math.isinf(mass_a) or math.isinf(mass_b):
        return 0.0
    return math.log(mass_a / mass_b) / k


def _xp(x):
    return np if isinstance(x, np.ndarray) or np.isscalar(x) else __import__(type(x).__module__.split(".")[0])


def marginal_target(w, pot, eps: float, rho: float):
    """``w exp(-(pot - ε log w - ε/2)/ρ)`` (0 where w = 0; ``w`` itself when ρ = ∞)."""
    if math.isinf(rho):
        return w
    xp = _xp(w)
    pos = w > 0
    safe_w = xp.where(pos, w, 1.0)
    expo = -(xp.where(pos, pot, 0.0) - eps * xp.log(safe_w) - 0.5 * eps) / rho
    return xp.where(pos, w * xp.exp(xp.minimum(expo, 700.0)), 0.0)


def marginal_residual(row, col, f, g, a, b, eps: float, rho_a: float = math.inf, rho_b: float = math.inf):
    """L1 distance of a plan's marginals (``row`` = P1, ``col`` = Pᵀ1; (n,) or (B, n)) to their
    targets: the stopping error (the balanced marginal error when both ρ are ∞)."""
    return (abs(row - marginal_target(a, f, eps, rho_a)).sum(axis=-1)
            + abs(col - marginal_target(b, g, eps, rho_b)).sum(axis=-1))


def _side_dual(w, pot, eps: float, rho: float, xp):
    """ρ <w, 1 - exp(-φ/ρ)> (ρ finite) or <w, φ> (ρ = ∞), with φ = pot - ε log w - ε/2."""
    pos = w > 0
    ww = xp.where(pos, w, 1.0)
    phi = xp.where(pos, pot, 0.0) - eps * xp.log(ww) - 0.5 * eps
    if math.isinf(rho):
        return xp.where(pos, w * phi, 0.0).sum(axis=-1)
    return xp.where(pos, -rho * w * xp.expm1(xp.minimum(-phi / rho, 700.0)), 0.0).sum(axis=-1)


def dual_value(f, g, a, b, mass, eps: float, rho_a: float = math.inf, rho_b: float = math.inf):
    """Dual value of potentials (f, g) whose plan has total mass ``mass`` (= Σ P).

    Balanced (both ρ = ∞): ``<a, f> + <b, g> - ε Σ P`` (equal at the optimum to
    ``<C, P> + ε Σ P log P``, the ``value`` of balanced results). Otherwise the dual of the
    unbalanced problem above (Séjourné et al. 2019, Prop. 12 convention):
    ``Σ_sides ρ <w, 1 - exp(-φ/ρ)> - ε (Σ P - |a| |b|)`` (a side with ρ = ∞ contributes <w, φ>).
    """
    xp = _xp(f)
    if math.isinf(rho_a) and math.isinf(rho_b):
        af = xp.where(a > 0, a * xp.where(a > 0, f, 0.0), 0.0).sum(axis=-1)
        bg = xp.where(b > 0, b * xp.where(b > 0, g, 0.0), 0.0).sum(axis=-1)
        return af + bg - eps * mass
    return (_side_dual(a, f, eps, rho_a, xp) + _side_dual(b, g, eps, rho_b, xp)
            - eps * (mass - a.sum(axis=-1) * b.sum(axis=-1)))


def _kl(p, q, xp):
    """KL(p | q) = Σ p log(p/q) - p + q of nonnegative vectors (last axis)."""
    pos = (p > 0) & (q > 0)
    lr = xp.log(xp.where(pos, p, 1.0)) - xp.log(xp.where(pos, q, 1.0))
    return (xp.where(pos, p * lr, 0.0) - p + q).sum(axis=-1)


def primal_value(cost, plogp, row, col, a, b, eps: float, rho_a: float = math.inf, rho_b: float = math.inf):
    """Objective of the plan with marginals (row, col), ``<C, P>`` = cost and Σ P log P = plogp.

    Balanced: ``<C, P> + ε Σ P log P`` (otsolve's value). Unbalanced: the objective above,
    ``<C, P> + ε KL(P | a⊗b) + ρ_a KL(P1 | a) + ρ_b KL(Pᵀ1 | b)`` (a side with ρ = ∞ adds
    nothing: its marginal is held to the weights)."""
    xp = _xp(row)
    if math.isinf(rho_a) and math.isinf(rho_b):
        return cost + eps * plogp
    la = xp.log(xp.where(a > 0, a, 1.0))
    lb = xp.log(xp.where(b > 0, b, 1.0))
    mass = row.sum(axis=-1)
    kl_plan = (plogp - (row * la).sum(axis=-1) - (col * lb).sum(axis=-1) - mass
               + a.sum(axis=-1) * b.sum(axis=-1))
    out = cost + eps * kl_plan
    if not math.isinf(rho_a):
        out = out + rho_a * _kl(row, a, xp)
    if not math.isinf(rho_b):
        out = out + rho_b * _kl(col, b, xp)
    return out
