"""Linear (Kantorovich) optimal transport problems: balanced, or unbalanced with KL-relaxed
marginals (:mod:`otsolve.problems.marginals`)."""
from __future__ import annotations

from typing import Any

import numpy as np

from .._validation import check_epsilon, check_same_mass, check_weights
from ..geometry import BaseGeometry, Geometry, PointCloud
from .marginals import check_rho

__all__ = ["LinearProblem", "as_geometry"]


def as_geometry(geom: Any) -> BaseGeometry:
    """A Geometry / PointCloud as is; an array becomes a dense :class:`Geometry`."""
    if isinstance(geom, BaseGeometry):
        return geom
    return Geometry(geom)


class LinearProblem:
    r"""OT between weights ``a`` (rows) and ``b`` (columns) for a geometry.

    Balanced (default):

    .. math:: \min_{P \ge 0,\ P1 = a,\ P^T 1 = b} \langle C, P\rangle + \varepsilon \sum_{ij} P_{ij}\log P_{ij}

    Unbalanced (``rho_a`` and/or ``rho_b`` finite; Chizat et al. 2018, Séjourné et al. 2019):

    .. math:: \min_{P \ge 0} \langle C, P\rangle + \varepsilon \mathrm{KL}(P | a \otimes b)
        + \rho_a \mathrm{KL}(P1 | a) + \rho_b \mathrm{KL}(P^T 1 | b)

    Parameters
    ----------
    geom : Geometry, PointCloud or array_like (n, m)
        The cost. An array is wrapped in :class:`~otsolve.Geometry`.
    a, b : array_like, optional
        Nonnegative weights of length n and m with equal sums; uniform ``1/n``, ``1/m`` if omitted.
        Zero entries are allowed (their potentials are then ``-inf``). Sums that differ by more
        than a relative 1e-6 (float32: 1e-4) raise a ValueError; a smaller gap is removed by
        rescaling ``b`` to the mass of ``a`` (as POT's ``ot.emd`` does; with a UserWarning when the
        gap is above rounding), since no plan can have a marginal error below the gap.
    epsilon : float, optional
        Entropic regularization ε > 0 in cost units (POT's ``reg``; SNS's η = 1/ε). Needed by the
        entropic solvers (Sinkhorn, SNS); the sparsity-constrained solver uses its own ``gamma``.
    rho_a, rho_b : float, optional
        Strength of the KL penalty relaxing the row / column marginal (cost units; POT's
        ``reg_m``, GeomLoss's ``reach ** p``). None or ``inf`` (default) keeps the marginal a hard
        constraint. With a relaxed side the masses of ``a`` and ``b`` may differ. Solved by
        :class:`~otsolve.Sinkhorn` only.
    """

    def __init__(self, geom: Any, a: Any = None, b: Any = None, epsilon: float | None = None,
                 rho_a: float | None = None, rho_b: float | None = None) -> None:
        self.geom = as_geometry(geom)
        n, m = self.geom.shape
        dtype = self.geom.dtype
        self.a = check_weights(a, n, "a", dtype=dtype)
        self.b = check_weights(b, m, "b", dtype=dtype)
        xp = self.geom.xp
        if xp is not np:
            self.a, self.b = xp.asarray(self.a), xp.asarray(self.b)
        self.rho_a, self.rho_b = check_rho(rho_a, "rho_a"), check_rho(rho_b, "rho_b")
        if self.is_balanced:
            self.b = check_same_mass(self.a, self.b)
        self.epsilon = None if epsilon is None else check_epsilon(epsilon)

    @property
    def is_balanced(self) -> bool:
        """Both marginals are hard constraints (``rho_a = rho_b = inf``)."""
        return self.rho_a == np.inf and self.rho_b == np.inf

    @property
    def shape(self) -> tuple[int, int]:
        return self.geom.shape

    @property
    def dtype(self) -> Any:
        return self.geom.dtype

    @property
    def xp(self) -> Any:
        """Array library (numpy or cupy) of the problem's arrays."""
        return self.geom.xp

    def to_namespace(self, xp: Any) -> "LinearProblem":
        """The same problem with its arrays in array library ``xp`` (numpy or cupy)."""
        new = object.__new__(LinearProblem)
        new.__dict__.update(self.__dict__)
        new.geom = self.geom.to_namespace(xp)
        host = (lambda v: v.get() if hasattr(v, "get") else v)
        new.a, new.b = xp.asarray(host(self.a)), xp.asarray(host(self.b))
        return new

    @property
    def is_uniform(self) -> bool:
        n, m = self.shape
        a, b = self.a, self.b  # NumPy or CuPy: reduce on the arrays' device, read one bool back
        # np.allclose(a, 1/n) semantics (rtol 1e-5, atol 1e-8)
        return bool(abs(a - 1.0 / n).max() <= 1e-8 + 1e-5 / n and abs(b - 1.0 / m).max() <= 1e-8 + 1e-5 / m)

    def require_epsilon(self) -> float:
        if self.epsilon is None:
            raise ValueError("this solver needs epsilon > 0: LinearProblem(geom, a, b, epsilon=...)")
        return self.epsilon

    def with_epsilon(self, epsilon: float) -> "LinearProblem":
        """The same problem with another ε (weights are not re-validated)."""
        new = object.__new__(LinearProblem)
        new.__dict__.update(self.__dict__)
        new.epsilon = check_epsilon(epsilon)
        return new

    def __repr__(self) -> str:
        n, m = self.shape
        unb = "" if self.is_balanced else f", rho_a={self.rho_a}, rho_b={self.rho_b}"
        return f"LinearProblem(n={n}, m={m}, epsilon={self.epsilon}{unb}, geom={self.geom!r})"
