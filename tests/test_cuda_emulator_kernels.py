"""The CUDA emulator's execution model: warp shuffles, barriers, atomics, and the errors it
reports where a GPU would hang or silently misbehave. Compared with NumPy on random inputs."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

import cuda_emulator

pytestmark = pytest.mark.skipif(not cuda_emulator.available(), reason="needs x86-64 and a C++ compiler")

CODE = r"""
// block sum: warp shuffle reduction, shared memory, barrier, one atomic per block
template <typename T>
__global__ void block_sum(const T* __restrict__ x, T* out, long long n) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  T v = i < n ? x[i] : (T)0;
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  __shared__ T red[32];
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  if (threadIdx.x == 0) {
    T s = 0;
    for (unsigned w = 0; w < blockDim.x / 32; ++w) s += red[w];
    atomicAdd(out, s);
  }
}
// every shuffle flavour, one output per thread
extern "C" __global__ void shuffles(const float* x, float* out) {
  const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
  const float v = x[base + t];
  out[4 * (base + t) + 0] = __shfl_sync(0xffffffffu, v, (t * 7) & 31);
  out[4 * (base + t) + 1] = __shfl_xor_sync(0xffffffffu, v, 5);
  out[4 * (base + t) + 2] = __shfl_down_sync(0xffffffffu, v, 3);
  out[4 * (base + t) + 3] = __shfl_up_sync(0xffffffffu, v, 2);
}
// 2-D blocks and a 3-D grid: each thread writes its global coordinates
extern "C" __global__ void coords(int* out) {
  const int x = blockIdx.x * blockDim.x + threadIdx.x, y = blockIdx.y * blockDim.y + threadIdx.y;
  const int z = blockIdx.z;
  const int W = gridDim.x * blockDim.x, H = gridDim.y * blockDim.y;
  out[(z * H + y) * W + x] = 1000000 * z + 1000 * y + x;
}
extern "C" __global__ void exits_early(float* x, int n) {
  if ((int)threadIdx.x >= n) return;
  x[threadIdx.x] = __shfl_down_sync(0xffffffffu, x[threadIdx.x], 1);
}
extern "C" __global__ void divergent_barrier(float* x) {
  if (threadIdx.x < 16) __syncthreads();
  else __syncwarp();
}
// a missing __syncthreads: neighbours' writes are read before they are certain to have happened
extern "C" __global__ void racy(float* out) {
  __shared__ float s[64];
  s[threadIdx.x] = (float)threadIdx.x + 1000.0f * blockIdx.x;
  out[blockIdx.x * 64 + threadIdx.x] = s[(threadIdx.x + 1) % 64];
}
extern "C" __global__ void partial_mask(float* x) {
  x[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, x[threadIdx.x], 1);
}
"""
EXPRS = ["block_sum<float>", "block_sum<double>", "shuffles", "coords", "exits_early", "divergent_barrier",
         "partial_mask", "racy"]


@pytest.fixture(scope="module")
def cp():
    with cuda_emulator.installed() as mod:
        yield mod


@pytest.fixture(scope="module")
def module(cp):
    return cp.RawModule(code=CODE, name_expressions=EXPRS, options=("-std=c++14",))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [1, 31, 256, 1000])
def test_block_reduction_matches_numpy(cp, module, rng, dtype, n):
    x = rng.random(n).astype(dtype)
    out = cp.zeros(1, dtype=dtype)
    k = module.get_function(f"block_sum<{'float' if dtype == np.float32 else 'double'}>")
    k(((n + 127) // 128,), (128,), (cp.asarray(x), out, np.int64(n)))
    np.testing.assert_allclose(out.get()[0], x.astype(np.float64).sum(), rtol=1e-5 if dtype == np.float32 else 1e-12)


def test_shuffle_semantics(cp, module, rng):
    x = rng.random(64).astype(np.float32)
    out = cp.zeros(4 * 64, dtype=cp.float32)
    module.get_function("shuffles")((2,), (32,), (cp.asarray(x), out))
    got = out.get().reshape(2, 32, 4)
    lanes = np.arange(32)
    for w in range(2):
        v = x[32 * w: 32 * w + 32]
        np.testing.assert_array_equal(got[w, :, 0], v[(lanes * 7) & 31])
        np.testing.assert_array_equal(got[w, :, 1], v[lanes ^ 5])
        np.testing.assert_array_equal(got[w, :, 2], v[np.where(lanes + 3 < 32, lanes + 3, lanes)])
        np.testing.assert_array_equal(got[w, :, 3], v[np.where(lanes - 2 >= 0, lanes - 2, lanes)])


def test_thread_and_block_indices(cp, module):
    out = cp.full((3, 2 * 4, 3 * 8), -1, dtype=cp.int32)
    module.get_function("coords")((3, 2, 3), (8, 4, 1), (out,))
    z, y, x = np.meshgrid(np.arange(3), np.arange(8), np.arange(24), indexing="ij")
    np.testing.assert_array_equal(out.get(), 1000000 * z + 1000 * y + x)


@pytest.mark.parametrize("name, block, args, match", [
    ("exits_early", 64, lambda cp: (cp.zeros(64, dtype=cp.float32), np.int32(50)), "exited"),
    ("divergent_barrier", 64, lambda cp: (cp.zeros(64, dtype=cp.float32),), "deadlock"),
    ("partial_mask", 32, lambda cp: (cp.zeros(32, dtype=cp.float32),), "full-mask"),
])
def test_undefined_behaviour_is_reported(cp, module, name, block, args, match):
    with pytest.raises(cuda_emulator.CUDAEmulatorError, match=match):
        module.get_function(name)((1,), (block,), args(cp))


def test_random_schedules_expose_a_planted_race(cp, module, monkeypatch):
    outs = []
    for seed in ("0", "1", "2"):
        monkeypatch.setenv("OTSOLVE_CUDA_EMULATOR_SCHEDULE", seed)
        out = cp.zeros(4 * 64, dtype=cp.float32)
        module.get_function("racy")((4,), (64,), (out,))
        outs.append(out.get())
    assert not (np.array_equal(outs[0], outs[1]) and np.array_equal(outs[0], outs[2]))


def test_argument_types_are_checked(cp, module):
    k = module.get_function("block_sum<double>")
    x, out = cp.zeros(10), cp.zeros(1)
    with pytest.raises(cuda_emulator.CUDAEmulatorError, match="argument 2: .*signed int of 8 bytes.*4 bytes"):
        k((1,), (32,), (x, out, np.int32(10)))
    with pytest.raises(cuda_emulator.CUDAEmulatorError, match="argument 0: .*pointer to float of 8 bytes"):
        k((1,), (32,), (x.astype(cp.float32), out, np.int64(10)))
    with pytest.raises(cuda_emulator.CUDAEmulatorError, match="takes 3 arguments"):
        k((1,), (32,), (x, out))
    with pytest.raises(cuda_emulator.CUDAEmulatorError, match="not C-contiguous"):
        k((1,), (32,), (cp.zeros((4, 6))[:, ::2], out, np.int64(10)))
    with pytest.raises(TypeError):
        k((1,), (32,), (np.zeros(10), out, np.int64(10)))
    k((1,), (32,), (x, out, 10))  # a Python int is a 64-bit integer, as in CuPy


def test_launch_configuration_limits(cp, module):
    k = module.get_function("block_sum<double>")
    x, out = cp.zeros(10), cp.zeros(1)
    with pytest.raises(cuda_emulator.CUDAEmulatorError, match="1024 threads"):
        k((1,), (2048,), (x, out, np.int64(10)))
    with pytest.raises(cuda_emulator.CUDAEmulatorError, match="65535"):
        k((1, 70000), (32,), (x, out, np.int64(10)))


def test_unknown_name_and_compile_errors(cp, module):
    with pytest.raises(cuda_emulator.CUDAEmulatorError, match="name_expressions"):
        module.get_function("block_sum<int>")
    bad = cp.RawModule(code="extern \"C\" __global__ void f(float* x) { x[0] = undefined_thing; }",
                       name_expressions=["f"])
    with pytest.raises(cuda_emulator.CUDAEmulatorError, match="undefined_thing"):
        bad.get_function("f")


def test_otsolve_sources_compile(cp):
    """Every kernel otsolve loads is instantiated and type-checked by the emulator's compiler."""
    from otsolve.backends import cuda_kernels

    for source in cuda_kernels.KERNELS:
        mod = cp.RawModule(code=cuda_kernels.load_source(source), options=("-std=c++14",),
                           name_expressions=cuda_kernels._name_expressions(source))
        mod.compile()


def _libasan() -> str | None:
    import shutil
    import subprocess

    cxx = shutil.which("g++")
    if cxx is None:
        return None
    path = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    return path if path and os.path.isabs(path) and os.path.exists(path) else None


PLANTED = r'''
import numpy as np
import cuda_emulator
cp = cuda_emulator.install()
mod = cp.RawModule(code="""extern "C" __global__ void oob(const double* x, double* y, long long n) {
  long long i = blockIdx.x * blockDim.x + threadIdx.x; y[i] = 2 * x[i]; }""", name_expressions=["oob"])
mod.get_function("oob")((1,), (128,), (cp.zeros(100), cp.zeros(100), np.int64(100)))
'''


@pytest.mark.slow
@pytest.mark.skipif(_libasan() is None, reason="needs the compiler's AddressSanitizer runtime")
def test_kernels_are_memory_safe_under_addresssanitizer(tmp_path):
    """compute-sanitizer's memcheck, on the CPU: the kernels built with -fsanitize=address run
    the GPU tests' kernel checks; a planted out-of-bounds kernel proves accesses are checked."""
    import subprocess
    import sys

    env = dict(os.environ, OTSOLVE_CUDA_EMULATOR_SANITIZE="1", OTSOLVE_CUDA_EMULATOR_CACHE=str(tmp_path),
               ASAN_OPTIONS="detect_leaks=0", LD_PRELOAD=_libasan())
    env.pop("OTSOLVE_CUDA_EMULATOR", None)
    # the emulator is test machinery in tests/: make it importable in the subprocesses
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join([here] + [p for p in [env.get("PYTHONPATH")] if p])
    planted = subprocess.run([sys.executable, "-c", PLANTED], env=env, capture_output=True, text=True, timeout=300)
    assert planted.returncode != 0 and "heap-buffer-overflow" in planted.stderr
    tests = Path(__file__).with_name("test_gpu.py")
    run = subprocess.run([sys.executable, "-m", "pytest", str(tests), "-q", "-p", "no:cacheprovider", "-x",
                          "-k", "passes_match or topk or batched_kernels or sns_cupy"],
                         env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "AddressSanitizer" not in run.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_otsolve_kernels_are_race_free(cp, rng, monkeypatch, dtype):
    """Racecheck on the CPU: each block's threads in several pseudo-random orders give the same
    bits (only the Hessian matvec's atomics may round differently: its sums are unordered)."""
    from otsolve.backends.cupy_sinkhorn import CudaGeometry, CudaSinkhornEngine
    from otsolve.backends.sns_kernels import hessian_matvec, sparsified_hessian

    n, m, d, eps = 70, 45, 3, 0.1
    x, y = rng.random((n, d)).astype(dtype), rng.random((m, d)).astype(dtype)
    C = ((x[:, None] - y[None]) ** 2).sum(-1)
    f0, g0 = (rng.normal(size=n) * 0.05).astype(dtype), (rng.normal(size=m) * 0.05).astype(dtype)
    zx, zy = rng.normal(size=n).astype(dtype), rng.normal(size=m).astype(dtype)

    def run():
        out = []
        for geo in (CudaGeometry(C=cp.asarray(C)[None]), CudaGeometry(X=cp.asarray(x)[None], Y=cp.asarray(y)[None])):
            eng = CudaSinkhornEngine(geo)
            f, g = cp.asarray(f0)[None], cp.asarray(g0)[None]
            act = cp.zeros(1, dtype=cp.int32)
            err = cp.zeros(1)
            eng.row_pass(f, g, cp.log(cp.full((1, n), 1 / n, dtype=dtype)), eps, act, 0, err_out=err)
            eng.col_pass(f, g, cp.log(cp.full((1, m), 1 / m, dtype=dtype)), eps, act, 0)
            row, col, cost = eng.plan_stats(f, g, eps, act)
            indptr, idx, data = sparsified_hessian(geo, f[0], g[0], eps, 10)
            out += [a.get() for a in (f, g, err, row, col, cost, idx, data)]
            yx, yy = hessian_matvec(indptr, idx, data, row[0].astype(dtype), col[0].astype(dtype),
                                    cp.asarray(zx), cp.asarray(zy), 2.0)
            out.append(("approx", yx.get(), yy.get()))
        return out

    monkeypatch.delenv("OTSOLVE_CUDA_EMULATOR_SCHEDULE", raising=False)
    ref = run()
    for seed in ("1", "7", "12345"):
        monkeypatch.setenv("OTSOLVE_CUDA_EMULATOR_SCHEDULE", seed)
        for r, o in zip(ref, run()):
            if isinstance(r, tuple):
                for u, v in zip(r[1:], o[1:]):
                    np.testing.assert_allclose(v, u, rtol=1e-5 if dtype == np.float32 else 1e-12)
            else:
                np.testing.assert_array_equal(o, r)
