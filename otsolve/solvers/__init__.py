"""Solvers (how to solve) and the functional front door."""
from .registry import available_methods, get_solver_class, register_method, solve
from .result import OTResult
from .sinkhorn import Sinkhorn

__all__ = ["OTResult", "Sinkhorn", "solve", "register_method", "available_methods", "get_solver_class"]
