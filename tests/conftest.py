import os

import numpy as np
import pytest
from hypothesis import settings

settings.register_profile("ci", max_examples=30, deadline=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


@pytest.fixture(scope="module")
def cupy_backend(request):
    """The emulated CuPy is ``import cupy`` for otsolve while a GPU test module runs (modules
    that set ``EMULATED`` from ``cuda_emulator.gpu_test_module()``); nothing on a CUDA machine."""
    if getattr(request.module, "EMULATED", False):
        import cuda_emulator  # noqa: PLC0415

        with cuda_emulator.installed():
            yield
    else:
        yield
