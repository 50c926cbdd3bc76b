"""Light Schrödinger Bridge (Korotin, Gushchin & Burnaev, ICLR 2024)."""
from .model import LightSB, default_lr

__all__ = ["LightSB", "default_lr"]
