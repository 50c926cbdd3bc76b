"""Run every benchmark script in bench/ (``bench_*.py``); ``--quick`` for the tiny CI sizes.

Each script accepts ``--quick`` and prints its own table with otsolve/peer ratios. With
``--quick`` (CI) ``gpu_check.py --emulate`` runs too, on the CPU CUDA emulator.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CI)")
    parser.add_argument("names", nargs="*", help="only these scripts (e.g. sinkhorn sns)")
    args = parser.parse_args()
    here = Path(__file__).parent
    scripts = sorted(here.glob("bench_*.py"))
    if args.names:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.names]
    failed = []
    for script in scripts:
        if script.stem == "bench_gpu_check":
            continue
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"=== {script.name}: exit {rc} in {time.perf_counter() - t0:.1f} s", flush=True)
        if rc != 0:
            failed.append(script.name)
    if args.quick and not args.names:
        # no GPU on CI: the GPU check script runs on the CPU CUDA emulator so it cannot rot
        # (its tests already ran under pytest; its timings are emulation times, not GPU figures)
        cmd = [sys.executable, str(here / "gpu_check.py"), "--emulate", "--skip-tests"]
        print(f"\n=== {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.call(cmd)
        print(f"=== gpu_check.py --emulate: exit {rc} in {time.perf_counter() - t0:.1f} s", flush=True)
        if rc != 0:
            failed.append("gpu_check.py --emulate")
    if failed:
        print(f"failed: {failed}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
