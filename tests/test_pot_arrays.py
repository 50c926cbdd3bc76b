"""otsolve._arrays: the array pass-through helpers the POT front end (and the torch layer) build on."""
from __future__ import annotations

import numpy as np
import pytest

from otsolve import _arrays

torch = pytest.importorskip("torch")


def test_numpy_and_lists():
    x = np.arange(6.0).reshape(2, 3)
    info = _arrays.array_info(x, None, [])
    assert info.library == "numpy" and info.dtype == np.float64 and not info.on_gpu
    assert _arrays.to_core(x) is x
    assert _arrays.from_core(x, info) is x  # no copy for NumPy
    assert _arrays.array_info(None, [], 3.0).library == "numpy"  # nothing array-like: NumPy
    np.testing.assert_array_equal(_arrays.to_core([[1.0, 2.0]]), [[1.0, 2.0]])


@pytest.mark.parametrize("w, empty", [(None, True), ([], True), ((), True), (np.empty(0), True),
                                      (np.ones(2), False), ([1.0], False)])
def test_is_empty(w, empty):
    assert _arrays.is_empty(w) is empty
    assert _arrays.is_empty(torch.empty(0)) and not _arrays.is_empty(torch.ones(1))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_torch_round_trip_zero_copy(dtype):
    t = torch.arange(6, dtype=dtype).reshape(2, 3)
    info = _arrays.array_info(t)
    assert info.library == "torch" and info.dtype == dtype and str(info.device) == "cpu"
    core = _arrays.to_core(t)
    assert isinstance(core, np.ndarray) and np.shares_memory(core, t.numpy())
    back = _arrays.from_core(core * 2, info)
    assert isinstance(back, torch.Tensor) and back.dtype == dtype and back.device == t.device
    torch.testing.assert_close(back, t * 2)
    # 0-d results stay 0-d, float64 results take the input's dtype, integer results keep theirs
    assert _arrays.from_core(np.float64(1.5), info).shape == ()
    assert _arrays.from_core(np.arange(3), info).dtype == torch.int64


def test_requires_grad_and_detach():
    t = torch.ones(3, requires_grad=True)
    assert _arrays.requires_grad(None, np.ones(2), t) and not _arrays.requires_grad(t.detach())
    assert isinstance(_arrays.to_core(t), np.ndarray)  # detached view, no autograd error


def test_mixed_libraries_raise():
    with pytest.raises(ValueError, match="different libraries"):
        _arrays.array_info(np.ones(2), torch.ones(2))


def test_jax_round_trip():
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.arange(4.0)
    info = _arrays.array_info(x)
    assert info.library == "jax"
    core = _arrays.to_core(x)
    assert isinstance(core, np.ndarray)
    back = _arrays.from_core(core + 1, info)
    assert type(back).__module__.startswith("jax") and back.dtype == x.dtype
    np.testing.assert_allclose(np.asarray(back), np.asarray(x) + 1)
