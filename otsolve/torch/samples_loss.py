"""GeomLoss-shaped entry point: ``SamplesLoss("sinkhorn", p=2, blur=..., ...)`` on the core driver.

The same calls as ``geomloss.SamplesLoss`` (``loss(x, y)``, ``loss(a, x, b, y)``, batches
``(B, n, d)``), the same conventions (cost ``|x - y|^p / p``, ε = blur^p, ρ = reach^p for
unbalanced OT, debiased Sinkhorn divergence, ``potentials=True`` for the dual potentials) and
the same values at convergence; the
solve is otsolve's Sinkhorn driver (symmetric self-transport terms, ε-scaling from the data's
diameter, over-relaxation, stopping on a tolerance). Differences: see docs/torch.md.

References
----------
J. Feydy, T. Séjourné, F.-X. Vialard, S. Amari, A. Trouvé, G. Peyré, "Interpolating between
Optimal Transport and MMD using Sinkhorn Divergences", AISTATS 2019.
T. Séjourné, J. Feydy, F.-X. Vialard, A. Trouvé, G. Peyré, "Sinkhorn Divergences for Unbalanced
Optimal Transport", arXiv:1910.12958, 2019.
"""
from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from .._validation import check_tol
from ..problems.marginals import damping
from ._grad import side_potential, transform_lse
from ._costs import pairwise_cost
from .layer import TermInfo, _entropy_term, sinkhorn_divergence

__all__ = ["SamplesLoss"]

_BACKENDS = ("auto", "tensorized", "online", "multiscale")


def _reach(v: Any) -> float | None:
    """GeomLoss's ``reach``: None (or ``inf``) = balanced, else a positive number."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor) and v.numel() == 1 and not v.requires_grad:
        v = float(v.item())
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (float(v) > 0):
        raise ValueError(f"reach must be a positive number or None (balanced OT), got {v!r}")
    return None if math.isinf(float(v)) else float(v)


def _positive(v: Any, name: str) -> float:
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not (float(v) > 0) or v == float("inf"):
        raise ValueError(f"{name} must be a positive number, got {v!r}")
    return float(v)


class SamplesLoss(torch.nn.Module):
    """Sinkhorn divergence between sampled measures, with GeomLoss's signature.

    Parameters
    ----------
    loss : {"sinkhorn"}
        Only the Sinkhorn losses are provided (GeomLoss's kernel / Hausdorff losses are not).
    p : {1, 2}
        Cost ``|x - y|^p / p``: p = 2 is half the squared Euclidean distance, p = 1 the
        Euclidean distance.
    blur : float
        ε = blur^p.
    reach : float, optional
        Unbalanced OT: KL-relaxed marginals of strength ρ = reach^p (None: balanced). The value
        is Séjourné et al.'s unbalanced Sinkhorn divergence (``debias=True``) or GeomLoss's
        ``OT_ε,ρ`` (see :func:`~otsolve.torch.sinkhorn_divergence`); weights of any total masses
        are allowed. Gradients are the exact envelope derivatives (GeomLoss's are
        ``(ρ + ε/2)/(ρ + ε)`` times these; docs/torch.md).
    diameter : float, optional
        First ε of the ε-scaling is diameter^p (default: the clouds' cost range).
    scaling : float in (0, 1)
        GeomLoss's ratio of successive blurs; the core's ε-scaling decay is ``scaling**p``.
        Unlike GeomLoss it does not fix the iteration count: every stage runs to a tolerance.
    truncate, cluster_scale, verbose
        Accepted for compatibility, unused (no kernel truncation, no multiscale clustering).
    cost : None or callable
        None: the cost above, computed on the fly by the compiled kernels. A callable
        ``(x, y) -> C`` on batches ``(B, n, d), (B, m, d)`` gives dense costs.
    kernel : None
        GeomLoss's kernel losses are not provided.
    debias : bool
        Sinkhorn divergence ``OT(a, b) - OT(a, a)/2 - OT(b, b)/2`` (True) or ``OT(a, b)``.
    potentials : bool
        Return the dual potentials ``(F, G)`` instead of the value (GeomLoss's convention:
        ``loss = <a, F> + <b, G>``); detached (no gradient), shapes ``(n,)`` / ``(B, n)``.
    backend : {"auto", "tensorized", "online", "multiscale"}
        Accepted and ignored: otsolve always computes point-cloud costs on the fly (memory
        O(n + m)), on the CPU kernels or the CUDA kernels.
    loss_tol : float, optional
        Speed/accuracy knob in the loss's units (see :func:`sinkhorn_divergence`). None
        (default): each term stops on the marginal tolerance ``tol`` (accurate).
    warm_start : bool, default False
        Start each call from the previous call's potentials (same shapes), skipping the
        ε-schedule: for training loops.
    **options
        ``tol`` (finest marginal L1 tolerance), ``max_iter``, ``stage_tol``, ``compiled``,
        ``n_threads``, ``grad`` ("envelope" default, "implicit", "detach"), ``kernel_memory``
        (bytes for stored costs/kernels on the CPU, default 4e9; 0 = always on the fly).

    Examples
    --------
    >>> import torch
    >>> from otsolve.torch import SamplesLoss
    >>> x, y = torch.randn(200, 3), torch.randn(300, 3) + 1
    >>> loss = SamplesLoss("sinkhorn", p=2, blur=0.05, scaling=0.9)
    >>> float(loss(x, y)) > 0
    True
    """

    def __init__(self, loss: str = "sinkhorn", p: int = 2, blur: float = 0.05, reach: float | None = None,
                 diameter: float | None = None, scaling: float = 0.5, truncate: float | None = 5,
                 cost: Any = None, kernel: Any = None, cluster_scale: float | None = None, debias: bool = True,
                 potentials: bool = False, verbose: bool = False, backend: str = "auto", *,
                 loss_tol: float | None = None, warm_start: bool = False, **options: Any) -> None:
        super().__init__()
        if loss != "sinkhorn":
            raise ValueError(f"loss must be 'sinkhorn' (otsolve provides GeomLoss's Sinkhorn losses only), got {loss!r}")
        if isinstance(p, bool) or p not in (1, 2):
            raise ValueError(f"p must be 1 or 2, got {p!r}")
        self.p = int(p)
        self.blur = _positive(blur, "blur")
        self.reach = _reach(reach)
        self.diameter = None if diameter is None else _positive(diameter, "diameter")
        if isinstance(scaling, bool) or not isinstance(scaling, numbers.Real) or not 0 < scaling < 1:
            raise ValueError(f"scaling must be in (0, 1), got {scaling!r}")
        self.scaling = float(scaling)
        if kernel is not None:
            raise ValueError("kernel is not supported (GeomLoss's kernel losses are not provided)")
        if cost is not None and not callable(cost):
            raise ValueError("cost must be None (|x - y|^p / p, computed on the fly) or a callable (x, y) -> C; "
                             "KeOps formula strings are not supported")
        self.cost = cost
        if backend not in _BACKENDS:
            raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
        self.backend = backend  # ignored: the costs are always computed on the fly
        self.truncate, self.cluster_scale, self.verbose = truncate, cluster_scale, bool(verbose)
        self.debias = bool(debias)
        self.potentials = bool(potentials)
        self.loss_tol = None if loss_tol is None else check_tol(loss_tol, "loss_tol")
        self.warm_start = bool(warm_start)
        allowed = {"tol", "max_iter", "stage_tol", "compiled", "n_threads", "grad", "kernel_memory"}
        unknown = set(options) - allowed
        if unknown:
            raise ValueError(f"unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
        options.setdefault("max_iter", 10_000)
        self.options = options
        self.last_outputs: dict[str, TermInfo] | None = None

    @property
    def epsilon(self) -> float:
        return self.blur ** self.p

    @property
    def rho(self) -> float | None:
        """ρ = reach^p (None: balanced)."""
        return None if self.reach is None else self.reach ** self.p

    def _cost(self):
        if self.cost is not None:
            return self.cost
        return "half_sqeuclidean" if self.p == 2 else "euclidean"

    def forward(self, *args: Any) -> Any:  # noqa: D102
        if len(args) == 2:
            a, x, b, y = None, args[0], None, args[1]
        elif len(args) == 4:
            a, x, b, y = args
        else:
            raise ValueError(f"SamplesLoss takes (x, y) or (a, x, b, y), got {len(args)} arguments")
        x, y = torch.as_tensor(x), torch.as_tensor(y)
        init = None
        if self.warm_start and self.last_outputs is not None:
            def bn(t):
                return tuple(t.shape[:-1]) if t.ndim == 3 else (1, t.shape[0])

            want = {"xy": (bn(x), bn(y)), "xx": (bn(x), bn(x)), "yy": (bn(y), bn(y))}
            init = {k: (o._f, o._g) for k, o in self.last_outputs.items()
                    if (tuple(o._f.shape), tuple(o._g.shape)) == want.get(k) and o._f.device == x.device}
        opts = dict(self.options)
        grad = "detach" if self.potentials else opts.pop("grad", "envelope")
        opts.pop("grad", None)
        eps = self.epsilon
        val, outs = sinkhorn_divergence(
            x, y, eps, a=a, b=b, cost=self._cost(), debias=self.debias, grad=grad, init=init,
            epsilon_scaling=self.scaling ** self.p, loss_tol=self.loss_tol,
            epsilon_init=None if self.diameter is None else self.diameter ** self.p,
            return_outputs=True, rho=self.rho, **opts)
        self.last_outputs = {k: TermInfo.of(o) for k, o in outs.items()}
        if not self.potentials:
            return val
        return self._potentials(outs, a, b, x, y, eps)

    def _potentials(self, outs, a, b, x, y, eps):
        """GeomLoss's (F, G): ``P = a_i b_j exp((F_i + G_j - C_ij)/ε)``, i.e. ``φ = f − ε log a − ε/2``
        (debias: ``F = φ_xy − φ_xx``, as GeomLoss). Zero weights get the C-transform of the other
        side's potential (as GeomLoss's last extrapolation)."""
        with torch.no_grad():
            f = outs["xy"]._f.detach()
            B, n, m = f.shape[0], f.shape[1], outs["xy"]._g.shape[1]
            xb, yb = (x, y) if x.ndim == 3 else (x.unsqueeze(0), y.unsqueeze(0))
            xb, yb = xb.detach().to(f.dtype), yb.detach().to(f.dtype)

            def weights(w, k):
                if w is None:
                    return torch.full((B, k), 1.0 / k, dtype=f.dtype, device=f.device)
                return torch.as_tensor(w).detach().to(device=f.device, dtype=f.dtype).reshape(B, k)

            a_, b_ = weights(a, n), weights(b, m)
            lam = 1.0 if self.rho is None else damping(eps, self.rho)
            cost = self._cost()

            def phis(k, u, v, X, Y):
                o = outs[k]
                fk, gk = o._f.detach(), o._g.detach()
                lr = lc = None
                if bool((u == 0).any()) or bool((v == 0).any()):
                    C = pairwise_cost(X, Y, cost) if callable(cost) else None
                    lr, lc = transform_lse(fk, gk, eps, C, X, Y, cost)
                return side_potential(u, fk, eps, lr, lam), side_potential(v, gk, eps, lc, lam)

            F, G = phis("xy", a_, b_, xb, yb)
            if self.debias:
                F = F - phis("xx", a_, a_, xb, xb)[0]
                G = G - phis("yy", b_, b_, yb, yb)[0]
        if x.ndim == 2:
            F, G = F[0], G[0]
        return F, G

    def extra_repr(self) -> str:  # noqa: D102
        unb = "" if self.reach is None else f", reach={self.reach}"
        return (f"loss='sinkhorn', p={self.p}, blur={self.blur}{unb}, scaling={self.scaling}, debias={self.debias}, "
                f"potentials={self.potentials}, loss_tol={self.loss_tol}")


_ = _entropy_term  # (re-exported helpers stay importable)
