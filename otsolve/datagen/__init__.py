"""PDE data generation for neural operators: sample, sort (SKR), solve with Krylov recycling,
write HDF5 or Zarr (``--layout pdebench`` for PDEBench's loaders); resumable after a kill or an
I/O error, distributable over Dask (``otsolve datagen``); :class:`TorchDataset` reads the result."""
from .pipeline import default_method, family_options, generate, solve_chunk
from .store import FORMAT, DatagenIOError, read_dataset

__all__ = ["generate", "solve_chunk", "read_dataset", "default_method", "family_options", "FORMAT",
           "DatagenIOError", "TorchDataset"]


def __getattr__(name):  # TorchDataset imports torch (optional) only when asked for
    if name == "TorchDataset":
        from .torch_data import TorchDataset

        return TorchDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
