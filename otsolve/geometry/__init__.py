"""Geometries: what the cost between the two sides is (dense matrix or point clouds)."""
from .geometry import Geometry
from .costs import COSTS, CostSpec
from .pointcloud import PointCloud
from .base import BaseGeometry

__all__ = ["BaseGeometry", "Geometry", "PointCloud", "COSTS", "CostSpec"]
