"""Problems: what to solve (geometry + marginals + regularization)."""
from .linear import LinearProblem, as_geometry
from .batched import BatchedLinearProblem

__all__ = ["LinearProblem", "BatchedLinearProblem", "as_geometry"]
