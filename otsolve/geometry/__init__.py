"""Geometries: what the cost between the two sides is (dense matrix or point clouds)."""
from .geometry import Geometry
from .pointcloud import PointCloud, COSTS

__all__ = ["Geometry", "PointCloud", "COSTS"]
