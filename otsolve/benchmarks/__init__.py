"""Ground-truth benchmark instances (entropic OT / Schrödinger bridge with known solution)."""
from .eot_mixture import EOTMixture, eot_mixture

__all__ = ["EOTMixture", "eot_mixture"]
