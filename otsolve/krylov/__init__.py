"""Krylov-subspace recycling for sequences of linear systems, and SKR ordering.

- :func:`gcrodr` — GCRO-DR(m, k) (Parks et al. 2006), right preconditioning, recycled space
  carried across systems whose matrices change.
- :func:`rcg` — recycled / deflated CG for SPD sequences.
- :class:`RecyclingSolver` — stateful ``.solve(A, b)`` that carries the space and keeps counters.
- :func:`sort_systems`, :func:`solve_sequence` — Sorting Krylov Recycling (Wang et al., ICLR 2024).

For n×40 block products on a shared machine, a single BLAS thread is usually fastest
(``OPENBLAS_NUM_THREADS=1`` or ``threadpoolctl``).
"""
from ._ops import KrylovWarning, SolveStats
from ._recycle import RecycleSpace
from .gcrodr import gcrodr
from .rcg import rcg
from .skr import (hilbert_index, hilbert_key, make_preconditioner, partition_systems, path_length, solve_sequence,
                  sort_systems)
from .solver import RecyclingSolver

__all__ = ["gcrodr", "rcg", "RecyclingSolver", "RecycleSpace", "SolveStats", "KrylovWarning",
           "sort_systems", "partition_systems", "path_length", "solve_sequence", "hilbert_index", "hilbert_key",
           "make_preconditioner"]
