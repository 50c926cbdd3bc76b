"""GPU check: the GPU test subset, then the GPU benchmarks of issue 7; a short table last.

Run on a machine with a CUDA device and CuPy (built to finish within ~5 minutes on an H100):

    python bench/gpu_check.py            # everything
    python bench/gpu_check.py --quick    # tiny sizes (smoke test of this script)
    python bench/gpu_check.py --emulate  # no GPU: the CPU CUDA emulator, tiny sizes (CI runs this)

``--emulate`` runs the whole script on ``tests/cuda_emulator`` (the .cu kernels
compiled by g++, NumPy-backed CuPy): it proves the script and the GPU code path run end to end;
its timings are CPU emulation times, not GPU figures, and the summary says so.

It uses the installed otsolve (the row "otsolve used" says which). Only where otsolve is not installed
(a fresh checkout) does it use the source tree, first trying
``pip install --no-build-isolation --no-deps -e .`` (CPU baselines need the compiled extensions). POT is the GPU peer
(CuPy and torch backends); where it is not installed, carry its wheel (see
/work/.library/device/README.md) or the POT rows are reported as unavailable.
Every part is guarded: a failure is printed and the other parts still run.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The installed package (CI: the wheel it just installed, with its compiled kernels). Only where
# otsolve is not installed (a bare checkout, e.g. on a GPU machine) is the source tree used, and
# ensure_built() compiles it in place. find_spec does not import otsolve (the emulator, if asked
# for, must be installed first).
SOURCE_TREE = importlib.util.find_spec("otsolve") is None
if SOURCE_TREE:
    sys.path.insert(0, str(ROOT))

ROWS: list[tuple[str, str, str]] = []  # (benchmark, measurement, value)


def row(name: str, what: str, value: str) -> None:
    ROWS.append((name, what, value))
    print(f"  {name:<34} {what:<40} {value}", flush=True)


def guarded(title: str):
    def deco(fn):
        def run(*a, **k):
            print(f"\n=== {title}", flush=True)
            t0 = time.perf_counter()
            try:
                fn(*a, **k)
            except Exception as exc:  # one part failing must not hide the others
                traceback.print_exc()
                row(title, "FAILED", f"{type(exc).__name__}: {str(exc)[:60]}")
            print(f"=== {title}: {time.perf_counter() - t0:.1f} s", flush=True)
        return run
    return deco


def timeit(fn, repeats: int, sync) -> float:
    """Median wall time of fn() over repeats (after one warm-up), device synchronised."""
    import numpy as np

    fn()
    sync()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


@guarded("build (CPU extensions)")
def ensure_built() -> None:
    import otsolve
    from otsolve.kernels import HAVE_COMPILED

    row("build", "otsolve used", str(Path(otsolve.__file__).parent))
    if HAVE_COMPILED:
        row("build", "compiled CPU kernels", "present")
        return
    if not SOURCE_TREE or importlib.util.find_spec("scikit_build_core") is None:
        # an installed package without its extensions cannot be fixed from here
        row("build", "compiled CPU kernels", "MISSING (CPU baselines use the NumPy reference)")
        return
    cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps", "-e", str(ROOT)]
    rc = subprocess.call(cmd, timeout=300)
    row("build", "pip install -e . (no deps)", f"exit {rc}")


@guarded("device")
def device_info() -> None:
    import cupy as cp

    props = cp.cuda.runtime.getDeviceProperties(cp.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    row("device", "card", name)
    row("device", "CuPy / CUDA runtime", f"{cp.__version__} / {cp.cuda.runtime.runtimeGetVersion()}")
    x = cp.empty(1 << (22 if EMULATED[0] else 28), dtype=cp.float32)  # 1 GiB on a GPU
    y = cp.empty_like(x)
    t = timeit(lambda: cp.copyto(y, x), 5, cp.cuda.Device().synchronize)
    bw = 2 * x.nbytes / t
    BW[0] = bw
    row("device", "copy bandwidth (read + write)", f"{bw / 1e12:.2f} TB/s")
    del x, y


BW = [None]
EMULATED = [False]


@guarded("tests: pytest tests/test_gpu.py tests/test_backends.py tests/test_torch.py")
def run_tests() -> None:
    env = dict(os.environ)
    if SOURCE_TREE:
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    else:  # the tests use the installed package, as this script does (-m would put ROOT first)
        env["PYTHONSAFEPATH"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "tests/test_gpu.py", "tests/test_backends.py",
                           "tests/test_torch.py", "-q",
                           "-p", "no:cacheprovider"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)
    print(proc.stdout[-6000:], proc.stderr[-2000:])
    last = [ln for ln in proc.stdout.strip().splitlines() if ln.strip()][-1:] or ["(no output)"]
    row("tests", "pytest summary" if proc.returncode == 0 else "FAILED", last[0][:70])


@guarded("Sinkhorn n = m = 16384, d = 2, float32, eps = 0.01 mean cost")
def bench_sinkhorn(n: int, iters: int) -> None:
    import cupy as cp
    import numpy as np

    import otsolve

    sync = cp.cuda.Device().synchronize
    rng = np.random.default_rng(0)
    x = cp.asarray(rng.random((n, 2), dtype=np.float32))
    y = cp.asarray(rng.random((n, 2), dtype=np.float32))
    pc = otsolve.PointCloud(x, y)
    C = pc.cost_matrix  # dense n x n float32
    eps = 0.01 * float(C.mean())
    solver = otsolve.Sinkhorn(tol=1e-30, max_iter=iters, warn=False, omega=1.0)
    res = {}
    for label, geom in (("dense", otsolve.Geometry(C)), ("point cloud (on the fly)", pc)):
        prob = otsolve.LinearProblem(geom, epsilon=eps)
        t = timeit(lambda: res.__setitem__(label, solver(prob)), 3, sync)
        per = t / iters
        row(f"sinkhorn n={n}", f"otsolve {label}: ms / iteration", f"{1e3 * per:.3f}")
        if label == "dense":
            floor = 2 * C.nbytes / BW[0] if BW[0] else float("nan")
            row(f"sinkhorn n={n}", "memory floor (C read twice): ms / it", f"{1e3 * floor:.3f}")
            row(f"sinkhorn n={n}", "otsolve dense / floor", f"{per / floor:.2f}x (target <= 2)")
            ours = per
    # POT peers, same problem and iteration count (log-domain Sinkhorn, its stable variant)
    try:
        import ot
    except ImportError:
        row(f"sinkhorn n={n}", "POT", "not installed")
        return
    a = cp.full(n, 1.0 / n, dtype=cp.float32)
    for method in ("sinkhorn_log", "sinkhorn"):
        t = timeit(lambda: ot.sinkhorn(a, a, C, eps, method=method, numItermax=iters, stopThr=0.0,
                                       warn=False), 2, sync)
        # POT checks its error every 10 iterations: count iterations, not calls
        row(f"sinkhorn n={n}", f"POT cupy {method}: ms / it", f"{1e3 * t / iters:.3f}")
        row(f"sinkhorn n={n}", f"speed-up vs POT cupy {method}", f"{t / iters / ours:.1f}x (target >= 5)")
    try:
        import torch

        Ct = torch.as_tensor(C, device="cuda")
        at = torch.full((n,), 1.0 / n, device="cuda", dtype=torch.float32)
        t = timeit(lambda: ot.sinkhorn(at, at, Ct, eps, method="sinkhorn_log", numItermax=iters, stopThr=0.0,
                                       warn=False), 2, torch.cuda.synchronize)
        row(f"sinkhorn n={n}", "POT torch sinkhorn_log: ms / it", f"{1e3 * t / iters:.3f}")
        row(f"sinkhorn n={n}", "speed-up vs POT torch sinkhorn_log", f"{t / iters / ours:.1f}x (target >= 5)")
    except ImportError:
        row(f"sinkhorn n={n}", "POT torch", "torch not installed")
    except Exception as exc:  # e.g. a CPU-only torch build: "Torch not compiled with CUDA enabled"
        row(f"sinkhorn n={n}", "POT torch", f"unavailable ({type(exc).__name__}: {str(exc)[:50]})")


@guarded("Sinkhorn point clouds n = m = 100,000 (cost on the fly)")
def bench_large(n: int) -> None:
    import cupy as cp
    import numpy as np

    import otsolve

    rng = np.random.default_rng(1)
    x = cp.asarray(rng.random((n, 2), dtype=np.float32))
    y = cp.asarray(rng.random((n, 2), dtype=np.float32))
    prob = otsolve.LinearProblem(otsolve.PointCloud(x, y), epsilon=0.01 * 1 / 3)
    iters = 5
    t = timeit(lambda: otsolve.Sinkhorn(tol=1e-30, max_iter=iters, warn=False, omega=1.0)(prob), 1,
               cp.cuda.Device().synchronize)
    row(f"sinkhorn pointcloud n={n}", "ms / iteration", f"{1e3 * t / iters:.1f}")
    row(f"sinkhorn pointcloud n={n}", "GPU memory used", f"{cp.get_default_memory_pool().used_bytes() / 2**20:.0f} MiB")


@guarded("Batched: 256 problems of n = 256 vs a Python loop")
def bench_batched(B: int, n: int) -> None:
    import cupy as cp
    import numpy as np

    import otsolve
    from otsolve import BatchedLinearProblem, BatchedSinkhorn

    sync = cp.cuda.Device().synchronize
    rng = np.random.default_rng(2)
    x = rng.random((B, n, 2)).astype(np.float32)
    y = rng.random((B, n, 2)).astype(np.float32)
    eps, tol = 0.05 * 1 / 3, 1e-5
    xd, yd = cp.asarray(x), cp.asarray(y)
    bprob = BatchedLinearProblem(x=xd, y=yd, epsilon=eps)
    out = {}
    tb = timeit(lambda: out.__setitem__("b", BatchedSinkhorn(tol=tol)(bprob)), 3, sync)
    rb = out["b"]
    row(f"batched B={B} n={n}", "otsolve batched (1 call): s", f"{tb:.4f}")
    row(f"batched B={B} n={n}", "problems converged / iterations max", f"{int(rb.converged_each.sum())} / "
        f"{int(rb.n_iter_each.max())}")
    probs = [otsolve.LinearProblem(otsolve.PointCloud(xd[p], yd[p]), epsilon=eps) for p in range(B)]
    solver = otsolve.Sinkhorn(tol=tol, omega=1.0, warn=False)
    tl = timeit(lambda: [solver(p) for p in probs], 1, sync)
    row(f"batched B={B} n={n}", "Python loop of GPU Sinkhorn: s", f"{tl:.4f}")
    row(f"batched B={B} n={n}", "speed-up batched vs loop (GPU)", f"{tl / tb:.1f}x")
    cpu = [otsolve.LinearProblem(otsolve.PointCloud(x[p], y[p]), epsilon=eps) for p in range(B)]
    t0 = time.perf_counter()
    for p in cpu:
        solver(p)
    tc = time.perf_counter() - t0
    row(f"batched B={B} n={n}", "Python loop of CPU Sinkhorn: s", f"{tc:.4f}")
    row(f"batched B={B} n={n}", "speed-up batched GPU vs CPU loop", f"{tc / tb:.1f}x")


@guarded("SNS n = 5000, eta = 1200: GPU vs CPU")
def bench_sns(n: int) -> None:
    import cupy as cp
    import numpy as np

    import otsolve

    rng = np.random.default_rng(3)
    C = rng.random((n, n))
    eps = 1 / 1200
    solver = otsolve.SinkhornNewtonSparse(tol=1e-9)
    t0 = time.perf_counter()
    rc = solver(otsolve.LinearProblem(C, epsilon=eps))
    tc = time.perf_counter() - t0
    Cd = cp.asarray(C)
    out = {}
    tg = timeit(lambda: out.__setitem__("g", solver(otsolve.LinearProblem(Cd, epsilon=eps))), 1,
                cp.cuda.Device().synchronize)
    rg = out["g"]
    row(f"sns n={n}", "CPU: s (converged, Newton steps)", f"{tc:.2f} ({rc.converged}, {rc.n_newton})")
    row(f"sns n={n}", "GPU: s (converged, Newton steps)", f"{tg:.2f} ({rg.converged}, {rg.n_newton})")
    row(f"sns n={n}", "speed-up GPU vs CPU", f"{tc / tg:.1f}x")
    row(f"sns n={n}", "|value GPU - value CPU|", f"{abs(rg.value - rc.value):.2e}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--quick", action="store_true", help="tiny sizes")
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--emulate", action="store_true",
                   help="run on the CPU CUDA emulator (tiny sizes; timings are not GPU figures)")
    args = p.parse_args()
    t0 = time.perf_counter()
    if args.emulate or os.environ.get("OTSOLVE_CUDA_EMULATOR", "") not in ("", "0"):
        # the emulator is test machinery: it lives in the repository's tests/, not in the package
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        import cuda_emulator

        if not cuda_emulator.available():
            print("the CUDA emulator needs x86-64 and g++: nothing to check")
            return 0
        cuda_emulator.install()
        os.environ["OTSOLVE_CUDA_EMULATOR"] = "1"  # the pytest subprocess uses it too
        EMULATED[0] = True
        args.quick = True
        print("*** EMULATED: CUDA kernels run on the CPU emulator; times below are NOT GPU figures ***")
    try:
        import cupy  # noqa: F401
    except ImportError:
        print("CuPy is not installed: nothing to check on the GPU")
        return 0
    ensure_built()
    device_info()
    if not args.skip_tests:
        run_tests()
    q, e = args.quick, EMULATED[0]
    bench_sinkhorn(256 if e else 1024 if q else 16384, 5 if e else 10 if q else 50)
    bench_large(1024 if e else 4096 if q else 100_000)
    bench_batched(4 if e else 16 if q else 256, 32 if e else 64 if q else 256)
    bench_sns(120 if e else 300 if q else 5000)
    print(f"\n=== summary ({time.perf_counter() - t0:.0f} s)"
          + ("  *** EMULATED ON THE CPU: not GPU figures ***" if e else ""))
    w = max(len(r[0]) for r in ROWS)
    for name, what, value in ROWS:
        print(f"{name:<{w}}  {what:<42} {value}")
    return 1 if any(r[1] == "FAILED" for r in ROWS) else 0


if __name__ == "__main__":
    sys.exit(main())
