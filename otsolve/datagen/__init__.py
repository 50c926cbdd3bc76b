"""PDE data generation for neural operators: sample, sort (SKR), solve with Krylov recycling,
write chunked HDF5; resumable after a kill, distributable over Dask (``otsolve datagen``)."""
from .pipeline import default_method, generate, solve_chunk
from .store import FORMAT, read_dataset

__all__ = ["generate", "solve_chunk", "read_dataset", "default_method", "FORMAT"]
