"""Problems: what to solve (geometry + marginals + regularization)."""
from .linear import LinearProblem, as_geometry

__all__ = ["LinearProblem", "as_geometry"]
