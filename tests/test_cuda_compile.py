"""Compile every CUDA source with nvcc when it exists (catches syntax/type errors without a GPU)."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from otsolve.backends import cuda_kernels

NVCC = shutil.which("nvcc")
SOURCES = sorted((Path(__file__).resolve().parent.parent / "csrc" / "cuda").glob("*.cu"))

pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc not found")


@pytest.mark.parametrize("src", SOURCES, ids=[s.name for s in SOURCES])
def test_nvcc_compiles_all_instantiations(src, tmp_path):
    # -DOTSOLVE_NVCC_CHECK instantiates every template (float and double), so their bodies are
    # type-checked, not only parsed; the text compiled is what the loader gives NVRTC.
    text = cuda_kernels.load_source(src.name)
    unit = tmp_path / src.name
    unit.write_text(text)
    out = tmp_path / (src.stem + ".ptx")
    proc = subprocess.run([NVCC, "-arch=sm_90", "--ptx", "-std=c++14", "-DOTSOLVE_NVCC_CHECK", str(unit),
                           "-o", str(out)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ptx = out.read_text()
    for kname, _ in cuda_kernels.KERNELS[src.name]:
        assert kname in ptx, f"{kname} missing from the PTX of {src.name}"
    assert "warning" not in proc.stderr.lower(), proc.stderr
